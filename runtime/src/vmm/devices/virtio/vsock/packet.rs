//! Vsock packets as they sit in guest memory: the 44-byte header (`struct
//! virtio_vsock_hdr`, little-endian) followed by the payload, carried by a descriptor chain
//! that may split either anywhere (Linux 6.x puts an RX header and its payload in one
//! descriptor, a TX header and its payload in two).
//!
//! Every guest address is checked here, once, when a chain is parsed: a chain's descriptors
//! become a [`GuestBuf`] (ranges known to lie in guest RAM), and the header's `len` is
//! checked against what the chain holds. Payload bytes are then moved between guest memory
//! and host file descriptors with `read(2)`/`write(2)` on the guest memory itself, never
//! through an intermediate buffer.

use std::io;

use virtio_queue::DescriptorChain;
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, ReadVolatile,
    VolatileMemoryError, WriteVolatile,
};

use super::uapi;

/// Size of `struct virtio_vsock_hdr`.
pub const HEADER_SIZE: usize = 44;
/// The largest payload accepted in one packet or put in one RX buffer (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("descriptor at {addr:#x} (+{len} bytes) is not in guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("a TX chain holds a device-writable descriptor")]
    WritableInTx,
    #[error("an RX chain holds a device-readable descriptor")]
    ReadableInRx,
    #[error("the chain holds {0} bytes, less than a {HEADER_SIZE}-byte header")]
    TooShort(usize),
    #[error("header len {len} exceeds the {room} payload bytes the chain holds")]
    LenExceedsChain { len: u32, room: usize },
    #[error("header len {0} exceeds the {MAX_PAYLOAD}-byte maximum packet")]
    LenTooLarge(u32),
    #[error("guest memory access failed: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// `struct virtio_vsock_hdr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl PacketHeader {
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"));
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// A stream header from the host (CID 2) to the guest.
    pub fn host_to_guest(guest_cid: u64, host_port: u32, guest_port: u32, op: u16) -> Self {
        Self {
            src_cid: uapi::VSOCK_HOST_CID,
            dst_cid: guest_cid,
            src_port: host_port,
            dst_port: guest_port,
            type_: uapi::VIRTIO_VSOCK_TYPE_STREAM,
            op,
            ..Self::default()
        }
    }
}

/// The guest memory a descriptor chain names, every range checked to lie in guest RAM, seen
/// as one run of bytes.
#[derive(Debug, Default)]
pub struct GuestBuf {
    ranges: Vec<(GuestAddress, usize)>,
    len: usize,
}

impl GuestBuf {
    /// Collects the descriptors of `chain`; all must be device-writable (`writable`) or all
    /// device-readable.
    fn from_chain(
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
        writable: bool,
    ) -> Result<Self, PacketError> {
        let mut buf = GuestBuf::default();
        // The chain iterator bounds the chain by the queue size (no loops) and its total
        // length by 4 GiB; indirect tables are followed and checked by virtio-queue.
        for desc in chain {
            if desc.is_write_only() != writable {
                return Err(if writable {
                    PacketError::ReadableInRx
                } else {
                    PacketError::WritableInTx
                });
            }
            let len = desc.len() as usize;
            if !mem.check_range(desc.addr(), len) {
                return Err(PacketError::OutsideMemory {
                    addr: desc.addr().0,
                    len: desc.len(),
                });
            }
            if len > 0 {
                buf.ranges.push((desc.addr(), len));
                buf.len += len;
            }
        }
        Ok(buf)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The guest ranges covering bytes `[offset, offset + len)` of the buffer (clipped to
    /// its end).
    fn span(&self, offset: usize, len: usize) -> impl Iterator<Item = (GuestAddress, usize)> + '_ {
        let mut skip = offset;
        let mut left = len;
        self.ranges.iter().filter_map(move |&(addr, rlen)| {
            if left == 0 {
                return None;
            }
            if skip >= rlen {
                skip -= rlen;
                return None;
            }
            // In range: addr + skip lies inside a checked range, so no overflow.
            let start = GuestAddress(addr.0 + skip as u64);
            let n = (rlen - skip).min(left);
            skip = 0;
            left -= n;
            Some((start, n))
        })
    }

    /// Copies bytes at `offset` into `out` (for headers: small).
    fn read_bytes(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        out: &mut [u8],
    ) -> Result<(), GuestMemoryError> {
        let mut done = 0;
        for (addr, n) in self.span(offset, out.len()) {
            mem.read_slice(&mut out[done..done + n], addr)?;
            done += n;
        }
        Ok(())
    }

    /// Copies `data` into the buffer at `offset`.
    fn write_bytes(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        data: &[u8],
    ) -> Result<(), GuestMemoryError> {
        let mut done = 0;
        for (addr, n) in self.span(offset, data.len()) {
            mem.write_slice(&data[done..done + n], addr)?;
            done += n;
        }
        Ok(())
    }

    /// Writes bytes `[offset, offset + len)` to `dst` straight from guest memory, one
    /// `write(2)` per contiguous range, stopping at the first short write. Returns how many
    /// bytes went; an error only if none did.
    pub fn write_to<W: WriteVolatile>(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        len: usize,
        dst: &mut W,
    ) -> io::Result<usize> {
        let mut done = 0;
        for (addr, n) in self.span(offset, len) {
            for slice in mem.get_slices(addr, n) {
                let slice = slice.map_err(io::Error::other)?;
                match dst.write_volatile(&slice) {
                    Ok(w) => {
                        done += w;
                        if w < slice.len() {
                            return Ok(done);
                        }
                    }
                    Err(_) if done > 0 => return Ok(done),
                    Err(e) => return Err(volatile_to_io(e)),
                }
            }
        }
        Ok(done)
    }

    /// Reads up to `len` bytes from `src` straight into guest memory at `offset`, one
    /// `read(2)` per contiguous range, stopping at the first short read. Returns how many
    /// bytes came (0: end of file); an error only if none did.
    pub fn read_from<R: ReadVolatile>(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        len: usize,
        src: &mut R,
    ) -> io::Result<usize> {
        let mut done = 0;
        for (addr, n) in self.span(offset, len) {
            for slice in mem.get_slices(addr, n) {
                let mut slice = slice.map_err(io::Error::other)?;
                match src.read_volatile(&mut slice) {
                    Ok(r) => {
                        done += r;
                        if r < slice.len() {
                            return Ok(done);
                        }
                    }
                    Err(_) if done > 0 => return Ok(done),
                    Err(e) => return Err(volatile_to_io(e)),
                }
            }
        }
        Ok(done)
    }

    /// Copies bytes `[offset, offset + out.len())` into `out` (the backpressure path).
    pub fn copy_out(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        out: &mut [u8],
    ) -> Result<(), GuestMemoryError> {
        self.read_bytes(mem, offset, out)
    }
}

fn volatile_to_io(e: VolatileMemoryError) -> io::Error {
    match e {
        VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other),
    }
}

/// A packet the guest sent (TX queue): its header, and its payload left in guest memory.
#[derive(Debug)]
pub struct TxPacket {
    pub hdr: PacketHeader,
    buf: GuestBuf,
}

impl TxPacket {
    /// Parses a TX chain: device-readable descriptors holding a header and at least `len`
    /// more bytes, `len` at most [`MAX_PAYLOAD`].
    pub fn parse(
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<Self, PacketError> {
        let buf = GuestBuf::from_chain(chain, mem, false)?;
        if buf.len() < HEADER_SIZE {
            return Err(PacketError::TooShort(buf.len()));
        }
        let mut raw = [0u8; HEADER_SIZE];
        buf.read_bytes(mem, 0, &mut raw)?;
        let hdr = PacketHeader::from_bytes(&raw);
        if hdr.len as usize > MAX_PAYLOAD {
            return Err(PacketError::LenTooLarge(hdr.len));
        }
        let room = buf.len() - HEADER_SIZE;
        if hdr.len as usize > room {
            return Err(PacketError::LenExceedsChain { len: hdr.len, room });
        }
        Ok(Self { hdr, buf })
    }

    pub fn payload_len(&self) -> usize {
        self.hdr.len as usize
    }

    /// Writes payload bytes from `offset` on to `dst`, straight from guest memory.
    pub fn write_payload_to<W: WriteVolatile>(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        dst: &mut W,
    ) -> io::Result<usize> {
        let len = self.payload_len().saturating_sub(offset);
        self.buf.write_to(mem, HEADER_SIZE + offset, len, dst)
    }

    /// Copies payload bytes from `offset` on into `out`.
    pub fn copy_payload(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        out: &mut [u8],
    ) -> Result<(), GuestMemoryError> {
        self.buf.copy_out(mem, HEADER_SIZE + offset, out)
    }
}

/// An empty buffer the guest gave for packets to it (RX queue).
#[derive(Debug)]
pub struct RxBuffer {
    buf: GuestBuf,
}

impl RxBuffer {
    /// Parses an RX chain: device-writable descriptors with room for at least a header.
    pub fn parse(
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> Result<Self, PacketError> {
        let buf = GuestBuf::from_chain(chain, mem, true)?;
        if buf.len() < HEADER_SIZE {
            return Err(PacketError::TooShort(buf.len()));
        }
        Ok(Self { buf })
    }

    /// How many payload bytes fit after the header.
    pub fn payload_room(&self) -> usize {
        (self.buf.len() - HEADER_SIZE).min(MAX_PAYLOAD)
    }

    /// Reads up to `max` payload bytes from `src` straight into the buffer.
    pub fn read_payload_from<R: ReadVolatile>(
        &self,
        mem: &GuestMemoryMmap,
        max: usize,
        src: &mut R,
    ) -> io::Result<usize> {
        let len = max.min(self.payload_room());
        self.buf.read_from(mem, HEADER_SIZE, len, src)
    }

    pub fn write_header(
        &self,
        mem: &GuestMemoryMmap,
        hdr: &PacketHeader,
    ) -> Result<(), GuestMemoryError> {
        self.buf.write_bytes(mem, 0, &hdr.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_in_kernel_layout() {
        let hdr = PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 5000,
            len: 4096,
            type_: uapi::VIRTIO_VSOCK_TYPE_STREAM,
            op: uapi::VIRTIO_VSOCK_OP_RW,
            flags: 3,
            buf_alloc: 262144,
            fwd_cnt: 77,
        };
        let b = hdr.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[20..24], &5000u32.to_le_bytes());
        assert_eq!(&b[28..30], &1u16.to_le_bytes());
        assert_eq!(&b[30..32], &5u16.to_le_bytes());
        assert_eq!(&b[40..44], &77u32.to_le_bytes());
        assert_eq!(PacketHeader::from_bytes(&b), hdr);
    }

    #[test]
    fn span_clips_and_crosses_ranges() {
        let buf = GuestBuf {
            ranges: vec![(GuestAddress(0x1000), 10), (GuestAddress(0x5000), 50)],
            len: 60,
        };
        let v: Vec<_> = buf.span(8, 10).collect();
        assert_eq!(
            v,
            vec![(GuestAddress(0x1008), 2), (GuestAddress(0x5000), 8)]
        );
        let v: Vec<_> = buf.span(55, 100).collect();
        assert_eq!(v, vec![(GuestAddress(0x5000 + 45), 5)]);
        assert_eq!(buf.span(60, 5).count(), 0);
    }
}
