//! `husk resume`: thaws a paused container.

use anyhow::Result;
use clap::Args;

use super::Context;

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// the container's id
    pub container_id: String,
}

pub fn run(args: ResumeArgs, ctx: &Context) -> Result<i32> {
    ctx.runtime().resume(&args.container_id)?;
    Ok(0)
}
