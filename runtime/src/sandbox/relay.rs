//! Relaying one guest process's stdio, its signals and its tty size, until it exits: the
//! one implementation behind `husk vm run`, the `exec` proxy and a container's init in
//! its VM monitor (`husk sandbox-monitor`).
//!
//! ```text
//! Relay::open(agent, process, mode)   streams opened (and acked) before the process exists
//!    mode Inherit         fds 0/1/2  <-> Stdin/Stdout/Stderr streams (fd 0's EOF -> EOF)
//!    mode CallerTerminal  fds 0/1    <-> Tty stream; fd 0 raw while relaying
//!    mode ConsoleSocket   new host pty: its master to the client (SCM_RIGHTS), its slave
//!                         raw and this process's controlling tty <-> Tty stream
//! caller: CreateContainer/ExecProcess with relay.stdio() (and relay.tty_size())
//! relay.run(forwarder) -> ExitStatus
//!    one poll loop: both directions of every stream + the Wait answer; after the exit,
//!    output drains to EOF (bounded) before the status is returned: no byte lost
//! SignalForwarder (blocked signals, one sigwait thread): signals -> Signal requests,
//!    SIGWINCH -> the tty's size (caller's terminal or console slave) -> ResizeTty
//! ```
//!
//! Why the console slave becomes this process's controlling tty: the client (conmon,
//! containerd's shim) resizes the *master*; the kernel then sends SIGWINCH to the slave's
//! foreground process group, which is the only notice of a resize there is. So `open`
//! makes this process a session leader (if it is not one) with the slave as its
//! terminal, before the master leaves, so that no resize can come unnoticed.
//!
//! Host-side fds 0/1/2 belong to the caller's caller (a shell's terminal, conmon's pipes)
//! and stay blocking: they are only read after `POLLIN` and written after `POLLOUT`, at
//! most `PIPE_BUF` bytes to a pipe, so that the loop never sleeps in a read or write
//! while another direction waits. Sockets use `MSG_DONTWAIT`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use husk_protocol::{
    handshake, read_frame, write_frame, Client, ExitStatus, ProcessRef, ProtocolError, Request,
    RequestFrame, Response, ResponseFrame, Role, StdioConfig, StreamKind, AGENT_CONTROL_PORT,
};
use nix::sys::signal::{SigSet, Signal};
use oci_spec::runtime::{BoxBuilder, Process};

use super::agent_client::{AgentClient, AgentClientError};
use super::terminal::{self, RawMode};
use crate::oci::console::{self, ConsoleError};

/// The signals a relay forwards to the process (SIGWINCH is the tty size, not forwarded).
pub const FORWARDED_SIGNALS: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];
/// How long stdout/stderr may keep flowing after the process exited (something it left
/// in the background may hold them open).
pub const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// Bytes buffered per direction.
const BUFFER_SIZE: usize = 64 << 10;
/// Largest write to a pipe that cannot block after `POLLOUT` (POSIX PIPE_BUF on Linux).
const PIPE_BUF: usize = 4096;
/// The request id of the one `Wait` sent on the relay's own control connection.
const WAIT_REQUEST_ID: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot open the {kind:?} stream of {process}: {source}")]
    Stream {
        kind: StreamKind,
        process: ProcessRef,
        source: AgentClientError,
    },
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error("cannot make the console's pty this process's controlling terminal: {0}")]
    ControllingTty(nix::Error),
    #[error("cannot make the console's pty raw: {0}")]
    RawPty(io::Error),
    #[error("cannot put the terminal in raw mode: {0}")]
    RawTerminal(io::Error),
    #[error("cannot reach the agent to wait for {process}: {source}")]
    WaitConnect {
        process: ProcessRef,
        source: AgentClientError,
    },
    #[error("lost {process} (no exit status from the agent): {source}")]
    Wait {
        process: ProcessRef,
        source: ProtocolError,
    },
    #[error("cannot reach the agent to forward signals to {process}: {source}")]
    SignalConnect {
        process: ProcessRef,
        source: AgentClientError,
    },
    #[error("cannot set up signal handling: {0}")]
    Signals(io::Error),
    #[error("relaying the stdio of {process}: poll: {source}")]
    Poll {
        process: ProcessRef,
        source: io::Error,
    },
}

/// Where the process's stdio comes from and goes to, on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdioMode<'a> {
    /// This process's fds 0, 1, 2 as the process's stdin, stdout, stderr (three streams;
    /// EOF on fd 0 is the process's EOF).
    Inherit,
    /// The process gets a tty relayed to this process's terminal (fd 0 in, fd 1 out),
    /// which is raw while the relay runs and whose size the tty follows.
    CallerTerminal,
    /// The process gets a tty whose host side is a new pty: its master goes to the client
    /// listening on this `--console-socket`, which then owns the terminal (and its size).
    ConsoleSocket(&'a Path),
}

/// The host end of the process's tty, to read its size from.
#[derive(Debug, Clone)]
enum TtyEnd {
    /// This process's own terminal (the first of fds 0-2 that is one).
    Caller,
    /// The console pty's slave.
    ConsoleSlave(Arc<OwnedFd>),
}

impl TtyEnd {
    fn size(&self) -> Option<(u16, u16)> {
        match self {
            TtyEnd::Caller => terminal::window_size(),
            TtyEnd::ConsoleSlave(fd) => terminal::size_of(fd.as_fd()),
        }
    }
}

/// The streams of one process and their host ends, before and while relaying.
enum Ends {
    Pipes {
        stdin: UnixStream,
        stdout: UnixStream,
        stderr: UnixStream,
    },
    CallerTerminal {
        tty: UnixStream,
    },
    Console {
        tty: UnixStream,
        slave: Arc<OwnedFd>,
    },
}

/// One process's stdio, opened before the process exists and relayed by [`Relay::run`].
pub struct Relay {
    agent: AgentClient,
    process: ProcessRef,
    ends: Ends,
}

impl Relay {
    /// Opens the streams `mode` needs for `process` (which must not exist yet: give
    /// [`Relay::stdio`] to the CreateContainer/ExecProcess that makes it). With a console
    /// socket, also makes the pty, takes it as this process's controlling terminal and
    /// sends its master to the client: that has happened when this returns.
    pub fn open(
        agent: &AgentClient,
        process: ProcessRef,
        mode: StdioMode<'_>,
    ) -> Result<Relay, RelayError> {
        let open = |kind| {
            agent
                .open_stream(&process, kind)
                .map_err(|source| RelayError::Stream {
                    kind,
                    process: process.clone(),
                    source,
                })
        };
        let ends = match mode {
            StdioMode::Inherit => Ends::Pipes {
                stdin: open(StreamKind::Stdin)?,
                stdout: open(StreamKind::Stdout)?,
                stderr: open(StreamKind::Stderr)?,
            },
            StdioMode::CallerTerminal => Ends::CallerTerminal {
                tty: open(StreamKind::Tty)?,
            },
            StdioMode::ConsoleSocket(socket) => {
                let tty = open(StreamKind::Tty)?;
                let pty = console::open_pty()?;
                terminal::make_raw(pty.slave.as_fd()).map_err(RelayError::RawPty)?;
                become_controlling_tty(pty.slave.as_fd())?;
                console::send_master(socket, pty.master.as_fd())?;
                // The client's copy is the terminal now; ours would keep it open.
                drop(pty.master);
                Ends::Console {
                    tty,
                    slave: Arc::new(pty.slave),
                }
            }
        };
        Ok(Relay {
            agent: agent.clone(),
            process,
            ends,
        })
    }

    pub fn process(&self) -> &ProcessRef {
        &self.process
    }

    /// The streams opened, for the request that creates the process.
    pub fn stdio(&self) -> StdioConfig {
        match self.ends {
            Ends::Pipes { .. } => StdioConfig {
                stdin: true,
                stdout: true,
                stderr: true,
                terminal: false,
            },
            _ => StdioConfig {
                terminal: true,
                ..StdioConfig::default()
            },
        }
    }

    fn tty_end(&self) -> Option<TtyEnd> {
        match &self.ends {
            Ends::Pipes { .. } => None,
            Ends::CallerTerminal { .. } => Some(TtyEnd::Caller),
            Ends::Console { slave, .. } => Some(TtyEnd::ConsoleSlave(slave.clone())),
        }
    }

    /// The host terminal's size now (rows, cols), for the process's `consoleSize`:
    /// `None` without a tty, or while the host side has no size (a console whose client
    /// has not sized it yet; [`Relay::run`] sends the size when it comes).
    pub fn tty_size(&self) -> Option<(u16, u16)> {
        self.tty_end()?.size()
    }

    /// Makes `process` (the one about to be created) match the streams: a tty exactly
    /// when they are one, sized as the host side is now unless it names its own
    /// `consoleSize`.
    pub fn fit(&self, process: &mut Process) {
        process.set_terminal(Some(self.stdio().terminal));
        if process.console_size().is_some() {
            return;
        }
        if let Some((rows, cols)) = self.tty_size() {
            let size = BoxBuilder::default()
                .height(u64::from(rows))
                .width(u64::from(cols))
                .build();
            process.set_console_size(size.ok());
        }
    }

    /// Relays until the process has exited and its output has reached EOF (or
    /// [`OUTPUT_DRAIN`] passed after the exit); returns how it ended. `signals`, if
    /// given, forwards to the process from now on (and first what it kept) and, with a
    /// tty, follows its size. Call once the process exists (created is enough: the
    /// relay waits for it to be started and to end).
    pub fn run(self, signals: Option<&SignalForwarder>) -> Result<ExitStatus, RelayError> {
        let mut wait = WaitConnection::send(&self.agent, &self.process)?;
        let tty = self.tty_end();
        let _raw = match self.ends {
            Ends::CallerTerminal { .. } => {
                RawMode::enter(io::stdin().as_fd()).map_err(RelayError::RawTerminal)?
            }
            _ => None,
        };
        if let Some(forwarder) = signals {
            let control = self
                .agent
                .control()
                .map_err(|source| RelayError::SignalConnect {
                    process: self.process.clone(),
                    source,
                })?;
            forwarder.running(control, self.process.clone(), tty);
        }
        let outcome = self.pump(&mut wait);
        if let Some(forwarder) = signals {
            forwarder.done();
        }
        outcome
    }

    fn pump(&self, wait: &mut WaitConnection) -> Result<ExitStatus, RelayError> {
        let stdin = io::stdin();
        let stdout = io::stdout();
        let stderr = io::stderr();
        let (mut input, mut outputs) = match &self.ends {
            Ends::Pipes {
                stdin: guest_in,
                stdout: guest_out,
                stderr: guest_err,
            } => (
                Flow::new(stdin.as_fd(), guest_in.as_fd(), true),
                vec![
                    Flow::new(guest_out.as_fd(), stdout.as_fd(), false),
                    Flow::new(guest_err.as_fd(), stderr.as_fd(), false),
                ],
            ),
            Ends::CallerTerminal { tty } => (
                Flow::new(stdin.as_fd(), tty.as_fd(), true),
                vec![Flow::new(tty.as_fd(), stdout.as_fd(), false)],
            ),
            Ends::Console { tty, slave } => (
                Flow::new(slave.as_fd(), tty.as_fd(), true),
                vec![Flow::new(tty.as_fd(), slave.as_fd(), false)],
            ),
        };
        let mut status: Option<ExitStatus> = None;
        let mut drain_until: Option<Instant> = None;
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(6);
        // Which flow end each pollfd is: (flow index, is_source); usize::MAX = the wait.
        let mut owners: Vec<(usize, bool)> = Vec::with_capacity(6);
        loop {
            if let Some(status) = status {
                let drained = outputs.iter().all(Flow::finished);
                if drained || drain_until.is_some_and(|t| Instant::now() >= t) {
                    return Ok(status);
                }
            }
            fds.clear();
            owners.clear();
            // Input only while the process runs; index 0 is the input, 1.. the outputs.
            let mut flows: Vec<&mut Flow> = Vec::with_capacity(3);
            flows.push(&mut input);
            flows.extend(outputs.iter_mut());
            for (i, flow) in flows.iter().enumerate() {
                if i == 0 && status.is_some() {
                    continue;
                }
                if flow.wants_read() {
                    fds.push(pollfd(flow.src, libc::POLLIN));
                    owners.push((i, true));
                }
                if flow.wants_write() {
                    fds.push(pollfd(flow.dst, libc::POLLOUT));
                    owners.push((i, false));
                }
            }
            if status.is_none() {
                fds.push(pollfd(wait.fd(), libc::POLLIN));
                owners.push((usize::MAX, true));
            }
            let timeout_ms = match drain_until {
                Some(t) => {
                    let left = t.saturating_duration_since(Instant::now());
                    left.as_millis().min(i32::MAX as u128) as i32 + 1
                }
                None => -1,
            };
            // SAFETY: `fds` is a valid array of pollfds for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(RelayError::Poll {
                    process: self.process.clone(),
                    source: e,
                });
            }
            for (pfd, &(owner, is_source)) in fds.iter().zip(owners.iter()) {
                if pfd.revents == 0 {
                    continue;
                }
                if owner == usize::MAX {
                    let got = wait.receive().map_err(|source| RelayError::Wait {
                        process: self.process.clone(),
                        source,
                    })?;
                    status = Some(got);
                    drain_until = Some(Instant::now() + OUTPUT_DRAIN);
                } else if is_source {
                    flows[owner].read();
                } else {
                    flows[owner].write();
                }
            }
            for flow in flows.iter_mut() {
                flow.settle();
            }
        }
    }
}

/// Makes this process a session leader (unless it is one) and `slave` its controlling
/// terminal, so that a resize of the master reaches it as SIGWINCH.
fn become_controlling_tty(slave: BorrowedFd<'_>) -> Result<(), RelayError> {
    let me = nix::unistd::getpid();
    if nix::unistd::getsid(None).map_err(RelayError::ControllingTty)? != me {
        // Fails (EPERM) only for a process group leader: the caller must not be one.
        nix::unistd::setsid().map_err(RelayError::ControllingTty)?;
    }
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal); `slave` is open.
    let r = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
    if r != 0 {
        return Err(RelayError::ControllingTty(nix::Error::last()));
    }
    Ok(())
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// What an fd is, for how to read and write it without blocking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FdKind {
    /// `MSG_DONTWAIT` per call.
    Socket,
    /// At most `PIPE_BUF` per write after `POLLOUT`.
    Pipe,
    /// A terminal, a file, /dev/null.
    Other,
}

fn fd_kind(fd: RawFd) -> FdKind {
    // SAFETY: zeroed stat is a valid out-parameter; fstat on an open fd.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return FdKind::Other;
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => FdKind::Socket,
        libc::S_IFIFO => FdKind::Pipe,
        _ => FdKind::Other,
    }
}

/// One direction: bytes read from `src` wait in `buf` until `dst` takes them.
struct Flow {
    src: RawFd,
    src_kind: FdKind,
    dst: RawFd,
    dst_kind: FdKind,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// EOF (or an error) on `src`: nothing more to read.
    src_done: bool,
    /// `dst` refused a write: what comes is read and dropped (an output, so the process
    /// never blocks) or no longer read (the input of a process that stopped reading).
    dst_broken: bool,
    /// Input towards the guest: its end is told by shutting down the stream's write side.
    is_input: bool,
    /// Everything done, the EOF passed on.
    finished: bool,
}

impl Flow {
    fn new(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, is_input: bool) -> Flow {
        let (src, dst) = (src.as_raw_fd(), dst.as_raw_fd());
        Flow {
            src,
            src_kind: fd_kind(src),
            dst,
            dst_kind: fd_kind(dst),
            buf: vec![0u8; BUFFER_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            src_done: false,
            dst_broken: false,
            is_input,
            finished: false,
        }
    }

    fn finished(&self) -> bool {
        self.finished
    }

    fn wants_read(&self) -> bool {
        !self.finished && !self.src_done && (self.end < self.buf.len() || self.start > 0)
    }

    fn wants_write(&self) -> bool {
        !self.finished && !self.dst_broken && self.start < self.end
    }

    fn read(&mut self) {
        if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let room = &mut self.buf[self.end..];
        // SAFETY: reads into `room`, valid for `room.len()` bytes.
        let n = unsafe {
            match self.src_kind {
                FdKind::Socket => libc::recv(
                    self.src,
                    room.as_mut_ptr().cast(),
                    room.len(),
                    libc::MSG_DONTWAIT,
                ),
                _ => libc::read(self.src, room.as_mut_ptr().cast(), room.len()),
            }
        };
        if n > 0 {
            if self.dst_broken {
                return; // dropped: nobody takes it
            }
            self.end += n as usize;
            return;
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                return;
            }
            // EIO: a pty whose other side is closed; anything else ends the flow too.
        }
        self.src_done = true;
    }

    fn write(&mut self) {
        let mut len = self.end - self.start;
        if self.dst_kind == FdKind::Pipe {
            len = len.min(PIPE_BUF);
        }
        let data = self.buf[self.start..self.start + len].as_ptr();
        // SAFETY: writes from `data`, valid for `len` bytes.
        let n = unsafe {
            match self.dst_kind {
                FdKind::Socket => libc::send(
                    self.dst,
                    data.cast(),
                    len,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                ),
                _ => libc::write(self.dst, data.cast(), len),
            }
        };
        if n >= 0 {
            self.start += n as usize;
            return;
        }
        let e = io::Error::last_os_error();
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ) {
            return;
        }
        self.dst_broken = true;
        self.start = 0;
        self.end = 0;
        if self.is_input {
            self.src_done = true;
        }
    }

    /// After a round: an empty buffer starts over; a finished source, once its bytes
    /// are out, passes its EOF on.
    fn settle(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if !self.finished && self.src_done && (self.start == self.end || self.dst_broken) {
            self.finished = true;
            if self.is_input {
                // The stream's EOF is the process's (a tty types ^D in canonical mode).
                // SAFETY: plain syscall on the stream, open for the relay's lifetime.
                unsafe { libc::shutdown(self.dst, libc::SHUT_WR) };
            }
        }
    }
}

/// A control connection of the relay's own with one `Wait` in flight: polled with the
/// stdio, read once readable.
struct WaitConnection {
    stream: UnixStream,
}

impl WaitConnection {
    fn send(agent: &AgentClient, process: &ProcessRef) -> Result<Self, RelayError> {
        let failed = |source| RelayError::WaitConnect {
            process: process.clone(),
            source,
        };
        let port = AGENT_CONTROL_PORT;
        let mut stream = agent.connect_port(port).map_err(failed)?;
        let protocol = |source| failed(AgentClientError::Protocol { port, source });
        handshake(&mut stream, Role::Host).map_err(protocol)?;
        let request = RequestFrame {
            id: WAIT_REQUEST_ID,
            request: Request::Wait {
                process: process.clone(),
            },
        };
        write_frame(&mut stream, &request).map_err(protocol)?;
        Ok(WaitConnection { stream })
    }

    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Reads the answer (readable: it is arriving; the client's timeout bounds the rest).
    fn receive(&mut self) -> Result<ExitStatus, ProtocolError> {
        let answer: ResponseFrame = read_frame(&mut self.stream)?;
        if answer.id != WAIT_REQUEST_ID {
            return Err(ProtocolError::IdMismatch {
                expected: WAIT_REQUEST_ID,
                got: answer.id,
            });
        }
        match answer.result? {
            Response::Exit { status } => Ok(status),
            other => Err(ProtocolError::UnexpectedResponse {
                request: "wait",
                response: format!("{other:?}"),
            }),
        }
    }
}

/// What the signal thread does with a signal, depending on how far the caller got.
enum Phase {
    /// No process yet: remember the signal and raise the cancel flag.
    Waiting { pending: Vec<i32> },
    /// A relay runs: signals go to the process, SIGWINCH becomes its tty's size (a
    /// control connection of its own: the relay's `Wait` blocks another).
    Running {
        control: Client<UnixStream>,
        process: ProcessRef,
        tty: Option<TtyEnd>,
    },
    /// The process has exited: nothing to forward to.
    Done,
}

/// Receives this process's signals on a thread of its own (sigwait on signals blocked
/// before any other thread existed, so no signal can kill the process past its
/// clean-up) and forwards them to the process a [`Relay`] runs.
pub struct SignalForwarder {
    phase: Mutex<Phase>,
    cancel: Arc<AtomicBool>,
}

impl SignalForwarder {
    fn new() -> SignalForwarder {
        SignalForwarder {
            phase: Mutex::new(Phase::Waiting {
                pending: Vec::new(),
            }),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Blocks `signals` and SIGWINCH in the calling thread, and so in every thread it
    /// creates from now on: call it before any thread exists. Starts the thread that
    /// receives them; until a relay runs they are kept (see [`Self::cancel_flag`]).
    pub fn start(signals: &[Signal]) -> Result<Arc<SignalForwarder>, RelayError> {
        let mut set = SigSet::empty();
        for &sig in signals {
            set.add(sig);
        }
        set.add(Signal::SIGWINCH);
        set.thread_block()
            .map_err(|e| RelayError::Signals(e.into()))?;
        let forwarder = Arc::new(SignalForwarder::new());
        let receiver = forwarder.clone();
        std::thread::Builder::new()
            .name("husk-signals".into())
            .stack_size(128 << 10)
            // Not joined: it waits for signals until the process exits.
            .spawn(move || loop {
                if let Ok(sig) = set.wait() {
                    receiver.on_signal(sig);
                }
            })
            .map_err(RelayError::Signals)?;
        Ok(forwarder)
    }

    /// Raised by the first signal (other than SIGWINCH) that arrives before a relay
    /// runs: e.g. [`super::SandboxConfig::cancel`], to abandon a boot.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// The first signal kept while no relay ran.
    pub fn first_pending(&self) -> Option<i32> {
        match &*self.lock() {
            Phase::Waiting { pending } => pending.first().copied(),
            _ => None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_signal(&self, sig: Signal) {
        let mut phase = self.lock();
        match &mut *phase {
            Phase::Waiting { pending } if sig != Signal::SIGWINCH => {
                pending.push(sig as i32);
                self.cancel.store(true, Ordering::Relaxed);
            }
            Phase::Running {
                control,
                process,
                tty,
            } => {
                // Errors: the process exited meanwhile; the relay's wait reports what
                // matters.
                if sig == Signal::SIGWINCH {
                    if let Some((rows, cols)) = tty.as_ref().and_then(TtyEnd::size) {
                        let _ = control.resize_tty(process.clone(), rows, cols);
                    }
                } else {
                    let _ = control.signal(process.clone(), sig as i32, false);
                }
            }
            _ => {}
        }
    }

    /// Switches to forwarding to `process`: first what was kept, then the tty's size as
    /// it is now (a resize before this point had nobody to go to).
    fn running(&self, mut control: Client<UnixStream>, process: ProcessRef, tty: Option<TtyEnd>) {
        let mut phase = self.lock();
        if let Phase::Waiting { pending } = &*phase {
            for &sig in pending {
                let _ = control.signal(process.clone(), sig, false);
            }
        }
        if let Some((rows, cols)) = tty.as_ref().and_then(TtyEnd::size) {
            let _ = control.resize_tty(process.clone(), rows, cols);
        }
        *phase = Phase::Running {
            control,
            process,
            tty,
        };
    }

    /// The process has exited: the connection goes, later signals are dropped.
    fn done(&self) {
        *self.lock() = Phase::Done;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocol::serve;
    use std::io::{Read, Write};

    /// The signal thread's decisions, against the protocol's real agent-side loop.
    #[test]
    fn signals_wait_for_the_process_then_go_to_it() {
        let (host, mut agent) = UnixStream::pair().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let server = std::thread::spawn(move || {
            serve(&mut agent, "test", |request| {
                log.lock().unwrap().push(request);
                Ok(Response::Ok)
            })
        });
        let forwarder = SignalForwarder::new();
        let cancel = forwarder.cancel_flag();
        // Waiting: a resize means nothing yet; SIGTERM raises the flag and is kept.
        forwarder.on_signal(Signal::SIGWINCH);
        assert!(!cancel.load(Ordering::Relaxed));
        forwarder.on_signal(Signal::SIGTERM);
        assert!(cancel.load(Ordering::Relaxed));
        assert_eq!(forwarder.first_pending(), Some(libc::SIGTERM));
        // Running: what was kept goes first, then every new signal; a pty's size on
        // start and on SIGWINCH.
        let pty = console::open_pty().unwrap();
        let size = |rows, cols| libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let set_size = |ws: libc::winsize| {
            // SAFETY: TIOCSWINSZ reads one winsize.
            assert_eq!(
                unsafe { libc::ioctl(pty.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
                0
            );
        };
        set_size(size(30, 90));
        let process = ProcessRef::exec("c", "e");
        let slave = TtyEnd::ConsoleSlave(Arc::new(pty.slave));
        forwarder.running(Client::connect(host).unwrap(), process.clone(), Some(slave));
        forwarder.on_signal(Signal::SIGINT);
        set_size(size(40, 120));
        forwarder.on_signal(Signal::SIGWINCH);
        // Done: the connection goes, nothing more is sent.
        forwarder.done();
        forwarder.on_signal(Signal::SIGHUP);
        server.join().unwrap().unwrap();
        let signal = |signal| Request::Signal {
            process: process.clone(),
            signal,
            all: false,
        };
        let resize = |rows, cols| Request::ResizeTty {
            process: process.clone(),
            rows,
            cols,
        };
        assert_eq!(
            *seen.lock().unwrap(),
            [
                signal(libc::SIGTERM),
                resize(30, 90),
                signal(libc::SIGINT),
                resize(40, 120)
            ]
        );
    }

    /// A flow between two socket pairs: everything arrives in order, EOF passes on as a
    /// shutdown, and a broken destination stops an input but drains an output.
    #[test]
    fn flows_move_bytes_and_pass_eof_on() {
        let (mut src_w, src_r) = UnixStream::pair().unwrap();
        let (dst_w, mut dst_r) = UnixStream::pair().unwrap();
        let mut flow = Flow::new(src_r.as_fd(), dst_w.as_fd(), true);
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            src_w.write_all(&sent).unwrap();
        });
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            dst_r.read_to_end(&mut got).unwrap();
            got
        });
        while !flow.finished() {
            let mut fds = Vec::new();
            if flow.wants_read() {
                fds.push(pollfd(flow.src, libc::POLLIN));
            }
            if flow.wants_write() {
                fds.push(pollfd(flow.dst, libc::POLLOUT));
            }
            // SAFETY: valid pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10_000) };
            assert!(n > 0, "the flow stalled");
            for p in &fds {
                if p.revents != 0 && p.fd == flow.src && p.events == libc::POLLIN {
                    flow.read();
                } else if p.revents != 0 {
                    flow.write();
                }
            }
            flow.settle();
        }
        writer.join().unwrap();
        assert_eq!(reader.join().unwrap(), data, "bytes lost or reordered");
    }
}
