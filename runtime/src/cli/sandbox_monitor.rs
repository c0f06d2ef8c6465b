//! `husk sandbox-monitor --state-dir DIR --ready-fd N` (hidden): the host process of one
//! container, spawned by `husk create` (see [`crate::monitor`]). Not for people.

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// The container's state directory (holds monitor.json).
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// The fd to report "ok" or "error ..." on once the VM is up.
    #[arg(long, value_name = "FD")]
    pub ready_fd: i32,
}

pub fn run(args: MonitorArgs) -> i32 {
    crate::monitor::main(&args.state_dir, args.ready_fd)
}
