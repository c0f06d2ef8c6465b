//! Hands out what an MMIO device needs: a page-aligned slot in the MMIO window below
//! 4 GiB and an IOAPIC pin (5 and up), and says how the guest learns about it
//! (`virtio_mmio.device=<size>@<addr>:<irq>` on the command line, no ACPI or PCI).

use super::arch::x86_64::layout::{
    FIRST_DEVICE_IRQ, LAST_DEVICE_IRQ, MMIO_DEVICES_END, MMIO_DEVICES_START, PAGE_SIZE,
};

/// Errors allocating device resources.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error(
        "no IRQ left for another device (IRQs {FIRST_DEVICE_IRQ}..={LAST_DEVICE_IRQ} are taken)"
    )]
    OutOfIrqs,
    #[error("no room for {0:#x} more bytes in the MMIO device window")]
    OutOfMmio(u64),
    #[error("an MMIO slot of {0} bytes is not allowed")]
    BadSize(u64),
}

/// What one MMIO device got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    pub addr: u64,
    pub len: u64,
    pub irq: u32,
}

impl MmioSlot {
    /// The kernel parameter that declares this slot as a virtio-mmio device
    /// (needs CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES in the guest).
    pub fn virtio_mmio_cmdline(&self) -> String {
        format!(
            "virtio_mmio.device={:#x}@{:#x}:{}",
            self.len, self.addr, self.irq
        )
    }
}

/// A bump allocator over the MMIO window and the device IRQs.
#[derive(Debug)]
pub struct ResourceAllocator {
    next_addr: u64,
    next_irq: u32,
}

impl Default for ResourceAllocator {
    fn default() -> Self {
        Self {
            next_addr: MMIO_DEVICES_START,
            next_irq: FIRST_DEVICE_IRQ,
        }
    }
}

impl ResourceAllocator {
    pub fn new() -> Self {
        Self::default()
    }

    /// A slot of `len` bytes (rounded up to whole pages) and its own IRQ.
    pub fn allocate_mmio(&mut self, len: u64) -> Result<MmioSlot, ResourceError> {
        if len == 0 || len > MMIO_DEVICES_END - MMIO_DEVICES_START {
            return Err(ResourceError::BadSize(len));
        }
        let len = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        if self.next_irq > LAST_DEVICE_IRQ {
            return Err(ResourceError::OutOfIrqs);
        }
        if MMIO_DEVICES_END - self.next_addr < len {
            return Err(ResourceError::OutOfMmio(len));
        }
        let slot = MmioSlot {
            addr: self.next_addr,
            len,
            irq: self.next_irq,
        };
        self.next_addr += len;
        self.next_irq += 1;
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_page_aligned_with_their_own_irq() {
        let mut a = ResourceAllocator::new();
        let s0 = a.allocate_mmio(0x200).unwrap();
        let s1 = a.allocate_mmio(0x1001).unwrap();
        assert_eq!(
            s0,
            MmioSlot {
                addr: 0xc000_0000,
                len: 0x1000,
                irq: 5
            }
        );
        assert_eq!(
            s1,
            MmioSlot {
                addr: 0xc000_1000,
                len: 0x2000,
                irq: 6
            }
        );
        assert_eq!(
            s0.virtio_mmio_cmdline(),
            "virtio_mmio.device=0x1000@0xc0000000:5"
        );
    }

    #[test]
    fn irqs_run_out_at_the_last_ioapic_pin() {
        let mut a = ResourceAllocator::new();
        for irq in FIRST_DEVICE_IRQ..=LAST_DEVICE_IRQ {
            assert_eq!(a.allocate_mmio(0x1000).unwrap().irq, irq);
        }
        assert!(matches!(
            a.allocate_mmio(0x1000),
            Err(ResourceError::OutOfIrqs)
        ));
    }

    #[test]
    fn bad_sizes_and_a_full_window_are_errors() {
        let mut a = ResourceAllocator::new();
        assert!(a.allocate_mmio(0).is_err());
        assert!(a.allocate_mmio(u64::MAX).is_err());
        a.allocate_mmio(MMIO_DEVICES_END - MMIO_DEVICES_START)
            .unwrap();
        assert!(matches!(
            a.allocate_mmio(1),
            Err(ResourceError::OutOfIrqs | ResourceError::OutOfMmio(_))
        ));
    }
}
