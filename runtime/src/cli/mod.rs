//! The `husk` command line: clap types and one file per command, each a thin layer over
//! the library. The container commands at the top level are runc's, with runc's flags
//! and outputs, over [`crate::oci::Runtime`]; `husk vm ...` holds the VM-level commands.
//!
//! Errors are one line `husk: <sentence>` on stderr, and with `--log FILE` also a line
//! in FILE in `--log-format` (runc's logfmt or JSON), which is where conmon and podman
//! look. A failing command exits 1 (`exec` 255, as runc, so that it cannot be taken
//! for the exec'd process's status); `run` and `exec` otherwise exit with the
//! container process's status.

pub mod create;
pub mod delete;
pub mod exec;
pub mod exec_proxy;
pub mod features;
pub mod kill;
pub mod list;
pub mod pause;
pub mod ps;
pub mod resume;
pub mod run;
pub mod sandbox_monitor;
pub mod spec;
pub mod start;
pub mod state;
pub mod vm_boot;
pub mod vm_run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::oci::backend::default_backend;
use crate::oci::log::{LogFormat, Logger};
use crate::oci::{Runtime, DEFAULT_ROOT, OCI_VERSION};

/// husk: an OCI container runtime that runs every container in its own KVM microVM.
#[derive(Debug, Parser)]
#[command(name = "husk", about, disable_version_flag = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// runc's global options (given before the command).
#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// root directory for storage of container state
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// set the log file to write husk's errors to (default: stderr only)
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// set the log format
    #[arg(long, value_enum, value_name = "text|json", default_value = "text")]
    pub log_format: LogFormat,
    /// enable debug logging (to --log)
    #[arg(long)]
    pub debug: bool,
    /// accepted for runc compatibility (cgroups are the guest's)
    #[arg(long)]
    pub systemd_cgroup: bool,
    /// accepted for runc compatibility: true, false or auto
    #[arg(long, value_name = "VALUE", default_value = "auto")]
    pub rootless: String,
    /// print the version
    #[arg(short = 'v', long)]
    pub version: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// create a container
    Create(create::CreateArgs),
    /// executes the user defined process in a created container
    Start(start::StartArgs),
    /// output the state of a container
    State(state::StateArgs),
    /// send a signal (default: SIGTERM) to the container's init process
    Kill(kill::KillArgs),
    /// delete any resources held by the container
    Delete(delete::DeleteArgs),
    /// create and run a container
    Run(run::RunArgs),
    /// execute new process inside the container
    Exec(exec::ExecArgs),
    /// display the processes running inside a container
    Ps(ps::PsArgs),
    /// lists containers started by husk with the given root
    List(list::ListArgs),
    /// suspend all processes inside the container
    Pause(pause::PauseArgs),
    /// resume all processes that have been previously paused
    Resume(resume::ResumeArgs),
    /// create a new specification file
    Spec(spec::SpecArgs),
    /// show the enabled features
    Features(features::FeaturesArgs),
    /// The host process of one exec'd process (started by `exec`; not for users).
    #[command(hide = true, name = "exec-proxy")]
    ExecProxy(exec_proxy::ExecProxyArgs),
    /// Work with microVMs directly.
    #[command(subcommand)]
    Vm(VmCommand),
    /// The host process of one container (spawned by create).
    #[command(name = "sandbox-monitor", hide = true)]
    SandboxMonitor(sandbox_monitor::MonitorArgs),
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot a microVM to husk's guest agent, print a timing breakdown, shut it down.
    Boot(vm_boot::BootArgs),
    /// Run a command with a host directory as its root, inside a fresh microVM.
    Run(vm_run::RunArgs),
}

/// What every container command gets: the global options and the log.
pub struct Context<'a> {
    pub global: &'a GlobalOpts,
    pub log: &'a Logger,
}

impl Context<'_> {
    /// The lifecycle over `--root` and the VM backend.
    pub fn runtime(&self) -> Runtime<'_> {
        Runtime::new(&self.global.root, default_backend(), self.log)
    }
}

/// Rows as Go's tabwriter lays them out for runc (minimum cell width 12, padding 3,
/// left-aligned; the last column unpadded).
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            let widest = rows
                .iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max();
            (widest.unwrap_or(0) + 3).max(12)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}", width = widths[c]));
            }
        }
        out.push('\n');
    }
    out
}

/// `--log`, `--log-format` and `--debug` picked out of arguments clap rejected, so a
/// usage error still reaches the log the client reads.
fn logger_from_raw_args(args: &[String]) -> Logger {
    let mut log = None;
    let mut format = LogFormat::Text;
    let mut debug = false;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--log" => log = it.next().map(PathBuf::from),
            "--log-format" => {
                format = if it.next().map(String::as_str) == Some("json") {
                    LogFormat::Json
                } else {
                    LogFormat::Text
                }
            }
            "--debug" => debug = true,
            "--root" | "--rootless" => {
                it.next();
            }
            _ if a.starts_with("--log=") => log = Some(PathBuf::from(&a[6..])),
            _ if a.starts_with("--log-format=") => {
                format = if &a[13..] == "json" {
                    LogFormat::Json
                } else {
                    LogFormat::Text
                }
            }
            // Global options come before the command.
            _ if !a.starts_with('-') => break,
            _ => {}
        }
    }
    Logger::open(log.as_deref(), format, debug).unwrap_or_default()
}

/// An error and its causes as one line joined by ": ", each cause once (thiserror
/// messages often already include their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

/// Runs the CLI; `started` is when the process started (for timing breakdowns).
pub fn main(started: Instant) -> ExitCode {
    let raw: Vec<String> = std::env::args().collect();
    let cli = match Cli::try_parse_from(&raw) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
                || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            {
                let _ = e.print();
                return if e.use_stderr() {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                };
            }
            // clap's message up to its usage section, as one line.
            let text = e.to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            logger_from_raw_args(&raw).error(message.join(" ").trim_start_matches("error: "));
            return ExitCode::FAILURE;
        }
    };
    if cli.global.version {
        println!(
            "husk version {}\nspec: {OCI_VERSION}",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        let _ = Cli::command().print_help();
        return ExitCode::SUCCESS;
    };
    let log = match Logger::open(
        cli.global.log.as_deref(),
        cli.global.log_format,
        cli.global.debug,
    ) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("husk: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ctx = Context {
        global: &cli.global,
        log: &log,
    };
    // exec's own failures must not look like the exec'd process's status.
    let failure = if matches!(command, Command::Exec(_) | Command::ExecProxy(_)) {
        255
    } else {
        1
    };
    let result = match command {
        Command::Create(a) => create::run(a, &ctx),
        Command::Start(a) => start::run(a, &ctx),
        Command::State(a) => state::run(a, &ctx),
        Command::Kill(a) => kill::run(a, &ctx),
        Command::Delete(a) => delete::run(a, &ctx),
        Command::Run(a) => run::run(a, &ctx),
        Command::Exec(a) => exec::run(a, &ctx),
        Command::ExecProxy(a) => exec_proxy::run(a, &ctx),
        Command::Ps(a) => ps::run(a, &ctx),
        Command::List(a) => list::run(a, &ctx),
        Command::Pause(a) => pause::run(a, &ctx),
        Command::Resume(a) => resume::run(a, &ctx),
        Command::Spec(a) => spec::run(a, &ctx),
        Command::Features(a) => features::run(a, &ctx),
        Command::Vm(VmCommand::Boot(args)) => vm_boot::run(args, started).map(|()| 0),
        Command::Vm(VmCommand::Run(args)) => vm_run::run(args, started).map(i32::from),
        // The container's host process: its status is the container's.
        Command::SandboxMonitor(args) => Ok(sandbox_monitor::run(args)),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            log.error(&one_line(&e));
            ExitCode::from(failure)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_runc_list() {
        let rows = vec![
            ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
                .map(String::from)
                .to_vec(),
            [
                "c1",
                "16055",
                "created",
                "/tmp/oci-ref/c",
                "2026-11-27T03:17:05.426452299Z",
                "root",
            ]
            .map(String::from)
            .to_vec(),
        ];
        assert_eq!(
            table(&rows),
            "ID          PID         STATUS      BUNDLE           CREATED                          OWNER\n\
             c1          16055       created     /tmp/oci-ref/c   2026-11-27T03:17:05.426452299Z   root\n"
        );
    }

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn runc_style_invocations_parse() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map_err(|e| e.to_string());
        let cli = parse(&[
            "husk",
            "--log-format=json",
            "--log",
            "/x",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "c1",
        ])
        .unwrap();
        assert_eq!(cli.global.log_format, LogFormat::Json);
        assert!(matches!(cli.command, Some(Command::Create(a)) if a.container_id == "c1"));
        let cli = parse(&["husk", "kill", "c1"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Kill(a)) if a.signal == "SIGTERM"));
        let cli = parse(&["husk", "exec", "-t", "c1", "ls", "-la", "/"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Exec(a)) if a.command == ["ls", "-la", "/"] && a.tty)
        );
        assert!(parse(&[
            "husk",
            "exec",
            "--pid-file",
            "/p",
            "--process",
            "/j",
            "--detach",
            "--tty",
            "--console-socket",
            "/s",
            "c1"
        ])
        .is_ok());
        assert!(parse(&["husk", "delete", "--force", "c1"]).is_ok());
        assert!(parse(&["husk", "list", "-f", "json", "-q"]).is_ok());
        assert!(parse(&["husk", "ps", "--format", "json", "c1"]).is_ok());
        assert!(parse(&[
            "husk",
            "--root",
            "/r",
            "--systemd-cgroup",
            "run",
            "-d",
            "--keep",
            "c1"
        ])
        .is_ok());
        assert!(parse(&["husk", "spec", "--rootless", "-b", "/b"]).is_ok());
        assert!(parse(&["husk", "--log-format", "xml", "list"]).is_err());
        assert!(parse(&["husk", "kill", "a", "b", "c"]).is_err());
    }
}
