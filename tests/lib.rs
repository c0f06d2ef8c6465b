//! Helpers shared by the VM-level tests: where the built husk is, and running it with a
//! deadline so that no test can hang.
//!
//! The tests drive `target/release/husk` (what `make` builds), the same binary a user
//! runs. They run natively on a host whose KVM boots a stock guest, and inside the
//! emulated test bed (`tests/testbed/run`) otherwise; paths are absolute and fixed at
//! compile time so both work unchanged.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The checkout's root, fixed at build time (the test bed shows it at the same path).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `husk` binary `make` built, with its kernel and initramfs beside it.
pub fn husk_bin() -> PathBuf {
    let bin = repo_root().join("target/release/husk");
    assert!(
        bin.exists(),
        "{} is missing: run `make` first",
        bin.display()
    );
    bin
}

/// What a finished husk run left: status, output, how long it took.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// Peak resident set size of the husk process, KiB (the kernel's rusage for it).
    pub max_rss_kib: u64,
    /// A token unique to this run, on husk's command line, to look for leftovers.
    pub token: String,
}

impl Run {
    /// Fails the test, showing everything, unless husk exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(self.status.success(), "husk failed: {self:#?}");
        self
    }

    /// Fails the test unless husk failed with exactly one line on stderr, `husk: ...`,
    /// that contains `needle` (case-insensitive). Returns that line.
    pub fn assert_one_line_error(&self, needle: &str) -> String {
        assert!(!self.status.success(), "husk should have failed: {self:#?}");
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "want one error line: {self:#?}");
        let line = lines[0].to_string();
        assert!(
            line.starts_with("husk: "),
            "error line not `husk: ...`: {line}"
        );
        assert!(
            line.to_lowercase().contains(&needle.to_lowercase()),
            "error line does not name {needle:?}: {line}"
        );
        line
    }
}

/// Runs husk with `args`, killing it (and failing the test) after `deadline`.
pub fn husk(args: &[&str], deadline: Duration) -> Run {
    let (child, token, start) = spawn_husk(args, Stdio::null());
    wait_husk(child, token, start, deadline)
}

/// Spawns husk with `args`, `stdin` as given and stdout/stderr piped; returns the child,
/// its leftover token and when it started, for [`wait_husk`].
pub fn spawn_husk(args: &[&str], stdin: Stdio) -> (Child, String, Instant) {
    let (mut command, token) = husk_command(args);
    let start = Instant::now();
    let child = command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn husk");
    (child, token, start)
}

/// A husk command with `args` and a token unique to this run in its environment (the
/// leftover checks look for it); returns it with the token, to set up stdio and spawn.
pub fn husk_command(args: &[&str]) -> (Command, String) {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let token = format!(
        "husk-test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let mut command = Command::new(husk_bin());
    command.args(args).env("HUSK_TEST_TOKEN", &token);
    (command, token)
}

/// Waits for a husk spawned (at `start`) from [`husk_command`], killing it (and failing
/// the test) after `deadline`; collects its piped stdout/stderr (empty if not piped) and
/// checks that no process of the run is left.
// The child is reaped by `wait_with_rusage` (wait4, for its own rusage), which clippy
// cannot see.
#[allow(clippy::zombie_processes)]
pub fn wait_husk(mut child: Child, token: String, start: Instant, deadline: Duration) -> Run {
    fn read_all(from: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut from) = from {
                let _ = from.read_to_string(&mut s);
            }
            s
        })
    }
    let out_reader = read_all(child.stdout.take());
    let err_reader = read_all(child.stderr.take());
    let (status, max_rss_kib) = loop {
        if let Some(done) = wait_with_rusage(child.id()) {
            break done;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("husk run {token} hung: killed after {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let run = Run {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
        elapsed,
        max_rss_kib,
        token,
    };
    assert_no_leftover_process(&run.token);
    run
}

/// Reaps `pid` if it has exited, with its own peak RSS (wait4's rusage is the child's,
/// not the sum over every child this test process ever had).
fn wait_with_rusage(pid: u32) -> Option<(ExitStatus, u64)> {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: plain syscall; `status` and `usage` are valid for writes.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut usage) };
    assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
    (r != 0).then(|| (ExitStatus::from_raw(status), usage.ru_maxrss as u64))
}

/// No process may outlive the husk run it belongs to (a VMM thread turned process, a
/// helper, anything that inherited the run's environment).
pub fn assert_no_leftover_process(token: &str) {
    let needle = format!("HUSK_TEST_TOKEN={token}");
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let has_token = env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes());
        assert!(!has_token, "process {pid} outlived husk run {token}");
    }
}

/// Parses husk's `key=value ...` breakdown line into numbers.
pub fn breakdown(line: &str) -> std::collections::BTreeMap<String, f64> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| v.parse::<f64>().ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// True when this host's KVM is PVM, which runs only PVM-built guests.
pub fn host_kvm_is_pvm() -> bool {
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return true;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    !cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "svm" || f == "vmx"))
}

/// An initramfs whose /init is the static guest probe `name` (tests/guest/src/bin/NAME.rs,
/// built by `make guest-tests`), written under the system temp dir. Returns its path.
pub fn probe_initramfs(name: &str) -> PathBuf {
    let probe = repo_root()
        .join("target/x86_64-unknown-linux-gnu/agent")
        .join(name);
    assert!(
        probe.exists(),
        "{} is missing: run `make guest-tests` first",
        probe.display()
    );
    let out = std::env::temp_dir().join(format!("husk-probe-{name}-{}.cpio", std::process::id()));
    let status = Command::new(repo_root().join("target/release/husk-mkinitramfs"))
        .arg(&probe)
        .arg(&out)
        .status()
        .expect("run husk-mkinitramfs");
    assert!(status.success(), "husk-mkinitramfs {name} failed");
    out
}

/// Boots the guest probe `name` (see [`probe_initramfs`]) with `husk vm boot`, `extra`
/// arguments appended, and returns the run and the guest's console log.
pub fn boot_probe(name: &str, extra: &[&str], deadline: Duration) -> (Run, String) {
    let initrd = probe_initramfs(name);
    let console = std::env::temp_dir().join(format!("husk-{name}-{}.log", std::process::id()));
    let mut args = vec![
        "vm",
        "boot",
        "--initrd",
        initrd.to_str().expect("temp paths are UTF-8"),
        "--console",
        console.to_str().expect("temp paths are UTF-8"),
    ];
    args.extend_from_slice(extra);
    let run = husk(&args, deadline);
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    let _ = std::fs::remove_file(&console);
    let _ = std::fs::remove_file(&initrd);
    (run, log)
}

/// A scratch directory under the system temp dir, unique to this test process.
pub fn scratch(name: &str) -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "husk-test-{}-{}-{name}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A busybox-static rootfs (built once per test process): /bin/busybox and a link per
/// applet, the usual top-level dirs.
pub fn busybox_rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.exists(),
            "/bin/busybox is missing: apt-get install busybox-static (scripts/install-deps.sh)"
        );
        let root = scratch("rootfs");
        for d in ["bin", "dev", "proc", "sys", "tmp", "etc", "root", "run"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
        let list = Command::new(busybox).arg("--list").output().unwrap();
        assert!(list.status.success());
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" && !applet.is_empty() {
                std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
            }
        }
        root
    })
}

/// Everything read from a terminal master so far, by a thread that reads until EIO
/// (every slave closed).
#[derive(Clone)]
pub struct Screen(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Screen {
    pub fn follow(master: std::os::fd::OwnedFd) -> Screen {
        let screen = Screen(Default::default());
        let seen = screen.0.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::File::from(master);
            let mut buf = [0u8; 4096];
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        screen
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits (at most `deadline`) until the screen shows `needle`; `retry` runs every
    /// few seconds meanwhile (e.g. to type a command again: a resize travels apart from
    /// the input).
    pub fn wait_for(&self, needle: &str, deadline: Duration, mut retry: impl FnMut()) {
        let start = Instant::now();
        let mut last = Instant::now();
        while !self.text().contains(needle) {
            assert!(
                start.elapsed() < deadline,
                "never saw {needle:?}: {:?}",
                self.text()
            );
            if last.elapsed() > Duration::from_secs(5) {
                retry();
                last = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sets the window size of the terminal `fd` (a pty master: what a terminal emulator,
/// conmon or containerd's shim does on a resize).
pub fn set_window_size(fd: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(r, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
}

/// Spawns husk with `args` and a new pty of `rows` x `cols` as its stdio; with `ctty`
/// also as its controlling terminal (a session of its own), so that resizes of the
/// master send it SIGWINCH. Returns the child, its token, its start and the master.
pub fn spawn_husk_in_pty(
    args: &[&str],
    (rows, cols): (u16, u16),
    ctty: bool,
) -> (Child, String, Instant, OwnedFd) {
    let pty = nix::pty::openpty(
        Some(&nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        None,
    )
    .expect("openpty");
    let (mut command, token) = husk_command(args);
    let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    command
        .stdin(slave(&pty.slave))
        .stdout(slave(&pty.slave))
        .stderr(slave(&pty.slave));
    if ctty {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let start = Instant::now();
    let child = command.spawn().expect("spawn husk");
    // Only husk may hold the slave now: the master reads EIO once husk (and whatever
    // inherited the slave from it) has exited.
    drop(command);
    drop(pty.slave);
    (child, token, start, pty.master)
}
