//! The host side of vsock: AF_UNIX sockets. The device's listening socket (bound when the
//! device is built, removed when it is dropped), the non-blocking connect to
//! `<uds_path>_<port>` for guest-initiated connections, and the `CONNECT <port>\n`
//! handshake line a host client starts with.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// `sizeof(sockaddr_un.sun_path)`: a socket path's bytes plus its NUL must fit.
pub const SUN_PATH_MAX: usize = 108;
/// Longest handshake line accepted (`CONNECT 4294967295\n` is 19 bytes).
const HANDSHAKE_MAX: usize = 32;

/// Why a vsock device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock socket path {0} already exists (a running VM, or a stale socket to remove)")]
    PathExists(PathBuf),
    #[error("vsock socket path {path} is {len} bytes long; a unix socket path must be shorter than {SUN_PATH_MAX}")]
    PathTooLong { path: PathBuf, len: usize },
    #[error("the directory of vsock socket path {0} does not exist")]
    DirMissing(PathBuf),
    #[error("cannot listen on vsock socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("guest CID {0} is reserved (a guest CID is 3 or more, below 2^32 - 1)")]
    ReservedCid(u64),
}

/// The device's listening socket. Dropping it removes the socket file, if it is still the
/// one it bound.
#[derive(Debug)]
pub struct UdsListener {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file: another process may have replaced it since.
    id: (u64, u64),
}

impl UdsListener {
    pub fn bind(path: &Path) -> Result<Self, VsockError> {
        let len = path.as_os_str().len();
        if len >= SUN_PATH_MAX {
            return Err(VsockError::PathTooLong {
                path: path.to_path_buf(),
                len,
            });
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(VsockError::DirMissing(path.to_path_buf()));
        }
        if path.symlink_metadata().is_ok() {
            return Err(VsockError::PathExists(path.to_path_buf()));
        }
        let bind_err = |source| VsockError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        let meta = path.symlink_metadata().map_err(bind_err)?;
        // Accepting happens on the worker's epoll loop: never block it.
        listener.set_nonblocking(true).map_err(bind_err)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts one pending connection, non-blocking; `Ok(None)` when there is none.
    pub fn accept(&self) -> io::Result<Option<UnixStream>> {
        match self.listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(true)?;
                Ok(Some(stream))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl AsRawFd for UdsListener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.listener.as_raw_fd()
    }
}

impl Drop for UdsListener {
    fn drop(&mut self) {
        if let Ok(meta) = self.path.symlink_metadata() {
            if (meta.dev(), meta.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Where a guest connection to host port `port` goes: `<uds_path>_<port>`.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut p = uds_path.as_os_str().to_os_string();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Connects to a listening unix socket without blocking: a listener whose backlog is full
/// fails with `WouldBlock` instead of stalling the device's worker. The stream returned is
/// non-blocking.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= SUN_PATH_MAX || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a valid unix socket path",
        ));
    }
    // SAFETY: plain syscall with constant arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let addr_len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: addr is a valid sockaddr_un and addr_len does not exceed its size (checked
    // above: the path and its NUL fit in sun_path).
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            addr_len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(sock))
}

/// What reading a host client's handshake line gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// The line is not complete yet (the socket has nothing more for now).
    Incomplete,
    /// `CONNECT <port>`.
    Connect(u32),
    /// The client closed, failed, or sent something else: close its socket.
    Bad(String),
}

/// A host client's `CONNECT <port>\n` line, read a byte at a time so that not a byte of the
/// data that may follow it is consumed.
#[derive(Debug, Default)]
pub struct HandshakeReader {
    line: Vec<u8>,
}

impl HandshakeReader {
    pub fn read(&mut self, stream: &mut impl Read) -> Handshake {
        loop {
            let mut byte = [0u8; 1];
            match stream.read(&mut byte) {
                Ok(0) => return Handshake::Bad("closed before its CONNECT line".into()),
                Ok(_) if byte[0] == b'\n' => return parse_connect(&self.line),
                Ok(_) if self.line.len() >= HANDSHAKE_MAX => {
                    return Handshake::Bad(format!("line longer than {HANDSHAKE_MAX} bytes"))
                }
                Ok(_) => self.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Handshake::Incomplete,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Handshake::Bad(format!("read failed: {e}")),
            }
        }
    }
}

/// Parses `CONNECT <port>` (trailing white space, e.g. `\r`, allowed).
pub fn parse_connect(line: &[u8]) -> Handshake {
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("CONNECT"), Some(port), None) => match port.parse::<u32>() {
            Ok(p) => Handshake::Connect(p),
            Err(_) => Handshake::Bad(format!("bad port in {text:?}")),
        },
        _ => Handshake::Bad(format!("expected `CONNECT <port>`, got {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("husk-vsock-unix-{}-{name}", std::process::id()))
    }

    #[test]
    fn handshake_lines() {
        assert_eq!(parse_connect(b"CONNECT 5000"), Handshake::Connect(5000));
        assert_eq!(parse_connect(b"CONNECT 7\r"), Handshake::Connect(7));
        assert!(matches!(parse_connect(b"CONNECT"), Handshake::Bad(_)));
        assert!(matches!(parse_connect(b"CONNECT -1"), Handshake::Bad(_)));
        assert!(matches!(
            parse_connect(b"CONNECT 99999999999"),
            Handshake::Bad(_)
        ));
        assert!(matches!(parse_connect(b"connect 5"), Handshake::Bad(_)));
        assert!(matches!(parse_connect(b"CONNECT 5 6"), Handshake::Bad(_)));
    }

    #[test]
    fn handshake_reader_stops_at_the_newline_and_waits_for_more() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut r = HandshakeReader::default();
        a.write_all(b"CONN").unwrap();
        assert_eq!(r.read(&mut b), Handshake::Incomplete);
        a.write_all(b"ECT 42\nDATA").unwrap();
        assert_eq!(r.read(&mut b), Handshake::Connect(42));
        let mut rest = [0u8; 4];
        b.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"DATA");

        let mut r = HandshakeReader::default();
        a.write_all(&[b'x'; 40]).unwrap();
        assert!(matches!(r.read(&mut b), Handshake::Bad(_)));
        let mut r = HandshakeReader::default();
        drop(a);
        // The rest of the 40 bytes, then end of file.
        assert!(matches!(r.read(&mut b), Handshake::Bad(_)));
    }

    #[test]
    fn bind_errors_are_specific_and_the_socket_is_removed_on_drop() {
        let path = tmp("bind");
        let l = UdsListener::bind(&path).unwrap();
        assert!(path.exists());
        assert!(matches!(
            UdsListener::bind(&path),
            Err(VsockError::PathExists(_))
        ));
        drop(l);
        assert!(!path.exists());

        let long = std::env::temp_dir().join("x".repeat(SUN_PATH_MAX));
        assert!(matches!(
            UdsListener::bind(&long),
            Err(VsockError::PathTooLong { .. })
        ));
        let missing = tmp("no-such-dir").join("v.sock");
        let e = UdsListener::bind(&missing).unwrap_err();
        assert!(matches!(e, VsockError::DirMissing(_)), "{e}");
        assert!(e.to_string().contains("does not exist"));
    }

    #[test]
    fn connect_nonblocking_reaches_a_listener_and_reports_a_missing_one() {
        let base = tmp("conn");
        let target = port_path(&base, 5000);
        assert!(target.to_str().unwrap().ends_with("conn_5000"));
        let e = connect_nonblocking(&target).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let listener = UnixListener::bind(&target).unwrap();
        let mut s = connect_nonblocking(&target).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        s.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        drop(listener);
        let _ = std::fs::remove_file(&target);
        let e = connect_nonblocking(&target).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
