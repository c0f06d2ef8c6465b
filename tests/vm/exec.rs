//! The exec proxy (`husk exec-proxy`, `husk::oci::spawn_exec_proxy_with`) against a
//! real microVM: one sandbox booted by this test process with a container running
//! `sleep`, and every exec case run into it (stdio, exit statuses, stdin, a missing
//! command, a signal, a console socket with a real pty and its resizes).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use husk::oci::console::receive_master;
use husk::oci::{spawn_exec_proxy_with, BackendError, ExecRequest};
use husk::sandbox::{command_spec, unique_id, Command, Sandbox, SandboxConfig};
use husk_protocol::StdioConfig;
use husk_tests::{
    busybox_rootfs, husk_bin, husk_command, repo_root, scratch, set_window_size, wait_husk, Run,
    Screen,
};
use oci_spec::runtime::Process;

/// Inside the emulated test bed on a loaded machine a boot took minutes (natively
/// ~100 ms); every wait is bounded by this.
const DEADLINE: Duration = Duration::from_secs(600);
/// The container the execs run in.
const CONTAINER: &str = "c1";

/// The guest process for `args` (with PATH), a tty if `tty` (its size left to the host).
fn process(sandbox: &Sandbox, args: &[&str], tty: bool) -> Process {
    let command = Command {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        cwd: "/".into(),
        tty: tty.then_some((24, 80)),
    };
    let spec = command_spec(sandbox.rootfs_path(), sandbox.id(), &command);
    let mut p = spec.process().clone().expect("command_spec sets a process");
    p.set_console_size(None);
    p
}

fn boot() -> Sandbox {
    let release = repo_root().join("target/release");
    let mut config = SandboxConfig::new(
        unique_id(),
        release.join("vmlinux"),
        release.join("initramfs.cpio"),
        busybox_rootfs().to_path_buf(),
    );
    config.ready_timeout = DEADLINE;
    let started = Instant::now();
    let sandbox = Sandbox::start(config).expect("boot the sandbox");
    println!("sandbox up in {:?}", started.elapsed());
    let spec = command_spec(
        sandbox.rootfs_path(),
        sandbox.id(),
        &Command {
            args: vec!["sleep".into(), "100000".into()],
            env: Vec::new(),
            cwd: "/".into(),
            tty: None,
        },
    );
    let mut control = sandbox.agent().control().unwrap();
    control
        .create_container(CONTAINER, spec, StdioConfig::default())
        .expect("create the container");
    control
        .start_container(CONTAINER)
        .expect("start the container");
    sandbox
}

/// `husk exec-proxy EXTRA... <vsock> c1 <process.json>` with `stdin` as its input.
fn proxy(sandbox: &Sandbox, json: &Path, extra: &[&str], stdin: &[u8]) -> Run {
    let (child, token, start) = spawn_proxy(sandbox, json, extra);
    let mut child = child;
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let ran = wait_husk(child, token, start, DEADLINE);
    writer.join().unwrap();
    ran
}

fn spawn_proxy(
    sandbox: &Sandbox,
    json: &Path,
    extra: &[&str],
) -> (std::process::Child, String, Instant) {
    let uds = sandbox.agent().uds().to_str().unwrap().to_string();
    let json = json.to_str().unwrap().to_string();
    let mut args = vec!["exec-proxy"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[&uds, CONTAINER, &json]);
    let (mut command, token) = husk_command(&args);
    let start = Instant::now();
    let child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn husk exec-proxy");
    (child, token, start)
}

fn write_json(dir: &Path, name: &str, p: &Process) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec(p).unwrap()).unwrap();
    path
}

fn code(run: &Run) -> i32 {
    run.status
        .code()
        .unwrap_or_else(|| panic!("the proxy was killed by a signal: {run:#?}"))
}

/// Waits for child `pid` of this process; its exit code.
fn wait_pid(pid: i32) -> i32 {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: plain syscall.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid: {}", std::io::Error::last_os_error());
        if r == pid {
            assert!(libc::WIFEXITED(status), "proxy killed: {status:#x}");
            return libc::WEXITSTATUS(status);
        }
        assert!(start.elapsed() < DEADLINE, "proxy {pid} hung");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn exec_proxy_relays_stdio_statuses_signals_and_a_console() {
    let sandbox = boot();
    let dir = scratch("exec");

    // stdout, stderr and an exit status.
    let json = write_json(
        &dir,
        "status.json",
        &process(
            &sandbox,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
        ),
    );
    let ran = proxy(&sandbox, &json, &[], b"");
    println!("exit 3 case: {:?}", ran.elapsed);
    assert_eq!(code(&ran), 3, "{ran:#?}");
    assert_eq!(ran.stdout, "out\n", "{ran:#?}");
    assert_eq!(ran.stderr, "err\n", "{ran:#?}");

    let json = write_json(&dir, "true.json", &process(&sandbox, &["true"], false));
    let ran = proxy(&sandbox, &json, &[], b"");
    assert_eq!(code(&ran), 0, "{ran:#?}");
    assert_eq!(ran.stdout, "", "{ran:#?}");

    // stdin through, its EOF too, every byte back (more than any buffer on the way).
    let input: Vec<u8> = (0..300_000u32)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz\n"[(i % 27) as usize])
        .collect();
    let json = write_json(&dir, "cat.json", &process(&sandbox, &["cat"], false));
    let ran = proxy(&sandbox, &json, &[], &input);
    assert_eq!(code(&ran), 0, "{}", ran.stderr);
    assert_eq!(ran.stdout.len(), input.len(), "stderr: {}", ran.stderr);
    assert!(ran.stdout.as_bytes() == input, "cat's output differs");

    // A missing command: 127 and the words podman maps to it.
    let json = write_json(
        &dir,
        "missing.json",
        &process(&sandbox, &["no-such-command"], false),
    );
    let ran = proxy(&sandbox, &json, &[], b"");
    assert_eq!(code(&ran), 127, "{ran:#?}");
    assert!(ran.stderr.contains("executable file not found"), "{ran:#?}");

    // SIGTERM to the proxy reaches the process: 143.
    let json = write_json(
        &dir,
        "term.json",
        &process(
            &sandbox,
            &["sh", "-c", "echo started; exec sleep 1000"],
            false,
        ),
    );
    let (mut child, token, start) = spawn_proxy(&sandbox, &json, &[]);
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"started\n") {
        match out.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            other => panic!("stdout ended before the process started: {other:?} {seen:?}"),
        }
    }
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    child.stdout = Some(out);
    let ran = wait_husk(child, token, start, DEADLINE);
    assert_eq!(code(&ran), 143, "{ran:#?}");

    // The backend's way in, with a console socket: the master arrives before
    // spawn_exec_proxy_with returns, the client's resizes reach the process.
    let state_dir = scratch("container-state");
    let sock = dir.join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(receive_master(&listener).unwrap()).unwrap());
    let sh = process(&sandbox, &["sh"], true);
    let request = ExecRequest {
        process: &sh,
        console_socket: Some(&sock),
        detach: true,
    };
    let host = spawn_exec_proxy_with(
        &husk_bin(),
        sandbox.agent().uds(),
        CONTAINER,
        &state_dir,
        &request,
    )
    .expect("spawn the exec proxy");
    let (_, master) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the master must have been sent when the spawn returned");
    assert_eq!(
        std::fs::read_dir(&state_dir).unwrap().count(),
        0,
        "the process.json must be gone"
    );
    // Like conmon: size the terminal once received.
    set_window_size(&master, 30, 100);
    let mut typing = File::from(master.try_clone().unwrap());
    let screen = Screen::follow(master.try_clone().unwrap());
    let mut type_line = |line: &str| typing.write_all(line.as_bytes()).unwrap();
    type_line("stty size\n");
    screen.wait_for("30 100", DEADLINE, || type_line("stty size\n"));
    set_window_size(&master, 45, 132);
    let mut typing2 = File::from(master.try_clone().unwrap());
    let mut retype = || typing2.write_all(b"stty size\n").unwrap();
    retype();
    screen.wait_for("45 132", DEADLINE, &mut retype);
    typing2.write_all(b"exit 5\n").unwrap();
    assert_eq!(wait_pid(host.pid), 5, "screen: {:?}", screen.text());
    drop(master);

    // A missing command through the backend's way: the error podman maps to 127.
    let missing = process(&sandbox, &["no-such-command"], false);
    let request = ExecRequest {
        process: &missing,
        console_socket: None,
        detach: true,
    };
    let e = spawn_exec_proxy_with(
        &husk_bin(),
        sandbox.agent().uds(),
        CONTAINER,
        &state_dir,
        &request,
    )
    .unwrap_err();
    assert!(matches!(e, BackendError::ExecutableNotFound(_)), "{e}");
    assert!(
        e.to_string().contains("executable file not found in $PATH"),
        "{e}"
    );

    sandbox.shutdown().expect("shut the sandbox down");
}
