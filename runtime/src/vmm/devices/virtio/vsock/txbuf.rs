//! Bytes the guest sent on a connection that its host socket could not take yet.
//!
//! A guest TX buffer must be returned to the guest once read, so data the host reader is
//! not ready for has to be kept somewhere. Its size is exactly the credit (`buf_alloc`) the
//! connection advertises to the guest: a guest that respects vsock flow control can never
//! overflow it, and one that does not gets its connection reset. The memory is only
//! allocated the first time a connection meets backpressure.

use std::io::{self, Write};

#[derive(Debug, thiserror::Error)]
pub enum TxBufError {
    #[error("the guest sent {len} bytes with only {free} bytes of credit left")]
    Overflow { len: usize, free: usize },
}

/// A fixed-capacity FIFO of bytes (a ring).
#[derive(Debug)]
pub struct TxBuf {
    data: Vec<u8>,
    capacity: usize,
    /// Index of the oldest byte.
    head: usize,
    len: usize,
}

impl TxBuf {
    pub fn new(capacity: usize) -> Self {
        Self {
            data: Vec::new(),
            capacity,
            head: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn free(&self) -> usize {
        self.capacity - self.len
    }

    /// Appends `len` bytes that `fill` copies into the slices it is given (at most two,
    /// where the ring wraps), in order.
    pub fn push_with<E>(
        &mut self,
        len: usize,
        mut fill: impl FnMut(usize, &mut [u8]) -> Result<(), E>,
    ) -> Result<Result<(), E>, TxBufError> {
        if len > self.free() {
            return Err(TxBufError::Overflow {
                len,
                free: self.free(),
            });
        }
        if self.data.is_empty() {
            self.data = vec![0; self.capacity];
        }
        let tail = (self.head + self.len) % self.capacity;
        let first = len.min(self.capacity - tail);
        if let Err(e) = fill(0, &mut self.data[tail..tail + first]) {
            return Ok(Err(e));
        }
        if first < len {
            if let Err(e) = fill(first, &mut self.data[..len - first]) {
                return Ok(Err(e));
            }
        }
        self.len += len;
        Ok(Ok(()))
    }

    /// Writes as much as `dst` takes, oldest bytes first. Returns the count written; an error
    /// only if nothing was (WouldBlock included).
    pub fn flush_to<W: Write>(&mut self, dst: &mut W) -> io::Result<usize> {
        let mut done = 0;
        while self.len > 0 {
            let first = self.len.min(self.capacity - self.head);
            match dst.write(&self.data[self.head..self.head + first]) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    self.head = (self.head + n) % self.capacity;
                    self.len -= n;
                    if n < first {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) if done > 0 => break,
                Err(e) => return Err(e),
            }
        }
        if self.len == 0 {
            self.head = 0;
        }
        Ok(done)
    }

    /// Forgets everything buffered (the connection is being reset) and frees the memory.
    pub fn clear(&mut self) {
        self.data = Vec::new();
        self.head = 0;
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(buf: &mut TxBuf, bytes: &[u8]) -> Result<(), TxBufError> {
        buf.push_with(bytes.len(), |off, out: &mut [u8]| {
            out.copy_from_slice(&bytes[off..off + out.len()]);
            Ok::<(), ()>(())
        })
        .map(|r| r.unwrap())
    }

    /// A writer that takes at most `limit` bytes per call, then blocks.
    struct Slow {
        got: Vec<u8>,
        limit: usize,
        calls_left: usize,
    }

    impl Write for Slow {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.calls_left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls_left -= 1;
            let n = b.len().min(self.limit);
            self.got.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn keeps_order_across_wraps_and_refuses_overflow() {
        let mut buf = TxBuf::new(8);
        push(&mut buf, b"abcdef").unwrap();
        let mut w = Slow {
            got: vec![],
            limit: 4,
            calls_left: 1,
        };
        assert_eq!(buf.flush_to(&mut w).unwrap(), 4);
        push(&mut buf, b"ghijkl").unwrap(); // wraps
        assert!(matches!(
            push(&mut buf, b"m"),
            Err(TxBufError::Overflow { len: 1, free: 0 })
        ));
        w.calls_left = 10;
        w.limit = 3;
        // A short write means the socket is full: each flush stops there.
        let mut flushed = 0;
        while !buf.is_empty() {
            flushed += buf.flush_to(&mut w).unwrap();
        }
        assert_eq!(flushed, 8);
        assert_eq!(w.got, b"abcdefghijkl");
        assert!(buf.is_empty());
        w.calls_left = 0;
        assert_eq!(buf.flush_to(&mut w).unwrap(), 0);
        push(&mut buf, b"x").unwrap();
        assert_eq!(
            buf.flush_to(&mut w).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
