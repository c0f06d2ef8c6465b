//! `husk pause`: freezes a running container.

use anyhow::Result;
use clap::Args;

use super::Context;

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// the container's id
    pub container_id: String,
}

pub fn run(args: PauseArgs, ctx: &Context) -> Result<i32> {
    ctx.runtime().pause(&args.container_id)?;
    Ok(0)
}
