//! `husk run`: create and start; in the foreground it waits for the container and
//! exits with its status, then deletes it (unless `--keep`).

use anyhow::Result;
use clap::Args;

use super::create::CreateArgs;
use super::Context;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// detach from the container's process
    #[arg(short, long)]
    pub detach: bool,
    /// do not delete the container after it exits
    #[arg(long)]
    pub keep: bool,
    /// accepted for runc compatibility
    #[arg(long)]
    pub no_subreaper: bool,
}

pub fn run(args: RunArgs, ctx: &Context) -> Result<i32> {
    Ok(ctx
        .runtime()
        .run(&args.create.options(), args.detach, args.keep)?)
}
