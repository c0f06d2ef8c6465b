//! The microVM backend: each container is one VM monitor process ([`crate::monitor`]),
//! spawned by `create`, whose pid is the container's pid. Every later command talks to
//! it over its control socket in the container's state directory.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::backend::{Backend, BackendError, CreateRequest, ExecRequest, GuestProcess};
use super::exec_proxy::spawn_exec_proxy;
use super::process::{self, HostProcess};
use super::ready_pipe;
use super::signal::Signal;
use super::store::{write_atomic, Container};
use husk_protocol::ErrorKind;

use crate::assets::{self, Asset};
use crate::monitor::control::{self, MonitorRequest, MonitorResponse};
use crate::monitor::{binds, cgroup, InitStdio, MonitorConfig, CONFIG_FILE, SANDBOX_ID};
use crate::sandbox::{ROOTFS_GUEST_PATH, VSOCK_SOCKET};

/// How long the agent has to come up (the test bed is slow; a real host takes ~100 ms).
const READY_TIMEOUT_SECS: u64 = 240;
/// How long `create` waits for the monitor's report: the agent's deadline plus setup.
const BOOT_TIMEOUT: Duration = Duration::from_secs(READY_TIMEOUT_SECS + 30);
/// How long a request to the monitor may take: longer than its own agent requests.
const REQUEST_TIMEOUT: Duration =
    Duration::from_secs(crate::monitor::AGENT_REQUEST_TIMEOUT.as_secs() + 30);
/// The fd number the monitor gets its ready pipe on.
const READY_FD: i32 = 3;
/// The hidden subcommand that runs the monitor.
pub const MONITOR_COMMAND: &str = "sandbox-monitor";

/// The backend [`super::backend::default_backend`] returns.
#[derive(Debug, Default)]
pub struct SandboxBackend;

fn failed(what: &str, message: impl Into<String>) -> BackendError {
    BackendError::Failed {
        what: what.to_string(),
        message: message.into(),
    }
}

/// Sends `request` to the container's monitor; an error answer becomes the error.
fn call(
    container: &Container,
    what: &str,
    request: MonitorRequest,
) -> Result<MonitorResponse, BackendError> {
    match control::call(&container.dir, &request, REQUEST_TIMEOUT) {
        Ok(MonitorResponse::Error { message, .. }) => Err(failed(what, message)),
        Ok(r) => Ok(r),
        // A monitor gone or mute because its VM ended: the cause, as it recorded it.
        Err(e) => match fs::read_to_string(container.dir.join(control::VM_ENDED)) {
            Ok(why) => Err(failed(what, format!("{} ({e})", why.trim()))),
            Err(_) => Err(failed(what, e.to_string())),
        },
    }
}

fn call_ok(container: &Container, what: &str, request: MonitorRequest) -> Result<(), BackendError> {
    call(container, what, request).map(|_| ())
}

/// Removes what a monitor leaves in the state directory, whether it exited or was
/// killed: its files and sockets, the sandbox's directory, the (empty) bind mount
/// points, the cgroups it created. Mounts and the VM died with the process.
fn clean_state_dir(dir: &Path) -> Result<(), BackendError> {
    let what = "clean up after the VM monitor";
    cgroup::remove(&dir.join(cgroup::CGROUPS_FILE)).map_err(|e| failed(what, e.to_string()))?;
    for file in [control::SOCKET, control::VM_ENDED, CONFIG_FILE] {
        match fs::remove_file(dir.join(file)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(what, format!("{}: {e}", dir.join(file).display()))),
        }
    }
    let vm = dir.join(SANDBOX_ID);
    match fs::remove_dir_all(&vm) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(what, format!("{}: {e}", vm.display()))),
    }
    // Mount points only, never followed: a mount here would be the monitor's, and its
    // namespace is gone, but nothing under a bind source is ever deleted recursively.
    let binds = dir.join(binds::BINDS_DIR);
    if let Ok(entries) = fs::read_dir(&binds) {
        for entry in entries.flatten() {
            let path = entry.path();
            let r = match entry.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir(&path),
                _ => fs::remove_file(&path),
            };
            r.map_err(|e| failed(what, format!("{}: {e}", path.display())))?;
        }
        fs::remove_dir(&binds).map_err(|e| failed(what, format!("{}: {e}", binds.display())))?;
    }
    Ok(())
}

/// How the init's stdio reaches the host (the runtime has checked the combination as
/// runc does: a console socket only with a terminal, a terminal without one only for a
/// foreground `run`).
fn init_stdio(request: &CreateRequest<'_>) -> Result<InitStdio, BackendError> {
    let terminal = request
        .bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    Ok(match (terminal, request.console_socket) {
        (false, _) => InitStdio::Inherit,
        (true, None) => InitStdio::CallerTerminal,
        // Absolute: the monitor must find it whatever its working directory.
        (true, Some(socket)) => {
            InitStdio::ConsoleSocket(std::path::absolute(socket).map_err(|e| {
                failed(
                    "cannot use the console socket",
                    format!("{}: {e}", socket.display()),
                )
            })?)
        }
    })
}

/// Namespace paths name the host's namespaces (podman's `/run/netns/...`), which the
/// guest does not have: the container gets fresh namespaces of those types in its VM.
fn drop_namespace_paths(spec: &mut oci_spec::runtime::Spec) {
    if let Some(namespaces) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    {
        for ns in namespaces.iter_mut() {
            ns.set_path(None);
        }
    }
}

impl SandboxBackend {
    /// The monitor's configuration for this container.
    fn monitor_config(request: &CreateRequest<'_>) -> Result<MonitorConfig, BackendError> {
        let what = "cannot create the container";
        let asset = |a| assets::find(a).map_err(|e| failed(what, e.to_string()));
        let mut spec = request.bundle.spec.clone();
        let binds =
            binds::plan(&mut spec, &request.bundle.dir).map_err(|e| failed(what, e.to_string()))?;
        drop_namespace_paths(&mut spec);
        let mut root = spec.root().clone().unwrap_or_default();
        root.set_path(PathBuf::from(ROOTFS_GUEST_PATH));
        spec.set_root(Some(root));
        let cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.display().to_string())
            .filter(|p| !p.is_empty());
        Ok(MonitorConfig {
            id: request.id.to_string(),
            kernel: asset(Asset::Kernel)?,
            initrd: asset(Asset::Initrd)?,
            rootfs: request.bundle.rootfs.clone(),
            vcpus: request.vm.vcpus,
            memory_mib: request.vm.memory_mib,
            spec,
            binds,
            cgroups_path,
            ready_timeout_secs: READY_TIMEOUT_SECS,
            stdio: init_stdio(request)?,
        })
    }

    /// Spawns the monitor and waits for its report; on failure leaves nothing.
    fn spawn_monitor(state_dir: &Path) -> Result<HostProcess, BackendError> {
        let what = "cannot boot the container's VM";
        let (read, write) = ready_pipe::pipe().map_err(|e| failed(what, format!("pipe: {e}")))?;
        let mut command = Command::new("/proc/self/exe");
        command
            .arg(MONITOR_COMMAND)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--ready-fd")
            .arg(READY_FD.to_string())
            // The monitor's stdio is the container's: exactly what create got.
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        // SAFETY: only async-signal-safe calls (sigemptyset, sigprocmask) between fork
        // and exec.
        unsafe {
            command.pre_exec(|| {
                // Whatever this husk blocked, the monitor starts with every signal open.
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                Ok(())
            });
        }
        ready_pipe::give_to_child(&mut command, &write, READY_FD);
        let child = command
            .spawn()
            .map_err(|e| failed(what, format!("cannot start the VM monitor: {e}")))?;
        drop(write);
        let pid = child.id() as i32;
        let report = ready_pipe::read_to_eof(read, Instant::now() + BOOT_TIMEOUT)
            .map(|r| String::from_utf8_lossy(&r).into_owned());
        let error = match report {
            Ok(r) if r.trim() == "ok" => {
                return HostProcess::of_pid(pid)
                    .map_err(|e| failed(what, format!("the VM monitor {pid} vanished: {e}")));
            }
            Ok(r) if r.starts_with("error ") => r["error ".len()..].trim().to_string(),
            Ok(_) => String::new(),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                format!("the VM monitor did not report within {BOOT_TIMEOUT:?}")
            }
            Err(e) => format!("reading the VM monitor's report: {e}"),
        };
        // SAFETY: plain syscall; the child is ours and not yet reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let status = process::wait_child(pid).unwrap_or(255);
        let error = if error.is_empty() {
            format!("the VM monitor exited during the boot (status {status})")
        } else {
            error
        };
        let _ = clean_state_dir(state_dir);
        Err(failed(what, error))
    }
}

impl Backend for SandboxBackend {
    fn boot(&self, request: &CreateRequest<'_>) -> Result<HostProcess, BackendError> {
        let config = Self::monitor_config(request)?;
        let path = request.state_dir.join(CONFIG_FILE);
        let bytes = serde_json::to_vec(&config).unwrap_or_default();
        write_atomic(&path, &bytes).map_err(|e| {
            failed(
                "cannot create the container",
                format!("write {}: {e}", path.display()),
            )
        })?;
        Self::spawn_monitor(request.state_dir)
    }

    fn build(
        &self,
        container: &Container,
        request: &CreateRequest<'_>,
    ) -> Result<(), BackendError> {
        let what = "cannot build the container";
        let program = || {
            request
                .bundle
                .spec
                .process()
                .as_ref()
                .and_then(|p| p.args().as_ref())
                .and_then(|a| a.first().cloned())
                .unwrap_or_default()
        };
        match control::call(&container.dir, &MonitorRequest::Build, REQUEST_TIMEOUT) {
            Ok(MonitorResponse::Ok) => Ok(()),
            // The words podman maps to 127 and 126.
            Ok(MonitorResponse::Error {
                kind: Some(ErrorKind::ExecutableNotFound),
                ..
            }) => Err(BackendError::ExecutableNotFound(program())),
            Ok(MonitorResponse::Error {
                kind: Some(ErrorKind::PermissionDenied),
                ..
            }) => Err(BackendError::PermissionDenied(program())),
            Ok(MonitorResponse::Error { message, .. }) => Err(failed(what, message)),
            Ok(other) => Err(failed(what, format!("unexpected answer {other:?}"))),
            Err(e) => Err(failed(what, e.to_string())),
        }
    }

    fn start(&self, container: &Container) -> Result<(), BackendError> {
        call_ok(
            container,
            "cannot start the container",
            MonitorRequest::Start,
        )
    }

    fn kill(&self, container: &Container, signal: Signal, all: bool) -> Result<(), BackendError> {
        let request = MonitorRequest::Kill {
            signal: signal.number(),
            all,
        };
        call_ok(container, &format!("cannot send {signal}"), request)
    }

    fn pause(&self, container: &Container) -> Result<(), BackendError> {
        call_ok(
            container,
            "cannot pause the container",
            MonitorRequest::Pause,
        )
    }

    fn resume(&self, container: &Container) -> Result<(), BackendError> {
        call_ok(
            container,
            "cannot resume the container",
            MonitorRequest::Resume,
        )
    }

    /// The exec proxy talks to the agent straight over the sandbox's vsock socket: the
    /// monitor is not in the path of an exec'd process's bytes.
    fn exec(
        &self,
        container: &Container,
        request: &ExecRequest<'_>,
    ) -> Result<HostProcess, BackendError> {
        let agent_socket = container.dir.join(SANDBOX_ID).join(VSOCK_SOCKET);
        spawn_exec_proxy(&agent_socket, container.id(), &container.dir, request)
    }

    fn processes(&self, container: &Container) -> Result<Vec<GuestProcess>, BackendError> {
        let what = "cannot list the container's processes";
        match call(container, what, MonitorRequest::Processes)? {
            MonitorResponse::Processes(list) => Ok(list
                .into_iter()
                .map(|p| GuestProcess {
                    pid: p.pid,
                    command: p.command,
                })
                .collect()),
            other => Err(failed(what, format!("unexpected answer {other:?}"))),
        }
    }

    fn destroy(&self, container: &Container) -> Result<(), BackendError> {
        clean_state_dir(&container.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn host_namespace_paths_become_fresh_guest_namespaces() {
        let mut spec: oci_spec::runtime::Spec = serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [
                {"type": "pid"},
                {"type": "network", "path": "/run/netns/netns-1234"}
            ]}
        }))
        .unwrap();
        drop_namespace_paths(&mut spec);
        let value = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            value["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "network"}])
        );
    }
}
