//! `husk vm run --rootfs DIR [-t] [--volume HOST:GUEST[:ro]]... -- CMD ARGS...`: runs one
//! command with a host directory as its root inside a fresh microVM, like chroot but in a
//! VM, and exits with the command's status (128+N when signal N killed it).
//!
//! stdin, stdout and stderr pass through, each over its own stream; with `-t` the command
//! gets a tty instead, the caller's terminal goes raw (and always comes back) and follows
//! window size changes. SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to husk
//! go to the command; during the boot they abandon it. For that, those signals (and
//! SIGWINCH) are blocked before any thread exists and received by one thread with
//! sigwait: no signal can kill husk past the cleanup of its sandbox.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use husk_protocol::{Client, ProcessRef, ProtocolError, StdioConfig, StreamKind};
use nix::sys::signal::{SigSet, Signal};

use super::terminal::{window_size, RawMode};
use crate::assets::{self, Asset};
use crate::sandbox::stdio::{relay, std_fd};
use crate::sandbox::{
    check_dir, command_spec, unique_id, Command, Sandbox, SandboxConfig, SandboxError, Volume,
};
use crate::vmm::config::check_args;

/// The container's id inside the sandbox (one container per `vm run`).
const CONTAINER_ID: &str = "run";
/// How long stdout/stderr may keep flowing after the command exited (something it left
/// in the background may hold them open).
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// The tty size (rows, cols) when the caller has no terminal to copy it from.
const DEFAULT_TTY_SIZE: (u16, u16) = (24, 80);
/// Signals forwarded to the command.
const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Host directory to run the command in (the container's root filesystem).
    #[arg(long, value_name = "DIR")]
    pub rootfs: PathBuf,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 128)]
    pub memory: u64,
    /// Share host directory HOST at GUEST inside the container (":ro": read-only).
    #[arg(long = "volume", short = 'v', value_name = "HOST:GUEST[:ro]")]
    pub volumes: Vec<String>,
    /// Give the command a terminal (the caller's goes raw meanwhile).
    #[arg(short = 't', long = "tty")]
    pub tty: bool,
    /// Set an environment variable of the command (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory of the command, inside the container.
    #[arg(short = 'w', long = "cwd", value_name = "DIR", default_value = "/")]
    pub cwd: String,
    /// Guest kernel; default: husk's own.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs; default: husk's own (the agent).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Write the guest's serial console to FILE.
    #[arg(long, value_name = "FILE")]
    pub console: Option<PathBuf>,
    /// Give up if the agent is not ready after SECS seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,
    /// Print where the time went, one line on stderr, at the end.
    #[arg(long, hide = true)]
    pub timings: bool,
    /// The command and its arguments (after `--`).
    #[arg(value_name = "CMD", required = true, last = true)]
    pub command: Vec<String>,
}

/// What the signal thread does with a signal, depending on how far the run got.
enum Phase {
    /// No command yet: remember the signal, abandon the boot.
    Booting { pending: Vec<i32> },
    /// The command runs: forward (a control connection of its own: `wait` blocks another).
    Running {
        control: Client<UnixStream>,
        tty: bool,
    },
    /// The command has exited: nothing to forward to.
    Done,
}

struct Forwarder {
    phase: Mutex<Phase>,
    cancel: Arc<AtomicBool>,
}

impl Forwarder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_signal(&self, sig: Signal) {
        let mut phase = self.lock();
        match &mut *phase {
            Phase::Booting { pending } if sig != Signal::SIGWINCH => {
                pending.push(sig as i32);
                self.cancel.store(true, Ordering::Relaxed);
            }
            Phase::Running { control, tty } => {
                let process = ProcessRef::init(CONTAINER_ID);
                // Errors: the command exited meanwhile; `wait` reports what matters.
                if sig == Signal::SIGWINCH {
                    if let (true, Some((rows, cols))) = (*tty, window_size()) {
                        let _ = control.resize_tty(process, rows, cols);
                    }
                } else {
                    let _ = control.signal(process, sig as i32, false);
                }
            }
            _ => {}
        }
    }

    /// Switches to forwarding; sends what arrived before.
    fn running(&self, mut control: Client<UnixStream>, tty: bool) {
        let mut phase = self.lock();
        if let Phase::Booting { pending } = &*phase {
            for &sig in pending {
                let _ = control.signal(ProcessRef::init(CONTAINER_ID), sig, false);
            }
        }
        *phase = Phase::Running { control, tty };
    }

    fn first_pending(&self) -> Option<i32> {
        match &*self.lock() {
            Phase::Booting { pending } => pending.first().copied(),
            _ => None,
        }
    }
}

/// Blocks the signals husk handles itself in this thread (and so in every thread it
/// creates from now on), and starts the thread that receives them.
fn start_signal_thread(forwarder: Arc<Forwarder>) -> Result<()> {
    let mut set = SigSet::empty();
    for sig in FORWARDED {
        set.add(sig);
    }
    set.add(Signal::SIGWINCH);
    set.thread_block().context("cannot block signals")?;
    std::thread::Builder::new()
        .name("husk-signals".into())
        .stack_size(128 << 10)
        // Not joined: it waits for signals until the process exits.
        .spawn(move || loop {
            if let Ok(sig) = set.wait() {
                forwarder.on_signal(sig);
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

/// Where the time of one run went.
#[derive(Default)]
struct Marks {
    created: Option<Instant>,
    started: Option<Instant>,
    exited: Option<Instant>,
}

/// Runs the command; returns husk's exit status.
pub fn run(args: RunArgs, started: Instant) -> Result<u8> {
    // The caller's mistakes first, before anything boots.
    check_args(args.vcpus, args.memory)?;
    let volumes = args
        .volumes
        .iter()
        .map(|v| Volume::parse(v))
        .collect::<Result<Vec<_>, _>>()?;
    check_dir("--rootfs", &args.rootfs)?;
    for v in &volumes {
        check_dir("--volume", &v.host)?;
    }
    if !args.cwd.starts_with('/') {
        bail!("--cwd {:?} must be an absolute path", args.cwd);
    }
    let kernel = match args.kernel.clone() {
        Some(k) => k,
        None => assets::find(Asset::Kernel)?,
    };
    let initrd = match args.initrd.clone() {
        Some(i) => i,
        None => assets::find(Asset::Initrd)?,
    };

    let cancel = Arc::new(AtomicBool::new(false));
    let forwarder = Arc::new(Forwarder {
        phase: Mutex::new(Phase::Booting {
            pending: Vec::new(),
        }),
        cancel: cancel.clone(),
    });
    start_signal_thread(forwarder.clone())?;

    let mut config = SandboxConfig::new(unique_id(), kernel, initrd, args.rootfs.clone());
    config.vcpus = args.vcpus;
    config.memory_mib = args.memory;
    config.volumes = volumes;
    config.console = args.console.clone();
    config.ready_timeout = Duration::from_secs(args.timeout);
    config.cancel = Some(cancel);
    let sandbox = match Sandbox::start(config) {
        Ok(s) => s,
        Err(SandboxError::Cancelled) => {
            let sig = forwarder.first_pending().unwrap_or(libc::SIGINT);
            eprintln!("husk: interrupted by signal {sig} while the VM was booting");
            return Ok(exit_byte(128 + sig));
        }
        Err(e) => return Err(e.into()),
    };

    let mut marks = Marks::default();
    let outcome = run_command(&sandbox, &args, &forwarder, &mut marks);
    *forwarder.lock() = Phase::Done;
    let timings = *sandbox.timings();
    let shutdown_started = Instant::now();
    let shutdown = sandbox.shutdown();
    let done = Instant::now();
    if args.timings {
        let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1000.0;
        let created = marks.created.unwrap_or(timings.mounted);
        let cmd_started = marks.started.unwrap_or(created);
        let exited = marks.exited.unwrap_or(shutdown_started);
        eprintln!(
            "husk-timings: vmm_setup_ms={:.1} to_ready_ms={:.1} guest_boot_ms={:.1} \
             mounts_ms={:.1} create_ms={:.1} start_ms={:.1} run_ms={:.1} shutdown_ms={:.1} total_ms={:.1}",
            ms(started, timings.vm_running),
            ms(timings.vm_running, timings.ready),
            timings.guest_boottime_us as f64 / 1000.0,
            ms(timings.ready, timings.mounted),
            ms(timings.mounted, created),
            ms(created, cmd_started),
            ms(cmd_started, exited),
            ms(shutdown_started, done),
            ms(started, done),
        );
    }
    let code = outcome?;
    if let Err(e) = shutdown {
        // The command's status is what the caller asked for; the VM is gone either way.
        eprintln!("husk: warning: the VM did not shut down cleanly: {e}");
    }
    Ok(code)
}

/// 0..=255 as an exit status byte.
fn exit_byte(code: i32) -> u8 {
    u8::try_from(code.clamp(0, 255)).unwrap_or(255)
}

/// An agent refusal that the shell maps to a status of its own (127 command not found,
/// 126 not executable): reported in one line, returned as that status.
fn start_failure(e: &ProtocolError) -> Option<u8> {
    match e {
        ProtocolError::Agent(a) => {
            let code = a.kind.exit_code()?;
            eprintln!("husk: {}", a.message);
            Some(exit_byte(code))
        }
        _ => None,
    }
}

fn run_command(
    sandbox: &Sandbox,
    args: &RunArgs,
    forwarder: &Forwarder,
    marks: &mut Marks,
) -> Result<u8> {
    let agent = sandbox.agent();
    let process = ProcessRef::init(CONTAINER_ID);
    let size = if args.tty {
        Some(window_size().unwrap_or(DEFAULT_TTY_SIZE))
    } else {
        None
    };
    let command = Command {
        args: args.command.clone(),
        env: args.env.clone(),
        cwd: args.cwd.clone(),
        tty: size,
    };
    let spec = command_spec(sandbox.rootfs_path(), sandbox.id(), &command);
    let stdio = StdioConfig {
        stdin: !args.tty,
        stdout: !args.tty,
        stderr: !args.tty,
        terminal: args.tty,
    };
    // The streams first: the agent must have somewhere to put the first byte.
    let mut streams = Vec::new();
    for kind in stdio.kinds() {
        let s = agent
            .open_stream(&process, kind)
            .with_context(|| format!("cannot open the {kind:?} stream"))?;
        streams.push((kind, s));
    }
    let mut control = agent.control()?;
    let signals = agent.control()?;
    if let Err(e) = control.create_container(CONTAINER_ID, spec, stdio) {
        if let Some(code) = start_failure(&e) {
            return Ok(code);
        }
        return Err(e).context("cannot create the container");
    }
    marks.created = Some(Instant::now());

    let raw = if args.tty {
        RawMode::enter(io::stdin().as_fd()).context("cannot put the terminal in raw mode")?
    } else {
        None
    };
    let (done_tx, done_rx) = mpsc::channel();
    let mut outputs = 0;
    for (kind, stream) in streams {
        let clone = || stream.try_clone().context("cannot clone a stream");
        match kind {
            StreamKind::Stdin | StreamKind::Tty => {
                // Host input to the command; the host's EOF is the command's.
                let eof = clone()?;
                if kind == StreamKind::Tty {
                    relay(
                        "husk-tty-out",
                        clone()?,
                        std_fd(1),
                        Some(done_tx.clone()),
                        || {},
                    )?;
                    outputs += 1;
                }
                relay("husk-stdin", std_fd(0), stream, None, move || {
                    let _ = eof.shutdown(std::net::Shutdown::Write);
                })?;
            }
            StreamKind::Stdout | StreamKind::Stderr => {
                let fd = if kind == StreamKind::Stdout { 1 } else { 2 };
                relay(
                    "husk-output",
                    stream,
                    std_fd(fd),
                    Some(done_tx.clone()),
                    || {},
                )?;
                outputs += 1;
            }
        }
    }
    drop(done_tx);

    if let Err(e) = control.start_container(CONTAINER_ID) {
        drop(raw);
        if let Some(code) = start_failure(&e) {
            return Ok(code);
        }
        return Err(e).context("cannot start the container");
    }
    marks.started = Some(Instant::now());
    forwarder.running(signals, args.tty);

    control
        .get_ref()
        .set_read_timeout(None)
        .context("cannot clear the wait timeout")?;
    let status = control.wait(process);
    marks.exited = Some(Instant::now());
    // Everything the command wrote before it exited is on its way: let it arrive.
    let deadline = Instant::now() + OUTPUT_DRAIN;
    for _ in 0..outputs {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    drop(raw);
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            let ended = if sandbox.vm_ended() {
                format!(" (the VM ended){}", sandbox.console().describe())
            } else {
                String::new()
            };
            return Err(e).with_context(|| format!("lost the command{ended}"));
        }
    };
    Ok(exit_byte(status.code()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocol::{serve, Request, Response};

    /// The signal thread's decisions, against the protocol's real agent-side loop.
    #[test]
    fn signals_wait_for_the_command_then_go_to_it() {
        let (host, mut agent) = UnixStream::pair().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let server = std::thread::spawn(move || {
            serve(&mut agent, "test", |request| {
                log.lock().unwrap().push(request);
                Ok(Response::Ok)
            })
        });
        let cancel = Arc::new(AtomicBool::new(false));
        let forwarder = Forwarder {
            phase: Mutex::new(Phase::Booting {
                pending: Vec::new(),
            }),
            cancel: cancel.clone(),
        };
        // Booting: a resize means nothing yet; SIGTERM abandons the boot and is kept.
        forwarder.on_signal(Signal::SIGWINCH);
        assert!(!cancel.load(Ordering::Relaxed));
        forwarder.on_signal(Signal::SIGTERM);
        assert!(cancel.load(Ordering::Relaxed));
        assert_eq!(forwarder.first_pending(), Some(libc::SIGTERM));
        // Running: what was kept goes first, then every new signal; no tty, no resize.
        forwarder.running(Client::connect(host).unwrap(), false);
        forwarder.on_signal(Signal::SIGINT);
        forwarder.on_signal(Signal::SIGWINCH);
        // Done: the connection goes, nothing more is sent.
        *forwarder.lock() = Phase::Done;
        forwarder.on_signal(Signal::SIGHUP);
        server.join().unwrap().unwrap();
        let signal = |signal| Request::Signal {
            process: ProcessRef::init(CONTAINER_ID),
            signal,
            all: false,
        };
        assert_eq!(
            *seen.lock().unwrap(),
            [signal(libc::SIGTERM), signal(libc::SIGINT)]
        );
    }
}
