//! The thread that serves a virtio-fs device's queues: epoll on each queue's ioeventfd and on
//! a stop eventfd; every available descriptor chain is one FUSE request handed to the
//! `Server`, answered in place, and returned on the used ring.
//!
//! One thread serves both queues (hiprio carries only FORGET/INTERRUPT). Requests run one at
//! a time, in order; the guest keeps the queue full, so the thread never idles while there is
//! work, and file data is copied by the host kernel, not by this thread.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::ShareServer;
use crate::vmm::devices::virtio::{ActiveQueue, VirtioInterrupt};

/// The worker's stack: FUSE handlers are shallow, buffers live in guest memory.
const WORKER_STACK_SIZE: usize = 256 << 10;

/// epoll data of the stop eventfd; queue i uses i.
const STOP_TOKEN: u64 = u64::MAX;

/// Why a request got no reply (the chain is returned with 0 bytes written).
#[derive(Debug, thiserror::Error)]
pub(super) enum RequestError {
    #[error("bad descriptor chain: {0}")]
    Chain(fuse_backend_rs::transport::Error),
    #[error("FUSE request: {0}")]
    Fuse(fuse_backend_rs::Error),
}

/// A queue that can no longer be served: the device fails.
#[derive(Debug, thiserror::Error)]
pub(super) enum QueueError {
    #[error("virtio-fs queue {index}: {source}")]
    Ring {
        index: usize,
        source: virtio_queue::Error,
    },
    #[error("virtio-fs worker epoll: {0}")]
    Epoll(std::io::Error),
}

/// What the worker thread owns.
pub(super) struct QueueServer {
    pub memory: GuestMemoryMmap,
    pub interrupt: Arc<VirtioInterrupt>,
    pub queues: Vec<ActiveQueue>,
    pub server: Arc<ShareServer>,
}

/// A running worker; dropping it stops and joins the thread.
pub(super) struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub(super) fn spawn(name: &str, state: QueueServer) -> std::io::Result<Worker> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        for (index, queue) in state.queues.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                queue.notify.as_raw_fd(),
                EpollEvent::new(EventSet::IN, index as u64),
            )?;
        }
        let thread = std::thread::Builder::new()
            .name(format!("virtio-fs {name}"))
            .stack_size(WORKER_STACK_SIZE)
            .spawn(move || state.run(epoll))?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A write only fails if the counter would overflow, and then a stop is pending.
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl QueueServer {
    fn run(mut self, epoll: Epoll) {
        // Requests may have been queued before DRIVER_OK's notification reached us.
        for index in 0..self.queues.len() {
            if let Err(e) = self.serve(index) {
                self.interrupt.fail(&e);
                return self.wait_for_stop(&epoll);
            }
        }
        let mut events = [EpollEvent::default(); 4];
        loop {
            let ready = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.interrupt.fail(&QueueError::Epoll(e));
                    return;
                }
            };
            for event in &events[..ready] {
                let token = event.data();
                if token == STOP_TOKEN {
                    return;
                }
                let index = token as usize;
                let Some(queue) = self.queues.get(index) else {
                    continue;
                };
                // Nonblocking-style drain: a spurious wake-up reads nothing and is harmless.
                let _ = queue.notify.read();
                if let Err(e) = self.serve(index) {
                    self.interrupt.fail(&e);
                    return self.wait_for_stop(&epoll);
                }
            }
        }
    }

    /// After a failure: serve nothing, only wait to be stopped (reset or drop).
    fn wait_for_stop(&self, epoll: &Epoll) {
        let mut events = [EpollEvent::default(); 4];
        loop {
            match epoll.wait(-1, &mut events) {
                Ok(n) if events[..n].iter().any(|e| e.data() == STOP_TOKEN) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Serves every available chain of queue `index` until the guest has queued no more
    /// (EVENT_IDX: re-checks after re-enabling notifications).
    pub(super) fn serve(&mut self, index: usize) -> Result<(), QueueError> {
        let ring = |source| QueueError::Ring { index, source };
        let memory = &self.memory;
        let queue = &mut self.queues[index].queue;
        loop {
            queue.disable_notification(memory).map_err(ring)?;
            let chains: Vec<_> = queue.iter(memory).map_err(ring)?.collect();
            for chain in chains {
                let head = chain.head_index();
                let written = match handle_request(memory, chain, &self.server) {
                    Ok(n) => n,
                    Err(e) => {
                        eprintln!("husk: virtio-fs: request dropped: {e}");
                        0
                    }
                };
                let written = u32::try_from(written).unwrap_or(u32::MAX);
                queue.add_used(memory, head, written).map_err(ring)?;
                if queue.needs_notification(memory).map_err(ring)? {
                    self.interrupt.signal_used_queue();
                }
            }
            if !queue.enable_notification(memory).map_err(ring)? {
                return Ok(());
            }
        }
    }
}

/// One FUSE request: the readable part of `chain` is the request, the writable part takes
/// the reply. Returns the number of reply bytes written.
pub(super) fn handle_request(
    memory: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    server: &ShareServer,
) -> Result<usize, RequestError> {
    let reader =
        Reader::from_descriptor_chain(memory, chain.clone()).map_err(RequestError::Chain)?;
    let writer = VirtioFsWriter::new(memory, chain).map_err(RequestError::Chain)?;
    server
        .handle_message(reader, writer.into(), None, None)
        .map_err(RequestError::Fuse)
}
