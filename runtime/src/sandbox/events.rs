//! The agent's event connection: the guest connects to host port
//! [`HOST_EVENT_PORT`](husk_protocol::HOST_EVENT_PORT), which the VMM's vsock backend
//! turns into a connection to the unix socket `<uds>_<port>`; the agent says hello and
//! sends `AgentEvent::Ready` (or `Fatal`). Waiting for it is also where a boot that goes
//! wrong is noticed: the VM ending, a deadline, or the caller giving up.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_protocol::{handshake, read_frame, AgentError, AgentEvent, ProtocolError, Role};

/// How often the wait looks at the VM and the caller's cancel flag.
const POLL_INTERVAL_MS: i32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("cannot listen on {path} for the agent: {source}")]
    Listen { path: PathBuf, source: io::Error },
    #[error("waiting for the agent: {0}")]
    Io(io::Error),
    #[error("the agent's event connection: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the guest agent failed: {0}")]
    Fatal(AgentError),
}

/// Why [`EventListener::wait_ready`] stopped waiting without an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// `gone()` said the VM has ended.
    VmGone,
    /// The deadline passed.
    TimedOut,
    /// `cancelled()` said so.
    Cancelled,
}

/// The listening socket, bound before the VM starts so the agent never finds it missing.
pub struct EventListener {
    listener: UnixListener,
    path: PathBuf,
}

impl EventListener {
    /// Binds `<uds>_<port>`.
    pub fn bind(uds: &Path, port: u32) -> Result<Self, EventError> {
        let mut name = uds.as_os_str().to_owned();
        name.push(format!("_{port}"));
        let path = PathBuf::from(name);
        let listener = UnixListener::bind(&path).map_err(|source| EventError::Listen {
            path: path.clone(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| EventError::Listen {
                path: path.clone(),
                source,
            })?;
        Ok(Self { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the agent's first event: `Ok(Ok((boottime_us, connection)))` on `Ready`,
    /// `Ok(Err(end))` if the VM ended, the deadline passed or the caller cancelled first.
    /// The agent keeps the connection for a later `Fatal`: hold it while the VM runs.
    pub fn wait_ready(
        &self,
        deadline: Instant,
        io_timeout: Duration,
        gone: impl Fn() -> bool,
        cancelled: impl Fn() -> bool,
    ) -> Result<Result<(u64, UnixStream), WaitEnd>, EventError> {
        loop {
            if cancelled() {
                return Ok(Err(WaitEnd::Cancelled));
            }
            if gone() {
                return Ok(Err(WaitEnd::VmGone));
            }
            if Instant::now() >= deadline {
                return Ok(Err(WaitEnd::TimedOut));
            }
            match self.listener.accept() {
                Ok((stream, _)) => return read_first_event(stream, io_timeout).map(Ok),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_readable(&self.listener),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(EventError::Io(e)),
            }
        }
    }
}

impl Drop for EventListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sleeps until the listener has a connection or [`POLL_INTERVAL_MS`] passed.
fn wait_readable(listener: &UnixListener) {
    let mut fds = [libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(fds.as_mut_ptr(), 1, POLL_INTERVAL_MS) };
}

fn read_first_event(
    mut stream: UnixStream,
    io_timeout: Duration,
) -> Result<(u64, UnixStream), EventError> {
    stream.set_nonblocking(false).map_err(EventError::Io)?;
    stream
        .set_read_timeout(Some(io_timeout))
        .map_err(EventError::Io)?;
    stream
        .set_write_timeout(Some(io_timeout))
        .map_err(EventError::Io)?;
    handshake(&mut stream, Role::Host)?;
    match read_frame::<_, AgentEvent>(&mut stream)? {
        AgentEvent::Ready { boottime_us } => Ok((boottime_us, stream)),
        AgentEvent::Fatal { error } => Err(EventError::Fatal(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocol::{write_frame, ErrorKind};

    fn tmp_uds(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("husk-events-{}-{name}.sock", std::process::id()))
    }

    fn agent_sends(path: &Path, event: AgentEvent) -> std::thread::JoinHandle<()> {
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            let mut s = UnixStream::connect(path).unwrap();
            handshake(&mut s, Role::Agent).unwrap();
            write_frame(&mut s, &event).unwrap();
        })
    }

    #[test]
    fn ready_fatal_and_the_ways_to_stop_waiting() {
        let uds = tmp_uds("a");
        let l = EventListener::bind(&uds, 1026).unwrap();
        assert!(l.path().to_str().unwrap().ends_with(".sock_1026"));
        let far = Instant::now() + Duration::from_secs(30);
        let io = Duration::from_secs(5);

        let t = agent_sends(l.path(), AgentEvent::Ready { boottime_us: 77 });
        let (boottime_us, _conn) = l.wait_ready(far, io, || false, || false).unwrap().unwrap();
        assert_eq!(boottime_us, 77);
        t.join().unwrap();

        let error = AgentError::new(ErrorKind::Internal, "cannot mount /proc");
        let t = agent_sends(l.path(), AgentEvent::Fatal { error });
        let e = l.wait_ready(far, io, || false, || false).unwrap_err();
        assert!(e.to_string().contains("cannot mount /proc"), "{e}");
        t.join().unwrap();

        let end = |r: Result<(u64, UnixStream), WaitEnd>| r.map(|(t, _)| t);
        let r = l.wait_ready(far, io, || true, || false).unwrap();
        assert_eq!(end(r), Err(WaitEnd::VmGone));
        let r = l.wait_ready(far, io, || false, || true).unwrap();
        assert_eq!(end(r), Err(WaitEnd::Cancelled));
        let r = l
            .wait_ready(Instant::now(), io, || false, || false)
            .unwrap();
        assert_eq!(end(r), Err(WaitEnd::TimedOut));
        let path = l.path().to_path_buf();
        drop(l);
        assert!(!path.exists());
    }
}
