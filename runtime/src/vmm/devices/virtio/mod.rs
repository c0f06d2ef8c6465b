//! virtio 1.x devices over the virtio-mmio transport.
//!
//! The seam: a device model implements [`VirtioDevice`]; [`mmio::MmioTransport`] (the one
//! transport, modern only) owns the registers, feature negotiation, queue setup and the
//! status machine, and hands the device its queues in [`VirtioDevice::activate`] when the
//! driver sets DRIVER_OK. From then on the device works on its own thread(s), woken by the
//! queues' ioeventfds, and raises interrupts through [`VirtioInterrupt`] (an irqfd): a vCPU
//! never carries device work beyond a register access.
//!
//! Rules every device follows:
//! - Nothing the guest controls (descriptor addresses, lengths, indexes, header fields) may
//!   panic, hang or corrupt the VMM. A malformed request is answered with an error where the
//!   device protocol has one; a broken queue puts the device in the failed state with
//!   [`VirtioInterrupt::fail`], which logs why.
//! - Dropping the device stops and joins its worker threads and closes its host resources
//!   (sockets, fds). The VM drops its devices before it unmaps guest memory.
//!
//! One folder per device: `rng/`, `vsock/`, `fs/`. Devices complete requests through
//! [`ring`] (add_used + interrupt, with EVENT_IDX suppression done right).

pub mod mmio;
pub mod ring;
pub mod rng;
#[cfg(test)]
pub mod test_ring;
pub mod worker;

pub mod fs;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use virtio_queue::{Queue, QueueT};

/// Device type ids (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// Feature bit every husk device offers: the transport is modern-only.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_RING_EVENT_IDX: the driver and device suppress notifications with the
/// used_event / avail_event fields. A device opts in by offering it in
/// [`VirtioDevice::features`]; when the driver accepts it, the transport enables it on
/// every queue and the device must complete requests through [`ring`].
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// VIRTIO_F_INDIRECT_DESC: the driver may put a chain in an indirect table. virtio-queue's
/// `DescriptorChain` follows them, so a device may offer it in [`VirtioDevice::features`]
/// (useful for large requests: one ring slot per request).
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;

/// Interrupt status bits (virtio-mmio InterruptStatus).
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG_CHANGE: u32 = 2;

/// One queue handed to a device at activation: the negotiated queue and the eventfd the
/// guest's QueueNotify writes for it are delivered on (a KVM ioeventfd).
pub struct ActiveQueue {
    pub queue: Queue,
    pub notify: EventFd,
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest RAM. Cloning is cheap (shared regions) and keeps the mapping alive for as long
    /// as a worker holds it.
    pub memory: GuestMemoryMmap,
    pub interrupt: Arc<VirtioInterrupt>,
    /// In queue-index order; only queues the driver set ready (the transport refuses
    /// DRIVER_OK otherwise).
    pub queues: Vec<ActiveQueue>,
    /// Features the driver acknowledged (a subset of [`VirtioDevice::features`]).
    pub acked_features: u64,
}

/// Errors a device reports from [`VirtioDevice::activate`]; the transport sets
/// DEVICE_NEEDS_RESET and logs it.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver set up {got} queues, the device needs {want}")]
    QueueCount { want: usize, got: usize },
    #[error("cannot start the device worker: {0}")]
    Worker(std::io::Error),
    #[error("{0}")]
    Backend(String),
}

/// A virtio device model, independent of the transport.
pub trait VirtioDevice: Send {
    /// Device type id (`TYPE_*`).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Offered feature bits, [`VIRTIO_F_VERSION_1`] included.
    fn features(&self) -> u64;
    /// Reads device config space at `offset`; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space; ignored by devices whose config is read-only.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device: from here on it serves its queues on its own thread(s).
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops the device's workers and drops its queues (driver reset). The device can be
    /// activated again afterwards.
    fn reset(&mut self);
}

/// A device's interrupt line, shared by the transport (which reads and acks the status)
/// and the device's workers (which raise it).
pub struct VirtioInterrupt {
    status: AtomicU32,
    irqfd: EventFd,
    failed: AtomicBool,
    name: &'static str,
}

impl VirtioInterrupt {
    /// `irqfd` must be registered with KVM for the device's IRQ; `name` is used in logs.
    pub fn new(irqfd: EventFd, name: &'static str) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
            failed: AtomicBool::new(false),
            name,
        }
    }

    /// Tells the driver a used ring has new entries.
    pub fn signal_used_queue(&self) {
        self.raise(INT_USED_RING);
    }

    /// Tells the driver the config space (or the device status) changed.
    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG_CHANGE);
    }

    /// Puts the device in the failed state (DEVICE_NEEDS_RESET, read by the driver from
    /// the status register) because of something the guest did, and logs why. The device
    /// stops serving its queues until the driver resets it.
    pub fn fail(&self, why: &dyn std::fmt::Display) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            eprintln!("husk: virtio-{}: device failed: {why}", self.name);
        }
        self.signal_config_change();
    }

    /// Whether [`fail`](Self::fail) was called since the last reset.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Clears status and the failed state (driver reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::Release);
        self.failed.store(false, Ordering::Release);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::AcqRel);
        // An eventfd write only fails if the counter would overflow, and then the
        // interrupt is pending anyway.
        let _ = self.irqfd.write(1);
    }
}
