//! The container's filesystem view: the spec's mounts under the root, /dev, pivot_root,
//! the read-only root, `linux.readonlyPaths` and `linux.maskedPaths`.
//!
//! Everything runs in the child, in its new mount namespace, as precomputed [`Step`]s.
//! Bind sources are guest paths (the host rewrote them to where it shared each file or
//! directory); whether a source is a file or a directory is looked up here, before the
//! fork, so the mount point made for it is of the same kind.
//!
//! Not done (documented gaps): destinations are joined to the root without resolving
//! symlinks inside the rootfs (runc's securejoin): an absolute symlink on a destination's
//! path would resolve in the guest's root and the mount would not land in the container.
//! The VM is the boundary, so this is a correctness gap, not an escape from the sandbox.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use husk_protocol::{AgentError, ErrorKind};
use oci_spec::runtime::{Mount, Spec};

use super::devices;
use super::setup::{Step, Steps};

/// A path as a C string for a step.
pub fn cpath(path: &Path) -> Result<CString, AgentError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        AgentError::new(
            ErrorKind::InvalidArgument,
            format!("{} contains a NUL byte", path.display()),
        )
    })
}

fn cstr(s: &str) -> Result<CString, AgentError> {
    cpath(Path::new(s))
}

fn invalid(message: String) -> AgentError {
    AgentError::new(ErrorKind::InvalidArgument, message)
}

/// Checks a path inside the container: absolute, no "..".
fn container_path(what: &str, path: &Path) -> Result<(), AgentError> {
    if path.is_absolute() && !path.components().any(|c| c == Component::ParentDir) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} {} must be an absolute path without \"..\"",
            path.display()
        )))
    }
}

/// `mkdir -p root/dir` as steps (one per component; existing ones are fine).
pub fn mkdir_p(steps: &mut Steps, root: &Path, dir: &Path) -> Result<(), AgentError> {
    let mut path = root.to_path_buf();
    for c in dir.components() {
        if let Component::Normal(name) = c {
            path.push(name);
            steps.before_user(
                format!("creating the mount point {}", path.display()),
                Step::Mkdir {
                    path: cpath(&path)?,
                    mode: 0o755,
                },
            );
        }
    }
    Ok(())
}

/// A mount's options split the way mount(2) takes them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// MS_* flags other than propagation.
    pub flags: libc::c_ulong,
    /// MS_PRIVATE/MS_SHARED/MS_SLAVE/MS_UNBINDABLE (| MS_REC), set by a mount of its own.
    pub propagation: Option<libc::c_ulong>,
    pub bind: bool,
    pub recursive: bool,
    /// Filesystem-specific options ("mode=755", "size=65536k").
    pub data: Vec<String>,
}

/// Parses fstab-style options (runc's table).
pub fn parse_options(options: &[String]) -> Options {
    let mut o = Options::default();
    for opt in options {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match opt.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "nosymfollow" => (libc::MS_NOSYMFOLLOW, 0),
            "defaults" | "tmpcopyup" => (0, 0),
            "bind" => {
                o.bind = true;
                (0, 0)
            }
            "rbind" => {
                o.bind = true;
                o.recursive = true;
                (0, 0)
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let kind = match opt.trim_start_matches('r') {
                    "private" => libc::MS_PRIVATE,
                    "shared" => libc::MS_SHARED,
                    "slave" => libc::MS_SLAVE,
                    _ => libc::MS_UNBINDABLE,
                };
                let rec = if opt.starts_with('r') {
                    libc::MS_REC
                } else {
                    0
                };
                o.propagation = Some(kind | rec);
                (0, 0)
            }
            other => {
                o.data.push(other.to_owned());
                (0, 0)
            }
        };
        o.flags = (o.flags | set) & !clear;
    }
    o
}

/// `linux.rootfsPropagation` as mount flags; runc's default is rslave.
fn root_propagation(spec: &Spec) -> Result<libc::c_ulong, AgentError> {
    let given = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().clone());
    match given.as_deref() {
        None | Some("") => Ok(libc::MS_SLAVE | libc::MS_REC),
        Some(p) => parse_options(&[p.to_owned()]).propagation.ok_or_else(|| {
            invalid(format!(
                "linux.rootfsPropagation {p:?} is not a propagation"
            ))
        }),
    }
}

/// Whether `m` is the container's devpts at /dev/pts.
fn is_devpts(m: &Mount) -> bool {
    m.typ().as_deref() == Some("devpts") && m.destination() == Path::new("/dev/pts")
}

/// The container's own devpts instance, mounted by the agent at `dir/pts` (with the
/// spec's options) when the spec has one at /dev/pts. The agent opens the container's
/// ttys on it, and the child binds it at /dev/pts: a terminal is then a /dev/pts/N the
/// container sees. `None` without such a mount.
pub fn mount_devpts(spec: &Spec, dir: &Path) -> Result<Option<PathBuf>, AgentError> {
    let Some(m) = spec
        .mounts()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .find(|m| is_devpts(m))
    else {
        return Ok(None);
    };
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let target = dir.join("pts");
    crate::mounts::mount_fs(
        "devpts",
        &target,
        "devpts",
        nix::mount::MsFlags::from_bits_truncate(opts.flags),
        &opts.data.join(","),
    )?;
    Ok(Some(target))
}

/// The steps that build the container's filesystem under `root` (the container's root
/// as the child sees it before pivot_root), and pivot into it when `mount_ns`.
/// `devpts`: the instance from [`mount_devpts`], bound at /dev/pts.
/// Returns the root as the container process sees it afterwards ("/" after pivot_root,
/// `root` when the process will chroot instead).
pub fn steps(
    steps: &mut Steps,
    root: &Path,
    spec: &Spec,
    mount_ns: bool,
    devpts: Option<&Path>,
) -> Result<PathBuf, AgentError> {
    if mount_ns {
        steps.before_user(
            "setting the propagation of / (linux.rootfsPropagation)",
            Step::Mount {
                source: None,
                target: cstr("/")?,
                fstype: None,
                flags: root_propagation(spec)?,
                data: None,
            },
        );
    }
    let mounts = spec.mounts().as_deref().unwrap_or(&[]);
    for m in mounts {
        match devpts {
            Some(instance) if is_devpts(m) => {
                let target = root.join("dev/pts");
                mkdir_p(steps, root, Path::new("/dev/pts"))?;
                steps.before_user(
                    "mount devpts on /dev/pts (the container's instance)",
                    Step::Mount {
                        source: Some(cpath(instance)?),
                        target: cpath(&target)?,
                        fstype: None,
                        flags: libc::MS_BIND,
                        data: None,
                    },
                );
            }
            _ => mount_steps(steps, root, m)?,
        }
    }
    let linux = spec.linux().as_ref();
    if mounts.iter().any(|m| m.destination() == Path::new("/dev")) {
        let devs = linux.and_then(|l| l.devices().as_deref()).unwrap_or(&[]);
        devices::steps(steps, root, devs)?;
    } else {
        // No /dev of its own: the guest's (runc would mknod into the rootfs, which here
        // is the host's directory: device nodes have no business there).
        let dev = root.join("dev");
        mkdir_p(steps, root, Path::new("/dev"))?;
        steps.before_user(
            format!("bind /dev on {}", dev.display()),
            Step::Mount {
                source: Some(cstr("/dev")?),
                target: cpath(&dev)?,
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REC,
                data: None,
            },
        );
    }
    let new_root = if mount_ns {
        steps.before_user(
            format!("pivot_root to {}", root.display()),
            Step::PivotRoot { root: cpath(root)? },
        );
        PathBuf::from("/")
    } else {
        root.to_path_buf()
    };
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        steps.before_user(
            "remounting the root read-only (root.readonly)",
            Step::Mount {
                source: None,
                target: cpath(&new_root)?,
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                data: None,
            },
        );
    }
    Ok(new_root)
}

/// `linux.readonlyPaths` then `linux.maskedPaths`, under the final root.
pub fn path_steps(steps: &mut Steps, new_root: &Path, spec: &Spec) -> Result<(), AgentError> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    for p in linux.readonly_paths().as_deref().unwrap_or(&[]) {
        container_path("linux.readonlyPaths entry", Path::new(p))?;
        steps.before_user(
            format!("making {p} read-only (linux.readonlyPaths)"),
            Step::ReadonlyPath {
                path: cpath(&devices::under(new_root, p))?,
            },
        );
    }
    for p in linux.masked_paths().as_deref().unwrap_or(&[]) {
        container_path("linux.maskedPaths entry", Path::new(p))?;
        steps.before_user(
            format!("masking {p} (linux.maskedPaths)"),
            Step::MaskPath {
                path: cpath(&devices::under(new_root, p))?,
            },
        );
    }
    Ok(())
}

/// One entry of `mounts`.
fn mount_steps(steps: &mut Steps, root: &Path, m: &Mount) -> Result<(), AgentError> {
    let dest = m.destination();
    container_path("mount destination", dest)?;
    let target = devices::under(root, &dest.to_string_lossy());
    let ctarget = cpath(&target)?;
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let typ = m.typ().as_deref().unwrap_or("");
    let bind = typ == "bind" || opts.bind;
    let shown = format!(
        "mount {} on {}",
        if bind { "bind" } else { typ },
        dest.display()
    );
    if bind {
        let source = m
            .source()
            .as_deref()
            .ok_or_else(|| invalid(format!("bind mount on {}: no source", dest.display())))?;
        if !source.is_absolute() {
            return Err(invalid(format!(
                "bind mount on {}: source {} is not an absolute guest path",
                dest.display(),
                source.display()
            )));
        }
        let meta = std::fs::metadata(source).map_err(|e| {
            AgentError::new(
                ErrorKind::NotFound,
                format!(
                    "bind mount on {}: source {}: {e}",
                    dest.display(),
                    source.display()
                ),
            )
        })?;
        if meta.is_dir() {
            mkdir_p(steps, root, dest)?;
        } else {
            if let Some(parent) = dest.parent() {
                mkdir_p(steps, root, parent)?;
            }
            steps.before_user(
                format!("creating the mount point {}", target.display()),
                Step::Touch {
                    path: ctarget.clone(),
                },
            );
        }
        let rec = if opts.recursive { libc::MS_REC } else { 0 };
        steps.before_user(
            format!("{shown} (from {})", source.display()),
            Step::Mount {
                source: Some(cpath(source)?),
                target: ctarget.clone(),
                fstype: None,
                flags: libc::MS_BIND | rec,
                data: None,
            },
        );
        // A bind takes its flags (ro, nosuid, ...) only on a remount.
        if opts.flags != 0 {
            steps.before_user(
                format!("{shown}: remounting with its options"),
                Step::Mount {
                    source: None,
                    target: ctarget.clone(),
                    fstype: None,
                    flags: libc::MS_BIND | libc::MS_REMOUNT | opts.flags,
                    data: None,
                },
            );
        }
    } else {
        mkdir_p(steps, root, dest)?;
        // A v1 "cgroup" mount is the unified hierarchy here (the guest is cgroup v2 only;
        // runc does the same on a v2 host); in the container's cgroup namespace it shows
        // the container's own cgroup as its root.
        let (fstype, source) = match typ {
            "cgroup" | "cgroup2" => ("cgroup2", "cgroup2".to_owned()),
            _ => (
                typ,
                m.source()
                    .as_deref()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| typ.to_owned()),
            ),
        };
        if fstype.is_empty() {
            return Err(invalid(format!(
                "mount on {}: no type (and not a bind mount)",
                dest.display()
            )));
        }
        let data = if fstype == "cgroup2" || opts.data.is_empty() {
            None
        } else {
            Some(cstr(&opts.data.join(","))?)
        };
        steps.before_user(
            shown.clone(),
            Step::Mount {
                source: Some(cstr(&source)?),
                target: ctarget.clone(),
                fstype: Some(cstr(fstype)?),
                flags: opts.flags,
                data,
            },
        );
    }
    if let Some(propagation) = opts.propagation {
        steps.before_user(
            format!("{shown}: setting its propagation"),
            Step::Mount {
                source: None,
                target: ctarget,
                fstype: None,
                flags: propagation,
                data: None,
            },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o = parse_options(&strings(&[
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "ro",
        ]));
        assert_eq!(
            o.flags,
            libc::MS_NOSUID | libc::MS_STRICTATIME | libc::MS_RDONLY
        );
        assert_eq!(o.data, ["mode=755", "size=65536k"]);
        assert!(!o.bind);
        let o = parse_options(&strings(&["rbind", "ro", "rprivate", "nodev", "rw"]));
        assert!(o.bind && o.recursive);
        assert_eq!(o.flags, libc::MS_NODEV);
        assert_eq!(o.propagation, Some(libc::MS_PRIVATE | libc::MS_REC));
        let o = parse_options(&strings(&["bind", "slave"]));
        assert!(o.bind && !o.recursive);
        assert_eq!(o.propagation, Some(libc::MS_SLAVE));
    }
}
