//! The agent's request handling against real processes in real containers: an `Agent`
//! served over unix socket pairs, a busybox rootfs built in a temp dir from this
//! machine's busybox-static, the host side spoken with the protocol crate's `Client`.
//!
//! Its own main instead of libtest: the agent binds container roots and mounts devpts
//! instances, so the process first moves to a private mount namespace (which `unshare`
//! only allows while single-threaded) and becomes a child subreaper (the agent is PID 1
//! in the guest; here orphans must come to us). Needs root, like the agent.

use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use husk_agent::{Agent, Settings};
use husk_protocol::process::Reaper;
use husk_protocol::{
    open_stdio_stream, Client, ErrorKind, ExitStatus, ProcessRef, ProtocolError, ServeEnd,
    StdioConfig, StreamHeader, StreamKind,
};
use oci_spec::runtime::{LinuxNamespaceType, Mount, Process, Root, Spec, User};

const BUSYBOX: &str = "/bin/busybox";
const TIMEOUT: Duration = Duration::from_secs(20);

struct Env {
    agent: Arc<Agent>,
    rootfs: PathBuf,
}

type Test = (&'static str, fn(&Env));

fn main() {
    // SAFETY: plain syscalls while this process is still single-threaded.
    unsafe {
        if libc::geteuid() != 0 {
            eprintln!("husk-agent tests need root (mounts, chroot)");
            std::process::exit(1);
        }
        assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare(CLONE_NEWNS)");
        let none = c"none";
        let slash = c"/";
        assert_eq!(
            libc::mount(
                none.as_ptr(),
                slash.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0,
            "making / private"
        );
        assert_eq!(libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), 0);
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let dir = std::env::temp_dir().join(format!("husk-agent-test-{}", std::process::id()));
    let rootfs = build_rootfs(&dir);
    let env = Env {
        agent: Arc::new(Agent::with_settings(
            Reaper::start().expect("reaper"),
            Settings {
                stream_wait: Duration::from_secs(2),
                containers_dir: dir.join("containers"),
                cgroup_root: None,
                pid_namespaces: true,
            },
        )),
        rootfs,
    };
    let tests: &[Test] = &[
        ("create_start_wait_exit_code", create_start_wait_exit_code),
        ("init_waits_for_start", init_waits_for_start),
        ("stdout_and_stderr_apart", stdout_and_stderr_apart),
        ("stdin_reaches_the_process", stdin_reaches_the_process),
        ("close_stdin_gives_eof", close_stdin_gives_eof),
        ("tty_and_resize", tty_and_resize),
        ("signal_one_process", signal_one_process),
        ("signal_all_processes", signal_all_processes),
        ("exec_in_the_same_root", exec_in_the_same_root),
        (
            "containers_on_one_root_stay_apart",
            containers_on_one_root_stay_apart,
        ),
        ("missing_command_is_127", missing_command_is_127),
        ("env_cwd_user_applied", env_cwd_user_applied),
        ("oci_semantics_applied", oci_semantics_applied),
        ("orphans_are_reaped", orphans_are_reaped),
        ("errors_are_clear", errors_are_clear),
        ("stream_errors", stream_errors),
        ("concurrent_waiters", concurrent_waiters),
        ("shutdown_ends_serving", shutdown_ends_serving),
    ];
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&env)));
        let ms = started.elapsed().as_millis();
        match result {
            Ok(()) => println!("test {name} ... ok ({ms} ms)"),
            Err(_) => {
                println!("test {name} ... FAILED ({ms} ms)");
                failed.push(*name);
            }
        }
    }
    cleanup(&dir);
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        ran - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        println!("failures: {failed:?}");
        std::process::exit(1);
    }
}

/// /bin/busybox plus one symlink per applet, and a marker file only the chroot has.
fn build_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: apt-get install busybox-static"
    );
    // A hard link where the filesystem allows: a copy's write fd, inherited by a child
    // that another test forks meanwhile, makes exec fail with ETXTBSY.
    if std::fs::hard_link(BUSYBOX, bin.join("busybox")).is_err() {
        std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
        std::fs::set_permissions(bin.join("busybox"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    let list = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
    }
    std::fs::write(rootfs.join("marker"), "inside the rootfs\n").unwrap();
    std::fs::write(rootfs.join("not-executable"), "#!/bin/sh\n").unwrap();
    rootfs
}

/// Unmounts what the agent mounted inside the rootfs, then removes it. If anything is
/// still mounted under it, nothing is removed (never recurse into a bound /dev).
fn cleanup(dir: &Path) {
    let mounted_under = || -> Vec<String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| Path::new(p).starts_with(dir))
            .map(str::to_owned)
            .collect()
    };
    for _ in 0..5 {
        let mut points = mounted_under();
        if points.is_empty() {
            break;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let c = std::ffi::CString::new(p).unwrap();
            // SAFETY: plain syscall.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let left = mounted_under();
    if left.is_empty() {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        eprintln!("not removing {}: still mounted: {left:?}", dir.display());
    }
}

// ---------------------------------------------------------------------------------------
// The host side
// ---------------------------------------------------------------------------------------

/// A control connection served by the agent on its own thread.
fn connect(env: &Env) -> Client<UnixStream> {
    let (agent_end, host_end) = UnixStream::pair().unwrap();
    let agent = env.agent.clone();
    thread::spawn(move || {
        let _ = agent.serve_control(OwnedFd::from(agent_end));
    });
    host_end.set_read_timeout(Some(TIMEOUT)).unwrap();
    Client::connect(host_end).unwrap()
}

/// Opens one stdio stream for `process` (accepted by the agent on its own thread).
fn open_stream(env: &Env, process: &ProcessRef, kind: StreamKind) -> UnixStream {
    try_open_stream(env, process, kind).unwrap()
}

fn try_open_stream(
    env: &Env,
    process: &ProcessRef,
    kind: StreamKind,
) -> Result<UnixStream, ProtocolError> {
    let (agent_end, mut host_end) = UnixStream::pair().unwrap();
    let agent = env.agent.clone();
    thread::spawn(move || {
        let _ = agent.accept_stdio(OwnedFd::from(agent_end));
    });
    host_end.set_read_timeout(Some(TIMEOUT)).unwrap();
    open_stdio_stream(
        &mut host_end,
        &StreamHeader {
            process: process.clone(),
            kind,
        },
    )?;
    Ok(host_end)
}

struct Streams {
    stdin: Option<UnixStream>,
    stdout: Option<UnixStream>,
    stderr: Option<UnixStream>,
    tty: Option<UnixStream>,
}

fn open_streams(env: &Env, process: &ProcessRef, stdio: StdioConfig) -> Streams {
    let mut s = Streams {
        stdin: None,
        stdout: None,
        stderr: None,
        tty: None,
    };
    for kind in stdio.kinds() {
        let stream = Some(open_stream(env, process, kind));
        match kind {
            StreamKind::Stdin => s.stdin = stream,
            StreamKind::Stdout => s.stdout = stream,
            StreamKind::Stderr => s.stderr = stream,
            StreamKind::Tty => s.tty = stream,
        }
    }
    s
}

fn process(args: &[&str]) -> Process {
    let mut p = Process::default();
    p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    p.set_env(Some(vec!["PATH=/bin".into(), "TERM=xterm".into()]));
    p.set_user(User::default());
    p.set_cwd("/".into());
    p.set_terminal(Some(false));
    p
}

fn spec(env: &Env, process: Process) -> Spec {
    let mut spec = Spec::default();
    let mut root = Root::default();
    root.set_path(env.rootfs.clone());
    spec.set_root(Some(root));
    spec.set_process(Some(process));
    spec
}

/// `spec` without its pid namespace.
fn without_pid_namespace(mut spec: Spec) -> Spec {
    if let Some(linux) = spec.linux_mut() {
        if let Some(ns) = linux.namespaces_mut() {
            ns.retain(|n| n.typ() != LinuxNamespaceType::Pid);
        }
    }
    spec
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::SeqCst))
}

const OUT: StdioConfig = StdioConfig {
    stdin: false,
    stdout: true,
    stderr: false,
    terminal: false,
};
const OUT_ERR: StdioConfig = StdioConfig {
    stdin: false,
    stdout: true,
    stderr: true,
    terminal: false,
};
const IN_OUT: StdioConfig = StdioConfig {
    stdin: true,
    stdout: true,
    stderr: false,
    terminal: false,
};
const TTY: StdioConfig = StdioConfig {
    stdin: false,
    stdout: false,
    stderr: false,
    terminal: true,
};

/// Creates and starts a container running `args`; returns its id and streams.
fn run(env: &Env, args: &[&str], stdio: StdioConfig) -> (String, Streams) {
    let id = unique("c");
    let mut p = process(args);
    p.set_terminal(Some(stdio.terminal));
    let streams = open_streams(env, &ProcessRef::init(id.as_str()), stdio);
    let mut c = connect(env);
    let pid = c.create_container(&id, spec(env, p), stdio).unwrap();
    assert!(pid > 0);
    c.start_container(&id).unwrap();
    (id, streams)
}

fn read_all(mut s: UnixStream) -> String {
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    String::from_utf8(v).unwrap()
}

fn wait(env: &Env, process: ProcessRef) -> ExitStatus {
    connect(env).wait(process).unwrap()
}

fn agent_error(r: Result<impl std::fmt::Debug, ProtocolError>) -> husk_protocol::AgentError {
    match r {
        Err(ProtocolError::Agent(e)) => e,
        other => panic!("want an agent error, got {other:?}"),
    }
}

/// Reads from a tty stream until `needle` shows up.
fn read_until(s: &mut UnixStream, needle: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&got).contains(needle) {
                    break;
                }
            }
            Err(e) if e.kind() == IoErrorKind::Interrupted => {}
            Err(e) => panic!(
                "reading the tty: {e}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.contains(needle), "want {needle:?} in {text:?}");
    text
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

fn create_start_wait_exit_code(env: &Env) {
    let (id, streams) = run(env, &["sh", "-c", "cat /marker; exit 3"], OUT);
    assert_eq!(read_all(streams.stdout.unwrap()), "inside the rootfs\n");
    let status = wait(env, ProcessRef::init(id.as_str()));
    assert_eq!(status, ExitStatus::Exited(3));
    // The status stays: a second wait answers at once.
    assert_eq!(
        wait(env, ProcessRef::init(id.as_str())),
        ExitStatus::Exited(3)
    );
    // Starting twice is refused.
    let e = agent_error(connect(env).start_container(&id));
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
}

fn init_waits_for_start(env: &Env) {
    let id = unique("gate");
    let init = ProcessRef::init(id.as_str());
    let mut out = open_stream(env, &init, StreamKind::Stdout);
    let mut c = connect(env);
    let p = process(&["echo", "started"]);
    let pid = c.create_container(&id, spec(env, p), OUT).unwrap();
    // Created, not started: nothing runs yet.
    out.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 16];
    match out.read(&mut buf) {
        Err(e) if matches!(e.kind(), IoErrorKind::WouldBlock | IoErrorKind::TimedOut) => {}
        other => panic!("the init process ran before start: {other:?}"),
    }
    out.set_read_timeout(Some(TIMEOUT)).unwrap();
    // And the container's kernel filesystems are there (in its mount namespace).
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    for dir in ["proc", "sys", "dev"] {
        assert!(
            husk_agent::mounts::is_mount_point(&root.join(dir)),
            "/{dir} is not mounted in the rootfs"
        );
    }
    c.start_container(&id).unwrap();
    assert_eq!(read_all(out), "started\n");
    assert_eq!(wait(env, init), ExitStatus::Exited(0));
}

fn stdout_and_stderr_apart(env: &Env) {
    let (id, s) = run(
        env,
        &["sh", "-c", "echo to-out; echo to-err >&2; exit 0"],
        OUT_ERR,
    );
    let err = s.stderr.unwrap();
    let err = thread::spawn(move || read_all(err));
    assert_eq!(read_all(s.stdout.unwrap()), "to-out\n");
    assert_eq!(err.join().unwrap(), "to-err\n");
    assert_eq!(
        wait(env, ProcessRef::init(id.as_str())),
        ExitStatus::Exited(0)
    );
}

fn stdin_reaches_the_process(env: &Env) {
    let (id, s) = run(env, &["wc", "-l"], IN_OUT);
    let mut stdin = s.stdin.unwrap();
    stdin.write_all(b"one\ntwo\nthree\n").unwrap();
    stdin.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_all(s.stdout.unwrap()).trim(), "3");
    assert_eq!(
        wait(env, ProcessRef::init(id.as_str())),
        ExitStatus::Exited(0)
    );
}

fn close_stdin_gives_eof(env: &Env) {
    let (id, s) = run(env, &["cat"], IN_OUT);
    let mut stdin = s.stdin.unwrap();
    stdin.write_all(b"kept open\n").unwrap();
    let mut out = s.stdout.unwrap();
    let mut line = [0u8; 10];
    out.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"kept open\n");
    connect(env)
        .close_stdin(ProcessRef::init(id.as_str()))
        .unwrap();
    assert_eq!(
        wait(env, ProcessRef::init(id.as_str())),
        ExitStatus::Exited(0)
    );
    drop(stdin);
}

fn tty_and_resize(env: &Env) {
    let id = unique("tty");
    let init = ProcessRef::init(id.as_str());
    let mut p = process(&["sh", "-c", "stty size; read x; stty size; tty; exit 4"]);
    p.set_terminal(Some(true));
    p.set_console_size(Some(
        oci_spec::runtime::BoxBuilder::default()
            .height(30u64)
            .width(100u64)
            .build()
            .unwrap(),
    ));
    let mut tty = open_stream(env, &init, StreamKind::Tty);
    let mut c = connect(env);
    c.create_container(&id, spec(env, p), TTY).unwrap();
    c.start_container(&id).unwrap();
    read_until(&mut tty, "30 100");
    c.resize_tty(init.clone(), 50, 132).unwrap();
    tty.write_all(b"\n").unwrap();
    let text = read_until(&mut tty, "50 132");
    let text = text + &read_until(&mut tty, "/dev/pts/");
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert_eq!(wait(env, init.clone()), ExitStatus::Exited(4));
    // A process without a tty cannot be resized.
    let (plain, _s) = run(env, &["true"], OUT);
    let e = agent_error(connect(env).resize_tty(ProcessRef::init(plain.as_str()), 1, 1));
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
}

fn signal_one_process(env: &Env) {
    // The init of a pid namespace ignores signals it has no handler for (the kernel's
    // rule, as with runc): a container without one shows the plain delivery.
    let id = unique("sig");
    let mut c = connect(env);
    c.create_container(
        &id,
        without_pid_namespace(spec(env, process(&["sleep", "100"]))),
        StdioConfig::default(),
    )
    .unwrap();
    c.start_container(&id).unwrap();
    let init = ProcessRef::init(id.as_str());
    c.signal(init.clone(), libc::SIGTERM, false).unwrap();
    let status = wait(env, init.clone());
    assert_eq!(status, ExitStatus::Signaled(libc::SIGTERM));
    assert_eq!(status.code(), 143);
    let e = agent_error(c.signal(init, libc::SIGTERM, false));
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
}

fn signal_all_processes(env: &Env) {
    // The init waits for two background sleeps: SIGKILL to all must end every one of
    // them, not only the init.
    let (id, s) = run(
        env,
        &["sh", "-c", "sleep 100 & sleep 100 & echo ready; wait"],
        OUT,
    );
    let init = ProcessRef::init(id.as_str());
    let mut out = s.stdout.unwrap();
    let mut ready = [0u8; 6];
    out.read_exact(&mut ready).unwrap();
    let in_root = || count_processes(env, &id);
    assert_eq!(in_root(), 3, "sh and two sleeps in the container");
    connect(env)
        .signal(init.clone(), libc::SIGKILL, true)
        .unwrap();
    assert_eq!(wait(env, init), ExitStatus::Signaled(libc::SIGKILL));
    let deadline = Instant::now() + TIMEOUT;
    while in_root() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(in_root(), 0, "every process of the container is gone");
}

/// The container's processes, as `ListProcesses` reports them.
fn count_processes(env: &Env, id: &str) -> usize {
    connect(env).list_processes(id).unwrap().len()
}

fn exec_in_the_same_root(env: &Env) {
    let (id, _s) = run(env, &["sleep", "100"], StdioConfig::default());
    let exec = ProcessRef::exec(id.as_str(), "e1");
    let s = open_streams(env, &exec, OUT_ERR);
    let mut c = connect(env);
    let pid = c
        .exec_process(
            &id,
            "e1",
            process(&["sh", "-c", "cat /marker; echo oops >&2; exit 5"]),
            OUT_ERR,
        )
        .unwrap();
    assert!(pid > 0);
    assert_eq!(read_all(s.stdout.unwrap()), "inside the rootfs\n");
    assert_eq!(read_all(s.stderr.unwrap()), "oops\n");
    assert_eq!(wait(env, exec.clone()), ExitStatus::Exited(5));
    // An exec id may be reused once its process has exited.
    c.exec_process(&id, "e1", process(&["true"]), StdioConfig::default())
        .unwrap();
    assert_eq!(wait(env, exec), ExitStatus::Exited(0));
    // A missing command in an exec is 127 too.
    let e = agent_error(c.exec_process(&id, "e2", process(&["nope"]), StdioConfig::default()));
    assert_eq!(e.kind, ErrorKind::ExecutableNotFound, "{e}");
    // When the init goes, the rest of the container goes with it.
    c.exec_process(
        &id,
        "e4",
        process(&["sleep", "100"]),
        StdioConfig::default(),
    )
    .unwrap();
    c.signal(ProcessRef::init(id.as_str()), libc::SIGKILL, false)
        .unwrap();
    assert_eq!(
        wait(env, ProcessRef::init(id.as_str())),
        ExitStatus::Signaled(9)
    );
    assert_eq!(
        wait(env, ProcessRef::exec(id.as_str(), "e4")),
        ExitStatus::Signaled(9)
    );
    // No exec into a container whose init is gone.
    let e = agent_error(c.exec_process(&id, "e3", process(&["true"]), StdioConfig::default()));
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
}

fn containers_on_one_root_stay_apart(env: &Env) {
    let (long, _s) = run(env, &["sleep", "100"], StdioConfig::default());
    let (short, _s) = run(env, &["true"], StdioConfig::default());
    assert_eq!(
        wait(env, ProcessRef::init(short.as_str())),
        ExitStatus::Exited(0)
    );
    // The end of `short` (which kills what is left in its root) spares `long`.
    thread::sleep(Duration::from_millis(200));
    let mut c = connect(env);
    c.signal(ProcessRef::init(long.as_str()), 0, false).unwrap();
    assert_eq!(count_processes(env, &long), 1);
    let e = agent_error(c.signal(ProcessRef::init(short.as_str()), libc::SIGKILL, true));
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    c.signal(ProcessRef::init(long.as_str()), libc::SIGKILL, true)
        .unwrap();
    assert_eq!(
        wait(env, ProcessRef::init(long.as_str())),
        ExitStatus::Signaled(9)
    );
}

fn missing_command_is_127(env: &Env) {
    let mut c = connect(env);
    // Found in the host's /usr/bin but not in the rootfs: the lookup is inside the root.
    for (cmd, phrase) in [
        ("no-such-command", "executable file not found in $PATH"),
        ("perl", "executable file not found in $PATH"),
        ("/bin/no-such-file", "no such file or directory"),
    ] {
        let id = unique("missing");
        let e = agent_error(c.create_container(
            &id,
            spec(env, process(&[cmd])),
            StdioConfig::default(),
        ));
        assert_eq!(e.kind, ErrorKind::ExecutableNotFound, "{e}");
        assert_eq!(e.kind.exit_code(), Some(127));
        assert!(e.message.contains(phrase), "{cmd}: {e}");
        // Nothing was kept: the id is free again.
        let e = agent_error(c.start_container(&id));
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    }
    let e = agent_error(c.create_container(
        &unique("denied"),
        spec(env, process(&["/not-executable"])),
        StdioConfig::default(),
    ));
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    assert_eq!(e.kind.exit_code(), Some(126));
}

fn env_cwd_user_applied(env: &Env) {
    let mut p = process(&["sh", "-c", "echo $GREETING; pwd; id -u; id -g"]);
    p.set_env(Some(vec!["PATH=/bin".into(), "GREETING=hello".into()]));
    p.set_cwd("/bin".into());
    let mut user = User::default();
    user.set_uid(1234);
    user.set_gid(567);
    p.set_user(user);
    let id = unique("user");
    let init = ProcessRef::init(id.as_str());
    let out = open_stream(env, &init, StreamKind::Stdout);
    let mut c = connect(env);
    c.create_container(&id, spec(env, p), OUT).unwrap();
    c.start_container(&id).unwrap();
    assert_eq!(read_all(out), "hello\n/bin\n1234\n567\n");
    assert_eq!(wait(env, init), ExitStatus::Exited(0));
}

/// The OCI parts beyond the process core: hostname, pid namespace, capabilities,
/// no_new_privs, rlimits, masked and read-only paths, seccomp; an exec joins it all.
fn oci_semantics_applied(env: &Env) {
    let script = r#"
        echo "host=$(hostname)"
        echo "pid=$$"
        sed -n 's/^\(CapEff\|CapBnd\|NoNewPrivs\|Seccomp\):\s*/\1=/p' /proc/self/status
        echo "nofile=$(ulimit -n)"
        echo "version=$( (wc -c < /proc/version) 2>&1)"
        echo "procsys=$( (echo x > /proc/sys/kernel/domainname) 2>&1)"
        echo "mkdir=$( (mkdir /dev/shm/d) 2>&1)"
        echo end
        sleep 100
    "#;
    let mut v = serde_json::to_value(spec(env, process(&["sh", "-c", script]))).unwrap();
    v["linux"]["maskedPaths"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!("/proc/version"));
    v["hostname"] = serde_json::json!("agent-test");
    let caps = serde_json::json!(["CAP_KILL", "CAP_CHOWN"]);
    v["process"]["capabilities"] = serde_json::json!({
        "bounding": caps, "effective": caps, "permitted": caps
    });
    v["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 321, "soft": 321}]);
    v["process"]["noNewPrivileges"] = serde_json::json!(true);
    v["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let s: Spec = serde_json::from_value(v).unwrap();
    let id = unique("oci");
    let init = ProcessRef::init(id.as_str());
    let mut out = open_stream(env, &init, StreamKind::Stdout);
    let mut c = connect(env);
    c.create_container(&id, s, OUT).unwrap();
    c.start_container(&id).unwrap();
    let text = read_until(&mut out, "end\n");
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .unwrap_or_else(|| panic!("no {k} in {text:?}"))
            .to_owned()
    };
    assert_eq!(field("host"), "agent-test");
    assert_eq!(field("pid"), "1");
    assert_eq!(field("CapEff"), "0000000000000021");
    assert_eq!(field("CapBnd"), "0000000000000021");
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2");
    assert_eq!(field("nofile"), "321");
    assert_eq!(field("version"), "0", "a masked file reads empty: {text}");
    assert!(field("procsys").contains("Read-only"), "{text}");
    assert!(field("mkdir").contains("Operation not permitted"), "{text}");
    // An exec is in the same pid namespace, under the same filter.
    let exec = ProcessRef::exec(id.as_str(), "x");
    let s = open_streams(env, &exec, OUT_ERR);
    let p = process(&[
        "sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '; mkdir /dev/shm/e",
    ]);
    c.exec_process(&id, "x", p, OUT_ERR).unwrap();
    assert!(read_all(s.stdout.unwrap()).starts_with("sh -c"));
    assert!(read_all(s.stderr.unwrap()).contains("Operation not permitted"));
    assert_eq!(wait(env, exec), ExitStatus::Exited(1));
    let procs = c.list_processes(&id).unwrap();
    assert_eq!(procs[0].pid, 1, "{procs:?}");
    assert!(procs.iter().any(|p| p.command == "sleep 100"), "{procs:?}");
    c.signal(init.clone(), libc::SIGKILL, true).unwrap();
    assert_eq!(wait(env, init), ExitStatus::Signaled(libc::SIGKILL));
}

fn orphans_are_reaped(env: &Env) {
    let before = env.agent.orphans_reaped();
    // The init leaves two children behind; they become the agent's orphans (with a pid
    // namespace they would be killed and reaped by the kernel with the init).
    let id = unique("orphans");
    let mut c = connect(env);
    let p = process(&["sh", "-c", "sleep 0.2 & sleep 0.3 & exit 0"]);
    c.create_container(
        &id,
        without_pid_namespace(spec(env, p)),
        StdioConfig::default(),
    )
    .unwrap();
    c.start_container(&id).unwrap();
    assert_eq!(
        wait(env, ProcessRef::init(id.as_str())),
        ExitStatus::Exited(0)
    );
    let deadline = Instant::now() + TIMEOUT;
    while env.agent.orphans_reaped() < before + 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(env.agent.orphans_reaped() >= before + 2);
    assert_eq!(count_processes(env, &id), 0, "no zombie left");
}

fn errors_are_clear(env: &Env) {
    let mut c = connect(env);
    let e = agent_error(c.start_container("nobody"));
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains("nobody"), "{e}");
    let e = agent_error(c.wait(ProcessRef::exec("nobody", "x")));
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    let e = agent_error(c.create_container(
        "../x",
        spec(env, process(&["true"])),
        StdioConfig::default(),
    ));
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    // A root that is not there.
    let mut s = spec(env, process(&["true"]));
    let mut root = Root::default();
    root.set_path("/no/such/root".into());
    s.set_root(Some(root));
    let e = agent_error(c.create_container(&unique("noroot"), s, StdioConfig::default()));
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains("/no/such/root"), "{e}");
    // A relative root.
    let mut s = spec(env, process(&["true"]));
    let mut root = Root::default();
    root.set_path("rootfs".into());
    s.set_root(Some(root));
    let e = agent_error(c.create_container(&unique("relroot"), s, StdioConfig::default()));
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    // A tty the process does not ask for.
    let e = agent_error(c.create_container(&unique("tty"), spec(env, process(&["true"])), TTY));
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    // A bad cwd.
    let mut p = process(&["true"]);
    p.set_cwd("/no/such/dir".into());
    let e = agent_error(c.create_container(&unique("cwd"), spec(env, p), StdioConfig::default()));
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(e.message.contains("chdir"), "{e}");
    // The same id twice.
    let (id, _s) = run(env, &["true"], StdioConfig::default());
    let e =
        agent_error(c.create_container(&id, spec(env, process(&["true"])), StdioConfig::default()));
    assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}");
    // Shares: a relative target; a tag no device carries.
    let e = agent_error(c.mount_share("rootfs", "relative/path", false));
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    let target = env.rootfs.parent().unwrap().join("share");
    let e = agent_error(c.mount_share("no-such-tag", target.to_str().unwrap(), true));
    assert!(e.message.contains("no-such-tag"), "{e}");
    // A tmpfs from the spec is mounted inside the root; ping still answers.
    let mut s = spec(
        env,
        process(&["sh", "-c", "grep -c ' /scratch tmpfs' /proc/mounts"]),
    );
    let mut m = Mount::default();
    m.set_destination("/scratch".into());
    m.set_typ(Some("tmpfs".into()));
    m.set_source(Some("tmpfs".into()));
    m.set_options(Some(vec!["nosuid".into(), "size=1m".into()]));
    s.mounts_mut().get_or_insert_with(Vec::new).push(m);
    let id = unique("tmpfs");
    let init = ProcessRef::init(id.as_str());
    let out = open_stream(env, &init, StreamKind::Stdout);
    c.create_container(&id, s, OUT).unwrap();
    c.start_container(&id).unwrap();
    assert_eq!(read_all(out), "1\n");
    assert_eq!(wait(env, init), ExitStatus::Exited(0));
    c.ping().unwrap();
}

fn stream_errors(env: &Env) {
    let p = ProcessRef::init("streams");
    let _first = open_stream(env, &p, StreamKind::Stdout);
    // A second stdout for the same process is refused at its ack.
    match try_open_stream(env, &p, StreamKind::Stdout) {
        Err(ProtocolError::Agent(e)) => assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}"),
        other => panic!("want a refusal, got {other:?}"),
    }
    // An invalid id is refused too.
    match try_open_stream(env, &ProcessRef::init("a/b"), StreamKind::Stdin) {
        Err(ProtocolError::Agent(e)) => assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}"),
        other => panic!("want a refusal, got {other:?}"),
    }
    // A request announcing a stream that never comes fails after the wait, not a hang.
    let started = Instant::now();
    let e = agent_error(connect(env).create_container(
        "streams",
        spec(env, process(&["true"])),
        OUT_ERR,
    ));
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(e.message.contains("Stderr"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

fn concurrent_waiters(env: &Env) {
    let (id, _s) = run(env, &["sleep", "0.3"], StdioConfig::default());
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let agent = env.agent.clone();
            let init = ProcessRef::init(id.as_str());
            thread::spawn(move || {
                let env = Env {
                    agent,
                    rootfs: PathBuf::new(),
                };
                wait(&env, init)
            })
        })
        .collect();
    // A control connection stays usable while others block in Wait.
    connect(env).ping().unwrap();
    for w in waiters {
        assert_eq!(w.join().unwrap(), ExitStatus::Exited(0));
    }
}

fn shutdown_ends_serving(env: &Env) {
    let (agent_end, host_end) = UnixStream::pair().unwrap();
    let agent = env.agent.clone();
    let served = thread::spawn(move || agent.serve_control(OwnedFd::from(agent_end)));
    host_end.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut c = Client::connect(host_end).unwrap();
    let (protocol, agent_version) = c.version().unwrap();
    assert_eq!(protocol, husk_protocol::PROTOCOL_VERSION);
    assert_eq!(agent_version, husk_agent::AGENT_VERSION);
    c.shutdown().unwrap();
    // The agent powers off only once the host has the answer: when it closes.
    thread::sleep(Duration::from_millis(300));
    assert!(!served.is_finished(), "ended before the host closed");
    drop(c);
    assert_eq!(served.join().unwrap().unwrap(), ServeEnd::Shutdown);
}
