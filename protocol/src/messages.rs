//! The messages: requests, responses, errors, exit statuses, stdio stream headers and
//! agent events. All are plain serde types encoded as JSON frames ([`crate::frame`]).
//!
//! Processes are named by [`ProcessRef`]: a container id plus an optional exec id, `None`
//! being the container's own (init) process. The host chooses both ids; the agent checks
//! them with [`validate_id`] since they may end up in paths.

use std::fmt;

use oci_spec::runtime::{Process, Spec};
use serde::{Deserialize, Serialize};

/// One process of one container: `exec_id: None` is the container's init process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessRef {
    pub container_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
}

impl ProcessRef {
    /// The init process of `container_id`.
    pub fn init(container_id: impl Into<String>) -> Self {
        ProcessRef {
            container_id: container_id.into(),
            exec_id: None,
        }
    }

    /// Exec `exec_id` in `container_id`.
    pub fn exec(container_id: impl Into<String>, exec_id: impl Into<String>) -> Self {
        ProcessRef {
            container_id: container_id.into(),
            exec_id: Some(exec_id.into()),
        }
    }
}

impl fmt::Display for ProcessRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.exec_id {
            Some(e) => write!(f, "{}/exec {}", self.container_id, e),
            None => write!(f, "{}", self.container_id),
        }
    }
}

/// Which stdio streams a process gets. Each `true` here is one stdio connection that the
/// host opens (and gets acknowledged) on [`crate::AGENT_STDIO_PORT`] *before* sending the
/// request that starts the process, so no byte is written before someone reads it. The
/// agent waits a short while for announced streams that have not arrived yet.
///
/// With `terminal`, there is exactly one bidirectional [`StreamKind::Tty`] stream (stderr is
/// the tty too) and the other flags must be false. A stream not requested is `/dev/null`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdioConfig {
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdout: bool,
    #[serde(default)]
    pub stderr: bool,
    #[serde(default)]
    pub terminal: bool,
}

impl StdioConfig {
    /// The stream kinds the host must open, in the order it should open them.
    pub fn kinds(&self) -> Vec<StreamKind> {
        if self.terminal {
            return vec![StreamKind::Tty];
        }
        let mut v = Vec::new();
        if self.stdin {
            v.push(StreamKind::Stdin);
        }
        if self.stdout {
            v.push(StreamKind::Stdout);
        }
        if self.stderr {
            v.push(StreamKind::Stderr);
        }
        v
    }

    /// Rejects a tty combined with separate streams.
    pub fn validate(&self) -> Result<(), AgentError> {
        if self.terminal && (self.stdin || self.stdout || self.stderr) {
            return Err(AgentError::new(
                ErrorKind::InvalidArgument,
                "a terminal process has one tty stream, not separate stdin/stdout/stderr",
            ));
        }
        Ok(())
    }
}

/// A host -> agent request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Liveness check: `Pong`.
    Ping,
    /// `Response::Version`: the protocol version and the agent's build.
    Version,
    /// Build container `id` from `spec` (its `root.path` is already the guest path of the
    /// rootfs) and create its init process `spec.process`, stopped before exec until
    /// `StartContainer`. `Response::Pid`.
    CreateContainer {
        id: String,
        spec: Spec,
        #[serde(default)]
        stdio: StdioConfig,
    },
    /// Let the init process of container `id` exec. `Response::Ok`.
    StartContainer { id: String },
    /// Run `process` in container `container_id`, at once. `Response::Pid`.
    ExecProcess {
        container_id: String,
        exec_id: String,
        process: Process,
        #[serde(default)]
        stdio: StdioConfig,
    },
    /// Send `signal` (a Linux signal number) to the process, or with `all` to every process
    /// of the container (every process of its pid namespace, execs and their children
    /// included; `process.exec_id` is then ignored). `Response::Ok`; signalling an exited
    /// process, or `all` when none is left, is `NotFound`.
    Signal {
        process: ProcessRef,
        signal: i32,
        #[serde(default)]
        all: bool,
    },
    /// Block this connection until the process exits. `Response::Exit`.
    Wait { process: ProcessRef },
    /// Set the process's tty size. `Response::Ok`; `InvalidArgument` without a tty.
    ResizeTty {
        process: ProcessRef,
        rows: u16,
        cols: u16,
    },
    /// EOF on the process's stdin, even if the host's stdin stream stays open.
    CloseStdin { process: ProcessRef },
    /// Mount the virtio-fs share `tag` at the guest path `target` (created if missing),
    /// read-only with `read_only` (the host enforces it too). Shares are how the host's
    /// rootfs and volumes reach the guest: the host mounts the rootfs share first and names
    /// its `target` as the `root.path` of `CreateContainer`. `Response::Ok`.
    MountShare {
        tag: String,
        target: String,
        #[serde(default)]
        read_only: bool,
    },
    /// The processes of container `id` (`husk ps`, containerd's `Pids`): every process of
    /// its pid namespace, init first. `Response::Processes`; `NotFound` for an unknown id.
    ListProcesses { id: String },
    /// Sync and power the VM off after answering `Response::Ok`.
    Shutdown,
}

impl Request {
    /// The request's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Version => "version",
            Request::CreateContainer { .. } => "create_container",
            Request::StartContainer { .. } => "start_container",
            Request::ExecProcess { .. } => "exec_process",
            Request::Signal { .. } => "signal",
            Request::Wait { .. } => "wait",
            Request::ResizeTty { .. } => "resize_tty",
            Request::CloseStdin { .. } => "close_stdin",
            Request::MountShare { .. } => "mount_share",
            Request::ListProcesses { .. } => "list_processes",
            Request::Shutdown => "shutdown",
        }
    }
}

/// An agent -> host answer to a successful request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok,
    Pong,
    Version {
        protocol: u32,
        agent: String,
    },
    /// The guest pid of the process just created.
    Pid {
        pid: i32,
    },
    Exit {
        status: ExitStatus,
    },
    /// Answer to `ListProcesses`, sorted by pid.
    Processes {
        processes: Vec<GuestProcessInfo>,
    },
}

/// One process of a container, as `ListProcesses` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestProcessInfo {
    /// The pid inside the container's pid namespace (1 = its init). Without a pid
    /// namespace of its own, the guest pid.
    pub pid: i32,
    /// The command line (`/proc/N/cmdline`, arguments joined by spaces), or the command
    /// name in brackets for a process without one (`ps` style).
    pub command: String,
}

/// Request envelope: `id` is echoed in the response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    pub id: u64,
    pub request: Request,
}

/// Response envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub id: u64,
    pub result: Result<Response, AgentError>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// `exit(code)`; `code` is 0..=255.
    Exited(i32),
    /// Killed by signal N.
    Signaled(i32),
}

impl ExitStatus {
    /// The shell's (and podman/conmon's, and containerd's) single number: the exit code, or
    /// 128+N when signal N killed the process (SIGKILL -> 137, SIGTERM -> 143).
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(n) => 128 + n,
        }
    }

    /// Decodes a raw `wait(2)` status (exited or signalled; anything else is `None`).
    pub fn from_wait_status(status: i32) -> Option<ExitStatus> {
        // The layout of wait statuses is fixed by Linux: low 7 bits = signal, 0 = exited.
        let sig = status & 0x7f;
        if sig == 0 {
            Some(ExitStatus::Exited((status >> 8) & 0xff))
        } else if sig != 0x7f {
            Some(ExitStatus::Signaled(sig))
        } else {
            None // stopped/continued
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(c) => write!(f, "exit status {c}"),
            ExitStatus::Signaled(n) => write!(f, "killed by signal {n}"),
        }
    }
}

/// What kind of failure an [`AgentError`] is; stable across versions of the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No such container/process (or it already exited).
    NotFound,
    AlreadyExists,
    /// The command does not exist: the CLI exits 127.
    ExecutableNotFound,
    /// The command exists but may not be run: the CLI exits 126.
    PermissionDenied,
    InvalidArgument,
    /// Valid, but this agent does not do it (yet).
    Unsupported,
    /// Anything else that failed inside the agent.
    Internal,
}

impl ErrorKind {
    /// The exit status a CLI should report for this failure when it is a process's start
    /// that failed (shell and podman conventions): 127, 126, or `None` for "use your own".
    pub fn exit_code(self) -> Option<i32> {
        match self {
            ErrorKind::ExecutableNotFound => Some(127),
            ErrorKind::PermissionDenied => Some(126),
            _ => None,
        }
    }
}

/// An error the agent reports for a request (or, as [`AgentEvent::Fatal`], for itself).
/// The message is for humans and is shown as is; for `ExecutableNotFound` it contains
/// "executable file not found in $PATH" or "no such file or directory", the phrases podman
/// maps to exit 127.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    pub kind: ErrorKind,
    pub message: String,
}

impl AgentError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        AgentError {
            kind,
            message: message.into(),
        }
    }

    pub fn not_found(what: impl fmt::Display) -> Self {
        AgentError::new(ErrorKind::NotFound, format!("{what}: not found"))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        AgentError::new(ErrorKind::Internal, message)
    }
}

/// What a stdio connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// host -> process; the host's EOF (shutdown of its write side) is the process's EOF.
    Stdin,
    /// process -> host; EOF once every writer of the process's stdout has closed it.
    Stdout,
    /// process -> host.
    Stderr,
    /// both ways: the pty master's input and output.
    Tty,
}

/// First frame on a stdio connection, after the hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub process: ProcessRef,
    pub kind: StreamKind,
}

/// The agent's answer to a [`StreamHeader`]; raw bytes follow an `Ok`.
pub type StreamAck = Result<(), AgentError>;

/// Agent -> host notices on the event connection ([`crate::HOST_EVENT_PORT`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentEvent {
    /// The agent is listening on its ports. `boottime_us`: CLOCK_BOOTTIME at that moment.
    Ready { boottime_us: u64 },
    /// The agent itself failed (it will power off next); never a silent hang.
    Fatal { error: AgentError },
}

/// Checks a container or exec id: 1..=1024 bytes of `[A-Za-z0-9_.+-]` (the ids podman and
/// containerd generate), not starting with '.', since ids end up in guest paths.
pub fn validate_id(id: &str) -> Result<(), AgentError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AgentError::new(
            ErrorKind::InvalidArgument,
            format!("invalid id {id:?}: use 1 to 1024 characters of [A-Za-z0-9_.+-], not starting with '.'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(ExitStatus::Exited(7).code(), 7);
        assert_eq!(ExitStatus::Signaled(15).code(), 143);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert_eq!(
            ExitStatus::from_wait_status(7 << 8),
            Some(ExitStatus::Exited(7))
        );
        assert_eq!(
            ExitStatus::from_wait_status(15),
            Some(ExitStatus::Signaled(15))
        );
        // core dumped bit set
        assert_eq!(
            ExitStatus::from_wait_status(0x80 | 11),
            Some(ExitStatus::Signaled(11))
        );
        assert_eq!(ExitStatus::from_wait_status(0x137f), None);
        assert_eq!(ErrorKind::ExecutableNotFound.exit_code(), Some(127));
        assert_eq!(ErrorKind::PermissionDenied.exit_code(), Some(126));
        assert_eq!(ErrorKind::Internal.exit_code(), None);
    }

    #[test]
    fn ids() {
        assert!(validate_id("abc-123_x.y+z").is_ok());
        for bad in ["", "..", ".x", "a/b", "a b", &"x".repeat(1025)] {
            assert_eq!(
                validate_id(bad).unwrap_err().kind,
                ErrorKind::InvalidArgument
            );
        }
    }

    #[test]
    fn stdio_kinds() {
        let c = StdioConfig {
            stdin: true,
            stderr: true,
            ..Default::default()
        };
        assert_eq!(c.kinds(), [StreamKind::Stdin, StreamKind::Stderr]);
        let t = StdioConfig {
            terminal: true,
            ..Default::default()
        };
        assert_eq!(t.kinds(), [StreamKind::Tty]);
        assert!(StdioConfig { stdout: true, ..t }.validate().is_err());
    }

    #[test]
    fn wire_shape_is_stable() {
        // The JSON shape is the protocol: changing it needs a PROTOCOL_VERSION bump.
        let f = RequestFrame {
            id: 3,
            request: Request::Signal {
                process: ProcessRef::exec("c1", "e1"),
                signal: 15,
                all: false,
            },
        };
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"id":3,"request":{"signal":{"process":{"container_id":"c1","exec_id":"e1"},"signal":15,"all":false}}}"#
        );
        let r = ResponseFrame {
            id: 3,
            result: Ok(Response::Exit {
                status: ExitStatus::Signaled(9),
            }),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"id":3,"result":{"Ok":{"exit":{"status":{"signaled":9}}}}}"#
        );
        let e = ResponseFrame {
            id: 4,
            result: Err(AgentError::new(ErrorKind::ExecutableNotFound, "x")),
        };
        let back: ResponseFrame =
            serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn list_processes_wire_shape() {
        let f = RequestFrame {
            id: 5,
            request: Request::ListProcesses { id: "c1".into() },
        };
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"id":5,"request":{"list_processes":{"id":"c1"}}}"#
        );
        let r = ResponseFrame {
            id: 5,
            result: Ok(Response::Processes {
                processes: vec![GuestProcessInfo {
                    pid: 1,
                    command: "sleep 10".into(),
                }],
            }),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"id":5,"result":{"Ok":{"processes":{"processes":[{"pid":1,"command":"sleep 10"}]}}}}"#
        );
    }

    #[test]
    fn oci_spec_round_trips() {
        let spec = Spec::default();
        let f = RequestFrame {
            id: 1,
            request: Request::CreateContainer {
                id: "c".into(),
                spec,
                stdio: StdioConfig::default(),
            },
        };
        let back: RequestFrame = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
    }
}
