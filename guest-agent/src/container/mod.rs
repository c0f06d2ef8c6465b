//! A container: its root, its namespaces, its cgroup, its init process and its execs,
//! built from the OCI spec the host sends (`root.path` and bind sources are guest paths).
//!
//! The init is spawned by the process core ([`spawn_with`]) with this module's
//! [`setup::Steps`] run in the child, in runc's order:
//! clone(CLONE_NEWPID) -> join the cgroup -> unshare mount/uts/ipc/cgroup -> the spec's
//! mounts and /dev under the root -> pivot_root -> read-only root -> hostname, sysctl ->
//! readonlyPaths, maskedPaths (after sysctl: /proc/sys is in the default readonlyPaths)
//! -> rlimits -> capability bounding set -> (core: setgroups/setgid/setuid, umask, cwd)
//! -> capabilities -> no_new_privs -> seccomp -> parked until `StartContainer` -> exec.
//! oom_score_adj is written first, through the guest's /proc, before /proc changes.
//!
//! The container's own directory (`<containers dir>/<id>`) holds a recursive bind of
//! `root.path` at `root`: the mount namespace is copied from the agent's with it, and
//! pivot_root needs a mount point. A spec without a mount namespace gets a chroot there
//! instead (the default `husk vm run` spec has one; only hand-made specs lack it).
//!
//! Which processes are "the container's" (for `Signal{all}`, `ListProcesses` and the end
//! of the init): those of its pid namespace; without one, of its mount namespace; without
//! either, those whose root is its root. With a pid namespace the kernel kills every
//! process left when the init exits; without, the agent does.

mod capabilities;
mod cgroup;
mod devices;
mod namespaces;
mod privileges;
mod procs;
mod rootfs;
pub mod seccomp;
mod setup;
mod syscalls;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use husk_protocol::process::{spawn_with, Child, Reaper, SpawnOptions, Stdio};
use husk_protocol::{AgentError, ErrorKind, GuestProcessInfo, ProcessRef, StdioConfig};
use nix::errno::Errno;
use oci_spec::runtime::{Process, Spec};

use crate::{errno_text, lock, mounts};
use cgroup::Cgroup;
pub use cgroup::DEFAULT_CGROUP_ROOT;
use namespaces::Namespaces;
use setup::{Step, Steps};

/// What a create needs besides the spec.
pub struct CreateArgs<'a> {
    pub reaper: &'a Reaper,
    /// The container's own directory (its root is bound at `dir/root`).
    pub dir: &'a Path,
    pub id: &'a str,
    pub stdio: StdioConfig,
    pub streams: Stdio,
    /// Where cgroup2 is (or gets) mounted; `None`: no cgroup (tests on a host).
    pub cgroup_root: Option<&'a Path>,
    /// See `Settings::pid_namespaces`.
    pub pid_namespaces: bool,
}

pub struct Container {
    id: String,
    /// The canonical guest path of the agent-side bind of the root.
    root: PathBuf,
    namespaces: Namespaces,
    cgroup: Option<Arc<Cgroup>>,
    seccomp: Option<seccomp::Filter>,
    /// The container's devpts instance in the agent's namespace (see
    /// [`rootfs::mount_devpts`]).
    devpts: Option<PathBuf>,
    members: Members,
    init: Arc<Child>,
    execs: Mutex<HashMap<String, Arc<Child>>>,
}

/// How the container's processes are told from the others.
#[derive(Debug, Clone)]
enum Members {
    PidNamespace(u64),
    MountNamespace(u64),
    Root(PathBuf),
}

impl Members {
    fn contains(&self, pid: i32) -> bool {
        match self {
            Members::PidNamespace(ino) => namespaces::inode(pid, "pid") == Some(*ino),
            Members::MountNamespace(ino) => namespaces::inode(pid, "mnt") == Some(*ino),
            Members::Root(root) => {
                std::fs::read_link(format!("/proc/{pid}/root"))
                    .ok()
                    .as_deref()
                    == Some(root)
            }
        }
    }

    /// The guest pids of the container's processes (never the agent).
    fn pids(&self) -> Result<Vec<i32>, AgentError> {
        let entries = std::fs::read_dir("/proc")
            .map_err(|e| AgentError::internal(format!("cannot list /proc: {e}")))?;
        let me = std::process::id() as i32;
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
            .filter(|&pid| pid != me && self.contains(pid))
            .collect())
    }

    /// Sends `signal` to every member; returns how many got it.
    fn signal(&self, signal: i32) -> Result<usize, AgentError> {
        let mut found = 0;
        for pid in self.pids()? {
            // SAFETY: plain syscall. A process that exited meanwhile (ESRCH) is not
            // counted.
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
}

fn invalid(message: String) -> AgentError {
    AgentError::new(ErrorKind::InvalidArgument, message)
}

/// What the agent made for a container outside it: undone when its init exits, or at
/// once when its create fails.
#[derive(Clone, Default)]
struct Leftovers {
    cgroup: Option<Arc<Cgroup>>,
    mounts: Vec<PathBuf>,
}

impl Leftovers {
    fn remove(&self) {
        if let Some(c) = &self.cgroup {
            c.remove();
        }
        for m in self.mounts.iter().rev() {
            mounts::detach(m);
        }
    }
}

impl Container {
    /// Builds the container and spawns `spec.process` parked before exec.
    pub fn create(spec: &Spec, args: CreateArgs<'_>) -> Result<Container, AgentError> {
        let id = args.id;
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| invalid(format!("container {id}: the spec has no process")))?;
        check_terminal(process, args.stdio)?;
        let mut namespaces = Namespaces::from_spec(spec);
        if !args.pid_namespaces {
            namespaces.pid = namespaces::Ns::Guest;
        }
        if spec.hostname().as_deref().is_some_and(|h| !h.is_empty()) && !namespaces.uts.is_own() {
            return Err(invalid(format!(
                "container {id}: a hostname needs a UTS namespace of its own"
            )));
        }
        let seccomp = spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().as_ref())
            .map(seccomp::compile)
            .transpose()?;
        let source = container_root(id, spec)?;
        let root = bind_root(&source, &args.dir.join("root"))?;
        let mut leftovers = Leftovers {
            cgroup: None,
            mounts: vec![root.clone()],
        };
        let mut devpts = None;
        let built = (|| {
            devpts = rootfs::mount_devpts(spec, args.dir)?;
            leftovers.mounts.extend(devpts.clone());
            leftovers.cgroup = args
                .cgroup_root
                .map(|r| Cgroup::create(r, id, spec))
                .transpose()?
                .map(Arc::new);
            let steps = init_steps(
                spec,
                process,
                &root,
                &namespaces,
                leftovers.cgroup.as_deref(),
                seccomp.as_ref(),
                devpts.as_deref(),
            )?;
            let options = SpawnOptions {
                root: (!namespaces.mount.is_own()).then(|| root.clone()),
                start_gated: true,
                clone_flags: namespaces.clone_flags(),
                pid_namespace: namespaces.pid_to_join()?.map(Arc::new),
                setup: Some(Arc::new(steps)),
                ptmx: devpts.as_ref().map(|d| d.join("ptmx")),
            };
            spawn_with(args.reaper, process, args.streams, &options)
        })();
        let init = built.inspect_err(|_| leftovers.remove())?;
        let pid = init.pid();
        let members = if namespaces.pid.is_own() {
            namespaces::inode(pid, "pid").map(Members::PidNamespace)
        } else if namespaces.mount.is_own() {
            namespaces::inode(pid, "mnt").map(Members::MountNamespace)
        } else {
            None
        }
        .unwrap_or_else(|| Members::Root(root.clone()));
        let container = Container {
            id: id.to_owned(),
            root,
            namespaces,
            cgroup: leftovers.cgroup.clone(),
            seccomp,
            devpts,
            members,
            init: Arc::new(init),
            execs: Mutex::new(HashMap::new()),
        };
        container.end_with_init(leftovers);
        Ok(container)
    }

    /// When the init exits: without a pid namespace, kill what is left (the kernel does
    /// it for a pid namespace); then remove the cgroup and the agent's mounts.
    fn end_with_init(&self, leftovers: Leftovers) {
        let exit = self.init.exit_watch();
        let members = self.members.clone();
        let kill_rest = !self.namespaces.pid.is_own();
        let spawned = std::thread::Builder::new()
            .name("husk-init-watch".into())
            .spawn(move || {
                exit.wait();
                if kill_rest {
                    let _ = members.signal(libc::SIGKILL);
                }
                leftovers.remove();
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
            return Err(invalid(format!(
                "container {} was already started",
                self.id
            )));
        }
        self.init.start()
    }

    /// Runs `process` in the container at once (its namespaces, root and cgroup, with
    /// the process's own user, capabilities, rlimits, no_new_privs, and the container's
    /// seccomp profile); returns its guest pid.
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
            return Err(invalid(format!(
                "cannot exec in container {}: its init process has exited",
                self.id
            )));
        }
        // Hold the table across the spawn: two execs with one id cannot both start.
        let mut execs = lock(&self.execs);
        if execs.get(exec_id).is_some_and(|c| c.try_status().is_none()) {
            return Err(AgentError::new(
                ErrorKind::AlreadyExists,
                format!("exec {exec_id} of container {} is still running", self.id),
            ));
        }
        let init_pid = self.init.pid();
        let mut steps = Steps::default();
        privileges::oom_step(&mut steps, process)?;
        if let Some(c) = &self.cgroup {
            join_cgroup(&mut steps, c)?;
        }
        self.namespaces.exec_steps(&mut steps, init_pid)?;
        privileges::steps(&mut steps, process, self.seccomp.as_ref())?;
        let pid_namespace = if self.namespaces.pid.is_own() {
            let path = PathBuf::from(format!("/proc/{init_pid}/ns/pid"));
            Some(Arc::new(namespaces::open_ns(&path)?))
        } else {
            None
        };
        let options = SpawnOptions {
            root: (!self.namespaces.mount.is_own()).then(|| self.root.clone()),
            start_gated: false,
            clone_flags: 0,
            pid_namespace,
            setup: Some(Arc::new(steps)),
            ptmx: self.devpts.as_ref().map(|d| d.join("ptmx")),
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

    /// Sends `signal` to every process of the container. `NotFound` when none is left.
    pub fn signal_all(&self, signal: i32) -> Result<(), AgentError> {
        if self.members.signal(signal)? == 0 {
            return Err(AgentError::not_found(format!(
                "running processes of container {}",
                self.id
            )));
        }
        Ok(())
    }

    /// The container's processes, init first, then by pid.
    pub fn processes(&self) -> Result<Vec<GuestProcessInfo>, AgentError> {
        let mut pids = self.members.pids()?;
        let init = self.init.pid();
        pids.sort_by_key(|&p| (p != init, p));
        Ok(pids.into_iter().map(procs::info).collect())
    }
}

/// The init's steps, in the order of the module docs.
fn init_steps(
    spec: &Spec,
    process: &Process,
    root: &Path,
    namespaces: &Namespaces,
    cgroup: Option<&Cgroup>,
    seccomp: Option<&seccomp::Filter>,
    devpts: Option<&Path>,
) -> Result<Steps, AgentError> {
    let mut steps = Steps::default();
    privileges::oom_step(&mut steps, process)?;
    if let Some(c) = cgroup {
        join_cgroup(&mut steps, c)?;
    }
    namespaces.init_steps(&mut steps)?;
    let new_root = rootfs::steps(&mut steps, root, spec, namespaces.mount.is_own(), devpts)?;
    if let Some(name) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        steps.before_user(
            format!("sethostname({name:?})"),
            Step::Hostname(name.as_bytes().to_vec()),
        );
    }
    let sysctls = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref());
    let mut sysctls: Vec<_> = sysctls.into_iter().flatten().collect();
    sysctls.sort();
    for (key, value) in sysctls {
        if key.contains('/') || key.split('.').any(|part| part.is_empty() || part == "..") {
            return Err(invalid(format!("linux.sysctl: invalid key {key:?}")));
        }
        let path = new_root.join("proc/sys").join(key.replace('.', "/"));
        steps.before_user(
            format!("sysctl {key}={value}"),
            Step::WriteFile {
                path: rootfs::cpath(&path)?,
                data: value.as_bytes().to_vec(),
            },
        );
    }
    rootfs::path_steps(&mut steps, &new_root, spec)?;
    privileges::steps(&mut steps, process, seccomp)?;
    Ok(steps)
}

fn join_cgroup(steps: &mut Steps, cgroup: &Cgroup) -> Result<(), AgentError> {
    steps.before_user(
        format!("joining the cgroup {}", cgroup.path().display()),
        Step::WriteFd {
            fd: cgroup.procs_fd()?,
            data: b"0".to_vec(),
        },
    );
    Ok(())
}

/// The tty is one stream: the process and the host must agree on having one.
pub fn check_terminal(process: &Process, stdio: StdioConfig) -> Result<(), AgentError> {
    let wants = process.terminal().unwrap_or(false);
    if wants != stdio.terminal {
        return Err(invalid(format!(
            "process.terminal is {wants} but the request's stdio.terminal is {}",
            stdio.terminal
        )));
    }
    Ok(())
}

/// The root's canonical guest path; it must be an existing directory.
fn container_root(id: &str, spec: &Spec) -> Result<PathBuf, AgentError> {
    let root = spec.root().as_ref().map(|r| r.path().as_path());
    let Some(root) = root.filter(|r| r.is_absolute()) else {
        return Err(invalid(format!(
            "container {id}: root.path must be an absolute guest path (got {:?})",
            root.unwrap_or(Path::new(""))
        )));
    };
    let canonical = std::fs::canonicalize(root).map_err(|e| {
        AgentError::new(
            ErrorKind::NotFound,
            format!("container {id}: root {}: {e}", root.display()),
        )
    })?;
    if !canonical.is_dir() {
        return Err(invalid(format!(
            "container {id}: root {} is not a directory",
            root.display()
        )));
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
