//! The agent's process core (feature `agent`, Linux only): spawn a process from an OCI
//! `Process`, relay its stdio to and from the host's streams, deliver signals, resize its
//! tty, and reap — as PID 1 — every child, routing each exit status to whoever waits for it.
//!
//! # The reaper, and why spawning goes through it
//!
//! PID 1 inherits every orphan of the guest, so it must `waitpid(-1)` and reap whatever
//! exits, or zombies pile up. But a blanket `waitpid(-1)` also reaps the agent's own
//! children, so *every* child of the process must be spawned through [`Reaper`] (and nobody
//! else may call `wait*`; `std::process::Command::wait`/`output` are off limits once the
//! reaper runs). The reaper thread:
//! 1. blocks in `waitid(P_ALL, WEXITED | WNOWAIT)` — "some child is a zombie", reaping
//!    nothing and holding no lock;
//! 2. takes the reaper lock and reaps with `waitpid(-1, WNOHANG)` until none is left,
//!    handing each status to the pid's [`ExitWatch`], or counting it as an orphan.
//!
//! Spawning forks, execs and registers the pid *while holding the same lock*, so a child
//! that exits at once is never reaped before it is registered (its status would otherwise
//! be lost as an "orphan"), and a child whose exec failed is reaped by the spawner itself.
//! `signal` checks "not yet reaped" under the lock too, so a signal never reaches a
//! recycled pid. With no children at all, the reaper sleeps until the next spawn (only
//! descendants of our children can become our orphans, and they are re-parented before
//! their parent is reaped).
//!
//! The reaper does not need to be PID 1: tests make the test process a child subreaper
//! (`prctl(PR_SET_CHILD_SUBREAPER)`) to see orphans.
//!
//! # Spawning
//!
//! A hand-written fork/exec rather than `std::process::Command`: `Command` reaps a child
//! whose exec failed with its own `waitpid(pid)`, which races the reaper (and `std` panics
//! when it loses), and it reports every failure as a bare errno, whereas the host must tell
//! "executable file not found in $PATH" (127) from "permission denied" (126) from a bad
//! cwd. Everything the child needs (argv, envp, the `$PATH` candidates in order) is built
//! before `fork`; the child only makes async-signal-safe libc calls, reports a failed step
//! as (step, errno) on a close-on-exec pipe and `_exit`s. `$PATH` is searched using the
//! process's own `PATH` (from its OCI env), like runc does, with execvp's rules (a
//! permission error is remembered while the search goes on).
//!
//! [`spawn_with`] adds what a container's processes need ([`SpawnOptions`]): a root to
//! `chroot` into before the uid switch and the `$PATH` search, and a *start gate*: the
//! child does every step up to exec (including finding the executable, so a missing
//! command still fails at create), reports that it is parked, and waits on a pipe until
//! [`Child::start`] opens the gate (runc's create/start split).
//!
//! The container builder (the agent) plugs in through [`SpawnOptions`] too: `clone_flags`
//! (a new pid namespace needs `clone`, not `fork` + `unshare`), `pid_namespace` (an exec
//! joins the container's: the spawning thread enters it around the fork, so the child is
//! born inside) and a [`ChildSetup`] whose precomputed steps run in the child at two
//! points: [`SetupPhase::BeforeUser`] (namespaces, mounts, pivot_root, hostname, rlimits,
//! the capability bounding set) and [`SetupPhase::AfterUser`] (capabilities, no_new_privs,
//! seccomp). A failed step comes back as its index and errno, and the builder names it.
//!
//! # Stdio
//!
//! Non-tty: one pipe per stream between the process and a relay thread; streams not given
//! are `/dev/null`. stdout and stderr are relayed apart, each until EOF on its pipe (so
//! every byte written before exit arrives), then the host stream's write side is shut
//! down: that is the host's EOF. If the host stops reading, the relay keeps draining and
//! discards, so the process never blocks on a full pipe. The host's EOF on stdin (or
//! [`Child::close_stdin`], which shuts down the stream's read side) closes the pipe: the
//! process reads EOF.
//!
//! Tty: `openpty` with the requested size, the slave as the controlling terminal of a new
//! session and as fds 0-2; the master relayed both ways over the one stream. Closing stdin
//! on a tty stops the input relay and, in canonical mode, types the VEOF character (^D).

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use oci_spec::runtime::Process;

use crate::messages::{AgentError, ErrorKind, ExitStatus};

/// `$PATH` when the process's env has none (runc's and the OCI default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Terminal size when the process asks for a tty without `consoleSize`.
pub const DEFAULT_TTY_SIZE: (u16, u16) = (24, 80);

// ---------------------------------------------------------------------------------------
// Exit statuses
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct ExitCell {
    status: Mutex<Option<ExitStatus>>,
    cv: Condvar,
}

/// Where one process's exit status arrives. Cheap to clone; any number of waiters.
#[derive(Clone, Default)]
pub struct ExitWatch(Arc<ExitCell>);

impl ExitWatch {
    /// Blocks until the process has exited and been reaped.
    pub fn wait(&self) -> ExitStatus {
        let mut g = lock(&self.0.status);
        loop {
            if let Some(s) = *g {
                return s;
            }
            g = self.0.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Like [`wait`](Self::wait), giving up after `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.0.status);
        loop {
            if let Some(s) = *g {
                return Some(s);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            g = self
                .0
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The status if the process has already been reaped.
    pub fn try_status(&self) -> Option<ExitStatus> {
        *lock(&self.0.status)
    }

    fn set(&self, status: ExitStatus) {
        *lock(&self.0.status) = Some(status);
        self.0.cv.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// Reaper
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct ReaperState {
    /// Pids we spawned and have not reaped yet.
    waiting: HashMap<i32, ExitWatch>,
    /// Bumped by every spawn: wakes a reaper that found no children.
    generation: u64,
    orphans_reaped: u64,
}

struct ReaperInner {
    state: Mutex<ReaperState>,
    spawned: Condvar,
}

/// The process-wide reaper: owns every child of this process. See the module docs.
#[derive(Clone)]
pub struct Reaper {
    inner: Arc<ReaperInner>,
}

static REAPER_STARTED: AtomicBool = AtomicBool::new(false);

impl Reaper {
    /// Starts the reaper thread. Only one per process: a second call fails.
    pub fn start() -> io::Result<Reaper> {
        if REAPER_STARTED.swap(true, Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a reaper is already running in this process",
            ));
        }
        let inner = Arc::new(ReaperInner {
            state: Mutex::new(ReaperState::default()),
            spawned: Condvar::new(),
        });
        let thread_inner = inner.clone();
        thread::Builder::new()
            .name("husk-reaper".into())
            .spawn(move || reap_loop(&thread_inner))?;
        Ok(Reaper { inner })
    }

    /// Runs `fork_fn` with the reaper lock held and registers the pid it returns, so the
    /// reaper cannot reap that pid before it is known. For spawners other than [`spawn`]
    /// (the container builder): `fork_fn` must itself reap any child it gives up on.
    pub fn register_with<T, E>(
        &self,
        fork_fn: impl FnOnce() -> Result<(i32, T), E>,
    ) -> Result<(i32, T, ExitWatch), E> {
        let mut st = lock(&self.inner.state);
        let (pid, t) = fork_fn()?;
        let watch = ExitWatch::default();
        st.waiting.insert(pid, watch.clone());
        st.generation += 1;
        drop(st);
        self.inner.spawned.notify_all();
        Ok((pid, t, watch))
    }

    /// Sends `signal` to `pid` if it is one of ours and not reaped yet.
    pub fn signal(&self, pid: i32, signal: i32) -> Result<(), AgentError> {
        let st = lock(&self.inner.state);
        if !st.waiting.contains_key(&pid) {
            return Err(AgentError::new(
                ErrorKind::NotFound,
                format!("process {pid} has already exited"),
            ));
        }
        // SAFETY: plain syscall; the pid is ours and unreaped (the lock is held), so it
        // cannot have been recycled.
        let r = unsafe { libc::kill(pid, signal) };
        drop(st);
        if r == 0 {
            Ok(())
        } else {
            let e = Errno::last();
            let kind = match e {
                Errno::EINVAL => ErrorKind::InvalidArgument,
                Errno::EPERM => ErrorKind::PermissionDenied,
                _ => ErrorKind::Internal,
            };
            Err(AgentError::new(
                kind,
                format!("signal {signal} to process {pid}: {}", errno_text(e)),
            ))
        }
    }

    /// How many exits of processes nobody spawned through us (orphans) were reaped.
    pub fn orphans_reaped(&self) -> u64 {
        lock(&self.inner.state).orphans_reaped
    }
}

fn reap_loop(inner: &ReaperInner) -> ! {
    loop {
        let generation = lock(&inner.state).generation;
        // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall with a valid out pointer; WNOWAIT reaps nothing.
        let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r != 0 {
            match Errno::last() {
                Errno::EINTR => {}
                Errno::ECHILD => {
                    // No children: nothing can exit before the next spawn.
                    let st = lock(&inner.state);
                    let _unused = inner
                        .spawned
                        .wait_timeout_while(st, Duration::from_secs(1), |s| {
                            s.generation == generation
                        })
                        .unwrap_or_else(|e| e.into_inner());
                }
                _ => thread::sleep(Duration::from_millis(50)),
            }
            continue;
        }
        let mut st = lock(&inner.state);
        loop {
            let mut status = 0;
            // SAFETY: plain syscall with a valid out pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid > 0 {
                match (
                    st.waiting.remove(&pid),
                    ExitStatus::from_wait_status(status),
                ) {
                    (Some(watch), Some(s)) => watch.set(s),
                    (Some(watch), None) => {
                        st.waiting.insert(pid, watch);
                    }
                    (None, _) => st.orphans_reaped += 1,
                }
            } else if pid < 0 && Errno::last() == Errno::EINTR {
                continue;
            } else {
                break; // 0: none left exited; ECHILD: no children
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Spawning
// ---------------------------------------------------------------------------------------

/// Where the process's stdio goes. Fds are the accepted stdio connections (vsock in the
/// guest, unix sockets in tests; any fd works, sockets get a proper EOF via shutdown).
pub enum Stdio {
    /// Separate streams; `None` is `/dev/null`.
    Streams {
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
    /// One bidirectional stream to a new pty; the size is the process's `consoleSize`
    /// (height = rows, width = cols), else [`DEFAULT_TTY_SIZE`].
    Tty { stream: OwnedFd },
}

impl Stdio {
    /// Everything `/dev/null`.
    pub fn null() -> Stdio {
        Stdio::Streams {
            stdin: None,
            stdout: None,
            stderr: None,
        }
    }
}

/// A running (or exited) process spawned by [`spawn`].
pub struct Child {
    pid: i32,
    exit: ExitWatch,
    reaper: Reaper,
    tty_master: Option<Arc<File>>,
    /// The stream feeding stdin (the tty stream for a tty), to stop the input relay.
    input_stream: Option<Arc<File>>,
    outputs: Arc<Countdown>,
    /// Set while a gated child waits for [`Child::start`].
    gate: Mutex<Option<Gate>>,
}

/// What [`Child::start`] needs: the gate's write end and the exec status pipe.
struct Gate {
    open: File,
    exec_status: File,
    plan: ExecPlan,
}

/// When the child runs a [`ChildSetup`]'s steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupPhase {
    /// After stdio is in place, before the chroot (if any) and the uid/gid switch.
    BeforeUser,
    /// After the uid/gid switch, the umask and the cwd; last before the start gate and exec.
    AfterUser,
}

/// Steps a container builder runs in the child between fork and exec.
pub trait ChildSetup: Send + Sync + std::fmt::Debug {
    /// Runs the steps of `phase`; on failure returns (step index, errno).
    ///
    /// # Safety
    /// Runs in the child of a fork of a multithreaded process: async-signal-safe calls
    /// only, no allocation, no locks. Everything must have been prepared before the fork.
    unsafe fn run(&self, phase: SetupPhase) -> Result<(), (u32, i32)>;

    /// The error for step `step` failing with `errno` (e.g. "mount proc on /proc: ...").
    fn describe(&self, step: u32, errno: Errno) -> AgentError;
}

/// Extra setup for [`spawn_with`]; the default is plain [`spawn`].
#[derive(Debug, Clone, Default)]
pub struct SpawnOptions {
    /// `chroot` here (then `chdir("/")`) before the uid switch, the cwd and the `$PATH`
    /// search, which are all inside this root.
    pub root: Option<std::path::PathBuf>,
    /// Stop before exec until [`Child::start`]; the executable is looked up before
    /// stopping, so a missing command fails the spawn itself.
    pub start_gated: bool,
    /// `CLONE_NEW*` flags for `clone(2)` instead of `fork` (0: fork).
    pub clone_flags: libc::c_int,
    /// A pid namespace (an fd of `/proc/N/ns/pid`) the child is born in.
    pub pid_namespace: Option<Arc<OwnedFd>>,
    /// The container builder's steps in the child.
    pub setup: Option<Arc<dyn ChildSetup>>,
    /// For a tty: the `ptmx` of the devpts instance the process will see as /dev/pts
    /// (the container's own), instead of the guest's /dev/ptmx, so that its terminal is
    /// a /dev/pts/N of its own instance (`tty`, `ttyname` work inside).
    pub ptmx: Option<std::path::PathBuf>,
}

/// Counts output relays still running.
struct Countdown {
    left: Mutex<usize>,
    cv: Condvar,
}

impl Countdown {
    fn done(&self) {
        *lock(&self.left) -= 1;
        self.cv.notify_all();
    }
}

// The steps the child reports on the error pipe.
const STEP_SETSID: u32 = 1;
const STEP_CTTY: u32 = 2;
const STEP_DUP: u32 = 3;
const STEP_GROUPS: u32 = 4;
const STEP_GID: u32 = 5;
const STEP_UID: u32 = 6;
const STEP_CWD: u32 = 7;
const STEP_EXEC: u32 = 8;
const STEP_CHROOT: u32 = 9;
/// Not a failure: a gated child found its executable and waits for the gate.
const STEP_PARKED: u32 = 10;
/// Step `n` of the [`ChildSetup`] is reported as `STEP_SETUP + n`.
const STEP_SETUP: u32 = 1 << 16;

/// Everything the child needs, built before `fork` (no allocation after it).
struct ExecPlan {
    argv0: String,
    path_searched: bool,
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
    umask: Option<u32>,
    root: Option<CString>,
    /// The start gate's ends (read, write), for a gated child: it closes its copy of the
    /// write end so that the agent dropping the gate is EOF.
    gate: Option<(RawFd, RawFd)>,
    clone_flags: libc::c_int,
    pid_namespace: Option<Arc<OwnedFd>>,
    setup: Option<Arc<dyn ChildSetup>>,
}

fn cstring(what: &str, s: &[u8]) -> Result<CString, AgentError> {
    CString::new(s).map_err(|_| {
        AgentError::new(
            ErrorKind::InvalidArgument,
            format!("{what} contains a NUL byte"),
        )
    })
}

fn plan(process: &Process) -> Result<ExecPlan, AgentError> {
    let args = process.args().as_deref().unwrap_or(&[]);
    let Some(argv0) = args.first() else {
        return Err(AgentError::new(
            ErrorKind::InvalidArgument,
            "process.args must not be empty",
        ));
    };
    let env = process.env().as_deref().unwrap_or(&[]);
    let argv = args
        .iter()
        .map(|a| cstring("process.args", a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|e| cstring("process.env", e.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let path_searched = !argv0.contains('/');
    let candidates = if argv0.is_empty() {
        Vec::new()
    } else if path_searched {
        let path = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        path.split(':')
            .map(|dir| {
                let dir = if dir.is_empty() { "." } else { dir };
                cstring("PATH", format!("{dir}/{argv0}").as_bytes())
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        vec![cstring("process.args[0]", argv0.as_bytes())?]
    };
    let cwd = process.cwd();
    let cwd = if cwd.as_os_str().is_empty() {
        CString::new("/").unwrap()
    } else {
        cstring("process.cwd", cwd.as_os_str().as_bytes())?
    };
    let user = process.user();
    Ok(ExecPlan {
        argv0: argv0.clone(),
        path_searched,
        candidates,
        argv,
        envp,
        cwd,
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        root: None,
        gate: None,
        clone_flags: 0,
        pid_namespace: None,
        setup: None,
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), AgentError> {
    let mut fds = [0; 2];
    // SAFETY: valid out array of two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(AgentError::internal(format!(
            "pipe2: {}",
            errno_text(Errno::last())
        )));
    }
    // SAFETY: pipe2 just returned these two fds, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn dev_null() -> Result<OwnedFd, AgentError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| AgentError::internal(format!("open /dev/null: {e}")))
}

fn set_cloexec(fd: RawFd) -> Result<(), AgentError> {
    // SAFETY: fcntl on an fd we own.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(AgentError::internal(format!(
            "fcntl(FD_CLOEXEC): {}",
            errno_text(Errno::last())
        )));
    }
    Ok(())
}

/// The fds the child gets as 0, 1, 2 (plus the tty slave to make its controlling tty).
struct ChildFds {
    fds: [OwnedFd; 3],
    tty: bool,
}

/// Spawns `process` through `reaper`, relaying its stdio per `stdio`.
///
/// Returns once the process has exec'd; a failed exec is an error here (never a child that
/// exits 127): `ExecutableNotFound` ("exec: \"x\": executable file not found in $PATH", or
/// "... no such file or directory" for a path), `PermissionDenied`, `InvalidArgument` for a
/// bad cwd or spec, `Internal` otherwise.
pub fn spawn(reaper: &Reaper, process: &Process, stdio: Stdio) -> Result<Child, AgentError> {
    spawn_with(reaper, process, stdio, &SpawnOptions::default())
}

/// [`spawn`] with a root to chroot into and/or a start gate (see [`SpawnOptions`]).
///
/// With `start_gated` it returns once the child is parked before exec, having found its
/// executable (so `ExecutableNotFound`/`PermissionDenied` still come from here); the
/// output relays already run. [`Child::start`] lets it exec.
pub fn spawn_with(
    reaper: &Reaper,
    process: &Process,
    stdio: Stdio,
    options: &SpawnOptions,
) -> Result<Child, AgentError> {
    let mut plan = plan(process)?;
    if let Some(root) = &options.root {
        plan.root = Some(cstring("root path", root.as_os_str().as_bytes())?);
    }
    plan.clone_flags = options.clone_flags;
    plan.pid_namespace = options.pid_namespace.clone();
    plan.setup = options.setup.clone();
    let (err_r, err_w) = pipe()?;
    let gate = if options.start_gated {
        let (gate_r, gate_w) = pipe()?;
        plan.gate = Some((gate_r.as_raw_fd(), gate_w.as_raw_fd()));
        Some((gate_r, gate_w))
    } else {
        None
    };

    // Output relays are set up by the parent after the fork; these are the parent's ends.
    let mut stdin_relay: Option<(File, OwnedFd)> = None; // (stream, pipe write end)
    let mut out_relays: Vec<(OwnedFd, File)> = Vec::new(); // (pipe read end, stream)
    let mut tty_stream: Option<File> = None;

    let build = || -> Result<(Option<OwnedFd>, ChildFds), AgentError> {
        match stdio {
            Stdio::Streams {
                stdin,
                stdout,
                stderr,
            } => {
                let fd0 = match stdin {
                    Some(s) => {
                        let (r, w) = pipe()?;
                        stdin_relay = Some((File::from(s), w));
                        r
                    }
                    None => dev_null()?,
                };
                let mut out = |s: Option<OwnedFd>| -> Result<OwnedFd, AgentError> {
                    match s {
                        Some(s) => {
                            let (r, w) = pipe()?;
                            out_relays.push((r, File::from(s)));
                            Ok(w)
                        }
                        None => dev_null(),
                    }
                };
                let fd1 = out(stdout)?;
                let fd2 = out(stderr)?;
                Ok((
                    None,
                    ChildFds {
                        fds: [fd0, fd1, fd2],
                        tty: false,
                    },
                ))
            }
            Stdio::Tty { stream } => {
                let (rows, cols) = process
                    .console_size()
                    .map(|b| (clamp16(b.height()), clamp16(b.width())))
                    .unwrap_or(DEFAULT_TTY_SIZE);
                let ws = nix::pty::Winsize {
                    ws_row: rows,
                    ws_col: cols,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                let pty = match &options.ptmx {
                    Some(ptmx) => open_pty(ptmx, &ws)?,
                    None => nix::pty::openpty(Some(&ws), None)
                        .map_err(|e| AgentError::internal(format!("openpty: {}", errno_text(e))))?,
                };
                set_cloexec(pty.master.as_raw_fd())?;
                set_cloexec(pty.slave.as_raw_fd())?;
                tty_stream = Some(File::from(stream));
                let s1 = pty.slave.try_clone().map_err(internal_io("dup"))?;
                let s2 = pty.slave.try_clone().map_err(internal_io("dup"))?;
                Ok((
                    Some(pty.master),
                    ChildFds {
                        fds: [pty.slave, s1, s2],
                        tty: true,
                    },
                ))
            }
        }
    };
    // Everything that creates fds runs under the reaper lock, like every fork: openpty and
    // its FD_CLOEXEC are then atomic with respect to our other spawns, so no other child
    // inherits a pty slave (which would keep the master from ever seeing EOF).
    let (pid, (master, child_fds, parked), exit) = reaper.register_with(|| {
        let (master, child_fds) = build()?;
        let (pid, parked) = fork_exec(&plan, &child_fds, File::from(err_r), err_w)?;
        Ok::<_, AgentError>((pid, (master, child_fds, parked)))
    })?;
    drop(child_fds); // the parent's copies of the child's ends
    let gate = match (gate, parked) {
        (Some((gate_r, gate_w)), Some(exec_status)) => {
            drop(gate_r);
            plan.gate = None;
            Some(Gate {
                open: File::from(gate_w),
                exec_status,
                plan,
            })
        }
        _ => None,
    };

    let mut n_out = out_relays.len();
    if master.is_some() {
        n_out = 1;
    }
    let outputs = Arc::new(Countdown {
        left: Mutex::new(n_out),
        cv: Condvar::new(),
    });
    let mut child = Child {
        pid,
        exit,
        reaper: reaper.clone(),
        tty_master: None,
        input_stream: None,
        outputs: outputs.clone(),
        gate: Mutex::new(gate),
    };

    if let Some((stream, pipe_w)) = stdin_relay {
        let stream = Arc::new(stream);
        child.input_stream = Some(stream.clone());
        relay_thread("husk-stdin", move || {
            copy_input(&stream, &mut File::from(pipe_w));
        });
    }
    for (pipe_r, stream) in out_relays {
        let outputs = outputs.clone();
        relay_thread("husk-output", move || {
            copy_output(&mut File::from(pipe_r), &stream, false);
            shutdown(&stream, libc::SHUT_WR);
            outputs.done();
        });
    }
    if let (Some(master), Some(stream)) = (master, tty_stream) {
        let master = Arc::new(File::from(master));
        let stream = Arc::new(stream);
        child.tty_master = Some(master.clone());
        child.input_stream = Some(stream.clone());
        let (m_in, s_in) = (master.clone(), stream.clone());
        relay_thread("husk-tty-in", move || {
            copy_input(&s_in, &mut &*m_in);
            type_veof(&m_in);
        });
        relay_thread("husk-tty-out", move || {
            copy_output(&mut &*master, &stream, true);
            shutdown(&stream, libc::SHUT_WR);
            outputs.done();
        });
    }
    Ok(child)
}

/// `openpty` on a given devpts instance: its master from `ptmx`, the slave through
/// TIOCGPTPEER (no path lookup, so the instance need not be mounted at /dev/pts here).
fn open_pty(
    ptmx: &std::path::Path,
    ws: &libc::winsize,
) -> Result<nix::pty::OpenptyResult, AgentError> {
    let fail = |what: &str, e: Errno| {
        AgentError::internal(format!("{what} ({}): {}", ptmx.display(), errno_text(e)))
    };
    let path = cstring("ptmx path", ptmx.as_os_str().as_bytes())?;
    // SAFETY: plain syscalls on fds we own; each is wrapped in an OwnedFd at once.
    unsafe {
        let m = libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if m < 0 {
            return Err(fail("opening the pty master", Errno::last()));
        }
        let master = OwnedFd::from_raw_fd(m);
        let unlock: libc::c_int = 0;
        if libc::ioctl(m, libc::TIOCSPTLCK, &unlock) != 0 {
            return Err(fail("unlocking the pty", Errno::last()));
        }
        if libc::ioctl(m, libc::TIOCSWINSZ, ws) != 0 {
            return Err(fail("sizing the pty", Errno::last()));
        }
        let s = libc::ioctl(
            m,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if s < 0 {
            return Err(fail("opening the pty slave", Errno::last()));
        }
        Ok(nix::pty::OpenptyResult {
            master,
            slave: OwnedFd::from_raw_fd(s),
        })
    }
}

fn clamp16(v: u64) -> u16 {
    v.min(u16::MAX as u64) as u16
}

fn internal_io(what: &'static str) -> impl Fn(io::Error) -> AgentError {
    move |e| AgentError::internal(format!("{what}: {e}"))
}

fn relay_thread(name: &str, f: impl FnOnce() + Send + 'static) {
    // A relay that cannot start would lose a stream: fall back to running... nothing; the
    // spawn already succeeded, so report it loudly instead of hanging silently.
    if let Err(e) = thread::Builder::new().name(name.into()).spawn(f) {
        eprintln!("husk-protocol: cannot start the {name} relay thread: {e}");
    }
}

/// host stream -> process, until the stream's EOF (or its read side is shut down) or the
/// process stops reading. Dropping the destination afterwards is the process's EOF.
fn copy_input(stream: &File, dest: &mut impl Write) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match (&*stream).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if dest.write_all(&buf[..n]).is_err() {
            // The process closed its stdin: nobody will read the rest.
            shutdown(stream, libc::SHUT_RD);
            return;
        }
    }
}

/// process -> host stream, until EOF on the process side (EIO on a pty master whose slave
/// is closed). If the host stops reading, keep draining so the process never blocks.
fn copy_output(src: &mut impl Read, stream: &File, pty: bool) {
    let mut buf = [0u8; 16 * 1024];
    let mut host_gone = false;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if pty && e.raw_os_error() == Some(libc::EIO) => return,
            Err(_) => return,
        };
        if !host_gone && (&*stream).write_all(&buf[..n]).is_err() {
            host_gone = true;
        }
    }
}

fn shutdown(f: &File, how: libc::c_int) {
    // SAFETY: plain syscall on an fd we own; ENOTSOCK (a pipe in tests) is fine to ignore.
    unsafe { libc::shutdown(f.as_raw_fd(), how) };
}

/// After the tty's input ends: type VEOF (^D) if the line discipline is canonical, so a
/// reader of the terminal sees EOF as it would at a real keyboard.
fn type_veof(master: &File) {
    // SAFETY: zeroed termios is a valid out-parameter.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr on our pty master (Linux reports the pty's termios there).
    if unsafe { libc::tcgetattr(master.as_raw_fd(), &mut t) } != 0 {
        return;
    }
    if t.c_lflag & libc::ICANON != 0 {
        let _ = (&*master).write_all(&[t.c_cc[libc::VEOF]]);
    }
}

/// Forks and execs per `plan`, with the reaper lock held by the caller. On an exec failure
/// the child is reaped here and its (step, errno) becomes the error. A gated child that
/// parked returns the status pipe too, to learn the outcome of its exec at start.
fn fork_exec(
    plan: &ExecPlan,
    fds: &ChildFds,
    err_r: File,
    err_w: OwnedFd,
) -> Result<(i32, Option<File>), AgentError> {
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = plan.envp.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let raw = [
        fds.fds[0].as_raw_fd(),
        fds.fds[1].as_raw_fd(),
        fds.fds[2].as_raw_fd(),
    ];
    let is_root = unsafe { libc::geteuid() } == 0;
    let (cur_uid, cur_gid) = unsafe { (libc::getuid(), libc::getgid()) };

    let pid = fork_in(plan)?;
    if pid == 0 {
        // SAFETY: see above; this never returns.
        unsafe {
            child_after_fork(
                plan,
                &argv,
                &envp,
                raw,
                fds.tty,
                is_root,
                cur_uid,
                cur_gid,
                err_w.as_raw_fd(),
            )
        }
    }
    drop(err_w);
    let report = read_exec_report(&err_r)?;
    let Some((step, errno)) = report else {
        return Ok((pid, None)); // the pipe closed on exec: the process runs
    };
    if step == STEP_PARKED && plan.gate.is_some() {
        return Ok((pid, Some(err_r)));
    }
    // The child failed before exec; it _exits at once. Reap it ourselves (we hold the
    // reaper lock, so the reaper cannot take it).
    let mut status = 0;
    // SAFETY: plain syscall on our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 && Errno::last() == Errno::EINTR {}
    Err(exec_error(plan, step, errno))
}

/// Forks (or clones with `plan.clone_flags`), inside `plan.pid_namespace` if given: this
/// thread enters it for the fork and returns to its own right after, so no other spawn
/// is affected. Returns the child's pid as the agent sees it (0 in the child).
fn fork_in(plan: &ExecPlan) -> Result<i32, AgentError> {
    // A new pid namespace is made the way a thread can without a raw clone(2): this
    // thread unshares its pid namespace for children, forks (glibc's fork, whose atfork
    // handlers keep the child's locks sane; a raw clone skips them), and goes back.
    let new_pid_ns = plan.clone_flags & libc::CLONE_NEWPID != 0;
    let other_flags = plan.clone_flags & !libc::CLONE_NEWPID;
    let own_ns = if plan.pid_namespace.is_some() || new_pid_ns {
        Some(
            File::open("/proc/thread-self/ns/pid_for_children")
                .map_err(|e| AgentError::internal(format!("open pid_for_children: {e}")))?,
        )
    } else {
        None
    };
    if let Some(ns) = &plan.pid_namespace {
        // SAFETY: plain syscall on an fd we own; only this thread's children are
        // affected (pid_for_children).
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
            return Err(AgentError::internal(format!(
                "entering the container's pid namespace: {}",
                errno_text(Errno::last())
            )));
        }
    }
    // SAFETY: plain syscall; affects only this thread's later children.
    if new_pid_ns && unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(AgentError::internal(format!(
            "unsharing a pid namespace: {}",
            errno_text(Errno::last())
        )));
    }
    let pid = if other_flags != 0 {
        // SAFETY: clone without CLONE_VM and without a new stack is fork with flags: the
        // child gets a copy of this address space and only makes async-signal-safe calls.
        unsafe {
            libc::syscall(
                libc::SYS_clone,
                (other_flags | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            ) as i32
        }
    } else {
        // SAFETY: the child only makes async-signal-safe calls on data prepared before the
        // fork, then execs or _exits.
        unsafe { libc::fork() }
    };
    if pid == 0 {
        return Ok(0);
    }
    let fork_errno = Errno::last();
    if let Some(own) = own_ns {
        // SAFETY: plain syscall: back to the agent's own pid namespace for later children.
        if unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
            eprintln!(
                "husk-protocol: cannot return to the agent's pid namespace: {}",
                errno_text(Errno::last())
            );
        }
    }
    if pid < 0 {
        return Err(AgentError::internal(format!(
            "fork: {}",
            errno_text(fork_errno)
        )));
    }
    Ok(pid)
}

/// Reads the child's (step, errno) report; `None` when the pipe closed without one (the
/// exec succeeded).
fn read_exec_report(err_r: &File) -> Result<Option<(u32, Errno)>, AgentError> {
    let mut report = [0u8; 8];
    let mut got = 0;
    while got < report.len() {
        match (&*err_r).read(&mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(AgentError::internal(format!(
                    "reading the exec status: {e}"
                )))
            }
        }
    }
    match got {
        0 => Ok(None),
        8 => {
            let [s0, s1, s2, s3, e0, e1, e2, e3] = report;
            let step = u32::from_ne_bytes([s0, s1, s2, s3]);
            let errno = Errno::from_raw(i32::from_ne_bytes([e0, e1, e2, e3]));
            Ok(Some((step, errno)))
        }
        _ => Err(AgentError::internal(
            "the child failed before exec without saying why",
        )),
    }
}

fn exec_error(plan: &ExecPlan, step: u32, errno: Errno) -> AgentError {
    if let (Some(setup), Some(n)) = (&plan.setup, step.checked_sub(STEP_SETUP)) {
        return setup.describe(n, errno);
    }
    let text = errno_text(errno);
    match step {
        STEP_EXEC => match errno {
            Errno::ENOENT | Errno::ENOTDIR if plan.path_searched => AgentError::new(
                ErrorKind::ExecutableNotFound,
                format!("exec: {:?}: executable file not found in $PATH", plan.argv0),
            ),
            Errno::ENOENT | Errno::ENOTDIR => AgentError::new(
                ErrorKind::ExecutableNotFound,
                format!("exec: {:?}: {text}", plan.argv0),
            ),
            Errno::EACCES | Errno::EPERM => AgentError::new(
                ErrorKind::PermissionDenied,
                format!("exec: {:?}: {text}", plan.argv0),
            ),
            _ => AgentError::internal(format!("exec: {:?}: {text}", plan.argv0)),
        },
        STEP_CWD => AgentError::new(
            ErrorKind::InvalidArgument,
            format!(
                "chdir to cwd ({:?}) set in config.json failed: {text}",
                plan.cwd.to_string_lossy()
            ),
        ),
        STEP_GROUPS | STEP_GID | STEP_UID => {
            let what = match step {
                STEP_GROUPS => format!("setgroups({:?})", plan.groups),
                STEP_GID => format!("setgid({})", plan.gid),
                _ => format!("setuid({})", plan.uid),
            };
            let kind = if errno == Errno::EPERM {
                ErrorKind::PermissionDenied
            } else {
                ErrorKind::InvalidArgument
            };
            AgentError::new(kind, format!("{what}: {text}"))
        }
        STEP_CHROOT => AgentError::new(
            ErrorKind::InvalidArgument,
            format!(
                "chroot to {:?}: {text}",
                plan.root
                    .as_deref()
                    .map(|r| r.to_string_lossy())
                    .unwrap_or_default()
            ),
        ),
        STEP_SETSID => AgentError::internal(format!("setsid: {text}")),
        STEP_CTTY => {
            AgentError::internal(format!("making the pty the controlling terminal: {text}"))
        }
        STEP_DUP => AgentError::internal(format!("setting up stdio: {text}")),
        _ => AgentError::internal(format!("spawn step {step}: {text}")),
    }
}

/// `strerror` in lower case, as runc/Go spell errno texts ("no such file or directory").
fn errno_text(e: Errno) -> String {
    let d = e.desc();
    let mut c = d.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => d.to_owned(),
    }
}

/// The child between fork and exec: async-signal-safe calls only, no allocation.
#[allow(clippy::too_many_arguments)]
unsafe fn child_after_fork(
    plan: &ExecPlan,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    fds: [RawFd; 3],
    tty: bool,
    is_root: bool,
    cur_uid: libc::uid_t,
    cur_gid: libc::gid_t,
    err_w: RawFd,
) -> ! {
    let report = |step: u32, errno: i32| -> [u8; 8] {
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&step.to_ne_bytes());
        msg[4..].copy_from_slice(&errno.to_ne_bytes());
        msg
    };
    let fail = |step: u32, errno: i32| -> ! {
        let msg = report(step, errno);
        libc::write(err_w, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    };
    let errno = || *libc::__errno_location();

    // Default dispositions and an empty mask: the agent's own (Rust ignores SIGPIPE) must
    // not leak into the process.
    for sig in 1..libc::SIGRTMAX() {
        libc::signal(sig, libc::SIG_DFL);
    }
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());

    // Its own session: signals aimed at the agent's group never hit it by accident, and a
    // tty can become its controlling terminal.
    if libc::setsid() < 0 {
        fail(STEP_SETSID, errno());
    }
    if tty && libc::ioctl(fds[0], libc::TIOCSCTTY, 0) < 0 {
        fail(STEP_CTTY, errno());
    }
    for (target, &fd) in fds.iter().enumerate() {
        let target = target as RawFd;
        if fd == target {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                fail(STEP_DUP, errno());
            }
        } else if libc::dup2(fd, target) < 0 {
            fail(STEP_DUP, errno());
        }
    }
    if let Some(setup) = &plan.setup {
        if let Err((step, e)) = setup.run(SetupPhase::BeforeUser) {
            fail(STEP_SETUP + step, e);
        }
    }
    if let Some(root) = &plan.root {
        if libc::chroot(root.as_ptr()) < 0 || libc::chdir(c"/".as_ptr()) < 0 {
            fail(STEP_CHROOT, errno());
        }
    }
    if is_root {
        if libc::setgroups(plan.groups.len(), plan.groups.as_ptr()) < 0 {
            fail(STEP_GROUPS, errno());
        }
        if libc::setgid(plan.gid) < 0 {
            fail(STEP_GID, errno());
        }
        if libc::setuid(plan.uid) < 0 {
            fail(STEP_UID, errno());
        }
    } else {
        if plan.gid != cur_gid && libc::setgid(plan.gid) < 0 {
            fail(STEP_GID, errno());
        }
        if plan.uid != cur_uid && libc::setuid(plan.uid) < 0 {
            fail(STEP_UID, errno());
        }
    }
    if let Some(mask) = plan.umask {
        libc::umask(mask as libc::mode_t);
    }
    if libc::chdir(plan.cwd.as_ptr()) < 0 {
        fail(STEP_CWD, errno());
    }
    if let Some(setup) = &plan.setup {
        if let Err((step, e)) = setup.run(SetupPhase::AfterUser) {
            fail(STEP_SETUP + step, e);
        }
    }
    if let Some((gate, gate_open)) = plan.gate {
        libc::close(gate_open);
        // Find the executable now, so that a missing command fails the create.
        let mut found = false;
        let mut denied = false;
        for cand in &plan.candidates {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::stat(cand.as_ptr(), &mut st) != 0 {
                continue;
            }
            if st.st_mode & libc::S_IFMT == libc::S_IFREG
                && libc::access(cand.as_ptr(), libc::X_OK) == 0
            {
                found = true;
                break;
            }
            // What execve says of a directory or a file without x: EACCES (126), not
            // "not found" (127); a later candidate may still be found.
            denied = true;
        }
        if !found {
            fail(STEP_EXEC, if denied { libc::EACCES } else { libc::ENOENT });
        }
        let parked = report(STEP_PARKED, 0);
        libc::write(err_w, parked.as_ptr().cast(), parked.len());
        let mut byte = 0u8;
        loop {
            match libc::read(gate, (&mut byte as *mut u8).cast(), 1) {
                1 => break,
                r if r < 0 && errno() == libc::EINTR => {}
                // The agent dropped the gate: never start.
                _ => libc::_exit(127),
            }
        }
    }
    // execvp's search rules, with the process's own PATH.
    let mut saw_eacces = false;
    let mut last = libc::ENOENT;
    for cand in &plan.candidates {
        libc::execve(cand.as_ptr(), argv.as_ptr(), envp.as_ptr());
        let e = errno();
        match e {
            libc::EACCES => saw_eacces = true,
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => {
                last = e;
                break;
            }
        }
        last = e;
    }
    if saw_eacces
        && matches!(
            last,
            libc::ENOENT
                | libc::ENOTDIR
                | libc::ESTALE
                | libc::ENODEV
                | libc::ETIMEDOUT
                | libc::EACCES
        )
    {
        last = libc::EACCES;
    }
    fail(STEP_EXEC, last)
}

impl Child {
    /// The process's pid (in the agent's pid namespace).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Blocks until the process exits, then stops relaying the host's input to it.
    /// Output may still be in flight: see [`wait_output`](Self::wait_output).
    pub fn wait(&self) -> ExitStatus {
        let s = self.exit.wait();
        self.stop_input();
        s
    }

    /// Opens the start gate of a child spawned with `start_gated`, and returns once it has
    /// exec'd, or with its exec error (it then exits 127). `InvalidArgument` when there is
    /// no gate (never gated, or already started); `NotFound` when it died meanwhile.
    pub fn start(&self) -> Result<(), AgentError> {
        let Some(gate) = lock(&self.gate).take() else {
            return Err(AgentError::new(
                ErrorKind::InvalidArgument,
                format!("process {} was already started", self.pid),
            ));
        };
        if (&gate.open).write_all(&[1]).is_err() {
            return Err(AgentError::new(
                ErrorKind::NotFound,
                format!("process {} exited before it was started", self.pid),
            ));
        }
        match read_exec_report(&gate.exec_status)? {
            None => Ok(()),
            Some((step, errno)) => Err(exec_error(&gate.plan, step, errno)),
        }
    }

    /// `true` until [`start`](Self::start) was called on a gated child.
    pub fn is_started(&self) -> bool {
        lock(&self.gate).is_none()
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.exit.try_status()
    }

    /// A handle to wait on from elsewhere.
    pub fn exit_watch(&self) -> ExitWatch {
        self.exit.clone()
    }

    /// Waits until every output stream has reached EOF and was shut down towards the host
    /// (all bytes delivered). `false` on timeout: a background process still holds the
    /// output open.
    pub fn wait_output(&self, timeout: Duration) -> bool {
        let g = lock(&self.outputs.left);
        let (g, _) = self
            .outputs
            .cv
            .wait_timeout_while(g, timeout, |left| *left > 0)
            .unwrap_or_else(|e| e.into_inner());
        *g == 0
    }

    /// Sends `signal` to the process; `NotFound` once it has exited.
    pub fn signal(&self, signal: i32) -> Result<(), AgentError> {
        self.reaper.signal(self.pid, signal)
    }

    /// Sets the tty size (the kernel sends SIGWINCH to the foreground process group).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), AgentError> {
        let Some(master) = &self.tty_master else {
            return Err(AgentError::new(
                ErrorKind::InvalidArgument,
                format!("process {} has no terminal to resize", self.pid),
            ));
        };
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ on our pty master with a valid winsize.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return Err(AgentError::internal(format!(
                "resizing the terminal: {}",
                errno_text(Errno::last())
            )));
        }
        Ok(())
    }

    /// EOF on the process's stdin even though the host's stream stays open. A no-op for a
    /// process without stdin.
    pub fn close_stdin(&self) -> Result<(), AgentError> {
        self.stop_input();
        Ok(())
    }

    fn stop_input(&self) {
        if let Some(s) = &self.input_stream {
            shutdown(s, libc::SHUT_RD);
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Free the input relay thread if the host never closes its stream.
        if self.exit.try_status().is_some() {
            self.stop_input();
        }
    }
}
