//! `husk create`: runc's create. Checks the bundle, boots the container's microVM and
//! has the agent build the container; the VMM's pid goes to `--pid-file`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::Context;
use crate::oci::CreateOptions;

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// path to the root of the bundle directory, defaults to the current directory
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    pub bundle: PathBuf,
    /// path to an AF_UNIX socket which will receive a file descriptor referencing the
    /// master end of the console's pseudoterminal
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// specify the file to write the process id to
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// accepted for runc compatibility (a microVM has its own root)
    #[arg(long)]
    pub no_pivot: bool,
    /// accepted for runc compatibility (a microVM has its own keyrings)
    #[arg(long)]
    pub no_new_keyring: bool,
    /// pass N additional file descriptors to the container (only 0 is possible)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub preserve_fds: u32,
    /// the container's id
    pub container_id: String,
}

impl CreateArgs {
    pub fn options(&self) -> CreateOptions {
        CreateOptions {
            id: self.container_id.clone(),
            bundle: self.bundle.clone(),
            console_socket: self.console_socket.clone(),
            pid_file: self.pid_file.clone(),
            preserve_fds: self.preserve_fds,
        }
    }
}

pub fn run(args: CreateArgs, ctx: &Context) -> Result<i32> {
    ctx.runtime().create(&args.options())?;
    Ok(0)
}
