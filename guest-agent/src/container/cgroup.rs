//! The container's cgroup (v2) in the guest: `<cgroup root>/husk/<id>`, with the spec's
//! memory and pids limits. The VM's size is the host's business; these limits only
//! matter between the processes of one guest, and they cost two small writes.
//!
//! Processes join it themselves in the child (a `cgroup.procs` fd opened before the fork,
//! written with "0") before unsharing the cgroup namespace, so the namespace's root is
//! the container's cgroup. Other `linux.resources` (cpu, blockIO, hugepages, devices,
//! network, rdma, unified) are not applied.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_protocol::AgentError;
use nix::mount::MsFlags;
use oci_spec::runtime::Spec;

use crate::mounts;

/// Where the agent mounts the unified hierarchy in the guest.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Mounts cgroup2 at `root` unless something is there, and delegates the memory and pids
/// controllers down to `root/husk`.
fn prepare(root: &Path) -> Result<PathBuf, AgentError> {
    if !mounts::is_mount_point(root) {
        mounts::mount_fs(
            "cgroup2",
            root,
            "cgroup2",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            "",
        )?;
    }
    let husk = root.join("husk");
    mounts::create_dir(&husk)?;
    for dir in [root, husk.as_path()] {
        // Best effort: a kernel without one of them still runs containers.
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+memory +pids");
    }
    Ok(husk)
}

/// A container's cgroup directory.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates the cgroup of container `id` under `root` and applies the spec's limits.
    pub fn create(root: &Path, id: &str, spec: &Spec) -> Result<Cgroup, AgentError> {
        let path = prepare(root)?.join(id);
        std::fs::create_dir(&path).map_err(|e| {
            AgentError::internal(format!("creating the cgroup {}: {e}", path.display()))
        })?;
        let cgroup = Cgroup { path };
        let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
        if let Some(limit) = resources
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .filter(|&l| l > 0)
        {
            cgroup.write("memory.max", &limit.to_string())?;
        }
        if let Some(limit) = resources
            .and_then(|r| r.pids().as_ref())
            .map(|p| p.limit())
            .filter(|&l| l > 0)
        {
            cgroup.write("pids.max", &limit.to_string())?;
        }
        Ok(cgroup)
    }

    fn write(&self, file: &str, value: &str) -> Result<(), AgentError> {
        let path = self.path.join(file);
        std::fs::write(&path, value).map_err(|e| {
            AgentError::internal(format!("writing {value} to {}: {e}", path.display()))
        })
    }

    /// `cgroup.procs` opened for writing (close-on-exec), for a child to join with "0".
    pub fn procs_fd(&self) -> Result<OwnedFd, AgentError> {
        let path = self.path.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map(OwnedFd::from)
            .map_err(|e| AgentError::internal(format!("opening {}: {e}", path.display())))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the cgroup once its last process is gone (zombies still count until
    /// reaped, so this retries for a moment).
    pub fn remove(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while std::fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            if !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
