//! The wire format: every message is one frame, a 4-byte big-endian payload length followed
//! by that many bytes of JSON (serde_json).
//!
//! Why this and not ttrpc/protobuf (see also the crate docs):
//! - The payloads that matter are OCI `Spec`/`Process` documents. They are JSON by
//!   definition and oci-spec's serde types (with `skip_serializing_if`, renames, defaults)
//!   only round-trip through a self-describing format, which rules out bincode/postcard as
//!   well. JSON keeps the spec exactly as the client wrote it.
//! - Both ends are sync Rust we own and ship together; a length prefix and `serde_json` is a
//!   page of code, with no codegen, no `protoc`, no async runtime, and almost nothing added
//!   to the static guest binary (serde_json is needed anyway for the spec).
//! - Frames are human-readable in a packet dump or a test failure.
//!
//! The cost is no schema-checked evolution: that is what [`crate::version`] is for (the
//! versions must match exactly; the host and the guest initramfs are built together).
//!
//! A frame longer than [`MAX_FRAME_SIZE`] is refused before any allocation: a confused or
//! hostile peer cannot make the other side allocate gigabytes. After such an error (or any
//! I/O error mid-frame) the connection is out of step and must be closed.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::messages::AgentError;

/// Hard limit on one frame's payload. A full OCI spec with a large seccomp profile is well
/// under 1 MiB; 4 MiB leaves room for big annotation sets without inviting abuse.
pub const MAX_FRAME_SIZE: usize = 4 << 20;

/// Everything that can go wrong speaking the protocol, on either side.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("i/o error on the agent connection: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection cleanly between two frames.
    #[error("the peer closed the connection")]
    Closed,
    /// The connection ended in the middle of a frame (or of the hello).
    #[error("the connection ended in the middle of a frame ({got} of {expected} bytes)")]
    Truncated { got: usize, expected: usize },
    #[error("frame of {len} bytes exceeds the protocol maximum of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("cannot encode a message: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("cannot decode a message: {0}")]
    Decode(#[source] serde_json::Error),
    /// The peer's hello did not start with [`crate::MAGIC`]: not a husk peer at all.
    #[error("the peer is not speaking the husk agent protocol (hello started with {0:02x?})")]
    BadMagic([u8; 4]),
    /// Host and agent were built with different protocol versions.
    #[error(
        "husk agent protocol version mismatch: the host speaks version {host}, the agent \
         speaks version {agent}; rebuild the guest initramfs with the matching husk-agent"
    )]
    VersionMismatch { host: u32, agent: u32 },
    /// A response that does not answer the request that was sent.
    #[error("response id {got} does not match request id {expected}")]
    IdMismatch { expected: u64, got: u64 },
    /// A well-formed response of the wrong kind for the request.
    #[error("unexpected response to {request}: {response}")]
    UnexpectedResponse {
        request: &'static str,
        response: String,
    },
    /// The agent understood the request and refused or failed it.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// Writes `msg` as one frame and flushes.
pub fn write_frame<W: Write + ?Sized, T: Serialize + ?Sized>(
    w: &mut W,
    msg: &T,
) -> Result<(), ProtocolError> {
    let payload = serde_json::to_vec(msg).map_err(ProtocolError::Encode)?;
    if payload.len() > MAX_FRAME_SIZE {
        return Err(ProtocolError::FrameTooLarge {
            len: payload.len(),
            max: MAX_FRAME_SIZE,
        });
    }
    // One buffer, one write: a frame is never interleaved with anything on a stream
    // socket, and a vsock packet boundary costs a VM exit.
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(&payload);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame and decodes it. A clean EOF before the first byte is
/// [`ProtocolError::Closed`]; an EOF anywhere later is [`ProtocolError::Truncated`].
pub fn read_frame<R: Read + ?Sized, T: DeserializeOwned>(r: &mut R) -> Result<T, ProtocolError> {
    let payload = read_frame_bytes(r)?;
    serde_json::from_slice(&payload).map_err(ProtocolError::Decode)
}

/// Reads one frame's payload without decoding it.
pub fn read_frame_bytes<R: Read + ?Sized>(r: &mut R) -> Result<Vec<u8>, ProtocolError> {
    let mut len = [0u8; 4];
    match read_full(r, &mut len)? {
        0 => return Err(ProtocolError::Closed),
        4 => {}
        got => return Err(ProtocolError::Truncated { got, expected: 4 }),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_SIZE {
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: MAX_FRAME_SIZE,
        });
    }
    let mut payload = vec![0u8; len];
    let got = read_full(r, &mut payload)?;
    if got != len {
        return Err(ProtocolError::Truncated { got, expected: len });
    }
    Ok(payload)
}

/// Fills `buf` unless EOF comes first; returns how many bytes were read.
pub(crate) fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn round_trip_and_layout() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &vec![1u32, 2]).unwrap();
        assert_eq!(&buf[..4], &5u32.to_be_bytes());
        assert_eq!(&buf[4..], b"[1,2]");
        let v: Vec<u32> = read_frame(&mut Cursor::new(buf)).unwrap();
        assert_eq!(v, [1, 2]);
    }

    #[test]
    fn clean_eof_is_closed_and_partial_is_truncated() {
        let r: Result<u32, _> = read_frame(&mut Cursor::new(Vec::new()));
        assert!(matches!(r, Err(ProtocolError::Closed)));
        let r: Result<u32, _> = read_frame(&mut Cursor::new(vec![0, 0]));
        assert!(matches!(
            r,
            Err(ProtocolError::Truncated {
                got: 2,
                expected: 4
            })
        ));
        let mut buf = 10u32.to_be_bytes().to_vec();
        buf.extend_from_slice(b"123");
        let r: Result<u32, _> = read_frame(&mut Cursor::new(buf));
        assert!(matches!(
            r,
            Err(ProtocolError::Truncated {
                got: 3,
                expected: 10
            })
        ));
    }

    #[test]
    fn oversized_frames_are_refused_both_ways() {
        let buf = ((MAX_FRAME_SIZE + 1) as u32).to_be_bytes().to_vec();
        let r: Result<u32, _> = read_frame(&mut Cursor::new(buf));
        assert!(matches!(r, Err(ProtocolError::FrameTooLarge { .. })));
        let big = "x".repeat(MAX_FRAME_SIZE);
        let r = write_frame(&mut Vec::new(), &big);
        assert!(matches!(r, Err(ProtocolError::FrameTooLarge { .. })));
    }

    #[test]
    fn garbage_payload_is_a_decode_error() {
        let mut buf = 3u32.to_be_bytes().to_vec();
        buf.extend_from_slice(b"{{{");
        let r: Result<u32, _> = read_frame(&mut Cursor::new(buf));
        assert!(matches!(r, Err(ProtocolError::Decode(_))));
    }
}
