//! The `husk` command line: clap types and one file per command, each a thin layer over
//! the library. `husk vm ...` holds the VM-level commands; the runc-compatible container
//! commands (create, start, state, kill, delete) will sit beside `vm` at the top level.

pub mod terminal;
pub mod vm_boot;
pub mod vm_run;

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

/// husk: an OCI container runtime that runs every container in its own KVM microVM.
#[derive(Debug, Parser)]
#[command(name = "husk", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with microVMs directly.
    #[command(subcommand)]
    Vm(VmCommand),
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot a microVM to husk's guest agent, print a timing breakdown, shut it down.
    Boot(vm_boot::BootArgs),
    /// Run a command with a host directory as its root, inside a fresh microVM.
    Run(vm_run::RunArgs),
}

/// Runs the CLI; `started` is when the process started (for timing breakdowns). Errors
/// are printed as one line, `husk: <sentence>`, on stderr.
pub fn main(started: Instant) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
                || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            {
                let _ = e.print();
                return if e.use_stderr() {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("husk: {}", first.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Vm(VmCommand::Boot(args)) => vm_boot::run(args, started).map(|()| 0),
        Command::Vm(VmCommand::Run(args)) => vm_run::run(args, started),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line: the context chain joined by ": ".
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("husk: {msg}");
            ExitCode::FAILURE
        }
    }
}
