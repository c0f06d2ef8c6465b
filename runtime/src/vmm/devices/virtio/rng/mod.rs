//! virtio-rng (virtio 1.2, 5.4): one queue of write-only buffers the device fills with
//! random bytes from the host's getrandom(2), so the guest never waits for entropy.
//!
//! The device model (this file) is what the transport sees; the queue is served on a
//! worker thread ([`worker`]) woken by the queue's ioeventfd.

mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::worker::DeviceWorker;
use super::{
    ActivateError, Activation, VirtioDevice, TYPE_RNG, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// The one queue's size: Linux keeps a single 64-byte request in flight, so this is
/// plenty.
pub const QUEUE_SIZE: u16 = 64;
/// Most bytes served for one request (one descriptor chain): bounds the time and host
/// memory a request can take.
pub const MAX_BYTES_PER_REQUEST: u32 = 64 << 10;

/// How many random bytes the device has handed to the guest; readable from any thread,
/// also after the VM has ended.
#[derive(Clone, Debug, Default)]
pub struct RngCounter(Arc<AtomicU64>);

impl RngCounter {
    /// Bytes written into guest buffers so far.
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// The entropy device.
pub struct Rng {
    served: RngCounter,
    worker: Option<DeviceWorker>,
}

impl Rng {
    pub fn new() -> Self {
        Self {
            served: RngCounter::default(),
            worker: None,
        }
    }

    /// The bytes-served counter (take it before handing the device to the VM).
    pub fn counter(&self) -> RngCounter {
        self.served.clone()
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no config space.
        data.fill(0);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            memory,
            interrupt,
            queues,
            ..
        } = activation;
        let got = queues.len();
        let Some(queue) = queues.into_iter().next().filter(|_| got == 1) else {
            return Err(ActivateError::QueueCount { want: 1, got });
        };
        // A previous activation's worker (the transport resets first, but be sure).
        self.worker = None;
        let served = self.served.clone();
        let w = DeviceWorker::spawn("husk-virtio-rng".into(), move |stop| {
            worker::run(queue, memory, &interrupt, &served, &stop)
        })
        .map_err(ActivateError::Worker)?;
        self.worker = Some(w);
        Ok(())
    }

    fn reset(&mut self) {
        // Dropping the worker stops and joins it; the queue goes with it.
        self.worker = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::virtio::test_ring::{test_memory, TestRing, VRING_DESC_F_WRITE};
    use crate::vmm::devices::virtio::{ActiveQueue, QueueT, VirtioInterrupt, INT_USED_RING};
    use std::time::{Duration, Instant};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    fn activation(
        mem: &vm_memory::GuestMemoryMmap,
        ring: &TestRing<'_>,
        event_idx: bool,
    ) -> (Activation, EventFd, Arc<VirtioInterrupt>) {
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(VirtioInterrupt::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            "rng-test",
        ));
        let mut queue = ring.queue();
        queue.set_event_idx(event_idx);
        let a = Activation {
            memory: mem.clone(),
            interrupt: interrupt.clone(),
            queues: vec![ActiveQueue {
                queue,
                notify: notify.try_clone().unwrap(),
            }],
            acked_features: VIRTIO_F_VERSION_1,
        };
        (a, notify, interrupt)
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn serves_write_only_buffers_and_counts_bytes() {
        let m = test_memory();
        let mut ring = TestRing::new(&m, 0x1_0000, QUEUE_SIZE);
        let mut rng = Rng::new();
        let counter = rng.counter();
        let (a, notify, interrupt) = activation(&m, &ring, false);
        rng.activate(a).unwrap();
        // A read-only descriptor is skipped; the two writable ones are filled.
        ring.add_chain(&[
            (0x8_0000, 100, VRING_DESC_F_WRITE),
            (0x8_1000, 16, 0),
            (0x8_2000, 28, VRING_DESC_F_WRITE),
        ]);
        notify.write(1).unwrap();
        wait_for("the first request", || ring.used_idx() == 1);
        assert_eq!(ring.used_elem(0), (0, 128));
        assert_eq!(counter.bytes(), 128);
        assert_eq!(interrupt.status(), INT_USED_RING);
        let mut filled = [0u8; 100];
        m.read_slice(&mut filled, GuestAddress(0x8_0000)).unwrap();
        assert!(filled.iter().any(|b| *b != 0), "not random: {filled:?}");
        rng.reset();
        // After a reset nothing is served any more.
        ring.add_chain(&[(0x8_0000, 8, VRING_DESC_F_WRITE)]);
        notify.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ring.used_idx(), 1);
    }

    #[test]
    fn requests_are_capped_and_bad_buffers_end_them() {
        let m = vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let mut ring = TestRing::new(&m, 0x1_0000, QUEUE_SIZE);
        let mut rng = Rng::new();
        let counter = rng.counter();
        let (a, notify, _irq) = activation(&m, &ring, true);
        rng.activate(a).unwrap();
        // 1 MiB offered: only MAX_BYTES_PER_REQUEST served.
        ring.add_chain(&[(0x10_0000, 1 << 20, VRING_DESC_F_WRITE)]);
        // A buffer past the end of RAM: nothing served, no panic.
        ring.add_chain(&[(0x40_0000, 64, VRING_DESC_F_WRITE)]);
        // A buffer straddling the end of RAM after a good one: the good one counts.
        ring.add_chain(&[
            (0x20_0000, 32, VRING_DESC_F_WRITE),
            (0x40_0000 - 8, 64, VRING_DESC_F_WRITE),
        ]);
        notify.write(1).unwrap();
        wait_for("three requests", || ring.used_idx() == 3);
        assert_eq!(ring.used_elem(0).1, MAX_BYTES_PER_REQUEST);
        assert_eq!(ring.used_elem(1).1, 0);
        assert_eq!(ring.used_elem(2).1, 32);
        assert_eq!(counter.bytes(), u64::from(MAX_BYTES_PER_REQUEST) + 32);
        drop(rng);
    }

    #[test]
    fn a_broken_queue_fails_the_device_without_panicking() {
        let m = test_memory();
        let ring = TestRing::new(&m, 0x1_0000, QUEUE_SIZE);
        let mut rng = Rng::new();
        let (a, notify, interrupt) = activation(&m, &ring, false);
        rng.activate(a).unwrap();
        ring.set_avail_idx(1000);
        notify.write(1).unwrap();
        wait_for("the failed state", || interrupt.has_failed());
        drop(rng); // joins the worker
    }

    #[test]
    fn activation_needs_exactly_one_queue() {
        let m = test_memory();
        let ring = TestRing::new(&m, 0x1_0000, QUEUE_SIZE);
        let mut rng = Rng::new();
        let (mut a, _n, _i) = activation(&m, &ring, false);
        a.queues.clear();
        assert!(matches!(
            rng.activate(a),
            Err(ActivateError::QueueCount { want: 1, got: 0 })
        ));
    }
}
