//! husk-agent's request handling, apart from PID 1's duties so that it runs (and is
//! tested) as an ordinary process on the host: the tests serve it over unix socket pairs
//! with a real busybox rootfs, real namespaces, mounts and pivot_root.
//!
//! The binary (`main.rs`) is PID 1 of the guest: it mounts the kernel filesystems, starts
//! the process core's [`Reaper`], listens on the vsock ports and hands every accepted
//! connection to an [`Agent`] ([`Agent::serve_control`] for `AGENT_CONTROL_PORT`,
//! [`Agent::accept_stdio`] for `AGENT_STDIO_PORT`), each on its own thread.
//!
//! - [`streams`]: stdio connections parked per (process, kind) until a request claims them.
//! - [`container`]: an OCI container built from its spec (namespaces, mounts, pivot_root,
//!   capabilities, seccomp, cgroup) and its processes (init and execs).
//! - [`mounts`]: mount(2) helpers: leaving the initramfs, kernel filesystems, virtio-fs
//!   shares.
//! - [`vsock`]: AF_VSOCK sockets through libc (a crate would bring a second `nix`).

pub mod container;
pub mod mounts;
pub mod streams;
pub mod vsock;

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use husk_protocol::process::Reaper;
use husk_protocol::{
    accept_stdio_stream, ack_stdio_stream, serve, validate_id, AgentError, ErrorKind, ProcessRef,
    ProtocolError, Request, Response, ServeEnd,
};

use container::Container;
use streams::StreamPark;

/// The agent's build, answered to `Version`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long a request waits for the stdio streams it announced. The host opens them and
/// waits for their acks before sending the request, so they are normally already parked.
pub const DEFAULT_STREAM_WAIT: Duration = Duration::from_secs(10);
/// How long a stdio connection may take to send its hello and header.
pub const STREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// After a process exits, how long `Wait` waits for its output to reach EOF towards the
/// host (a background process may hold it open): the host then usually has every byte
/// when it learns the exit status.
pub const OUTPUT_DRAIN_WAIT: Duration = Duration::from_secs(2);

/// After answering `Shutdown`, how long the agent waits for the host to close the
/// connection (it does once it has read the answer) before the caller powers off.
pub const SHUTDOWN_ACK_WAIT: Duration = Duration::from_secs(2);

/// Where each container's own view of its root is mounted (`<dir>/<id>/root`).
pub const DEFAULT_CONTAINERS_DIR: &str = "/run/husk/containers";

/// What an [`Agent`] may be told apart from its defaults (tests use other values).
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a request waits for the stdio streams it announced.
    pub stream_wait: Duration,
    /// Where container roots are bound, one directory per container.
    pub containers_dir: PathBuf,
    /// Where the cgroup2 hierarchy is (mounted there if needed); `None`: containers get
    /// no cgroup (the request tests on a host, which must not touch the host's cgroups).
    pub cgroup_root: Option<PathBuf>,
    /// Whether `linux.namespaces` pid entries are honoured (`false`: the container shares
    /// the guest's pid namespace and the agent kills the rest when the init exits).
    pub pid_namespaces: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            stream_wait: DEFAULT_STREAM_WAIT,
            containers_dir: PathBuf::from(DEFAULT_CONTAINERS_DIR),
            cgroup_root: Some(PathBuf::from(container::DEFAULT_CGROUP_ROOT)),
            pid_namespaces: true,
        }
    }
}

/// Everything the guest runs for the host: containers, their processes, parked streams.
pub struct Agent {
    reaper: Reaper,
    streams: StreamPark,
    containers_dir: PathBuf,
    cgroup_root: Option<PathBuf>,
    pid_namespaces: bool,
    containers: Mutex<HashMap<String, Slot>>,
}

/// A container id's entry: reserved while its create runs, then the container.
enum Slot {
    Creating,
    Ready(Arc<Container>),
}

impl Agent {
    /// The agent over the process-wide reaper (every child must be spawned through it).
    pub fn new(reaper: Reaper) -> Agent {
        Agent::with_settings(reaper, Settings::default())
    }

    /// [`Agent::new`] with other [`Settings`].
    pub fn with_settings(reaper: Reaper, settings: Settings) -> Agent {
        Agent {
            reaper,
            streams: StreamPark::new(settings.stream_wait),
            containers_dir: settings.containers_dir,
            cgroup_root: settings.cgroup_root,
            pid_namespaces: settings.pid_namespaces,
            containers: Mutex::new(HashMap::new()),
        }
    }

    /// How many orphans (processes the agent did not spawn) were reaped.
    pub fn orphans_reaped(&self) -> u64 {
        self.reaper.orphans_reaped()
    }

    /// Serves one control connection until the host closes it or asks for `Shutdown`
    /// (the caller powers off then: the agent itself never does).
    /// After a `Shutdown` it returns only once the host has closed the connection (or
    /// [`SHUTDOWN_ACK_WAIT`] passed): the answer is then on the host's side. Powering off
    /// at once raced the guest's vsock transport, which sends from a kernel worker: the
    /// VM could end with "ok" still queued, and the host saw a closed connection.
    pub fn serve_control(&self, conn: OwnedFd) -> Result<ServeEnd, ProtocolError> {
        let mut conn = File::from(conn);
        let end = serve(&mut conn, AGENT_VERSION, |request| self.handle(request))?;
        if end == ServeEnd::Shutdown {
            await_peer_close(&mut conn, SHUTDOWN_ACK_WAIT);
        }
        Ok(end)
    }

    /// Reads a stdio connection's header and parks it for the process it names.
    pub fn accept_stdio(&self, conn: OwnedFd) -> Result<(), ProtocolError> {
        // A peer that never sends its header must not hold a thread forever; the relay
        // that takes the stream over needs blocking reads again.
        set_read_timeout(&conn, Some(STREAM_HEADER_TIMEOUT))?;
        let mut file = File::from(conn);
        let header = accept_stdio_stream(&mut file)?;
        set_read_timeout(&file, None)?;
        let dup = file.try_clone().map_err(ProtocolError::Io)?;
        let parked = validate_process_ref(&header.process)
            .and_then(|()| self.streams.park(&header, OwnedFd::from(dup)));
        let result = ack_stdio_stream(&mut file, &parked);
        if parked.is_ok() && result.is_err() {
            // The host is gone before the ack: drop the parked stream with it.
            self.streams.discard(&header.process, header.kind);
        }
        result
    }

    /// One request (`Ping` and `Version` are answered by [`serve`] itself).
    pub fn handle(&self, request: Request) -> Result<Response, AgentError> {
        match request {
            Request::Ping => Ok(Response::Pong),
            Request::Version => Ok(Response::Version {
                protocol: husk_protocol::PROTOCOL_VERSION,
                agent: AGENT_VERSION.to_owned(),
            }),
            Request::MountShare {
                tag,
                target,
                read_only,
            } => {
                mounts::mount_share(&tag, &target, read_only)?;
                Ok(Response::Ok)
            }
            Request::CreateContainer { id, spec, stdio } => {
                validate_id(&id)?;
                stdio.validate()?;
                if let Some(process) = spec.process() {
                    container::check_terminal(process, stdio)?;
                }
                // Reserve the id first: two creates of one id must not share its mounts.
                {
                    let mut containers = lock(&self.containers);
                    if containers.contains_key(&id) {
                        return Err(AgentError::new(
                            ErrorKind::AlreadyExists,
                            format!("container {id} already exists"),
                        ));
                    }
                    containers.insert(id.clone(), Slot::Creating);
                }
                let created = self
                    .streams
                    .claim(&ProcessRef::init(id.as_str()), stdio)
                    .and_then(|streams| {
                        let dir = self.containers_dir.join(&id);
                        Container::create(
                            &spec,
                            container::CreateArgs {
                                reaper: &self.reaper,
                                dir: &dir,
                                id: &id,
                                stdio,
                                streams,
                                cgroup_root: self.cgroup_root.as_deref(),
                                pid_namespaces: self.pid_namespaces,
                            },
                        )
                    });
                let mut containers = lock(&self.containers);
                match created {
                    Ok(container) => {
                        let pid = container.init().pid();
                        containers.insert(id, Slot::Ready(Arc::new(container)));
                        Ok(Response::Pid { pid })
                    }
                    Err(e) => {
                        containers.remove(&id);
                        Err(e)
                    }
                }
            }
            Request::StartContainer { id } => {
                self.container(&id)?.start()?;
                Ok(Response::Ok)
            }
            Request::ExecProcess {
                container_id,
                exec_id,
                process,
                stdio,
            } => {
                validate_id(&exec_id)?;
                stdio.validate()?;
                let container = self.container(&container_id)?;
                container::check_terminal(&process, stdio)?;
                let process_ref = ProcessRef::exec(container_id.as_str(), exec_id.as_str());
                let streams = self.streams.claim(&process_ref, stdio)?;
                let pid = container.exec(&self.reaper, &exec_id, &process, stdio, streams)?;
                Ok(Response::Pid { pid })
            }
            Request::Signal {
                process,
                signal,
                all,
            } => {
                let container = self.container(&process.container_id)?;
                if all {
                    container.signal_all(signal)?;
                } else {
                    container.process(&process)?.signal(signal)?;
                }
                Ok(Response::Ok)
            }
            Request::Wait { process } => {
                let child = self.container(&process.container_id)?.process(&process)?;
                let status = child.wait();
                child.wait_output(OUTPUT_DRAIN_WAIT);
                Ok(Response::Exit { status })
            }
            Request::ResizeTty {
                process,
                rows,
                cols,
            } => {
                let child = self.container(&process.container_id)?.process(&process)?;
                child.resize(rows, cols)?;
                Ok(Response::Ok)
            }
            Request::CloseStdin { process } => {
                let child = self.container(&process.container_id)?.process(&process)?;
                child.close_stdin()?;
                Ok(Response::Ok)
            }
            Request::ListProcesses { id } => {
                let processes = self.container(&id)?.processes()?;
                Ok(Response::Processes { processes })
            }
            Request::Shutdown => {
                // Flush every filesystem (the shares write through to the host) before the
                // host hears "ok" and may tear the VM down.
                nix::unistd::sync();
                Ok(Response::Ok)
            }
        }
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, AgentError> {
        match lock(&self.containers).get(id) {
            Some(Slot::Ready(c)) => Ok(c.clone()),
            Some(Slot::Creating) | None => Err(AgentError::not_found(format!("container {id}"))),
        }
    }
}

/// Reads (and drops) whatever `conn` still gets until the peer closes it, an error, or
/// `wait` has passed.
fn await_peer_close(conn: &mut File, wait: Duration) {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // A zero timeout would mean "block forever".
        if left < Duration::from_millis(1) || set_read_timeout(&*conn, Some(left)).is_err() {
            return;
        }
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn validate_process_ref(process: &ProcessRef) -> Result<(), AgentError> {
    validate_id(&process.container_id)?;
    if let Some(exec_id) = &process.exec_id {
        validate_id(exec_id)?;
    }
    Ok(())
}

/// `SO_RCVTIMEO` on a socket (`None`: block forever).
pub fn set_read_timeout(fd: &impl AsRawFd, timeout: Option<Duration>) -> Result<(), ProtocolError> {
    let tv = match timeout {
        Some(t) => libc::timeval {
            tv_sec: t.as_secs() as libc::time_t,
            tv_usec: t.subsec_micros() as libc::suseconds_t,
        },
        None => libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
    };
    // SAFETY: setsockopt with a valid timeval of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(ProtocolError::Io(std::io::Error::last_os_error()));
    }
    Ok(())
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `strerror` in lower case, as runc (Go) spells errno texts.
pub(crate) fn errno_text(e: nix::Error) -> String {
    let d = e.desc();
    let mut c = d.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => d.to_owned(),
    }
}
