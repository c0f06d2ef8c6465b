//! The agent's process core against real processes on this host. The test process is made
//! a child subreaper, so orphans come to it as they would to PID 1.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use husk_protocol::process::{spawn, spawn_with, Child, Reaper, SpawnOptions, Stdio};
use husk_protocol::{ErrorKind, ExitStatus};
use oci_spec::runtime::{BoxBuilder, Process, User};

fn reaper() -> &'static Reaper {
    static R: OnceLock<Reaper> = OnceLock::new();
    R.get_or_init(|| {
        // SAFETY: plain prctl on ourselves.
        assert_eq!(
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
            0
        );
        Reaper::start().expect("reaper")
    })
}

fn process(args: &[&str]) -> Process {
    let mut p = Process::default();
    p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    p.set_env(Some(vec!["PATH=/usr/bin:/bin".into(), "LC_ALL=C".into()]));
    let mut user = User::default();
    // SAFETY: plain getters.
    user.set_uid(unsafe { libc::getuid() });
    user.set_gid(unsafe { libc::getgid() });
    p.set_user(user);
    p.set_cwd("/".into());
    p
}

/// (agent end as OwnedFd, host end)
fn pair() -> (OwnedFd, UnixStream) {
    let (a, h) = UnixStream::pair().unwrap();
    (OwnedFd::from(a), h)
}

fn read_all(mut s: UnixStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut v = Vec::new();
    s.read_to_end(&mut v).unwrap();
    v
}

fn wait(child: &Child) -> ExitStatus {
    child
        .exit_watch()
        .wait_timeout(Duration::from_secs(20))
        .expect("process did not exit in time")
}

#[test]
fn stdout_stderr_apart_and_exit_code() {
    let (o, host_out) = pair();
    let (e, host_err) = pair();
    let child = spawn(
        reaper(),
        &process(&["sh", "-c", "echo out; echo err >&2; exit 7"]),
        Stdio::Streams {
            stdin: None,
            stdout: Some(o),
            stderr: Some(e),
        },
    )
    .unwrap();
    let err = thread::spawn(move || read_all(host_err));
    assert_eq!(read_all(host_out), b"out\n");
    assert_eq!(err.join().unwrap(), b"err\n");
    let status = wait(&child);
    assert_eq!(status, ExitStatus::Exited(7));
    assert_eq!(status.code(), 7);
    assert!(child.wait_output(Duration::from_secs(5)));
}

#[test]
fn sigterm_gives_143_and_signalling_an_exited_process_is_not_found() {
    let child = spawn(reaper(), &process(&["sleep", "100"]), Stdio::null()).unwrap();
    child.signal(libc::SIGTERM).unwrap();
    let status = wait(&child);
    assert_eq!(status, ExitStatus::Signaled(libc::SIGTERM));
    assert_eq!(status.code(), 143);
    assert_eq!(
        child.signal(libc::SIGTERM).unwrap_err().kind,
        ErrorKind::NotFound
    );
}

#[test]
fn missing_command_is_127_executable_not_found() {
    let err = spawn(reaper(), &process(&["no-such-command-husk"]), Stdio::null())
        .err()
        .expect("spawn must fail");
    assert_eq!(err.kind, ErrorKind::ExecutableNotFound);
    assert_eq!(err.kind.exit_code(), Some(127));
    assert!(
        err.message.contains("executable file not found in $PATH"),
        "{}",
        err.message
    );
    assert!(err.message.contains("no-such-command-husk"));

    let err = spawn(reaper(), &process(&["/no/such/file"]), Stdio::null())
        .err()
        .unwrap();
    assert_eq!(err.kind, ErrorKind::ExecutableNotFound);
    assert!(
        err.message.contains("no such file or directory"),
        "{}",
        err.message
    );
}

#[test]
fn not_executable_is_126_permission_denied() {
    let dir = std::env::temp_dir().join(format!("husk-protocol-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("not-executable");
    std::fs::write(&file, "#!/bin/sh\nexit 0\n").unwrap();
    let err = spawn(reaper(), &process(&[file.to_str().unwrap()]), Stdio::null())
        .err()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(err.kind, ErrorKind::PermissionDenied);
    assert_eq!(err.kind.exit_code(), Some(126));
    assert!(err.message.contains("permission denied"), "{}", err.message);
}

#[test]
fn bad_cwd_is_reported() {
    let mut p = process(&["true"]);
    p.set_cwd("/no/such/dir".into());
    let err = spawn(reaper(), &p, Stdio::null()).err().unwrap();
    assert_eq!(err.kind, ErrorKind::InvalidArgument);
    assert!(err.message.contains("chdir"), "{}", err.message);
}

#[test]
fn env_and_cwd_are_applied() {
    let mut p = process(&["sh", "-c", "echo $FOO; pwd"]);
    p.set_env(Some(vec!["PATH=/usr/bin:/bin".into(), "FOO=bar".into()]));
    p.set_cwd("/tmp".into());
    let (o, host_out) = pair();
    let child = spawn(
        reaper(),
        &p,
        Stdio::Streams {
            stdin: None,
            stdout: Some(o),
            stderr: None,
        },
    )
    .unwrap();
    assert_eq!(read_all(host_out), b"bar\n/tmp\n");
    assert_eq!(wait(&child), ExitStatus::Exited(0));
}

#[test]
fn stdin_eof_reaches_wc() {
    let (i, mut host_in) = pair();
    let (o, host_out) = pair();
    let child = spawn(
        reaper(),
        &process(&["wc", "-l"]),
        Stdio::Streams {
            stdin: Some(i),
            stdout: Some(o),
            stderr: None,
        },
    )
    .unwrap();
    host_in.write_all(b"a\nb\nc\n").unwrap();
    host_in.shutdown(Shutdown::Write).unwrap();
    assert_eq!(String::from_utf8(read_all(host_out)).unwrap().trim(), "3");
    assert_eq!(wait(&child), ExitStatus::Exited(0));
}

#[test]
fn close_stdin_gives_eof_while_the_host_stream_stays_open() {
    let (i, mut host_in) = pair();
    let (o, host_out) = pair();
    let child = spawn(
        reaper(),
        &process(&["cat"]),
        Stdio::Streams {
            stdin: Some(i),
            stdout: Some(o),
            stderr: None,
        },
    )
    .unwrap();
    host_in.write_all(b"hi\n").unwrap();
    // Let the relay pass "hi" on before the read side is shut down.
    thread::sleep(Duration::from_millis(200));
    child.close_stdin().unwrap();
    assert_eq!(read_all(host_out), b"hi\n");
    assert_eq!(wait(&child), ExitStatus::Exited(0));
    drop(host_in);
}

#[test]
fn large_output_loses_no_byte() {
    let run = |bytes: usize, exit_before_reading: bool| {
        let (o, host_out) = pair();
        let n = bytes.to_string();
        let child = spawn(
            reaper(),
            &process(&["head", "-c", &n, "/dev/urandom"]),
            Stdio::Streams {
                stdin: None,
                stdout: Some(o),
                stderr: None,
            },
        )
        .unwrap();
        if exit_before_reading {
            // Fits in the pipe + socket buffers: the process exits before anyone reads,
            // and every byte must still arrive.
            assert_eq!(wait(&child), ExitStatus::Exited(0));
            assert_eq!(read_all(host_out).len(), bytes);
        } else {
            assert_eq!(read_all(host_out).len(), bytes);
            assert_eq!(wait(&child), ExitStatus::Exited(0));
        }
    };
    run(100_000, true);
    run(20_000_000, false);
}

fn tty_process(args: &[&str], rows: u64, cols: u64) -> Process {
    let mut p = process(args);
    p.set_terminal(Some(true));
    p.set_console_size(Some(
        BoxBuilder::default()
            .height(rows)
            .width(cols)
            .build()
            .unwrap(),
    ));
    p
}

/// Reads the tty stream until `needle` shows up (a tty has no EOF before exit).
fn read_until(s: &mut UnixStream, needle: &str) -> String {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&out).contains(needle) {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "EOF before {needle:?}: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn tty_has_the_requested_size_and_follows_resize() {
    let (t, mut host) = pair();
    let child = spawn(
        reaper(),
        &tty_process(&["sh", "-c", "stty size; read x; stty size; tty"], 33, 101),
        Stdio::Tty { stream: t },
    )
    .unwrap();
    read_until(&mut host, "33 101");
    child.resize(40, 120).unwrap();
    host.write_all(b"\n").unwrap();
    let out = read_until(&mut host, "/dev/pts/");
    assert!(out.contains("40 120"), "{out:?}");
    assert_eq!(wait(&child), ExitStatus::Exited(0));
    // After exit the stream ends (EOF), once the master has been drained.
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
}

#[test]
fn tty_close_stdin_is_eof_for_a_canonical_reader() {
    let (t, mut host) = pair();
    let child = spawn(
        reaper(),
        &tty_process(&["wc", "-c"], 24, 80),
        Stdio::Tty { stream: t },
    )
    .unwrap();
    host.write_all(b"abc\n").unwrap();
    thread::sleep(Duration::from_millis(200));
    child.close_stdin().unwrap();
    assert_eq!(wait(&child), ExitStatus::Exited(0));
    let mut out = Vec::new();
    host.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    host.read_to_end(&mut out).unwrap();
    assert!(String::from_utf8_lossy(&out).contains('4'), "{out:?}");
    assert!(child.resize(1, 1).is_ok() || child.try_status().is_some());
}

#[test]
fn resize_without_tty_is_invalid() {
    let child = spawn(reaper(), &process(&["true"]), Stdio::null()).unwrap();
    assert_eq!(
        child.resize(10, 10).unwrap_err().kind,
        ErrorKind::InvalidArgument
    );
    assert_eq!(wait(&child), ExitStatus::Exited(0));
}

#[test]
fn orphans_are_reaped_silently() {
    let (o, host_out) = pair();
    let child = spawn(
        reaper(),
        &process(&["sh", "-c", "sleep 0.3 >/dev/null 2>&1 & echo $!"]),
        Stdio::Streams {
            stdin: None,
            stdout: Some(o),
            stderr: None,
        },
    )
    .unwrap();
    let orphan: i32 = String::from_utf8(read_all(host_out))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(wait(&child), ExitStatus::Exited(0));
    let before = reaper().orphans_reaped();
    let deadline = Instant::now() + Duration::from_secs(10);
    // A zombie keeps its /proc entry until reaped.
    while std::path::Path::new(&format!("/proc/{orphan}")).exists() {
        assert!(Instant::now() < deadline, "orphan {orphan} was not reaped");
        thread::sleep(Duration::from_millis(20));
    }
    let _ = before;
    assert!(reaper().orphans_reaped() >= 1);
}

#[test]
fn quick_exits_from_many_threads_are_all_routed() {
    let handles: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                for i in 0..25 {
                    let code = (t * 25 + i) % 256;
                    let child = spawn(
                        reaper(),
                        &process(&["sh", "-c", &format!("exit {code}")]),
                        Stdio::null(),
                    )
                    .unwrap();
                    assert_eq!(wait(&child), ExitStatus::Exited(code));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn a_second_reaper_is_refused() {
    let _ = reaper();
    assert!(Reaper::start().is_err());
}

#[test]
fn a_gated_child_execs_only_when_started() {
    let (o, mut host_out) = pair();
    let gated = SpawnOptions {
        root: None,
        start_gated: true,
        ..Default::default()
    };
    let child = spawn_with(
        reaper(),
        &process(&["echo", "ran"]),
        Stdio::Streams {
            stdin: None,
            stdout: Some(o),
            stderr: None,
        },
        &gated,
    )
    .unwrap();
    assert!(!child.is_started());
    host_out
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 8];
    assert!(host_out.read(&mut buf).is_err(), "ran before start");
    child.start().unwrap();
    assert!(child.is_started());
    assert_eq!(read_all(host_out), b"ran\n");
    assert_eq!(wait(&child), ExitStatus::Exited(0));
    assert_eq!(child.start().unwrap_err().kind, ErrorKind::InvalidArgument);

    // The executable is looked up before parking: a missing command fails the spawn.
    let err = spawn_with(
        reaper(),
        &process(&["no-such-command-husk"]),
        Stdio::null(),
        &gated,
    )
    .err()
    .expect("spawn must fail");
    assert_eq!(err.kind, ErrorKind::ExecutableNotFound);
    assert!(err.message.contains("executable file not found in $PATH"));

    // A directory is there but cannot be executed: permission denied (126), as execve.
    let err = spawn_with(reaper(), &process(&["/bin"]), Stdio::null(), &gated)
        .err()
        .expect("spawn must fail");
    assert_eq!(err.kind, ErrorKind::PermissionDenied);
    assert!(err.message.contains("permission denied"), "{}", err.message);

    // A parked child can be killed; it never execs.
    let child = spawn_with(reaper(), &process(&["true"]), Stdio::null(), &gated).unwrap();
    child.signal(libc::SIGKILL).unwrap();
    assert_eq!(wait(&child), ExitStatus::Signaled(libc::SIGKILL));
    assert_eq!(child.start().unwrap_err().kind, ErrorKind::NotFound);
}

#[test]
fn a_root_is_chrooted_into() {
    let dir = std::env::temp_dir().join(format!("husk-protocol-root-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    // A hard link, not a copy: a copy's write fd, duplicated into a child that another
    // test forks meanwhile, makes our exec fail with ETXTBSY until that child execs.
    let sh = dir.join("bin/sh");
    if std::fs::hard_link("/bin/busybox", &sh).is_err() {
        // Another filesystem: copy, then wait until no forked child holds the write fd.
        std::fs::copy("/bin/busybox", &sh).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::fs::write(dir.join("only-here"), "yes\n").unwrap();
    let (o, host_out) = pair();
    let mut p = process(&["sh", "-c", "read x < /only-here; echo $x; pwd"]);
    p.set_env(Some(vec!["PATH=/bin".into()]));
    p.set_cwd("/bin".into());
    let child = spawn_with(
        reaper(),
        &p,
        Stdio::Streams {
            stdin: None,
            stdout: Some(o),
            stderr: None,
        },
        &SpawnOptions {
            root: Some(dir.clone()),
            start_gated: false,
            ..Default::default()
        },
    );
    let out = child.as_ref().map(|_| read_all(host_out));
    let status = child.as_ref().map(wait);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.unwrap(), b"yes\n/bin\n");
    assert_eq!(status.unwrap(), ExitStatus::Exited(0));
}
