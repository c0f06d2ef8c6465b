//! Guest RAM: anonymous private mappings with MAP_NORESERVE, never prefaulted, split
//! around the MMIO gap below 4 GiB, each registered with KVM as a memory slot.
//!
//! The host only pays for the pages the guest touches. The one decision here is the page
//! size, measured in the test bed (husk's 6.12 kernel, 1 vCPU / 128 MiB, to the agent's
//! ready line): with 4 KiB pages (MADV_NOHUGEPAGE) the guest touched 24.8 MiB and the VMM
//! peaked at 29.3 MiB RSS, but every first touch of a 4 KiB page was a nested page fault:
//! ~7,500 VM exits in all, 4,300 of them faults. With THP on a 2 MiB-aligned mapping
//! (MADV_HUGEPAGE, so KVM maps guest memory with large pages) the guest touches 30 MiB,
//! the VMM peaks at 33.5 MiB (under the 40 MiB budget) and the boot takes ~2,100 exits
//! (qemu microvm: ~3,000). THP is therefore on by default; `HugePages::Off` is there for
//! hosts short of memory. (The whole guest is never faulted in: no prefault, MAP_NORESERVE.)

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap};

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
    /// MADV_NOHUGEPAGE: the host faults guest RAM in 4 KiB pages. Smallest footprint, but
    /// every 4 KiB the guest touches first is a nested page fault (a VM exit).
    Off,
    /// MADV_HUGEPAGE on a 2 MiB-aligned mapping: KVM maps guest RAM with 2 MiB pages, one
    /// fault per 2 MiB the guest touches; the host pays whole 2 MiB pages.
    #[default]
    On,
}

/// Alignment of guest RAM mappings: a THP, so that guest-physical and host-virtual 2 MiB
/// frames coincide and KVM can map them with large pages.
const HUGE_PAGE_SIZE: usize = 2 << 20;

/// Guest RAM: the [`GuestMemoryMmap`] view of it, and the mappings it owns. The mappings
/// are unmapped when this is dropped, so share it as `Arc<GuestRam>` (a bare clone of the
/// inner `GuestMemoryMmap` must not outlive it).
pub struct GuestRam {
    mem: GuestMemoryMmap,
    mappings: Vec<(usize, usize)>,
}

impl std::ops::Deref for GuestRam {
    type Target = GuestMemoryMmap;
    fn deref(&self) -> &GuestMemoryMmap {
        &self.mem
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        for &(addr, len) in &self.mappings {
            // SAFETY: we mapped exactly this range in `map_aligned` and own it; the
            // GuestMemoryMmap regions over it are non-owning and are dropped with us.
            unsafe {
                libc::munmap(addr as *mut libc::c_void, len);
            }
        }
    }
}

/// Maps `len` bytes of anonymous, private, never-reserved memory at a `HUGE_PAGE_SIZE`
/// aligned address (over-map, then unmap the unaligned head and tail).
fn map_aligned(len: usize) -> std::io::Result<usize> {
    let total = len
        .checked_add(HUGE_PAGE_SIZE)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let start = p as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE_SIZE);
    let head = aligned - start;
    let tail = total - head - len;
    // SAFETY: both ranges are parts of the mapping just created, outside what we keep.
    unsafe {
        if head > 0 {
            libc::munmap(start as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    Ok(aligned)
}

/// Maps `mem_size` bytes of guest RAM (see [`ram_regions`]).
pub fn create_guest_memory(mem_size: u64, huge: HugePages) -> Result<Arc<GuestRam>, MemoryError> {
    let mut ram = GuestRam {
        mem: GuestMemoryMmap::default(),
        mappings: Vec::new(),
    };
    let mut regions = Vec::new();
    for (addr, size) in ram_regions(mem_size) {
        let len = usize::try_from(size).map_err(|_| MemoryError::TooBig(mem_size))?;
        let host = map_aligned(len).map_err(|e| MemoryError::Mmap {
            addr,
            size,
            source: vm_memory::mmap::MmapRegionError::Mmap(e),
        })?;
        // Owned by `ram` from here on, so an error below unmaps it.
        ram.mappings.push((host, len));
        let advice = match huge {
            HugePages::Off => libc::MADV_NOHUGEPAGE,
            HugePages::On => libc::MADV_HUGEPAGE,
        };
        // SAFETY: the range is the mapping we just created and own; madvise does not
        // touch memory. A failure (THP compiled out) leaves 4 KiB pages, which is fine.
        unsafe {
            libc::madvise(host as *mut libc::c_void, len, advice);
        }
        // SAFETY: `host..host+len` is a live mapping owned by `ram`, which outlives the
        // region (it is dropped with `ram`).
        let mapping = unsafe {
            MmapRegionBuilder::<()>::new(len)
                .with_raw_mmap_pointer(host as *mut u8)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                .build()
        }
        .map_err(|source| MemoryError::Mmap { addr, size, source })?;
        regions.push(
            GuestRegionMmap::new(mapping, GuestAddress(addr)).ok_or(MemoryError::Region(addr))?,
        );
    }
    ram.mem = GuestMemoryMmap::from_regions(regions)?;
    Ok(Arc::new(ram))
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
pub struct ResidentProbe(Arc<GuestRam>);

impl ResidentProbe {
    pub fn new(ram: &Arc<GuestRam>) -> Self {
        Self(ram.clone())
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
    fn mappings_are_aligned_probed_and_unmapped() {
        use vm_memory::Bytes;
        let mem = create_guest_memory(64 << 20, HugePages::Off).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
        assert_eq!(host % HUGE_PAGE_SIZE, 0, "2 MiB aligned");
        let probe = ResidentProbe::new(&mem);
        assert_eq!(probe.resident_bytes(), Some(0));
        mem.write_obj(1u64, GuestAddress(0x10_0000)).unwrap();
        mem.write_obj(1u64, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(
            probe.resident_bytes(),
            Some(2 * 4096),
            "4 KiB pages when off"
        );
        drop(probe);
        drop(mem);
        // The range is gone: mincore on it fails with ENOMEM.
        let mut v = [0u8; 1];
        // SAFETY: mincore only inspects the range.
        let r = unsafe { libc::mincore(host as *mut libc::c_void, 4096, v.as_mut_ptr()) };
        assert_eq!(r, -1);
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
