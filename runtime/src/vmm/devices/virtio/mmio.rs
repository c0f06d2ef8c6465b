//! The virtio-mmio transport, version 2 ("modern") only (virtio 1.2, 4.2.2).
//!
//! [`MmioTransport`] sits on the MMIO bus in front of one [`VirtioDevice`]: it owns the
//! register file, feature negotiation, the per-queue configuration the driver writes, and
//! the device status machine. When the driver sets DRIVER_OK it checks every ready queue
//! against guest memory and hands them to the device ([`VirtioDevice::activate`]). Queue
//! notifications normally never reach it: the VM registers one KVM ioeventfd per queue on
//! the QueueNotify register, so a notify wakes the device's worker without leaving the
//! kernel. A notify that does reach it (no ioeventfd) is forwarded to the same eventfd.
//!
//! Everything the guest writes is checked; a register access of the wrong size or
//! alignment, a write out of order, or a bad queue is ignored or answered with
//! DEVICE_NEEDS_RESET, and logged, never a panic.

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{Activation, ActiveQueue, Queue, QueueT, VirtioDevice, VirtioInterrupt};
use super::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::vmm::devices::BusDevice;

/// Bad accesses logged per transport, then silence.
const MAX_LOGGED_BAD_ACCESSES: u32 = 4;

/// Size of a virtio-mmio slot: registers up to 0x100, device config space after it.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;

/// "virt" in little endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// virtio-mmio version 2: the virtio 1.x register layout.
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the driver ("HUSK", informational only).
pub const VENDOR_ID: u32 = 0x4b53_5548;

/// Register offsets (virtio 1.2, 4.2.2).
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Errors building a transport (the device's own description is wrong: a husk bug).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(
        "virtio device {name}: queue {index} has max size {size}, not a power of two in 1..=32768"
    )]
    BadQueueSize {
        name: &'static str,
        index: usize,
        size: u16,
    },
    #[error("virtio device {name}: {notify} notify eventfds for {queues} queues")]
    NotifyCount {
        name: &'static str,
        notify: usize,
        queues: usize,
    },
    #[error("virtio device {name} has no queues")]
    NoQueues { name: &'static str },
}

/// Why DRIVER_OK could not start the device (logged through [`VirtioInterrupt::fail`]).
#[derive(Debug, thiserror::Error)]
enum QueueSetupError {
    #[error("queue {index} is ready but queue {missing} before it is not")]
    Gap { index: usize, missing: usize },
    #[error("no queue is ready")]
    NoneReady,
    #[error("queue {index}: size {size} is not a power of two up to {max}")]
    Size { index: usize, size: u16, max: u16 },
    #[error("queue {index}: {what} address {addr:#x} is misaligned")]
    Alignment {
        index: usize,
        what: &'static str,
        addr: u64,
    },
    #[error("queue {index}: {what} at {addr:#x} (+{len:#x}) is not in guest RAM")]
    OutOfRam {
        index: usize,
        what: &'static str,
        addr: u64,
        len: u64,
    },
    #[error(
        "queue {index}: its driver area is at guest address 0, which virtio-queue treats as unset"
    )]
    DriverAreaAtZero { index: usize },
    #[error("queue {index}: virtio-queue finds it invalid (its rings end outside guest RAM)")]
    Invalid { index: usize },
    #[error("queue {index}: cannot clone its notify eventfd: {source}")]
    NotifyClone {
        index: usize,
        source: std::io::Error,
    },
}

/// What the driver wrote for one queue; turned into a [`Queue`] at DRIVER_OK.
#[derive(Clone, Copy, Debug, Default)]
struct QueueConfig {
    max_size: u16,
    size: u16,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ..Default::default()
        }
    }
}

/// Sets the low or high 32 bits of `addr`.
fn set_half(addr: &mut u64, high: bool, value: u32) {
    *addr = if high {
        (*addr & 0xffff_ffff) | (u64::from(value) << 32)
    } else {
        (*addr & !0xffff_ffff) | u64::from(value)
    };
}

/// Size of each split-ring area for a queue of `size` entries (virtio 1.2, 2.7), and its
/// alignment: the descriptor table (16 bytes per entry), the driver area (avail ring:
/// flags, idx, ring, used_event) and the device area (used ring: flags, idx, 8-byte ring
/// entries, avail_event).
fn ring_areas(c: &QueueConfig) -> [(&'static str, u64, u64, u64); 3] {
    let n = u64::from(c.size);
    [
        ("descriptor table", c.desc, 16 * n, 16),
        ("driver area", c.driver, 6 + 2 * n, 2),
        ("device area", c.device, 6 + 8 * n, 4),
    ]
}

/// One virtio device behind the virtio-mmio register file.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    name: &'static str,
    memory: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    /// One per queue: what QueueNotify (KVM ioeventfd, datamatch = queue index) signals.
    notify: Vec<EventFd>,
    queues: Vec<QueueConfig>,
    /// Features offered: the device's, VERSION_1 always.
    offered_features: u64,
    acked_features: u64,
    /// The driver set a feature bit past 63 (none is offered).
    acked_unoffered_word: bool,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    status: u32,
    activated: bool,
    /// How many bad accesses have been logged: a broken driver could log at every access
    /// otherwise.
    logged_bad_accesses: u32,
}

impl MmioTransport {
    /// Puts `device` behind a register file. `notify[i]` is the eventfd queue `i`'s
    /// QueueNotify is delivered on (registered with KVM by the caller); `interrupt` is the
    /// slot's irqfd-backed interrupt line; `memory` is guest RAM, which must outlive the
    /// transport (the VM drops its devices first).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        name: &'static str,
        memory: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        notify: Vec<EventFd>,
    ) -> Result<Self, TransportError> {
        Self::check_device(device.as_ref(), name)?;
        let sizes = device.queue_max_sizes();
        if notify.len() != sizes.len() {
            return Err(TransportError::NotifyCount {
                name,
                notify: notify.len(),
                queues: sizes.len(),
            });
        }
        let queues = sizes.iter().map(|&s| QueueConfig::new(s)).collect();
        let offered_features = device.features() | VIRTIO_F_VERSION_1;
        Ok(Self {
            device,
            name,
            memory,
            interrupt,
            notify,
            queues,
            offered_features,
            acked_features: 0,
            acked_unoffered_word: false,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            status: 0,
            activated: false,
            logged_bad_accesses: 0,
        })
    }

    /// Checks what a device says about itself: at least one queue, each with a max size
    /// that is a power of two up to 32768 (split virtqueues).
    pub fn check_device(
        device: &dyn VirtioDevice,
        name: &'static str,
    ) -> Result<(), TransportError> {
        let sizes = device.queue_max_sizes();
        if sizes.is_empty() {
            return Err(TransportError::NoQueues { name });
        }
        for (index, &size) in sizes.iter().enumerate() {
            if !size.is_power_of_two() || size > 32768 {
                return Err(TransportError::BadQueueSize { name, index, size });
            }
        }
        Ok(())
    }

    /// Whether the device is running (DRIVER_OK accepted and activation succeeded).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The status register as the driver reads it.
    pub fn device_status(&self) -> u32 {
        let mut s = self.status;
        if self.interrupt.has_failed() {
            s |= status::DEVICE_NEEDS_RESET;
        }
        s
    }

    /// Features the driver acknowledged.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn log_bad(&mut self, what: String) {
        if self.logged_bad_accesses < MAX_LOGGED_BAD_ACCESSES {
            self.logged_bad_accesses += 1;
            let more = if self.logged_bad_accesses == MAX_LOGGED_BAD_ACCESSES {
                " (further bad accesses are not logged)"
            } else {
                ""
            };
            eprintln!("husk: virtio-{}: ignoring {what}{more}", self.name);
        }
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may be written between FEATURES_OK and DRIVER_OK.
    fn queue_setup_allowed(&self) -> bool {
        self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            == status::FEATURES_OK
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC_VALUE => MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features as u32,
                1 => (self.offered_features >> 32) as u32,
                _ => 0,
            },
            // 0 tells the driver the selected queue does not exist.
            reg::QUEUE_NUM_MAX => queue.map_or(0, |q| q.max_size.into()),
            reg::QUEUE_READY => queue.map_or(0, |q| q.ready.into()),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.device_status(),
            // husk devices never change their config space while running.
            reg::CONFIG_GENERATION => 0,
            // No device has shared memory regions: length and base -1 say "no such region"
            // (0 would be a region of length 0 at 0, which Linux tries to reserve).
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH | reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => {
                u32::MAX
            }
            // Write-only and unknown registers read as zero.
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_register(offset, value),
            reg::QUEUE_NOTIFY => self.forward_notify(value),
            // Selects a shared memory region; every one reads as absent.
            reg::SHM_SEL => {}
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.write_status(value),
            _ => self.log_bad(format!(
                "a write of {value:#x} to read-only or unknown register {offset:#x}"
            )),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & (status::DRIVER | status::FEATURES_OK) != status::DRIVER {
            self.log_bad(format!(
                "DriverFeatures written in status {:#x}",
                self.status
            ));
            return;
        }
        let word = u64::from(value);
        match self.driver_features_sel {
            0 => self.acked_features = (self.acked_features & !0xffff_ffff) | word,
            1 => self.acked_features = (self.acked_features & 0xffff_ffff) | (word << 32),
            // Feature bits past 63: none is offered, so FEATURES_OK will be refused.
            _ => self.acked_unoffered_word |= value != 0,
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        // Linux's vm_del_vq writes QueueReady 0 after the reset that stopped the queue:
        // to a queue that is not ready, that is a no-op whatever the status.
        let stopping_a_stopped_queue = offset == reg::QUEUE_READY
            && value == 0
            && self
                .queues
                .get(self.queue_sel as usize)
                .is_some_and(|q| !q.ready);
        if stopping_a_stopped_queue {
            return;
        }
        if !self.queue_setup_allowed() {
            self.log_bad(format!(
                "queue register {offset:#x} written in status {:#x}",
                self.status
            ));
            return;
        }
        let Some(q) = self.selected_queue() else {
            let sel = self.queue_sel;
            self.log_bad(format!(
                "queue register {offset:#x} written for missing queue {sel}"
            ));
            return;
        };
        match offset {
            // Truncation keeps a bad size bad: it is checked at DRIVER_OK.
            reg::QUEUE_NUM => q.size = u16::try_from(value).unwrap_or(0),
            reg::QUEUE_READY => q.ready = value == 1,
            reg::QUEUE_DESC_LOW => set_half(&mut q.desc, false, value),
            reg::QUEUE_DESC_HIGH => set_half(&mut q.desc, true, value),
            reg::QUEUE_DRIVER_LOW => set_half(&mut q.driver, false, value),
            reg::QUEUE_DRIVER_HIGH => set_half(&mut q.driver, true, value),
            reg::QUEUE_DEVICE_LOW => set_half(&mut q.device, false, value),
            reg::QUEUE_DEVICE_HIGH => set_half(&mut q.device, true, value),
            _ => {}
        }
    }

    /// A QueueNotify that reached userspace (no ioeventfd matched): deliver it the same way.
    fn forward_notify(&mut self, index: u32) {
        match self.notify.get(index as usize) {
            Some(evt) => {
                // Fails only if the counter would overflow: a wake-up is pending anyway.
                let _ = evt.write(1);
            }
            None => self.log_bad(format!("a notify for missing queue {index}")),
        }
    }

    /// The status machine (virtio 1.2, 3.1.1): 0 resets; otherwise the driver only adds
    /// bits, each after its predecessor (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK);
    /// FAILED may come at any time.
    fn write_status(&mut self, value: u32) {
        use status::*;
        if value == 0 {
            self.reset();
            return;
        }
        // NEEDS_RESET is the device's to set.
        let new = value & !DEVICE_NEEDS_RESET;
        let added = new & !self.status;
        let ordered = new & self.status == self.status
            && (new & DRIVER == 0 || new & ACKNOWLEDGE != 0)
            && (new & FEATURES_OK == 0 || new & DRIVER != 0)
            && (new & DRIVER_OK == 0 || new & FEATURES_OK != 0)
            && new & !(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | FAILED) == 0;
        if !ordered {
            self.log_bad(format!("status {value:#x} after status {:#x}", self.status));
            return;
        }
        if added & FEATURES_OK != 0 && !self.features_acceptable() {
            // Left clear: the driver reads the status back and gives up.
            self.log_bad(format!(
                "features {:#x}: offered {:#x}, VERSION_1 required; FEATURES_OK refused",
                self.acked_features, self.offered_features
            ));
            self.status = new & !(FEATURES_OK | DRIVER_OK);
            return;
        }
        self.status = new;
        // A driver that gave up (FAILED) or a device already failed does not start.
        if added & DRIVER_OK != 0 && new & FAILED == 0 && !self.interrupt.has_failed() {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        self.acked_features & VIRTIO_F_VERSION_1 != 0
            && self.acked_features & !self.offered_features == 0
            && !self.acked_unoffered_word
    }

    /// Checks the driver's queue setup and turns it into queues.
    fn build_queues(&self) -> Result<Vec<ActiveQueue>, QueueSetupError> {
        let ready = self.queues.iter().take_while(|q| q.ready).count();
        if let Some(index) = self.queues[ready..].iter().position(|q| q.ready) {
            return Err(QueueSetupError::Gap {
                index: ready + index,
                missing: ready,
            });
        }
        if ready == 0 {
            return Err(QueueSetupError::NoneReady);
        }
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut out = Vec::with_capacity(ready);
        for (index, c) in self.queues[..ready].iter().enumerate() {
            // max_size was checked in `new`, so Queue::new cannot fail; map it anyway.
            let size_err = QueueSetupError::Size {
                index,
                size: c.size,
                max: c.max_size,
            };
            let mut queue = Queue::new(c.max_size).map_err(|_| size_err)?;
            queue
                .try_set_size(c.size)
                .map_err(|_| QueueSetupError::Size {
                    index,
                    size: c.size,
                    max: c.max_size,
                })?;
            for (what, addr, len, align) in ring_areas(c) {
                if addr % align != 0 {
                    return Err(QueueSetupError::Alignment { index, what, addr });
                }
                // The whole area must be RAM (Queue::is_valid only looks at its end).
                let in_ram = addr
                    .checked_add(len)
                    .is_some_and(|_| self.memory.check_range(GuestAddress(addr), len as usize));
                if !in_ram {
                    return Err(QueueSetupError::OutOfRam {
                        index,
                        what,
                        addr,
                        len,
                    });
                }
            }
            // Alignment was checked above, so these cannot fail.
            let _ = queue.try_set_desc_table_address(GuestAddress(c.desc));
            let _ = queue.try_set_avail_ring_address(GuestAddress(c.driver));
            let _ = queue.try_set_used_ring_address(GuestAddress(c.device));
            queue.set_event_idx(event_idx);
            queue.set_ready(true);
            if c.driver == 0 {
                return Err(QueueSetupError::DriverAreaAtZero { index });
            }
            if !queue.is_valid(&self.memory) {
                return Err(QueueSetupError::Invalid { index });
            }
            let notify = self.notify[index]
                .try_clone()
                .map_err(|source| QueueSetupError::NotifyClone { index, source })?;
            out.push(ActiveQueue { queue, notify });
        }
        Ok(out)
    }

    fn activate(&mut self) {
        let queues = match self.build_queues() {
            Ok(q) => q,
            Err(e) => {
                self.interrupt.fail(&format_args!("DRIVER_OK refused: {e}"));
                return;
            }
        };
        let activation = Activation {
            memory: self.memory.clone(),
            interrupt: self.interrupt.clone(),
            queues,
            acked_features: self.acked_features,
        };
        match self.device.activate(activation) {
            Ok(()) => self.activated = true,
            Err(e) => self
                .interrupt
                .fail(&format_args!("cannot activate the device: {e}")),
        }
    }

    /// Driver reset: the device stops, every register returns to its initial value.
    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max_size);
        }
        // Stale notifies must not wake the next activation's workers.
        for evt in &self.notify {
            let _ = evt.read();
        }
        self.interrupt.reset();
        self.acked_features = 0;
        self.acked_unoffered_word = false;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.status = 0;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(word) if offset % 4 == 0 => *word = self.read_register(offset).to_le_bytes(),
            _ => {
                data.fill(0);
                self.log_bad(format!(
                    "a {}-byte read at register offset {offset:#x}",
                    data.len()
                ));
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(word) if offset % 4 == 0 => self.write_register(offset, u32::from_le_bytes(word)),
            _ => self.log_bad(format!(
                "a {}-byte write at register offset {offset:#x}",
                data.len()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::virtio::test_ring::{test_memory, TestRing};
    use crate::vmm::devices::virtio::{ActivateError, INT_CONFIG_CHANGE, INT_USED_RING, TYPE_RNG};
    use std::sync::Mutex;

    /// One activation: queue count, acked features, (ready, EVENT_IDX on) per queue.
    type SeenActivation = (usize, u64, Vec<(bool, bool)>);

    /// What a test device saw, shared with the test.
    #[derive(Default)]
    struct Seen {
        activations: Vec<SeenActivation>,
        resets: usize,
        config_writes: Vec<(u64, Vec<u8>)>,
    }

    /// A device with a small config space that records activations and resets.
    struct TestDevice {
        sizes: Vec<u16>,
        features: u64,
        config: [u8; 8],
        fail_activate: bool,
        seen: Arc<Mutex<Seen>>,
        /// Keeps the queues (and so their eventfds) like a running device would.
        queues: Vec<ActiveQueue>,
    }

    impl VirtioDevice for TestDevice {
        fn device_type(&self) -> u32 {
            TYPE_RNG
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn features(&self) -> u64 {
            self.features
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = usize::try_from(offset)
                    .ok()
                    .and_then(|o| self.config.get(o + i))
                    .copied()
                    .unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.seen
                .lock()
                .unwrap()
                .config_writes
                .push((offset, data.to_vec()));
        }
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            if self.fail_activate {
                return Err(ActivateError::Backend("test says no".into()));
            }
            let ready = a
                .queues
                .iter()
                .map(|q| (q.queue.ready(), q.queue.event_idx_enabled()))
                .collect();
            self.seen
                .lock()
                .unwrap()
                .activations
                .push((a.queues.len(), a.acked_features, ready));
            self.queues = a.queues;
            Ok(())
        }
        fn reset(&mut self) {
            self.queues.clear();
            self.seen.lock().unwrap().resets += 1;
        }
    }

    struct Harness {
        t: MmioTransport,
        seen: Arc<Mutex<Seen>>,
        irqfd: EventFd,
        interrupt: Arc<VirtioInterrupt>,
    }

    fn harness_with(mem: &GuestMemoryMmap, sizes: &[u16], features: u64) -> Harness {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let dev = TestDevice {
            sizes: sizes.to_vec(),
            features,
            config: *b"\x01\x02\x03\x04\x05\x06\x07\x08",
            fail_activate: false,
            seen: seen.clone(),
            queues: Vec::new(),
        };
        let mut h = harness_for(mem, Box::new(dev));
        h.seen = seen;
        h
    }

    /// A transport over any device, with fresh eventfds.
    fn harness_for(mem: &GuestMemoryMmap, device: Box<dyn VirtioDevice>) -> Harness {
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(VirtioInterrupt::new(irqfd.try_clone().unwrap(), "test"));
        let notify = device
            .queue_max_sizes()
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let t = MmioTransport::new(device, "test", mem.clone(), interrupt.clone(), notify).unwrap();
        Harness {
            t,
            seen: Arc::default(),
            irqfd,
            interrupt,
        }
    }

    fn harness(mem: &GuestMemoryMmap) -> Harness {
        harness_with(mem, &[16, 16], VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX)
    }

    impl Harness {
        fn r(&mut self, offset: u64) -> u32 {
            let mut d = [0u8; 4];
            self.t.read(offset, &mut d);
            u32::from_le_bytes(d)
        }
        fn w(&mut self, offset: u64, v: u32) {
            self.t.write(offset, &v.to_le_bytes());
        }
        /// The driver's side up to FEATURES_OK (Linux's virtio_dev_probe order).
        fn negotiate(&mut self, low: u32, high: u32) -> u32 {
            self.w(reg::STATUS, 0);
            self.w(reg::STATUS, status::ACKNOWLEDGE);
            self.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
            self.w(reg::DEVICE_FEATURES_SEL, 1);
            let _ = self.r(reg::DEVICE_FEATURES);
            self.w(reg::DEVICE_FEATURES_SEL, 0);
            let _ = self.r(reg::DEVICE_FEATURES);
            self.w(reg::DRIVER_FEATURES_SEL, 1);
            self.w(reg::DRIVER_FEATURES, high);
            self.w(reg::DRIVER_FEATURES_SEL, 0);
            self.w(reg::DRIVER_FEATURES, low);
            self.w(
                reg::STATUS,
                status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
            );
            self.r(reg::STATUS)
        }
        /// Linux's vm_setup_vq for queue `index` over `ring`.
        fn setup_queue(&mut self, index: u32, ring: &TestRing<'_>) {
            self.w(reg::QUEUE_SEL, index);
            assert_eq!(self.r(reg::QUEUE_READY), 0);
            assert!(self.r(reg::QUEUE_NUM_MAX) >= u32::from(ring.size));
            self.w(reg::QUEUE_NUM, ring.size.into());
            self.w(reg::QUEUE_DESC_LOW, ring.desc as u32);
            self.w(reg::QUEUE_DESC_HIGH, (ring.desc >> 32) as u32);
            self.w(reg::QUEUE_DRIVER_LOW, ring.avail as u32);
            self.w(reg::QUEUE_DRIVER_HIGH, (ring.avail >> 32) as u32);
            self.w(reg::QUEUE_DEVICE_LOW, ring.used as u32);
            self.w(reg::QUEUE_DEVICE_HIGH, (ring.used >> 32) as u32);
            self.w(reg::QUEUE_READY, 1);
            assert_eq!(self.r(reg::QUEUE_READY), 1);
        }
        fn driver_ok(&mut self) -> u32 {
            self.w(
                reg::STATUS,
                status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
            );
            self.r(reg::STATUS)
        }
        fn activations(&self) -> usize {
            self.seen.lock().unwrap().activations.len()
        }
    }

    const ALL_OK: u32 =
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    #[test]
    fn identity_registers() {
        let m = test_memory();
        let mut h = harness(&m);
        assert_eq!(h.r(reg::MAGIC_VALUE), MAGIC_VALUE);
        assert_eq!(&h.r(reg::MAGIC_VALUE).to_le_bytes(), b"virt");
        assert_eq!(h.r(reg::VERSION), 2);
        assert_eq!(h.r(reg::DEVICE_ID), TYPE_RNG);
        assert_eq!(h.r(reg::VENDOR_ID), VENDOR_ID);
        h.w(reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(h.r(reg::DEVICE_FEATURES), 1 << 29);
        h.w(reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(h.r(reg::DEVICE_FEATURES), 1);
        h.w(reg::DEVICE_FEATURES_SEL, 2);
        assert_eq!(h.r(reg::DEVICE_FEATURES), 0);
        assert_eq!(h.r(reg::CONFIG_GENERATION), 0);
        assert_eq!(h.r(reg::STATUS), 0);
        assert_eq!(h.r(reg::INTERRUPT_STATUS), 0);
    }

    #[test]
    fn every_register_reads_without_panicking_and_write_only_ones_read_zero() {
        let m = test_memory();
        let mut h = harness(&m);
        for offset in (0..reg::CONFIG).step_by(4) {
            let v = h.r(offset);
            let readable = [
                reg::MAGIC_VALUE,
                reg::VERSION,
                reg::DEVICE_ID,
                reg::VENDOR_ID,
                reg::DEVICE_FEATURES,
                reg::QUEUE_NUM_MAX,
            ];
            let absent_shm = [
                reg::SHM_LEN_LOW,
                reg::SHM_LEN_HIGH,
                reg::SHM_BASE_LOW,
                reg::SHM_BASE_HIGH,
            ];
            if absent_shm.contains(&offset) {
                assert_eq!(v, u32::MAX, "register {offset:#x}");
            } else if !readable.contains(&offset) {
                assert_eq!(v, 0, "register {offset:#x}");
            }
        }
    }

    #[test]
    fn a_linux_like_init_activates_the_device_with_its_queues() {
        let m = test_memory();
        let mut h = harness(&m);
        let r0 = TestRing::new(&m, 0x1_0000, 16);
        let r1 = TestRing::new(&m, 0x2_0000, 8);
        let s = h.negotiate(1 << 29, 1);
        assert_eq!(
            s,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
        );
        h.setup_queue(0, &r0);
        h.setup_queue(1, &r1);
        // A queue that does not exist: QueueNumMax 0 tells the driver so.
        h.w(reg::QUEUE_SEL, 2);
        assert_eq!(h.r(reg::QUEUE_NUM_MAX), 0);
        assert_eq!(h.driver_ok(), ALL_OK);
        assert!(h.t.is_activated());
        assert_eq!(
            h.t.acked_features(),
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
        );
        // The device got both queues, ready, with EVENT_IDX on (the driver acked it).
        assert_eq!(
            h.seen.lock().unwrap().activations,
            [(
                2,
                VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX,
                vec![(true, true), (true, true)]
            )]
        );
        // Queue registers are frozen after DRIVER_OK.
        h.w(reg::QUEUE_SEL, 0);
        h.w(reg::QUEUE_READY, 0);
        assert_eq!(h.r(reg::QUEUE_READY), 1);
        // Interrupt status and ack.
        h.interrupt.signal_used_queue();
        assert_eq!(h.r(reg::INTERRUPT_STATUS), 1);
        assert_eq!(h.irqfd.read().unwrap(), 1);
        h.w(reg::INTERRUPT_ACK, 1);
        assert_eq!(h.r(reg::INTERRUPT_STATUS), 0);
        // Reset: the device stops, registers return to their initial values.
        h.w(reg::STATUS, 0);
        assert_eq!(h.r(reg::STATUS), 0);
        assert!(!h.t.is_activated());
        assert_eq!(h.seen.lock().unwrap().resets, 1);
        h.w(reg::QUEUE_SEL, 0);
        assert_eq!(h.r(reg::QUEUE_READY), 0);
        assert_eq!(h.t.acked_features(), 0);
        // Linux's vm_del_vq then deactivates each queue: not a bad access.
        let logged = h.t.logged_bad_accesses;
        h.w(reg::QUEUE_READY, 0);
        h.w(reg::QUEUE_SEL, 1);
        h.w(reg::QUEUE_READY, 0);
        assert_eq!(h.t.logged_bad_accesses, logged);
        // And it can be brought up again.
        h.negotiate(0, 1);
        h.setup_queue(0, &r0);
        h.setup_queue(1, &r1);
        assert_eq!(h.driver_ok(), ALL_OK);
        assert_eq!(h.activations(), 2);
        // Without EVENT_IDX acked, the queues do not use it.
        assert_eq!(
            h.seen.lock().unwrap().activations[1],
            (2, VIRTIO_F_VERSION_1, vec![(true, false), (true, false)])
        );
    }

    #[test]
    fn features_ok_is_refused_without_version_1_or_with_unoffered_bits() {
        let m = test_memory();
        let mut h = harness(&m);
        // Legacy driver: no VERSION_1.
        assert_eq!(h.negotiate(1 << 29, 0) & status::FEATURES_OK, 0);
        // A bit the device did not offer.
        assert_eq!(h.negotiate(1 << 28, 1) & status::FEATURES_OK, 0);
        assert_eq!(h.negotiate(0, 1 | 2) & status::FEATURES_OK, 0);
        // A bit past 63.
        h.w(reg::STATUS, 0);
        h.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        h.w(reg::DRIVER_FEATURES_SEL, 1);
        h.w(reg::DRIVER_FEATURES, 1);
        h.w(reg::DRIVER_FEATURES_SEL, 5);
        h.w(reg::DRIVER_FEATURES, 1);
        h.w(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(h.r(reg::STATUS) & status::FEATURES_OK, 0);
        // Without FEATURES_OK, DRIVER_OK goes nowhere.
        h.driver_ok();
        assert_eq!(h.activations(), 0);
        // VERSION_1 alone is fine, and a reset clears the refusal.
        assert_ne!(h.negotiate(0, 1) & status::FEATURES_OK, 0);
    }

    #[test]
    fn out_of_order_status_writes_are_ignored() {
        let m = test_memory();
        let mut h = harness(&m);
        // DRIVER before ACKNOWLEDGE, FEATURES_OK before DRIVER, DRIVER_OK first.
        for bad in [
            status::DRIVER,
            status::FEATURES_OK,
            status::DRIVER_OK,
            status::ACKNOWLEDGE | status::FEATURES_OK,
            0x10,
        ] {
            h.w(reg::STATUS, bad);
            assert_eq!(h.r(reg::STATUS), 0, "status {bad:#x} from 0");
        }
        h.w(reg::STATUS, status::ACKNOWLEDGE);
        // Clearing a bit without a reset.
        h.w(reg::STATUS, status::DRIVER);
        assert_eq!(h.r(reg::STATUS), status::ACKNOWLEDGE);
        // Features written before DRIVER are ignored.
        h.w(reg::DRIVER_FEATURES_SEL, 1);
        h.w(reg::DRIVER_FEATURES, 1);
        assert_eq!(h.t.acked_features(), 0);
        // The driver may not set NEEDS_RESET; FAILED is always allowed.
        h.w(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DEVICE_NEEDS_RESET,
        );
        assert_eq!(h.r(reg::STATUS), status::ACKNOWLEDGE);
        h.w(reg::STATUS, status::ACKNOWLEDGE | status::FAILED);
        assert_eq!(h.r(reg::STATUS), status::ACKNOWLEDGE | status::FAILED);
        // After FAILED, nothing starts.
        h.w(
            reg::STATUS,
            status::ACKNOWLEDGE | status::FAILED | status::DRIVER,
        );
        h.w(reg::DRIVER_FEATURES_SEL, 1);
        h.w(reg::DRIVER_FEATURES, 1);
        let failed_ok = status::ACKNOWLEDGE | status::FAILED | status::DRIVER | status::FEATURES_OK;
        h.w(reg::STATUS, failed_ok);
        h.w(reg::STATUS, failed_ok | status::DRIVER_OK);
        assert_eq!(h.r(reg::STATUS), failed_ok | status::DRIVER_OK);
        assert!(!h.t.is_activated());
        h.w(reg::STATUS, 0);
        // Queue setup before FEATURES_OK is ignored.
        h.w(reg::STATUS, status::ACKNOWLEDGE);
        h.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        h.w(reg::QUEUE_SEL, 0);
        h.w(reg::QUEUE_READY, 1);
        assert_eq!(h.r(reg::QUEUE_READY), 0);
        assert_eq!(h.activations(), 0);
    }

    /// Runs `setup` (which spoils queue 0) after FEATURES_OK and expects DRIVER_OK to fail
    /// the device: no activation, NEEDS_RESET, a config-change interrupt; then checks a
    /// reset and a good setup bring it up.
    fn expect_refused(setup: impl FnOnce(&mut Harness, &TestRing<'_>)) {
        let m = test_memory();
        let mut h = harness_with(&m, &[16], VIRTIO_F_VERSION_1);
        let r = TestRing::new(&m, 0x1_0000, 16);
        h.negotiate(0, 1);
        setup(&mut h, &r);
        let s = h.driver_ok();
        assert_eq!(h.activations(), 0, "activated despite a bad queue");
        assert!(!h.t.is_activated());
        assert_ne!(s & status::DEVICE_NEEDS_RESET, 0, "status {s:#x}");
        assert!(h.interrupt.has_failed());
        assert_ne!(h.r(reg::INTERRUPT_STATUS) & INT_CONFIG_CHANGE, 0);
        // A reset clears the failure; a good setup then works.
        h.w(reg::STATUS, 0);
        assert_eq!(h.r(reg::STATUS), 0);
        assert!(!h.interrupt.has_failed());
        h.negotiate(0, 1);
        h.setup_queue(0, &r);
        assert_eq!(h.driver_ok(), ALL_OK);
        assert_eq!(h.activations(), 1);
    }

    #[test]
    fn rings_outside_guest_ram_are_refused() {
        // 1 MiB of RAM: 0x10_0000 is the first byte past it.
        expect_refused(|h, r| {
            h.setup_queue(0, r);
            h.w(reg::QUEUE_DESC_LOW, 0x10_0000);
        });
        expect_refused(|h, r| {
            h.setup_queue(0, r);
            h.w(reg::QUEUE_DRIVER_HIGH, 1);
        });
        // Straddles the end of RAM.
        expect_refused(|h, r| {
            h.setup_queue(0, r);
            h.w(reg::QUEUE_DEVICE_LOW, 0x10_0000 - 0x40);
        });
        // virtio-queue cannot use a driver area at 0.
        expect_refused(|h, r| {
            h.setup_queue(0, r);
            h.w(reg::QUEUE_DRIVER_LOW, 0);
        });
        // Wraps around the address space.
        expect_refused(|h, r| {
            h.setup_queue(0, r);
            h.w(reg::QUEUE_DESC_LOW, 0xffff_fff0);
            h.w(reg::QUEUE_DESC_HIGH, 0xffff_ffff);
        });
    }

    #[test]
    fn misaligned_rings_and_bad_sizes_are_refused() {
        expect_refused(|h, r| {
            h.setup_queue(0, r);
            h.w(reg::QUEUE_DESC_LOW, r.desc as u32 + 8);
        });
        expect_refused(|h, r| {
            h.setup_queue(0, r);
            h.w(reg::QUEUE_DRIVER_LOW, r.avail as u32 + 1);
        });
        expect_refused(|h, r| {
            h.setup_queue(0, r);
            h.w(reg::QUEUE_DEVICE_LOW, r.used as u32 + 2);
        });
        for size in [0, 3, 32, 0x1_0010] {
            expect_refused(|h, r| {
                h.setup_queue(0, r);
                h.w(reg::QUEUE_NUM, size);
            });
        }
    }

    #[test]
    fn no_ready_queue_or_a_gap_is_refused() {
        expect_refused(|_, _| {});
        let m = test_memory();
        let mut h = harness(&m);
        let r = TestRing::new(&m, 0x1_0000, 16);
        h.negotiate(0, 1);
        h.setup_queue(1, &r);
        assert_ne!(h.driver_ok() & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(h.activations(), 0);
    }

    #[test]
    fn a_device_that_cannot_activate_needs_reset() {
        let m = test_memory();
        let mut h = harness_with(&m, &[16], VIRTIO_F_VERSION_1);
        let seen = h.seen.clone();
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(VirtioInterrupt::new(irqfd, "test"));
        h.t = MmioTransport::new(
            Box::new(TestDevice {
                sizes: vec![16],
                features: VIRTIO_F_VERSION_1,
                config: [0; 8],
                fail_activate: true,
                seen,
                queues: Vec::new(),
            }),
            "test",
            m.clone(),
            interrupt.clone(),
            vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
        )
        .unwrap();
        let r = TestRing::new(&m, 0x1_0000, 16);
        h.negotiate(0, 1);
        h.setup_queue(0, &r);
        assert_ne!(h.driver_ok() & status::DEVICE_NEEDS_RESET, 0);
        assert!(!h.t.is_activated());
    }

    #[test]
    fn notifies_that_reach_userspace_go_to_the_queue_eventfd() {
        let m = test_memory();
        let mut h = harness(&m);
        let r = TestRing::new(&m, 0x1_0000, 16);
        h.negotiate(0, 1);
        h.setup_queue(0, &r);
        h.setup_queue(1, &r);
        h.driver_ok();
        h.w(reg::QUEUE_NOTIFY, 1);
        h.w(reg::QUEUE_NOTIFY, 7); // no such queue: ignored
        let seen = h.t.notify.iter().map(|e| e.read().ok()).collect::<Vec<_>>();
        assert_eq!(seen, [None, Some(1)]);
    }

    #[test]
    fn config_space_reads_and_writes_go_to_the_device() {
        let m = test_memory();
        let mut h = harness(&m);
        let mut b = [0u8; 4];
        h.t.read(reg::CONFIG + 2, &mut b);
        assert_eq!(b, [3, 4, 5, 6]);
        let mut one = [0u8; 1];
        h.t.read(reg::CONFIG + 7, &mut one);
        assert_eq!(one, [8]);
        // Past the end of the device's config: zeros.
        let mut b = [0xffu8; 4];
        h.t.read(reg::CONFIG + 6, &mut b);
        assert_eq!(b, [7, 8, 0, 0]);
        let mut b = [0xffu8; 8];
        h.t.read(MMIO_SLOT_SIZE - 8, &mut b);
        assert_eq!(b, [0; 8]);
        h.t.write(reg::CONFIG + 1, &[9, 9]);
        assert_eq!(h.seen.lock().unwrap().config_writes, [(1, vec![9u8, 9])]);
    }

    #[test]
    fn wrong_size_or_unaligned_register_accesses_are_ignored() {
        let m = test_memory();
        let mut h = harness(&m);
        for (offset, len) in [(0u64, 1usize), (0, 2), (0, 8), (2, 4), (reg::STATUS + 1, 4)] {
            let mut d = vec![0xaau8; len];
            h.t.read(offset, &mut d);
            assert!(d.iter().all(|b| *b == 0), "{offset:#x}/{len}: {d:?}");
            h.t.write(offset, &vec![1u8; len]);
        }
        h.t.write(reg::STATUS, &[1]);
        h.t.write(reg::STATUS, &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(h.r(reg::STATUS), 0);
        // Writes to read-only registers change nothing.
        h.w(reg::MAGIC_VALUE, 0);
        h.w(reg::INTERRUPT_STATUS, 1);
        assert_eq!(h.r(reg::MAGIC_VALUE), MAGIC_VALUE);
    }

    #[test]
    fn bad_device_descriptions_are_errors() {
        let m = test_memory();
        let irq = || Arc::new(VirtioInterrupt::new(EventFd::new(0).unwrap(), "t"));
        let dev = |sizes: Vec<u16>| -> Box<dyn VirtioDevice> {
            Box::new(TestDevice {
                sizes,
                features: 0,
                config: [0; 8],
                fail_activate: false,
                seen: Arc::default(),
                queues: Vec::new(),
            })
        };
        let evts = |n| (0..n).map(|_| EventFd::new(0).unwrap()).collect::<Vec<_>>();
        assert!(matches!(
            MmioTransport::new(dev(vec![]), "t", m.clone(), irq(), evts(0)),
            Err(TransportError::NoQueues { .. })
        ));
        assert!(matches!(
            MmioTransport::new(dev(vec![16, 12]), "t", m.clone(), irq(), evts(2)),
            Err(TransportError::BadQueueSize { index: 1, .. })
        ));
        assert!(matches!(
            MmioTransport::new(dev(vec![16]), "t", m.clone(), irq(), evts(2)),
            Err(TransportError::NotifyCount { .. })
        ));
        // VERSION_1 is offered even if the device forgot it.
        let mut t = MmioTransport::new(dev(vec![16]), "t", m, irq(), evts(1)).unwrap();
        let mut d = [0u8; 4];
        t.write(reg::DEVICE_FEATURES_SEL, &1u32.to_le_bytes());
        t.read(reg::DEVICE_FEATURES, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1);
    }

    /// The transport and the real rng device together, driven through registers only:
    /// init with EVENT_IDX, a request served through the QueueNotify path, the interrupt
    /// seen and acked, a reset (worker joined), a second life, then drop.
    #[test]
    fn transport_and_rng_end_to_end() {
        use crate::vmm::devices::virtio::rng::Rng;
        use crate::vmm::devices::virtio::test_ring::VRING_DESC_F_WRITE;
        use std::time::{Duration, Instant};

        let m = test_memory();
        let rng = Rng::new();
        let counter = rng.counter();
        let mut h = harness_for(&m, Box::new(rng));
        let wait_used = |ring: &TestRing<'_>, n: u16| {
            let start = Instant::now();
            while ring.used_idx() != n {
                assert!(start.elapsed() < Duration::from_secs(10), "not served");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        for life in 1..=2u16 {
            let mut ring = TestRing::new(&m, 0x1_0000 * u64::from(life), 64);
            h.negotiate(1 << 29, 1);
            h.setup_queue(0, &ring);
            assert_eq!(h.driver_ok(), ALL_OK);
            assert!(h.t.is_activated());
            // used_event 0: interrupt after the first completion.
            ring.set_used_event(0);
            ring.add_chain(&[(0x8_0000, 64, VRING_DESC_F_WRITE)]);
            h.w(reg::QUEUE_NOTIFY, 0);
            wait_used(&ring, 1);
            assert_eq!(ring.used_elem(0), (0, 64));
            let start = Instant::now();
            while h.r(reg::INTERRUPT_STATUS) & INT_USED_RING == 0 {
                assert!(start.elapsed() < Duration::from_secs(10), "no interrupt");
                std::thread::sleep(Duration::from_millis(1));
            }
            h.w(reg::INTERRUPT_ACK, INT_USED_RING);
            assert_eq!(h.r(reg::INTERRUPT_STATUS), 0);
            assert_eq!(counter.bytes(), 64 * u64::from(life));
            h.w(reg::STATUS, 0);
            assert!(!h.t.is_activated());
        }
        drop(h);
        assert_eq!(counter.bytes(), 128);
    }

    /// A small deterministic PRNG (xorshift64*) so the fuzz test is reproducible.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn random_register_traffic_never_panics() {
        let m = test_memory();
        let ring = TestRing::new(&m, 0x1_0000, 16);
        let offsets = [
            reg::DEVICE_FEATURES_SEL,
            reg::DRIVER_FEATURES,
            reg::DRIVER_FEATURES_SEL,
            reg::QUEUE_SEL,
            reg::QUEUE_NUM,
            reg::QUEUE_READY,
            reg::QUEUE_NOTIFY,
            reg::INTERRUPT_ACK,
            reg::STATUS,
            reg::QUEUE_DESC_LOW,
            reg::QUEUE_DESC_HIGH,
            reg::QUEUE_DRIVER_LOW,
            reg::QUEUE_DRIVER_HIGH,
            reg::QUEUE_DEVICE_LOW,
            reg::QUEUE_DEVICE_HIGH,
        ];
        let mut activations = 0;
        for seed in 1..=64u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut h = harness(&m);
            for _ in 0..5_000 {
                let pick = rng.next();
                if pick % 400 == 0 {
                    // Now and then a proper init, so the random traffic also hits a
                    // running device (and its reset).
                    h.negotiate(1 << 29, 1);
                    h.setup_queue(0, &ring);
                    h.setup_queue(1, &ring);
                    h.driver_ok();
                }
                let value = match pick % 8 {
                    // Plausible values more often than not, so deep states are reached.
                    0 => rng.next() as u32,
                    1 => (rng.next() % 3) as u32,
                    2 => [1, 3, 11, 15, 0][(rng.next() % 5) as usize],
                    3 => [ring.desc, ring.avail, ring.used][(rng.next() % 3) as usize] as u32,
                    4 => 16,
                    _ => (rng.next() % 0x100) as u32,
                };
                let offset = if pick % 5 == 0 {
                    rng.next() % MMIO_SLOT_SIZE
                } else {
                    offsets[(rng.next() % offsets.len() as u64) as usize]
                };
                let len = [4usize, 4, 4, 1, 2, 8][(rng.next() % 6) as usize];
                if rng.next() % 3 == 0 {
                    let mut d = vec![0u8; len];
                    h.t.read(offset, &mut d);
                } else {
                    let bytes = u64::from(value).to_le_bytes();
                    h.t.write(offset, &bytes[..len]);
                }
                // The invariant the guest relies on: DRIVER_OK is only ever reported
                // together with the steps before it.
                let s = h.t.device_status();
                if s & status::DRIVER_OK != 0 {
                    assert_ne!(s & status::FEATURES_OK, 0, "status {s:#x}");
                }
            }
            activations += h.activations();
        }
        // The traffic is random, not useless: it got devices running.
        assert!(activations > 0, "no random sequence activated the device");
    }
}
