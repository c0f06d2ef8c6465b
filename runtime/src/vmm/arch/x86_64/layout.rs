//! Where everything lives in the guest's physical address space.
//!
//! Every guest address husk writes to or tells the guest about is a named constant here,
//! so the whole map can be read in one place:
//!
//! ```text
//! 0x0000_0000 ..0x0000_0500   real-mode IVT / BDA area (left alone)
//! 0x0000_0500                 boot GDT (read once by the PVH entry's segment setup)
//! 0x0000_0520                 boot IDT (empty)
//! 0x0000_6000                 PVH `hvm_start_info`, then the module list (the initrd)
//! 0x0000_7000                 PVH memory map (e820-style entries)
//! 0x0002_0000 ..+2 KiB        kernel command line
//! 0x000a_0000 ..0x0010_0000   legacy VGA/ROM hole: not RAM in the e820 map
//! 0x000f_0000 ..0x0010_0000   MP table (the BIOS ROM area Linux scans for "_MP_")
//! 0x0010_0000 ..              RAM: the kernel at its ELF physical address (16 MiB for x86_64
//!                             Linux), the initrd at the top of low memory
//! 0xc000_0000 ..0x1_0000_0000 MMIO gap (no RAM): virtio-mmio window, IOAPIC, LAPIC, KVM TSS
//! 0x1_0000_0000 ..            RAM above 3 GiB of guest memory continues here
//! ```

/// Size of a guest page: the initrd and MMIO slots are aligned to it.
pub const PAGE_SIZE: u64 = 0x1000;

/// The boot GDT: null, 32-bit code, 32-bit data, TSS (what the PVH entry point expects).
pub const BOOT_GDT_ADDR: u64 = 0x500;
/// Number of GDT entries at [`BOOT_GDT_ADDR`].
pub const BOOT_GDT_ENTRIES: usize = 4;
/// An empty IDT, just so the IDTR points at something that is RAM.
pub const BOOT_IDT_ADDR: u64 = 0x520;

/// PVH `hvm_start_info` (EBX at the PVH entry point holds this address).
pub const PVH_START_INFO_ADDR: u64 = 0x6000;
/// The PVH module list, right after the start info (56 bytes): entry 0 is the initrd.
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// The PVH memory map (`hvm_memmap_table_entry` array).
pub const PVH_MEMMAP_ADDR: u64 = 0x7000;
/// How many memory map entries fit between [`PVH_MEMMAP_ADDR`] and the next page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = 0x1000 / 24;

/// The kernel command line, NUL-terminated.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// x86 Linux's COMMAND_LINE_SIZE (arch/x86/include/uapi/asm/setup.h), NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// End of RAM below 1 MiB (the legacy VGA/BIOS ROM hole follows).
pub const EBDA_END: u64 = 0xa_0000;
/// Start of the MP table: the BIOS ROM area, one of the places Linux's
/// `default_find_smp_config` scans for the MP floating pointer. Not RAM in the e820 map,
/// so the guest never reuses it, and 64 KiB holds the table for the most vCPUs we allow
/// (the last KiB of base memory, Firecracker's choice, fits only ~40).
pub const MPTABLE_START: u64 = 0xf_0000;
/// Room for the MP table, up to [`HIMEM_START`].
pub const MPTABLE_MAX_SIZE: u64 = HIMEM_START - MPTABLE_START;
/// Where RAM resumes above the legacy hole, and the lowest address a kernel may load at.
pub const HIMEM_START: u64 = 0x10_0000;

/// Guest RAM above this address is moved above 4 GiB (the MMIO gap is below 4 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO gap: RAM continues here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

/// The window in the MMIO gap that [`super::super::super::resources`] hands out to
/// virtio-mmio devices (one page each).
pub const MMIO_DEVICES_START: u64 = MMIO_GAP_START;
/// End of the device window (256 MiB: far more slots than IRQs).
pub const MMIO_DEVICES_END: u64 = 0xd000_0000;

/// The identity-map page KVM needs on Intel (KVM_SET_IDENTITY_MAP_ADDR), in the gap.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
/// The three pages KVM needs for the real-mode TSS on Intel (KVM_SET_TSS_ADDR), in the gap.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// The IOAPIC's MMIO page (x86 default; KVM's in-kernel IOAPIC sits here).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APIC's MMIO page (x86 default).
pub const APIC_ADDR: u64 = 0xfee0_0000;

/// Number of IOAPIC input pins KVM's in-kernel IOAPIC has.
pub const IOAPIC_PINS: u32 = 24;
/// ISA IRQ of the first serial port (COM1).
pub const SERIAL_IRQ: u32 = 4;
/// First IRQ handed to virtio-mmio devices (0-4 are the PIT, i8042, cascade, COM2, COM1).
pub const FIRST_DEVICE_IRQ: u32 = 5;
/// Last IRQ handed to devices: the IOAPIC's last pin.
pub const LAST_DEVICE_IRQ: u32 = IOAPIC_PINS - 1;

/// I/O port of COM1, the guest's console (`console=ttyS0`).
pub const SERIAL_PORT: u16 = 0x3f8;
/// COM1 spans 8 ports.
pub const SERIAL_PORT_LEN: u16 = 8;
/// I/O port base of the i8042 keyboard controller (data 0x60, command/status 0x64).
pub const I8042_PORT: u16 = 0x60;
/// The i8042 spans 0x60..=0x64.
pub const I8042_PORT_LEN: u16 = 5;

// The fixed addresses do not overlap (checked at compile time).
const _: () = {
    assert!(BOOT_IDT_ADDR >= BOOT_GDT_ADDR + 8 * BOOT_GDT_ENTRIES as u64);
    assert!(PVH_MODLIST_ADDR >= PVH_START_INFO_ADDR + 56);
    assert!(PVH_MEMMAP_ADDR >= PVH_MODLIST_ADDR + 32);
    assert!(CMDLINE_ADDR >= PVH_MEMMAP_ADDR + 0x1000);
    assert!(CMDLINE_ADDR + CMDLINE_MAX_SIZE as u64 <= EBDA_END);
    assert!(MPTABLE_START >= EBDA_END);
    assert!(MMIO_DEVICES_END <= IOAPIC_ADDR);
    assert!(MMIO_DEVICES_END <= KVM_IDENTITY_MAP_ADDR);
    assert!(KVM_IDENTITY_MAP_ADDR >= APIC_ADDR + PAGE_SIZE);
    assert!(KVM_IDENTITY_MAP_ADDR + PAGE_SIZE <= KVM_TSS_ADDR);
    assert!(KVM_TSS_ADDR + 3 * PAGE_SIZE <= MMIO_GAP_END);
};

/// The RAM regions for `mem_size` bytes of guest memory: one below the MMIO gap, and the
/// rest (if any) from 4 GiB up.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// End (exclusive) of RAM below the MMIO gap: where the initrd goes under.
pub fn low_mem_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_regions(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        assert_eq!(low_mem_end(128 << 20), 128 << 20);
    }

    #[test]
    fn large_memory_is_split_around_the_gap() {
        let four_g = 4u64 << 30;
        assert_eq!(
            ram_regions(four_g),
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, four_g - MMIO_GAP_START)]
        );
        assert_eq!(low_mem_end(four_g), MMIO_GAP_START);
    }
}
