//! The version rule and the hello exchange.
//!
//! Every connection (control, stdio, events) starts with a fixed 8-byte hello sent by *both*
//! sides before either reads: 4 bytes [`MAGIC`] then the sender's [`PROTOCOL_VERSION`] as a
//! big-endian u32. The hello's layout is frozen forever, independent of the JSON messages
//! that follow, so two builds that disagree on everything else still understand each other's
//! hello and can say exactly what is wrong. Both sides write first, so neither can block
//! the other (8 bytes always fit in a socket buffer), and both sides see the mismatch:
//! the host reports it to the user, the agent logs it and drops the connection.
//!
//! The rule: the versions must be **equal**. The host and the guest initramfs are built
//! from the same workspace and shipped together; there is no negotiation to get wrong.
//! Bump [`PROTOCOL_VERSION`] on any change to a message's meaning or encoding.

use std::io::{Read, Write};

use crate::frame::{read_full, ProtocolError};

/// The protocol version this build speaks.
///
/// History: 1 = the first agent (containers were chroots); 2 = `ListProcesses`, and
/// `Signal { all }` / the end of the init mean the container's pid namespace.
pub const PROTOCOL_VERSION: u32 = 2;
/// First bytes of every connection.
pub const MAGIC: [u8; 4] = *b"HUSK";
/// Length of the hello: magic + version.
pub const HELLO_LEN: usize = 8;

/// Which end of the connection we are; only used to name the versions in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Host,
    Agent,
}

/// Encodes a hello for `version`.
pub fn hello(version: u32) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4..].copy_from_slice(&version.to_be_bytes());
    h
}

/// Sends our hello, reads the peer's, and checks the version rule. Returns the peer's
/// version (always equal to ours on success).
///
/// Set a read timeout on the stream first if the peer may be unresponsive.
pub fn handshake<S: Read + Write + ?Sized>(
    stream: &mut S,
    role: Role,
) -> Result<u32, ProtocolError> {
    handshake_with_version(stream, role, PROTOCOL_VERSION)
}

/// [`handshake`] claiming an arbitrary version: for tests of the mismatch path.
#[doc(hidden)]
pub fn handshake_with_version<S: Read + Write + ?Sized>(
    stream: &mut S,
    role: Role,
    ours: u32,
) -> Result<u32, ProtocolError> {
    // A peer that is already gone is `Closed`, whichever of our write or read notices.
    let gone = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
            ProtocolError::Closed
        }
        _ => ProtocolError::Io(e),
    };
    stream.write_all(&hello(ours)).map_err(gone)?;
    stream.flush().map_err(gone)?;
    let mut peer = [0u8; HELLO_LEN];
    match read_full(stream, &mut peer).map_err(gone)? {
        0 => return Err(ProtocolError::Closed),
        HELLO_LEN => {}
        got => {
            // Name the real problem when what we got is not even our magic.
            if got >= 4 && peer[..4] != MAGIC {
                return Err(ProtocolError::BadMagic([
                    peer[0], peer[1], peer[2], peer[3],
                ]));
            }
            return Err(ProtocolError::Truncated {
                got,
                expected: HELLO_LEN,
            });
        }
    }
    if peer[..4] != MAGIC {
        return Err(ProtocolError::BadMagic([
            peer[0], peer[1], peer[2], peer[3],
        ]));
    }
    let theirs = u32::from_be_bytes([peer[4], peer[5], peer[6], peer[7]]);
    if theirs != ours {
        let (host, agent) = match role {
            Role::Host => (ours, theirs),
            Role::Agent => (theirs, ours),
        };
        return Err(ProtocolError::VersionMismatch { host, agent });
    }
    Ok(theirs)
}
