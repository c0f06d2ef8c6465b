//! husk as an OCI runtime: everything of runc's lifecycle that happens on the host.
//!
//! A container is one microVM; what runs inside it is the backend's business (see
//! [`backend`]). This module owns what a runc-compatible runtime must get right without
//! the VM: bundle loading and spec validation, the state store under `--root` (one
//! directory and one lock per container, state derived from whether the container's
//! host process is still the same live process), hooks, the console socket handshake,
//! pid files and exit statuses. [`Runtime`] ties them into the lifecycle commands the
//! CLI and a future containerd shim call.
//!
//! The design decision that shapes it: the state of a container is never trusted from
//! disk alone. The recorded status says what the last command did; whether the host
//! process (the VMM) still lives, identified by pid *and* start time, says whether the
//! container has stopped since.

pub mod backend;
pub mod bundle;
pub mod console;
pub mod exec_proxy;
pub mod features;
pub mod hooks;
pub mod id;
pub mod log;
pub mod pidfile;
pub mod process;
pub mod ready_pipe;
pub mod runtime;
pub mod sandbox_backend;
pub mod signal;
pub mod spec;
pub mod state;
pub mod store;
pub mod time;

pub use backend::{Backend, BackendError, CreateRequest, ExecRequest, GuestProcess, Unwired};
pub use bundle::Bundle;
pub use exec_proxy::{spawn_exec_proxy, spawn_exec_proxy_with};
pub use runtime::{CreateOptions, ExecOptions, Runtime, RuntimeError};
pub use signal::Signal;
pub use state::{ContainerRecord, OciState, Status};
pub use store::{Container, StateStore};

/// The OCI runtime-spec version husk implements and reports (that of the `oci-spec`
/// crate it parses configs with).
pub const OCI_VERSION: &str = oci_spec::runtime::VERSION;

/// Where container state lives unless `--root` says otherwise.
pub const DEFAULT_ROOT: &str = "/run/husk";

/// `value` as JSON indented with `indent` (runc's outputs differ: tabs for config.json,
/// four spaces for features). Only for values that serialize without error (no maps
/// with non-string keys).
pub(crate) fn indented_json<T: serde::Serialize>(value: &T, indent: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut out,
        serde_json::ser::PrettyFormatter::with_indent(indent),
    );
    let _ = value.serialize(&mut ser);
    out
}
