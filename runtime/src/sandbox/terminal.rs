//! Terminals on the host side of a process's tty: raw mode (the caller's terminal, which
//! always comes back; a console pty's slave, which stays raw) and window sizes.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, RawFd};

use nix::sys::termios::{self, SetArg, Termios};

/// Puts a terminal in raw mode; the saved mode comes back when this is dropped (on every
/// exit path that unwinds or returns).
pub struct RawMode {
    fd: RawFd,
    saved: Termios,
}

impl RawMode {
    /// Raw mode on `fd`; `Ok(None)` when `fd` is not a terminal (nothing to do).
    pub fn enter(fd: BorrowedFd<'_>) -> io::Result<Option<Self>> {
        let saved = match termios::tcgetattr(fd) {
            Ok(t) => t,
            Err(nix::errno::Errno::ENOTTY) | Err(nix::errno::Errno::EINVAL) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw)?;
        Ok(Some(Self {
            fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
            saved,
        }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: the fd is one of this process's standard streams, open for its lifetime.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = termios::tcsetattr(fd, SetArg::TCSANOW, &self.saved);
    }
}

/// Makes the terminal `fd` fully transparent (no echo, no line editing, no signals, no
/// output processing): the host side of a console pty, where the guest's own pty does
/// all of that once.
pub fn make_raw(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut t = termios::tcgetattr(fd)?;
    termios::cfmakeraw(&mut t);
    termios::tcsetattr(fd, SetArg::TCSANOW, &t)?;
    Ok(())
}

/// The window size (rows, cols) of the first of stdin, stdout, stderr that is a terminal.
pub fn window_size() -> Option<(u16, u16)> {
    [
        io::stdin().as_fd(),
        io::stdout().as_fd(),
        io::stderr().as_fd(),
    ]
    .into_iter()
    .find_map(size_of)
}

/// The window size (rows, cols) of the terminal `fd`; `None` if it is not a terminal or
/// has no size yet (0x0, a fresh pty).
pub fn size_of(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, valid for the call.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::TIOCGWINSZ,
            &mut ws,
        )
    };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_mode_is_restored_and_size_read_from_a_pty() {
        let pty = nix::pty::openpty(
            Some(&nix::pty::Winsize {
                ws_row: 33,
                ws_col: 99,
                ws_xpixel: 0,
                ws_ypixel: 0,
            }),
            None,
        )
        .unwrap();
        assert_eq!(size_of(pty.slave.as_fd()), Some((33, 99)));
        let before = termios::tcgetattr(pty.slave.as_fd()).unwrap();
        {
            let _raw = RawMode::enter(pty.slave.as_fd()).unwrap().unwrap();
            let now = termios::tcgetattr(pty.slave.as_fd()).unwrap();
            assert!(!now.local_flags.contains(termios::LocalFlags::ICANON));
        }
        let after = termios::tcgetattr(pty.slave.as_fd()).unwrap();
        assert_eq!(before.local_flags, after.local_flags);
        assert_eq!(before.input_flags, after.input_flags);
        // Not a terminal: nothing to do.
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(RawMode::enter(r.as_fd()).unwrap().is_none());
        assert_eq!(size_of(r.as_fd()), None);
    }
}
