//! Build tool: writes husk's guest initramfs (the agent as /init) as a newc cpio.
//! `make` runs it; `husk` itself only reads the result.

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [agent, out] = args.as_slice() else {
        bail!("usage: husk-mkinitramfs AGENT_BINARY OUTPUT_CPIO");
    };
    let agent_bytes = std::fs::read(agent).with_context(|| format!("reading agent {agent}"))?;
    let out = PathBuf::from(out);
    // Write beside the target and rename, so a failed build never leaves half an archive
    // where husk looks for one.
    let tmp = out.with_extension("cpio.tmp");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    husk::initramfs::write_guest_initramfs(BufWriter::new(file), &agent_bytes)
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .and_then(|f| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(())
}
