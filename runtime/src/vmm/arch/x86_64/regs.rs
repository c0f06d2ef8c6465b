//! A vCPU's registers at the PVH entry point: 32-bit protected mode, paging off, flat
//! segments from a boot GDT, EBX = the start info's address.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{BOOT_GDT_ADDR, BOOT_GDT_ENTRIES, BOOT_IDT_ADDR, PVH_START_INFO_ADDR};

/// CR0.PE: protected mode.
const X86_CR0_PE: u64 = 0x1;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;
/// x87 control word after FNINIT.
const FPU_FCW_DEFAULT: u16 = 0x37f;
/// MXCSR after reset: all SSE exceptions masked.
const MXCSR_DEFAULT: u32 = 0x1f80;

/// GDT access/flag bits (the 0xF0FF mask of a descriptor's bits 40..56):
/// granularity 4K, 32-bit, present, ring 0, code exec/read accessed.
const GDT_CODE32: u64 = 0xc09b;
/// Same with data read/write accessed.
const GDT_DATA32: u64 = 0xc093;
/// Present, system descriptor, busy 32-bit TSS.
const GDT_TSS32: u64 = 0x008b;
/// Selectors of the boot GDT's entries (index * 8).
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
pub const TSS_SELECTOR: u16 = 0x18;

/// Errors setting up registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot get special registers: {0}")]
    GetSregs(kvm_ioctls::Error),
    #[error("cannot set special registers: {0}")]
    SetSregs(kvm_ioctls::Error),
    #[error("cannot set general registers: {0}")]
    SetRegs(kvm_ioctls::Error),
    #[error("cannot set FPU registers: {0}")]
    SetFpu(kvm_ioctls::Error),
    #[error("cannot write the boot GDT/IDT into guest memory: {0}")]
    WriteTables(#[from] vm_memory::GuestMemoryError),
}

/// Encodes a segment descriptor.
pub fn gdt_entry(flags: u64, base: u64, limit: u64) -> u64 {
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// What KVM needs to know about a descriptor loaded in a segment register.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let g = bit(55);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

/// The boot GDT: null, code, data, TSS.
pub fn boot_gdt() -> [u64; BOOT_GDT_ENTRIES] {
    [
        0,
        gdt_entry(GDT_CODE32, 0, 0xfffff),
        gdt_entry(GDT_DATA32, 0, 0xfffff),
        gdt_entry(GDT_TSS32, 0, 0x67),
    ]
}

/// Writes the boot GDT and an empty IDT into guest memory (once per VM).
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, e) in boot_gdt().iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_ADDR + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_ADDR))?;
    Ok(())
}

/// Special registers for the PVH entry: protected mode, flat 4 GiB segments, no paging.
pub fn pvh_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let gdt = boot_gdt();
    sregs.gdt.base = BOOT_GDT_ADDR;
    sregs.gdt.limit = (8 * BOOT_GDT_ENTRIES - 1) as u16;
    sregs.idt.base = BOOT_IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = segment_from_gdt(gdt[1], CODE_SELECTOR);
    let data = segment_from_gdt(gdt[2], DATA_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], TSS_SELECTOR);
    sregs.cr0 = X86_CR0_PE;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// Puts the boot vCPU at the kernel's PVH entry point (its FPU is already set up, as every
/// vCPU's, by [`setup_fpu`]).
pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let sregs = vcpu.get_sregs().map_err(RegsError::GetSregs)?;
    vcpu.set_sregs(&pvh_sregs(sregs))
        .map_err(RegsError::SetSregs)?;
    let regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        rbx: PVH_START_INFO_ADDR,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(RegsError::SetRegs)
}

/// x87/SSE state as after reset (every vCPU; APs get the rest from INIT/SIPI).
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: FPU_FCW_DEFAULT,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(RegsError::SetFpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_flat_32_bit() {
        let s = segment_from_gdt(gdt_entry(GDT_CODE32, 0, 0xfffff), CODE_SELECTOR);
        assert_eq!((s.base, s.limit), (0, 0xffff_ffff));
        assert_eq!(
            (s.type_, s.present, s.s, s.db, s.l, s.g, s.dpl),
            (0xb, 1, 1, 1, 0, 1, 0)
        );
        assert_eq!(s.unusable, 0);
    }

    #[test]
    fn tss_is_a_byte_granular_system_segment() {
        let s = segment_from_gdt(gdt_entry(GDT_TSS32, 0, 0x67), TSS_SELECTOR);
        assert_eq!(
            (s.limit, s.type_, s.s, s.g, s.present),
            (0x67, 0xb, 0, 0, 1)
        );
    }

    #[test]
    fn gdt_entry_round_trips_base_and_limit() {
        let e = gdt_entry(GDT_DATA32, 0x1234_5678, 0xabcde);
        let s = segment_from_gdt(e, DATA_SELECTOR);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcd_efff);
        assert_eq!(gdt_entry(GDT_CODE32, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn pvh_sregs_are_protected_mode_without_paging() {
        let s = pvh_sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & 1, 1);
        assert_eq!(s.cr0 & (1 << 31), 0);
        assert_eq!(s.gdt.base, BOOT_GDT_ADDR);
        assert_eq!(s.cs.selector, CODE_SELECTOR);
        assert_eq!(s.ss.selector, DATA_SELECTOR);
    }
}
