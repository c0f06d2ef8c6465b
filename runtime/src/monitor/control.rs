//! The monitor's control socket, `<state dir>/monitor.sock`: one request per connection,
//! one JSON line each way. Only the container's lifecycle commands (`husk create`,
//! `start`, `kill`, ...) connect, each holding the container's lock, so the monitor
//! answers them one at a time. Each side ends its half of the connection after its
//! message, so a message is simply everything up to EOF.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_protocol::ErrorKind;
use serde::{Deserialize, Serialize};

/// The socket's name in the container's state directory.
pub const SOCKET: &str = "monitor.sock";
/// Why the VM ended by itself (one line), written by the monitor before it winds down: a
/// command that finds the monitor gone or mute says the cause, not just the symptom.
pub const VM_ENDED: &str = "vm-ended";
/// Longest request or answer accepted (a process list fits many times over).
const MAX_MESSAGE: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum MonitorRequest {
    /// Have the agent build the container and create its init (stopped before exec).
    Build,
    /// Let the init run.
    Start,
    /// Signal the init, or with `all` every process of the container.
    Kill {
        signal: i32,
        all: bool,
    },
    /// Freeze the whole VM.
    Pause,
    Resume,
    /// The container's processes.
    Processes,
}

/// One process of the container: pid in the container and command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEntry {
    pub pid: i32,
    pub command: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorResponse {
    Ok,
    Processes(Vec<ProcessEntry>),
    /// The request failed; `kind` is the agent's when the agent refused it.
    Error {
        kind: Option<ErrorKind>,
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the container's VM monitor at {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("the container's VM monitor did not answer {what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("the container's VM monitor answered {what} with garbage: {source}")]
    Garbage {
        what: String,
        source: serde_json::Error,
    },
}

/// Reads the peer's one message: everything up to its end of the connection (at most
/// [`MAX_MESSAGE`] bytes), as JSON.
pub fn read_message<T: for<'de> Deserialize<'de>>(stream: &UnixStream) -> io::Result<T> {
    let mut bytes = Vec::new();
    io::Read::take(stream, MAX_MESSAGE).read_to_end(&mut bytes)?;
    if bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed without a message",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes `value` as one JSON line and ends this side of the connection.
pub fn write_message<T: Serialize>(mut stream: &UnixStream, value: &T) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    stream.write_all(&bytes)?;
    stream.shutdown(std::net::Shutdown::Write)
}

/// Sends `request` to the monitor of the container whose state directory is
/// `state_dir`; waits at most `timeout` for the answer.
pub fn call(
    state_dir: &Path,
    request: &MonitorRequest,
    timeout: Duration,
) -> Result<MonitorResponse, ControlError> {
    let path = state_dir.join(SOCKET);
    let what = format!("{request:?}");
    let stream = UnixStream::connect(&path).map_err(|source| ControlError::Connect {
        path: path.clone(),
        source,
    })?;
    let io_err = |source| ControlError::Io {
        what: what.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    write_message(&stream, request).map_err(io_err)?;
    match read_message::<MonitorResponse>(&stream) {
        Ok(r) => Ok(r),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(ControlError::Garbage {
            what: what.clone(),
            source: serde_json::Error::io(e),
        }),
        Err(e) => Err(io_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_one_json_line_up_to_eof() {
        let (a, b) = UnixStream::pair().unwrap();
        write_message(
            &a,
            &MonitorRequest::Kill {
                signal: 15,
                all: true,
            },
        )
        .unwrap();
        assert_eq!(
            read_message::<MonitorRequest>(&b).unwrap(),
            MonitorRequest::Kill {
                signal: 15,
                all: true
            }
        );
        let answer = MonitorResponse::Error {
            kind: Some(ErrorKind::ExecutableNotFound),
            message: "x".into(),
        };
        write_message(&b, &answer).unwrap();
        assert_eq!(read_message::<MonitorResponse>(&a).unwrap(), answer);
        let (c, d) = UnixStream::pair().unwrap();
        drop(c);
        let e = read_message::<MonitorResponse>(&d).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
