//! `husk ps`: the processes inside a container (`--format json`: a JSON array of pids).

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use super::{table, Context};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// select one of: table or json
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: Format,
    /// the container's id
    pub container_id: String,
    /// options for ps(1), which husk does not run (the processes are in a VM)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_options: Vec<String>,
}

pub fn run(args: PsArgs, ctx: &Context) -> Result<i32> {
    if !args.ps_options.is_empty() {
        bail!("ps options are not supported: the container's processes are inside its VM");
    }
    let procs = ctx.runtime().processes(&args.container_id)?;
    match args.format {
        Format::Json => {
            let pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
            println!("{}", serde_json::to_string(&pids)?);
        }
        Format::Table => {
            let mut rows = vec![vec!["PID".to_string(), "CMD".to_string()]];
            rows.extend(
                procs
                    .iter()
                    .map(|p| vec![p.pid.to_string(), p.command.clone()]),
            );
            print!("{}", table(&rows));
        }
    }
    Ok(0)
}
