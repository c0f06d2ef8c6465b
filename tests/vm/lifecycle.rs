//! The OCI lifecycle through `target/release/husk` with real microVMs: bundles made of
//! the busybox rootfs and `husk spec` edited by each test, driven the way conmon drives a
//! runtime (create's stdio are files, not pipes, since the container's host process
//! inherits them; this test process is a child subreaper, as conmon is, so it can reap
//! the VM monitor and see the container's exit status).

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use husk::oci::console::receive_master;
use husk_tests::{
    assert_no_leftover_process, busybox_rootfs, husk, husk_bin, husk_command, set_window_size,
    spawn_husk_in_pty, wait_husk, Run, Screen,
};
use nix::sys::termios::LocalFlags;
use serde_json::{json, Value};

/// A create or run: a VM boots (seconds in the test bed, far more on a loaded one).
const BOOT_DEADLINE: Duration = Duration::from_secs(300);
/// Commands that only talk to a running monitor.
const CMD_DEADLINE: Duration = Duration::from_secs(120);

/// One test's directory: `root` is the state root (short: sockets live under it).
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(format!(
            "/tmp/hl-{}-{}-{name}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        become_subreaper();
        Scratch { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("r")
    }

    /// `husk --root ROOT args...` with piped output (for commands that leave no process).
    fn husk(&self, args: &[&str]) -> Run {
        let root = self.root();
        let mut all = vec!["--root", root.to_str().unwrap()];
        all.extend_from_slice(args);
        husk(&all, CMD_DEADLINE)
    }

    /// `husk --root ROOT args...` whose stdout and stderr are files in the scratch dir
    /// (`<name>.out`, `<name>.err`), as conmon's pipes are for create: the container's
    /// monitor inherits them. Returns the run (stdout/stderr as read when husk exited).
    fn husk_files(&self, name: &str, args: &[&str], deadline: Duration) -> Run {
        let root = self.root();
        let mut all = vec!["--root", root.to_str().unwrap()];
        all.extend_from_slice(args);
        let (mut command, token) = husk_command(&all);
        let out = self.dir.join(format!("{name}.out"));
        let err = self.dir.join(format!("{name}.err"));
        let start = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn husk");
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("husk {args:?} hung: killed after {deadline:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Run {
            status,
            stdout: std::fs::read_to_string(&out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err).unwrap_or_default(),
            elapsed: start.elapsed(),
            max_rss_kib: 0,
            token,
        }
    }

    /// A bundle `name`: `husk spec` with the busybox rootfs, no terminal, `args`, then
    /// `edit`.
    fn bundle(&self, name: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> PathBuf {
        let b = self.dir.join(name);
        std::fs::create_dir_all(&b).unwrap();
        let run = husk(&["spec", "--bundle", b.to_str().unwrap()], CMD_DEADLINE);
        run.assert_success();
        let path = b.join("config.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        config["root"]["path"] = json!(busybox_rootfs());
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(args);
        edit(&mut config);
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        b
    }

    /// `create` of `bundle` as `id` with a pid file; returns the run and the pid.
    fn create(&self, id: &str, bundle: &Path) -> (Run, i32) {
        self.create_with(id, bundle, &[])
    }

    /// [`Self::create`] with `extra` options before the id.
    fn create_with(&self, id: &str, bundle: &Path, extra: &[&str]) -> (Run, i32) {
        let pid_file = self.dir.join(format!("{id}.pid"));
        let mut args = vec![
            "create",
            "--bundle",
            bundle.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.push(id);
        let run = self.husk_files(id, &args, BOOT_DEADLINE);
        assert!(run.status.success(), "create {id}: {run:#?}");
        let text = std::fs::read_to_string(&pid_file).unwrap();
        assert!(!text.ends_with('\n'), "pid file has a newline: {text:?}");
        (run, text.parse().unwrap())
    }

    /// A foreground `husk run` of `args` with `process.terminal`, in a new pty of
    /// `size` that is husk's controlling terminal (see [`spawn_husk_in_pty`]).
    fn run_tty_in_pty(
        &self,
        id: &str,
        args: &[&str],
        size: (u16, u16),
    ) -> (Child, String, Instant, OwnedFd) {
        let b = self.bundle(id, args, |c| c["process"]["terminal"] = json!(true));
        let root = self.root();
        let husk_args = [
            "--root",
            root.to_str().unwrap(),
            "run",
            "--bundle",
            b.to_str().unwrap(),
            id,
        ];
        spawn_husk_in_pty(&husk_args, size, true)
    }

    fn state(&self, id: &str) -> Value {
        let run = self.husk(&["state", id]);
        run.assert_success();
        serde_json::from_str(&run.stdout).unwrap()
    }

    fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    /// The container's stdout so far (`<id>.out`).
    fn output(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{id}.out"))).unwrap_or_default()
    }

    /// Waits until the container's stdout contains `needle`.
    fn wait_output(&self, id: &str, needle: &str) -> String {
        let deadline = Instant::now() + CMD_DEADLINE;
        loop {
            let out = self.output(id);
            if out.contains(needle) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: no {needle:?} in its output {out:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Nothing of any container left: no state dir, socket, mount, process.
    fn assert_clean(&self, tokens: &[&str]) {
        let left: Vec<_> = std::fs::read_dir(self.root())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left in the state root: {left:?}");
        for t in tokens {
            assert_no_leftover_process(t);
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.root().display().to_string();
        assert!(
            !mountinfo.contains(&root),
            "a mount under {root} is left: {mountinfo}"
        );
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort for a failed test: no container may outlive it.
        if let Ok(entries) = std::fs::read_dir(self.root()) {
            for e in entries.flatten() {
                if let Some(id) = e.file_name().to_str() {
                    let _ = self.husk(&["delete", "--force", id]);
                }
            }
        }
        reap_children();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Orphaned monitors become our children, as they become conmon's.
fn become_subreaper() {
    // SAFETY: plain prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
}

/// Reaps every child that has exited.
fn reap_children() {
    loop {
        let mut status = 0;
        // SAFETY: plain syscall.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

/// Waits for the (reparented) monitor `pid` and returns its status as a client sees it.
fn wait_monitor(pid: i32) -> i32 {
    let deadline = Instant::now() + CMD_DEADLINE;
    loop {
        let mut status = 0;
        // SAFETY: plain syscall.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid {pid}: {}", std::io::Error::last_os_error());
        if r == pid {
            let s = ExitStatus::from_raw(status);
            return s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0));
        }
        assert!(Instant::now() < deadline, "monitor {pid} did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn code(run: &Run) -> i32 {
    run.status
        .code()
        .unwrap_or_else(|| panic!("husk was killed: {run:#?}"))
}

/// Removes the pid namespace: the init is then an ordinary guest process, which SIGTERM
/// kills (a pid namespace's init ignores signals it has no handler for, as with runc).
fn without_pid_ns(config: &mut Value) {
    if let Some(ns) = config["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "pid");
    }
}

#[test]
fn create_start_state_kill_delete() {
    let s = Scratch::new("life");
    let b = s.bundle(
        "b",
        &["sh", "-c", "echo started; exec sleep 1000"],
        without_pid_ns,
    );
    let (create, pid) = s.create("c1", &b);
    println!("create: {:?}", create.elapsed);
    let state = s.state("c1");
    assert_eq!(state["status"], "created", "{state}");
    assert_eq!(state["pid"], pid, "{state}");
    assert_eq!(state["id"], "c1");
    assert_eq!(state["bundle"], json!(b));
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // Not started: its output has not begun.
    assert!(!s.output("c1").contains("started"));
    let refused = s.husk(&["delete", "c1"]);
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("not stopped"), "{refused:#?}");
    assert_eq!(s.status("c1"), "created");

    s.husk(&["start", "c1"]).assert_success();
    assert_eq!(s.status("c1"), "running");
    s.wait_output("c1", "started");
    let again = s.husk(&["start", "c1"]);
    assert!(again.stderr.contains("not created"), "{again:#?}");

    // exec: a second process in the running container, its stdio and exit status.
    let exec = s.husk(&["exec", "c1", "sh", "-c", "echo in; echo err >&2; exit 3"]);
    assert_eq!(exec.status.code(), Some(3), "{exec:#?}");
    assert_eq!(exec.stdout, "in\n", "{exec:#?}");
    assert_eq!(exec.stderr, "err\n", "{exec:#?}");
    let missing = s.husk(&["exec", "c1", "no-such-command"]);
    assert!(!missing.status.success(), "{missing:#?}");
    assert!(
        missing.stderr.contains("executable file not found"),
        "{missing:#?}"
    );
    let pid_file = s.dir.join("exec.pid");
    let pid_arg = pid_file.to_str().unwrap();
    s.husk(&[
        "exec",
        "--detach",
        "--pid-file",
        pid_arg,
        "c1",
        "sleep",
        "2",
    ])
    .assert_success();
    let exec_pid = std::fs::read_to_string(&pid_file).unwrap();
    assert!(!exec_pid.ends_with('\n'), "{exec_pid:?}");
    assert_eq!(wait_monitor(exec_pid.parse().unwrap()), 0);

    s.husk(&["kill", "c1", "TERM"]).assert_success();
    assert_eq!(wait_monitor(pid), 143);
    assert_eq!(s.status("c1"), "stopped");
    let refused = s.husk(&["kill", "c1", "KILL"]);
    assert!(refused.stderr.contains("is not running"), "{refused:#?}");
    s.husk(&["delete", "c1"]).assert_success();
    let gone = s.husk(&["state", "c1"]);
    assert!(gone.stderr.contains("does not exist"), "{gone:#?}");
    s.assert_clean(&[&create.token]);
}

#[test]
fn run_reports_the_exit_status() {
    let s = Scratch::new("run");
    let cases: [(&str, &[&str], i32); 3] = [
        ("true", &["true"], 0),
        ("three", &["sh", "-c", "echo out; echo err >&2; exit 3"], 3),
        ("missing", &["nosuchcmd"], 127),
    ];
    let mut tokens = Vec::new();
    for (id, args, want) in cases {
        let b = s.bundle(id, args, |_| {});
        let run = s.husk_files(
            id,
            &["run", "--bundle", b.to_str().unwrap(), id],
            BOOT_DEADLINE,
        );
        println!(
            "run {id}: exit {:?} in {:?}",
            run.status.code(),
            run.elapsed
        );
        assert_eq!(code(&run), want, "{run:#?}");
        if id == "three" {
            assert_eq!(run.stdout, "out\n");
            assert_eq!(run.stderr, "err\n");
        }
        if id == "missing" {
            assert!(run.stderr.contains("executable file not found"), "{run:#?}");
        }
        tokens.push(run.token);
    }
    // Killed from outside while `run` waits in the foreground: 128+9.
    let b = s.bundle("killed", &["sleep", "1000"], |_| {});
    let root = s.root();
    let (mut command, token) = husk_command(&[
        "--root",
        root.to_str().unwrap(),
        "run",
        "--bundle",
        b.to_str().unwrap(),
        "killed",
    ]);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + BOOT_DEADLINE;
    while !s.husk(&["state", "killed"]).stdout.contains("\"running\"") {
        assert!(Instant::now() < deadline, "run never got to running");
        assert!(child.try_wait().unwrap().is_none(), "run ended early");
        std::thread::sleep(Duration::from_millis(200));
    }
    s.husk(&["kill", "killed", "KILL"]).assert_success();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137));
    tokens.push(token);
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    s.assert_clean(&tokens);
}

#[test]
fn a_sigkilled_monitor_means_stopped_and_delete_cleans_up() {
    let s = Scratch::new("sigkill");
    let b = s.bundle("b", &["sleep", "1000"], |_| {});
    let (create, pid) = s.create("c1", &b);
    s.husk(&["start", "c1"]).assert_success();
    assert_eq!(s.status("c1"), "running");
    // SAFETY: plain syscall on the monitor we created.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    assert_eq!(wait_monitor(pid), 137);
    assert_eq!(s.status("c1"), "stopped");
    let dir = s.root().join("c1");
    assert!(
        dir.join("monitor.sock").exists(),
        "the dead monitor's socket"
    );
    s.husk(&["delete", "c1"]).assert_success();
    s.assert_clean(&[&create.token]);
}

#[test]
fn two_containers_pause_resume() {
    let s = Scratch::new("pause");
    let counter = [
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i; sleep 0.2; done",
    ];
    let b = s.bundle("b", &counter, |_| {});
    let (c1, pid1) = s.create("c1", &b);
    let (c2, pid2) = s.create("c2", &b);
    s.husk(&["start", "c1"]).assert_success();
    s.husk(&["start", "c2"]).assert_success();
    s.wait_output("c1", "\n3\n");
    s.wait_output("c2", "\n3\n");

    s.husk(&["pause", "c1"]).assert_success();
    assert_eq!(s.status("c1"), "paused");
    assert_eq!(s.status("c2"), "running");
    let frozen = s.output("c1");
    let other = s.output("c2");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(s.output("c1"), frozen, "a paused container made progress");
    assert!(
        s.output("c2").len() > other.len(),
        "the other one stopped too"
    );
    let refused = s.husk(&["pause", "c1"]);
    assert!(!refused.status.success(), "{refused:#?}");

    s.husk(&["resume", "c1"]).assert_success();
    assert_eq!(s.status("c1"), "running");
    let deadline = Instant::now() + CMD_DEADLINE;
    while s.output("c1").len() <= frozen.len() {
        assert!(Instant::now() < deadline, "no progress after resume");
        std::thread::sleep(Duration::from_millis(100));
    }

    // ps: the init in the container.
    let ps = s.husk(&["ps", "--format", "json", "c2"]);
    assert!(ps.status.success(), "{ps:#?}");
    let pids: Vec<i32> = serde_json::from_str(&ps.stdout).unwrap();
    assert!(!pids.is_empty(), "{ps:#?}");

    // SIGKILL to a paused container ends its VM.
    s.husk(&["pause", "c2"]).assert_success();
    s.husk(&["kill", "c2", "KILL"]).assert_success();
    assert_eq!(wait_monitor(pid2), 137);
    s.husk(&["kill", "c1", "KILL"]).assert_success();
    assert_eq!(wait_monitor(pid1), 137);
    s.husk(&["delete", "c1"]).assert_success();
    s.husk(&["delete", "c2"]).assert_success();
    s.assert_clean(&[&c1.token, &c2.token]);
}

#[test]
fn hooks_run_with_the_state_and_a_failing_one_leaves_nothing() {
    let s = Scratch::new("hooks");
    let log = s.dir.join("hooks.log");
    let hook = |kind: &str| {
        json!([{"path": "/bin/sh", "args": ["sh", "-c",
            format!("s=$(cat); echo \"{kind} $s\" >> {}", log.display())]}])
    };
    let b = s.bundle("b", &["true"], |c| {
        c["hooks"] = json!({
            "prestart": hook("prestart"), "createRuntime": hook("createRuntime"),
            "poststart": hook("poststart"), "poststop": hook("poststop"),
        });
    });
    let (create, pid) = s.create("c1", &b);
    s.husk(&["start", "c1"]).assert_success();
    assert_eq!(wait_monitor(pid), 0);
    s.husk(&["delete", "c1"]).assert_success();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<(&str, Value)> = text
        .lines()
        .map(|l| {
            let (kind, state) = l.split_once(' ').unwrap();
            (kind, serde_json::from_str(state).unwrap())
        })
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        ["prestart", "createRuntime", "poststart", "poststop"],
        "{text}"
    );
    for (kind, state) in &lines {
        assert_eq!(state["id"], "c1", "{kind}: {state}");
        assert_eq!(state["pid"], pid, "{kind}: {state}");
    }
    assert_eq!(lines[0].1["status"], "creating");
    assert_eq!(lines[3].1["status"], "stopped");

    // A failing createRuntime hook fails create and leaves nothing.
    let bad = s.bundle("bad", &["true"], |c| {
        c["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo broken >&2; exit 1"]}]});
    });
    let pid_file = s.dir.join("bad.pid");
    let run = s.husk_files(
        "bad",
        &[
            "create",
            "--bundle",
            bad.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "bad",
        ],
        BOOT_DEADLINE,
    );
    assert_eq!(code(&run), 1, "{run:#?}");
    assert!(run.stderr.contains("createRuntime hook"), "{run:#?}");
    assert!(!pid_file.exists());
    reap_children();
    s.assert_clean(&[&create.token, &run.token]);
}

/// `nproc` and MemTotal (MiB) inside a container of `bundle`.
fn vm_size(s: &Scratch, id: &str, bundle: &Path) -> (u32, u64) {
    let run = s.husk_files(
        id,
        &["run", "--bundle", bundle.to_str().unwrap(), id],
        BOOT_DEADLINE,
    );
    assert_eq!(code(&run), 0, "{run:#?}");
    let mut lines = run.stdout.lines();
    let nproc = lines.next().unwrap().trim().parse().unwrap();
    let kib: u64 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (nproc, kib / 1024)
}

#[test]
fn vm_size_follows_annotations_and_linux_resources() {
    let s = Scratch::new("res");
    let probe = ["sh", "-c", "nproc; grep MemTotal /proc/meminfo"];
    let annotated = s.bundle("ann", &probe, |c| {
        c["annotations"] = json!({"io.husk.vm.vcpus": "2", "io.husk.vm.memory_mib": "300"});
    });
    let (cpus, mib) = vm_size(&s, "ann", &annotated);
    assert_eq!(cpus, 2);
    assert!((200..=300).contains(&mib), "MemTotal {mib} MiB for 300");
    let limited = s.bundle("lim", &probe, |c| {
        c["linux"]["resources"]["cpu"] = json!({"quota": 150000, "period": 100000});
        c["linux"]["resources"]["memory"] = json!({"limit": 200u64 << 20});
    });
    let (cpus, mib) = vm_size(&s, "lim", &limited);
    assert_eq!(cpus, 2, "1.5 CPUs -> 2 vCPUs");
    // 200 MiB + 64 MiB overhead of guest RAM; the kernel keeps some of it.
    assert!((200..=264).contains(&mib), "MemTotal {mib} MiB for 264");
    s.assert_clean(&[]);
}

#[test]
fn bind_mounts_of_a_file_and_a_dir() {
    let s = Scratch::new("binds");
    let file = s.dir.join("hosts");
    std::fs::write(&file, "10.0.0.1 husk-host\n").unwrap();
    let vol = s.dir.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("in"), "from the host\n").unwrap();
    let b = s.bundle(
        "b",
        &[
            "sh",
            "-c",
            "cat /etc/hosts /data/in; echo back > /data/out; \
             echo x > /etc/hosts 2>/dev/null && echo WRITABLE; true",
        ],
        |c| {
            let mounts = c["mounts"].as_array_mut().unwrap();
            mounts.push(json!({"destination": "/etc/hosts", "type": "bind",
                "source": file, "options": ["rbind", "ro"]}));
            mounts.push(json!({"destination": "/data", "type": "bind",
                "source": vol, "options": ["rbind", "rw"]}));
        },
    );
    let run = s.husk_files(
        "b",
        &["run", "--bundle", b.to_str().unwrap(), "b"],
        BOOT_DEADLINE,
    );
    assert_eq!(code(&run), 0, "{run:#?}");
    assert_eq!(
        run.stdout, "10.0.0.1 husk-host\nfrom the host\n",
        "{run:#?}"
    );
    assert_eq!(std::fs::read_to_string(vol.join("out")).unwrap(), "back\n");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "10.0.0.1 husk-host\n"
    );
    s.assert_clean(&[&run.token]);
}

#[test]
fn twenty_create_delete_cycles_leave_nothing() {
    let s = Scratch::new("cycles");
    let file = s.dir.join("hostname");
    std::fs::write(&file, "c\n").unwrap();
    let b = s.bundle("b", &["sleep", "1000"], |c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/etc/hostname", "type": "bind", "source": file, "options": ["rbind", "ro"]
        }));
    });
    // Two lanes of ten cycles side by side: containers come and go while another one
    // boots or shuts down, as under podman, and the test takes 54 s instead of 72 s in
    // the test bed.
    let started = Instant::now();
    let tokens: Vec<String> = std::thread::scope(|scope| {
        let lanes: Vec<_> = (0..2)
            .map(|lane| {
                let (s, b) = (&s, &b);
                scope.spawn(move || {
                    let mut tokens = Vec::new();
                    for i in 0..10 {
                        let id = format!("cyc{lane}-{i}");
                        let (run, pid) = s.create(&id, b);
                        s.husk(&["delete", "--force", &id]).assert_success();
                        assert_eq!(wait_monitor(pid), 137, "{id}");
                        tokens.push(run.token);
                    }
                    tokens
                })
            })
            .collect();
        lanes
            .into_iter()
            .flat_map(|lane| lane.join().expect("a lane of cycles failed"))
            .collect()
    });
    assert_eq!(tokens.len(), 20);
    println!(
        "20 create/delete cycles, two at a time, in {:?}",
        started.elapsed()
    );
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    s.assert_clean(&tokens);
    let pgrep = std::process::Command::new("pgrep")
        .args(["-f", "sandbox-monitor"])
        .output()
        .unwrap();
    assert!(
        pgrep.stdout.is_empty(),
        "monitors left: {}",
        String::from_utf8_lossy(&pgrep.stdout)
    );
    let _ = husk_bin();
}

/// `process.terminal` with a console socket, as conmon runs `podman run -it`: the pty
/// master has arrived when `create` returns; the guest's init has a real tty of the
/// master's size, follows a resize while it runs, and its exit status is the monitor's.
#[test]
fn a_terminal_init_gets_its_pty_through_the_console_socket() {
    let s = Scratch::new("tty");
    let b = s.bundle("b", &["sh"], |c| c["process"]["terminal"] = json!(true));
    let sock = s.dir.join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let (create, pid) = s.create_with("c1", &b, &["--console-socket", sock.to_str().unwrap()]);
    // Not waiting: the master must be there already.
    listener.set_nonblocking(true).unwrap();
    let (name, master) = receive_master(&listener).expect("no master when create returned");
    assert_eq!(name, "/dev/ptmx");
    assert_eq!(s.status("c1"), "created");
    // Like conmon: size the terminal once received, before start.
    set_window_size(&master, 33, 77);
    let screen = Screen::follow(master.try_clone().unwrap());
    let mut typing = std::fs::File::from(master.try_clone().unwrap());
    let mut type_line = |line: &str| typing.write_all(line.as_bytes()).unwrap();
    s.husk(&["start", "c1"]).assert_success();
    type_line("stty size; tty\n");
    screen.wait_for("33 77", CMD_DEADLINE, || type_line("stty size; tty\n"));
    screen.wait_for("/dev/pts/", CMD_DEADLINE, || {});
    // A resize of the master while it runs (what conmon does on podman's SIGWINCH).
    set_window_size(&master, 50, 150);
    type_line("stty size\n");
    screen.wait_for("50 150", CMD_DEADLINE, || type_line("stty size\n"));
    type_line("exit 3\n");
    assert_eq!(wait_monitor(pid), 3, "screen: {:?}", screen.text());
    assert_eq!(s.status("c1"), "stopped");
    s.husk(&["delete", "c1"]).assert_success();
    drop(master);
    s.assert_clean(&[&create.token]);
}

/// `exec -t` both ways it is used: as conmon runs `podman exec -it` (detached, with a
/// console socket and a pid file: the master arrives, the exec sees a tty of the size set
/// on it and what is typed, and the proxy's status is the exec's) and as a shell user
/// runs it (in the foreground, in their own terminal). Beside an init without a tty.
#[test]
fn exec_with_a_tty_by_console_socket_and_in_the_callers_terminal() {
    let s = Scratch::new("exectty");
    let b = s.bundle("b", &["sleep", "1000"], |_| {});
    let (create, pid) = s.create_with("c1", &b, &[]);
    s.husk(&["start", "c1"]).assert_success();

    let sock = s.dir.join("exec.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let exec_pid_file = s.dir.join("exec.pid");
    let script = "while [ \"$(stty size)\" != '33 77' ]; do sleep 0.2; done; \
        echo sized; tty; read line; echo \"got $line\"; exit 4";
    // Not through `s.husk`: the proxy outlives this command by design, and the leftover
    // check after each command would count it.
    let root = s.root();
    let detached = std::process::Command::new(husk_bin())
        .args([
            "--root",
            root.to_str().unwrap(),
            "exec",
            "--tty",
            "--detach",
            "--console-socket",
            sock.to_str().unwrap(),
            "--pid-file",
            exec_pid_file.to_str().unwrap(),
            "c1",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    assert!(detached.status.success(), "{detached:?}");
    let exec_pid: i32 = std::fs::read_to_string(&exec_pid_file)
        .unwrap()
        .parse()
        .unwrap();
    let (_, master) = receive_master(&listener).expect("no master from exec --tty");
    set_window_size(&master, 33, 77);
    let screen = Screen::follow(master.try_clone().unwrap());
    screen.wait_for("sized", CMD_DEADLINE, || {});
    screen.wait_for("/dev/pts/", CMD_DEADLINE, || {});
    std::fs::File::from(master.try_clone().unwrap())
        .write_all(b"hello\n")
        .unwrap();
    screen.wait_for("got hello", CMD_DEADLINE, || {});
    assert_eq!(wait_monitor(exec_pid), 4, "screen: {:?}", screen.text());
    drop(master);

    let args = [
        "--root",
        root.to_str().unwrap(),
        "exec",
        "--tty",
        "c1",
        "sh",
        "-c",
        "stty size; tty; exit 5",
    ];
    let (child, token, start, master) = spawn_husk_in_pty(&args, (40, 100), true);
    let screen = Screen::follow(master.try_clone().unwrap());
    let ran = wait_husk(child, token, start, CMD_DEADLINE);
    assert_eq!(code(&ran), 5, "{ran:#?} screen {:?}", screen.text());
    screen.wait_for("40 100", CMD_DEADLINE, || {});
    screen.wait_for("/dev/pts/", CMD_DEADLINE, || {});
    drop(master);

    // The init never had a tty and is still running.
    assert_eq!(s.status("c1"), "running");
    s.husk(&["kill", "c1", "KILL"]).assert_success();
    assert_eq!(wait_monitor(pid), 137);
    s.husk(&["delete", "c1"]).assert_success();
    s.assert_clean(&[&create.token, &ran.token]);
}

/// A foreground `run` of a terminal process in a real terminal (husk's controlling
/// tty, as in a shell): the container's tty is that terminal, of its size, following a
/// resize; the exit status comes back.
#[test]
fn run_in_the_foreground_uses_the_callers_terminal() {
    let s = Scratch::new("runtty");
    let script = "stty size; tty; \
        while [ \"$(stty size)\" != '50 150' ]; do sleep 0.2; done; echo resized; exit 3";
    let (child, token, start, master) = s.run_tty_in_pty("t1", &["sh", "-c", script], (33, 77));
    let screen = Screen::follow(master.try_clone().unwrap());
    screen.wait_for("33 77", BOOT_DEADLINE, || {});
    screen.wait_for("/dev/pts/", CMD_DEADLINE, || {});
    set_window_size(&master, 50, 150);
    screen.wait_for("resized", CMD_DEADLINE, || {});
    let ran = wait_husk(child, token, start, CMD_DEADLINE);
    assert_eq!(code(&ran), 3, "{ran:#?} screen {:?}", screen.text());
    // The terminal is back in its own mode (the relay's raw mode was undone); on a
    // pty master, TCGETS reads the slave's settings.
    let termios = nix::sys::termios::tcgetattr(&master).unwrap();
    let canonical = LocalFlags::ICANON | LocalFlags::ECHO;
    assert!(termios.local_flags.contains(canonical), "{termios:?}");
    drop(master);
    s.assert_clean(&[&ran.token]);
}

/// A foreground terminal `run` whose VM ends without its init exiting (SIGKILL to the
/// paused container): the status is 137 and the caller's terminal is out of raw mode.
#[test]
fn a_killed_foreground_terminal_run_gives_the_terminal_back() {
    let s = Scratch::new("ttykill");
    let cmd = ["sh", "-c", "echo up; exec sleep 1000"];
    let (child, token, start, master) = s.run_tty_in_pty("t2", &cmd, (24, 80));
    let screen = Screen::follow(master.try_clone().unwrap());
    screen.wait_for("up", BOOT_DEADLINE, || {});
    let modes = || nix::sys::termios::tcgetattr(&master).unwrap().local_flags;
    assert!(
        !modes().contains(LocalFlags::ICANON),
        "not raw while relaying"
    );
    s.husk(&["pause", "t2"]).assert_success();
    s.husk(&["kill", "t2", "KILL"]).assert_success();
    let ran = wait_husk(child, token, start, CMD_DEADLINE);
    assert_eq!(code(&ran), 137, "{ran:#?} screen {:?}", screen.text());
    assert!(
        modes().contains(LocalFlags::ICANON | LocalFlags::ECHO),
        "{:?}",
        modes()
    );
    drop(master);
    s.assert_clean(&[&ran.token]);
}

/// runc's rules for terminals and console sockets: each refusal is one line and leaves
/// nothing (no state directory, no monitor, no socket); so does a console socket nobody
/// listens on, found only once the VM is up.
#[test]
fn terminal_misuse_fails_cleanly() {
    let s = Scratch::new("ttyerr");
    let tty = s.bundle("tty", &["true"], |c| c["process"]["terminal"] = json!(true));
    let plain = s.bundle("plain", &["true"], |_| {});
    let sock = s.dir.join("nobody.sock");
    let sock = sock.to_str().unwrap();
    let (tty, plain) = (tty.to_str().unwrap(), plain.to_str().unwrap());
    let cases: [(&str, Vec<&str>, &str); 5] = [
        (
            "create-tty",
            vec!["create", "--bundle", tty, "e1"],
            "cannot allocate tty if husk will detach without setting console socket",
        ),
        (
            "run-detach-tty",
            vec!["run", "--detach", "--bundle", tty, "e2"],
            "cannot allocate tty if husk will detach without setting console socket",
        ),
        (
            "create-plain-socket",
            vec!["create", "--console-socket", sock, "--bundle", plain, "e3"],
            "cannot use console socket if husk will not detach or allocate tty",
        ),
        (
            "run-foreground-socket",
            vec!["run", "--console-socket", sock, "--bundle", tty, "e4"],
            "cannot use console socket if husk will not detach or allocate tty",
        ),
        (
            "create-nobody-listens",
            vec!["create", "--console-socket", sock, "--bundle", tty, "e5"],
            "console socket",
        ),
    ];
    let mut tokens = Vec::new();
    for (name, args, needle) in cases {
        let run = s.husk_files(name, &args, BOOT_DEADLINE);
        println!("{name}: {:?} in {:?}", run.stderr.trim(), run.elapsed);
        run.assert_one_line_error(needle);
        reap_children();
        s.assert_clean(&[&run.token]);
        tokens.push(run.token);
    }
    assert!(!Path::new(sock).exists());
}
