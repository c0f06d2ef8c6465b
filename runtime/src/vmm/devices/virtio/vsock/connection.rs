//! One vsock connection: the guest's AF_VSOCK socket on one side, a host AF_UNIX stream on
//! the other, the state machine between them, and credit-based flow control both ways.
//!
//! Flow control (virtio 1.2, 5.10.6.3): every packet carries the sender's `buf_alloc` (how
//! much it buffers for the connection) and `fwd_cnt` (how many bytes it has passed on).
//! - Guest to host: we advertise [`CONN_TX_BUF_SIZE`] and count in `fwd_cnt` the bytes
//!   written to the host socket. Bytes the socket cannot take yet go to the connection's
//!   [`TxBuf`] of exactly that size, so a guest that respects its credit never overflows
//!   it; one that does not is reset. When the host reader drains enough
//!   ([`CREDIT_UPDATE_THRESHOLD`]) the guest gets a CREDIT_UPDATE. Nothing is ever dropped:
//!   the guest simply stops sending when it has no credit.
//! - Host to guest: we never read more from the host socket than the guest's credit
//!   (`buf_alloc - (bytes sent - its fwd_cnt)`); with no credit we stop polling the socket
//!   for input, so the host writer feels the backpressure through its socket buffer, and
//!   ask the guest for a CREDIT_UPDATE once.
//!
//! Shutdown: a SHUTDOWN from the guest with SEND set becomes `shutdown(SHUT_WR)` on the
//! host socket (after the buffered bytes are flushed); end of file from the host becomes a
//! SHUTDOWN to the guest: SEND only if the host only shut down its writing side
//! (half-close), RCV|SEND if it closed the socket. A connection both sides have shut down
//! ends with an RST; a SHUTDOWN the guest does not answer with an RST within
//! [`SHUTDOWN_TIMEOUT`] is answered with our own RST.

use std::io::{self, Write};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryError, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::packet::{PacketHeader, RxBuffer, TxPacket, HEADER_SIZE};
use super::txbuf::TxBuf;
use super::{guest_log, uapi};

/// Per-connection buffer for guest-to-host bytes, and the credit (`buf_alloc`) the guest is
/// given (Firecracker uses the same size).
pub const CONN_TX_BUF_SIZE: u32 = 256 * 1024;
/// Send the guest a CREDIT_UPDATE once this many bytes were forwarded since it last heard
/// our `fwd_cnt`. A quarter of the buffer keeps at least 3/4 of the window open for a
/// streaming guest, for one small control packet per 64 KiB.
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_TX_BUF_SIZE / 4;
/// How long the guest has to answer a host-initiated REQUEST.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the guest has to end a connection we shut down (or to let us flush what it
/// sent before it shut down) before we reset it. Generous: the guest answers only once its
/// application has closed its socket.
#[cfg(not(test))]
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
#[cfg(test)]
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(300);

/// A connection's identity: host port (ours) and guest port (the peer's).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnKey {
    pub host_port: u32,
    pub guest_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: a REQUEST is pending or sent, waiting for the guest's RESPONSE.
    LocalInit,
    /// Guest-initiated: connected to the host listener, RESPONSE pending to the guest.
    PeerInit,
    Established,
    /// The host closed its socket: SHUTDOWN(RCV|SEND) sent, waiting for the guest's RST
    /// (or its SHUTDOWN, answered with ours).
    LocalClosed,
    /// Being reset: an RST is pending to the guest, or was received from it.
    Killed,
}

/// Packets a connection owes the guest (a set).
mod pending {
    pub const RST: u8 = 1 << 0;
    pub const RESPONSE: u8 = 1 << 1;
    pub const REQUEST: u8 = 1 << 2;
    pub const RW: u8 = 1 << 3;
    pub const CREDIT_UPDATE: u8 = 1 << 4;
    /// SHUTDOWN(RCV|SEND): the host closed after an earlier half-close.
    pub const SHUTDOWN: u8 = 1 << 5;
}

#[derive(Debug)]
pub struct Connection {
    pub key: ConnKey,
    guest_cid: u64,
    stream: UnixStream,
    state: ConnState,
    pending: u8,
    tx_buf: TxBuf,
    /// Bytes written to the host socket (our `fwd_cnt`).
    fwd_cnt: Wrapping<u32>,
    /// Our `fwd_cnt` as the guest last saw it.
    fwd_cnt_sent: Wrapping<u32>,
    /// The guest's credit information, from its latest packet.
    guest_buf_alloc: u32,
    guest_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// A CREDIT_REQUEST went out and the guest's credit has not changed since.
    credit_requested: bool,
    /// The guest said it will receive / send no more.
    guest_shut_rcv: bool,
    guest_shut_send: bool,
    /// The host socket reached end of file; the guest was told.
    host_eof: bool,
    /// The host socket hung up entirely (closed): nothing to poll any more.
    host_hup: bool,
    /// `shutdown(SHUT_WR)` was done on the host socket.
    host_write_shut: bool,
    expiry: Option<Instant>,
    /// The connection is over: the muxer drops it (closing the socket).
    finished: bool,
    /// Muxer bookkeeping: the epoll interest registered for the socket, and whether the
    /// connection sits in the muxer's RX queue.
    pub(super) polled: Option<EventSet>,
    pub(super) queued: bool,
    pub(super) expiry_queued: Option<Instant>,
}

impl Connection {
    fn new(
        key: ConnKey,
        guest_cid: u64,
        stream: UnixStream,
        state: ConnState,
        pending: u8,
    ) -> Self {
        Self {
            key,
            guest_cid,
            stream,
            state,
            pending,
            tx_buf: TxBuf::new(CONN_TX_BUF_SIZE as usize),
            fwd_cnt: Wrapping(0),
            fwd_cnt_sent: Wrapping(0),
            guest_buf_alloc: 0,
            guest_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            credit_requested: false,
            guest_shut_rcv: false,
            guest_shut_send: false,
            host_eof: false,
            host_hup: false,
            host_write_shut: false,
            expiry: None,
            finished: false,
            polled: None,
            queued: false,
            expiry_queued: None,
        }
    }

    /// A connection the guest asked for (its REQUEST `req`), already connected to the host
    /// listener: a RESPONSE is due.
    pub fn new_peer_init(
        key: ConnKey,
        guest_cid: u64,
        stream: UnixStream,
        req: &PacketHeader,
    ) -> Self {
        let mut c = Self::new(
            key,
            guest_cid,
            stream,
            ConnState::PeerInit,
            pending::RESPONSE,
        );
        c.guest_buf_alloc = req.buf_alloc;
        c.guest_fwd_cnt = Wrapping(req.fwd_cnt);
        c
    }

    /// A connection a host client asked for with `CONNECT <port>`: a REQUEST is due.
    pub fn new_local_init(key: ConnKey, guest_cid: u64, stream: UnixStream) -> Self {
        Self::new(
            key,
            guest_cid,
            stream,
            ConnState::LocalInit,
            pending::REQUEST,
        )
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn has_pending_rx(&self) -> bool {
        self.pending != 0
    }

    pub fn expiry(&self) -> Option<Instant> {
        self.expiry
    }

    /// Bytes the guest can still take: its buffer minus what it has not passed on yet. A
    /// guest reporting more forwarded than it was sent gets no credit, not a wrapped one.
    pub fn guest_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.guest_fwd_cnt).0;
        self.guest_buf_alloc.saturating_sub(in_flight)
    }

    /// The epoll interest the host socket needs now; `None` when it needs none at all (not
    /// even hang-up reports, which epoll always delivers and which would otherwise wake a
    /// level-triggered loop forever).
    pub fn wanted_events(&self) -> Option<EventSet> {
        if self.finished
            || self.host_hup
            || matches!(self.state, ConnState::LocalClosed | ConnState::Killed)
        {
            return None;
        }
        let mut ev = EventSet::empty();
        if self.state == ConnState::Established
            && !self.guest_shut_rcv
            && !self.host_eof
            && self.pending & pending::RW == 0
            && self.guest_credit() > 0
        {
            ev |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            ev |= EventSet::OUT;
        }
        Some(ev)
    }

    /// Resets the connection: an RST goes to the guest, anything buffered is dropped.
    pub fn kill(&mut self) {
        self.state = ConnState::Killed;
        self.pending = pending::RST;
        self.tx_buf.clear();
        self.expiry = None;
    }

    /// The connection's timer ran out.
    pub fn expire(&mut self) {
        guest_log!(
            "connection host port {} guest port {} timed out in state {:?}: resetting it",
            self.key.host_port,
            self.key.guest_port,
            self.state
        );
        self.kill();
    }

    /// The host socket is ready (`IN`, `OUT`) or gone (`HUP`, `ERR`).
    pub fn notify(&mut self, events: EventSet) {
        if events.contains(EventSet::IN) {
            self.pending |= pending::RW;
        }
        if events.contains(EventSet::OUT) && !self.tx_buf.is_empty() {
            self.flush_tx_buf();
        }
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) && !self.host_hup {
            self.host_hup = true;
            match self.state {
                // Nobody is left to answer: tell the guest at once.
                ConnState::LocalInit | ConnState::PeerInit => self.kill(),
                ConnState::Established => {
                    // The host can read nothing more we send; what it wrote before closing
                    // is still delivered, up to the end of file.
                    self.tx_buf.clear();
                    if self.host_eof {
                        // The guest heard SEND already; now it must stop sending too.
                        self.pending |= pending::SHUTDOWN;
                    } else {
                        self.pending |= pending::RW;
                    }
                }
                ConnState::LocalClosed | ConnState::Killed => {}
            }
        }
    }

    /// Takes a packet from the guest for this connection.
    pub fn send_to_host(&mut self, pkt: &TxPacket, mem: &GuestMemoryMmap) {
        let hdr = &pkt.hdr;
        let fwd = Wrapping(hdr.fwd_cnt);
        if hdr.buf_alloc != self.guest_buf_alloc || fwd != self.guest_fwd_cnt {
            self.credit_requested = false;
        }
        self.guest_buf_alloc = hdr.buf_alloc;
        self.guest_fwd_cnt = fwd;
        if self.host_hup && !self.host_eof && self.guest_credit() > 0 {
            // A hung-up socket is not polled: new credit is the only cue to read on.
            self.pending |= pending::RW;
        }

        match (hdr.op, self.state) {
            (uapi::VIRTIO_VSOCK_OP_RST, _) => {
                // The guest ended it: no answer, just close the host side.
                self.state = ConnState::Killed;
                self.pending = 0;
                self.finished = true;
            }
            (_, ConnState::Killed) => {}
            (uapi::VIRTIO_VSOCK_OP_RESPONSE, ConnState::LocalInit) => {
                self.state = ConnState::Established;
                self.expiry = None;
                let ack = format!("OK {}\n", self.key.host_port);
                // A fresh socket's buffer always takes these few bytes; if it does not, the
                // client is broken.
                if let Err(e) = self.stream.write(ack.as_bytes()).and_then(|n| {
                    if n == ack.len() {
                        Ok(())
                    } else {
                        Err(io::Error::other("short write"))
                    }
                }) {
                    guest_log!("cannot acknowledge a host connection: {e}");
                    self.kill();
                }
            }
            (uapi::VIRTIO_VSOCK_OP_RW, ConnState::Established) => self.forward(pkt, mem),
            // The host closed; the guest's data in flight has nowhere to go.
            (uapi::VIRTIO_VSOCK_OP_RW, ConnState::LocalClosed) => {}
            (uapi::VIRTIO_VSOCK_OP_SHUTDOWN, ConnState::Established) => {
                self.guest_shut_rcv |= hdr.flags & uapi::VIRTIO_VSOCK_SHUTDOWN_RCV != 0;
                self.guest_shut_send |= hdr.flags & uapi::VIRTIO_VSOCK_SHUTDOWN_SEND != 0;
                self.after_guest_shutdown_or_flush();
            }
            (uapi::VIRTIO_VSOCK_OP_SHUTDOWN, ConnState::LocalClosed) => {
                // Both sides are done.
                self.pending = pending::RST;
            }
            (uapi::VIRTIO_VSOCK_OP_CREDIT_UPDATE, _) => {}
            (
                uapi::VIRTIO_VSOCK_OP_CREDIT_REQUEST,
                ConnState::Established | ConnState::PeerInit,
            ) => {
                self.pending |= pending::CREDIT_UPDATE;
            }
            // Closing: nothing more will be sent its way anyway.
            (uapi::VIRTIO_VSOCK_OP_CREDIT_REQUEST, ConnState::LocalClosed) => {}
            (op, state) => {
                guest_log!(
                    "unexpected op {op} in state {state:?} (host port {}, guest port {}): resetting",
                    self.key.host_port,
                    self.key.guest_port
                );
                self.kill();
            }
        }
    }

    /// Forwards an RW packet's payload: straight to the host socket when nothing is
    /// buffered, the rest into the TX buffer.
    fn forward(&mut self, pkt: &TxPacket, mem: &GuestMemoryMmap) {
        let len = pkt.payload_len();
        if len == 0 {
            return;
        }
        if self.guest_shut_send || self.host_write_shut || self.host_hup {
            // Data after the guest said it sends no more, or for a socket no one reads.
            guest_log!("dropping {len} bytes the host side cannot take any more");
            return;
        }
        let mut written = 0;
        if self.tx_buf.is_empty() {
            match pkt.write_payload_to(mem, 0, &mut &self.stream) {
                Ok(n) => written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return self.host_failed(&e),
            }
            self.fwd_cnt += Wrapping(written as u32);
        }
        if written < len {
            let rest = len - written;
            let pushed = self
                .tx_buf
                .push_with(rest, |off, out| pkt.copy_payload(mem, written + off, out));
            match pushed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    guest_log!("cannot read a TX payload: {e}: resetting");
                    self.kill();
                    return;
                }
                Err(e) => {
                    guest_log!(
                        "guest port {} ignored flow control ({e}): resetting",
                        self.key.guest_port
                    );
                    self.kill();
                    return;
                }
            }
        }
        self.check_credit_update();
    }

    /// Writing to the host socket failed (its reader is gone): reset the connection.
    fn host_failed(&mut self, e: &io::Error) {
        guest_log!(
            "host socket for guest port {} failed: {e}: resetting",
            self.key.guest_port
        );
        self.kill();
    }

    fn flush_tx_buf(&mut self) {
        match self.tx_buf.flush_to(&mut &self.stream) {
            Ok(n) => self.fwd_cnt += Wrapping(n as u32),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return self.host_failed(&e),
        }
        self.after_guest_shutdown_or_flush();
        self.check_credit_update();
    }

    /// Once everything the guest sent is on the host socket: pass a guest SEND shutdown on,
    /// and end the connection if the guest shut down both ways.
    fn after_guest_shutdown_or_flush(&mut self) {
        if self.state != ConnState::Established {
            return;
        }
        if !self.tx_buf.is_empty() {
            if self.guest_shut_rcv && self.guest_shut_send && self.expiry.is_none() {
                // Flushing what is left before the RST; bounded by a timer.
                self.expiry = Some(Instant::now() + SHUTDOWN_TIMEOUT);
            }
            return;
        }
        if self.guest_shut_send && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        if self.guest_shut_rcv && self.guest_shut_send {
            self.pending = pending::RST;
            self.state = ConnState::Killed;
        }
    }

    fn check_credit_update(&mut self) {
        if (self.fwd_cnt - self.fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending |= pending::CREDIT_UPDATE;
        }
    }

    /// Fills `rx` with the next packet this connection owes the guest. Returns its length
    /// (header included), or `None` if it owes nothing after all.
    pub fn recv_for_guest(
        &mut self,
        rx: &RxBuffer,
        mem: &GuestMemoryMmap,
    ) -> Result<Option<u32>, GuestMemoryError> {
        let Some(mut hdr) = self.next_packet(rx, mem) else {
            return Ok(None);
        };
        hdr.buf_alloc = CONN_TX_BUF_SIZE;
        hdr.fwd_cnt = self.fwd_cnt.0;
        // Every packet carries our credit: no separate update is owed any more.
        self.fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !pending::CREDIT_UPDATE;
        rx.write_header(mem, &hdr)?;
        Ok(Some(HEADER_SIZE as u32 + hdr.len))
    }

    fn next_packet(&mut self, rx: &RxBuffer, mem: &GuestMemoryMmap) -> Option<PacketHeader> {
        let (cid, key) = (self.guest_cid, self.key);
        let header = |op| PacketHeader::host_to_guest(cid, key.host_port, key.guest_port, op);
        if self.take(pending::RST) {
            self.state = ConnState::Killed;
            self.pending = 0;
            self.finished = true;
            return Some(header(uapi::VIRTIO_VSOCK_OP_RST));
        }
        if self.take(pending::RESPONSE) {
            self.state = ConnState::Established;
            return Some(header(uapi::VIRTIO_VSOCK_OP_RESPONSE));
        }
        if self.take(pending::REQUEST) {
            self.expiry = Some(Instant::now() + REQUEST_TIMEOUT);
            return Some(header(uapi::VIRTIO_VSOCK_OP_REQUEST));
        }
        if self.take(pending::SHUTDOWN) {
            let mut h = header(uapi::VIRTIO_VSOCK_OP_SHUTDOWN);
            h.flags = uapi::VIRTIO_VSOCK_SHUTDOWN_RCV | uapi::VIRTIO_VSOCK_SHUTDOWN_SEND;
            self.state = ConnState::LocalClosed;
            self.expiry = Some(Instant::now() + SHUTDOWN_TIMEOUT);
            return Some(h);
        }
        if self.take(pending::RW) {
            if let Some(h) = self.read_host_data(rx, mem, header(uapi::VIRTIO_VSOCK_OP_RW)) {
                return Some(h);
            }
        }
        if self.take(pending::CREDIT_UPDATE) {
            return Some(header(uapi::VIRTIO_VSOCK_OP_CREDIT_UPDATE));
        }
        None
    }

    fn take(&mut self, bit: u8) -> bool {
        let had = self.pending & bit != 0;
        self.pending &= !bit;
        had
    }

    /// Reads host bytes into `rx` (at most the guest's credit). `RW` stays pending when the
    /// buffer was filled (there may be more).
    fn read_host_data(
        &mut self,
        rx: &RxBuffer,
        mem: &GuestMemoryMmap,
        mut hdr: PacketHeader,
    ) -> Option<PacketHeader> {
        if self.state != ConnState::Established || self.guest_shut_rcv || self.host_eof {
            return None;
        }
        let credit = self.guest_credit() as usize;
        if credit == 0 {
            if self.credit_requested {
                return None;
            }
            self.credit_requested = true;
            hdr.op = uapi::VIRTIO_VSOCK_OP_CREDIT_REQUEST;
            return Some(hdr);
        }
        let want = credit.min(rx.payload_room());
        match rx.read_payload_from(mem, want, &mut &self.stream) {
            Ok(0) => {
                self.host_eof = true;
                hdr.op = uapi::VIRTIO_VSOCK_OP_SHUTDOWN;
                if self.host_hup || peer_hung_up(self.stream.as_raw_fd()) {
                    // Closed: the host will neither send nor receive.
                    self.host_hup = true;
                    self.tx_buf.clear();
                    hdr.flags = uapi::VIRTIO_VSOCK_SHUTDOWN_RCV | uapi::VIRTIO_VSOCK_SHUTDOWN_SEND;
                    self.state = ConnState::LocalClosed;
                    self.expiry = Some(Instant::now() + SHUTDOWN_TIMEOUT);
                } else {
                    // Half-closed: the host still reads what the guest sends.
                    hdr.flags = uapi::VIRTIO_VSOCK_SHUTDOWN_SEND;
                }
                Some(hdr)
            }
            Ok(n) => {
                // A full buffer: there may be more. A hung-up socket is no longer polled:
                // read on until its end of file.
                if n == want || self.host_hup {
                    self.pending |= pending::RW;
                }
                self.rx_cnt += Wrapping(n as u32);
                hdr.len = n as u32;
                Some(hdr)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => {
                guest_log!(
                    "reading the host socket for guest port {} failed: {e}: resetting",
                    self.key.guest_port
                );
                self.state = ConnState::Killed;
                self.tx_buf.clear();
                self.pending = 0;
                self.finished = true;
                hdr.op = uapi::VIRTIO_VSOCK_OP_RST;
                Some(hdr)
            }
        }
    }
}

/// Whether the other end of a unix stream closed entirely (`POLLHUP`: both directions shut
/// down), as opposed to only shutting down its writing side.
fn peer_hung_up(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    rc > 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
}
