//! `husk state`: the container's state as runc prints it (JSON, no trailing newline).

use std::io::Write;

use anyhow::Result;
use clap::Args;

use super::Context;

#[derive(Debug, Args)]
pub struct StateArgs {
    /// the container's id
    pub container_id: String,
}

pub fn run(args: StateArgs, ctx: &Context) -> Result<i32> {
    let state = ctx.runtime().state(&args.container_id)?;
    std::io::stdout().write_all(state.to_pretty_json().as_bytes())?;
    Ok(0)
}
