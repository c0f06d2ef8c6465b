//! husk-agent: PID 1 of every husk microVM.
//!
//! It is the only userland the guest has until the container's root is mounted, so it
//! does PID 1's duties itself (no shell, no busybox): mount the kernel filesystems, tell
//! the host it is ready, and power the VM off. Anything that goes wrong is reported to the
//! host on the console before powering off: PID 1 must never exit (the kernel would panic
//! with a message that names nothing useful).

mod init;

use std::io::Write;
use std::process::ExitCode;

/// The line the host waits for. `husk vm boot` (runtime/src/cli) parses it.
const READY_MARKER: &str = "HUSK-AGENT-READY";
/// The line that carries an agent failure to the host.
const ERROR_MARKER: &str = "HUSK-AGENT-ERROR";

fn main() -> ExitCode {
    if std::process::id() != 1 {
        eprintln!("husk-agent: must run as PID 1 of a husk microVM");
        return ExitCode::FAILURE;
    }
    let result = init::mount_kernel_filesystems().and_then(|()| report_ready());
    if let Err(err) = result {
        console_line(&format!("{ERROR_MARKER} {err}"));
    }
    init::power_off()
}

fn report_ready() -> Result<(), init::InitError> {
    let boottime = init::boottime()?;
    console_line(&format!(
        "{READY_MARKER} boottime_us={}",
        boottime.as_micros()
    ));
    Ok(())
}

/// Writes one line to the console (the kernel opened /dev/console as our stdout).
/// A single write keeps the line whole: every console byte is a VM exit, so no
/// buffering games either.
fn console_line(line: &str) {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    let _ = std::io::stdout().lock().write_all(&buf);
}
