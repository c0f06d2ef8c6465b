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

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use husk_protocol::{ProcessRef, ProtocolError};

use crate::assets::{self, Asset};
use crate::sandbox::relay::{RelayError, FORWARDED_SIGNALS};
use crate::sandbox::terminal::window_size;
use crate::sandbox::{
    check_dir, command_spec, unique_id, Command, Relay, Sandbox, SandboxConfig, SandboxError,
    SignalForwarder, StdioMode, Volume, VM_END_GRACE,
};
use crate::vmm::config::check_args;

/// The container's id inside the sandbox (one container per `vm run`).
const CONTAINER_ID: &str = "run";
/// The tty size (rows, cols) when the caller has no terminal to copy it from.
const DEFAULT_TTY_SIZE: (u16, u16) = (24, 80);

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

    let forwarder = SignalForwarder::start(&FORWARDED_SIGNALS)?;

    let mut config = SandboxConfig::new(unique_id(), kernel, initrd, args.rootfs.clone());
    config.vcpus = args.vcpus;
    config.memory_mib = args.memory;
    config.volumes = volumes;
    config.console = args.console.clone();
    config.ready_timeout = Duration::from_secs(args.timeout);
    config.cancel = Some(forwarder.cancel_flag());
    let mut sandbox = match Sandbox::start(config) {
        Ok(s) => s,
        Err(SandboxError::Cancelled) => {
            let sig = forwarder.first_pending().unwrap_or(libc::SIGINT);
            eprintln!("husk: interrupted by signal {sig} while the VM was booting");
            return Ok(exit_byte(128 + sig));
        }
        Err(e) => return Err(e.into()),
    };

    let mut marks = Marks::default();
    let outcome = run_command(&mut sandbox, &args, &forwarder, &mut marks);
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
    sandbox: &mut Sandbox,
    args: &RunArgs,
    forwarder: &SignalForwarder,
    marks: &mut Marks,
) -> Result<u8> {
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
    let mode = if args.tty {
        StdioMode::CallerTerminal
    } else {
        StdioMode::Inherit
    };
    // The streams first: the agent must have somewhere to put the first byte.
    let relay = Relay::open(sandbox.agent(), ProcessRef::init(CONTAINER_ID), mode)?;
    let mut control = sandbox.agent().control()?;
    if let Err(e) = control.create_container(CONTAINER_ID, spec, relay.stdio()) {
        if let Some(code) = start_failure(&e) {
            return Ok(code);
        }
        return Err(e).context("cannot create the container");
    }
    marks.created = Some(Instant::now());
    if let Err(e) = control.start_container(CONTAINER_ID) {
        if let Some(code) = start_failure(&e) {
            return Ok(code);
        }
        return Err(e).context("cannot start the container");
    }
    marks.started = Some(Instant::now());
    let status = relay.run(Some(forwarder));
    marks.exited = Some(Instant::now());
    let status = match status {
        Ok(s) => s,
        Err(e @ RelayError::Wait { .. }) => match sandbox.ended_by_itself(VM_END_GRACE) {
            Some(how) => return Err(e).with_context(|| format!("the VM ended: {how}")),
            None => return Err(e.into()),
        },
        Err(e) => return Err(e.into()),
    };
    Ok(exit_byte(status.code()))
}
