//! /dev inside the container: the OCI default devices, `linux.devices`, and the standard
//! symlinks, created on the spec's /dev mount (a tmpfs) before pivot_root.

use std::path::Path;

use husk_protocol::{AgentError, ErrorKind};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::rootfs::{cpath, mkdir_p};
use super::setup::{Step, Steps};

/// (path, major, minor): the character devices every OCI container has, mode 0666.
const DEFAULT_DEVICES: &[(&str, u32, u32)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// (target, link).
const SYMLINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
];

/// Adds the device steps under `root` (the container's root as the child sees it
/// before pivot_root).
pub fn steps(steps: &mut Steps, root: &Path, devices: &[LinuxDevice]) -> Result<(), AgentError> {
    for &(path, major, minor) in DEFAULT_DEVICES {
        if devices.iter().any(|d| d.path() == Path::new(path)) {
            continue; // the spec's own entry wins
        }
        mknod(steps, root, path, libc::S_IFCHR | 0o666, major, minor, 0, 0)?;
    }
    for d in devices {
        let path = d
            .path()
            .to_str()
            .filter(|p| p.starts_with("/dev/"))
            .ok_or_else(|| {
                AgentError::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "linux.devices: {} is not a path under /dev",
                        d.path().display()
                    ),
                )
            })?;
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(AgentError::new(
                    ErrorKind::InvalidArgument,
                    format!("linux.devices: {path} has type \"a\", which only cgroup rules take"),
                ))
            }
        };
        let mode = d.file_mode().unwrap_or(0o666) & 0o7777;
        if let Some(parent) = Path::new(path).parent() {
            mkdir_p(steps, root, parent)?;
        }
        mknod(
            steps,
            root,
            path,
            kind | mode,
            d.major() as u32,
            d.minor() as u32,
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        )?;
    }
    for &(target, link) in SYMLINKS {
        if devices.iter().any(|d| d.path() == Path::new(link)) {
            continue;
        }
        steps.before_user(
            format!("symlink {link} -> {target}"),
            Step::Symlink {
                target: cpath(Path::new(target))?,
                link: cpath(&under(root, link))?,
            },
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn mknod(
    steps: &mut Steps,
    root: &Path,
    path: &str,
    mode: libc::mode_t,
    major: u32,
    minor: u32,
    uid: u32,
    gid: u32,
) -> Result<(), AgentError> {
    steps.before_user(
        format!("mknod {path} ({major}:{minor})"),
        Step::Mknod {
            path: cpath(&under(root, path))?,
            mode,
            dev: libc::makedev(major, minor),
            uid,
            gid,
        },
    );
    Ok(())
}

/// `path` (absolute, in the container) under `root`.
pub fn under(root: &Path, path: &str) -> std::path::PathBuf {
    root.join(path.trim_start_matches('/'))
}
