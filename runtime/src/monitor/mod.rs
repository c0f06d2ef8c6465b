//! The VM monitor: the host process that stands for one OCI container (its pid is the
//! container's pid). `husk create` spawns it (`husk sandbox-monitor`, an exec of husk
//! itself, so the container's lock does not leak into it); it boots the container's
//! microVM in its own threads, then serves the lifecycle commands on a control socket
//! ([`control`]) until the container's init exits, and exits with the init's status
//! (128+N for signal N). The init's stdio is relayed by [`crate::sandbox::relay`]: the
//! monitor's fds 0/1/2, inherited from `husk create` (conmon's pipes); with
//! `process.terminal`, a pty whose master went to `--console-socket` during `create`, or
//! for a foreground `husk run` the caller's own terminal (see [`InitStdio`]).
//!
//! ```text
//! husk create ─ monitor.json ─ spawn ─> husk sandbox-monitor --state-dir D --ready-fd 3
//!                                         ├─ join linux.cgroupsPath (cgroup.rs)
//!                                         ├─ own mount ns, bind sources at D/binds (binds.rs)
//!                                         ├─ bind D/monitor.sock
//!                                         ├─ Sandbox::start (VM threads, agent ready, shares)
//!  <──────────────── "ok" / "error: ..." ─┤ ready pipe
//! husk create: hooks, Build ─────────────>├─ Relay::open (console master sent), then
//!                                         │  CreateContainer (spec already guest-local);
//!                                         │  a relay thread: stdio, tty size, Wait
//! husk start:  Start ────────────────────>├─ StartContainer
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
use std::sync::{mpsc, Arc};
use std::time::Duration;

use husk_protocol::{AgentError, ProcessRef, ProtocolError};
use nix::sys::signal::{SigSet, Signal};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::sandbox::relay::FORWARDED_SIGNALS;
use crate::sandbox::{
    Relay, Sandbox, SandboxConfig, SandboxError, Share, SignalForwarder, StdioMode, VM_END_GRACE,
};
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
/// How long the init's relay gets to end once the VM is gone, when the monitor ends
/// for another reason than the init's exit.
const RELAY_END: Duration = Duration::from_secs(2);

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
    /// Where the init's stdio goes.
    pub stdio: InitStdio,
}

/// Where a container's init gets its stdio on the host, from `process.terminal` and
/// `--console-socket` (runc's three cases).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitStdio {
    /// No terminal: the monitor's fds 0/1/2 (conmon's pipes) as stdin/stdout/stderr.
    Inherit,
    /// A terminal relayed to the monitor's own terminal (a foreground `husk run`).
    CallerTerminal,
    /// A terminal whose pty master goes to the client on this console socket during
    /// `create` (absolute path).
    ConsoleSocket(PathBuf),
}

impl InitStdio {
    pub fn mode(&self) -> StdioMode<'_> {
        match self {
            InitStdio::Inherit => StdioMode::Inherit,
            InitStdio::CallerTerminal => StdioMode::CallerTerminal,
            InitStdio::ConsoleSocket(socket) => StdioMode::ConsoleSocket(socket),
        }
    }
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
    /// Follows the init's tty size (SIGWINCH) while its relay runs.
    tty_size: Arc<SignalForwarder>,
}

fn boot(state_dir: &Path, events: mpsc::Sender<Event>) -> Result<Monitor, MonitorError> {
    let config = MonitorConfig::load(state_dir)?;
    // Both need a single-threaded process: before anything spawns a thread.
    if let Some(path) = &config.cgroups_path {
        cgroup::join(path, &state_dir.join(cgroup::CGROUPS_FILE))?;
    }
    binds::unshare_mounts()?;
    binds::mount_all(&state_dir.join(binds::BINDS_DIR), &config.binds)?;
    let tty_size = start_signal_threads(events.clone())?;

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
        tty_size,
    })
}

/// Blocks the forwarded signals and SIGWINCH in this thread, so in every later one,
/// before any thread exists (one without them blocked could take a signal with its
/// default action: death, or a lost resize). The forwarded signals are received on a
/// thread of the monitor's own, which turns them into [`Event::Signal`] (a `Kill`
/// request that respects a pause); SIGWINCH goes to the returned forwarder, which
/// passes a resize of the init's tty on while its relay runs.
fn start_signal_threads(events: mpsc::Sender<Event>) -> Result<Arc<SignalForwarder>, MonitorError> {
    let mut set = SigSet::empty();
    // The signals a relay forwards: the same set as `husk vm run` and the exec proxy.
    for sig in FORWARDED_SIGNALS {
        set.add(sig);
    }
    let mut blocked = set;
    blocked.add(Signal::SIGWINCH);
    blocked
        .thread_block()
        .map_err(|e| MonitorError::Signals(e.to_string()))?;
    let tty_size = SignalForwarder::start(&[]).map_err(|e| MonitorError::Signals(e.to_string()))?;
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
    Ok(tty_size)
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

    fn serve(mut self, events: mpsc::Receiver<Event>, events_tx: mpsc::Sender<Event>) -> i32 {
        let mut state = Serving {
            built: false,
            paused: false,
            pending: Vec::new(),
        };
        let mut init_exited = false;
        let mut ended = None;
        let code = loop {
            let event = match events.recv_timeout(VM_CHECK) {
                Ok(e) => e,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(how) = self.sandbox.ended_by_itself(Duration::ZERO) {
                        ended = Some(self.vm_ended(&how));
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
                    let builds_or_starts =
                        matches!(request, MonitorRequest::Build | MonitorRequest::Start);
                    let (response, exit) = self.handle(request, &mut state, &events_tx);
                    // Not the agent's own answer (it failed to reach the agent): if the VM
                    // ended, that is the cause to report.
                    if builds_or_starts
                        && matches!(response, MonitorResponse::Error { kind: None, .. })
                    {
                        if let Some(how) = self.sandbox.ended_by_itself(VM_END_GRACE) {
                            let why = self.vm_ended(&how);
                            let _ = control::write_message(&stream, &failure(why.as_str()));
                            ended = Some(why);
                            break 255;
                        }
                    }
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
                Event::InitExited(Ok(code)) => {
                    init_exited = true;
                    break code;
                }
                Event::InitExited(Err(message)) => {
                    init_exited = true;
                    // Losing the agent is the symptom; a VM that ended is the cause.
                    match self.sandbox.ended_by_itself(VM_END_GRACE) {
                        Some(how) => ended = Some(self.vm_ended(&format!("{how} ({message})"))),
                        None => eprintln!("husk: container {}: {message}", self.config.id),
                    }
                    break 255;
                }
            }
        };
        let init_exits = wind_down(events, ended);
        if state.paused {
            self.sandbox.resume();
        }
        if let Err(e) = self.sandbox.shutdown() {
            eprintln!("husk: warning: the VM did not shut down cleanly: {e}");
        }
        if state.built && !init_exited {
            // The relay still runs; it ends with the VM's connections. Waiting for it
            // lets it put the caller's terminal back (out of raw mode) before exiting.
            let _ = init_exits.recv_timeout(RELAY_END);
        }
        let _ = std::fs::remove_file(&self.socket);
        code
    }

    /// Says why the VM ended by itself: on stderr (the container's log) and in the state
    /// directory ([`control::VM_ENDED`]), where a command that finds this monitor gone or
    /// mute reads it. Returns the sentence.
    fn vm_ended(&self, how: &str) -> String {
        let sentence = format!("the container's VM ended unexpectedly: {how}");
        eprintln!("husk: container {}: {sentence}", self.config.id);
        if let Some(dir) = self.socket.parent() {
            if let Err(e) = std::fs::write(dir.join(control::VM_ENDED), &sentence) {
                eprintln!("husk: warning: cannot record why the VM ended: {e}");
            }
        }
        sentence
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

    /// Opens the init's stdio (a console's master reaches its client here, before
    /// `create` returns), has the agent build the container, then relays the init's
    /// stdio and tty size on a thread until it exits.
    fn build(&self, events: &mpsc::Sender<Event>) -> Result<(), MonitorResponse> {
        let agent = self.sandbox.agent();
        let relay = Relay::open(agent, self.init(), self.config.stdio.mode())
            .map_err(|e| failure(format!("cannot set up the init's stdio: {e}")))?;
        let mut spec = self.config.spec.clone();
        if let Some(process) = spec.process_mut() {
            relay.fit(process);
        }
        let mut control = agent.control().map_err(|e| failure(e.to_string()))?;
        control
            .create_container(&self.config.id, spec, relay.stdio())
            .map_err(|e| protocol_error("build the container", e))?;
        let events = events.clone();
        let tty_size = self.tty_size.clone();
        std::thread::Builder::new()
            .name("husk-monitor-relay".into())
            .stack_size(256 << 10)
            .spawn(move || {
                // Returns once the init exited and its output drained (bounded).
                let result = relay
                    .run(Some(&tty_size))
                    .map(|s| s.code())
                    .map_err(|e| format!("lost the container's init: {e}"));
                let _ = events.send(Event::InitExited(result));
            })
            .map_err(|e| failure(format!("cannot start the relay thread: {e}")))?;
        Ok(())
    }
}

/// Answers the control socket on a thread of its own while the monitor shuts its VM down
/// (seconds on a loaded host): this process is still the container's and `state` says
/// running, so `kill` must not fail (podman sends SIGKILL when a stop takes long, and
/// fails the stop if the runtime refuses while this pid lives). The init is gone: a
/// signal has nothing left to reach, as kill(2) of an exited, unreaped process succeeds.
/// Returns a channel that hears of the init's exit (the wait thread still reports it
/// when the monitor ended for another reason).
fn wind_down(events: mpsc::Receiver<Event>, vm_ended: Option<String>) -> mpsc::Receiver<()> {
    let (exits_tx, exits) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("husk-monitor-wind-down".into())
        .stack_size(128 << 10)
        .spawn(move || {
            for event in events {
                let stream = match event {
                    Event::Request(stream) => stream,
                    Event::InitExited(_) => {
                        let _ = exits_tx.send(());
                        continue;
                    }
                    Event::Signal(_) => continue,
                };
                let Ok(request) = control::read_message::<MonitorRequest>(&stream) else {
                    continue;
                };
                let answer = wind_down_answer(&request, vm_ended.as_deref());
                let _ = control::write_message(&stream, &answer);
            }
        });
    if let Err(e) = spawned {
        eprintln!("husk: warning: cannot answer requests while the VM shuts down: {e}");
    }
    exits
}

/// What a request gets once the container's init has exited, or its VM ended by itself
/// (`vm_ended`: why).
fn wind_down_answer(request: &MonitorRequest, vm_ended: Option<&str>) -> MonitorResponse {
    match request {
        MonitorRequest::Kill { .. } => MonitorResponse::Ok,
        MonitorRequest::Processes => MonitorResponse::Processes(Vec::new()),
        MonitorRequest::Build
        | MonitorRequest::Start
        | MonitorRequest::Pause
        | MonitorRequest::Resume => failure(vm_ended.unwrap_or("the container's init has exited")),
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
        let init_exits = wind_down(rx, None);
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
        // The init's exit, reported late, is passed on.
        tx.send(Event::InitExited(Ok(0))).unwrap();
        init_exits.recv_timeout(Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn after_the_vm_ended_by_itself_start_hears_why() {
        let (tx, rx) = mpsc::channel();
        let why = "the container's VM ended unexpectedly: the guest triple-faulted";
        let _init_exits = wind_down(rx, Some(why.to_string()));
        match ask(&tx, &MonitorRequest::Start) {
            MonitorResponse::Error { message, .. } => assert_eq!(message, why),
            other => panic!("unexpected answer {other:?}"),
        }
        assert_eq!(
            ask(
                &tx,
                &MonitorRequest::Kill {
                    signal: libc::SIGTERM,
                    all: false
                }
            ),
            MonitorResponse::Ok
        );
    }
}
