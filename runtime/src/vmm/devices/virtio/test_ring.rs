//! Test-only: a split virtqueue laid out in real guest memory the way a driver does it,
//! for unit tests of the transport, [`super::ring`] and devices. (virtio-queue's
//! MockSplitQueue overlaps its used ring with the avail ring's used_event field, which
//! EVENT_IDX tests need intact.)

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{Queue, QueueT};

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;

/// Guest RAM for tests: 1 MiB at 0.
pub fn test_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

/// A driver's view of one queue: descriptor table, avail ring, used ring at fixed pages.
pub struct TestRing<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    next_desc: u16,
    avail_idx: u16,
}

impl<'a> TestRing<'a> {
    /// A ring of `size` entries with its areas at `base`, `base + 0x1000`, `base + 0x2000`.
    pub fn new(mem: &'a GuestMemoryMmap, base: u64, size: u16) -> Self {
        let r = Self {
            mem,
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_desc: 0,
            avail_idx: 0,
        };
        for a in [r.avail, r.avail + 2, r.used, r.used + 2] {
            mem.write_obj(0u16, GuestAddress(a)).unwrap();
        }
        r
    }

    /// A queue over this ring, as the transport would build it.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used))
            .unwrap();
        q.set_ready(true);
        q
    }

    /// Writes a chain of `(addr, len, flags)` descriptors and makes it available; returns
    /// its head index.
    pub fn add_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = (self.next_desc + i as u16) % self.size;
            let last = i + 1 == descs.len();
            let flags = if last {
                flags
            } else {
                flags | VRING_DESC_F_NEXT
            };
            let next = (index + 1) % self.size;
            let at = self.desc + 16 * u64::from(index);
            self.mem.write_obj(addr, GuestAddress(at)).unwrap();
            self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        self.next_desc = (self.next_desc + descs.len() as u16) % self.size;
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
        head
    }

    /// Overwrites the avail index (to simulate a broken driver, too).
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// The driver's used_event (EVENT_IDX): interrupt once used idx passes it.
    pub fn set_used_event(&self, v: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        self.mem.write_obj(v, GuestAddress(at)).unwrap();
    }

    /// The device's avail_event (EVENT_IDX): where the device wants its next kick.
    pub fn avail_event(&self) -> u16 {
        let at = self.used + 4 + 8 * u64::from(self.size);
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used element `i`: (head id, length).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }
}
