//! `husk kill <id> [signal]`: sends a signal (default SIGTERM) to the container's init
//! process, or with `--all` to all its processes.

use anyhow::Result;
use clap::Args;

use super::Context;
use crate::oci::Signal;

#[derive(Debug, Args)]
pub struct KillArgs {
    /// send the specified signal to all processes inside the container
    #[arg(short, long)]
    pub all: bool,
    /// the container's id
    pub container_id: String,
    /// the signal: a number (9), a name (KILL) or a name with SIG (SIGKILL)
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

pub fn run(args: KillArgs, ctx: &Context) -> Result<i32> {
    let signal: Signal = args.signal.parse()?;
    ctx.runtime().kill(&args.container_id, signal, args.all)?;
    Ok(0)
}
