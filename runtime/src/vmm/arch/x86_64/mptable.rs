//! The Intel MultiProcessor Specification (v1.4) table: how a guest without ACPI learns its
//! CPUs, its IOAPIC and how ISA IRQs reach it.
//!
//! Built as bytes (every field little-endian at its spec offset) rather than as Rust
//! structs, so there is no padding to get wrong and the unit tests can parse it back.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_ADDR, IOAPIC_ADDR, IOAPIC_PINS, MPTABLE_MAX_SIZE, MPTABLE_START};

/// Signature of the floating pointer structure.
const MPF_SIGNATURE: &[u8; 4] = b"_MP_";
/// Signature of the configuration table header.
const MPC_SIGNATURE: &[u8; 4] = b"PCMP";
/// MP spec revision 1.4.
const MP_SPEC_REV: u8 = 4;
const MPF_SIZE: usize = 16;
const MPC_HEADER_SIZE: usize = 44;
const PROCESSOR_ENTRY_SIZE: usize = 20;
const SMALL_ENTRY_SIZE: usize = 8;

// Entry types (arch/x86/include/asm/mpspec_def.h).
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
// Interrupt types (`enum mp_irq_source_types`).
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
// Processor flags.
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Local APIC version of an integrated (xAPIC) local APIC, as KVM reports it.
const APIC_VERSION: u8 = 0x14;
/// IOAPIC version of KVM's in-kernel IOAPIC.
const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature (family 6) and feature flags (FPU, APIC) of the processor entries; Linux
/// takes the real values from CPUID.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const BUS_ID_ISA: u8 = 0;
/// "All local APICs" as the destination of a local interrupt entry.
const ALL_LAPICS: u8 = 0xff;

/// Errors building the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs do not fit in an MP table (at most 254)")]
    TooManyCpus(u8),
    #[error("the MP table is {0} bytes, more than its {MPTABLE_MAX_SIZE}-byte area")]
    TooBig(usize),
    #[error("cannot write the MP table into guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// The IOAPIC's id: the first APIC id after the CPUs' (0..vcpus).
pub fn ioapic_id(vcpus: u8) -> u8 {
    vcpus
}

fn checksum(bytes: &[u8]) -> u8 {
    // The byte that makes the sum of all bytes zero.
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the MP table (floating pointer followed by the configuration table) as it must
/// appear at `start` in guest memory.
pub fn build(vcpus: u8, start: u64) -> Result<Vec<u8>, MptableError> {
    if vcpus == 0 || vcpus > 254 {
        return Err(MptableError::TooManyCpus(vcpus));
    }
    let ioapic = ioapic_id(vcpus);
    // Processors, then the bus, the IOAPIC, one entry per IOAPIC pin and two LINT entries.
    let entries_len =
        usize::from(vcpus) * PROCESSOR_ENTRY_SIZE + (4 + IOAPIC_PINS as usize) * SMALL_ENTRY_SIZE;
    let mut entries: Vec<u8> = Vec::with_capacity(entries_len);
    let mut count: u16 = 0;

    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, BUS_ID_ISA]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[MP_IOAPIC, ioapic, IOAPIC_VERSION, CPU_ENABLED]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    // ISA IRQ n arrives on IOAPIC pin n: KVM's default GSI routing is the identity.
    for irq in 0..IOAPIC_PINS as u8 {
        entries.extend_from_slice(&[MP_INTSRC, MP_INT, 0, 0, BUS_ID_ISA, irq, ioapic, irq]);
        count += 1;
    }
    // LINT0 is the legacy PIC's ExtINT, LINT1 NMI, on every CPU.
    entries.extend_from_slice(&[MP_LINTSRC, MP_EXTINT, 0, 0, BUS_ID_ISA, 0, ALL_LAPICS, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_NMI, 0, 0, BUS_ID_ISA, 0, ALL_LAPICS, 1]);
    count += 2;

    debug_assert_eq!(entries.len(), entries_len);
    let mpc_len = MPC_HEADER_SIZE + entries.len();
    let total = MPF_SIZE + mpc_len;
    if total as u64 > MPTABLE_MAX_SIZE {
        return Err(MptableError::TooBig(total));
    }
    let mpc_addr = start + MPF_SIZE as u64;

    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend_from_slice(MPF_SIGNATURE);
    mpf.extend_from_slice(&(mpc_addr as u32).to_le_bytes());
    mpf.extend_from_slice(&[1, MP_SPEC_REV, 0, 0, 0, 0, 0, 0]);
    mpf[10] = checksum(&mpf);

    let mut mpc = Vec::with_capacity(mpc_len);
    mpc.extend_from_slice(MPC_SIGNATURE);
    mpc.extend_from_slice(&(mpc_len as u16).to_le_bytes());
    mpc.extend_from_slice(&[MP_SPEC_REV, 0]);
    mpc.extend_from_slice(b"HUSK    ");
    mpc.extend_from_slice(b"MICROVM     ");
    mpc.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    mpc.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    mpc.extend_from_slice(&count.to_le_bytes());
    mpc.extend_from_slice(&(APIC_ADDR as u32).to_le_bytes());
    mpc.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    debug_assert_eq!(mpc.len(), MPC_HEADER_SIZE);
    mpc.extend_from_slice(&entries);
    mpc[7] = checksum(&mpc);

    mpf.extend_from_slice(&mpc);
    Ok(mpf)
}

/// Writes the MP table for `vcpus` CPUs at [`MPTABLE_START`].
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MptableError> {
    let table = build(vcpus, MPTABLE_START)?;
    mem.write_slice(&table, GuestAddress(MPTABLE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_pointers_hold() {
        for vcpus in [1u8, 2, 64, 254] {
            let t = build(vcpus, MPTABLE_START).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[0..16]), 0, "floating pointer checksum");
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, MPTABLE_START + 16);
            let mpc = &t[16..];
            assert_eq!(&mpc[0..4], b"PCMP");
            let len = u16::from_le_bytes(mpc[4..6].try_into().unwrap()) as usize;
            assert_eq!(len, mpc.len());
            assert_eq!(sum(mpc), 0, "config table checksum");
            let count = u16::from_le_bytes(mpc[34..36].try_into().unwrap()) as usize;
            assert_eq!(count, vcpus as usize + 1 + 1 + IOAPIC_PINS as usize + 2);
            assert!(t.len() as u64 <= MPTABLE_MAX_SIZE);
        }
    }

    #[test]
    fn processors_and_ioapic_are_listed() {
        let t = build(3, MPTABLE_START).unwrap();
        let entries = &t[16 + MPC_HEADER_SIZE..];
        for cpu in 0..3usize {
            let e = &entries[cpu * 20..cpu * 20 + 20];
            assert_eq!(e[0], MP_PROCESSOR);
            assert_eq!(e[1] as usize, cpu);
            assert_eq!(e[3] & CPU_BOOTPROCESSOR != 0, cpu == 0);
        }
        let ioapic = &entries[3 * 20 + 8..3 * 20 + 16];
        assert_eq!(ioapic[0], MP_IOAPIC);
        assert_eq!(ioapic[1], 3, "IOAPIC id follows the CPUs");
        assert_eq!(
            u32::from_le_bytes(ioapic[4..8].try_into().unwrap()),
            0xfec0_0000
        );
    }

    #[test]
    fn zero_and_255_cpus_are_refused() {
        assert!(build(0, MPTABLE_START).is_err());
        assert!(build(255, MPTABLE_START).is_err());
    }
}
