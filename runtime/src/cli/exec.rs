//! `husk exec`: runs a new process in a container, from `--process process.json` or a
//! command line with runc's overrides. With `--detach` the pid of the process's host
//! proxy goes to `--pid-file` and husk returns; otherwise husk exits with the
//! process's status.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use clap::Args;

use super::Context;
use crate::oci::runtime::{ExecOptions, ExecProcess};

fn parse_user(s: &str) -> Result<(u32, Option<u32>), String> {
    let bad = || format!("{s:?} is not <uid>[:<gid>]");
    match s.split_once(':') {
        Some((u, g)) => Ok((
            u.parse().map_err(|_| bad())?,
            Some(g.parse().map_err(|_| bad())?),
        )),
        None => Ok((s.parse().map_err(|_| bad())?, None)),
    }
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// path to an AF_UNIX socket which will receive a file descriptor referencing the
    /// master end of the console's pseudoterminal
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// current working directory in the container
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// set environment variables (KEY=value)
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// allocate a pseudo-TTY
    #[arg(short, long)]
    pub tty: bool,
    /// UID (format: <uid>[:<gid>])
    #[arg(short, long, value_name = "UID[:GID]", value_parser = parse_user)]
    pub user: Option<(u32, Option<u32>)>,
    /// additional gids
    #[arg(short = 'g', long, value_name = "GID")]
    pub additional_gids: Vec<u32>,
    /// path to the process.json
    #[arg(short, long, value_name = "FILE")]
    pub process: Option<PathBuf>,
    /// detach from the container's process
    #[arg(short, long)]
    pub detach: bool,
    /// specify the file to write the process id to
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// set the asm process label for the process commonly used with selinux
    #[arg(long, value_name = "LABEL")]
    pub process_label: Option<String>,
    /// set the apparmor profile for the process
    #[arg(long, value_name = "PROFILE")]
    pub apparmor: Option<String>,
    /// set the no new privileges value for the process
    #[arg(long)]
    pub no_new_privs: bool,
    /// add a capability to the bounding set for the process
    #[arg(short, long, value_name = "CAP")]
    pub cap: Vec<String>,
    /// pass N additional file descriptors to the process (only 0 is possible)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
    /// run the process in an (existing) sub-cgroup (not supported)
    #[arg(long, value_name = "CGROUP")]
    pub cgroup: Option<String>,
    /// allow exec in a paused container
    #[arg(long)]
    pub ignore_paused: bool,
    /// the container's id
    pub container_id: String,
    /// the command and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub fn run(args: ExecArgs, ctx: &Context) -> Result<i32> {
    if let Some(cgroup) = &args.cgroup {
        bail!("exec --cgroup {cgroup}: sub-cgroups are not supported");
    }
    let process = match (&args.process, args.command.is_empty()) {
        (Some(path), true) => ExecProcess::File(path.clone()),
        (Some(_), false) => bail!("exec: give either --process or a command, not both"),
        (None, true) => {
            return Err(anyhow!(
                "exec: <command> can't be empty unless a --process flag is provided"
            ))
        }
        (None, false) => ExecProcess::Command {
            args: args.command,
            env: args.env,
            cwd: args.cwd,
            tty: args.tty,
            user: args.user,
            additional_gids: args.additional_gids,
            caps: args.cap,
            no_new_privs: args.no_new_privs,
            apparmor: args.apparmor,
            process_label: args.process_label,
        },
    };
    let opts = ExecOptions {
        id: args.container_id,
        process,
        console_socket: args.console_socket,
        pid_file: args.pid_file,
        detach: args.detach,
        preserve_fds: args.preserve_fds,
        ignore_paused: args.ignore_paused,
    };
    Ok(ctx.runtime().exec(&opts)?)
}
