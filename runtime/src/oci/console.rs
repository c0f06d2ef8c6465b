//! `--console-socket`: handing the pty master of a container's terminal to the client.
//!
//! The client (conmon, containerd's shim, `recvtty`) listens on a stream unix socket;
//! the runtime connects and sends one message whose payload is the master's name and
//! whose one SCM_RIGHTS control message carries the master fd, as runc does. conmon
//! ignores the payload; containerd's go-runc uses it as the file name. It must arrive
//! before `create`/`exec` exits.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// What runc sends as the payload: the name of the master it opened.
pub const MASTER_NAME: &str = "/dev/ptmx";

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("connect to console socket {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("send the terminal to console socket {path}: {source}")]
    Send {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("receive the terminal on a console socket: {0}")]
    Receive(#[source] io::Error),
    #[error("open a pseudo-terminal: {0}")]
    Open(#[source] nix::Error),
}

/// A pseudo-terminal pair: the master goes to the client, the slave is the
/// container's side (relayed into the guest).
#[derive(Debug)]
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Opens a new pseudo-terminal pair (close-on-exec both).
pub fn open_pty() -> Result<Pty, ConsoleError> {
    let pty = nix::pty::openpty(None, None).map_err(ConsoleError::Open)?;
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(ConsoleError::Open)?;
    }
    Ok(Pty {
        master: pty.master,
        slave: pty.slave,
    })
}

/// Connects to `socket` and sends `master` over it.
pub fn send_master(socket: &Path, master: BorrowedFd<'_>) -> Result<(), ConsoleError> {
    let stream = UnixStream::connect(socket).map_err(|source| ConsoleError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let fds = [master.as_raw_fd()];
    let payload = [IoSlice::new(MASTER_NAME.as_bytes())];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &payload,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|source| ConsoleError::Send {
        path: socket.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// The client's side (what conmon and `recvtty` do): accepts one connection on
/// `listener`, reads one message carrying exactly one fd; returns the payload (the
/// master's name) and the master.
pub fn receive_master(listener: &UnixListener) -> Result<(String, OwnedFd), ConsoleError> {
    let (conn, _) = listener.accept().map_err(ConsoleError::Receive)?;
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| ConsoleError::Receive(e.into()))?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(|e| ConsoleError::Receive(e.into()))? {
        if let ControlMessageOwned::ScmRights(f) = c {
            fds.extend(f);
        }
    }
    let n = msg.bytes;
    // SAFETY: each fd just arrived with SCM_RIGHTS and belongs to nobody else.
    let mut owned: Vec<OwnedFd> = fds
        .into_iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if owned.len() != 1 {
        return Err(ConsoleError::Receive(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected one fd, got {}", owned.len()),
        )));
    }
    let name = String::from_utf8_lossy(&buf[..n]).into_owned();
    Ok((name, owned.remove(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn the_client_gets_a_working_master() {
        let dir = std::env::temp_dir().join(format!("husk-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("console.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).unwrap();
        let client = std::thread::spawn(move || receive_master(&listener).unwrap());

        let pty = open_pty().unwrap();
        send_master(&sock, pty.master.as_fd()).unwrap();
        drop(pty.master); // the client's copy is the only master left
        let (name, master) = client.join().unwrap();
        assert_eq!(name, MASTER_NAME);

        // Client -> container: typed input arrives on the slave, line by line.
        let mut master = File::from(master);
        let mut slave = File::from(pty.slave);
        master.write_all(b"hello\n").unwrap();
        let mut line = [0u8; 6];
        slave.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"hello\n");
        // Container -> client: output arrives on the master (ONLCR makes \n \r\n; the
        // echo of the input comes first).
        slave.write_all(b"out\n").unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"out\r\n") {
            master.read_exact(&mut byte).unwrap();
            seen.push(byte[0]);
            assert!(seen.len() < 64, "{seen:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_socket_is_a_clear_error() {
        let pty = open_pty().unwrap();
        let e =
            send_master(Path::new("/nonexistent/console.sock"), pty.master.as_fd()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/console.sock"), "{e}");
    }
}
