//! The OCI lifecycle on the host: what `create`, `start`, `kill`, `delete`, `pause`,
//! `resume`, `exec`, `ps`, `state` and `list` do around a [`Backend`], in runc's terms
//! and with runc's refusals. The CLI is a thin layer over this; a containerd shim can
//! be another.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use oci_spec::runtime::{Capability, Process, Spec};

use super::backend::{Backend, BackendError, CreateRequest, ExecRequest, GuestProcess};
use super::bundle::{self, Bundle, BundleError};
use super::hooks::{self, HookError, HookKind};
use super::id::{self, IdError};
use super::log::Logger;
use super::pidfile::{self, PidFileError};
use super::process::{self, HostProcess};
use super::signal::Signal;
use super::state::{ContainerRecord, OciState, Status};
use super::store::{write_atomic, Container, LockedContainer, StateStore, StoreError};
use super::time::rfc3339_nano;

/// The spec as it was at `create`, kept in the container's directory: later commands
/// (exec defaults, poststart and poststop hooks) use it even if the bundle changed.
pub const SAVED_SPEC: &str = "config.json";
/// How long `delete --force` waits for a SIGKILLed host process to be gone.
const KILL_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error(transparent)]
    PidFile(#[from] PidFileError),
    #[error("container {id}: {source}")]
    Backend {
        id: String,
        #[source]
        source: BackendError,
    },
    #[error("{0}")]
    Usage(String),
    #[error("cannot start container {id}: it is {status}, not created")]
    CannotStart { id: String, status: Status },
    #[error("cannot delete container {id} that is not stopped: {status}")]
    NotStopped { id: String, status: Status },
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("container {0} is not paused")]
    NotPaused(String),
    #[error("cannot exec in container {id}: it is {status}")]
    CannotExec { id: String, status: Status },
    #[error("process {path}: {}", problems.join("; "))]
    InvalidProcess { path: String, problems: Vec<String> },
    #[error("container {id}: its host process {pid} did not die within {KILL_WAIT:?} of SIGKILL")]
    Unkillable { id: String, pid: i32 },
    #[error("container {id}: {what}: {source}")]
    Io {
        id: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, RuntimeError>;

/// `create` (and `run`) arguments.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub preserve_fds: u32,
}

/// The process `exec` runs: a process.json, or a command with runc's overrides on top
/// of the container's own process.
#[derive(Clone, Debug)]
pub enum ExecProcess {
    File(PathBuf),
    Command {
        args: Vec<String>,
        env: Vec<String>,
        cwd: Option<PathBuf>,
        tty: bool,
        user: Option<(u32, Option<u32>)>,
        additional_gids: Vec<u32>,
        caps: Vec<String>,
        no_new_privs: bool,
        apparmor: Option<String>,
        process_label: Option<String>,
    },
}

/// `exec` arguments.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    pub id: String,
    pub process: ExecProcess,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub detach: bool,
    pub preserve_fds: u32,
    pub ignore_paused: bool,
}

/// The lifecycle over one state root and one backend.
pub struct Runtime<'a> {
    store: StateStore,
    backend: Box<dyn Backend>,
    log: &'a Logger,
}

/// The name of the user `uid` from /etc/passwd, or `#uid` (runc's fallback).
fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse::<u32>().ok()?;
            (id == uid).then(|| name.to_string())
        })
        .next()
        .unwrap_or_else(|| format!("#{uid}"))
}

/// runc's rules for a terminal: a detached process with a terminal needs somewhere to
/// send it; a console socket is only for a detached process with a terminal (a
/// foreground one uses the caller's own terminal). runc's words, with husk's name.
fn check_terminal(terminal: bool, console_socket: bool, detach: bool) -> Result<()> {
    if terminal && detach && !console_socket {
        return Err(RuntimeError::Usage(
            "cannot allocate tty if husk will detach without setting console socket".into(),
        ));
    }
    if console_socket && !(terminal && detach) {
        let why = if terminal {
            "a foreground process uses husk's own terminal"
        } else {
            "process.terminal is false"
        };
        return Err(RuntimeError::Usage(format!(
            "cannot use console socket if husk will not detach or allocate tty ({why})"
        )));
    }
    Ok(())
}

fn check_preserve_fds(n: u32) -> Result<()> {
    if n > 0 {
        return Err(RuntimeError::Usage(format!(
            "--preserve-fds {n}: a container in a microVM cannot inherit host file descriptors"
        )));
    }
    Ok(())
}

impl<'a> Runtime<'a> {
    pub fn new(
        root: impl Into<PathBuf>,
        backend: Box<dyn Backend>,
        log: &'a Logger,
    ) -> Runtime<'a> {
        Runtime {
            store: StateStore::new(root),
            backend,
            log,
        }
    }

    pub fn store(&self) -> &StateStore {
        &self.store
    }

    fn backend_err(id: &str) -> impl FnOnce(BackendError) -> RuntimeError {
        let id = id.to_string();
        move |source| RuntimeError::Backend { id, source }
    }

    fn saved_spec(container: &Container) -> Result<Spec> {
        let path = container.dir.join(SAVED_SPEC);
        let io = |source| RuntimeError::Io {
            id: container.id().to_string(),
            what: format!("read {}", path.display()),
            source,
        };
        let bytes = std::fs::read(&path).map_err(io)?;
        serde_json::from_slice(&bytes).map_err(|e| io(std::io::Error::other(e)))
    }

    fn state_for_hooks(container: &Container, status: Status) -> OciState {
        let mut state = container.record.oci_state(status);
        // Hooks run while the host process exists, even before it is "created".
        if let Some(p) = container.record.process {
            state.pid = p.pid;
        }
        state
    }

    /// `create`: checks the bundle, records the container, has the backend boot and
    /// build it with the hooks in between, writes the pid file. On failure nothing is
    /// left: no record, no host process.
    pub fn create(&self, opts: &CreateOptions) -> Result<HostProcess> {
        self.create_detached(opts, true)
    }

    /// `create`; `detach` is false only for a foreground `run`, whose terminal can be
    /// husk's own instead of one sent to a console socket.
    fn create_detached(&self, opts: &CreateOptions, detach: bool) -> Result<HostProcess> {
        id::validate(&opts.id)?;
        let bundle = Bundle::load(&opts.bundle)?;
        let terminal = bundle
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        check_terminal(terminal, opts.console_socket.is_some(), detach)?;
        check_preserve_fds(opts.preserve_fds)?;
        let annotations: BTreeMap<String, String> = bundle
            .spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let record = ContainerRecord {
            id: opts.id.clone(),
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            status: Status::Creating,
            process: None,
            created: rfc3339_nano(SystemTime::now()),
            // SAFETY: geteuid cannot fail.
            owner: user_name(unsafe { libc::geteuid() }),
            annotations,
        };
        let mut container = self.store.create(record)?;
        self.log.debug(&format!(
            "create {}: recorded in {}",
            opts.id,
            container.dir.display()
        ));
        match self.create_recorded(&mut container, &bundle, opts) {
            Ok(p) => Ok(p),
            Err(e) => {
                self.abandon(container);
                Err(e)
            }
        }
    }

    fn create_recorded(
        &self,
        container: &mut LockedContainer,
        bundle: &Bundle,
        opts: &CreateOptions,
    ) -> Result<HostProcess> {
        let id = opts.id.as_str();
        let started = Instant::now();
        let saved = container.dir.join(SAVED_SPEC);
        let spec_bytes = serde_json::to_vec(&bundle.spec).unwrap_or_default();
        write_atomic(&saved, &spec_bytes).map_err(|source| RuntimeError::Io {
            id: id.to_string(),
            what: format!("write {}", saved.display()),
            source,
        })?;
        let state_dir = container.dir.clone();
        let request = CreateRequest {
            id,
            bundle,
            state_dir: &state_dir,
            console_socket: opts.console_socket.as_deref(),
            vm: bundle.vm,
        };
        let host = self.backend.boot(&request).map_err(Self::backend_err(id))?;
        // With --debug, where create's time goes (its callers' budgets are tight).
        self.log.debug(&format!(
            "create {id}: sandbox up (pid {}) after {} ms",
            host.pid,
            started.elapsed().as_millis()
        ));
        container.record_mut().process = Some(host);
        container.save()?;
        let hooks = bundle.spec.hooks().as_ref();
        let state = Self::state_for_hooks(container, Status::Creating);
        hooks::run(HookKind::Prestart, hooks, &state)?;
        hooks::run(HookKind::CreateRuntime, hooks, &state)?;
        self.backend
            .build(container, &request)
            .map_err(Self::backend_err(id))?;
        self.log.debug(&format!(
            "create {id}: container built after {} ms",
            started.elapsed().as_millis()
        ));
        hooks::run(HookKind::CreateContainer, hooks, &state)?;
        if let Some(path) = &opts.pid_file {
            pidfile::write(path, host.pid)?;
        }
        container.record_mut().status = Status::Created;
        container.save()?;
        Ok(host)
    }

    /// Undoes a failed `create`: the host process killed, the backend's resources and
    /// the record removed. Failures here are logged; the create error is what counts.
    fn abandon(&self, container: LockedContainer) {
        if let Some(p) = container.record.process {
            if let Err(e) = p.signal(Signal::KILL).and_then(|_| p.wait_exit(KILL_WAIT)) {
                self.log.warn(&format!(
                    "container {}: kill host process {}: {e}",
                    container.id(),
                    p.pid
                ));
            }
            if let Err(e) = self.backend.destroy(&container) {
                self.log.warn(&format!("container {}: {e}", container.id()));
            }
        }
        let id = container.id().to_string();
        if let Err(e) = container.remove() {
            self.log
                .warn(&format!("container {id}: remove record: {e}"));
        }
    }

    /// `start`: only a created container; poststart hooks after (failures warn).
    pub fn start(&self, id: &str) -> Result<()> {
        let mut container = self.store.lock(id)?;
        let status = container.status_now();
        if status != Status::Created {
            return Err(RuntimeError::CannotStart {
                id: id.to_string(),
                status,
            });
        }
        self.backend
            .start(&container)
            .map_err(Self::backend_err(id))?;
        container.record_mut().status = Status::Running;
        container.save()?;
        let container = container.unlock();
        let spec = Self::saved_spec(&container)?;
        let state = Self::state_for_hooks(&container, Status::Running);
        if let Err(e) = hooks::run(HookKind::Poststart, spec.hooks().as_ref(), &state) {
            self.log.warn(&e.to_string());
        }
        Ok(())
    }

    /// `kill`: refuses a stopped container, except while its host process is exited but
    /// not yet reaped: kill(2) of that pid still succeeds, and podman, which checks the
    /// pid that way when a kill fails, would fail a `stop` that in fact succeeded.
    pub fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<()> {
        let container = self.store.lock(id)?;
        if container.status_now() == Status::Stopped {
            if container.record.process.is_some_and(|p| p.is_unreaped()) {
                self.log
                    .debug(&format!("kill {id}: {signal}: exited, not yet reaped"));
                return Ok(());
            }
            return Err(RuntimeError::NotRunning(id.to_string()));
        }
        self.log.debug(&format!("kill {id}: {signal} all={all}"));
        self.backend
            .kill(&container, signal, all)
            .map_err(Self::backend_err(id))
    }

    /// `delete`: refuses a container that is not stopped unless `force`, which kills
    /// its host process first. With `force` a missing container is not an error (as
    /// with runc). poststop hooks run last (failures warn).
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let container = match self.store.lock(id) {
            Err(StoreError::NotFound(_)) if force => return Ok(()),
            other => other?,
        };
        let status = container.status_now();
        if status != Status::Stopped {
            if !force {
                return Err(RuntimeError::NotStopped {
                    id: id.to_string(),
                    status,
                });
            }
            if let Some(p) = container.record.process {
                let io = |source| RuntimeError::Io {
                    id: id.to_string(),
                    what: format!("kill host process {}", p.pid),
                    source,
                };
                p.signal(Signal::KILL).map_err(io)?;
                if !p.wait_exit(KILL_WAIT).map_err(io)? {
                    return Err(RuntimeError::Unkillable {
                        id: id.to_string(),
                        pid: p.pid,
                    });
                }
            }
        }
        self.backend
            .destroy(&container)
            .map_err(Self::backend_err(id))?;
        match Self::saved_spec(&container) {
            Ok(spec) => {
                let state = Self::state_for_hooks(&container, Status::Stopped);
                if let Err(e) = hooks::run(HookKind::Poststop, spec.hooks().as_ref(), &state) {
                    self.log.warn(&e.to_string());
                }
            }
            // A create that died before saving the spec had no hooks to run yet.
            Err(e) => self.log.debug(&e.to_string()),
        }
        container.remove()?;
        Ok(())
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        let mut container = self.store.lock(id)?;
        if container.status_now() != Status::Running {
            return Err(RuntimeError::NotRunning(id.to_string()));
        }
        self.backend
            .pause(&container)
            .map_err(Self::backend_err(id))?;
        container.record_mut().status = Status::Paused;
        Ok(container.save()?)
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        let mut container = self.store.lock(id)?;
        if container.status_now() != Status::Paused {
            return Err(RuntimeError::NotPaused(id.to_string()));
        }
        self.backend
            .resume(&container)
            .map_err(Self::backend_err(id))?;
        container.record_mut().status = Status::Running;
        Ok(container.save()?)
    }

    /// The state `husk state` prints.
    pub fn state(&self, id: &str) -> Result<OciState> {
        let (container, status) = self.store.load_current(self.store.load(id)?);
        Ok(container.record.oci_state(status))
    }

    /// Every container with its current status, by id.
    pub fn list(&self) -> Result<Vec<OciState>> {
        Ok(self
            .store
            .list()?
            .into_iter()
            .map(|c| {
                let (c, status) = self.store.load_current(c);
                c.record.oci_state(status)
            })
            .collect())
    }

    /// The container's processes (none once it has stopped).
    pub fn processes(&self, id: &str) -> Result<Vec<GuestProcess>> {
        let (container, status) = self.store.load_current(self.store.load(id)?);
        if status == Status::Stopped {
            return Ok(Vec::new());
        }
        self.backend
            .processes(&container)
            .map_err(Self::backend_err(id))
    }

    /// `exec`: starts the process; with `detach` returns 0 at once, otherwise waits
    /// and returns the process's exit status.
    pub fn exec(&self, opts: &ExecOptions) -> Result<i32> {
        check_preserve_fds(opts.preserve_fds)?;
        let id = opts.id.as_str();
        let container = self.store.lock(id)?;
        let status = container.status_now();
        if status == Status::Stopped || (status == Status::Paused && !opts.ignore_paused) {
            return Err(RuntimeError::CannotExec {
                id: id.to_string(),
                status,
            });
        }
        let process = match &opts.process {
            ExecProcess::File(path) => load_process(path)?,
            command => command_process(Self::saved_spec(&container)?, command)?,
        };
        check_terminal(
            process.terminal().unwrap_or(false),
            opts.console_socket.is_some(),
            opts.detach,
        )?;
        let request = ExecRequest {
            process: &process,
            console_socket: opts.console_socket.as_deref(),
            detach: opts.detach,
        };
        let host = self
            .backend
            .exec(&container, &request)
            .map_err(Self::backend_err(id))?;
        drop(container);
        if let Some(path) = &opts.pid_file {
            pidfile::write(path, host.pid)?;
        }
        if opts.detach {
            return Ok(0);
        }
        process::wait_child(host.pid).map_err(|source| RuntimeError::Io {
            id: id.to_string(),
            what: format!("wait for exec process {}", host.pid),
            source,
        })
    }

    /// `run`: create and start; unless `detach`, wait for the container's host
    /// process, delete the container, and return its exit status.
    pub fn run(&self, opts: &CreateOptions, detach: bool, keep: bool) -> Result<i32> {
        let host = self.create_detached(opts, detach)?;
        if let Err(e) = self.start(&opts.id) {
            let _ = self.delete(&opts.id, true);
            return Err(e);
        }
        if detach {
            return Ok(0);
        }
        let code = process::wait_child(host.pid).map_err(|source| RuntimeError::Io {
            id: opts.id.clone(),
            what: format!("wait for host process {}", host.pid),
            source,
        })?;
        if !keep {
            self.delete(&opts.id, true)?;
        }
        Ok(code)
    }
}

/// A process.json for `exec -p`, checked like a config's process.
fn load_process(path: &Path) -> Result<Process> {
    let invalid = |problems| RuntimeError::InvalidProcess {
        path: path.display().to_string(),
        problems,
    };
    let bytes = std::fs::read(path).map_err(|e| invalid(vec![e.to_string()]))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| invalid(vec![e.to_string()]))?;
    let problems = bundle::check_process(&value, "");
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    serde_json::from_value(value).map_err(|e| invalid(vec![e.to_string()]))
}

/// The container's own process with `exec`'s command-line overrides, as runc builds it.
fn command_process(spec: Spec, command: &ExecProcess) -> Result<Process> {
    let ExecProcess::Command {
        args,
        env,
        cwd,
        tty,
        user,
        additional_gids,
        caps,
        no_new_privs,
        apparmor,
        process_label,
    } = command
    else {
        return Err(RuntimeError::Usage("internal: not a command".into()));
    };
    if args.is_empty() {
        return Err(RuntimeError::Usage("exec: args must not be empty".into()));
    }
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(args.clone()));
    let mut all_env = p.env().clone().unwrap_or_default();
    for kv in env {
        let key = kv.split('=').next().unwrap_or(kv);
        all_env.retain(|e| e.split('=').next() != Some(key));
        all_env.push(kv.clone());
    }
    p.set_env(Some(all_env));
    if let Some(cwd) = cwd {
        p.set_cwd(cwd.clone());
    }
    p.set_terminal(Some(*tty));
    if let Some((uid, gid)) = user {
        let mut u = p.user().clone();
        u.set_uid(*uid);
        if let Some(gid) = gid {
            u.set_gid(*gid);
        }
        p.set_user(u);
    }
    if !additional_gids.is_empty() {
        let mut u = p.user().clone();
        u.set_additional_gids(Some(additional_gids.clone()));
        p.set_user(u);
    }
    if !caps.is_empty() {
        let unknown: Vec<&str> = caps
            .iter()
            .map(String::as_str)
            .filter(|c| !bundle::CAPABILITIES.contains(c))
            .collect();
        if !unknown.is_empty() {
            return Err(RuntimeError::Usage(format!(
                "exec --cap: unknown capabilities: {}",
                unknown.join(", ")
            )));
        }
        let mut set = p.capabilities().clone().unwrap_or_default();
        for cap in caps {
            // The serde names are the kernel's (CAP_...), which the check above allowed.
            let cap: Capability = serde_json::from_value(serde_json::Value::String(cap.clone()))
                .map_err(|e| RuntimeError::Usage(format!("exec --cap {cap}: {e}")))?;
            let add = |s: Option<std::collections::HashSet<Capability>>| {
                let mut s = s.unwrap_or_default();
                s.insert(cap);
                Some(s)
            };
            set.set_bounding(add(set.bounding().clone()));
            set.set_effective(add(set.effective().clone()));
            set.set_permitted(add(set.permitted().clone()));
            set.set_ambient(add(set.ambient().clone()));
        }
        p.set_capabilities(Some(set));
    }
    if *no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if let Some(profile) = apparmor {
        p.set_apparmor_profile(Some(profile.clone()));
    }
    if let Some(label) = process_label {
        p.set_selinux_label(Some(label.clone()));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    //! The lifecycle over a test backend whose "VMM" is a real `sleep` process: what
    //! the runtime does around the backend (records, status, hooks, pid file, clean-up
    //! on failure) without a VM.

    use super::*;
    use crate::oci::log::LogFormat;
    use serde_json::json;
    use std::sync::Mutex;

    /// Host processes are real children; the calls are recorded.
    #[derive(Default)]
    struct SleepBackend {
        calls: std::sync::Arc<Mutex<Vec<String>>>,
        fail_build: bool,
    }

    // The children are reaped by the runtime (wait_child) or by the test that killed
    // them, as a VMM child would be by its client; clippy cannot see that.
    #[allow(clippy::zombie_processes)]
    impl Backend for SleepBackend {
        fn boot(&self, r: &CreateRequest<'_>) -> std::result::Result<HostProcess, BackendError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("boot {} vcpus={}", r.id, r.vm.vcpus));
            let child = std::process::Command::new("sleep")
                .arg("300")
                .spawn()
                .unwrap();
            Ok(HostProcess::of_pid(child.id() as i32).unwrap())
        }
        fn build(
            &self,
            c: &Container,
            _: &CreateRequest<'_>,
        ) -> std::result::Result<(), BackendError> {
            self.calls.lock().unwrap().push(format!("build {}", c.id()));
            if self.fail_build {
                return Err(BackendError::ExecutableNotFound("nosuchcmd".into()));
            }
            Ok(())
        }
        fn start(&self, c: &Container) -> std::result::Result<(), BackendError> {
            self.calls.lock().unwrap().push(format!("start {}", c.id()));
            Ok(())
        }
        fn kill(&self, c: &Container, s: Signal, _: bool) -> std::result::Result<(), BackendError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("kill {} {s}", c.id()));
            c.record.process.unwrap().signal(s).unwrap();
            Ok(())
        }
        fn pause(&self, _: &Container) -> std::result::Result<(), BackendError> {
            Ok(())
        }
        fn resume(&self, _: &Container) -> std::result::Result<(), BackendError> {
            Ok(())
        }
        fn exec(
            &self,
            _: &Container,
            _: &ExecRequest<'_>,
        ) -> std::result::Result<HostProcess, BackendError> {
            let child = std::process::Command::new("sh")
                .args(["-c", "exit 7"])
                .spawn()
                .unwrap();
            Ok(HostProcess::of_pid(child.id() as i32).unwrap())
        }
        fn processes(&self, _: &Container) -> std::result::Result<Vec<GuestProcess>, BackendError> {
            Ok(vec![])
        }
        fn destroy(&self, c: &Container) -> std::result::Result<(), BackendError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("destroy {}", c.id()));
            Ok(())
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("husk-runtime-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bundle/rootfs")).unwrap();
        dir
    }

    /// A bundle whose hooks append "<kind> <status> <pid>" lines to `dir/hooks`.
    fn write_bundle(dir: &Path, fail_hook: Option<&str>) {
        let mut config = crate::oci::spec::default_config(None);
        config["process"]["terminal"] = json!(false);
        let log = dir.join("hooks");
        let hook = |kind: &str| {
            let fail = if fail_hook == Some(kind) {
                "; echo broken >&2; exit 1"
            } else {
                ""
            };
            let script = format!(
                "s=$(cat); st=${{s#*\\\"status\\\":\\\"}}; p=${{s#*\\\"pid\\\":}}; echo {kind} ${{st%%\\\"*}} ${{p%%,*}} >> {}{fail}",
                log.display()
            );
            json!([{"path": "/bin/sh", "args": ["sh", "-c", script]}])
        };
        config["hooks"] = json!({
            "prestart": hook("prestart"), "createRuntime": hook("createRuntime"),
            "createContainer": hook("createContainer"), "poststart": hook("poststart"),
            "poststop": hook("poststop"),
        });
        std::fs::write(
            dir.join("bundle/config.json"),
            serde_json::to_vec(&config).unwrap(),
        )
        .unwrap();
    }

    fn options(dir: &Path) -> CreateOptions {
        CreateOptions {
            id: "c1".into(),
            bundle: dir.join("bundle"),
            pid_file: Some(dir.join("pid")),
            ..Default::default()
        }
    }

    #[test]
    fn create_start_kill_delete_with_hooks_in_order() {
        let dir = scratch("lifecycle");
        write_bundle(&dir, None);
        let log = Logger::open(None, LogFormat::Text, false).unwrap();
        let backend = SleepBackend::default();
        let calls = backend.calls.clone();
        let rt = Runtime::new(dir.join("root"), Box::new(backend), &log);
        let host = rt.create(&options(&dir)).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("pid")).unwrap(),
            host.pid.to_string()
        );
        assert_eq!(rt.state("c1").unwrap().status, Status::Created);
        assert!(matches!(
            rt.create(&options(&dir)),
            Err(RuntimeError::Store(StoreError::Exists(_)))
        ));
        rt.start("c1").unwrap();
        assert_eq!(rt.state("c1").unwrap().status, Status::Running);
        assert!(matches!(
            rt.start("c1"),
            Err(RuntimeError::CannotStart { .. })
        ));
        rt.pause("c1").unwrap();
        assert_eq!(rt.state("c1").unwrap().status, Status::Paused);
        rt.resume("c1").unwrap();
        assert_eq!(
            rt.exec(&ExecOptions {
                id: "c1".into(),
                process: ExecProcess::Command {
                    args: vec!["true".into()],
                    env: vec![],
                    cwd: None,
                    tty: false,
                    user: None,
                    additional_gids: vec![],
                    caps: vec![],
                    no_new_privs: false,
                    apparmor: None,
                    process_label: None,
                },
                console_socket: None,
                pid_file: None,
                detach: false,
                preserve_fds: 0,
                ignore_paused: false,
            })
            .unwrap(),
            7
        );
        assert!(matches!(
            rt.delete("c1", false),
            Err(RuntimeError::NotStopped { .. })
        ));
        rt.kill("c1", Signal::KILL, false).unwrap();
        // Exited, not yet reaped: a kill succeeds, as kill(2) of that pid would, and
        // reaches no backend.
        assert!(host.wait_exit(std::time::Duration::from_secs(10)).unwrap());
        rt.kill("c1", Signal::TERM, false).unwrap();
        // The "VMM" is our child: reap it so it is gone, not a zombie.
        assert_eq!(process::wait_child(host.pid).unwrap(), 137);
        assert_eq!(rt.state("c1").unwrap().status, Status::Stopped);
        assert!(matches!(
            rt.kill("c1", Signal::TERM, false),
            Err(RuntimeError::NotRunning(_))
        ));
        rt.delete("c1", false).unwrap();
        assert!(rt.list().unwrap().is_empty());
        let hooks = std::fs::read_to_string(dir.join("hooks")).unwrap();
        let pid = host.pid;
        assert_eq!(
            hooks,
            format!("prestart creating {pid}\ncreateRuntime creating {pid}\ncreateContainer creating {pid}\n\
                     poststart running {pid}\npoststop stopped {pid}\n")
        );
        assert_eq!(
            *calls.lock().unwrap(),
            [
                "boot c1 vcpus=1",
                "build c1",
                "start c1",
                "kill c1 SIGKILL",
                "destroy c1"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failing_create_hook_leaves_nothing() {
        let dir = scratch("hookfail");
        write_bundle(&dir, Some("createRuntime"));
        let log = Logger::open(None, LogFormat::Text, false).unwrap();
        let backend = SleepBackend::default();
        let calls = backend.calls.clone();
        let rt = Runtime::new(dir.join("root"), Box::new(backend), &log);
        let e = rt.create(&options(&dir)).unwrap_err().to_string();
        assert!(
            e.starts_with("createRuntime hook /bin/sh failed: exit status: 1: broken"),
            "{e}"
        );
        assert!(rt.list().unwrap().is_empty());
        assert_eq!(std::fs::read_dir(dir.join("root")).unwrap().count(), 0);
        assert!(!dir.join("pid").exists());
        // The host process was killed and the backend told to clean up.
        assert_eq!(*calls.lock().unwrap(), ["boot c1 vcpus=1", "destroy c1"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failing_build_reports_podmans_words() {
        let dir = scratch("buildfail");
        write_bundle(&dir, None);
        let log = Logger::open(None, LogFormat::Text, false).unwrap();
        let backend = SleepBackend {
            fail_build: true,
            ..Default::default()
        };
        let rt = Runtime::new(dir.join("root"), Box::new(backend), &log);
        let e = rt.create(&options(&dir)).unwrap_err().to_string();
        assert!(e.contains("executable file not found in $PATH"), "{e}");
        assert!(rt.list().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// runc's table: (terminal, console socket, detach) -> error words.
    #[test]
    fn terminal_and_console_socket_follow_runc() {
        let words = |t, c, d| check_terminal(t, c, d).err().map(|e| e.to_string());
        assert_eq!(words(true, true, true), None);
        assert_eq!(words(true, false, false), None);
        assert_eq!(words(false, false, true), None);
        assert_eq!(words(false, false, false), None);
        let detached = words(true, false, true).unwrap();
        assert!(
            detached
                .contains("cannot allocate tty if husk will detach without setting console socket"),
            "{detached}"
        );
        for (t, d) in [(false, true), (false, false), (true, false)] {
            let e = words(t, true, d).unwrap();
            assert!(
                e.contains("cannot use console socket if husk will not detach or allocate tty"),
                "{e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
