//! PID 1 duties apart from mounting: which mode to run in, the clock, power-off.

use std::time::Duration;

use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, ClockId};

/// The kernel command line parameter that chooses the mode. (A dotted parameter is not
/// passed to init as an environment variable, so it is read from /proc/cmdline.)
const MODE_PARAM: &str = "husk.mode=";

/// What the agent does after boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Report ready on the console and power off (`husk vm boot`, the boot benchmark).
    Boot,
    /// Serve the host over vsock until it asks for `Shutdown`.
    Serve,
}

/// `husk.mode=boot|serve` on the kernel command line decides; without it, the agent
/// serves when the guest has a vsock transport (a virtio-vsock device) and otherwise
/// only boots.
pub fn mode(has_vsock: impl FnOnce() -> bool) -> Result<Mode, String> {
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("cannot read /proc/cmdline: {e}"))?;
    match mode_param(&cmdline) {
        Some("boot") => Ok(Mode::Boot),
        Some("serve") => Ok(Mode::Serve),
        Some(other) => Err(format!(
            "unknown {MODE_PARAM}{other} on the kernel command line (want boot or serve)"
        )),
        None if has_vsock() => Ok(Mode::Serve),
        None => Ok(Mode::Boot),
    }
}

/// The last `husk.mode=` value on the command line (the last one wins, like the kernel's
/// own parameters, so an appended `--cmdline` overrides).
fn mode_param(cmdline: &str) -> Option<&str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix(MODE_PARAM))
        .next_back()
}

/// Time since the guest kernel started, suspend included: the guest's own view of how
/// long it took to get here.
pub fn boottime() -> Result<Duration, String> {
    let ts: TimeSpec = clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map_err(|e| format!("cannot read CLOCK_BOOTTIME: {e}"))?;
    Ok(Duration::from(ts))
}

/// Ends the VM. The guest runs with `reboot=k`: a restart goes out through the i8042
/// reset line, which the VMM takes as "the guest is gone". (Without ACPI a power-off
/// would only halt the vCPUs.)
pub fn power_off() -> ! {
    nix::unistd::sync();
    loop {
        let _ = reboot(RebootMode::RB_AUTOBOOT);
        // reboot(2) returns only on failure; don't spin hot while the kernel goes down.
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_mode_parameter_wins() {
        assert_eq!(mode_param("console=ttyS0 quiet"), None);
        assert_eq!(mode_param("a husk.mode=serve b"), Some("serve"));
        assert_eq!(
            mode_param("husk.mode=serve x husk.mode=boot\n"),
            Some("boot")
        );
        assert_eq!(mode_param("xhusk.mode=serve"), None);
    }
}
