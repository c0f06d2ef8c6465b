//! `linux.namespaces`: which namespaces a container gets, and how its processes enter
//! them.
//!
//! - pid: a new one is made by `clone(CLONE_NEWPID)` for the init (an unshare would only
//!   apply to its children); execs are born in it (the agent's spawning thread enters
//!   it around the fork). When the init exits, the kernel kills every process left in it.
//! - mount, uts, ipc, cgroup: unshared in the child (cgroup after joining the container's
//!   cgroup, so that it is the namespace's root); execs `setns` into the init's, mount
//!   last (it also moves the process to the container's root).
//! - A namespace given with a `path` is joined (`setns`) instead of created.
//! - network and user namespaces are ignored on purpose: the VM is the network boundary
//!   (the guest's network is the container's; the host side does the podman/CNI
//!   plumbing), and the VM is the privilege boundary too (a user namespace would need
//!   id-mapped virtio-fs shares to be of any use). time namespaces are ignored as well.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use husk_protocol::{AgentError, ErrorKind};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::setup::{Step, Steps};

/// How a container gets one namespace type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Ns {
    /// Shares the agent's.
    #[default]
    Guest,
    /// A new one.
    New,
    /// Joins the one at this guest path.
    Join(PathBuf),
}

impl Ns {
    pub fn is_own(&self) -> bool {
        *self != Ns::Guest
    }
}

/// The container's namespaces, by type.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    pub pid: Ns,
    pub mount: Ns,
    pub uts: Ns,
    pub ipc: Ns,
    pub cgroup: Ns,
}

/// (type, /proc/N/ns name, CLONE_NEW* flag), in the order an exec joins them: mount
/// last, since it changes the root.
const JOIN_ORDER: [(&str, libc::c_int); 4] = [
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("mnt", libc::CLONE_NEWNS),
];

impl Namespaces {
    pub fn from_spec(spec: &Spec) -> Namespaces {
        let mut ns = Namespaces::default();
        let list = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_deref())
            .unwrap_or(&[]);
        for n in list {
            let how = match n.path() {
                Some(p) if !p.as_os_str().is_empty() => Ns::Join(p.clone()),
                _ => Ns::New,
            };
            match n.typ() {
                LinuxNamespaceType::Pid => ns.pid = how,
                LinuxNamespaceType::Mount => ns.mount = how,
                LinuxNamespaceType::Uts => ns.uts = how,
                LinuxNamespaceType::Ipc => ns.ipc = how,
                LinuxNamespaceType::Cgroup => ns.cgroup = how,
                // See the module docs: the VM is the boundary for these.
                LinuxNamespaceType::Network
                | LinuxNamespaceType::User
                | LinuxNamespaceType::Time => {}
            }
        }
        ns
    }

    fn by_name(&self, name: &str) -> &Ns {
        match name {
            "cgroup" => &self.cgroup,
            "ipc" => &self.ipc,
            "uts" => &self.uts,
            _ => &self.mount,
        }
    }

    /// The init's clone flags.
    pub fn clone_flags(&self) -> libc::c_int {
        if self.pid == Ns::New {
            libc::CLONE_NEWPID
        } else {
            0
        }
    }

    /// A pid namespace to join given by path, opened.
    pub fn pid_to_join(&self) -> Result<Option<OwnedFd>, AgentError> {
        match &self.pid {
            Ns::Join(p) => open_ns(p).map(Some),
            _ => Ok(None),
        }
    }

    /// The init's steps for every type but pid: join those given by path, unshare the
    /// new ones. `before_unshare` runs first (joining the cgroup).
    pub fn init_steps(&self, steps: &mut Steps) -> Result<(), AgentError> {
        let mut unshare = 0;
        for (name, flag) in JOIN_ORDER {
            match self.by_name(name) {
                Ns::Guest => {}
                Ns::New => unshare |= flag,
                Ns::Join(path) => steps.before_user(
                    format!("joining the {name} namespace {}", path.display()),
                    Step::Setns {
                        fd: open_ns(path)?,
                        nstype: flag,
                    },
                ),
            }
        }
        if unshare != 0 {
            steps.before_user(
                format!("unshare({})", flag_names(unshare)),
                Step::Unshare(unshare),
            );
        }
        Ok(())
    }

    /// An exec's steps: enter the namespaces of the container's init `init_pid`.
    pub fn exec_steps(&self, steps: &mut Steps, init_pid: i32) -> Result<(), AgentError> {
        for (name, flag) in JOIN_ORDER {
            if self.by_name(name).is_own() {
                let path = PathBuf::from(format!("/proc/{init_pid}/ns/{name}"));
                steps.before_user(
                    format!("joining the container's {name} namespace"),
                    Step::Setns {
                        fd: open_ns(&path)?,
                        nstype: flag,
                    },
                );
            }
        }
        Ok(())
    }
}

fn flag_names(flags: libc::c_int) -> String {
    [
        (libc::CLONE_NEWNS, "CLONE_NEWNS"),
        (libc::CLONE_NEWUTS, "CLONE_NEWUTS"),
        (libc::CLONE_NEWIPC, "CLONE_NEWIPC"),
        (libc::CLONE_NEWCGROUP, "CLONE_NEWCGROUP"),
    ]
    .iter()
    .filter(|(f, _)| flags & f != 0)
    .map(|(_, n)| *n)
    .collect::<Vec<_>>()
    .join("|")
}

/// Opens a namespace file (close-on-exec, as std opens everything).
pub fn open_ns(path: &std::path::Path) -> Result<OwnedFd, AgentError> {
    File::open(path).map(OwnedFd::from).map_err(|e| {
        AgentError::new(
            ErrorKind::NotFound,
            format!("namespace {}: {e}", path.display()),
        )
    })
}

/// The inode of process `pid`'s namespace `name` ("pid", "mnt"): equal inodes, same
/// namespace.
pub fn inode(pid: i32, name: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/{name}"))
        .ok()
        .map(|m| m.ino())
}
