//! The guest's serial console, kept for error messages: the last few KiB, and optionally
//! a copy in a file. A sandbox's console is normally silent (`quiet`); what it holds
//! matters when the guest dies before its agent could say why (a kernel panic).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// How much of the console's end is kept.
const TAIL_BYTES: usize = 4096;

/// The shared end of the console, readable while the VM runs and after.
#[derive(Clone, Default)]
pub struct ConsoleTail(Arc<Mutex<VecDeque<u8>>>);

impl ConsoleTail {
    /// The sink to give the VM: keeps the tail, copies everything to `tee` if given.
    pub fn sink(&self, tee: Option<File>) -> Box<dyn Write + Send> {
        Box::new(TailSink {
            tail: self.clone(),
            tee,
        })
    }

    /// The last non-empty console line, stripped of control characters.
    pub fn last_line(&self) -> Option<String> {
        let tail: Vec<u8> = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        String::from_utf8_lossy(&tail)
            .lines()
            .map(|l| l.trim_matches(|c: char| c.is_whitespace() || c.is_control()))
            .rfind(|l| !l.is_empty())
            .map(str::to_string)
    }

    /// `" (last console line: ...)"`, or `" (no console output)"`: for error messages.
    pub fn describe(&self) -> String {
        match self.last_line() {
            Some(l) => format!(" (last console line: {l:?})"),
            None => " (no console output)".to_string(),
        }
    }
}

struct TailSink {
    tail: ConsoleTail,
    tee: Option<File>,
}

impl Write for TailSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        {
            let mut tail = self.tail.0.lock().unwrap_or_else(|e| e.into_inner());
            tail.extend(buf);
            let excess = tail.len().saturating_sub(TAIL_BYTES);
            tail.drain(..excess);
        }
        if let Some(f) = &mut self.tee {
            // A debugging copy: a failing file must not fail the guest's console.
            let _ = f.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_and_the_last_line() {
        let tail = ConsoleTail::default();
        assert_eq!(tail.describe(), " (no console output)");
        let mut sink = tail.sink(None);
        sink.write_all(&vec![b'x'; 3 * TAIL_BYTES]).unwrap();
        sink.write_all(b"\r\nKernel panic - not syncing: x\r\n\r\n")
            .unwrap();
        assert_eq!(tail.0.lock().unwrap().len(), TAIL_BYTES);
        assert_eq!(tail.last_line().unwrap(), "Kernel panic - not syncing: x");
    }
}
