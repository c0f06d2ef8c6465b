//! Guest RAM: anonymous private mappings with MAP_NORESERVE, never prefaulted, split
//! around the MMIO gap below 4 GiB, each registered with KVM as a memory slot.
//!
//! The host only pays for the pages the guest touches. Transparent huge pages are turned
//! off for guest RAM by default (MADV_NOHUGEPAGE): with THP a guest touching one byte of a
//! 2 MiB-aligned range makes the host fault in the whole 2 MiB, and a booting kernel
//! scatters its touches over all of RAM, so a 128 MiB guest would cost ~128 MiB of host
//! memory instead of the few MiB it uses (measured: see docs/benchmarks.md).

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};

use crate::vmm::arch::x86_64::layout::ram_regions;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size} bytes of guest memory at {addr:#x}: {source}")]
    Mmap {
        addr: u64,
        size: u64,
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest memory region at {0:#x} is invalid")]
    Region(u64),
    #[error("cannot assemble guest memory: {0}")]
    Collection(#[from] vm_memory::GuestRegionCollectionError),
    #[error("guest memory size {0} does not fit this host's address space")]
    TooBig(u64),
    #[error("cannot register guest memory slot {slot} with KVM: {source}")]
    SetRegion {
        slot: u32,
        source: kvm_ioctls::Error,
    },
}

/// How guest RAM is backed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HugePages {
    /// MADV_NOHUGEPAGE: the host faults guest RAM in 4 KiB pages (smallest footprint).
    #[default]
    Off,
    /// Leave the host's THP policy alone (fewer faults and TLB misses, more memory).
    HostDefault,
}

/// Maps `mem_size` bytes of guest RAM (see [`ram_regions`]).
pub fn create_guest_memory(mem_size: u64, huge: HugePages) -> Result<GuestMemoryMmap, MemoryError> {
    let mut regions = Vec::new();
    for (addr, size) in ram_regions(mem_size) {
        let len = usize::try_from(size).map_err(|_| MemoryError::TooBig(mem_size))?;
        let mapping = MmapRegion::build(
            None,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|source| MemoryError::Mmap { addr, size, source })?;
        if huge == HugePages::Off {
            // SAFETY: the range is the mapping we just created and own; madvise does not
            // touch memory. A failure (THP compiled out) leaves 4 KiB pages anyway.
            unsafe {
                libc::madvise(mapping.as_ptr().cast(), len, libc::MADV_NOHUGEPAGE);
            }
        }
        regions.push(
            GuestRegionMmap::new(mapping, GuestAddress(addr)).ok_or(MemoryError::Region(addr))?,
        );
    }
    Ok(GuestMemoryMmap::from_regions(regions)?)
}

/// Registers every region of `mem` with KVM, slots 0, 1, ...
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| MemoryError::Region(region.start_addr().0))?;
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping stays alive as long as `mem`, which the VM holds until after
        // the VM fd is closed (field order in `Vm`), and is not aliased by other slots.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(|source| MemoryError::SetRegion { slot, source })?;
    }
    Ok(())
}

/// How much of guest RAM is resident in the host (the pages the guest, or the loader,
/// touched), from mincore(2). Cheap enough to call at any time from any thread.
#[derive(Clone)]
pub struct ResidentProbe(GuestMemoryMmap);

impl ResidentProbe {
    pub fn new(mem: &GuestMemoryMmap) -> Self {
        Self(mem.clone())
    }

    /// Resident bytes of guest RAM, or None if mincore fails.
    pub fn resident_bytes(&self) -> Option<u64> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = u64::try_from(page).ok().filter(|p| *p > 0)?;
        let mut total = 0u64;
        for region in self.0.iter() {
            let len = usize::try_from(region.len()).ok()?;
            let mut vec = vec![0u8; len.div_ceil(page as usize)];
            let addr = region.as_ptr();
            // SAFETY: `addr..addr+len` is a live mapping we hold (a clone of the guest
            // memory keeps it mapped); `vec` has one byte per page.
            let r = unsafe { libc::mincore(addr.cast(), len, vec.as_mut_ptr()) };
            if r != 0 {
                return None;
            }
            total += vec.iter().filter(|b| *b & 1 != 0).count() as u64 * page;
        }
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_not_prefaulted() {
        let before = rss_kib();
        let mem = create_guest_memory(256 << 20, HugePages::Off).unwrap();
        assert_eq!(mem.num_regions(), 1);
        let after = rss_kib();
        assert!(
            after < before + 16 * 1024,
            "RSS grew from {before} to {after} KiB"
        );
    }

    #[test]
    fn memory_is_split_above_the_gap() {
        // Mapping 4 GiB costs nothing with MAP_NORESERVE.
        let mem = create_guest_memory(4 << 30, HugePages::Off).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert_eq!(mem.last_addr().0, (5u64 << 30) - 1);
    }

    fn rss_kib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}
