//! `husk-protocol`: what the host (the `husk` runtime, later the containerd shim) and the
//! guest agent (`husk-agent`, PID 1 of every microVM) say to each other, and — behind the
//! `agent` feature — the agent's process core (spawn, stdio relay, tty, signals, reaper).
//!
//! # What travels where
//!
//! ```text
//!  host (VMM process)                                 guest (husk-agent, PID 1)
//!  ─────────────────                                  ─────────────────────────
//!  control: connect AGENT_CONTROL_PORT ──────────────> accept
//!           hello (magic + version), both ways          hello, both ways
//!           RequestFrame{id, Request} ───────────────>  handler
//!           <─────────────── ResponseFrame{id, Ok(Response) | Err(AgentError)}
//!  stdio:   connect AGENT_STDIO_PORT, one connection per stream of each process
//!           hello, StreamHeader{process, kind} ──────>  parks it under (process, kind)
//!           <──────────────────────────── StreamAck (Ok or an AgentError)
//!           raw bytes after that, both ways for Tty, one way otherwise; EOF = end
//!  events:  listen HOST_EVENT_PORT <───────────────── connect, hello, AgentEvent::Ready,
//!                                                      AgentEvent::Fatal on its own failures
//! ```
//!
//! The control connection only carries small typed messages; no process byte ever goes
//! through it, so a chatty process cannot delay a `Signal` or a `Wait`, and a `Wait` that
//! blocks does not delay anyone's output.
//!
//! A control connection is strictly request/response in order (sync Rust on both ends,
//! no multiplexing). `Wait` blocks its connection until the process exits: the host opens
//! one more control connection per concurrent waiter (connections are cheap; the agent
//! serves each on its own thread). Request ids are echoed back so that a desynchronised
//! peer is caught instead of being believed.
//!
//! Every function here is over `Read + Write`, so unix sockets (tests, the host side of
//! virtio-vsock, which is a unix socket in the VMM) and `vsock::VsockStream` (the guest)
//! both work. This crate does not depend on the vsock device or crate.
//!
//! # Why a small serde framing rather than ttrpc + protobuf
//!
//! See [`frame`]: both ends are sync Rust programs we build from one workspace, the OCI
//! spec is JSON by definition (oci-spec's serde types round-trip it exactly, protobuf would
//! need a mirrored `oci.proto` plus conversion code both ways, which is what kata carries),
//! and ttrpc would bring protobuf codegen and its runtime into a guest binary whose size is
//! boot time. containerd speaks ttrpc to the *shim*, never to the agent, so there is no
//! interop to gain.

pub mod client;
pub mod frame;
pub mod messages;
pub mod server;
pub mod stream;
pub mod version;

#[cfg(all(feature = "agent", target_os = "linux"))]
pub mod process;

pub use client::Client;
pub use frame::{read_frame, write_frame, ProtocolError, MAX_FRAME_SIZE};
pub use messages::{
    validate_id, AgentError, AgentEvent, ErrorKind, ExitStatus, GuestProcessInfo, ProcessRef,
    Request, RequestFrame, Response, ResponseFrame, StdioConfig, StreamAck, StreamHeader,
    StreamKind,
};
pub use server::{serve, ServeEnd};
pub use stream::{accept_stdio_stream, ack_stdio_stream, open_stdio_stream};
pub use version::{handshake, Role, HELLO_LEN, MAGIC, PROTOCOL_VERSION};

/// The host's vsock CID (the well-known `VMADDR_CID_HOST`). The guest's CID is the VMM's choice.
pub const HOST_CID: u32 = 2;
/// Guest port the agent listens on for control connections (requests/responses).
/// Ports below 1024 are reserved for privileged binds on Linux vsock; ours start at 1024.
pub const AGENT_CONTROL_PORT: u32 = 1024;
/// Guest port the agent listens on for stdio streams (one connection per stream).
pub const AGENT_STDIO_PORT: u32 = 1025;
/// Host port the agent connects to, once, to report `Ready` (or a `Fatal` error).
pub const HOST_EVENT_PORT: u32 = 1026;
