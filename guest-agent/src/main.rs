//! husk-agent: PID 1 of every husk microVM.
//!
//! It is the only userland the guest has until a container's root is mounted, so it does
//! PID 1's duties itself (no shell, no busybox): mount the kernel filesystems, reap every
//! orphan, tell the host it is ready, serve it (the `husk_agent` library), power off.
//!
//! PID 1 must never exit: the kernel would panic with a message that names nothing
//! useful. Every failure of the agent itself is reported (console line `HUSK-AGENT-ERROR`
//! and `AgentEvent::Fatal` when the event connection is up), then the VM powers off. A
//! panic does the same from the panic hook, before `panic = "abort"` could kill PID 1.

mod events;
mod init;
mod serve;

use std::io::Write;

use init::Mode;

/// The line the host waits for. `husk vm boot` (runtime/src/cli) parses it.
const READY_MARKER: &str = "HUSK-AGENT-READY";
/// The line that carries an agent failure to the host.
const ERROR_MARKER: &str = "HUSK-AGENT-ERROR";
/// A problem the agent survives, worth a console line.
const WARNING_MARKER: &str = "HUSK-AGENT-WARNING";

fn main() {
    if std::process::id() != 1 {
        eprintln!("husk-agent: must run as PID 1 of a husk microVM");
        std::process::exit(1);
    }
    std::panic::set_hook(Box::new(|info| fatal(&format!("panic: {info}"))));
    let Err(error) = run();
    fatal(&error)
}

fn run() -> Result<std::convert::Infallible, String> {
    husk_agent::mounts::leave_initramfs().map_err(|e| e.message)?;
    husk_agent::mounts::mount_kernel_filesystems().map_err(|e| e.message)?;
    let has_vsock = || husk_agent::vsock::local_cid().is_some();
    match init::mode(has_vsock)? {
        Mode::Boot => {
            console_line(&ready_line()?);
            init::power_off()
        }
        // Nobody could ever reach the agent: say so instead of idling forever.
        Mode::Serve if !has_vsock() => {
            Err("husk.mode=serve but the guest has no vsock device to serve on".into())
        }
        Mode::Serve => serve::run(),
    }
}

fn ready_line() -> Result<String, String> {
    Ok(format!(
        "{READY_MARKER} boottime_us={}",
        init::boottime()?.as_micros()
    ))
}

/// Reports the agent's own failure everywhere it can, then powers off.
fn fatal(error: &str) -> ! {
    console_line(&format!("{ERROR_MARKER} {error}"));
    events::fatal(error);
    init::power_off()
}

fn warn(message: &str) {
    console_line(&format!("{WARNING_MARKER} {message}"));
}

/// Writes one line to the console. Through /dev/kmsg when it is there (after the
/// mounts): the kernel prints each record whole, so a kernel warning printed by another
/// vCPU at the same moment cannot split the line (it did, under load, on a plain tty
/// write). Level 2 (crit) gets past `quiet`. Before the mounts, or without /dev/kmsg,
/// one write to the console (every console byte is a VM exit: no buffering games).
fn console_line(line: &str) {
    use std::fs::OpenOptions;
    let mut buf = Vec::with_capacity(line.len() + 4);
    if let Ok(mut kmsg) = OpenOptions::new().write(true).open("/dev/kmsg") {
        buf.extend_from_slice(b"<2>");
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        if kmsg.write_all(&buf).is_ok() {
            return;
        }
        buf.clear();
    }
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    let _ = std::io::stdout().lock().write_all(&buf);
}
