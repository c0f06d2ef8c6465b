//! `husk delete [--force] <id>`: removes a stopped container (with `--force`, kills it
//! first; a missing container is then no error).

use anyhow::Result;
use clap::Args;

use super::Context;

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// forcibly deletes the container if it is still running (uses SIGKILL)
    #[arg(short, long)]
    pub force: bool,
    /// the container's id
    pub container_id: String,
}

pub fn run(args: DeleteArgs, ctx: &Context) -> Result<i32> {
    ctx.runtime().delete(&args.container_id, args.force)?;
    Ok(0)
}
