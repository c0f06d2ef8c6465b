//! The microVM backend: each container is one VM monitor process ([`crate::monitor`]),
//! spawned by `create`, whose pid is the container's pid. Every later command talks to
//! it over its control socket in the container's state directory.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::backend::{Backend, BackendError, CreateRequest, ExecRequest, GuestProcess};
use super::exec_proxy::spawn_exec_proxy;
use super::process::{self, HostProcess};
use super::signal::Signal;
use super::store::{write_atomic, Container};
use husk_protocol::ErrorKind;

use crate::assets::{self, Asset};
use crate::monitor::control::{self, MonitorRequest, MonitorResponse};
use crate::monitor::{binds, cgroup, MonitorConfig, CONFIG_FILE, SANDBOX_ID};
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
        Err(e) => Err(failed(what, e.to_string())),
    }
}

fn call_ok(container: &Container, what: &str, request: MonitorRequest) -> Result<(), BackendError> {
    call(container, what, request).map(|_| ())
}

/// A pipe whose ends are close-on-exec: (read, write).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads the monitor's report from `read` until EOF or `deadline`.
fn read_report(read: OwnedFd, deadline: Instant) -> io::Result<Option<String>> {
    let mut file = fs::File::from(read);
    let mut report = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            continue;
        }
        match file.read(&mut buf) {
            Ok(0) => return Ok(Some(String::from_utf8_lossy(&report).into_owned())),
            Ok(n) => report.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Removes what a monitor leaves in the state directory, whether it exited or was
/// killed: its files and sockets, the sandbox's directory, the (empty) bind mount
/// points, the cgroups it created. Mounts and the VM died with the process.
fn clean_state_dir(dir: &Path) -> Result<(), BackendError> {
    let what = "clean up after the VM monitor";
    cgroup::remove(&dir.join(cgroup::CGROUPS_FILE)).map_err(|e| failed(what, e.to_string()))?;
    for file in [control::SOCKET, CONFIG_FILE] {
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
        })
    }

    /// Spawns the monitor and waits for its report; on failure leaves nothing.
    fn spawn_monitor(state_dir: &Path) -> Result<HostProcess, BackendError> {
        let what = "cannot boot the container's VM";
        let (read, write) = pipe().map_err(|e| failed(what, format!("pipe: {e}")))?;
        let write_fd = write.as_raw_fd();
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
        // SAFETY: only async-signal-safe calls (sigprocmask, dup2, fcntl) between fork
        // and exec.
        unsafe {
            command.pre_exec(move || {
                // Whatever this husk blocked, the monitor starts with every signal open.
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                if write_fd == READY_FD {
                    if libc::fcntl(READY_FD, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(write_fd, READY_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| failed(what, format!("cannot start the VM monitor: {e}")))?;
        drop(write);
        let pid = child.id() as i32;
        let report = read_report(read, Instant::now() + BOOT_TIMEOUT);
        let error = match report {
            Ok(Some(r)) if r.trim() == "ok" => {
                return HostProcess::of_pid(pid)
                    .map_err(|e| failed(what, format!("the VM monitor {pid} vanished: {e}")));
            }
            Ok(Some(r)) if r.starts_with("error ") => r["error ".len()..].trim().to_string(),
            Ok(Some(_)) => String::new(),
            Ok(None) => format!("the VM monitor did not report within {BOOT_TIMEOUT:?}"),
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
        let terminal = request
            .bundle
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        if terminal {
            return Err(failed(
                "cannot create a container with process.terminal",
                "this build of husk has no pty relay for containers yet",
            ));
        }
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

    #[test]
    fn the_monitor_report_is_read_to_eof_within_the_deadline() {
        let (read, write) = pipe().unwrap();
        let mut w = fs::File::from(write);
        std::io::Write::write_all(&mut w, b"error the guest agent was not ready\n").unwrap();
        drop(w);
        let report = read_report(read, Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(
            report.as_deref(),
            Some("error the guest agent was not ready\n")
        );
        let (read, _write) = pipe().unwrap();
        let report = read_report(read, Instant::now() + Duration::from_millis(50)).unwrap();
        assert_eq!(report, None);
    }
}
