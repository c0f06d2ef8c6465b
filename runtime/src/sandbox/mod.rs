//! A sandbox: one microVM running husk's agent, with a host directory as the container's
//! rootfs (and more as volumes), reachable through an [`AgentClient`]. The library API
//! under `husk vm run`, and later `husk create` and the containerd shim.
//!
//! ```text
//! Sandbox::start ─ check dirs ─ /run/husk/vm/<id>/ (0700) ─ bind vsock.sock_1026
//!    ├─ Vm::new + virtio-rng, virtio-vsock (CID 3, vsock.sock), virtio-fs rootfs, vol0..
//!    ├─ thread "husk-vm": vm.run()
//!    ├─ wait for AgentEvent::Ready on vsock.sock_1026 (or Fatal, the VM ending, deadline)
//!    └─ MountShare rootfs -> /run/husk/rootfs, vol<i> -> /run/husk/rootfs/<GUEST>
//! caller: agent() ─ CreateContainer(root.path = rootfs_path()) / StartContainer / Wait
//! Sandbox::shutdown ─ Shutdown request (the guest syncs, answers) ─ VM stopped, joined
//! drop (every path, errors included) ─ stop the VM, join it, remove the state dir
//! ```
//!
//! The one design decision: the VM runs on a thread of the caller's process (the VMM is a
//! library), so *everything* a sandbox owns is tied to the [`Sandbox`] value and released
//! by its `Drop`. Callers that must survive SIGINT/SIGTERM block those signals and turn
//! them into a cancel flag ([`SandboxConfig::cancel`]) or a forwarded signal, so that
//! the drop always runs.

pub mod agent_client;
pub mod console;
pub mod devices;
pub mod events;
pub mod relay;
pub mod spec;
pub mod state_dir;
pub mod terminal;
pub mod volume;

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_protocol::{validate_id, ProtocolError, HOST_EVENT_PORT};

pub use agent_client::{AgentClient, AgentClientError};
pub use console::ConsoleTail;
pub use devices::DeviceError;
pub use events::EventError;
pub use relay::{Relay, RelayError, SignalForwarder, StdioMode};
pub use spec::{command_spec, Command};
pub use state_dir::{StateDir, StateDirError, DEFAULT_STATE_ROOT};
pub use volume::{check_dir, Share, Volume, VolumeError};

use crate::vmm::{ConsoleOutput, StopHandle, Vm, VmConfig, VmExitReason, DEFAULT_CMDLINE};
use events::{EventListener, WaitEnd};

/// Guest path where the rootfs share is mounted: the container's `root.path`.
pub const ROOTFS_GUEST_PATH: &str = "/run/husk/rootfs";
/// Tells the agent to serve the host over vsock (rather than report ready and power off,
/// which is `husk vm boot`'s mode): said explicitly, so a guest whose vsock device did not
/// come up fails loudly instead of powering off as if all were well.
pub const AGENT_SERVE_PARAM: &str = "husk.mode=serve";
/// Name of the vsock device's unix socket in the state directory (what an exec proxy
/// connects to: `<state dir>/vsock.sock`).
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// How long a VM whose agent closed the connection instead of acknowledging `Shutdown`
/// gets to end by itself.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a caller that lost the agent connection waits for the VM to end, to name
/// why it was lost ([`Sandbox::ended_by_itself`]).
pub const VM_END_GRACE: Duration = Duration::from_secs(2);

/// Everything that can go wrong with a sandbox; each message is one sentence.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("invalid sandbox id: {0}")]
    Id(husk_protocol::AgentError),
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error("cannot create the console file {path}: {source}")]
    Console {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Events(#[from] EventError),
    #[error(transparent)]
    Vm(#[from] crate::vmm::Error),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("cannot start the VM thread: {0}")]
    Thread(std::io::Error),
    #[error("the VM ended before its agent was ready: {0}")]
    EndedEarly(String),
    #[error("the VM ended just after its agent was ready: {0}")]
    EndedAfterReady(String),
    #[error("the guest agent was not ready after {secs} s{console}")]
    ReadyTimeout { secs: u64, console: String },
    #[error("interrupted while the VM was booting")]
    Cancelled,
    #[error(transparent)]
    Agent(#[from] AgentClientError),
    #[error("{what}: {source}")]
    Request { what: String, source: ProtocolError },
    #[error("the VM thread panicked")]
    VmPanicked,
}

/// A sandbox to start. [`SandboxConfig::new`] fills in husk's defaults.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Names the state directory and the guest's hostname: `[A-Za-z0-9_.+-]`, 1..=1024.
    pub id: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Appended to husk's kernel command line.
    pub cmdline_extra: Option<String>,
    /// Host directory shared as the container's root.
    pub rootfs: PathBuf,
    pub volumes: Vec<Volume>,
    /// More host directories, each mounted at its own absolute guest path.
    pub shares: Vec<Share>,
    /// Copy of the guest's serial console (debugging).
    pub console: Option<PathBuf>,
    /// Parent of the state directory ([`DEFAULT_STATE_ROOT`]).
    pub state_root: PathBuf,
    /// How long the agent has to report ready.
    pub ready_timeout: Duration,
    /// Bound on every request except `Wait`.
    pub request_timeout: Duration,
    /// Set (e.g. from a signal) to abandon the boot: `start` returns `Cancelled`.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl SandboxConfig {
    pub fn new(id: impl Into<String>, kernel: PathBuf, initrd: PathBuf, rootfs: PathBuf) -> Self {
        Self {
            id: id.into(),
            vcpus: 1,
            memory_mib: 128,
            kernel,
            initrd,
            cmdline_extra: None,
            rootfs,
            volumes: Vec::new(),
            shares: Vec::new(),
            console: None,
            state_root: PathBuf::from(DEFAULT_STATE_ROOT),
            ready_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            cancel: None,
        }
    }

    /// The checks that need no VM: the id, the rootfs and every volume's host directory.
    pub fn check(&self) -> Result<(), SandboxError> {
        validate_id(&self.id).map_err(SandboxError::Id)?;
        check_dir("--rootfs", &self.rootfs)?;
        for v in &self.volumes {
            check_dir("--volume", &v.host)?;
        }
        for s in &self.shares {
            check_dir("share", &s.host)?;
        }
        Ok(())
    }
}

/// A sandbox id unique on this host for this process's lifetime: `husk-<pid>-<n>`.
pub fn unique_id() -> String {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "husk-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Where a sandbox's time went (for `--timings` and the benchmarks).
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// `start` called.
    pub started: Instant,
    /// The VM thread spawned (VMM setup done).
    pub vm_running: Instant,
    /// The agent's Ready arrived.
    pub ready: Instant,
    /// The guest's own clock at Ready (CLOCK_BOOTTIME, µs).
    pub guest_boottime_us: u64,
    /// Every share mounted: `start` returns.
    pub mounted: Instant,
}

/// The VM's thread and how to stop it.
struct VmThread {
    stop: StopHandle,
    thread: Option<JoinHandle<Result<VmExitReason, crate::vmm::Error>>>,
}

impl VmThread {
    fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Joins the thread (stopping the VM first if `stop`); `None` if already joined.
    fn join(&mut self, stop: bool) -> Option<Result<VmExitReason, SandboxError>> {
        if stop {
            self.stop.stop();
        }
        let t = self.thread.take()?;
        Some(match t.join() {
            Ok(r) => r.map_err(SandboxError::Vm),
            Err(_) => Err(SandboxError::VmPanicked),
        })
    }

    /// Joins a VM that ended by itself and says how, in a few words.
    fn describe_end(&mut self) -> String {
        match self.join(false) {
            Some(Ok(VmExitReason::Reset)) => "the guest reset".to_string(),
            Some(Ok(VmExitReason::TripleFault)) => "the guest triple-faulted".to_string(),
            Some(Ok(reason)) => format!("{reason:?}"),
            Some(Err(e)) => e.to_string(),
            None => "unknown".to_string(),
        }
    }

    /// Waits up to `grace` for the VM to end by itself; returns whether it did.
    fn ended_within(&self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        while !self.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.is_finished()
    }
}

/// A running microVM with its agent ready and its shares mounted. Dropping it stops the
/// VM, joins its threads and removes its state directory.
pub struct Sandbox {
    // Drop order matters: the VM (and its vsock device, which owns the sockets) first.
    vm: VmThread,
    events: Option<EventListener>,
    /// The agent's event connection, held open: it reports a later failure there.
    _event_conn: Option<UnixStream>,
    agent: AgentClient,
    console: ConsoleTail,
    timings: Timings,
    id: String,
    state: StateDir,
}

impl Sandbox {
    /// Boots the sandbox and returns once its agent is ready and every share mounted.
    /// On error nothing is left: no VM, no thread, no state directory.
    pub fn start(config: SandboxConfig) -> Result<Self, SandboxError> {
        let started = Instant::now();
        config.check()?;
        let state = StateDir::create(&config.state_root, &config.id)?;
        let uds = state.path().join(VSOCK_SOCKET);
        let events = EventListener::bind(&uds, HOST_EVENT_PORT)?;
        let console = ConsoleTail::default();
        let tee = match &config.console {
            Some(path) => Some(File::create(path).map_err(|source| SandboxError::Console {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let mut cmdline = format!("{DEFAULT_CMDLINE} {AGENT_SERVE_PARAM}");
        if let Some(extra) = config
            .cmdline_extra
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            cmdline.push(' ');
            cmdline.push_str(extra.trim());
        }
        let vm_config = VmConfig {
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            cmdline,
            console: ConsoleOutput::Sink(console.sink(tee)),
            ..VmConfig::new(config.kernel.clone(), Some(config.initrd.clone()))
        };
        let mut vm = Vm::new(vm_config)?;
        devices::attach(
            &mut vm,
            &uds,
            &config.rootfs,
            &config.volumes,
            &config.shares,
        )?;
        let stop = vm.stop_handle();
        let thread = std::thread::Builder::new()
            .name("husk-vm".into())
            // vm.run only spawns and joins the vCPU threads.
            .stack_size(256 << 10)
            .spawn(move || vm.run())
            .map_err(SandboxError::Thread)?;
        let vm_running = Instant::now();
        let mut sandbox = Sandbox {
            vm: VmThread {
                stop,
                thread: Some(thread),
            },
            events: Some(events),
            _event_conn: None,
            agent: AgentClient::new(uds, Some(config.request_timeout)),
            console,
            timings: Timings {
                started,
                vm_running,
                ready: vm_running,
                guest_boottime_us: 0,
                mounted: vm_running,
            },
            id: config.id.clone(),
            state,
        };
        sandbox.wait_ready(&config)?;
        if let Err(e) = sandbox.mount_shares(&config) {
            // Losing the agent is the symptom; a VM that ended is the cause.
            return Err(match sandbox.ended_by_itself(VM_END_GRACE) {
                Some(how) => SandboxError::EndedAfterReady(format!("{how} ({e})")),
                None => e,
            });
        }
        sandbox.timings.mounted = Instant::now();
        Ok(sandbox)
    }

    fn wait_ready(&mut self, config: &SandboxConfig) -> Result<(), SandboxError> {
        let events = self.events.take().expect("the listener is set until ready");
        let cancel = config.cancel.clone();
        let outcome = events.wait_ready(
            self.timings.started + config.ready_timeout,
            config.request_timeout,
            || self.vm.is_finished(),
            || cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)),
        )?;
        match outcome {
            Ok((boottime_us, conn)) => {
                self._event_conn = Some(conn);
                self.timings.ready = Instant::now();
                self.timings.guest_boottime_us = boottime_us;
                Ok(())
            }
            Err(WaitEnd::Cancelled) => Err(SandboxError::Cancelled),
            Err(WaitEnd::TimedOut) => Err(SandboxError::ReadyTimeout {
                secs: config.ready_timeout.as_secs(),
                console: self.console.describe(),
            }),
            Err(WaitEnd::VmGone) => {
                let how = self.vm.describe_end();
                Err(SandboxError::EndedEarly(format!(
                    "{how}{}",
                    self.console.describe()
                )))
            }
        }
    }

    fn mount_shares(&self, config: &SandboxConfig) -> Result<(), SandboxError> {
        let mut control = self.agent.control()?;
        let mut mount = |tag: &str, target: &str, ro: bool| {
            control
                .mount_share(tag, target, ro)
                .map_err(|source| SandboxError::Request {
                    what: format!("cannot mount share {tag:?} at {target} in the guest"),
                    source,
                })
        };
        mount(devices::ROOTFS_TAG, ROOTFS_GUEST_PATH, false)?;
        for (i, v) in config.volumes.iter().enumerate() {
            let target = format!("{ROOTFS_GUEST_PATH}{}", v.guest);
            mount(&devices::volume_tag(i), &target, v.read_only)?;
        }
        for s in &config.shares {
            mount(&s.tag, &s.guest, s.read_only)?;
        }
        Ok(())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Opens control connections and stdio streams to the agent.
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// The container's `root.path`: where the rootfs share is mounted in the guest.
    pub fn rootfs_path(&self) -> &'static str {
        ROOTFS_GUEST_PATH
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// The end of the guest's serial console (for error messages).
    pub fn console(&self) -> &ConsoleTail {
        &self.console
    }

    /// Freezes the whole VM (every vCPU parked outside the guest) within `timeout`.
    pub fn pause(&self, timeout: Duration) -> Result<(), SandboxError> {
        self.vm
            .stop
            .pause(timeout)
            .map_err(|e| SandboxError::Vm(crate::vmm::Error::Vcpu(e)))
    }

    /// Lets a paused VM run again.
    pub fn resume(&self) {
        self.vm.stop.resume();
    }

    /// A handle that pauses, resumes or stops the VM from another thread.
    pub fn vm_handle(&self) -> crate::vmm::StopHandle {
        self.vm.stop.clone()
    }

    /// If the VM ends by itself within `grace` (the guest powered off, triple-faulted or
    /// KVM failed), how it ended, with the console's last line; the VM is joined then.
    /// For a caller that lost the agent and wants the reason rather than the symptom.
    pub fn ended_by_itself(&mut self, grace: Duration) -> Option<String> {
        if !self.vm.ended_within(grace) {
            return None;
        }
        Some(format!(
            "{}{}",
            self.vm.describe_end(),
            self.console.describe()
        ))
    }

    /// Asks the agent to flush the guest's filesystems and power off; once it has
    /// answered, stops the VM and joins it. The state directory goes when `self` is
    /// dropped, here.
    pub fn shutdown(mut self) -> Result<VmExitReason, SandboxError> {
        if self.vm.is_finished() {
            // Nothing left to flush or to ask: the guest is gone.
            return self.vm.join(false).unwrap_or(Ok(VmExitReason::Stopped));
        }
        let asked = self
            .agent
            .control()
            .map_err(SandboxError::from)
            .and_then(|mut c| {
                c.shutdown().map_err(|source| SandboxError::Request {
                    what: "shutdown".into(),
                    source,
                })
            });
        // "ok" comes after the guest flushed every filesystem to the host: nothing the
        // guest does later matters, so the VM stops now rather than after its own
        // power-off (seconds on a loaded host, all of them in a container's stop time).
        // A connection closed before the answer came still asked: an agent that powers
        // off at once can beat its own answer out of the guest. The VM ending by
        // itself within the grace is then the answer.
        let closed = matches!(
            &asked,
            Err(SandboxError::Request {
                source: ProtocolError::Closed,
                ..
            })
        );
        let by_itself = closed && self.vm.ended_within(SHUTDOWN_GRACE);
        let ended = self.vm.join(true);
        if !by_itself {
            asked?;
        }
        ended.unwrap_or(Ok(VmExitReason::Stopped))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Every path: the VM stopped and joined before its sockets and directory go.
        let _ = self.vm.join(true);
        self.events.take();
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}
