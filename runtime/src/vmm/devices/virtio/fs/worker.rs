//! The thread that serves a virtio-fs device's queues: epoll on each queue's ioeventfd and on
//! a stop eventfd; every available descriptor chain is one FUSE request handed to the
//! `Server`, answered in place, and returned on the used ring.
//!
//! One thread serves both queues (hiprio carries only FORGET/INTERRUPT). Requests run one at
//! a time, in order, and each reply is completed (and the driver interrupted, if it wants)
//! as soon as it is written, so the guest consumes it while the next one is served. File
//! data is copied by the host kernel (preadv/pwritev on guest memory), not by this thread.
//! More request queues with more workers were not tried (so there is no measured gain to
//! justify them).

use std::os::fd::AsRawFd;
use std::sync::Arc;

use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::backend::ShareServer;
use crate::vmm::devices::virtio::worker::DeviceWorker;
use crate::vmm::devices::virtio::{ring, ActiveQueue, VirtioInterrupt};

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
        source: ring::QueueError,
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
    /// Requests answered with nothing (malformed), for rate-limited logging.
    pub dropped: u64,
}

/// Starts the worker thread; dropping the handle stops and joins it.
pub(super) fn spawn(name: &str, state: QueueServer) -> std::io::Result<DeviceWorker> {
    DeviceWorker::spawn(format!("virtio-fs {name}"), move |stop| {
        match state.epoll(&stop) {
            Ok(epoll) => state.run(epoll),
            Err(e) => state.interrupt.fail(&QueueError::Epoll(e)),
        }
    })
}

impl QueueServer {
    fn epoll(&self, stop: &EventFd) -> std::io::Result<Epoll> {
        let epoll = Epoll::new()?;
        let watch = |fd, token| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        watch(stop.as_raw_fd(), STOP_TOKEN)?;
        for (index, queue) in self.queues.iter().enumerate() {
            watch(queue.notify.as_raw_fd(), index as u64)?;
        }
        Ok(epoll)
    }

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
        let fail = |source| QueueError::Ring { index, source };
        let memory = &self.memory;
        let queue = &mut self.queues[index].queue;
        loop {
            queue.disable_notification(memory).map_err(fail)?;
            let chains: Vec<_> = queue.iter(memory).map_err(fail)?.collect();
            for chain in chains {
                let head = chain.head_index();
                let written = match handle_request(memory, chain, &self.server) {
                    Ok(n) => n,
                    Err(e) => {
                        self.dropped += 1;
                        // The guest controls how often this happens: log the first few,
                        // then every power of two.
                        if self.dropped <= 8 || self.dropped.is_power_of_two() {
                            eprintln!(
                                "husk: virtio-fs: request dropped ({} so far): {e}",
                                self.dropped
                            );
                        }
                        0
                    }
                };
                let written = u32::try_from(written).unwrap_or(u32::MAX);
                // Each reply goes back at once (not per batch): the guest can go on with it
                // while the next request is served.
                ring::complete(queue, memory, head, written, &self.interrupt).map_err(fail)?;
            }
            if !queue.enable_notification(memory).map_err(fail)? {
                return Ok(());
            }
        }
    }
}

/// One FUSE request: the readable part of `chain` is the request, the writable part takes
/// the reply. Returns the number of reply bytes written.
pub(super) fn handle_request(
    memory: &GuestMemoryMmap,
    chain: ring::Chain<'_>,
    server: &ShareServer,
) -> Result<usize, RequestError> {
    let reader =
        Reader::from_descriptor_chain(memory, chain.clone()).map_err(RequestError::Chain)?;
    let writer = VirtioFsWriter::new(memory, chain).map_err(RequestError::Chain)?;
    server
        .handle_message(reader, writer.into(), None, None)
        .map_err(RequestError::Fuse)
}

#[cfg(test)]
mod tests {
    use fuse_backend_rs::abi::fuse_abi::{
        EntryOut, FsOptions, InHeader, InitIn, InitOut, Opcode, OutHeader,
    };
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{ByteValued, Bytes, GuestAddress};

    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;
    use crate::vmm::devices::virtio::fs::test_utils::Scratch;

    const REQUEST_ADDR: u64 = 0x1_0000;
    const REPLY_ADDR: u64 = 0x2_0000;
    const REPLY_LEN: u32 = 0x1000;

    struct Bed {
        memory: GuestMemoryMmap,
        irq: EventFd,
        _scratch: Scratch,
        server: Arc<ShareServer>,
    }

    impl Bed {
        fn new() -> Bed {
            let scratch = Scratch::new("worker");
            std::fs::write(scratch.share().join("f"), b"file data").unwrap();
            let fs = Arc::new(scratch.fs(false));
            Bed {
                memory: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap(),
                irq: EventFd::new(EFD_NONBLOCK).unwrap(),
                _scratch: scratch,
                server: Arc::new(fuse_backend_rs::api::server::Server::new(fs)),
            }
        }

        fn queue_server(&self, queue: Queue) -> QueueServer {
            let interrupt = VirtioInterrupt::new(self.irq.try_clone().unwrap(), "fs-test");
            QueueServer {
                memory: self.memory.clone(),
                interrupt: Arc::new(interrupt),
                queues: vec![ActiveQueue {
                    queue,
                    notify: EventFd::new(EFD_NONBLOCK).unwrap(),
                }],
                server: self.server.clone(),
                dropped: 0,
            }
        }
    }

    fn request(opcode: Opcode, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
        let header = InHeader {
            len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
            opcode: opcode as u32,
            unique,
            nodeid,
            ..Default::default()
        };
        let mut bytes = header.as_slice().to_vec();
        bytes.extend_from_slice(body);
        bytes
    }

    /// Queues `request` as one readable and one writable descriptor at descriptor `slot`.
    fn push(
        mock: &MockSplitQueue<GuestMemoryMmap>,
        memory: &GuestMemoryMmap,
        request: &[u8],
        slot: u16,
    ) {
        let offset = u64::from(slot) * 0x2000;
        memory
            .write_slice(request, GuestAddress(REQUEST_ADDR + offset))
            .unwrap();
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(
                REQUEST_ADDR + offset,
                request.len() as u32,
                VRING_DESC_F_NEXT as u16,
                slot * 2 + 1,
            )),
            RawDescriptor::from(SplitDescriptor::new(
                REPLY_ADDR + offset,
                REPLY_LEN,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
        ];
        mock.add_desc_chains(&descs, slot * 2).unwrap();
    }

    fn reply_header(memory: &GuestMemoryMmap, slot: u16) -> OutHeader {
        memory
            .read_obj(GuestAddress(REPLY_ADDR + u64::from(slot) * 0x2000))
            .unwrap()
    }

    fn used_len(mock: &MockSplitQueue<GuestMemoryMmap>, index: usize) -> u32 {
        mock.used().ring().ref_at(index).unwrap().load().len()
    }

    fn init_body() -> Vec<u8> {
        let init = InitIn {
            major: 7,
            minor: 38,
            max_readahead: 0x20000,
            flags: 0,
        };
        init.as_slice().to_vec()
    }

    #[test]
    fn init_and_lookup_are_answered_in_guest_memory() {
        let bed = Bed::new();
        let mock = MockSplitQueue::create(&bed.memory, GuestAddress(0), 16);
        let mut server = bed.queue_server(mock.create_queue().unwrap());
        push(
            &mock,
            &bed.memory,
            &request(Opcode::Init, 1, 0, &init_body()),
            0,
        );
        push(
            &mock,
            &bed.memory,
            &request(Opcode::Lookup, 2, 1, b"f\0"),
            1,
        );
        server.serve(0).unwrap();

        assert_eq!(mock.used().idx().load(), 2);
        let init = reply_header(&bed.memory, 0);
        assert_eq!((init.error, init.unique), (0, 1));
        assert_eq!(used_len(&mock, 0), init.len);
        let lookup = reply_header(&bed.memory, 1);
        assert_eq!((lookup.error, lookup.unique), (0, 2));
        let entry: EntryOut = bed
            .memory
            .read_obj(GuestAddress(
                REPLY_ADDR + 0x2000 + std::mem::size_of::<OutHeader>() as u64,
            ))
            .unwrap();
        assert_eq!(entry.attr.size, 9);
        assert_ne!(entry.nodeid, 0);
        // The driver was told.
        assert!(bed.irq.read().unwrap() >= 1);
    }

    #[test]
    fn init_offers_one_mib_requests() {
        let bed = Bed::new();
        let mock = MockSplitQueue::create(&bed.memory, GuestAddress(0), 16);
        let mut server = bed.queue_server(mock.create_queue().unwrap());
        let init = InitIn {
            major: 7,
            minor: 38,
            max_readahead: 0x20000,
            flags: FsOptions::MAX_PAGES.bits() as u32,
        };
        push(
            &mock,
            &bed.memory,
            &request(Opcode::Init, 1, 0, init.as_slice()),
            0,
        );
        server.serve(0).unwrap();
        let out: InitOut = bed
            .memory
            .read_obj(GuestAddress(
                REPLY_ADDR + std::mem::size_of::<OutHeader>() as u64,
            ))
            .unwrap();
        assert_eq!((out.max_write, out.max_pages), (1 << 20, 256));
        assert_ne!(out.flags & FsOptions::MAX_PAGES.bits() as u32, 0);
    }

    #[test]
    fn malformed_requests_are_dropped_and_the_queue_goes_on() {
        let bed = Bed::new();
        let mock = MockSplitQueue::create(&bed.memory, GuestAddress(0), 16);
        let mut server = bed.queue_server(mock.create_queue().unwrap());
        // A header cut short.
        push(&mock, &bed.memory, &[0u8; 10], 0);
        // A header whose length field lies.
        let mut lying = request(Opcode::Init, 7, 0, &init_body());
        lying[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        push(&mock, &bed.memory, &lying, 1);
        // A reply buffer outside guest memory.
        let bogus = [
            RawDescriptor::from(SplitDescriptor::new(
                REQUEST_ADDR,
                40,
                VRING_DESC_F_NEXT as u16,
                5,
            )),
            RawDescriptor::from(SplitDescriptor::new(
                0xffff_0000_0000,
                REPLY_LEN,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
        ];
        mock.add_desc_chains(&bogus, 4).unwrap();
        // (descriptors 4 and 5; the next requests use slots 3 and 4 -> descriptors 6..9)
        // An unknown opcode gets an error reply.
        push(
            &mock,
            &bed.memory,
            &request(Opcode::Init, 9, 0, &init_body()),
            3,
        );
        let mut unknown = request(Opcode::Init, 10, 0, &[]);
        unknown[4..8].copy_from_slice(&9999u32.to_le_bytes());
        push(&mock, &bed.memory, &unknown, 4);
        server.serve(0).unwrap();

        assert_eq!(mock.used().idx().load(), 5);
        assert_eq!(used_len(&mock, 0), 0);
        assert_eq!(reply_header(&bed.memory, 3).error, 0);
        assert_eq!(reply_header(&bed.memory, 4).error, -libc::ENOSYS);
        assert!(!server.interrupt.has_failed());
    }

    #[test]
    fn an_avail_index_beyond_the_ring_fails_the_queue() {
        let bed = Bed::new();
        let mock = MockSplitQueue::create(&bed.memory, GuestAddress(0), 16);
        let mut server = bed.queue_server(mock.create_queue().unwrap());
        mock.avail().idx().store(100);
        assert!(matches!(
            server.serve(0),
            Err(QueueError::Ring { index: 0, .. })
        ));
    }

    #[test]
    fn the_thread_serves_notifications_and_stops_on_drop() {
        let bed = Bed::new();
        let mock = MockSplitQueue::create(&bed.memory, GuestAddress(0), 16);
        let server = bed.queue_server(mock.create_queue().unwrap());
        let notify = server.queues[0].notify.try_clone().unwrap();
        let worker = spawn("test", server).unwrap();
        push(
            &mock,
            &bed.memory,
            &request(Opcode::Init, 1, 0, &init_body()),
            0,
        );
        notify.write(1).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while mock.used().idx().load() != 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "worker did not answer"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(worker);
        assert_eq!(reply_header(&bed.memory, 0).error, 0);
    }
}
