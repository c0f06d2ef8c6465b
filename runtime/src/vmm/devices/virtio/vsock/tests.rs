//! Device-level tests: the real device and worker thread on real guest memory, a test
//! "driver" writing split virtqueues, and real unix sockets on the host side.
//!
//! The rings are laid out here rather than by virtio-queue 0.17's `MockSplitQueue`, whose
//! used ring starts `len` bytes after the avail ring's entries instead of `2 * len`: the
//! two overlap once the driver has made more than half the ring available, which these
//! tests (hundreds of packets) do.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::connection::CONN_TX_BUF_SIZE;
use super::packet::{PacketHeader, HEADER_SIZE};
use super::uapi::*;
use super::unix::{port_path, VsockError};
use super::Vsock;
use crate::vmm::devices::virtio::{
    Activation, ActiveQueue, VirtioDevice, VirtioInterrupt, TYPE_VSOCK, VIRTIO_F_VERSION_1,
};

const GUEST_CID: u64 = 3;
const MEM_SIZE: usize = 16 << 20;
const QUEUE_SIZE: u16 = 256;
const RX_BUFFERS: u16 = 64;
const RX_BUF_BASE: u64 = 0x10_0000;
const RX_BUF_LEN: u32 = 4096 + HEADER_SIZE as u32;
const TX_SLOTS: u16 = 32;
const TX_SLOT_BASE: u64 = 0x40_0000;
const TX_SLOT_STRIDE: u64 = 0x11000;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;
const WAIT: Duration = Duration::from_secs(10);

/// The driver's side of one split virtqueue.
struct Ring {
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    avail_idx: u16,
    used_idx: u16,
    notify: EventFd,
}

impl Ring {
    /// Writes a chain of descriptors at table index `index` on and makes it available.
    fn put(&mut self, mem: &GuestMemoryMmap, index: u16, descs: &[(u64, u32, u16)]) {
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let at = self.desc.0 + 16 * u64::from(index + i as u16);
            let last = i + 1 == descs.len();
            let flags = if last {
                flags
            } else {
                flags | VRING_DESC_F_NEXT
            };
            let next = if last { 0 } else { index + i as u16 + 1 };
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        self.publish(mem, index);
    }

    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        mem.write_obj(head, self.avail.unchecked_add(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.store(
            self.avail_idx,
            self.avail.unchecked_add(2),
            Ordering::Release,
        )
        .unwrap();
        self.notify.write(1).unwrap();
    }

    /// The next used element (descriptor id, length), if the device returned one.
    fn take_used(&mut self, mem: &GuestMemoryMmap) -> Option<(u16, u32)> {
        let idx: u16 = mem
            .load(self.used.unchecked_add(2), Ordering::Acquire)
            .unwrap();
        if idx == self.used_idx {
            return None;
        }
        let at = self
            .used
            .unchecked_add(4 + 8 * u64::from(self.used_idx % QUEUE_SIZE));
        let id: u32 = mem.read_obj(at).unwrap();
        let len: u32 = mem.read_obj(at.unchecked_add(4)).unwrap();
        self.used_idx = self.used_idx.wrapping_add(1);
        Some((id as u16, len))
    }
}

trait AddrExt {
    fn unchecked_add(self, n: u64) -> GuestAddress;
}

impl AddrExt for GuestAddress {
    fn unchecked_add(self, n: u64) -> GuestAddress {
        GuestAddress(self.0 + n)
    }
}

/// A device activated on three queues, with RX buffers posted, seen from the driver.
struct Harness {
    mem: GuestMemoryMmap,
    device: Option<Vsock>,
    interrupt: Arc<VirtioInterrupt>,
    rx: Ring,
    tx: Ring,
    tx_free: Vec<u16>,
    uds: PathBuf,
    /// Host listeners' paths (`<uds>_<port>`) the test bound; removed on drop.
    listeners: Vec<PathBuf>,
}

fn tmp_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("hv-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

impl Harness {
    fn new(name: &str) -> Self {
        let uds = tmp_path(name);
        let device = Vsock::new(GUEST_CID, uds.clone()).unwrap();
        Self::activate(device, uds)
    }

    /// Activates `device` on fresh guest memory and rings, RX buffers posted.
    fn activate(mut device: Vsock, uds: PathBuf) -> Self {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mut rings = Vec::new();
        let mut queues = Vec::new();
        for base in [0x0u64, 0x4000, 0x8000] {
            // Split ring layout (virtio 1.2, 2.7): descriptor table, avail ring (flags,
            // idx, ring, used_event), used ring 4-aligned (flags, idx, ring, avail_event).
            let size = u64::from(QUEUE_SIZE);
            let desc = GuestAddress(base);
            let avail = GuestAddress(base + 16 * size);
            let used = GuestAddress((avail.0 + 6 + 2 * size + 3) & !3);
            let mut queue = Queue::new(QUEUE_SIZE).unwrap();
            queue.set_size(QUEUE_SIZE);
            queue.set_desc_table_address(Some(desc.0 as u32), Some((desc.0 >> 32) as u32));
            queue.set_avail_ring_address(Some(avail.0 as u32), Some((avail.0 >> 32) as u32));
            queue.set_used_ring_address(Some(used.0 as u32), Some((used.0 >> 32) as u32));
            queue.set_ready(true);
            let notify = EventFd::new(EFD_NONBLOCK).unwrap();
            rings.push(Ring {
                desc,
                avail,
                used,
                avail_idx: 0,
                used_idx: 0,
                notify: notify.try_clone().unwrap(),
            });
            queues.push(ActiveQueue { queue, notify });
        }
        let interrupt = Arc::new(VirtioInterrupt::new(
            EventFd::new(EFD_NONBLOCK).unwrap(),
            "vsock-test",
        ));
        device
            .activate(Activation {
                memory: mem.clone(),
                interrupt: interrupt.clone(),
                queues,
                acked_features: VIRTIO_F_VERSION_1,
            })
            .unwrap();
        let mut it = rings.into_iter();
        let (mut rx, tx) = (it.next().unwrap(), it.next().unwrap());
        for i in 0..RX_BUFFERS {
            rx.put(&mem, i, &[(rx_buf_addr(i), RX_BUF_LEN, VRING_DESC_F_WRITE)]);
        }
        Harness {
            mem,
            device: Some(device),
            interrupt,
            rx,
            tx,
            tx_free: (0..TX_SLOTS).collect(),
            uds,
            listeners: Vec::new(),
        }
    }

    fn free_tx_slot(&mut self) -> u16 {
        let deadline = Instant::now() + WAIT;
        loop {
            while let Some((id, _)) = self.tx.take_used(&self.mem) {
                self.tx_free.push(slot_of_head(id));
            }
            if let Some(slot) = self.tx_free.pop() {
                return slot;
            }
            assert!(
                Instant::now() < deadline,
                "the device never returned TX buffers"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sends a packet as the Linux driver does: header and payload in two descriptors.
    fn send(&mut self, hdr: PacketHeader, payload: &[u8]) {
        let slot = self.free_tx_slot();
        let base = TX_SLOT_BASE + u64::from(slot) * TX_SLOT_STRIDE;
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(base))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(base + 0x100))
            .unwrap();
        let mut descs = vec![(base, HEADER_SIZE as u32, 0)];
        if !payload.is_empty() {
            descs.push((base + 0x100, payload.len() as u32, 0));
        }
        self.tx.put(&self.mem, slot * 2, &descs);
    }

    /// Sends a chain of raw descriptors (each (addr, len, flags)) on the TX queue.
    fn send_raw(&mut self, descs: &[(u64, u32, u16)]) {
        assert!(descs.len() <= RAW_DESCS_PER_SLOT);
        let slot = self.free_tx_slot();
        self.tx.put(&self.mem, raw_head(slot), descs);
    }

    fn try_recv(&mut self) -> Option<(PacketHeader, Vec<u8>)> {
        let (id, len) = self.rx.take_used(&self.mem)?;
        if id >= RX_BUFFERS {
            // A malformed buffer a test posted: handed back unused.
            assert_eq!(len, 0);
            return None;
        }
        let addr = rx_buf_addr(id);
        assert!(
            len as usize >= HEADER_SIZE && len <= RX_BUF_LEN,
            "used len {len}"
        );
        let mut raw = [0u8; HEADER_SIZE];
        self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
        let hdr = PacketHeader::from_bytes(&raw);
        assert_eq!(hdr.len as usize + HEADER_SIZE, len as usize, "{hdr:?}");
        let mut data = vec![0u8; hdr.len as usize];
        self.mem
            .read_slice(&mut data, GuestAddress(addr + HEADER_SIZE as u64))
            .unwrap();
        // The driver refills the buffer it consumed.
        self.rx
            .put(&self.mem, id, &[(addr, RX_BUF_LEN, VRING_DESC_F_WRITE)]);
        Some((hdr, data))
    }

    fn recv(&mut self) -> (PacketHeader, Vec<u8>) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(p) = self.try_recv() {
                return p;
            }
            assert!(Instant::now() < deadline, "no packet from the device");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The next packet that is not a credit update.
    fn expect(&mut self, op: u16) -> (PacketHeader, Vec<u8>) {
        loop {
            let (hdr, data) = self.recv();
            if hdr.op == VIRTIO_VSOCK_OP_CREDIT_UPDATE && op != VIRTIO_VSOCK_OP_CREDIT_UPDATE {
                continue;
            }
            assert_eq!(hdr.op, op, "unexpected packet {hdr:?}");
            assert_eq!(
                (hdr.src_cid, hdr.dst_cid, hdr.type_),
                (VSOCK_HOST_CID, GUEST_CID, VIRTIO_VSOCK_TYPE_STREAM)
            );
            return (hdr, data);
        }
    }

    /// A host listener at `<uds>_<port>`, where the device connects guest requests to.
    fn listen(&mut self, port: u32) -> UnixListener {
        let path = port_path(&self.uds, port);
        let listener = UnixListener::bind(&path).unwrap();
        self.listeners.push(path);
        listener
    }

    /// Asserts no packet comes within `for_`.
    fn expect_silence(&mut self, for_: Duration) {
        std::thread::sleep(for_);
        if let Some((hdr, _)) = self.try_recv() {
            panic!("unexpected packet {hdr:?}");
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for path in &self.listeners {
            let _ = std::fs::remove_file(path);
        }
        // A test that took the device out owns its socket path too.
        if let Some(device) = self.device.take() {
            drop(device);
            let _ = std::fs::remove_file(&self.uds);
        }
    }
}

/// TX descriptor indexes: slot `k` uses `2k, 2k+1` for [`Harness::send`] and six from
/// `RAW_BASE + 6k` for [`Harness::send_raw`], so chains in flight never share one.
const RAW_BASE: u16 = 2 * TX_SLOTS;
const RAW_DESCS_PER_SLOT: usize = 6;

fn raw_head(slot: u16) -> u16 {
    RAW_BASE + slot * RAW_DESCS_PER_SLOT as u16
}

fn slot_of_head(head: u16) -> u16 {
    if head >= RAW_BASE {
        (head - RAW_BASE) / RAW_DESCS_PER_SLOT as u16
    } else {
        head / 2
    }
}

fn rx_buf_addr(i: u16) -> u64 {
    RX_BUF_BASE + u64::from(i) * 0x2000
}

fn guest_hdr(op: u16, guest_port: u32, host_port: u32) -> PacketHeader {
    PacketHeader {
        src_cid: GUEST_CID,
        dst_cid: VSOCK_HOST_CID,
        src_port: guest_port,
        dst_port: host_port,
        type_: VIRTIO_VSOCK_TYPE_STREAM,
        op,
        buf_alloc: 256 * 1024,
        ..PacketHeader::default()
    }
}

fn rw(guest_port: u32, host_port: u32, payload: &[u8]) -> PacketHeader {
    let mut h = guest_hdr(VIRTIO_VSOCK_OP_RW, guest_port, host_port);
    h.len = payload.len() as u32;
    h
}

fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (offset..offset + len as u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn read_exactly(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.read_exact(&mut v).unwrap();
    v
}

/// A guest-initiated connection to a host listener at `<uds>_<port>`, established.
fn guest_connect(h: &mut Harness, guest_port: u32, host_port: u32) -> (UnixListener, UnixStream) {
    let listener = h.listen(host_port);
    h.send(
        guest_hdr(VIRTIO_VSOCK_OP_REQUEST, guest_port, host_port),
        &[],
    );
    let (resp, _) = h.expect(VIRTIO_VSOCK_OP_RESPONSE);
    assert_eq!((resp.src_port, resp.dst_port), (host_port, guest_port));
    assert_eq!(resp.buf_alloc, CONN_TX_BUF_SIZE);
    let (stream, _) = listener.accept().unwrap();
    (listener, stream)
}

#[test]
fn device_identity_config_and_socket_lifetime() {
    let uds = tmp_path("identity");
    let dev = Vsock::new(42, uds.clone()).unwrap();
    assert_eq!(dev.device_type(), TYPE_VSOCK);
    assert_eq!(dev.queue_max_sizes().len(), 3);
    assert_ne!(dev.features() & VIRTIO_F_VERSION_1, 0);
    let mut cfg = [0xffu8; 12];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..8], &42u64.to_le_bytes());
    assert_eq!(&cfg[8..], &[0; 4]);
    let mut hi = [0u8; 4];
    dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    dev.read_config(u64::MAX, &mut hi);
    assert_eq!(hi, [0; 4]);
    assert!(uds.exists());
    let again = Vsock::new(43, uds.clone()).err().unwrap();
    assert!(matches!(again, VsockError::PathExists(_)), "{again}");
    drop(dev);
    assert!(!uds.exists());
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 40] {
        assert!(matches!(
            Vsock::new(cid, tmp_path("cid")),
            Err(VsockError::ReservedCid(_))
        ));
    }
}

#[test]
fn guest_connects_to_a_host_listener_and_bytes_flow_both_ways() {
    let mut h = Harness::new("g2h");
    let (_l, mut host) = guest_connect(&mut h, 1234, 5000);
    h.send(rw(1234, 5000, b"hello"), b"hello");
    assert_eq!(read_exactly(&mut host, 5), b"hello");
    host.write_all(b"world").unwrap();
    let (hdr, data) = h.expect(VIRTIO_VSOCK_OP_RW);
    assert_eq!((hdr.src_port, hdr.dst_port), (5000, 1234));
    assert_eq!(data, b"world");
    // The guest closes: the host reads end of file, the guest gets its RST.
    let mut shut = guest_hdr(VIRTIO_VSOCK_OP_SHUTDOWN, 1234, 5000);
    shut.flags = VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND;
    h.send(shut, &[]);
    h.expect(VIRTIO_VSOCK_OP_RST);
    let mut rest = Vec::new();
    host.set_read_timeout(Some(WAIT)).unwrap();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn payloads_split_anywhere_across_descriptors_arrive_whole() {
    let mut h = Harness::new("split");
    let (_l, mut host) = guest_connect(&mut h, 1300, 5010);
    let base = 0x90_0000u64;
    // Header and payload in one descriptor.
    let data = pattern(0, 3000);
    let mut hdr = rw(1300, 5010, &data).to_bytes().to_vec();
    hdr.extend_from_slice(&data);
    h.mem.write_slice(&hdr, GuestAddress(base)).unwrap();
    h.send_raw(&[(base, hdr.len() as u32, 0)]);
    // The header cut in two, the payload in three pieces (one of them empty).
    let data2 = pattern(3000, 5000);
    let mut bytes = rw(1300, 5010, &data2).to_bytes().to_vec();
    bytes.extend_from_slice(&data2);
    let cuts = [
        (0usize, 20usize),
        (20, 30),
        (50, 0),
        (50, 4000),
        (4050, bytes.len() - 4050),
    ];
    let mut descs = Vec::new();
    for (i, (off, len)) in cuts.iter().enumerate() {
        let at = base + 0x10000 + i as u64 * 0x2000;
        h.mem
            .write_slice(&bytes[*off..off + len], GuestAddress(at))
            .unwrap();
        descs.push((at, *len as u32, 0));
    }
    h.send_raw(&descs);
    // Header and payload through an indirect table (VRING_DESC_F_INDIRECT), as Linux
    // sends them when INDIRECT_DESC is negotiated.
    let data3 = pattern(8000, 1000);
    let (table, hdr_at, data_at) = (base + 0x20000, base + 0x21000, base + 0x22000);
    h.mem
        .write_slice(&rw(1300, 5010, &data3).to_bytes(), GuestAddress(hdr_at))
        .unwrap();
    h.mem.write_slice(&data3, GuestAddress(data_at)).unwrap();
    for (i, (addr, len, flags, next)) in [
        (hdr_at, HEADER_SIZE as u32, VRING_DESC_F_NEXT, 1u16),
        (data_at, data3.len() as u32, 0, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let at = table + 16 * i as u64;
        h.mem.write_obj(addr, GuestAddress(at)).unwrap();
        h.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        h.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        h.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }
    h.send_raw(&[(table, 32, VRING_DESC_F_INDIRECT)]);
    assert_eq!(read_exactly(&mut host, 9000), pattern(0, 9000));
}

#[test]
fn a_reset_closes_connections_and_the_device_serves_again() {
    let mut h = Harness::new("reset");
    let (_l, mut host) = guest_connect(&mut h, 1400, 5011);
    let uds = h.uds.clone();
    let mut dev = h.device.take().unwrap();
    dev.reset();
    host.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = Vec::new();
    assert_eq!(host.read_to_end(&mut buf).unwrap(), 0);
    // The listening socket survives a driver reset, and the device serves again once
    // the driver sets it up anew.
    assert!(uds.exists());
    drop(h);
    let mut h = Harness::activate(dev, uds.clone());
    let (_l2, mut host2) = guest_connect(&mut h, 1401, 5012);
    h.send(rw(1401, 5012, b"again"), b"again");
    assert_eq!(read_exactly(&mut host2, 5), b"again");
    let (mut client, _) = host_connect(&mut h, 1402);
    client.write_all(b"hi").unwrap();
    let (_, data) = h.expect(VIRTIO_VSOCK_OP_RW);
    assert_eq!(data, b"hi");
    drop(h);
    assert!(!uds.exists());
}

#[test]
fn guest_connect_without_a_listener_is_reset() {
    let mut h = Harness::new("nolisten");
    h.send(guest_hdr(VIRTIO_VSOCK_OP_REQUEST, 77, 6000), &[]);
    let (rst, _) = h.expect(VIRTIO_VSOCK_OP_RST);
    assert_eq!((rst.src_port, rst.dst_port), (6000, 77));
    // Data for a connection that does not exist is answered with an RST too; an RST is not.
    h.send(rw(77, 6000, b"x"), b"x");
    h.expect(VIRTIO_VSOCK_OP_RST);
    h.send(guest_hdr(VIRTIO_VSOCK_OP_RST, 77, 6000), &[]);
    h.expect_silence(Duration::from_millis(100));
}

/// A host client's `CONNECT`, the guest's RESPONSE, `OK <port>`.
fn host_connect(h: &mut Harness, guest_port: u32) -> (UnixStream, u32) {
    let mut client = UnixStream::connect(&h.uds).unwrap();
    client
        .write_all(format!("CONNECT {guest_port}\n").as_bytes())
        .unwrap();
    let (req, _) = h.expect(VIRTIO_VSOCK_OP_REQUEST);
    assert_eq!(req.dst_port, guest_port);
    assert!(req.src_port >= 1 << 30);
    let mut resp = guest_hdr(VIRTIO_VSOCK_OP_RESPONSE, guest_port, req.src_port);
    resp.buf_alloc = 256 * 1024;
    h.send(resp, &[]);
    let ok = format!("OK {}\n", req.src_port);
    assert_eq!(read_exactly(&mut client, ok.len()), ok.as_bytes());
    (client, req.src_port)
}

#[test]
fn host_connects_with_a_handshake_and_half_closes() {
    let mut h = Harness::new("h2g");
    let (mut client, hp) = host_connect(&mut h, 5001);
    client.write_all(b"ping").unwrap();
    let (_, data) = h.expect(VIRTIO_VSOCK_OP_RW);
    assert_eq!(data, b"ping");
    h.send(rw(5001, hp, b"pong"), b"pong");
    assert_eq!(read_exactly(&mut client, 4), b"pong");
    // Host half-close: the guest hears "no more sending", not a full shutdown.
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let (shut, _) = h.expect(VIRTIO_VSOCK_OP_SHUTDOWN);
    assert_eq!(shut.flags, VIRTIO_VSOCK_SHUTDOWN_SEND);
    // The guest still sends its last bytes, then closes.
    h.send(rw(5001, hp, b"final"), b"final");
    let mut shut = guest_hdr(VIRTIO_VSOCK_OP_SHUTDOWN, 5001, hp);
    shut.flags = VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND;
    h.send(shut, &[]);
    let mut rest = Vec::new();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"final");
    h.expect(VIRTIO_VSOCK_OP_RST);
}

#[test]
fn a_host_close_after_a_half_close_stops_the_guest_sending_too() {
    let mut h = Harness::new("halfthenclose");
    let (client, hp) = host_connect(&mut h, 5006);
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let (shut, _) = h.expect(VIRTIO_VSOCK_OP_SHUTDOWN);
    assert_eq!(shut.flags, VIRTIO_VSOCK_SHUTDOWN_SEND);
    drop(client);
    let (shut, _) = h.expect(VIRTIO_VSOCK_OP_SHUTDOWN);
    assert_eq!(
        shut.flags,
        VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND
    );
    // The guest closes its end: our RST ends it, and the connection is gone (a packet
    // for it is now answered as for an unknown one).
    let mut bye = guest_hdr(VIRTIO_VSOCK_OP_SHUTDOWN, 5006, hp);
    bye.flags = VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND;
    h.send(bye, &[]);
    h.expect(VIRTIO_VSOCK_OP_RST);
    h.send(rw(5006, hp, b"late"), b"late");
    h.expect(VIRTIO_VSOCK_OP_RST);
    h.expect_silence(Duration::from_millis(100));
}

#[test]
fn host_connect_refused_by_the_guest_or_malformed_closes_the_socket() {
    let mut h = Harness::new("refused");
    let mut client = UnixStream::connect(&h.uds).unwrap();
    client.write_all(b"CONNECT 9\n").unwrap();
    let (req, _) = h.expect(VIRTIO_VSOCK_OP_REQUEST);
    h.send(guest_hdr(VIRTIO_VSOCK_OP_RST, 9, req.src_port), &[]);
    let mut buf = Vec::new();
    client.set_read_timeout(Some(WAIT)).unwrap();
    assert_eq!(client.read_to_end(&mut buf).unwrap(), 0);

    for line in [&b"HELLO 9\n"[..], b"CONNECT x\n", &[b'a'; 100]] {
        let mut client = UnixStream::connect(&h.uds).unwrap();
        client.write_all(line).unwrap();
        client.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = Vec::new();
        // Closed without a reply (a reset if our bytes were left unread).
        let n = client.read_to_end(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(line));
    }
    h.expect_silence(Duration::from_millis(100));

    // A client that never sends its line is closed after the handshake timeout.
    let mut silent = UnixStream::connect(&h.uds).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    assert_eq!(silent.read_to_end(&mut buf).unwrap(), 0);
    assert!(started.elapsed() >= super::muxer::HANDSHAKE_TIMEOUT / 2);
}

#[test]
fn host_close_shuts_down_the_guest_and_an_unanswered_shutdown_is_reset() {
    let mut h = Harness::new("hostclose");
    let (mut client, _hp) = host_connect(&mut h, 700);
    client.write_all(b"last words").unwrap();
    drop(client);
    let (_, data) = h.expect(VIRTIO_VSOCK_OP_RW);
    assert_eq!(data, b"last words");
    let (shut, _) = h.expect(VIRTIO_VSOCK_OP_SHUTDOWN);
    assert_eq!(
        shut.flags,
        VIRTIO_VSOCK_SHUTDOWN_RCV | VIRTIO_VSOCK_SHUTDOWN_SEND
    );
    // The guest does not answer: after the timeout (300 ms in tests) the device resets
    // the connection by itself.
    h.expect(VIRTIO_VSOCK_OP_RST);
}

/// Guest to host under backpressure: a guest that respects its credit, a host reader that
/// is slow at first. Every byte arrives, in order, and the device never holds more than the
/// credit it gave.
#[test]
fn guest_to_host_backpressure_loses_nothing() {
    const TOTAL: u64 = 6 << 20;
    const CHUNK: usize = 32 * 1024;
    let mut h = Harness::new("backpressure");
    let (_l, mut host) = guest_connect(&mut h, 40, 5000);
    let reader = std::thread::spawn(move || {
        let mut got = 0u64;
        let mut buf = vec![0u8; 8192];
        host.set_read_timeout(Some(WAIT)).unwrap();
        while got < TOTAL {
            // Slow for the first MiB: sleeps between small reads.
            if got < (1 << 20) {
                std::thread::sleep(Duration::from_millis(2));
            }
            let n = host.read(&mut buf).unwrap();
            assert!(n > 0, "early end of file at {got}");
            assert!(buf[..n] == pattern(got, n)[..], "corrupt at offset {got}");
            got += n as u64;
        }
        got
    });
    let (mut sent, mut peer_buf_alloc, mut peer_fwd) = (0u64, CONN_TX_BUF_SIZE, 0u32);
    let mut waited_for_credit = 0;
    while sent < TOTAL {
        while let Some((hdr, _)) = h.try_recv() {
            assert!(hdr.op == VIRTIO_VSOCK_OP_CREDIT_UPDATE, "{hdr:?}");
            peer_buf_alloc = hdr.buf_alloc;
            peer_fwd = hdr.fwd_cnt;
        }
        let in_flight = (sent as u32).wrapping_sub(peer_fwd);
        let credit = peer_buf_alloc - in_flight;
        if (credit as usize) < CHUNK {
            waited_for_credit += 1;
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let n = CHUNK.min((TOTAL - sent) as usize);
        let data = pattern(sent, n);
        h.send(rw(40, 5000, &data), &data);
        sent += n as u64;
    }
    assert_eq!(reader.join().unwrap(), TOTAL);
    assert!(waited_for_credit > 0, "the slow reader never pushed back");
}

#[test]
fn a_guest_ignoring_its_credit_is_reset_not_buffered_without_bound() {
    let mut h = Harness::new("greedy");
    let (_l, _host) = guest_connect(&mut h, 41, 5000);
    let data = pattern(0, 64 * 1024);
    // The host never reads: socket buffer, then our 256 KiB, then a reset.
    let mut reset = false;
    for _ in 0..64 {
        h.send(rw(41, 5000, &data), &data);
        while let Some((hdr, _)) = h.try_recv() {
            reset |= hdr.op == VIRTIO_VSOCK_OP_RST;
        }
        if reset {
            break;
        }
    }
    if !reset {
        h.expect(VIRTIO_VSOCK_OP_RST);
    }
}

/// Host to guest: the device sends no more than the guest's credit, asks for more once,
/// and goes on when the guest's credit update comes.
#[test]
fn host_to_guest_respects_the_guest_credit() {
    let mut h = Harness::new("credit");
    let listener = h.listen(5002);
    let mut req = guest_hdr(VIRTIO_VSOCK_OP_REQUEST, 50, 5002);
    req.buf_alloc = 10_000;
    h.send(req, &[]);
    h.expect(VIRTIO_VSOCK_OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    let all = pattern(7, 50_000);
    host.write_all(&all).unwrap();
    let mut got = Vec::new();
    let mut fwd = 0u32;
    let mut credit_requests = 0;
    while got.len() < all.len() {
        let (hdr, data) = h.recv();
        match hdr.op {
            VIRTIO_VSOCK_OP_RW => {
                got.extend_from_slice(&data);
                assert!(
                    got.len() as u32 - fwd <= 10_000,
                    "{} bytes in flight",
                    got.len() as u32 - fwd
                );
            }
            VIRTIO_VSOCK_OP_CREDIT_REQUEST => {
                credit_requests += 1;
                assert_eq!(got.len() as u32 - fwd, 10_000);
                // The guest's application reads it all.
                fwd = got.len() as u32;
                let mut upd = guest_hdr(VIRTIO_VSOCK_OP_CREDIT_UPDATE, 50, 5002);
                upd.buf_alloc = 10_000;
                upd.fwd_cnt = fwd;
                h.send(upd, &[]);
            }
            op => panic!("unexpected op {op}"),
        }
    }
    assert_eq!(got, all);
    // 50 000 bytes through a 10 000-byte window: four stalls, each asked about once.
    assert_eq!(credit_requests, 4);
}

#[test]
fn malformed_packets_are_dropped_or_reset_and_the_device_goes_on() {
    let mut h = Harness::new("malformed");
    // Each raw packet's header gets its own place: the device reads them asynchronously.
    let scratch = 0x80_0000u64;
    let put_hdr = |h: &mut Harness, n: u64, hdr: PacketHeader| {
        let at = scratch + n * 0x1000;
        h.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(at))
            .unwrap();
        at
    };
    // len larger than the chain.
    let mut big = guest_hdr(VIRTIO_VSOCK_OP_REQUEST, 1, 2);
    big.len = 1000;
    let at = put_hdr(&mut h, 0, big);
    h.send_raw(&[(at, HEADER_SIZE as u32, 0), (at + 0x100, 10, 0)]);
    // len over the maximum.
    big.len = u32::MAX;
    let at = put_hdr(&mut h, 1, big);
    h.send_raw(&[(at, HEADER_SIZE as u32, 0)]);
    // A short header, a header outside guest memory, a writable TX descriptor.
    let at = put_hdr(&mut h, 2, guest_hdr(VIRTIO_VSOCK_OP_REQUEST, 1, 2));
    h.send_raw(&[(at, 20, 0)]);
    h.send_raw(&[(0x7fff_0000_0000, HEADER_SIZE as u32, 0)]);
    h.send_raw(&[(MEM_SIZE as u64 - 10, HEADER_SIZE as u32, 0)]);
    let at = put_hdr(&mut h, 3, guest_hdr(VIRTIO_VSOCK_OP_REQUEST, 1, 2));
    h.send_raw(&[(at, HEADER_SIZE as u32, VRING_DESC_F_WRITE)]);
    // Wrong source CID, wrong destination CID: dropped silently.
    let mut spoofed = guest_hdr(VIRTIO_VSOCK_OP_REQUEST, 1, 2);
    spoofed.src_cid = 9;
    h.send(spoofed, &[]);
    let mut elsewhere = guest_hdr(VIRTIO_VSOCK_OP_REQUEST, 1, 2);
    elsewhere.dst_cid = 4;
    h.send(elsewhere, &[]);
    h.expect_silence(Duration::from_millis(200));
    // A seqpacket request is refused with an RST of its type.
    let mut seq = guest_hdr(VIRTIO_VSOCK_OP_REQUEST, 1, 2);
    seq.type_ = 2;
    h.send(seq, &[]);
    let (rst, _) = h.recv();
    assert_eq!((rst.op, rst.type_), (VIRTIO_VSOCK_OP_RST, 2));
    // An unknown op on a live connection resets it.
    let (_l, _host) = guest_connect(&mut h, 60, 5003);
    h.send(guest_hdr(99, 60, 5003), &[]);
    h.expect(VIRTIO_VSOCK_OP_RST);
    // RX buffers too short for a header, or not writable, are handed back empty; the
    // next ones are used.
    let (short, readable) = (rx_buf_addr(100), rx_buf_addr(101));
    h.rx.put(&h.mem, 100, &[(short, 20, VRING_DESC_F_WRITE)]);
    h.rx.put(&h.mem, 101, &[(readable, RX_BUF_LEN, 0)]);
    assert!(!h.interrupt.has_failed());
    let (_l2, mut host2) = guest_connect(&mut h, 61, 5004);
    host2.write_all(b"still alive").unwrap();
    let (_, data) = h.expect(VIRTIO_VSOCK_OP_RW);
    assert_eq!(data, b"still alive");
    assert!(!h.interrupt.has_failed());
}

#[test]
fn a_broken_ring_fails_the_device() {
    let h = Harness::new("broken");
    // The driver claims 1000 new entries in a 256-entry ring.
    let idx = h.tx.avail_idx.wrapping_add(1000);
    h.mem
        .store(idx, h.tx.avail.unchecked_add(2), Ordering::Release)
        .unwrap();
    h.tx.notify.write(1).unwrap();
    let deadline = Instant::now() + WAIT;
    while !h.interrupt.has_failed() {
        assert!(Instant::now() < deadline, "device did not fail");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn dropping_the_device_closes_every_socket_and_removes_the_path() {
    let mut h = Harness::new("drop");
    let (_l, mut host) = guest_connect(&mut h, 70, 5005);
    let (mut client, _) = host_connect(&mut h, 71);
    let uds = h.uds.clone();
    drop(h.device.take());
    assert!(!uds.exists());
    for s in [&mut host, &mut client] {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = Vec::new();
        assert_eq!(s.read_to_end(&mut buf).unwrap(), 0);
    }
}
