//! The seam between the OCI lifecycle (host side, [`super::Runtime`]) and what makes a
//! container real: one microVM per container, with the guest agent building and
//! running it.
//!
//! [`super::Runtime`] does everything runc's CLI contract asks of the host (ids, the
//! state store and its locks, status, validation, hooks, pid files) and calls a
//! [`Backend`] only for what needs the VM. The process model the backend implements:
//! `boot` starts one host process per container, a child of the calling `husk`
//! (so it reparents to the client's subreaper, as runc's init does), which lives until
//! the container's init exits and then exits with its status (128+N for signal N).
//! Its pid is the container's pid; the runtime records it with its start time and
//! derives "stopped" from its death, so a backend never reports status itself.
//! `exec` likewise returns a host process (a small proxy) that exits with the exec'd
//! process's status.
//!
//! [`super::sandbox_backend::SandboxBackend`] is the backend the CLI uses; [`Unwired`]
//! remains for builds and tests without a VM: every operation that needs one fails with
//! one clear sentence. Nothing is faked.

use std::path::Path;

use oci_spec::runtime::Process;

use super::bundle::{Bundle, VmResources};
use super::process::HostProcess;
use super::signal::Signal;
use super::store::Container;

/// What `create` hands the backend once the bundle is checked and the container is
/// recorded (status `creating`).
#[derive(Debug)]
pub struct CreateRequest<'a> {
    pub id: &'a str,
    /// The checked bundle: spec, absolute bundle dir and rootfs.
    pub bundle: &'a Bundle,
    /// The container's directory in the state store: the backend may keep its own
    /// files there (control sockets, logs); it is removed at delete.
    pub state_dir: &'a Path,
    /// With `process.terminal`: where to send the pty master ([`super::console`]),
    /// before `boot` or `build` returns. `None` with a terminal happens only for a
    /// foreground `run`: the terminal is then the caller's own stdio, which the host
    /// process inherits.
    pub console_socket: Option<&'a Path>,
    /// The VM's size (from annotations).
    pub vm: VmResources,
}

/// What `exec` hands the backend.
#[derive(Debug)]
pub struct ExecRequest<'a> {
    /// The process to run, checked (args non-empty, known capabilities and rlimits).
    pub process: &'a Process,
    /// With `process.terminal`: where to send the pty master.
    pub console_socket: Option<&'a Path>,
    /// `--detach`: the caller returns at once (the proxy's pid goes to `--pid-file`);
    /// otherwise the caller waits for the proxy and exits with its status, so the
    /// proxy relays the caller's stdio.
    pub detach: bool,
}

/// One process inside the container, for `husk ps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestProcess {
    /// Its pid in the container.
    pub pid: i32,
    /// Its command line, space-separated.
    pub command: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No microVM backend in this build yet.
    #[error(
        "cannot {0}: the VM backend is not wired yet (husk runs every container in a microVM, \
         and the microVM sandbox is not connected to the OCI commands in this build)"
    )]
    NotWired(&'static str),
    /// The process's executable is missing; the words are what podman maps to exit 127.
    #[error("{0}: executable file not found in $PATH: no such file or directory")]
    ExecutableNotFound(String),
    /// The words are what podman maps to exit 126.
    #[error("{0}: permission denied")]
    PermissionDenied(String),
    #[error("{what}: {message}")]
    Failed { what: String, message: String },
}

/// What the lifecycle needs from a container's microVM. Every call but `boot` gets a
/// container whose lock the caller holds.
pub trait Backend {
    /// First half of `create`: start the container's host process (the VMM) and its
    /// sandbox, up to where the container's environment exists but the container is
    /// not built. Returns the host process (a child of this process). prestart and
    /// createRuntime hooks run after this. The caller holds the container's lock (an
    /// `flock` on a close-on-exec fd): the host process must be exec'd, not merely
    /// forked, so that the lock does not outlive `create` in it.
    fn boot(&self, request: &CreateRequest<'_>) -> Result<HostProcess, BackendError>;

    /// Second half of `create`: build the container (the agent sets up its root,
    /// mounts, namespaces) with its init ready to run but not running. createContainer
    /// hooks run after this.
    fn build(&self, container: &Container, request: &CreateRequest<'_>)
        -> Result<(), BackendError>;

    /// Let the init process run (`start`).
    fn start(&self, container: &Container) -> Result<(), BackendError>;

    /// Send `signal` to the init process, or with `all` to every process of the
    /// container.
    fn kill(&self, container: &Container, signal: Signal, all: bool) -> Result<(), BackendError>;

    /// Freeze every process of the container (or the whole VM).
    fn pause(&self, container: &Container) -> Result<(), BackendError>;

    fn resume(&self, container: &Container) -> Result<(), BackendError>;

    /// Start a process in the running container; returns the host process that
    /// stands for it (a child of this process).
    fn exec(
        &self,
        container: &Container,
        request: &ExecRequest<'_>,
    ) -> Result<HostProcess, BackendError>;

    /// The container's processes.
    fn processes(&self, container: &Container) -> Result<Vec<GuestProcess>, BackendError>;

    /// Release everything the backend holds for a container whose host process is
    /// gone (`delete`, or a `create` that failed after `boot`). The runtime has
    /// already killed the host process (SIGKILL) if it was still alive.
    fn destroy(&self, container: &Container) -> Result<(), BackendError>;
}

/// The backend until the microVM one is wired in: it cannot create anything, so no
/// container it is asked about can be running; only clean-up of a stopped container
/// (nothing to clean) succeeds.
#[derive(Debug, Default)]
pub struct Unwired;

impl Backend for Unwired {
    fn boot(&self, _: &CreateRequest<'_>) -> Result<HostProcess, BackendError> {
        Err(BackendError::NotWired("create a container"))
    }
    fn build(&self, _: &Container, _: &CreateRequest<'_>) -> Result<(), BackendError> {
        Err(BackendError::NotWired("create a container"))
    }
    fn start(&self, _: &Container) -> Result<(), BackendError> {
        Err(BackendError::NotWired("start a container"))
    }
    fn kill(&self, _: &Container, _: Signal, _: bool) -> Result<(), BackendError> {
        Err(BackendError::NotWired("signal a container"))
    }
    fn pause(&self, _: &Container) -> Result<(), BackendError> {
        Err(BackendError::NotWired("pause a container"))
    }
    fn resume(&self, _: &Container) -> Result<(), BackendError> {
        Err(BackendError::NotWired("resume a container"))
    }
    fn exec(&self, _: &Container, _: &ExecRequest<'_>) -> Result<HostProcess, BackendError> {
        Err(BackendError::NotWired("exec in a container"))
    }
    fn processes(&self, _: &Container) -> Result<Vec<GuestProcess>, BackendError> {
        Err(BackendError::NotWired("list a container's processes"))
    }
    fn destroy(&self, _: &Container) -> Result<(), BackendError> {
        Ok(())
    }
}

/// The backend the CLI uses: one microVM per container.
pub fn default_backend() -> Box<dyn Backend> {
    Box::new(super::sandbox_backend::SandboxBackend)
}
