//! `husk list`: containers under `--root`, as runc's table, JSON (`--format json`), or
//! ids only (`-q`).

use anyhow::Result;
use clap::Args;

use super::ps::Format;
use super::{table, Context};

#[derive(Debug, Args)]
pub struct ListArgs {
    /// select one of: table or json
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: Format,
    /// display only container IDs
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: ListArgs, ctx: &Context) -> Result<i32> {
    let states = ctx.runtime().list()?;
    if args.quiet {
        for s in &states {
            println!("{}", s.id);
        }
        return Ok(0);
    }
    match args.format {
        // runc encodes a nil slice when there are none.
        Format::Json if states.is_empty() => println!("null"),
        Format::Json => println!("{}", serde_json::to_string(&states)?),
        Format::Table => {
            let mut rows = vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
                .map(str::to_string)
                .to_vec()];
            rows.extend(states.iter().map(|s| {
                vec![
                    s.id.clone(),
                    s.pid.to_string(),
                    s.status.to_string(),
                    s.bundle.display().to_string(),
                    s.created.clone(),
                    s.owner.clone(),
                ]
            }));
            print!("{}", table(&rows));
        }
    }
    Ok(0)
}
