//! PID 1 duties: the kernel filesystems, the clock, power-off.

use std::time::Duration;

use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, ClockId};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot create mount point {path}: {source}")]
    MountPoint {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("cannot mount {fstype} on {path}: {source}")]
    Mount {
        fstype: &'static str,
        path: &'static str,
        source: nix::Error,
    },
    #[error("cannot read CLOCK_BOOTTIME: {0}")]
    Clock(nix::Error),
}

/// What every process in the guest expects to find. /dev is devtmpfs: the kernel's
/// automount does not apply to an initramfs root, so PID 1 mounts it.
const KERNEL_FILESYSTEMS: &[(&str, &str, MsFlags, &str)] = &[
    (
        "proc",
        "/proc",
        MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        "",
    ),
    (
        "sysfs",
        "/sys",
        MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        "",
    ),
    ("devtmpfs", "/dev", MsFlags::MS_NOSUID, "mode=0755"),
    (
        "tmpfs",
        "/run",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=0755",
    ),
    (
        "tmpfs",
        "/tmp",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=1777",
    ),
];

pub fn mount_kernel_filesystems() -> Result<(), InitError> {
    for &(fstype, path, flags, data) in KERNEL_FILESYSTEMS {
        std::fs::create_dir_all(path).map_err(|source| InitError::MountPoint { path, source })?;
        mount(Some(fstype), path, Some(fstype), flags, Some(data)).map_err(|source| {
            InitError::Mount {
                fstype,
                path,
                source,
            }
        })?;
    }
    Ok(())
}

/// Time since the guest kernel started, suspend included: the guest's own view of how
/// long it took to get here.
pub fn boottime() -> Result<Duration, InitError> {
    let ts: TimeSpec = clock_gettime(ClockId::CLOCK_BOOTTIME).map_err(InitError::Clock)?;
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
