//! `husk run`: create and start; in the foreground it waits for the container and
//! exits with its status, then deletes it (unless `--keep`). A command that does not
//! exist exits 127 (126 if it may not run), as a shell's would.

use anyhow::Result;
use clap::Args;

use super::create::CreateArgs;
use super::Context;
use crate::oci::{BackendError, RuntimeError};

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
    match ctx
        .runtime()
        .run(&args.create.options(), args.detach, args.keep)
    {
        Ok(code) => Ok(code),
        // A command that cannot run has the shell's statuses, as podman reports them.
        Err(e @ RuntimeError::Backend { .. }) if start_failure_code(&e).is_some() => {
            ctx.log.error(&e.to_string());
            Ok(start_failure_code(&e).unwrap_or(1))
        }
        Err(e) => Err(e.into()),
    }
}

/// 127 for a missing executable, 126 for one that may not run.
fn start_failure_code(e: &RuntimeError) -> Option<i32> {
    match e {
        RuntimeError::Backend {
            source: BackendError::ExecutableNotFound(_),
            ..
        } => Some(127),
        RuntimeError::Backend {
            source: BackendError::PermissionDenied(_),
            ..
        } => Some(126),
        _ => None,
    }
}
