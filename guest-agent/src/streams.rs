//! The stdio parking lot: a stdio connection arrives (and is acknowledged) before the
//! request that starts its process, so it waits here under (process, kind) until that
//! request claims it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use husk_protocol::process::Stdio;
use husk_protocol::{AgentError, ErrorKind, ProcessRef, StdioConfig, StreamHeader, StreamKind};

use crate::lock;

type Key = (ProcessRef, StreamKind);

pub struct StreamPark {
    parked: Mutex<HashMap<Key, OwnedFd>>,
    arrived: Condvar,
    wait: Duration,
}

impl StreamPark {
    /// `wait`: how long [`claim`](Self::claim) waits for streams not parked yet.
    pub fn new(wait: Duration) -> StreamPark {
        StreamPark {
            parked: Mutex::new(HashMap::new()),
            arrived: Condvar::new(),
            wait,
        }
    }

    /// Parks `stream`; a second stream of the same kind for the same process is refused.
    pub fn park(&self, header: &StreamHeader, stream: OwnedFd) -> Result<(), AgentError> {
        let mut parked = lock(&self.parked);
        let key = (header.process.clone(), header.kind);
        if parked.contains_key(&key) {
            return Err(AgentError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "a {:?} stream for {} is already waiting",
                    header.kind, header.process
                ),
            ));
        }
        parked.insert(key, stream);
        drop(parked);
        self.arrived.notify_all();
        Ok(())
    }

    /// Drops a parked stream (its host end sees EOF).
    pub fn discard(&self, process: &ProcessRef, kind: StreamKind) {
        lock(&self.parked).remove(&(process.clone(), kind));
    }

    /// Takes the streams `stdio` announces for `process`, waiting for late ones. On a
    /// timeout the ones that did arrive are dropped too: the request failed.
    pub fn claim(&self, process: &ProcessRef, stdio: StdioConfig) -> Result<Stdio, AgentError> {
        let kinds = stdio.kinds();
        let deadline = Instant::now() + self.wait;
        let mut parked = lock(&self.parked);
        loop {
            let missing: Vec<StreamKind> = kinds
                .iter()
                .copied()
                .filter(|k| !parked.contains_key(&(process.clone(), *k)))
                .collect();
            if missing.is_empty() {
                break;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                for k in &kinds {
                    parked.remove(&(process.clone(), *k));
                }
                return Err(AgentError::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "the {missing:?} stdio stream(s) announced for {process} did not \
                         arrive within {} s: open them on the stdio port before the request",
                        self.wait.as_secs_f32()
                    ),
                ));
            };
            parked = self
                .arrived
                .wait_timeout(parked, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let mut take = |kind: StreamKind| parked.remove(&(process.clone(), kind));
        if stdio.terminal {
            let stream = take(StreamKind::Tty).ok_or_else(|| {
                AgentError::internal(format!("the tty stream of {process} vanished"))
            })?;
            return Ok(Stdio::Tty { stream });
        }
        Ok(Stdio::Streams {
            stdin: stdio.stdin.then(|| take(StreamKind::Stdin)).flatten(),
            stdout: stdio.stdout.then(|| take(StreamKind::Stdout)).flatten(),
            stderr: stdio.stderr.then(|| take(StreamKind::Stderr)).flatten(),
        })
    }
}
