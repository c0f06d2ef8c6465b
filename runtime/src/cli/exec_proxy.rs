//! `husk exec-proxy` (hidden): the host process of one exec'd guest process. Started by
//! `husk exec` through [`crate::oci::exec_proxy::spawn_exec_proxy`]; it opens the
//! process's stdio streams (or a console pty for `--console-socket`), asks the agent to
//! run the process, reports on `--ready-fd`, then relays stdio, signals and the tty size
//! ([`crate::sandbox::relay`]) and exits with the process's status (128+N for signal N).
//! A command that cannot start exits 127 (not found) or 126 (not permitted), with the
//! agent's words on stderr and in `--log`.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use husk_protocol::{AgentError, ProcessRef, ProtocolError};
use oci_spec::runtime::Process;

use super::Context;
use crate::oci::exec_proxy::{send_report, ProxyReport};
use crate::sandbox::relay::FORWARDED_SIGNALS;
use crate::sandbox::{AgentClient, Relay, SignalForwarder, StdioMode};

/// Bound on every agent request but the wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub struct ExecProxyArgs {
    /// Send the tty's pty master to this socket (the process gets a tty).
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Give the process a tty relayed to this process's own terminal.
    #[arg(short, long, conflicts_with = "console_socket")]
    pub tty: bool,
    /// The exec's id in the agent (default: exec-<pid>).
    #[arg(long, value_name = "ID")]
    pub exec_id: Option<String>,
    /// Report `{"Ok":<guest pid>}` or `{"Err":...}` on this fd once the process started
    /// (or failed to), then close it.
    #[arg(long, value_name = "FD")]
    pub ready_fd: Option<i32>,
    /// The sandbox's vsock socket (`<sandbox state dir>/vsock.sock`).
    pub agent_socket: PathBuf,
    /// The container to run the process in.
    pub container_id: String,
    /// The process to run: an OCI process.json.
    pub process: PathBuf,
}

/// Runs the proxy; returns its exit status.
pub fn run(args: ExecProxyArgs, ctx: &Context) -> Result<i32> {
    // Before any thread exists: the signals are blocked in every thread after this.
    let forwarder = SignalForwarder::start(&FORWARDED_SIGNALS)?;
    let ready = args.ready_fd.map(|fd| {
        // SAFETY: the spawner gave us this fd for the report; nothing else uses it.
        unsafe { File::from_raw_fd(fd) }
    });
    let exec_id = args
        .exec_id
        .clone()
        .unwrap_or_else(|| format!("exec-{}", std::process::id()));
    let process = ProcessRef::exec(args.container_id.as_str(), exec_id.as_str());
    let started = start(&args, &process);
    let report: ProxyReport = match &started {
        Ok((_, pid)) => Ok(*pid),
        Err(e) => Err(e.clone()),
    };
    if let Some(ready) = ready {
        // A spawner that went away cannot be told; the process runs either way.
        let _ = send_report(ready, &report);
    }
    let relay = match started {
        Ok((relay, _)) => relay,
        Err(e) => {
            ctx.log.error(&e.message);
            return Ok(e.kind.exit_code().unwrap_or(255));
        }
    };
    let status = relay
        .run(Some(&forwarder))
        .with_context(|| format!("exec {exec_id} in container {}", args.container_id))?;
    Ok(status.code())
}

/// Opens the stdio and starts the process; returns the relay and the guest pid, or why
/// not (as the agent's error, or an internal one carrying the host-side message).
fn start(args: &ExecProxyArgs, process: &ProcessRef) -> Result<(Relay, i32), AgentError> {
    let internal = |e: anyhow::Error| AgentError::internal(format!("{e:#}"));
    let text = std::fs::read(&args.process)
        .with_context(|| format!("cannot read {}", args.process.display()))
        .map_err(internal)?;
    let mut spec: Process = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not an OCI process", args.process.display()))
        .map_err(internal)?;
    let mode = match (&args.console_socket, args.tty) {
        (Some(socket), _) => StdioMode::ConsoleSocket(socket),
        (None, true) => StdioMode::CallerTerminal,
        (None, false) => StdioMode::Inherit,
    };
    let agent = AgentClient::new(&args.agent_socket, Some(REQUEST_TIMEOUT));
    let relay = Relay::open(&agent, process.clone(), mode)
        .context("cannot set up the exec's stdio")
        .map_err(internal)?;
    relay.fit(&mut spec);
    let stdio = relay.stdio();
    let mut control = agent
        .control()
        .context("cannot reach the agent")
        .map_err(internal)?;
    let exec_id = process.exec_id.as_deref().unwrap_or_default();
    match control.exec_process(&args.container_id, exec_id, spec, stdio) {
        Ok(pid) => Ok((relay, pid)),
        Err(ProtocolError::Agent(e)) => Err(e),
        Err(e) => Err(internal(
            anyhow::Error::new(e)
                .context(format!("cannot exec in container {}", args.container_id)),
        )),
    }
}
