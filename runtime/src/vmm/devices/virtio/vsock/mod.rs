//! virtio-vsock with the host side on AF_UNIX sockets: the guest speaks AF_VSOCK, host
//! processes speak plain unix sockets, and the VMM moves the bytes between them. No vhost
//! (the hosts husk runs on may not have `vhost_vsock`), and nothing in the host kernel
//! needs to know a VM exists. Users of Firecracker know the conventions:
//!
//! - Host to guest: a host process connects to the device's socket (`uds_path`) and writes
//!   `CONNECT <port>\n`; once the guest accepts, it reads `OK <host port>\n` and from then
//!   on the socket is the connection.
//! - Guest to host: the guest connects to (CID 2, port P); the VMM connects to
//!   `<uds_path>_<P>`, where a host process listens.
//!
//! Modules: [`packet`] (the header and bounds-checked guest buffers), [`connection`] (one
//! connection's state machine and credit accounting), [`txbuf`] (bytes the guest sent that
//! the host socket could not take yet), [`unix`] (the AF_UNIX side: the listening socket,
//! connecting, the handshake line), [`muxer`] (maps connections to sockets, owns the
//! epoll set), [`device`] (the virtio device and its worker thread).
//!
//! Copies: a byte the guest sends is written by `write(2)` straight from the TX
//! descriptor's guest memory into the host socket (one copy, done by the host kernel); only
//! when the host reader is slower than the guest is it first copied into the connection's
//! [`txbuf::TxBuf`] (a second copy), bounded by the credit the guest was given. A byte the
//! host sends is `read(2)` from the socket straight into the guest's RX descriptor (one
//! copy).

pub mod connection;
pub mod device;
pub mod muxer;
pub mod packet;
pub mod txbuf;
pub mod unix;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};

pub use device::Vsock;
pub use unix::VsockError;

/// Constants of the vsock wire protocol (include/uapi/linux/virtio_vsock.h).
pub mod uapi {
    /// The host's CID: where the guest connects to reach a host process.
    pub const VSOCK_HOST_CID: u64 = 2;
    /// `virtio_vsock_type`: the only socket type husk carries.
    pub const VIRTIO_VSOCK_TYPE_STREAM: u16 = 1;
    /// `virtio_vsock_op`.
    pub const VIRTIO_VSOCK_OP_REQUEST: u16 = 1;
    pub const VIRTIO_VSOCK_OP_RESPONSE: u16 = 2;
    pub const VIRTIO_VSOCK_OP_RST: u16 = 3;
    pub const VIRTIO_VSOCK_OP_SHUTDOWN: u16 = 4;
    pub const VIRTIO_VSOCK_OP_RW: u16 = 5;
    pub const VIRTIO_VSOCK_OP_CREDIT_UPDATE: u16 = 6;
    pub const VIRTIO_VSOCK_OP_CREDIT_REQUEST: u16 = 7;
    /// `virtio_vsock_shutdown` flags: the sender will receive / send no more.
    pub const VIRTIO_VSOCK_SHUTDOWN_RCV: u32 = 1;
    pub const VIRTIO_VSOCK_SHUTDOWN_SEND: u32 = 2;
}

/// Logs a line about something the guest (or a host client) did, at most a few times per
/// kind of event and then every 1000th time: a guest must not be able to flood the host's
/// log.
pub(crate) struct RateLimitedLog {
    seen: AtomicU64,
}

impl RateLimitedLog {
    pub(crate) const fn new() -> Self {
        Self {
            seen: AtomicU64::new(0),
        }
    }

    pub(crate) fn log(&self, what: std::fmt::Arguments<'_>) {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        if n < 10 || n % 1000 == 0 {
            eprintln!("husk: virtio-vsock: {what} (seen {} times)", n + 1);
        }
    }
}

/// `guest_log!(KEY, "fmt", args)`: a rate-limited log line, one limiter per call site.
macro_rules! guest_log {
    ($($arg:tt)*) => {{
        static LIMIT: $crate::vmm::devices::virtio::vsock::RateLimitedLog =
            $crate::vmm::devices::virtio::vsock::RateLimitedLog::new();
        LIMIT.log(format_args!($($arg)*));
    }};
}
pub(crate) use guest_log;
