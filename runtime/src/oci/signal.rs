//! Signals as `runc kill` takes them: a number (`9`), a name (`KILL`) or a name with
//! the prefix (`SIGKILL`), any case. The guest is x86-64 Linux too, so a number means
//! the same signal on both sides.

use std::fmt;
use std::str::FromStr;

/// The highest signal number on x86-64 Linux (`SIGRTMAX`, `_NSIG - 1`).
pub const SIGRTMAX: i32 = 64;

/// Names without the `SIG` prefix and their x86-64 numbers (asm-generic/signal.h).
const NAMES: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// A valid signal number, 1..=[`SIGRTMAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal(i32);

impl Signal {
    pub const KILL: Signal = Signal(9);
    pub const TERM: Signal = Signal(15);

    pub fn new(number: i32) -> Option<Signal> {
        (1..=SIGRTMAX).contains(&number).then_some(Signal(number))
    }

    pub fn number(self) -> i32 {
        self.0
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match NAMES.iter().find(|(_, n)| *n == self.0) {
            Some((name, _)) => write!(f, "SIG{name}"),
            None => write!(f, "signal {}", self.0),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown signal {0:?}")]
pub struct UnknownSignal(pub String);

impl FromStr for Signal {
    type Err = UnknownSignal;

    fn from_str(raw: &str) -> Result<Signal, UnknownSignal> {
        let unknown = || UnknownSignal(raw.to_string());
        if let Ok(number) = raw.parse::<i32>() {
            return Signal::new(number).ok_or_else(unknown);
        }
        let upper = raw.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, number)| Signal(*number))
            .ok_or_else(unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_names_like_runc() {
        for raw in ["9", "KILL", "SIGKILL", "kill", "sigkill"] {
            assert_eq!(raw.parse(), Ok(Signal::KILL), "{raw}");
        }
        assert_eq!("28".parse::<Signal>().unwrap().to_string(), "SIGWINCH");
        assert_eq!("USR1".parse::<Signal>().unwrap().number(), 10);
        assert_eq!("64".parse::<Signal>().unwrap().to_string(), "signal 64");
    }

    #[test]
    fn rejects_unknown_signals() {
        for raw in ["0", "65", "-9", "BOGUS", "SIG", "", "9x"] {
            assert_eq!(
                raw.parse::<Signal>(),
                Err(UnknownSignal(raw.into())),
                "{raw}"
            );
        }
    }
}
