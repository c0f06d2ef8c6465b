//! A container: its root, its init process and its exec'd processes.
//!
//! For now a container is a chroot into `spec.root.path` (a guest path, normally a
//! mounted virtio-fs share) with the kernel filesystems busybox-style programs need
//! mounted inside it: proc, sysfs (read-only), the guest's /dev (bound recursively, so
//! /dev/pts and /dev/shm come along) and the spec's tmpfs mounts outside those three.
//! The init process is spawned parked before exec ([`SpawnOptions::start_gated`]) and
//! execs on `StartContainer`; execs run at once in the same root. When the init exits,
//! every process left in the root is killed, as at the end of a pid namespace.
//!
//! What the next issue slots in here: namespaces (then `signal_all` and the end of the
//! init become "every process of the pid namespace"), pivot_root instead of chroot, the
//! spec's other mounts, cgroups, capabilities, rlimits, seccomp. The process core's
//! [`Reaper::register_with`] is the seam for a spawner that needs its own clone flags.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use husk_protocol::process::{spawn_with, Child, Reaper, SpawnOptions, Stdio};
use husk_protocol::{AgentError, ErrorKind, GuestProcessInfo, ProcessRef, StdioConfig};
use nix::errno::Errno;
use nix::mount::MsFlags;
use oci_spec::runtime::{Mount, Process, Spec};

use crate::{errno_text, lock, mounts};

mod procs;

pub struct Container {
    id: String,
    /// The canonical guest path of the root (what `/proc/N/root` of its processes reads).
    root: PathBuf,
    init: Arc<Child>,
    execs: Mutex<HashMap<String, Arc<Child>>>,
}

impl Container {
    /// Prepares the root and spawns `spec.process` parked before exec. `dir` is the container's own directory: its view of the root is bound at
    /// `dir/root`, so `/proc/N/root` tells its processes from another container's even
    /// when both use the same `root.path`.
    pub fn create(
        reaper: &Reaper,
        dir: &Path,
        id: &str,
        spec: &Spec,
        stdio: StdioConfig,
        streams: Stdio,
    ) -> Result<Container, AgentError> {
        let process = spec.process().as_ref().ok_or_else(|| {
            AgentError::new(
                ErrorKind::InvalidArgument,
                format!("container {id}: the spec has no process"),
            )
        })?;
        check_terminal(process, stdio)?;
        let source = container_root(id, spec)?;
        let root = bind_root(&source, &dir.join("root"))?;
        let options = SpawnOptions {
            root: Some(root.clone()),
            start_gated: true,
        };
        let init = prepare_root(&root, spec.mounts().as_deref().unwrap_or(&[]))
            .and_then(|()| spawn_with(reaper, process, streams, &options))
            .inspect_err(|_| mounts::detach(&root))?;
        let container = Container {
            id: id.to_owned(),
            root,
            init: Arc::new(init),
            execs: Mutex::new(HashMap::new()),
        };
        container.end_with_init();
        Ok(container)
    }

    /// When the init process exits, every other process of the container is killed, as
    /// the end of a pid namespace would (which replaces this once namespaces come).
    fn end_with_init(&self) {
        let exit = self.init.exit_watch();
        let root = self.root.clone();
        let spawned = std::thread::Builder::new()
            .name("husk-init-watch".into())
            .spawn(move || {
                exit.wait();
                let _ = signal_processes_in(&root, libc::SIGKILL);
            });
        if let Err(e) = spawned {
            eprintln!("husk-agent: container {}: no init watcher: {e}", self.id);
        }
    }

    pub fn init(&self) -> &Child {
        &self.init
    }

    /// Lets the init process exec.
    pub fn start(&self) -> Result<(), AgentError> {
        if self.init.is_started() {
            return Err(AgentError::new(
                ErrorKind::InvalidArgument,
                format!("container {} was already started", self.id),
            ));
        }
        self.init.start()
    }

    /// Runs `process` in the container's root at once; returns its pid.
    pub fn exec(
        &self,
        reaper: &Reaper,
        exec_id: &str,
        process: &Process,
        stdio: StdioConfig,
        streams: Stdio,
    ) -> Result<i32, AgentError> {
        check_terminal(process, stdio)?;
        if self.init.try_status().is_some() {
            return Err(AgentError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "cannot exec in container {}: its init process has exited",
                    self.id
                ),
            ));
        }
        // Hold the table across the spawn: two execs with one id cannot both start.
        let mut execs = lock(&self.execs);
        if execs.get(exec_id).is_some_and(|c| c.try_status().is_none()) {
            return Err(AgentError::new(
                ErrorKind::AlreadyExists,
                format!("exec {exec_id} of container {} is still running", self.id),
            ));
        }
        let options = SpawnOptions {
            root: Some(self.root.clone()),
            start_gated: false,
        };
        let child = spawn_with(reaper, process, streams, &options)?;
        let pid = child.pid();
        execs.insert(exec_id.to_owned(), Arc::new(child));
        Ok(pid)
    }

    /// The init process or an exec, by reference.
    pub fn process(&self, process: &ProcessRef) -> Result<Arc<Child>, AgentError> {
        match &process.exec_id {
            None => Ok(self.init.clone()),
            Some(exec_id) => lock(&self.execs)
                .get(exec_id)
                .cloned()
                .ok_or_else(|| AgentError::not_found(process)),
        }
    }

    /// Sends `signal` to every process whose root is the container's (its init, its
    /// execs and everything they started). `NotFound` when none is left.
    pub fn signal_all(&self, signal: i32) -> Result<(), AgentError> {
        if signal_processes_in(&self.root, signal)? == 0 {
            return Err(AgentError::not_found(format!(
                "running processes of container {}",
                self.id
            )));
        }
        Ok(())
    }
}

impl Container {
    /// Every process whose root is the container's, init first then by pid.
    pub fn processes(&self) -> Result<Vec<GuestProcessInfo>, AgentError> {
        let mut pids = processes_in(&self.root)?;
        let init = self.init.pid();
        pids.sort_by_key(|&p| (p != init, p));
        Ok(pids.into_iter().map(procs::info).collect())
    }
}

/// The pids whose root is `root` (the agent excluded).
fn processes_in(root: &Path) -> Result<Vec<i32>, AgentError> {
    let entries = std::fs::read_dir("/proc")
        .map_err(|e| AgentError::internal(format!("cannot list /proc: {e}")))?;
    let me = std::process::id() as i32;
    Ok(entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|&pid| {
            pid != me
                && std::fs::read_link(format!("/proc/{pid}/root"))
                    .ok()
                    .as_deref()
                    == Some(root)
        })
        .collect())
}

/// Sends `signal` to every process whose root is `root`; returns how many got it.
fn signal_processes_in(root: &Path, signal: i32) -> Result<usize, AgentError> {
    let mut found = 0;
    let entries = std::fs::read_dir("/proc")
        .map_err(|e| AgentError::internal(format!("cannot list /proc: {e}")))?;
    let me = std::process::id() as i32;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me
            || std::fs::read_link(entry.path().join("root"))
                .ok()
                .as_deref()
                != Some(root)
        {
            continue;
        }
        // SAFETY: plain syscall. A process that exited meanwhile (ESRCH) is not counted.
        if unsafe { libc::kill(pid, signal) } == 0 {
            found += 1;
        } else if Errno::last() == Errno::EINVAL {
            return Err(AgentError::new(
                ErrorKind::InvalidArgument,
                format!("signal {signal}: {}", errno_text(Errno::EINVAL)),
            ));
        }
    }
    Ok(found)
}

/// The tty is one stream: the process and the host must agree on having one.
pub fn check_terminal(process: &Process, stdio: StdioConfig) -> Result<(), AgentError> {
    let wants = process.terminal().unwrap_or(false);
    if wants != stdio.terminal {
        return Err(AgentError::new(
            ErrorKind::InvalidArgument,
            format!(
                "process.terminal is {wants} but the request's stdio.terminal is {}",
                stdio.terminal
            ),
        ));
    }
    Ok(())
}

/// The root's canonical guest path; it must be an existing directory.
fn container_root(id: &str, spec: &Spec) -> Result<PathBuf, AgentError> {
    let root = spec.root().as_ref().map(|r| r.path().as_path());
    let Some(root) = root.filter(|r| r.is_absolute()) else {
        return Err(AgentError::new(
            ErrorKind::InvalidArgument,
            format!(
                "container {id}: root.path must be an absolute guest path (got {:?})",
                root.unwrap_or(Path::new(""))
            ),
        ));
    };
    let canonical = std::fs::canonicalize(root).map_err(|e| {
        AgentError::new(
            ErrorKind::NotFound,
            format!("container {id}: root {}: {e}", root.display()),
        )
    })?;
    if !canonical.is_dir() {
        return Err(AgentError::new(
            ErrorKind::InvalidArgument,
            format!("container {id}: root {} is not a directory", root.display()),
        ));
    }
    Ok(canonical)
}

/// Binds `source` (recursively) at `target`; returns the canonical `target`.
fn bind_root(source: &Path, target: &Path) -> Result<PathBuf, AgentError> {
    mounts::rbind(source, target)?;
    std::fs::canonicalize(target).map_err(|e| {
        mounts::detach(target);
        AgentError::internal(format!("container root {}: {e}", target.display()))
    })
}

/// The kernel filesystems inside the root. Each is skipped when something is already
/// mounted there (a second container on the same root).
fn prepare_root(root: &Path, spec_mounts: &[Mount]) -> Result<(), AgentError> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_ = root.join("proc");
    if !mounts::is_mount_point(&proc_) {
        mounts::mount_fs("proc", &proc_, "proc", nosuid_nodev_noexec, "")?;
    }
    let sys = root.join("sys");
    if !mounts::is_mount_point(&sys) {
        mounts::mount_fs(
            "sysfs",
            &sys,
            "sysfs",
            nosuid_nodev_noexec | MsFlags::MS_RDONLY,
            "",
        )?;
    }
    let dev = root.join("dev");
    if !mounts::is_mount_point(&dev) {
        mounts::rbind(Path::new("/dev"), &dev)?;
    }
    for m in spec_mounts {
        if m.typ().as_deref() != Some("tmpfs") {
            continue;
        }
        let dest = m.destination();
        let Some(dest_str) = dest.to_str() else {
            continue;
        };
        let inside = mounts::guest_path(dest_str)?;
        if ["/dev", "/proc", "/sys"]
            .iter()
            .any(|kernel| inside.starts_with(kernel))
        {
            continue;
        }
        let target = root.join(inside.strip_prefix("/").unwrap_or(inside));
        if mounts::is_mount_point(&target) {
            continue;
        }
        let (flags, data) = mount_options(m.options().as_deref().unwrap_or(&[]));
        mounts::mount_fs("tmpfs", &target, "tmpfs", flags, &data)?;
    }
    Ok(())
}

/// fstab-style options: the flags mount(2) takes as flags, the rest as data.
fn mount_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "suid" | "dev" | "exec" => {}
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_split_flags_from_data() {
        let opts: Vec<String> = ["nosuid", "strictatime", "mode=755", "size=65536k", "ro"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = mount_options(&opts);
        assert_eq!(
            flags,
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME | MsFlags::MS_RDONLY
        );
        assert_eq!(data, "mode=755,size=65536k");
    }
}
