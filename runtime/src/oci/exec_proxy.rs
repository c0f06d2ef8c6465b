//! The host process that stands for an exec'd guest process: `husk exec-proxy`
//! (runtime/src/cli/exec_proxy.rs), spawned here for [`super::Backend::exec`].
//!
//! ```text
//! husk exec (holds the container's lock, a close-on-exec fd)
//!   spawn_exec_proxy ─ <state dir>/exec-<exec id>.json = the process
//!     ├─ fork + exec `husk exec-proxy --ready-fd 3 ...` (so no lock fd survives in it)
//!     │     streams opened, console master sent, ExecProcess, then on fd 3:
//!     │     {"Ok":<guest pid>} or {"Err":{"kind":..,"message":..}}, fd 3 closed
//!     └─ reads fd 3 to EOF: Ok -> HostProcess(proxy); Err -> the agent's refusal
//!        (executable not found: the words podman maps to 127)
//! the proxy relays stdio/signals/tty size and exits with the process's status
//! ```
//!
//! Waiting for the report is what makes `exec --detach` return only once the process
//! exists and the console master has reached the client (conmon fails otherwise).

use std::fs::File;
use std::io::Write;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use husk_protocol::{AgentError, ErrorKind};

use super::backend::{BackendError, ExecRequest};
use super::process::HostProcess;
use super::ready_pipe;

/// The fd on which the proxy reports whether the process started.
pub const READY_FD: RawFd = 3;
/// The hidden subcommand.
pub const SUBCOMMAND: &str = "exec-proxy";
/// How long the proxy may take to start the process (streams, ExecProcess: a few
/// agent round trips; generous for emulated test hosts).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What the proxy reports on [`READY_FD`]: the guest pid, or why the process did not
/// start.
pub type ProxyReport = Result<i32, AgentError>;

/// Starts an exec proxy (`husk exec-proxy`, this very binary) for `request` in container
/// `container_id` of the sandbox whose agent listens on `agent_socket`
/// (`<sandbox state dir>/vsock.sock`); `state_dir` is the container's directory in the
/// state store (the process.json goes there). Returns once the process runs in the
/// guest; the proxy is a child of this process.
pub fn spawn_exec_proxy(
    agent_socket: &Path,
    container_id: &str,
    state_dir: &Path,
    request: &ExecRequest<'_>,
) -> Result<HostProcess, BackendError> {
    let husk = std::env::current_exe().map_err(|e| failed("find the husk binary", e))?;
    spawn_exec_proxy_with(&husk, agent_socket, container_id, state_dir, request)
}

/// [`spawn_exec_proxy`] with the husk binary given (tests run it from another binary).
pub fn spawn_exec_proxy_with(
    husk: &Path,
    agent_socket: &Path,
    container_id: &str,
    state_dir: &Path,
    request: &ExecRequest<'_>,
) -> Result<HostProcess, BackendError> {
    let exec_id = new_exec_id();
    let process_json = process_json_path(state_dir, &exec_id);
    write_process(&process_json, request)?;
    let outcome = spawn_and_wait_ready(
        husk,
        &proxy_args(agent_socket, container_id, &exec_id, &process_json, request),
        request.console_socket.is_some(),
    );
    // The proxy has read it (or is gone) either way.
    let _ = std::fs::remove_file(&process_json);
    let (mut child, report) = outcome?;
    match report {
        Ok(_guest_pid) => HostProcess::of_pid(child.id() as i32)
            .map_err(|e| failed("find the exec proxy process", e)),
        Err(refusal) => {
            // It exits right after reporting; reaped here rather than left a zombie.
            let _ = child.wait();
            let arg0 = request
                .process
                .args()
                .as_ref()
                .and_then(|a| a.first().cloned())
                .unwrap_or_default();
            Err(match refusal.kind {
                ErrorKind::ExecutableNotFound => BackendError::ExecutableNotFound(arg0),
                ErrorKind::PermissionDenied => BackendError::PermissionDenied(arg0),
                _ => BackendError::Failed {
                    what: format!("exec in container {container_id}"),
                    message: refusal.message,
                },
            })
        }
    }
}

/// `exec-<pid>-<ns>`: unique among this container's execs ([A-Za-z0-9-], as the agent
/// requires).
fn new_exec_id() -> String {
    let ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("exec-{}-{ns:x}", std::process::id())
}

fn failed(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Failed {
        what: format!("cannot {what}"),
        message: e.to_string(),
    }
}

fn write_process(path: &Path, request: &ExecRequest<'_>) -> Result<(), BackendError> {
    let json =
        serde_json::to_vec(request.process).map_err(|e| failed("encode the exec process", e))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| failed(&format!("write {}", path.display()), e))?;
    file.write_all(&json)
        .map_err(|e| failed(&format!("write {}", path.display()), e))
}

/// The proxy's command line after the binary.
pub fn proxy_args(
    agent_socket: &Path,
    container_id: &str,
    exec_id: &str,
    process_json: &Path,
    request: &ExecRequest<'_>,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
        SUBCOMMAND.into(),
        "--ready-fd".into(),
        READY_FD.to_string().into(),
        "--exec-id".into(),
        exec_id.into(),
    ];
    if let Some(socket) = request.console_socket {
        args.push("--console-socket".into());
        args.push(socket.into());
    } else if request.process.terminal().unwrap_or(false) {
        // A tty without a console socket: the caller's own terminal (a foreground exec).
        args.push("--tty".into());
    }
    args.push(agent_socket.into());
    args.push(container_id.into());
    args.push(process_json.into());
    args
}

/// Spawns `husk args...` with a pipe's write end as its [`READY_FD`]; reads its report.
/// With `pty` (the process's stdio is a pty sent to a console socket) the proxy does not
/// keep the caller's stdio: as with runc, whoever reads `exec --detach`'s output sees EOF
/// when it returns, not when the process ends. Failures to start still come back on the
/// ready pipe.
fn spawn_and_wait_ready(
    husk: &Path,
    args: &[std::ffi::OsString],
    pty: bool,
) -> Result<(Child, ProxyReport), BackendError> {
    let (ready_r, ready_w) =
        ready_pipe::pipe().map_err(|e| failed("create the exec proxy's pipe", e))?;
    let mut command = Command::new(husk);
    command.args(args);
    if pty {
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
    }
    ready_pipe::give_to_child(&mut command, &ready_w, READY_FD);
    let mut child = command
        .spawn()
        .map_err(|e| failed(&format!("start {}", husk.display()), e))?;
    // Ours must go, or the read below never sees EOF.
    drop(ready_w);
    match read_report(ready_r, READY_TIMEOUT) {
        Ok(Some(report)) => Ok((child, report)),
        Ok(None) => {
            let status = child.wait().map(super::process::exit_code).unwrap_or(-1);
            Err(BackendError::Failed {
                what: "exec".into(),
                message: format!(
                    "the exec proxy exited (status {status}) before the process started"
                ),
            })
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(failed("start the process through the exec proxy", e))
        }
    }
}

/// Reads the proxy's report until EOF, within `timeout`. `Ok(None)`: EOF without one.
fn read_report(fd: OwnedFd, timeout: Duration) -> std::io::Result<Option<ProxyReport>> {
    let text = ready_pipe::read_to_eof(fd, Instant::now() + timeout).map_err(|e| {
        if e.kind() == std::io::ErrorKind::TimedOut {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from the exec proxy within {timeout:?}"),
            )
        } else {
            e
        }
    })?;
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The proxy's side: writes `report` to the ready fd and closes it.
pub fn send_report(ready: File, report: &ProxyReport) -> std::io::Result<()> {
    let mut ready = ready;
    let json = serde_json::to_vec(report).map_err(std::io::Error::other)?;
    ready.write_all(&json)
}

/// Where a container's exec process files go (for clean-up checks).
pub fn process_json_path(state_dir: &Path, exec_id: &str) -> PathBuf {
    state_dir.join(format!("{exec_id}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_through_a_pipe() {
        for report in [
            Ok(42),
            Err(AgentError::new(
                ErrorKind::ExecutableNotFound,
                "exec: \"nope\": executable file not found in $PATH",
            )),
        ] {
            let (r, w) = nix::unistd::pipe().unwrap();
            send_report(File::from(w), &report).unwrap();
            let got = read_report(r, Duration::from_secs(5)).unwrap();
            assert_eq!(got, Some(report));
        }
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(w);
        assert_eq!(read_report(r, Duration::from_secs(5)).unwrap(), None);
    }

    #[test]
    fn a_silent_proxy_times_out() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let e = read_report(r, Duration::from_millis(50)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }

    #[test]
    fn arguments_follow_the_request() {
        let mut process = oci_spec::runtime::Process::default();
        process.set_terminal(Some(true));
        let request = ExecRequest {
            process: &process,
            console_socket: Some(Path::new("/tmp/c.sock")),
            detach: true,
        };
        let args = proxy_args(
            Path::new("/run/husk-vm/x/vsock.sock"),
            "c1",
            "exec-1",
            Path::new("/s/exec-1.json"),
            &request,
        );
        let args: Vec<_> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "exec-proxy",
                "--ready-fd",
                "3",
                "--exec-id",
                "exec-1",
                "--console-socket",
                "/tmp/c.sock",
                "/run/husk-vm/x/vsock.sock",
                "c1",
                "/s/exec-1.json"
            ]
        );
        let request = ExecRequest {
            console_socket: None,
            detach: false,
            ..request
        };
        let args = proxy_args(Path::new("/v"), "c", "e", Path::new("/p"), &request);
        assert!(args.iter().any(|a| a == "--tty"));
    }
}
