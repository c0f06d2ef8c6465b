//! The host's way to the guest agent: through the vsock device's unix socket.
//!
//! The VMM's virtio-vsock backend (Firecracker's scheme) listens on one unix socket for
//! host-initiated connections: the host connects, writes `CONNECT <guest port>\n`, and
//! the VMM answers `OK <host port>\n` once the guest accepted, or closes the socket if
//! nobody listens on that port. From then on the unix stream *is* the vsock stream, so
//! husk-protocol's control connections ([`Client`]) and stdio streams run over it as
//! they are.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_protocol::{
    open_stdio_stream, Client, ProcessRef, ProtocolError, StreamHeader, StreamKind,
    AGENT_CONTROL_PORT, AGENT_STDIO_PORT,
};

/// Longest `OK <port>\n` line accepted ("OK " + a u32 + newline fits in 14).
const MAX_REPLY_LEN: usize = 32;

/// Errors reaching the agent; each names the port or the request.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    #[error("cannot connect to the VM's vsock socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("vsock connection to guest port {port} failed: {source}")]
    Io { port: u32, source: io::Error },
    #[error("the guest refused a connection to port {port} (nothing listening there)")]
    Refused { port: u32 },
    #[error("unexpected answer to CONNECT {port} from the VMM: {reply:?}")]
    BadReply { port: u32, reply: String },
    #[error("the agent on guest port {port}: {source}")]
    Protocol { port: u32, source: ProtocolError },
}

/// Parses the VMM's answer to a `CONNECT`: `OK <host port>` (the newline already cut).
pub fn parse_connect_reply(line: &str) -> Option<u32> {
    line.strip_prefix("OK ")?
        .trim_end_matches('\r')
        .parse()
        .ok()
}

/// Reads one `\n`-terminated line, byte by byte: whatever follows belongs to the
/// protocol and must stay in the socket. `Ok(None)` on EOF before any byte.
fn read_reply_line(stream: &mut impl Read) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) if line.is_empty() => return Ok(None),
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                line.push(byte[0]);
                if line.len() > MAX_REPLY_LEN {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// Does the `CONNECT` handshake on a fresh connection to the VMM's vsock socket.
pub fn vsock_connect(stream: &mut (impl Read + Write), port: u32) -> Result<(), AgentClientError> {
    let io_err = |source| AgentClientError::Io { port, source };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io_err)?;
    // A refused connection shows up as EOF or a reset, depending on timing.
    let line = match read_reply_line(stream) {
        Ok(Some(line)) => line,
        Ok(None) => return Err(AgentClientError::Refused { port }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
            return Err(AgentClientError::Refused { port })
        }
        Err(e) => return Err(io_err(e)),
    };
    match parse_connect_reply(&line) {
        Some(_) => Ok(()),
        None => Err(AgentClientError::BadReply { port, reply: line }),
    }
}

/// Opens connections to the agent of one VM. Cheap to clone; every call makes a new
/// connection, so a blocking `wait` on one never holds up another's `signal`.
#[derive(Debug, Clone)]
pub struct AgentClient {
    uds: PathBuf,
    /// Read/write timeout of control connections (not of `wait`, see [`Self::control`]).
    timeout: Option<Duration>,
}

impl AgentClient {
    /// A client for the VMM vsock socket at `uds`; `timeout` bounds every read and
    /// write on the connections it opens (`None`: no bound).
    pub fn new(uds: impl Into<PathBuf>, timeout: Option<Duration>) -> Self {
        Self {
            uds: uds.into(),
            timeout,
        }
    }

    pub fn uds(&self) -> &Path {
        &self.uds
    }

    /// A raw stream to guest `port`, past the `CONNECT` handshake.
    pub fn connect_port(&self, port: u32) -> Result<UnixStream, AgentClientError> {
        let mut stream =
            UnixStream::connect(&self.uds).map_err(|source| AgentClientError::Connect {
                path: self.uds.clone(),
                source,
            })?;
        let set = |s: &UnixStream| {
            s.set_read_timeout(self.timeout)?;
            s.set_write_timeout(self.timeout)
        };
        set(&stream).map_err(|source| AgentClientError::Io { port, source })?;
        vsock_connect(&mut stream, port)?;
        Ok(stream)
    }

    /// A new control connection (hello done). Its reads time out after the client's
    /// timeout; for a `wait`, which blocks until the process exits, clear it first with
    /// `client.get_ref().set_read_timeout(None)`.
    pub fn control(&self) -> Result<Client<UnixStream>, AgentClientError> {
        let port = AGENT_CONTROL_PORT;
        let stream = self.connect_port(port)?;
        Client::connect(stream).map_err(|source| AgentClientError::Protocol { port, source })
    }

    /// Opens stream `kind` of `process` (acknowledged by the agent); raw bytes from here
    /// on, without timeouts (a process may be silent for as long as it likes).
    pub fn open_stream(
        &self,
        process: &ProcessRef,
        kind: StreamKind,
    ) -> Result<UnixStream, AgentClientError> {
        let port = AGENT_STDIO_PORT;
        let mut stream = self.connect_port(port)?;
        let header = StreamHeader {
            process: process.clone(),
            kind,
        };
        open_stdio_stream(&mut stream, &header)
            .map_err(|source| AgentClientError::Protocol { port, source })?;
        let clear = |s: &UnixStream| {
            s.set_read_timeout(None)?;
            s.set_write_timeout(None)
        };
        clear(&stream).map_err(|source| AgentClientError::Io { port, source })?;
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A stream that reads from a script and records what was written.
    struct Scripted {
        input: Cursor<Vec<u8>>,
        written: Vec<u8>,
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn scripted(input: &[u8]) -> Scripted {
        Scripted {
            input: Cursor::new(input.to_vec()),
            written: Vec::new(),
        }
    }

    #[test]
    fn reply_parser() {
        assert_eq!(parse_connect_reply("OK 1073741824"), Some(1073741824));
        assert_eq!(parse_connect_reply("OK 5\r"), Some(5));
        assert_eq!(parse_connect_reply("OK"), None);
        assert_eq!(parse_connect_reply("ok 5"), None);
        assert_eq!(parse_connect_reply("OK -1"), None);
        assert_eq!(parse_connect_reply("NO 5"), None);
    }

    #[test]
    fn handshake_leaves_the_protocol_bytes_unread() {
        let mut s = scripted(b"OK 42\nHUSK\0\0\0\x01");
        vsock_connect(&mut s, 1024).unwrap();
        assert_eq!(s.written, b"CONNECT 1024\n");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"HUSK\0\0\0\x01");
    }

    #[test]
    fn refusal_and_garbage_are_named() {
        let e = vsock_connect(&mut scripted(b""), 1025).unwrap_err();
        assert!(matches!(e, AgentClientError::Refused { port: 1025 }), "{e}");
        let e = vsock_connect(&mut scripted(b"HTTP/1.1 400\n"), 1024).unwrap_err();
        assert!(e.to_string().contains("HTTP/1.1 400"), "{e}");
        let long = vec![b'x'; 4096];
        let e = vsock_connect(&mut scripted(&long), 1024).unwrap_err();
        assert!(matches!(e, AgentClientError::BadReply { .. }), "{e}");
    }
}
