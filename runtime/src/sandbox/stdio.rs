//! Copying a process's stdio between the host's own fds and the agent's streams: what
//! `husk vm run` and the OCI backend's monitor process both do with their fds 0/1/2.

use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::sync::mpsc;

/// One of this process's standard fds, unbuffered (std's stdout is line buffered, which
/// would hold back a prompt that has no newline yet) and never closed.
pub struct StdFd(ManuallyDrop<std::fs::File>);

/// Fd `fd` (0, 1 or 2) of this process as a [`StdFd`].
pub fn std_fd(fd: i32) -> StdFd {
    // SAFETY: fds 0-2 are open for the life of the process; ManuallyDrop never closes them.
    StdFd(ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) }))
}

impl Read for StdFd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for StdFd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Copies `from` to `to` on a thread named `name` until EOF or an error on either side;
/// then runs `at_eof` and signals `done`.
pub fn relay(
    name: &str,
    mut from: impl Read + Send + 'static,
    mut to: impl Write + Send + 'static,
    done: Option<mpsc::Sender<()>>,
    at_eof: impl FnOnce() + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(128 << 10)
        .spawn(move || {
            let mut buf = vec![0u8; 32 << 10];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if to.write_all(&buf[..n]).and_then(|_| to.flush()).is_err() {
                    break;
                }
            }
            at_eof();
            if let Some(done) = done {
                let _ = done.send(());
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn copies_to_eof_then_reports() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let (c, mut d) = UnixStream::pair().unwrap();
        let (tx, rx) = mpsc::channel();
        relay("test-relay", b, c, Some(tx), || {}).unwrap();
        a.write_all(b"hello").unwrap();
        drop(a);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        let mut got = String::new();
        d.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello");
    }
}
