//! The container's host process: identified by pid and start time, so that a recycled
//! pid is never taken for it; signalled and awaited through a pidfd, which pins the
//! process once it is opened; and the exit-status convention clients expect (the
//! process's exit code, or 128+N when signal N killed it).

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::ready_pipe;
use super::signal::Signal;

/// A host process as the state store remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostProcess {
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot when the process started.
    pub start_time: u64,
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    /// One letter: R, S, D, Z (zombie), X (dead), T, ...
    state: char,
    start_time: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may
/// hold spaces and parentheses itself, so fields are counted after its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `rest` starts at field 3 (state); start time is field 22.
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some(Stat { state, start_time })
}

fn read_stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

impl HostProcess {
    /// The live process `pid` as it is now.
    pub fn of_pid(pid: i32) -> io::Result<HostProcess> {
        let stat = read_stat(pid)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no process {pid}")))?;
        Ok(HostProcess {
            pid,
            start_time: stat.start_time,
        })
    }

    /// True while this very process runs: the pid exists, started when recorded, and
    /// has not exited (a zombie has exited; only its parent has not reaped it yet).
    pub fn is_alive(&self) -> bool {
        self.pid > 0
            && read_stat(self.pid)
                .is_some_and(|s| s.start_time == self.start_time && !matches!(s.state, 'Z' | 'X'))
    }

    /// True when this very process has exited but its parent has not reaped it yet.
    pub fn is_unreaped(&self) -> bool {
        self.pid > 0
            && read_stat(self.pid)
                .is_some_and(|s| s.start_time == self.start_time && matches!(s.state, 'Z' | 'X'))
    }

    /// A pidfd for this process, or `None` if it is gone (or its pid now belongs to
    /// another process).
    pub fn pidfd(&self) -> io::Result<Option<OwnedFd>> {
        if self.pid <= 0 {
            return Ok(None);
        }
        // SAFETY: plain syscall with integer arguments.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ESRCH) => Ok(None),
                _ => Err(err),
            };
        }
        // SAFETY: pidfd_open returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // The pidfd now pins whichever process has this pid; make sure it is ours.
        Ok(self.is_alive().then_some(fd))
    }

    /// Sends `signal` to this process if it still runs; returns whether it did.
    pub fn signal(&self, signal: Signal) -> io::Result<bool> {
        let Some(fd) = self.pidfd()? else {
            return Ok(false);
        };
        // SAFETY: plain syscall; a null siginfo means "as kill(2) would".
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                signal.number(),
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ESRCH) => Ok(false),
                _ => Err(err),
            };
        }
        Ok(true)
    }

    /// Waits until this process has exited, at most `timeout`; returns whether it has.
    /// Works for any process, not only children (a pidfd polls readable on exit).
    pub fn wait_exit(&self, timeout: Duration) -> io::Result<bool> {
        let Some(fd) = self.pidfd()? else {
            return Ok(true);
        };
        if ready_pipe::wait_readable(fd.as_fd(), Instant::now() + timeout)? {
            return Ok(true);
        }
        Ok(!self.is_alive())
    }
}

/// The status a client expects for a finished process: its exit code, or 128+N when
/// signal N ended it (what a shell and conmon report).
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        // Stopped/continued statuses are not final; waitpid without WUNTRACED never
        // returns them.
        (None, None) => 255,
    }
}

/// Waits for the child `pid` of this process to exit; returns [`exit_code`] of it.
pub fn wait_child(pid: i32) -> io::Result<i32> {
    loop {
        let mut status = 0;
        // SAFETY: plain syscall; `status` is valid for writes.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(exit_code(ExitStatus::from_raw(status)));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line =
            "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn exit_codes_follow_the_128_plus_n_convention() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(42 << 8)), 42);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
    }

    #[test]
    fn a_live_process_is_alive_until_killed_and_a_recycled_identity_is_not() {
        let mut child = Command::new("sleep").arg("100").spawn().unwrap();
        let proc = HostProcess::of_pid(child.id() as i32).unwrap();
        assert!(proc.is_alive());
        let other = HostProcess {
            start_time: proc.start_time + 1,
            ..proc
        };
        assert!(!other.is_alive(), "same pid, other start time: not ours");
        assert!(other.pidfd().unwrap().is_none());
        assert!(!proc.wait_exit(Duration::from_millis(50)).unwrap());
        assert!(proc.signal(Signal::KILL).unwrap());
        // Unreaped, it is a zombie: exited, so not alive, and the pidfd says so.
        assert!(proc.wait_exit(Duration::from_secs(10)).unwrap());
        assert!(!proc.is_alive());
        assert!(proc.is_unreaped());
        assert!(!other.is_unreaped());
        assert_eq!(exit_code(child.wait().unwrap()), 137);
        assert!(!proc.is_unreaped());
        assert!(!proc.signal(Signal::KILL).unwrap());
    }

    #[test]
    // wait_child reaps it (waitpid), which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    fn wait_child_reports_exit_codes() {
        let child = Command::new("sh").args(["-c", "exit 42"]).spawn().unwrap();
        assert_eq!(wait_child(child.id() as i32).unwrap(), 42);
    }
}
