//! `husk features`: what husk accepts in a config, as `runc features` prints it.

use std::io::Write;

use anyhow::Result;
use clap::Args;

use super::Context;
use crate::oci::features;

#[derive(Debug, Args)]
pub struct FeaturesArgs {}

pub fn run(_args: FeaturesArgs, _ctx: &Context) -> Result<i32> {
    std::io::stdout().write_all(&features::to_json(&features::features()))?;
    Ok(0)
}
