//! The VM monitor: the host process that stands for one OCI container (its pid is the
//! container's pid). `husk create` spawns it (`husk sandbox-monitor`, an exec of husk
//! itself, so the container's lock does not leak into it); it boots the container's
//! microVM in its own threads, then serves the lifecycle commands on a control socket
//! ([`control`]) until the container's init exits, and exits with the init's status
//! (128+N for signal N). Its fds 0/1/2, inherited from `husk create` (conmon's pipes),
//! are the init's stdio.
//!
//! ```text
//! husk create ─ monitor.json ─ spawn ─> husk sandbox-monitor --state-dir D --ready-fd 3
//!                                         ├─ join linux.cgroupsPath (cgroup.rs)
//!                                         ├─ own mount ns, bind sources at D/binds (binds.rs)
//!                                         ├─ bind D/monitor.sock
//!                                         ├─ Sandbox::start (VM threads, agent ready, shares)
//!  <──────────────── "ok" / "error: ..." ─┤ ready pipe
//! husk create: hooks, Build ─────────────>├─ CreateContainer (spec already guest-local)
//! husk start:  Start ────────────────────>├─ StartContainer; a waiter thread Waits
//!                          init exits ───>└─ drain output, Shutdown, exit(status)
//! ```
//!
//! Everything the monitor leaves when it is SIGKILLed is in the state directory (files,
//! sockets) or in the cgroups listed there; its mounts and its VM die with it.

pub mod binds;
pub mod cgroup;
pub mod control;

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use husk_protocol::{AgentError, ProcessRef, ProtocolError, StdioConfig, StreamKind};
use nix::sys::signal::{SigSet, Signal};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::sandbox::relay::{FORWARDED_SIGNALS, OUTPUT_DRAIN};
use crate::sandbox::stdio::{relay, std_fd};
use crate::sandbox::{Sandbox, SandboxConfig, SandboxError, Share};
use binds::BindSource;
use control::{MonitorRequest, MonitorResponse, ProcessEntry};

/// The monitor's configuration, written by `husk create` in the state directory.
pub const CONFIG_FILE: &str = "monitor.json";
/// Where the sandbox keeps its own state (the vsock sockets): `<state dir>/vm`.
pub const SANDBOX_ID: &str = "vm";
/// Bound on one agent request (building a container on a loaded emulated test host
/// took over a minute; natively milliseconds): only a stuck agent ever reaches it.
pub const AGENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the vCPUs get to stop for a pause.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the monitor checks that its VM still runs.
const VM_CHECK: Duration = Duration::from_millis(500);

/// What `husk create` tells the monitor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MonitorConfig {
    pub id: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The spec as the agent gets it: root.path and every bind source guest paths.
    pub spec: Spec,
    pub binds: Vec<BindSource>,
    /// `linux.cgroupsPath`, if any.
    pub cgroups_path: Option<String>,
    pub ready_timeout_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot read the monitor's configuration {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Bind(#[from] binds::BindError),
    #[error("cannot listen on {path}: {source}")]
    Listen { path: PathBuf, source: io::Error },
    #[error("cannot set up the monitor's signal handling: {0}")]
    Signals(String),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

impl MonitorConfig {
    pub fn load(state_dir: &Path) -> Result<MonitorConfig, MonitorError> {
        let path = state_dir.join(CONFIG_FILE);
        let err = |message: String| MonitorError::Config {
            path: path.clone(),
            message,
        };
        let bytes = std::fs::read(&path).map_err(|e| err(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))
    }
}

/// What the monitor's main loop reacts to.
enum Event {
    Request(UnixStream),
    Signal(Signal),
    InitExited(Result<i32, String>),
}

/// The body of `husk sandbox-monitor`: boots, reports on `ready_fd`, serves; returns
/// the exit status (the init's, or 255 when the VM was lost).
pub fn main(state_dir: &Path, ready_fd: RawFd) -> i32 {
    // SAFETY: the parent passed this fd to us for exactly this use; nothing else owns it.
    let mut ready = unsafe { File::from_raw_fd(ready_fd) };
    let (events_tx, events) = mpsc::channel();
    let monitor = match boot(state_dir, events_tx.clone()) {
        Ok(m) => m,
        Err(e) => {
            let _ = writeln!(ready, "error {}", one_line(&e.to_string()));
            return 1;
        }
    };
    let _ = writeln!(ready, "ok");
    drop(ready);
    monitor.serve(events, events_tx)
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

struct Monitor {
    config: MonitorConfig,
    sandbox: Sandbox,
    socket: PathBuf,
}

fn boot(state_dir: &Path, events: mpsc::Sender<Event>) -> Result<Monitor, MonitorError> {
    let config = MonitorConfig::load(state_dir)?;
    // Both need a single-threaded process: before anything spawns a thread.
    if let Some(path) = &config.cgroups_path {
        cgroup::join(path, &state_dir.join(cgroup::CGROUPS_FILE))?;
    }
    binds::unshare_mounts()?;
    binds::mount_all(&state_dir.join(binds::BINDS_DIR), &config.binds)?;
    start_signal_thread(events.clone())?;

    let socket = state_dir.join(control::SOCKET);
    let listener = UnixListener::bind(&socket).map_err(|source| MonitorError::Listen {
        path: socket.clone(),
        source,
    })?;
    let mut sandbox_config = SandboxConfig::new(
        SANDBOX_ID,
        config.kernel.clone(),
        config.initrd.clone(),
        config.rootfs.clone(),
    );
    sandbox_config.vcpus = config.vcpus;
    sandbox_config.memory_mib = config.memory_mib;
    sandbox_config.state_root = state_dir.to_path_buf();
    sandbox_config.ready_timeout = Duration::from_secs(config.ready_timeout_secs);
    sandbox_config.request_timeout = AGENT_REQUEST_TIMEOUT;
    if !config.binds.is_empty() {
        sandbox_config.shares.push(Share {
            tag: binds::BINDS_TAG.into(),
            host: state_dir.join(binds::BINDS_DIR),
            guest: binds::GUEST_BINDS.into(),
            read_only: false,
        });
    }
    let sandbox = match Sandbox::start(sandbox_config) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&socket);
            return Err(e.into());
        }
    };
    std::thread::Builder::new()
        .name("husk-monitor-accept".into())
        .stack_size(128 << 10)
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if events.send(Event::Request(stream)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| MonitorError::Signals(format!("cannot start the accept thread: {e}")))?;
    Ok(Monitor {
        config,
        sandbox,
        socket,
    })
}

/// Blocks the forwarded signals (in this thread, so in every later one) and receives
/// them on a thread of their own.
fn start_signal_thread(events: mpsc::Sender<Event>) -> Result<(), MonitorError> {
    let mut set = SigSet::empty();
    // The signals a relay forwards: the same set as `husk vm run` and the exec proxy.
    for sig in FORWARDED_SIGNALS {
        set.add(sig);
    }
    set.thread_block()
        .map_err(|e| MonitorError::Signals(e.to_string()))?;
    std::thread::Builder::new()
        .name("husk-monitor-signals".into())
        .stack_size(128 << 10)
        .spawn(move || loop {
            if let Ok(sig) = set.wait() {
                if events.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| MonitorError::Signals(e.to_string()))?;
    Ok(())
}

/// The answer for an agent's refusal or a lost connection.
fn protocol_error(what: &str, e: ProtocolError) -> MonitorResponse {
    match e {
        ProtocolError::Agent(AgentError { kind, message, .. }) => MonitorResponse::Error {
            kind: Some(kind),
            message,
        },
        other => MonitorResponse::Error {
            kind: None,
            message: format!("{what}: {other}"),
        },
    }
}

fn failure(message: impl Into<String>) -> MonitorResponse {
    MonitorResponse::Error {
        kind: None,
        message: message.into(),
    }
}

/// The monitor's state while it serves.
struct Serving {
    built: bool,
    paused: bool,
    /// Signals asked for while paused, delivered at resume.
    pending: Vec<(i32, bool)>,
}

impl Monitor {
    fn init(&self) -> ProcessRef {
        ProcessRef::init(self.config.id.clone())
    }

    fn serve(self, events: mpsc::Receiver<Event>, events_tx: mpsc::Sender<Event>) -> i32 {
        let mut state = Serving {
            built: false,
            paused: false,
            pending: Vec::new(),
        };
        let code = loop {
            let event = match events.recv_timeout(VM_CHECK) {
                Ok(e) => e,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.sandbox.vm_ended() {
                        eprintln!(
                            "husk: container {}: the VM ended unexpectedly{}",
                            self.config.id,
                            self.sandbox.console().describe()
                        );
                        break 255;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break 255,
            };
            match event {
                Event::Request(stream) => {
                    let request = match control::read_message::<MonitorRequest>(&stream) {
                        Ok(r) => r,
                        Err(_) => continue,
                    };
                    let (response, exit) = self.handle(request, &mut state, &events_tx);
                    let _ = control::write_message(&stream, &response);
                    if let Some(code) = exit {
                        break code;
                    }
                }
                Event::Signal(sig) => {
                    if !state.built {
                        // Nothing runs yet that could receive it: end, as the signal's
                        // default action would have ended this process.
                        break 128 + sig as i32;
                    }
                    let (_, exit) = self.handle(
                        MonitorRequest::Kill {
                            signal: sig as i32,
                            all: false,
                        },
                        &mut state,
                        &events_tx,
                    );
                    if let Some(code) = exit {
                        break code;
                    }
                }
                Event::InitExited(Ok(code)) => break code,
                Event::InitExited(Err(message)) => {
                    eprintln!("husk: container {}: {message}", self.config.id);
                    break 255;
                }
            }
        };
        wind_down(events);
        if state.paused {
            self.sandbox.resume();
        }
        if let Err(e) = self.sandbox.shutdown() {
            eprintln!("husk: warning: the VM did not shut down cleanly: {e}");
        }
        let _ = std::fs::remove_file(&self.socket);
        code
    }

    /// Answers one request; `Some(status)` when the monitor must end with it.
    fn handle(
        &self,
        request: MonitorRequest,
        state: &mut Serving,
        events: &mpsc::Sender<Event>,
    ) -> (MonitorResponse, Option<i32>) {
        if state.paused
            && !matches!(
                request,
                MonitorRequest::Resume | MonitorRequest::Pause | MonitorRequest::Kill { .. }
            )
        {
            return (
                failure("the container is paused (its whole VM is frozen): resume it first"),
                None,
            );
        }
        let agent = self.sandbox.agent();
        let response = match request {
            MonitorRequest::Build => {
                if state.built {
                    failure("the container is already built")
                } else {
                    match self.build(events) {
                        Ok(()) => {
                            state.built = true;
                            MonitorResponse::Ok
                        }
                        Err(r) => r,
                    }
                }
            }
            MonitorRequest::Start => match agent.control() {
                Ok(mut c) => match c.start_container(&self.config.id) {
                    Ok(()) => MonitorResponse::Ok,
                    Err(e) => protocol_error("start the container", e),
                },
                Err(e) => failure(e.to_string()),
            },
            MonitorRequest::Kill { signal, all } => {
                if state.paused {
                    if signal == libc::SIGKILL {
                        // A frozen VM cannot deliver it: ending the VM kills every
                        // process in it, as SIGKILL would have.
                        return (MonitorResponse::Ok, Some(128 + libc::SIGKILL));
                    }
                    state.pending.push((signal, all));
                    MonitorResponse::Ok
                } else {
                    self.signal(signal, all)
                }
            }
            MonitorRequest::Pause => match self.sandbox.pause(PAUSE_TIMEOUT) {
                Ok(()) => {
                    state.paused = true;
                    MonitorResponse::Ok
                }
                Err(e) => failure(format!("cannot pause the VM: {e}")),
            },
            MonitorRequest::Resume => {
                self.sandbox.resume();
                state.paused = false;
                for (signal, all) in std::mem::take(&mut state.pending) {
                    let _ = self.signal(signal, all);
                }
                MonitorResponse::Ok
            }
            MonitorRequest::Processes => self.processes(),
        };
        (response, None)
    }

    fn signal(&self, signal: i32, all: bool) -> MonitorResponse {
        match self.sandbox.agent().control() {
            Ok(mut c) => match c.signal(self.init(), signal, all) {
                Ok(()) => MonitorResponse::Ok,
                Err(e) => protocol_error("signal the container", e),
            },
            Err(e) => failure(e.to_string()),
        }
    }

    fn processes(&self) -> MonitorResponse {
        list_processes(&self.sandbox, &self.config.id)
    }

    /// Opens the init's streams, has the agent build the container, starts relaying
    /// stdio and waiting for the init.
    fn build(&self, events: &mpsc::Sender<Event>) -> Result<(), MonitorResponse> {
        let agent = self.sandbox.agent();
        let init = self.init();
        let stdio = StdioConfig {
            stdin: true,
            stdout: true,
            stderr: true,
            terminal: false,
        };
        let mut streams = Vec::new();
        for kind in stdio.kinds() {
            let s = agent
                .open_stream(&init, kind)
                .map_err(|e| failure(format!("cannot open the init's {kind:?} stream: {e}")))?;
            streams.push((kind, s));
        }
        let mut control = agent.control().map_err(|e| failure(e.to_string()))?;
        let mut waiter = agent.control().map_err(|e| failure(e.to_string()))?;
        control
            .create_container(&self.config.id, self.config.spec.clone(), stdio)
            .map_err(|e| protocol_error("build the container", e))?;
        let (done_tx, done_rx) = mpsc::channel();
        let mut outputs = 0;
        for (kind, stream) in streams {
            let started = match kind {
                StreamKind::Stdin => {
                    let eof = stream.try_clone();
                    relay("husk-stdin", std_fd(0), stream, None, move || {
                        if let Ok(s) = eof {
                            let _ = s.shutdown(std::net::Shutdown::Write);
                        }
                    })
                }
                StreamKind::Stdout | StreamKind::Stderr => {
                    outputs += 1;
                    let fd = if kind == StreamKind::Stdout { 1 } else { 2 };
                    relay(
                        "husk-output",
                        stream,
                        std_fd(fd),
                        Some(done_tx.clone()),
                        || {},
                    )
                }
                StreamKind::Tty => Ok(()),
            };
            started.map_err(|e| failure(format!("cannot start a relay thread: {e}")))?;
        }
        drop(done_tx);
        let events = events.clone();
        std::thread::Builder::new()
            .name("husk-monitor-wait".into())
            .stack_size(128 << 10)
            .spawn(move || {
                let status = waiter
                    .get_ref()
                    .set_read_timeout(None)
                    .map_err(ProtocolError::Io)
                    .and_then(|()| waiter.wait(init));
                // Everything the init wrote before it exited is on its way.
                let deadline = std::time::Instant::now() + OUTPUT_DRAIN;
                for _ in 0..outputs {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if done_rx.recv_timeout(left).is_err() {
                        break;
                    }
                }
                let result = status
                    .map(|s| s.code())
                    .map_err(|e| format!("lost the container's init: {e}"));
                let _ = events.send(Event::InitExited(result));
            })
            .map_err(|e| failure(format!("cannot start the wait thread: {e}")))?;
        Ok(())
    }
}

/// Answers the control socket on a thread of its own while the monitor shuts its VM down
/// (seconds on a loaded host): this process is still the container's and `state` says
/// running, so `kill` must not fail (podman sends SIGKILL when a stop takes long, and
/// fails the stop if the runtime refuses while this pid lives). The init is gone: a
/// signal has nothing left to reach, as kill(2) of an exited, unreaped process succeeds.
fn wind_down(events: mpsc::Receiver<Event>) {
    let spawned = std::thread::Builder::new()
        .name("husk-monitor-wind-down".into())
        .stack_size(128 << 10)
        .spawn(move || {
            for event in events {
                let Event::Request(stream) = event else {
                    continue;
                };
                let Ok(request) = control::read_message::<MonitorRequest>(&stream) else {
                    continue;
                };
                let _ = control::write_message(&stream, &wind_down_answer(&request));
            }
        });
    if let Err(e) = spawned {
        eprintln!("husk: warning: cannot answer requests while the VM shuts down: {e}");
    }
}

/// What a request gets once the container's init has exited.
fn wind_down_answer(request: &MonitorRequest) -> MonitorResponse {
    match request {
        MonitorRequest::Kill { .. } => MonitorResponse::Ok,
        MonitorRequest::Processes => MonitorResponse::Processes(Vec::new()),
        MonitorRequest::Build
        | MonitorRequest::Start
        | MonitorRequest::Pause
        | MonitorRequest::Resume => failure("the container's init has exited"),
    }
}

/// The container's processes, from the agent.
fn list_processes(sandbox: &Sandbox, id: &str) -> MonitorResponse {
    let listed = sandbox
        .agent()
        .control()
        .map_err(|e| failure(e.to_string()))
        .and_then(|mut c| {
            c.list_processes(id)
                .map_err(|e| protocol_error("list the container's processes", e))
        });
    match listed {
        Ok(list) => MonitorResponse::Processes(
            list.into_iter()
                .map(|p| ProcessEntry {
                    pid: p.pid,
                    command: p.command,
                })
                .collect(),
        ),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request as `husk kill` (or `ps`, `start`) sends it, answered by the wind-down.
    fn ask(events: &mpsc::Sender<Event>, request: &MonitorRequest) -> MonitorResponse {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        control::write_message(&ours, request).unwrap();
        events.send(Event::Request(theirs)).unwrap();
        control::read_message(&ours).unwrap()
    }

    #[test]
    fn after_the_init_exits_kill_succeeds_and_nothing_is_listed() {
        let (tx, rx) = mpsc::channel();
        wind_down(rx);
        // Not requests: ignored, the thread goes on.
        tx.send(Event::Signal(Signal::SIGTERM)).unwrap();
        let kill = MonitorRequest::Kill {
            signal: libc::SIGKILL,
            all: false,
        };
        assert_eq!(ask(&tx, &kill), MonitorResponse::Ok);
        assert_eq!(
            ask(&tx, &MonitorRequest::Processes),
            MonitorResponse::Processes(Vec::new())
        );
        match ask(&tx, &MonitorRequest::Start) {
            MonitorResponse::Error {
                kind: None,
                message,
            } => {
                assert!(message.contains("has exited"), "{message}")
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
}
