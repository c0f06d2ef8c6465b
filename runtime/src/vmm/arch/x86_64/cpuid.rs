//! The CPUID a vCPU sees: KVM_GET_SUPPORTED_CPUID, then made consistent per vCPU.
//!
//! KVM's supported set describes what the host can virtualize, not a machine: APIC ids,
//! the package topology and the cache sharing are the host's or zero. Each vCPU gets its
//! own APIC id and a flat topology (one package, one thread per core, `vcpus` cores); the
//! hypervisor bit and KVM's own leaves (0x4000_0000: signature, kvmclock and other PV
//! features) are kept so the guest uses kvmclock and never calibrates its TSC; features a
//! guest must not try (nested VMX/SVM, a PMU, MONITOR/MWAIT) are hidden.

use kvm_bindings::kvm_cpuid_entry2;

// Leaves (Intel SDM vol. 2A "CPUID"; AMD APM vol. 3 appendix E).
const LEAF_VENDOR: u32 = 0x0;
const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_KVM_SIGNATURE: u32 = 0x4000_0000;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_SVM: u32 = 0x8000_000a;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

// Leaf 0x1 bits.
const ECX_MONITOR: u32 = 1 << 3;
const ECX_VMX: u32 = 1 << 5;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// CLFLUSH line size in 8-byte units (64 bytes), EBX bits 15:8.
const CLFLUSH_LINE_SIZE: u32 = 8;
// Leaf 0x8000_0001 bits.
const ECX_SVM: u32 = 1 << 2;
// Leaf 0xb/0x1f level types (ECX bits 15:8).
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// The CPU vendor, from leaf 0's signature: some leaves mean different things.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

/// Reads the vendor from leaf 0 (EBX, EDX, ECX spell "GenuineIntel"/"AuthenticAMD").
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(e) = entries.iter().find(|e| e.function == LEAF_VENDOR) else {
        return Vendor::Other;
    };
    let mut sig = [0u8; 12];
    sig[0..4].copy_from_slice(&e.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&e.edx.to_le_bytes());
    sig[8..12].copy_from_slice(&e.ecx.to_le_bytes());
    match &sig {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX` (sic, include/uapi/linux/kvm.h): the entry is
/// selected by ECX too.
const KVM_CPUID_FLAG_SIGNIFCANT_INDEX: u32 = 1;

/// Makes sure the topology leaves (0xb, and 0x1f if present) have the SMT, core and
/// terminating subleaves [`filter`] fills in. KVM copies the host's subleaves, and a host
/// (or a nested hypervisor) may report only the SMT level: the guest would then see no
/// core level and take every vCPU for a package of its own.
pub fn add_topology_subleaves(entries: &mut Vec<kvm_cpuid_entry2>) {
    for leaf in [LEAF_EXT_TOPOLOGY, LEAF_V2_EXT_TOPOLOGY] {
        if !entries.iter().any(|e| e.function == leaf) {
            continue;
        }
        for index in 0..3 {
            if !entries
                .iter()
                .any(|e| e.function == leaf && e.index == index)
            {
                entries.push(kvm_cpuid_entry2 {
                    function: leaf,
                    index,
                    flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                    ..Default::default()
                });
            }
        }
    }
}

/// Bits needed to number `n` items (ceil(log2(n))), the APIC-id shift of a topology level.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Makes KVM's supported CPUID into what vCPU `cpu` (its APIC id) of `vcpus` sees.
/// `tsc_deadline`: KVM's in-kernel LAPIC emulates the TSC-deadline timer
/// (KVM_CAP_TSC_DEADLINE_TIMER), which KVM leaves to the VMM to advertise; with it the
/// guest skips calibrating the LAPIC timer against the PIT.
pub fn filter(entries: &mut [kvm_cpuid_entry2], cpu: u8, vcpus: u8, tsc_deadline: bool) {
    let vendor = vendor(entries);
    let apic_id = u32::from(cpu);
    let n = u32::from(vcpus).max(1);
    let core_bits = id_bits(n);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (apic_id << 24)
                    | ((n & 0xff) << 16)
                    | (CLFLUSH_LINE_SIZE << 8)
                    | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                e.ecx &= !(ECX_VMX | ECX_MONITOR);
                if tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if n > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS if vendor == Vendor::Intel => {
                if e.eax & 0x1f == 0 {
                    continue; // no more caches
                }
                let level = (e.eax >> 5) & 0x7;
                // Cores per package - 1 (bits 31:26); threads sharing this cache - 1 (25:14):
                // one thread per core, so private L1/L2 and an L3 shared by every vCPU.
                let sharing = if level >= 3 { n - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((n - 1) & 0x3f) << 26);
            }
            LEAF_PMU => {
                // No virtual PMU: the guest does not probe perf MSRs.
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0; // no SMT bits in the APIC id
                        e.ebx = 1;
                        e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = n;
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index; // level type 0: invalid, the end of the list
                    }
                }
            }
            LEAF_EXT_FEATURES => e.ecx &= !ECX_SVM,
            LEAF_AMD_SVM => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_AMD_SIZE_IDS if vendor == Vendor::Amd => {
                // ECX: ApicIdSize (15:12) and NC, the number of cores - 1 (7:0).
                e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | ((n - 1) & 0xff);
            }
            LEAF_AMD_EXT_APIC_ID if vendor == Vendor::Amd => {
                e.eax = apic_id;
                e.ebx = apic_id & 0xff; // core id; threads per core - 1 = 0
                e.ecx = 0; // node 0, one node
                e.edx = 0;
            }
            _ => {}
        }
    }
}

/// Whether KVM's paravirtual leaves are present (kvmclock needs them).
pub fn has_kvm_signature(entries: &[kvm_cpuid_entry2]) -> bool {
    entries.iter().any(|e| {
        e.function == LEAF_KVM_SIGNATURE
            && e.ebx == u32::from_le_bytes(*b"KVMK")
            && e.ecx == u32::from_le_bytes(*b"VMKV")
            && e.edx == u32::from_le_bytes(*b"M\0\0\0")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn vendor_leaf(sig: &[u8; 12]) -> kvm_cpuid_entry2 {
        let w = |i: usize| u32::from_le_bytes(sig[i..i + 4].try_into().unwrap());
        entry(0, 0, [0x1f, w(0), w(8), w(4)])
    }

    fn host_like(sig: &[u8; 12]) -> Vec<kvm_cpuid_entry2> {
        vec![
            vendor_leaf(sig),
            entry(
                1,
                0,
                [0x800f12, 0x0810_0800 | 0x7, ECX_VMX | ECX_MONITOR, 0],
            ),
            entry(4, 0, [0x121, 0, 0, 0]),
            entry(4, 3, [0x163, 0, 0, 0]),
            entry(0xa, 0, [0x0730_0403, 1, 2, 3]),
            entry(0xb, 0, [1, 2, 0x100, 7]),
            entry(0xb, 1, [4, 16, 0x201, 7]),
            entry(0xb, 2, [0, 0, 2, 7]),
            entry(
                0x4000_0000,
                0,
                [
                    0x4000_0001,
                    u32::from_le_bytes(*b"KVMK"),
                    u32::from_le_bytes(*b"VMKV"),
                    u32::from_le_bytes(*b"M\0\0\0"),
                ],
            ),
            entry(0x8000_0001, 0, [0, 0, ECX_SVM | 1, 0]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x700f, 0]),
            entry(0x8000_001e, 0, [9, 9, 9, 9]),
        ]
    }

    fn get(e: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *e.iter().find(|x| x.function == f && x.index == i).unwrap()
    }

    #[test]
    fn vendor_is_read_from_leaf_0() {
        assert_eq!(vendor(&host_like(b"GenuineIntel")), Vendor::Intel);
        assert_eq!(vendor(&host_like(b"AuthenticAMD")), Vendor::Amd);
        assert_eq!(vendor(&[]), Vendor::Other);
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_topology() {
        let mut e = host_like(b"GenuineIntel");
        filter(&mut e, 2, 4, true);
        let l1 = get(&e, 1, 0);
        assert_eq!(l1.ebx >> 24, 2, "APIC id");
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical processors");
        assert_eq!((l1.ebx >> 8) & 0xff, 8);
        assert_eq!(l1.ebx & 0xff, 7, "brand index kept");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(l1.ecx & (ECX_VMX | ECX_MONITOR), 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
        let smt = get(&e, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        let core = get(&e, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 2));
        let end = get(&e, 0xb, 2);
        assert_eq!((end.ecx >> 8) & 0xff, 0, "level list ends");
        let l1d = get(&e, 4, 0);
        assert_eq!((l1d.eax >> 14) & 0xfff, 0);
        assert_eq!(l1d.eax >> 26, 3);
        let l3 = get(&e, 4, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
        assert_eq!(get(&e, 0xa, 0).eax, 0, "no PMU");
        assert!(has_kvm_signature(&e), "KVM leaves kept");
        assert_eq!(get(&e, 0x8000_0001, 0).ecx, 1, "SVM hidden, rest kept");
    }

    #[test]
    fn missing_topology_subleaves_are_added() {
        let mut e = host_like(b"AuthenticAMD");
        e.retain(|x| !(x.function == 0xb && x.index > 0));
        add_topology_subleaves(&mut e);
        filter(&mut e, 1, 2, false);
        let core = get(&e, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (1, 2, 0x201, 1));
        assert_eq!(core.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        assert_eq!(get(&e, 0xb, 2).ecx, 2);
        assert!(!e.iter().any(|x| x.function == 0x1f), "0x1f not invented");
    }

    #[test]
    fn one_vcpu_has_no_htt() {
        let mut e = host_like(b"GenuineIntel");
        filter(&mut e, 0, 1, false);
        assert_eq!(get(&e, 1, 0).edx & EDX_HTT, 0);
        assert_eq!(get(&e, 1, 0).ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(get(&e, 0xb, 1).eax, 0);
    }

    #[test]
    fn amd_leaves_carry_the_core_count() {
        let mut e = host_like(b"AuthenticAMD");
        filter(&mut e, 1, 3, false);
        let ids = get(&e, 0x8000_0008, 0);
        assert_eq!(ids.ecx & 0xff, 2);
        assert_eq!((ids.ecx >> 12) & 0xf, 2);
        assert_eq!(get(&e, 0x8000_001e, 0).eax, 1);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(254), 8);
    }
}
