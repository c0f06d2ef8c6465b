//! Model-specific registers a vCPU starts with (the set Firecracker programs at boot):
//! syscall MSRs cleared, fast strings on, MTRRs enabled with write-back as the default type
//! (otherwise the guest would treat all RAM as uncacheable), the TSC at zero.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

// MSR numbers (arch/x86/include/asm/msr-index.h).
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// MSR_IA32_MISC_ENABLE bit 0: fast-string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled (bit 11), default memory type write-back (6).
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_MEM_TYPE_WB: u64 = 0x6;

/// Errors setting MSRs.
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    #[error("cannot build the MSR list: {0}")]
    List(vmm_sys_util::fam::Error),
    #[error("cannot set MSRs: {0}")]
    Set(kvm_ioctls::Error),
    #[error("KVM refused MSR {0:#x} (set {1} of {2})")]
    Refused(u32, usize, usize),
}

/// The boot MSRs: (index, value).
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
}

/// Programs the boot MSRs; every one must be accepted.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), MsrError> {
    let list = boot_msrs();
    let entries: Vec<kvm_msr_entry> = list
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(MsrError::List)?;
    let set = vcpu.set_msrs(&msrs).map_err(MsrError::Set)?;
    if set != list.len() {
        // KVM stops at the first MSR it refuses.
        let refused = list.get(set).map_or(0, |m| m.0);
        return Err(MsrError::Refused(refused, set, list.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtrrs_default_to_write_back() {
        let m = boot_msrs();
        let def = m.iter().find(|(i, _)| *i == MSR_MTRR_DEF_TYPE).unwrap().1;
        assert_eq!(def, 0x806);
        let mut idx: Vec<u32> = m.iter().map(|x| x.0).collect();
        idx.dedup();
        assert_eq!(idx.len(), m.len(), "no duplicates");
    }
}
