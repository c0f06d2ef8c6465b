//! `husk spec`: writes runc's starter config.json into the bundle (never over one).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::Context;
use crate::oci::spec;

#[derive(Debug, Args)]
pub struct SpecArgs {
    /// path to the root of the bundle directory
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    pub bundle: PathBuf,
    /// generate a configuration for a rootless container
    #[arg(long)]
    pub rootless: bool,
}

pub fn run(args: SpecArgs, _ctx: &Context) -> Result<i32> {
    // SAFETY: geteuid/getegid cannot fail.
    let user = unsafe { (libc::geteuid(), libc::getegid()) };
    let config = spec::default_config(args.rootless.then_some(user));
    spec::write_new(&args.bundle, &config)?;
    Ok(0)
}
