//! x86_64 boot: what the guest finds when its first instruction runs.
//!
//! The design choice that shapes this module: no firmware and no ACPI. The VMM writes the
//! few tables Linux needs itself (PVH start info with the e820 map, an MP table for SMP,
//! a boot GDT), programs each vCPU (CPUID, MSRs, LAPIC, registers), and the kernel starts
//! at its PVH entry point in 32-bit protected mode. Every guest address is in [`layout`].

pub mod cpuid;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod pvh;
pub mod regs;

use kvm_bindings::{kvm_mp_state, CpuId, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED};
use kvm_ioctls::VcpuFd;

/// Errors configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    #[error("cannot build the CPUID list: {0}")]
    CpuidList(vmm_sys_util::fam::Error),
    #[error("cannot set CPUID: {0}")]
    SetCpuid(kvm_ioctls::Error),
    #[error(transparent)]
    Msr(#[from] msr::MsrError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Interrupts(#[from] interrupts::InterruptsError),
    #[error("cannot set the multiprocessing state: {0}")]
    MpState(kvm_ioctls::Error),
}

/// Programs vCPU `index` of `vcpus`: its CPUID (from KVM's supported set), boot MSRs,
/// LAPIC LINT pins, FPU; the boot vCPU (index 0) is runnable (its PVH entry registers are
/// set by [`regs::setup_boot_vcpu`] once the kernel is loaded), the others wait for
/// INIT/SIPI from it.
pub fn configure_vcpu(
    vcpu: &VcpuFd,
    index: u8,
    vcpus: u8,
    supported_cpuid: &CpuId,
    tsc_deadline: bool,
) -> Result<(), ArchError> {
    let mut entries = supported_cpuid.as_slice().to_vec();
    cpuid::add_topology_subleaves(&mut entries);
    cpuid::filter(&mut entries, index, vcpus, tsc_deadline);
    let cpuid = CpuId::from_entries(&entries).map_err(ArchError::CpuidList)?;
    vcpu.set_cpuid2(&cpuid).map_err(ArchError::SetCpuid)?;
    msr::setup_msrs(vcpu)?;
    interrupts::setup_lapic(vcpu)?;
    regs::setup_fpu(vcpu)?;
    let mp_state = if index == 0 {
        KVM_MP_STATE_RUNNABLE
    } else {
        KVM_MP_STATE_UNINITIALIZED
    };
    vcpu.set_mp_state(kvm_mp_state { mp_state })
        .map_err(ArchError::MpState)
}
