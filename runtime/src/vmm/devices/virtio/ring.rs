//! Completing requests: add used-ring entries and interrupt the driver only when it asked
//! to be, with or without VIRTIO_F_RING_EVENT_IDX. Every device goes through here, so the
//! notification-suppression protocol (virtio 1.2, 2.7.7 and 2.7.10) is written once.
//!
//! Two ways in:
//! - [`drain`]: a device that serves each chain as soon as it pops it (rng, a request
//!   queue) hands a closure; `drain` pops until the ring is empty with the driver's
//!   notifications off, re-enables them, re-checks for a race, then interrupts once if the
//!   driver wants it.
//! - [`complete`] (one request) or [`add_used`] then [`signal_used`] (a batch): a device
//!   that answers later (a vsock receive, a slow FUSE request) completes the chains it
//!   kept, in any order.
//!
//! With EVENT_IDX the driver says after which used index it wants an interrupt
//! (`used_event`); [`virtio_queue::QueueT::needs_notification`] compares it with what was
//! added since the last check, so `signal_used` must run after every batch of `add_used`,
//! never be skipped (it also resets that count).

use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::GuestMemoryMmap;

use super::{Queue, QueueT, VirtioInterrupt};

pub use virtio_queue::Error as QueueError;

/// A chain as [`drain`] hands it over.
pub type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// Puts one used entry (`head` of a chain popped earlier, `len` bytes written to it)
/// without interrupting; follow a batch with [`signal_used`].
pub fn add_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
) -> Result<(), QueueError> {
    queue.add_used(mem, head, len)
}

/// Interrupts the driver if the used entries added since the last call need it (always
/// without EVENT_IDX; only past the driver's `used_event` with it).
pub fn signal_used(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &VirtioInterrupt,
) -> Result<(), QueueError> {
    if queue.needs_notification(mem)? {
        interrupt.signal_used_queue();
    }
    Ok(())
}

/// [`add_used`] then [`signal_used`]: completes one request.
pub fn complete(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
    interrupt: &VirtioInterrupt,
) -> Result<(), QueueError> {
    add_used(queue, mem, head, len)?;
    signal_used(queue, mem, interrupt)
}

/// Serves every available chain with `serve` (which returns the number of bytes it wrote
/// into the chain), completing each, until the driver has no more; then interrupts once if
/// the driver wants it. Returns how many chains were served.
///
/// Errors mean the queue itself is broken (an avail index too far ahead, a head index out
/// of range, rings no longer in RAM): the caller puts the device in the failed state.
pub fn drain<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &VirtioInterrupt,
    mut serve: F,
) -> Result<usize, QueueError>
where
    F: FnMut(Chain<'_>) -> u32,
{
    let mut served = 0;
    let result = 'ring: loop {
        // Notifications off while we work: the driver need not kick us for chains we
        // are about to see anyway.
        if let Err(e) = queue.disable_notification(mem) {
            break Err(e);
        }
        // Surfaces a bad avail index, which pop_descriptor_chain would only turn into
        // "nothing available" (and this loop would spin on enable_notification).
        if let Err(e) = queue.iter(mem) {
            break Err(e);
        }
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = serve(chain);
            if let Err(e) = add_used(queue, mem, head, len) {
                break 'ring Err(e);
            }
            served += 1;
        }
        // Back on; if the driver added chains in between, go round again.
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    // Whatever happened, the chains already completed are the driver's.
    if served > 0 {
        signal_used(queue, mem, interrupt)?;
    }
    result.map(|()| served)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::virtio::test_ring::{test_memory, TestRing, VRING_DESC_F_WRITE};
    use crate::vmm::devices::virtio::INT_USED_RING;
    use vmm_sys_util::eventfd::EventFd;

    fn interrupt() -> VirtioInterrupt {
        VirtioInterrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), "test")
    }

    fn add_chains(r: &mut TestRing<'_>, n: u16) {
        for i in 0..n {
            r.add_chain(&[(0x8_0000 + u64::from(i) * 0x100, 0x100, VRING_DESC_F_WRITE)]);
        }
    }

    #[test]
    fn drain_serves_everything_and_interrupts_once_without_event_idx() {
        let m = test_memory();
        let mut r = TestRing::new(&m, 0x1_0000, 16);
        add_chains(&mut r, 3);
        let mut q = r.queue();
        let irq = interrupt();
        let mut seen = Vec::new();
        let n = drain(&mut q, &m, &irq, |c| {
            seen.push(c.head_index());
            7
        })
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(r.used_idx(), 3);
        assert_eq!(r.used_elem(2), (2, 7));
        assert_eq!(irq.status(), INT_USED_RING);
        // Nothing new: no interrupt.
        irq.ack(u32::MAX);
        assert_eq!(drain(&mut q, &m, &irq, |_| 0).unwrap(), 0);
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn event_idx_interrupts_only_past_used_event() {
        let m = test_memory();
        let mut r = TestRing::new(&m, 0x1_0000, 16);
        let mut q = r.queue();
        q.set_event_idx(true);
        let irq = interrupt();
        // The driver wants an interrupt once used idx passes 4.
        r.set_used_event(4);
        add_chains(&mut r, 2);
        assert_eq!(drain(&mut q, &m, &irq, |_| 1).unwrap(), 2);
        assert_eq!(irq.status(), 0, "used idx 2 has not passed used_event 4");
        // avail_event tells the driver where to kick us next.
        assert_eq!(r.avail_event(), 2);
        add_chains(&mut r, 3);
        assert_eq!(drain(&mut q, &m, &irq, |_| 1).unwrap(), 3);
        assert_eq!(irq.status(), INT_USED_RING, "used idx 5 passed 4");
        assert_eq!(r.used_idx(), 5);
        assert_eq!(r.avail_event(), 5);
    }

    #[test]
    fn a_runaway_avail_index_is_an_error_not_a_spin() {
        let m = test_memory();
        let r = TestRing::new(&m, 0x1_0000, 16);
        let mut q = r.queue();
        r.set_avail_idx(100);
        let irq = interrupt();
        assert!(drain(&mut q, &m, &irq, |_| 0).is_err());
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn complete_adds_and_signals() {
        let m = test_memory();
        let mut r = TestRing::new(&m, 0x1_0000, 16);
        add_chains(&mut r, 1);
        let mut q = r.queue();
        let chain = q.pop_descriptor_chain(&m).unwrap();
        let irq = interrupt();
        complete(&mut q, &m, chain.head_index(), 42, &irq).unwrap();
        assert_eq!(r.used_idx(), 1);
        assert_eq!(r.used_elem(0), (0, 42));
        assert_eq!(irq.status(), INT_USED_RING);
        assert!(
            complete(&mut q, &m, 99, 0, &irq).is_err(),
            "head out of range"
        );
    }
}
