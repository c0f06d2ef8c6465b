//! `husk vm run`: a command from a host directory run inside a real microVM. The rootfs is
//! Debian's busybox-static with its applet links, built by the test; every run must leave
//! nothing behind (process, state directory, socket).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use husk_tests::{
    busybox_rootfs as rootfs, husk, scratch, set_window_size, spawn_husk, spawn_husk_in_pty,
    wait_husk, Run, Screen,
};

/// Generous: inside the emulated test bed on a loaded machine one run took over a minute
/// (natively ~100 ms).
const RUN_DEADLINE: Duration = Duration::from_secs(300);
/// husk's own wait for the agent (`--timeout`), inside [`RUN_DEADLINE`].
const READY_TIMEOUT: &str = "240";
/// Argument errors are found before any VM exists: well under a boot.
const ERROR_DEADLINE: Duration = Duration::from_secs(10);
/// Where sandboxes keep their state (runtime/src/sandbox/state_dir.rs).
const STATE_ROOT: &str = "/run/husk/vm";

/// husk's exit code (failing the test if a signal killed husk itself).
fn code(run: &Run) -> i32 {
    run.status
        .code()
        .unwrap_or_else(|| panic!("husk was killed by a signal: {run:#?}"))
}

/// [`wait_husk`], then: no state directory or socket left either.
fn finish(child: Child, token: String, start: Instant, deadline: Duration) -> Run {
    let run = wait_husk(child, token, start, deadline);
    assert_no_state_left();
    run
}

/// No sandbox state directory (with its sockets) left.
fn assert_no_state_left() {
    let left: Vec<_> = match std::fs::read_dir(STATE_ROOT) {
        Ok(d) => d.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    };
    assert!(left.is_empty(), "left behind in {STATE_ROOT}: {left:?}");
}

/// `husk vm run --rootfs ROOTFS EXTRA... -- CMD...` with `stdin` as its input.
fn run(extra: &[&str], cmd: &[&str], stdin: &[u8], deadline: Duration) -> Run {
    let root = rootfs().to_str().unwrap().to_string();
    let mut args = vec!["vm", "run", "--timeout", READY_TIMEOUT, "--rootfs", &root];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(cmd);
    let (mut child, token, start) = spawn_husk(&args, Stdio::piped());
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // A writer thread: husk reads its stdin only once the VM is up.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let ran = finish(child, token, start, deadline);
    writer.join().unwrap();
    println!("{cmd:?}: exit {:?} in {:?}", ran.status.code(), ran.elapsed);
    ran
}

#[test]
fn stdout_stderr_and_the_exit_status_come_through() {
    let ran = run(
        &[],
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
        b"",
        RUN_DEADLINE,
    );
    assert_eq!(code(&ran), 7, "{ran:#?}");
    assert_eq!(ran.stdout, "out\n", "{ran:#?}");
    assert_eq!(ran.stderr, "err\n", "{ran:#?}");
}

#[test]
fn stdin_reaches_the_command_and_its_eof_too() {
    let ran = run(&[], &["wc", "-l"], b"a\nb\n", RUN_DEADLINE);
    assert_eq!(code(&ran), 0, "{ran:#?}");
    assert_eq!(ran.stdout.trim(), "2", "{ran:#?}");
}

#[test]
fn sigterm_to_husk_kills_the_command_143() {
    let root = rootfs().to_str().unwrap().to_string();
    let (mut child, token, start) = spawn_husk(
        &[
            "vm",
            "run",
            "--timeout",
            READY_TIMEOUT,
            "--rootfs",
            &root,
            "--",
            "sh",
            "-c",
            "echo started; exec sleep 100",
        ],
        Stdio::null(),
    );
    // The command is running once it says so: then the signal must reach it.
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("started\n") {
        assert!(start.elapsed() < RUN_DEADLINE, "never started: {seen:?}");
        match out.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            other => panic!("husk's stdout ended before the command started: {other:?}"),
        }
    }
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    child.stdout = Some(out);
    let ran = finish(child, token, start, RUN_DEADLINE);
    assert_eq!(code(&ran), 143, "{ran:#?}");
}

#[test]
fn sigterm_during_boot_abandons_it_and_cleans_up() {
    let root = rootfs().to_str().unwrap().to_string();
    let (child, token, start) = spawn_husk(
        &[
            "vm",
            "run",
            "--timeout",
            READY_TIMEOUT,
            "--rootfs",
            &root,
            "--",
            "sleep",
            "100",
        ],
        Stdio::null(),
    );
    // The state directory exists once husk handles its signals and is booting.
    let booting = || std::fs::read_dir(STATE_ROOT).is_ok_and(|mut d| d.next().is_some());
    while !booting() {
        assert!(start.elapsed() < RUN_DEADLINE, "husk never started booting");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let ran = finish(child, token, start, RUN_DEADLINE);
    // Mostly the boot is abandoned ("interrupted ... while the VM was booting"); on a
    // fast host the boot may win and the signal goes to `sleep`: 143 either way.
    assert_eq!(code(&ran), 143, "{ran:#?}");
}

/// `husk vm run -t -- CMD...` in a new pty (see [`spawn_husk_in_pty`]).
fn run_in_pty(size: (u16, u16), cmd: &[&str], ctty: bool) -> (Child, String, Instant, OwnedFd) {
    let root = rootfs().to_str().unwrap().to_string();
    let mut args = vec![
        "vm",
        "run",
        "--timeout",
        READY_TIMEOUT,
        "--rootfs",
        &root,
        "-t",
        "--",
    ];
    args.extend_from_slice(cmd);
    spawn_husk_in_pty(&args, size, ctty)
}

#[test]
fn a_tty_has_the_callers_size() {
    let (child, token, start, master) = run_in_pty((37, 101), &["stty", "size"], false);
    let screen = Screen::follow(master);
    let ran = finish(child, token, start, RUN_DEADLINE);
    screen.wait_for("37 101", RUN_DEADLINE, || {});
    assert_eq!(code(&ran), 0, "{ran:#?} screen {:?}", screen.text());
}

/// In a pty that is husk's controlling terminal, resizing the master (what a terminal
/// emulator does) changes the guest's size while the command runs.
#[test]
fn a_tty_follows_a_live_resize() {
    let script =
        "stty size; while [ \"$(stty size)\" != '50 150' ]; do sleep 0.2; done; echo resized";
    let (child, token, start, master) = run_in_pty((37, 101), &["sh", "-c", script], true);
    let screen = Screen::follow(master.try_clone().unwrap());
    screen.wait_for("37 101", RUN_DEADLINE, || {});
    set_window_size(&master, 50, 150);
    screen.wait_for("resized", RUN_DEADLINE, || {});
    let ran = finish(child, token, start, RUN_DEADLINE);
    assert_eq!(code(&ran), 0, "{ran:#?} screen {:?}", screen.text());
}

#[test]
fn a_missing_command_is_127() {
    let ran = run(&[], &["no-such-command"], b"", RUN_DEADLINE);
    assert_eq!(code(&ran), 127, "{ran:#?}");
    assert!(ran.stderr.contains("executable file not found"), "{ran:#?}");
}

#[test]
fn a_rw_volume_is_written_through_and_a_ro_one_refuses() {
    let vol = scratch("vol");
    let rw = format!("{}:/data", vol.display());
    let ran = run(
        &["--volume", &rw],
        &[
            "sh",
            "-c",
            "echo hello > /data/written && cat /data/written",
        ],
        b"",
        RUN_DEADLINE,
    );
    assert_eq!(code(&ran), 0, "{ran:#?}");
    assert_eq!(ran.stdout, "hello\n");
    assert_eq!(
        std::fs::read_to_string(vol.join("written")).unwrap(),
        "hello\n"
    );

    std::fs::write(vol.join("from-host"), "host\n").unwrap();
    let ro = format!("{}:/data:ro", vol.display());
    let ran = run(
        &["--volume", &ro],
        &["sh", "-c", "cat /data/from-host; echo no > /data/refused"],
        b"",
        RUN_DEADLINE,
    );
    assert_ne!(code(&ran), 0, "a write to a :ro volume must fail: {ran:#?}");
    assert_eq!(ran.stdout, "host\n", "{ran:#?}");
    assert!(ran.stderr.contains("Read-only file system"), "{ran:#?}");
    assert!(!vol.join("refused").exists());
}

/// A long stream through the guest process's stdout arrives whole and in order (the
/// vsock credit and the relay under sustained backpressure; bench/data.sh does 256 MiB).
#[test]
fn a_large_stdout_arrives_whole_and_in_order() {
    const MIB: usize = 32;
    let vol = scratch("big");
    // Text lines with a running counter: a lost or reordered chunk changes the bytes.
    let mut data = String::with_capacity(MIB << 20);
    let mut n: u64 = 0;
    while data.len() < MIB << 20 {
        n += 1;
        data.push_str(&format!(
            "{n:016x} {:016x}\n",
            n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ));
    }
    std::fs::write(vol.join("big"), &data).unwrap();
    let volume = format!("{}:/data:ro", vol.display());
    let ran = run(
        &["--volume", &volume],
        &["cat", "/data/big"],
        b"",
        RUN_DEADLINE,
    );
    assert_eq!(code(&ran), 0, "stderr: {}", ran.stderr);
    assert_eq!(ran.stdout.len(), data.len(), "stderr: {}", ran.stderr);
    // Not assert_eq!: a failure must not print 32 MiB.
    let first_difference = ran
        .stdout
        .bytes()
        .zip(data.bytes())
        .position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "the stream differs from the file");
}

/// Each of these fails before any VM boots: fast, with one line naming the problem.
#[test]
fn bad_arguments_fail_before_boot() {
    let file = scratch("not-a-dir").join("file");
    std::fs::write(&file, "x").unwrap();
    let file = file.to_str().unwrap();
    let root = rootfs().to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--rootfs", "/nonexistent/rootfs"],
            "/nonexistent/rootfs",
        ),
        (vec!["--rootfs", file], "not a directory"),
        (vec!["--rootfs", root, "--volume", "nocolon"], "nocolon"),
        (
            vec!["--rootfs", root, "--volume", "/tmp:relative"],
            "relative",
        ),
        (
            vec!["--rootfs", root, "--volume", "/tmp:/x:rx"],
            "/tmp:/x:rx",
        ),
        (
            vec!["--rootfs", root, "--volume", "/nonexistent/vol:/data"],
            "/nonexistent/vol",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["vm", "run"];
        args.extend_from_slice(&extra);
        args.extend_from_slice(&["--", "true"]);
        let ran = husk(&args, ERROR_DEADLINE);
        assert_no_state_left();
        ran.assert_one_line_error(needle);
        assert!(
            ran.elapsed < Duration::from_secs(5),
            "no VM may boot for {extra:?}: took {:?}",
            ran.elapsed
        );
        assert_eq!(ran.status.signal(), None, "{ran:#?}");
    }
}
