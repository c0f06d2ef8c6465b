//! `husk start`: lets a created container's init process run.

use anyhow::Result;
use clap::Args;

use super::Context;

#[derive(Debug, Args)]
pub struct StartArgs {
    /// the container's id
    pub container_id: String,
}

pub fn run(args: StartArgs, ctx: &Context) -> Result<i32> {
    ctx.runtime().start(&args.container_id)?;
    Ok(0)
}
