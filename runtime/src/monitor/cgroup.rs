//! The host cgroup of a container's VM monitor: `linux.cgroupsPath`, joined as runc's
//! cgroupfs driver would (every mounted v1 hierarchy, named ones included, and the v2
//! unified hierarchy; on this kind of hybrid host, both).
//!
//! A systemd-style path (`slice:prefix:name`, what podman passes with
//! `--systemd-cgroup`) is placed where systemd's driver would put it,
//! `/<slice hierarchy>/<prefix>-<name>.scope`, but created through cgroupfs directly:
//! husk does not ask systemd over D-Bus for a transient scope. That keeps the monitor
//! free of a D-Bus client and works without systemd; the price is that systemd does not
//! know the scope (it does not track or stop it).
//!
//! Only the directories the monitor created are removed at delete: their list is saved
//! in the state directory before the monitor joins them, so a monitor killed at any
//! point leaves nothing `destroy` does not know about.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The list of created cgroup directories, in the container's state directory.
pub const CGROUPS_FILE: &str = "cgroups.json";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "linux.cgroupsPath {0:?}: want an absolute path, a relative one, or slice:prefix:name"
    )]
    BadPath(String),
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mountinfo(io::Error),
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// A systemd slice name as its path: `a-b.slice` -> `/a.slice/a-b.slice`; `-.slice` is
/// the root.
fn expand_slice(slice: &str) -> Option<String> {
    let stem = slice.strip_suffix(".slice")?;
    if stem == "-" {
        return Some(String::new());
    }
    if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return None;
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(".slice");
    }
    Some(path)
}

/// `linux.cgroupsPath` as a path inside each hierarchy (absolute, without `..`).
pub fn resolve(cgroups_path: &str) -> Result<PathBuf, CgroupError> {
    let bad = || CgroupError::BadPath(cgroups_path.to_string());
    let path = if !cgroups_path.starts_with('/') && cgroups_path.matches(':').count() == 2 {
        let mut parts = cgroups_path.splitn(3, ':');
        let (slice, prefix, name) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        if name.is_empty() || name.contains('/') || prefix.contains('/') {
            return Err(bad());
        }
        let slice = if slice.is_empty() {
            "/system.slice".to_string()
        } else {
            expand_slice(slice).ok_or_else(bad)?
        };
        let unit = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}-{name}.scope")
        };
        format!("{slice}/{unit}")
    } else {
        // runc's cgroupfs driver: a relative path is taken from the hierarchy's root.
        format!("/{}", cgroups_path.trim_start_matches('/'))
    };
    let path = PathBuf::from(path);
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
        || path == Path::new("/")
    {
        return Err(bad());
    }
    Ok(path)
}

/// A mounted cgroup hierarchy.
#[derive(Debug, PartialEq, Eq)]
struct Hierarchy {
    mount_point: PathBuf,
    /// v1 cpuset: new cgroups need cpus and mems before a process may join.
    cpuset: bool,
}

/// The cgroup hierarchies in a mountinfo text (v1 and v2), once each.
fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        let (fstype, _source, options) = (r.next(), r.next(), r.next().unwrap_or(""));
        if !matches!(fstype, Some("cgroup") | Some("cgroup2")) {
            continue;
        }
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let mount_point = PathBuf::from(mount_point.replace("\\040", " "));
        if out.iter().any(|h| h.mount_point == mount_point) {
            continue;
        }
        out.push(Hierarchy {
            mount_point,
            cpuset: fstype == Some("cgroup") && options.split(',').any(|o| o == "cpuset"),
        });
    }
    out
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { what, path, source }
}

/// Copies cpuset.cpus and cpuset.mems from the parent when empty (v1 cpuset refuses
/// tasks otherwise).
fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let mine = dir.join(file);
        let current = fs::read_to_string(&mine).map_err(io_err("read", &mine))?;
        if current.trim().is_empty() {
            let from = parent.join(file);
            let value = fs::read_to_string(&from).map_err(io_err("read", &from))?;
            fs::write(&mine, value.trim()).map_err(io_err("write", &mine))?;
        }
    }
    Ok(())
}

/// Moves this process into `cgroups_path` in every hierarchy, creating what is missing;
/// the created directories are listed in `record` (before joining) for [`remove`].
pub fn join(cgroups_path: &str, record: &Path) -> Result<(), CgroupError> {
    let path = resolve(cgroups_path)?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::Mountinfo)?;
    let hierarchies = hierarchies(&mountinfo);
    let relative = path.strip_prefix("/").unwrap_or(&path);
    let mut created: Vec<PathBuf> = Vec::new();
    let mut targets = Vec::new();
    let result = (|| {
        for h in &hierarchies {
            let target = h.mount_point.join(relative);
            // Each missing level, top down, so that cpuset can inherit level by level.
            let mut missing = Vec::new();
            let mut p = target.as_path();
            while !p.exists() && p != h.mount_point {
                missing.push(p.to_path_buf());
                p = match p.parent() {
                    Some(parent) => parent,
                    None => break,
                };
            }
            for dir in missing.into_iter().rev() {
                fs::create_dir(&dir).map_err(io_err("create cgroup", &dir))?;
                created.push(dir.clone());
                if h.cpuset {
                    inherit_cpuset(&dir)?;
                }
            }
            targets.push(target);
        }
        Ok(())
    })();
    let list = serde_json::to_vec(&created).unwrap_or_default();
    fs::write(record, list).map_err(io_err("write", record))?;
    result?;
    for target in targets {
        let procs = target.join("cgroup.procs");
        fs::write(&procs, "0").map_err(io_err("join cgroup", &procs))?;
    }
    Ok(())
}

/// Removes the cgroup directories listed in `record` (deepest first). A directory that
/// is gone already is fine; one still busy is retried briefly (the monitor's death
/// reaches the cgroup a moment after its pidfd reported it).
pub fn remove(record: &Path) -> Result<(), CgroupError> {
    let list = match fs::read(record) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read", record)(e)),
    };
    let mut dirs: Vec<PathBuf> = serde_json::from_slice(&list).unwrap_or_default();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in dirs {
        let mut tries = 0;
        loop {
            match fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(io_err("remove cgroup", &dir)(e)),
            }
        }
    }
    let _ = fs::remove_file(record);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_as_runc_places_them() {
        let r = |p: &str| resolve(p).map(|p| p.display().to_string());
        assert_eq!(
            r("/libpod_parent/libpod-abc").unwrap(),
            "/libpod_parent/libpod-abc"
        );
        assert_eq!(r("default/c1").unwrap(), "/default/c1");
        assert_eq!(
            r("machine.slice:libpod:abc").unwrap(),
            "/machine.slice/libpod-abc.scope"
        );
        assert_eq!(
            r("user-1000.slice:libpod:x").unwrap(),
            "/user.slice/user-1000.slice/libpod-x.scope"
        );
        assert_eq!(r(":husk:c1").unwrap(), "/system.slice/husk-c1.scope");
        for bad in ["/a/../b", "/", "bad.slice:p:", "x:p:n"] {
            assert!(r(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hierarchies_from_mountinfo() {
        let text = "\
25 0 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset
31 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
32 0 0:29 / /proc rw - proc proc rw";
        let h = hierarchies(text);
        let points: Vec<_> = h
            .iter()
            .map(|h| h.mount_point.display().to_string())
            .collect();
        assert_eq!(
            points,
            [
                "/sys/fs/cgroup/unified",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/cpuset",
                "/sys/fs/cgroup/cpu,cpuacct"
            ]
        );
        assert_eq!(h.iter().filter(|h| h.cpuset).count(), 1);
        assert!(h[2].cpuset);
    }
}
