//! The `VsockMuxer`: maps vsock connections to host unix sockets, and owns the epoll set the
//! device's worker sleeps on.
//!
//! Epoll is level-triggered. A connection asks only for the readiness it can act on now
//! ([`Connection::wanted_events`]): input only while the guest has credit and no read is
//! already queued, output only while bytes wait in its TX buffer. That way readiness
//! stays with the kernel, a connection we cannot serve (no guest credit, no RX buffers)
//! is not drained into memory and does not wake the loop, and the few interest changes
//! (one `epoll_ctl` when a connection starts or stops waiting) cost less than the
//! re-arming and "read until EAGAIN" bookkeeping edge-triggering would need.
//!
//! Packets owed to the guest wait in two queues: RSTs for packets that match no connection
//! (bounded: when full, the device stops taking TX packets until the guest gives RX
//! buffers), and connections with something pending, each queued at most once and served
//! round-robin, one packet per turn.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryError, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{ConnKey, Connection};
use super::packet::{PacketHeader, RxBuffer, TxPacket, HEADER_SIZE};
use super::unix::{connect_nonblocking, port_path, Handshake, HandshakeReader, UdsListener};
use super::{guest_log, uapi};

/// Epoll tokens. The worker's own eventfds use the fixed ones; sockets carry their fd in
/// the low 32 bits and what they are in the high ones.
pub const TOKEN_STOP: u64 = 0;
pub const TOKEN_RX_QUEUE: u64 = 1;
pub const TOKEN_TX_QUEUE: u64 = 2;
pub const TOKEN_EVENT_QUEUE: u64 = 3;
pub const TOKEN_LISTENER: u64 = 4;
const TOKEN_CONN: u64 = 1 << 32;
const TOKEN_HANDSHAKE: u64 = 2 << 32;

/// At most this many connections (each holds a host fd and up to a TX buffer).
pub const MAX_CONNECTIONS: usize = 1024;
/// At most this many host clients between accept and their `CONNECT` line.
pub const MAX_HANDSHAKES: usize = 64;
/// RSTs for unknown connections waiting for RX buffers before TX processing pauses.
pub const MAX_PENDING_RSTS: usize = 256;
/// Host ports for host-initiated connections start here (as in Firecracker: well above the
/// ports host services listen on).
const FIRST_HOST_PORT: u32 = 1 << 30;
/// A host client must send its `CONNECT` line this soon after connecting.
#[cfg(not(test))]
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
#[cfg(test)]
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(300);
/// How long accepting pauses after an accept error.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

pub struct VsockMuxer {
    guest_cid: u64,
    listener: Arc<UdsListener>,
    epoll: Epoll,
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    /// Host clients that have not sent their `CONNECT` line yet, with their deadline.
    handshakes: HashMap<RawFd, (UnixStream, HandshakeReader, Instant)>,
    /// Set while accepting is paused after an error (e.g. out of fds: the listener would
    /// stay readable and spin the level-triggered loop); when to try again.
    accept_retry: Option<Instant>,
    rx_ready: VecDeque<ConnKey>,
    rsts: VecDeque<PacketHeader>,
    deadlines: BinaryHeap<Reverse<(Instant, ConnKey)>>,
    next_host_port: u32,
}

impl VsockMuxer {
    pub fn new(guest_cid: u64, listener: Arc<UdsListener>) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        )?;
        Ok(Self {
            guest_cid,
            listener,
            epoll,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            accept_retry: None,
            rx_ready: VecDeque::new(),
            rsts: VecDeque::new(),
            deadlines: BinaryHeap::new(),
            next_host_port: FIRST_HOST_PORT,
        })
    }

    /// The epoll set: the worker adds its eventfds (tokens `TOKEN_STOP`..`TOKEN_EVENT_QUEUE`)
    /// and waits on it.
    pub fn epoll(&self) -> &Epoll {
        &self.epoll
    }

    /// Whether a packet is owed to the guest (an RX buffer would be used).
    pub fn has_pending_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rx_ready.is_empty()
    }

    /// True when the guest's TX packets must wait: answering them could need an RST and the
    /// RST queue is full (it drains as the guest gives RX buffers).
    pub fn tx_blocked(&self) -> bool {
        self.rsts.len() >= MAX_PENDING_RSTS
    }

    /// Handles a socket event (any token from `TOKEN_LISTENER` on).
    pub fn handle_event(&mut self, token: u64, events: EventSet) {
        let fd = (token & 0xffff_ffff) as RawFd;
        match token & !0xffff_ffff {
            _ if token == TOKEN_LISTENER => self.accept_all(),
            TOKEN_CONN => {
                if let Some(&key) = self.by_fd.get(&fd) {
                    if let Some(conn) = self.conns.get_mut(&key) {
                        conn.notify(events);
                    }
                    self.refresh(key);
                }
            }
            TOKEN_HANDSHAKE => self.continue_handshake(fd),
            _ => {}
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok(Some(stream)) => {
                    if self.handshakes.len() >= MAX_HANDSHAKES {
                        guest_log!("too many host clients in their handshake: closing one");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    let ev = EpollEvent::new(EventSet::IN, TOKEN_HANDSHAKE | fd as u64);
                    if let Err(e) = self.epoll.ctl(ControlOperation::Add, fd, ev) {
                        guest_log!("cannot poll a host client: {e}");
                        continue;
                    }
                    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
                    self.handshakes
                        .insert(fd, (stream, HandshakeReader::default(), deadline));
                }
                Ok(None) => return,
                Err(e) => {
                    // EMFILE and the like: the client stays in the backlog. The listener
                    // stays readable, so stop polling it for a moment instead of spinning.
                    guest_log!("cannot accept on {}: {e}", self.listener.path().display());
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        self.listener.as_raw_fd(),
                        EpollEvent::default(),
                    );
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    fn continue_handshake(&mut self, fd: RawFd) {
        let Some((stream, reader, _)) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let guest_port = match reader.read(stream) {
            Handshake::Incomplete => return,
            Handshake::Bad(why) => {
                guest_log!("closing a host client: {why}");
                self.end_handshake(fd);
                return;
            }
            Handshake::Connect(port) => port,
        };
        let Some(stream) = self.end_handshake(fd) else {
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            guest_log!("{MAX_CONNECTIONS} connections open: refusing a host client");
            return;
        }
        let key = ConnKey {
            host_port: self.allocate_host_port(guest_port),
            guest_port,
        };
        let conn = Connection::new_local_init(key, self.guest_cid, stream);
        self.insert(conn);
    }

    fn end_handshake(&mut self, fd: RawFd) -> Option<UnixStream> {
        let (stream, _, _) = self.handshakes.remove(&fd)?;
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        Some(stream)
    }

    fn allocate_host_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let port = self.next_host_port;
            self.next_host_port = self
                .next_host_port
                .checked_add(1)
                .unwrap_or(FIRST_HOST_PORT);
            // Bounded: at most MAX_CONNECTIONS keys are taken.
            if !self.conns.contains_key(&ConnKey {
                host_port: port,
                guest_port,
            }) {
                return port;
            }
        }
    }

    fn insert(&mut self, conn: Connection) {
        let key = conn.key;
        self.by_fd.insert(conn.fd(), key);
        self.conns.insert(key, conn);
        self.refresh(key);
    }

    /// Brings the muxer's view of a connection up to date after anything happened to it:
    /// drops it if it is over, queues it if it owes the guest a packet, changes its epoll
    /// interest and timer.
    fn refresh(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let fd = conn.fd();
        if conn.is_finished() {
            self.remove(key);
            return;
        }
        if conn.has_pending_rx() && !conn.queued {
            conn.queued = true;
            self.rx_ready.push_back(key);
        }
        let wanted = conn.wanted_events();
        if wanted != conn.polled {
            let token = TOKEN_CONN | fd as u64;
            let result = match (conn.polled, wanted) {
                (None, Some(ev)) => {
                    self.epoll
                        .ctl(ControlOperation::Add, fd, EpollEvent::new(ev, token))
                }
                (Some(_), Some(ev)) => {
                    self.epoll
                        .ctl(ControlOperation::Modify, fd, EpollEvent::new(ev, token))
                }
                (Some(_), None) => {
                    self.epoll
                        .ctl(ControlOperation::Delete, fd, EpollEvent::default())
                }
                (None, None) => Ok(()),
            };
            match result {
                Ok(()) => conn.polled = wanted,
                Err(e) => {
                    guest_log!(
                        "cannot poll the host socket of guest port {}: {e}",
                        key.guest_port
                    );
                    conn.kill();
                    if !conn.queued {
                        conn.queued = true;
                        self.rx_ready.push_back(key);
                    }
                }
            }
        }
        if conn.expiry() != conn.expiry_queued {
            conn.expiry_queued = conn.expiry();
            if let Some(t) = conn.expiry() {
                self.deadlines.push(Reverse((t, key)));
            }
        }
    }

    /// Forgets a connection: stops polling its socket and closes it.
    fn remove(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        if conn.polled.is_some() {
            // Closing would drop it from the set too, but only once no duplicate of the
            // fd is left anywhere; say it explicitly.
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, conn.fd(), EpollEvent::default());
        }
        self.by_fd.remove(&conn.fd());
    }

    /// Takes a packet the guest sent. Checks what the device must: the source is this
    /// guest, the destination is the host, the socket type is stream.
    pub fn send_to_host(&mut self, pkt: &TxPacket, mem: &GuestMemoryMmap) {
        let hdr = &pkt.hdr;
        if hdr.src_cid != self.guest_cid {
            guest_log!(
                "dropping a packet from CID {} (the guest is CID {})",
                hdr.src_cid,
                self.guest_cid
            );
            return;
        }
        if hdr.dst_cid != uapi::VSOCK_HOST_CID {
            guest_log!(
                "dropping a packet to CID {}: only the host (CID 2) is reachable",
                hdr.dst_cid
            );
            return;
        }
        let key = ConnKey {
            host_port: hdr.dst_port,
            guest_port: hdr.src_port,
        };
        if hdr.type_ != uapi::VIRTIO_VSOCK_TYPE_STREAM {
            guest_log!(
                "refusing socket type {}: only stream sockets are supported",
                hdr.type_
            );
            self.reset_unknown(key, hdr);
            return;
        }
        if hdr.op == uapi::VIRTIO_VSOCK_OP_REQUEST {
            self.guest_connect(key, hdr);
            return;
        }
        match self.conns.get_mut(&key) {
            Some(conn) => {
                conn.send_to_host(pkt, mem);
                self.refresh(key);
            }
            None => self.reset_unknown(key, hdr),
        }
    }

    /// Answers a packet that matches no connection with an RST (never an RST with one).
    fn reset_unknown(&mut self, key: ConnKey, hdr: &PacketHeader) {
        if hdr.op == uapi::VIRTIO_VSOCK_OP_RST {
            return;
        }
        let mut rst = PacketHeader::host_to_guest(
            self.guest_cid,
            key.host_port,
            key.guest_port,
            uapi::VIRTIO_VSOCK_OP_RST,
        );
        // Keep the reply's socket type that of the packet, so the guest finds the socket.
        rst.type_ = hdr.type_;
        self.rsts.push_back(rst);
    }

    /// The guest connects to host port `key.host_port`: connect to `<uds_path>_<port>`.
    fn guest_connect(&mut self, key: ConnKey, req: &PacketHeader) {
        if let Some(old) = self.conns.get_mut(&key) {
            // The guest reuses a port we still hold (its end is gone): drop ours.
            guest_log!(
                "guest port {} reconnects: dropping its old connection",
                key.guest_port
            );
            old.kill();
            self.remove(key);
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            guest_log!("{MAX_CONNECTIONS} connections open: refusing the guest's");
            self.reset_unknown(key, req);
            return;
        }
        let path = port_path(self.listener.path(), key.host_port);
        match connect_nonblocking(&path) {
            Ok(stream) => {
                let conn = Connection::new_peer_init(key, self.guest_cid, stream, req);
                self.insert(conn);
            }
            Err(e) => {
                // Nobody listening is the expected case: no log for that.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) {
                    guest_log!("cannot connect to {}: {e}", path.display());
                }
                self.reset_unknown(key, req);
            }
        }
    }

    /// Fills `rx` with the next packet owed to the guest. Returns its length, or `None` if
    /// nothing is owed after all.
    pub fn recv_for_guest(
        &mut self,
        rx: &RxBuffer,
        mem: &GuestMemoryMmap,
    ) -> Result<Option<u32>, GuestMemoryError> {
        if let Some(rst) = self.rsts.pop_front() {
            rx.write_header(mem, &rst)?;
            return Ok(Some(HEADER_SIZE as u32));
        }
        while let Some(key) = self.rx_ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            let got = conn.recv_for_guest(rx, mem);
            // Re-queues it (at the back: round-robin) if it owes more.
            self.refresh(key);
            if let Some(len) = got? {
                return Ok(Some(len));
            }
        }
        Ok(None)
    }

    /// Milliseconds until the next timer (connections, handshakes, accept retry), for
    /// `epoll_wait` (-1: none).
    pub fn next_timeout_ms(&self) -> i32 {
        let next = self
            .deadlines
            .peek()
            .map(|Reverse((t, _))| *t)
            .into_iter()
            .chain(self.handshakes.values().map(|(_, _, t)| *t))
            .chain(self.accept_retry)
            .min();
        match next {
            None => -1,
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                // Round up: waking early only costs another wait.
                (left.as_millis() + 1).min(i32::MAX as u128) as i32
            }
        }
    }

    /// Fires the timers that ran out.
    pub fn expire(&mut self, now: Instant) {
        if self.accept_retry.is_some_and(|t| t <= now) {
            self.accept_retry = None;
            let ev = EpollEvent::new(EventSet::IN, TOKEN_LISTENER);
            if let Err(e) = self
                .epoll
                .ctl(ControlOperation::Add, self.listener.as_raw_fd(), ev)
            {
                guest_log!("cannot poll the vsock listener again: {e}");
                self.accept_retry = Some(now + ACCEPT_RETRY);
            }
        }
        let late: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, (_, _, t))| *t <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            guest_log!("closing a host client that sent no CONNECT line in time");
            self.end_handshake(fd);
        }
        while let Some(Reverse((t, key))) = self.deadlines.peek().copied() {
            if t > now {
                return;
            }
            self.deadlines.pop();
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            // A stale entry (the timer was moved or cleared) is skipped.
            if conn.expiry() == Some(t) {
                conn.expire();
                self.refresh(key);
            }
        }
    }
}
