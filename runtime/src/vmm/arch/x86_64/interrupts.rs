//! The local APIC's LINT pins: LINT0 takes the legacy PIC's ExtINT, LINT1 is NMI, as on a
//! PC (and as the MP table tells the guest).

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

/// LVT LINT0 and LINT1 register offsets in the APIC page (Intel SDM vol. 3A 10.4.1).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
/// Delivery modes (bits 10:8 of an LVT entry).
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors programming the local APIC.
#[derive(Debug, thiserror::Error)]
pub enum InterruptsError {
    #[error("cannot get the local APIC state: {0}")]
    GetLapic(kvm_ioctls::Error),
    #[error("cannot set the local APIC state: {0}")]
    SetLapic(kvm_ioctls::Error),
}

fn get_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *b as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Sets LINT0 to ExtINT and LINT1 to NMI in `lapic`.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = get_reg(lapic, APIC_LVT0);
    set_reg(lapic, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get_reg(lapic, APIC_LVT1);
    set_reg(lapic, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

/// Programs a vCPU's LINT pins (needs the in-kernel irqchip).
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), InterruptsError> {
    let mut lapic = vcpu.get_lapic().map_err(InterruptsError::GetLapic)?;
    set_lint(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(InterruptsError::SetLapic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_pins_get_their_delivery_modes() {
        let mut l = kvm_lapic_state::default();
        set_reg(&mut l, APIC_LVT0, 0x0001_0000 | 0x500);
        set_lint(&mut l);
        assert_eq!(
            get_reg(&l, APIC_LVT0),
            0x0001_0700,
            "mask bit kept, mode ExtINT"
        );
        assert_eq!(get_reg(&l, APIC_LVT1), 0x400);
    }
}
