//! The PVH boot protocol's data: `hvm_start_info`, its module list (the initrd) and the
//! memory map (the guest's e820 table).
//!
//! See <https://xenbits.xen.org/docs/unstable/misc/pvh.html>. Linux's PVH entry reads the
//! start info from EBX, takes module 0 as its initrd and builds its e820 table from the
//! memory map.

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    low_mem_end, CMDLINE_ADDR, EBDA_END, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START,
    PVH_MEMMAP_ADDR, PVH_MEMMAP_MAX_ENTRIES, PVH_MODLIST_ADDR, PVH_START_INFO_ADDR,
};

/// `XEN_HVM_START_MAGIC_VALUE` (xen/include/public/arch-x86/hvm/start_info.h).
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// e820 type of usable RAM (`E820_TYPE_RAM`, arch/x86/include/asm/e820/types.h).
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory (`E820_TYPE_RESERVED`).
pub const E820_RESERVED: u32 = 2;

/// Errors writing the PVH boot data.
#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    #[error(
        "the guest memory map has {0} entries, more than the {PVH_MEMMAP_MAX_ENTRIES} that fit"
    )]
    TooManyMemmapEntries(usize),
    #[error("cannot write the PVH start info into guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// One entry of the guest's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The guest's memory map for `mem_size` bytes of RAM: 640 KiB of base memory, the legacy
/// hole (with the MP table in it) left out, RAM from 1 MiB to the MMIO gap, and RAM above
/// 4 GiB for what did not fit below the gap.
pub fn e820_entries(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_END,
        kind: E820_RAM,
    }];
    let low_end = low_mem_end(mem_size);
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_size > MMIO_GAP_START {
        map.push(E820Entry {
            addr: MMIO_GAP_END,
            size: mem_size - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

/// Where the initrd is, for the module list.
#[derive(Clone, Copy, Debug)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

/// Writes the start info, the module list (if there is an initrd) and the memory map.
/// The command line must already be at [`CMDLINE_ADDR`].
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    initrd: Option<InitrdPlacement>,
) -> Result<(), PvhError> {
    let map = e820_entries(mem_size);
    if map.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(PvhError::TooManyMemmapEntries(map.len()));
    }
    for (i, e) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        let at = PVH_MEMMAP_ADDR + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))?;
    }

    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        // Bounded by PVH_MEMMAP_MAX_ENTRIES above.
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_ADDR))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    mem.write_obj(info, GuestAddress(PVH_START_INFO_ADDR))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemory;

    #[test]
    fn e820_for_128_mib() {
        let map = e820_entries(128 << 20);
        assert_eq!(map.len(), 2);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: 0xa_0000,
                kind: E820_RAM
            }
        );
        assert_eq!(
            map[1],
            E820Entry {
                addr: 0x10_0000,
                size: (128 << 20) - 0x10_0000,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn e820_for_memory_beyond_the_gap() {
        let mem = 5u64 << 30;
        let map = e820_entries(mem);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].addr + map[1].size, MMIO_GAP_START);
        assert_eq!(
            map[2],
            E820Entry {
                addr: 4 << 30,
                size: mem - MMIO_GAP_START,
                kind: E820_RAM
            }
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // Everything but the legacy hole is RAM.
        assert_eq!(ram, mem - (HIMEM_START - EBDA_END));
    }

    #[test]
    fn start_info_is_written() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_start_info(
            &mem,
            128 << 20,
            Some(InitrdPlacement {
                addr: 0x7000_0000,
                size: 4096,
            }),
        )
        .unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_START_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.memmap_entries, 2);
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x7000_0000, 4096));
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(PVH_MEMMAP_ADDR + 24)).unwrap();
        assert_eq!(e.addr, HIMEM_START);
        assert!(mem.last_addr().0 < 1 << 20);
    }
}
