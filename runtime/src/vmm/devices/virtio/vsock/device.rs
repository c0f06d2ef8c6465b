//! The virtio-vsock device (virtio 1.2, 5.10): three queues (rx, tx, event), an 8-byte
//! config space holding the guest's CID, and one worker thread that serves the queues and
//! every host socket from a single epoll set.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::{GuestMemoryError, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{VsockMuxer, TOKEN_EVENT_QUEUE, TOKEN_RX_QUEUE, TOKEN_STOP, TOKEN_TX_QUEUE};
use super::packet::{RxBuffer, TxPacket};
use super::unix::{UdsListener, VsockError};
use super::{guest_log, uapi};
use crate::vmm::devices::virtio::worker::DeviceWorker;
use crate::vmm::devices::virtio::{
    ActivateError, Activation, ActiveQueue, Queue, QueueT, VirtioDevice, VirtioInterrupt,
    TYPE_VSOCK, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};

/// The queues, in order: rx, tx, event (virtio 1.2, 5.10.2).
const QUEUE_SIZES: [u16; 3] = [256; 3];
/// Chains served per queue before the worker looks at its epoll set again: a guest that
/// keeps a queue busy cannot keep the worker from its sockets or from being stopped.
const BUDGET: usize = 256;

/// A virtio-vsock device whose host side is the unix socket at `uds_path` (see the module
/// documentation of [`super`] for the conventions).
pub struct Vsock {
    guest_cid: u64,
    listener: Arc<UdsListener>,
    /// Dropping it stops and joins the worker.
    worker: Option<DeviceWorker>,
}

impl Vsock {
    /// Binds the listening socket at `uds_path` at once, so that a bad path fails here and
    /// host clients can connect (and wait in the backlog) before the guest is up. The socket
    /// file is removed when the device is dropped.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Vsock, VsockError> {
        // 0, 1 and 2 are the hypervisor, local and host; -1 (32-bit) means "any".
        if guest_cid <= uapi::VSOCK_HOST_CID || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::ReservedCid(guest_cid));
        }
        let listener = Arc::new(UdsListener::bind(&uds_path)?);
        Ok(Vsock {
            guest_cid,
            listener,
            worker: None,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        self.listener.path()
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // Joins the worker (which closes every connection) before the listener goes: its
        // socket file is removed with the last reference, this one.
        self.worker = None;
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        // With EVENT_IDX acknowledged the transport enables it on the queues; the worker
        // always completes through needs_notification, as that requires. Indirect tables
        // (a TX packet's header and payload in one ring slot) are followed and checked by
        // virtio-queue's chain iterator like direct descriptors.
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        let config = self.guest_cid.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| config.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.worker = None;
        // The transport checked every queue (in RAM, aligned, ready) and set EVENT_IDX on
        // them if the driver acknowledged it.
        let Activation {
            memory,
            interrupt,
            queues,
            acked_features: _,
        } = activation;
        let got = queues.len();
        let mut it = queues.into_iter();
        let (Some(rx), Some(tx), Some(ev), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(ActivateError::QueueCount {
                want: QUEUE_SIZES.len(),
                got,
            });
        };
        let muxer = VsockMuxer::new(self.guest_cid, self.listener.clone())
            .map_err(ActivateError::Worker)?;
        register(&muxer, &rx.notify, TOKEN_RX_QUEUE)
            .and_then(|_| register(&muxer, &tx.notify, TOKEN_TX_QUEUE))
            .and_then(|_| register(&muxer, &ev.notify, TOKEN_EVENT_QUEUE))
            .map_err(ActivateError::Worker)?;
        let worker = Worker {
            muxer,
            memory,
            interrupt,
            rx,
            tx,
            _event: ev,
            tx_paused: false,
            tx_more: false,
            rx_more: false,
        };
        let worker = DeviceWorker::spawn("husk-vsock".into(), move |stop| worker.run(stop))
            .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        self.worker = None;
    }
}

fn register(muxer: &VsockMuxer, fd: &EventFd, token: u64) -> io::Result<()> {
    muxer.epoll().ctl(
        ControlOperation::Add,
        std::os::fd::AsRawFd::as_raw_fd(fd),
        EpollEvent::new(EventSet::IN, token),
    )
}

/// Why the worker stopped serving the queues (the device is then failed).
#[derive(Debug, thiserror::Error)]
enum WorkerError {
    #[error("the {queue} queue is broken: {source}")]
    Queue {
        queue: &'static str,
        source: virtio_queue::Error,
    },
    #[error("cannot write an RX packet into guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
    #[error("epoll failed: {0}")]
    Epoll(io::Error),
}

fn rx_err(source: virtio_queue::Error) -> WorkerError {
    WorkerError::Queue {
        queue: "rx",
        source,
    }
}

fn tx_err(source: virtio_queue::Error) -> WorkerError {
    WorkerError::Queue {
        queue: "tx",
        source,
    }
}

/// Takes the next available chain; unlike `pop_descriptor_chain`, says when the ring is
/// broken (an available index the guest moved too far) instead of looking empty.
fn pop_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, virtio_queue::Error> {
    Ok(queue.iter(mem)?.next())
}

/// The device's worker: owns the queues and the muxer; woken by queue notifications,
/// socket readiness, connection timers and the stop eventfd.
struct Worker {
    muxer: VsockMuxer,
    memory: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    rx: ActiveQueue,
    tx: ActiveQueue,
    /// Held so the driver's event buffers stay ours; husk sends no events (there is no
    /// migration to announce).
    _event: ActiveQueue,
    /// TX processing waits for RX buffers (see [`VsockMuxer::tx_blocked`]).
    tx_paused: bool,
    /// A queue's budget ran out with work left: poll without sleeping, then go on.
    tx_more: bool,
    rx_more: bool,
}

impl Worker {
    /// Serves until `stop` is signalled, or until a queue breaks: then the device is
    /// failed, and returning closes every connection at once.
    fn run(mut self, stop: EventFd) {
        let result = register(&self.muxer, &stop, TOKEN_STOP)
            .map_err(WorkerError::Epoll)
            .and_then(|_| self.event_loop());
        if let Err(e) = result {
            self.interrupt.fail(&e);
        }
    }

    /// Returns `Ok` when told to stop.
    fn event_loop(&mut self) -> Result<(), WorkerError> {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let timeout = if self.tx_more || self.rx_more {
                0
            } else {
                self.muxer.next_timeout_ms()
            };
            let n = match self.muxer.epoll().wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(WorkerError::Epoll(e)),
            };
            let mut tx_kicked = false;
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP => return Ok(()),
                    // The counters only need clearing (level-triggered epoll); a failed
                    // read means another thread cleared it already.
                    TOKEN_RX_QUEUE => {
                        let _ = self.rx.notify.read();
                    }
                    TOKEN_TX_QUEUE => {
                        let _ = self.tx.notify.read();
                        tx_kicked = true;
                    }
                    TOKEN_EVENT_QUEUE => {
                        let _ = self._event.notify.read();
                    }
                    token => self.muxer.handle_event(token, ev.event_set()),
                }
            }
            self.muxer.expire(Instant::now());
            self.process_queues(tx_kicked)?;
        }
    }

    fn process_queues(&mut self, tx_kicked: bool) -> Result<(), WorkerError> {
        let mut signal = false;
        if tx_kicked || self.tx_paused || self.tx_more {
            signal |= self.process_tx()?;
        }
        signal |= self.process_rx()?;
        // RX buffers made room for the RSTs TX was waiting on: go on with TX, then
        // deliver what it produced.
        if self.tx_paused && !self.muxer.tx_blocked() {
            signal |= self.process_tx()?;
            signal |= self.process_rx()?;
        }
        if signal {
            self.interrupt.signal_used_queue();
        }
        Ok(())
    }

    /// Hands every TX packet to the muxer. Returns whether the driver needs an interrupt.
    fn process_tx(&mut self) -> Result<bool, WorkerError> {
        let mem = &self.memory;
        let queue = &mut self.tx.queue;
        let mut served = 0;
        self.tx_paused = false;
        self.tx_more = false;
        queue.disable_notification(mem).map_err(tx_err)?;
        loop {
            if self.muxer.tx_blocked() {
                self.tx_paused = true;
                break;
            }
            if served == BUDGET {
                // Notifications stay off: the worker comes back at once.
                self.tx_more = true;
                break;
            }
            let Some(chain) = pop_chain(queue, mem).map_err(tx_err)? else {
                // Re-enable kicks, then look again: a packet may have come in between.
                if queue.enable_notification(mem).map_err(tx_err)? {
                    queue.disable_notification(mem).map_err(tx_err)?;
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            match TxPacket::parse(chain, mem) {
                Ok(pkt) => self.muxer.send_to_host(&pkt, mem),
                Err(e) => guest_log!("dropping a TX packet: {e}"),
            }
            queue.add_used(mem, head, 0).map_err(tx_err)?;
            served += 1;
        }
        if self.tx_paused {
            queue.enable_notification(mem).map_err(tx_err)?;
        }
        Ok(served > 0 && queue.needs_notification(mem).map_err(tx_err)?)
    }

    /// Fills RX buffers while the muxer has packets for the guest. Returns whether the
    /// driver needs an interrupt.
    fn process_rx(&mut self) -> Result<bool, WorkerError> {
        let mem = &self.memory;
        let queue = &mut self.rx.queue;
        let mut served = 0;
        self.rx_more = false;
        while self.muxer.has_pending_rx() {
            if served == BUDGET {
                self.rx_more = true;
                break;
            }
            let Some(chain) = pop_chain(queue, mem).map_err(rx_err)? else {
                // Out of buffers: ask for a kick when the driver adds some, then look again.
                if queue.enable_notification(mem).map_err(rx_err)? {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let rx = match RxBuffer::parse(chain, mem) {
                Ok(rx) => rx,
                Err(e) => {
                    guest_log!("returning an unusable RX buffer: {e}");
                    queue.add_used(mem, head, 0).map_err(rx_err)?;
                    served += 1;
                    continue;
                }
            };
            match self.muxer.recv_for_guest(&rx, mem)? {
                Some(len) => {
                    queue.add_used(mem, head, len).map_err(rx_err)?;
                    served += 1;
                }
                None => {
                    // Nothing was owed after all: the buffer stays the driver's.
                    queue.go_to_previous_position();
                    break;
                }
            }
        }
        Ok(served > 0 && queue.needs_notification(mem).map_err(rx_err)?)
    }
}
