//! `husk vm boot`: boots a microVM to the guest agent's ready line, then lets the agent
//! power it off, and prints one line: where the time went, how many VM exits it took, and
//! how many random bytes the guest took from its virtio-rng (always attached).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::assets::{self, Asset};
use crate::vmm::config::check_args;
use crate::vmm::devices::virtio::fs::{Sharing, VirtioFs};
use crate::vmm::devices::virtio::rng::Rng;
use crate::vmm::devices::virtio::vsock::Vsock;
use crate::vmm::memory::{HugePages, ResidentProbe};
use crate::vmm::{ConsoleOutput, ExitCounts, Vm, VmConfig, VmExitReason, VmStats, DEFAULT_CMDLINE};

fn parse_huge_pages(s: &str) -> Result<HugePages, String> {
    match s {
        "on" => Ok(HugePages::On),
        "off" => Ok(HugePages::Off),
        _ => Err(format!("{s:?} is neither on nor off")),
    }
}

/// One `--fs TAG=DIR[:ro][:private]`: a host directory shared over virtio-fs.
#[derive(Debug, Clone)]
pub struct FsShare {
    pub tag: String,
    pub dir: PathBuf,
    pub read_only: bool,
    pub sharing: Sharing,
}

fn parse_fs_share(s: &str) -> Result<FsShare, String> {
    let (tag, mut dir) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not TAG=DIR[:ro][:private]"))?;
    let (mut read_only, mut sharing) = (false, Sharing::Shared);
    loop {
        if let Some(rest) = dir.strip_suffix(":ro") {
            (dir, read_only) = (rest, true);
        } else if let Some(rest) = dir.strip_suffix(":private") {
            (dir, sharing) = (rest, Sharing::Exclusive);
        } else {
            break;
        }
    }
    Ok(FsShare {
        tag: tag.to_string(),
        dir: PathBuf::from(dir),
        read_only,
        sharing,
    })
}

/// What the agent prints on the console when it is ready (then it powers off).
pub const READY_MARKER: &str = "HUSK-AGENT-READY boottime_us=";
/// The start of the kernel's panic line.
pub const PANIC_MARKER: &str = "Kernel panic - not syncing:";
/// The guest's vsock CID with `--vsock` (the first one not reserved).
const VSOCK_GUEST_CID: u64 = 3;
/// How much of the console's tail is kept for error messages.
const CONSOLE_TAIL_BYTES: usize = 4096;
/// Longest console line examined (longer ones are cut: the markers are near the start).
const MAX_LINE: usize = 1024;

#[derive(Debug, Args)]
pub struct BootArgs {
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 128)]
    pub memory: u64,
    /// Guest kernel (ELF vmlinux with a PVH entry); default: husk's own.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs; default: husk's own (the agent).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Appended to husk's kernel command line.
    #[arg(long, value_name = "S")]
    pub cmdline: Option<String>,
    /// Write the guest's serial console to FILE.
    #[arg(long, value_name = "FILE")]
    pub console: Option<PathBuf>,
    /// Give up (and stop the VM) if the agent is not ready after SECS seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,
    /// Attach a virtio-vsock device (guest CID 3) whose host side is the unix socket PATH:
    /// connect to it and write `CONNECT <port>\n` to reach a guest port; a guest connecting
    /// to host port P reaches the socket `PATH_P`.
    #[arg(long, value_name = "PATH")]
    pub vsock: Option<PathBuf>,
    /// Back guest RAM with 2 MiB pages (on) or 4 KiB pages (off).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = parse_huge_pages, hide = true)]
    pub huge_pages: HugePages,
    /// Attach N virtio-rng devices instead of one (a test of every device IRQ line).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_RNG_DEVICES), hide = true)]
    pub rng_devices: u32,
    /// Share host directory DIR with the guest over virtio-fs under TAG (repeatable).
    /// `:ro`: read-only, enforced by husk; `:private`: no one else uses DIR while the VM
    /// runs, so the guest may cache everything and write back.
    #[arg(long = "fs", value_name = "TAG=DIR[:ro][:private]", value_parser = parse_fs_share)]
    pub fs: Vec<FsShare>,
}

/// One per device IRQ (IOAPIC pins 5..=23).
const MAX_RNG_DEVICES: i64 = 19;

/// The agent's ready line, as seen by the VMM.
#[derive(Clone, Copy, Debug)]
struct Ready {
    at: Instant,
    boottime_us: u64,
    exits: ExitCounts,
    /// Guest RAM resident in the host, and the whole process's RSS, at that moment (KiB).
    guest_touched_kib: Option<u64>,
    rss_kib: Option<u64>,
}

/// This process's resident set size now, KiB.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[derive(Default)]
struct WatchState {
    line: Vec<u8>,
    tail: VecDeque<u8>,
    ready: Option<Ready>,
    panic: Option<String>,
}

/// Parses the agent's ready line: `HUSK-AGENT-READY boottime_us=<N>`.
pub fn parse_ready(line: &str) -> Option<u64> {
    let rest = &line[line.find(READY_MARKER)? + READY_MARKER.len()..];
    let digits: &str = &rest[..rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len())];
    digits.parse().ok()
}

/// The panic line from its marker on, if `line` is one.
pub fn parse_panic(line: &str) -> Option<String> {
    line.find(PANIC_MARKER)
        .map(|i| line[i..].trim_end().to_string())
}

/// The console sink: watches lines for the ready and panic markers, keeps the tail, and
/// copies everything to the `--console` file (in whole lines: one write per line, not per
/// byte).
struct ConsoleWatcher {
    state: Arc<Mutex<WatchState>>,
    stats: Arc<OnceLock<Arc<VmStats>>>,
    probe: Arc<OnceLock<ResidentProbe>>,
    tee: Option<File>,
    tee_buf: Vec<u8>,
}

impl ConsoleWatcher {
    fn end_of_line(&mut self, state: &mut WatchState) {
        let line = String::from_utf8_lossy(&state.line).into_owned();
        state.line.clear();
        if state.ready.is_none() {
            if let Some(boottime_us) = parse_ready(&line) {
                let at = Instant::now();
                let exits = self.stats.get().map(|s| s.snapshot()).unwrap_or_default();
                let guest_touched_kib = self
                    .probe
                    .get()
                    .and_then(|p| p.resident_bytes())
                    .map(|b| b / 1024);
                state.ready = Some(Ready {
                    at,
                    boottime_us,
                    exits,
                    guest_touched_kib,
                    rss_kib: rss_kib(),
                });
            }
        }
        if state.panic.is_none() {
            state.panic = parse_panic(&line);
        }
    }

    fn flush_tee(&mut self) {
        if let Some(f) = &mut self.tee {
            let _ = f.write_all(&self.tee_buf);
        }
        self.tee_buf.clear();
    }
}

impl Write for ConsoleWatcher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let state = self.state.clone();
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        for &b in buf {
            if st.tail.len() == CONSOLE_TAIL_BYTES {
                st.tail.pop_front();
            }
            st.tail.push_back(b);
            match b {
                b'\n' => self.end_of_line(&mut st),
                b'\r' => {}
                _ if st.line.len() < MAX_LINE => st.line.push(b),
                _ => {}
            }
        }
        drop(st);
        if self.tee.is_some() {
            self.tee_buf.extend_from_slice(buf);
            if buf.contains(&b'\n') || self.tee_buf.len() >= 4096 {
                self.flush_tee();
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // The UART flushes after every byte; the file is written per line instead.
        Ok(())
    }
}

impl Drop for ConsoleWatcher {
    fn drop(&mut self) {
        self.flush_tee();
    }
}

fn last_console_line(state: &WatchState) -> Option<String> {
    let tail: Vec<u8> = state.tail.iter().copied().collect();
    let text = String::from_utf8_lossy(&tail);
    text.lines()
        .map(|l| l.trim_matches(|c: char| c.is_whitespace() || c.is_control()))
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Boots, waits for the agent, prints the breakdown line.
pub fn run(args: BootArgs, started: Instant) -> Result<()> {
    // The caller's mistakes first, before looking for files or at the host's KVM.
    check_args(args.vcpus, args.memory)?;
    // Before any KVM work: a bad tag or directory is the user's error, reported first.
    let shares = args
        .fs
        .iter()
        .map(|s| VirtioFs::with_sharing(&s.tag, &s.dir, s.read_only, s.sharing))
        .collect::<Result<Vec<_>, _>>()?;
    let kernel = match args.kernel {
        Some(k) => k,
        None => assets::find(Asset::Kernel)?,
    };
    let initrd = match args.initrd {
        Some(i) => i,
        None => assets::find(Asset::Initrd)?,
    };
    let mut cmdline = DEFAULT_CMDLINE.to_string();
    if let Some(extra) = args.cmdline.as_deref().filter(|s| !s.trim().is_empty()) {
        cmdline.push(' ');
        cmdline.push_str(extra.trim());
    }
    let tee = match &args.console {
        Some(p) => Some(
            File::create(p)
                .with_context(|| format!("cannot create console file {}", p.display()))?,
        ),
        None => None,
    };
    let state = Arc::new(Mutex::new(WatchState::default()));
    let stats_slot = Arc::new(OnceLock::new());
    let probe_slot = Arc::new(OnceLock::new());
    let watcher = ConsoleWatcher {
        state: state.clone(),
        stats: stats_slot.clone(),
        probe: probe_slot.clone(),
        tee,
        tee_buf: Vec::new(),
    };
    let config = VmConfig {
        vcpus: args.vcpus,
        memory_mib: args.memory,
        kernel,
        initrd: Some(initrd),
        cmdline,
        console: ConsoleOutput::Sink(Box::new(watcher)),
        huge_pages: args.huge_pages,
    };
    if std::env::var_os("HUSK_TRACE_SETUP").is_some() {
        eprintln!(
            "husk-trace: main after {:.1} ms",
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    // Bound before the VM is built: a bad path is the caller's mistake, reported first.
    let vsock = match &args.vsock {
        Some(path) => Some(Vsock::new(VSOCK_GUEST_CID, path.clone())?),
        None => None,
    };
    let mut vm = Vm::new(config)?;
    if let Some(vsock) = vsock {
        vm.add_virtio_device(Box::new(vsock), "vsock")?;
    }
    // Always: the guest must never block waiting for entropy.
    let devices_started = Instant::now();
    let mut rng_counters = Vec::new();
    for _ in 0..args.rng_devices {
        let rng = Rng::new();
        rng_counters.push(rng.counter());
        vm.add_virtio_device(Box::new(rng), "rng")?;
    }
    for fs in shares {
        vm.add_virtio_device(Box::new(fs), "fs")?;
    }
    if std::env::var_os("HUSK_TRACE_SETUP").is_some() {
        eprintln!(
            "husk-trace: virtio devices {:.1} ms",
            ms(devices_started.elapsed())
        );
    }
    let stats = vm.stats();
    let _ = stats_slot.set(stats.clone());
    let _ = probe_slot.set(vm.resident_probe());

    // The watchdog: stops the VM if the agent is not ready in time; told to go away (and
    // joined) when the VM has ended, whichever way.
    let timeout = Duration::from_secs(args.timeout);
    let deadline = started + timeout;
    let stop = vm.stop_handle();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watch_state = state.clone();
    let watchdog = std::thread::Builder::new()
        .name("husk-watchdog".into())
        // Small: a default 2 MiB stack can become a resident huge page under THP.
        .stack_size(128 << 10)
        .spawn(move || {
            let left = deadline.saturating_duration_since(Instant::now());
            if !matches!(done_rx.recv_timeout(left), Err(RecvTimeoutError::Timeout)) {
                return false; // the VM ended in time
            }
            let ready = watch_state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ready
                .is_some();
            if ready {
                // Ready in time and powering off: give it as long again before stopping it.
                if matches!(
                    done_rx.recv_timeout(timeout),
                    Err(RecvTimeoutError::Timeout)
                ) {
                    stop.stop();
                }
                return false;
            }
            stop.stop();
            true
        })
        .context("cannot start the watchdog thread")?;

    let outcome = vm.run();
    drop(done_tx);
    let timed_out = watchdog.join().unwrap_or(false);
    let st = state.lock().unwrap_or_else(|e| e.into_inner());
    let reason = outcome.context("the VM failed")?;

    if let Some(ready) = st.ready {
        if matches!(
            reason,
            VmExitReason::Reset | VmExitReason::TripleFault | VmExitReason::SystemEvent(_)
        ) {
            let setup = stats
                .first_run()
                .map(|t| t.saturating_duration_since(started))
                .unwrap_or_default();
            let mut line = format!(
                "vmm_setup_ms={:.1} guest_ready_ms={:.1} total_ms={:.1} vm_exits={} userspace_exits={}",
                ms(setup),
                ready.boottime_us as f64 / 1000.0,
                ms(ready.at.saturating_duration_since(started)),
                ready.exits.vm_exits,
                ready.exits.userspace_exits,
            );
            if let (Some(guest), Some(rss)) = (ready.guest_touched_kib, ready.rss_kib) {
                line.push_str(&format!(
                    " guest_touched_kib={guest} rss_at_ready_kib={rss}"
                ));
            }
            if !ready.exits.from_kvm_stats {
                line.push_str(" vm_exits_source=userspace_only");
            }
            // Read after the VM ended: every byte the guest got, its shutdown included.
            let rng_bytes: u64 = rng_counters.iter().map(|c| c.bytes()).sum();
            line.push_str(&format!(" rng_bytes={rng_bytes}"));
            println!("{line}");
            return Ok(());
        }
    }
    if let Some(panic) = &st.panic {
        bail!("guest kernel panicked: {panic}");
    }
    let last = last_console_line(&st)
        .map(|l| format!(" (last console line: {l:?})"))
        .unwrap_or_else(|| " (no console output)".into());
    match reason {
        VmExitReason::Stopped if timed_out => {
            bail!(
                "the guest agent was not ready after {} s (--timeout){last}",
                args.timeout
            )
        }
        VmExitReason::Stopped => bail!("the VM was stopped before the guest agent was ready{last}"),
        VmExitReason::Reset => bail!("the guest reset before its agent was ready{last}"),
        VmExitReason::TripleFault => {
            bail!("the guest triple-faulted before its agent was ready{last}")
        }
        VmExitReason::Halted => bail!("the guest halted before its agent was ready{last}"),
        VmExitReason::SystemEvent(k) => {
            bail!("the guest ended (system event {k}) before its agent was ready{last}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_shares_are_parsed() {
        let share = parse_fs_share("rootfs=/a:b/dir:ro").unwrap();
        assert_eq!(
            (share.tag.as_str(), share.dir.as_path()),
            ("rootfs", std::path::Path::new("/a:b/dir"))
        );
        assert!(share.read_only && share.sharing == Sharing::Shared);
        let share = parse_fs_share("t=/d:private:ro").unwrap();
        assert!(share.read_only && share.sharing == Sharing::Exclusive);
        assert!(!parse_fs_share("t=/d").unwrap().read_only);
        assert!(parse_fs_share("/just/a/dir").is_err());
    }

    #[test]
    fn ready_line_is_parsed() {
        assert_eq!(
            parse_ready("HUSK-AGENT-READY boottime_us=412345"),
            Some(412345)
        );
        assert_eq!(
            parse_ready("[    0.5] x HUSK-AGENT-READY boottime_us=7\r"),
            Some(7)
        );
        assert_eq!(parse_ready("HUSK-AGENT-READY boottime_us="), None);
        assert_eq!(parse_ready("something else"), None);
    }

    #[test]
    fn panic_line_is_kept_from_its_marker() {
        let l =
            "[    1.2] Kernel panic - not syncing: Requested init /bogus failed (error -2).  \r";
        assert_eq!(
            parse_panic(l).unwrap(),
            "Kernel panic - not syncing: Requested init /bogus failed (error -2)."
        );
        assert_eq!(parse_panic("panic"), None);
    }

    #[test]
    fn watcher_sees_markers_split_across_writes_and_keeps_the_tail() {
        let state = Arc::new(Mutex::new(WatchState::default()));
        let mut w = ConsoleWatcher {
            state: state.clone(),
            stats: Arc::new(OnceLock::new()),
            probe: Arc::new(OnceLock::new()),
            tee: None,
            tee_buf: Vec::new(),
        };
        for chunk in [
            &b"noise\r\nHUSK-AGENT-RE"[..],
            b"ADY boottime_us=12",
            b"34\r\n",
        ] {
            for b in chunk {
                w.write_all(&[*b]).unwrap();
            }
        }
        let st = state.lock().unwrap();
        assert_eq!(st.ready.unwrap().boottime_us, 1234);
        assert!(st.panic.is_none());
        assert_eq!(
            last_console_line(&st).unwrap(),
            "HUSK-AGENT-READY boottime_us=1234"
        );
        drop(st);
        let big = vec![b'x'; 3 * CONSOLE_TAIL_BYTES];
        w.write_all(&big).unwrap();
        assert_eq!(state.lock().unwrap().tail.len(), CONSOLE_TAIL_BYTES);
    }
}
