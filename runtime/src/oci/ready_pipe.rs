//! The pipe a helper process that husk spawns (the VM monitor, an exec proxy) reports
//! on once it is ready: the write end becomes a fixed fd number in the child, the
//! spawner reads the other end to EOF (the child closes it, or exits) within a deadline.
//! Also the one "poll one fd until a deadline" of the OCI side.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Instant;

/// A pipe whose ends are close-on-exec: (read, write).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes `write` fd `target` of the child `command` spawns (open across its exec; every
/// other fd of ours stays close-on-exec). `write` must stay open until the spawn, and
/// be dropped right after it, or the reader never sees EOF.
pub fn give_to_child(command: &mut Command, write: &OwnedFd, target: RawFd) {
    let fd = write.as_raw_fd();
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if fd == target {
                // Already in place: only the close-on-exec flag must go.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, target) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Waits until `fd` is readable (true) or `deadline` passes (false).
pub fn wait_readable(fd: BorrowedFd<'_>, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            return Ok(true);
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// Everything written to `read` until EOF; a `TimedOut` error if no EOF came by
/// `deadline`.
pub fn read_to_eof(read: OwnedFd, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut file = File::from(read);
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if !wait_readable(file.as_fd(), deadline)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no end of the report before the deadline",
            ));
        }
        match file.read(&mut buf) {
            Ok(0) => return Ok(text),
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    #[test]
    fn reads_to_eof_within_the_deadline() {
        let (read, write) = pipe().unwrap();
        let mut w = File::from(write);
        w.write_all(b"error the guest agent was not ready\n")
            .unwrap();
        drop(w);
        let text = read_to_eof(read, Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(text, b"error the guest agent was not ready\n");
    }

    #[test]
    fn a_writer_that_never_closes_times_out() {
        let (read, _write) = pipe().unwrap();
        let e = read_to_eof(read, Instant::now() + Duration::from_millis(50)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn the_child_gets_the_write_end_at_its_number() {
        let (read, write) = pipe().unwrap();
        let mut command = Command::new("/bin/sh");
        command.args(["-c", "echo ready >&3"]);
        give_to_child(&mut command, &write, 3);
        let mut child = command.spawn().unwrap();
        drop(write);
        let text = read_to_eof(read, Instant::now() + Duration::from_secs(10)).unwrap();
        assert_eq!(text, b"ready\n");
        assert!(child.wait().unwrap().success());
    }
}
