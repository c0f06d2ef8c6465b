//! virtio-vsock end to end: `husk vm boot --vsock PATH` with the guest probe
//! `probe-vsock` (tests/guest/src/bin/probe-vsock.rs) speaking AF_VSOCK, and this test
//! speaking plain unix sockets on the host, as a user of the Firecracker conventions does.
//!
//! `HUSK_VSOCK_MIB` sets how much the guest sends in the guest-to-host test (default 256).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_tests::{husk, probe_initramfs, Run};

/// Bytes the host reads slowly at first, so that the guest runs out of credit.
const SLOW_BYTES: u64 = 4 << 20;
const SLOW_READ: usize = 16 * 1024;
const SLOW_PAUSE: Duration = Duration::from_millis(5);
/// Everything in the test bed is slow: generous, but bounded.
const VM_DEADLINE: Duration = Duration::from_secs(1200);
const STEP_DEADLINE: Duration = Duration::from_secs(300);

/// The stream's byte pattern, as probe-vsock writes it: each 8-byte word a function of its
/// position.
fn expected(offset: u64, len: usize, scratch: &mut Vec<u8>) -> &[u8] {
    let start = offset & !7;
    let end = (offset + len as u64 + 7) & !7;
    scratch.clear();
    let mut pos = start;
    while pos < end {
        scratch.extend_from_slice(&pos.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
        pos += 8;
    }
    let skip = (offset - start) as usize;
    &scratch[skip..skip + len]
}

fn temp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("husk-vsock-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// Boots probe-vsock with a vsock device at `uds`, in a thread.
fn boot(uds: &Path, console: &Path, params: &str) -> JoinHandle<Run> {
    let initrd = probe_initramfs("probe-vsock");
    let (uds, console, params) = (
        uds.to_str().unwrap().to_string(),
        console.to_str().unwrap().to_string(),
        params.to_string(),
    );
    std::thread::spawn(move || {
        let run = husk(
            &[
                "vm",
                "boot",
                "--initrd",
                initrd.to_str().unwrap(),
                "--console",
                &console,
                "--vsock",
                &uds,
                "--timeout",
                "900",
                "--cmdline",
                &params,
            ],
            VM_DEADLINE,
        );
        let _ = std::fs::remove_file(&initrd);
        run
    })
}

fn console_text(console: &Path) -> String {
    std::fs::read_to_string(console).unwrap_or_default()
}

/// Waits for a console line containing `needle`; fails if the VM ends first.
fn wait_console(console: &Path, needle: &str, vm: &JoinHandle<Run>) {
    let deadline = Instant::now() + STEP_DEADLINE;
    while !console_text(console).contains(needle) {
        assert!(
            !vm.is_finished(),
            "the VM ended before {needle:?}: {}",
            console_text(console)
        );
        assert!(
            Instant::now() < deadline,
            "no {needle:?} on the console: {}",
            console_text(console)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn accept(listener: &UnixListener, vm: &JoinHandle<Run>, console: &Path) -> UnixStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + STEP_DEADLINE;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        assert!(
            !vm.is_finished() && Instant::now() < deadline,
            "the guest never connected: {}",
            console_text(console)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// a) guest to host, with backpressure, and c) a guest connect to a port nobody listens on.
#[test]
fn guest_to_host_stream_survives_a_slow_reader_without_loss() {
    let mib: u64 = std::env::var("HUSK_VSOCK_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let total = mib << 20;
    let uds = temp("g2h.sock");
    let console = temp("g2h.log");
    let listener = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
    let vm = boot(
        &uds,
        &console,
        &format!("vsock_test=send vsock_port=5000 vsock_refused_port=5002 vsock_mib={mib}"),
    );
    let mut s = accept(&listener, &vm, &console);
    s.set_read_timeout(Some(STEP_DEADLINE)).unwrap();

    let mut scratch = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    let slow_started = Instant::now();
    while got < SLOW_BYTES.min(total) {
        let n = s.read(&mut buf[..SLOW_READ]).unwrap();
        assert!(n > 0, "end of file after {got} bytes");
        assert!(
            buf[..n] == *expected(got, n, &mut scratch),
            "wrong bytes at offset {got}"
        );
        got += n as u64;
        std::thread::sleep(SLOW_PAUSE);
    }
    let slow = slow_started.elapsed();
    let fast_started = Instant::now();
    let fast_from = got;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(got + n as u64 <= total, "more than {total} bytes");
        assert!(
            buf[..n] == *expected(got, n, &mut scratch),
            "wrong bytes at offset {got}"
        );
        got += n as u64;
    }
    let fast = fast_started.elapsed();
    assert_eq!(got, total, "bytes received");
    s.write_all(b"OK\n").unwrap();
    drop(s);

    let run = vm.join().unwrap();
    let log = console_text(&console);
    let _ = std::fs::remove_file(&console);
    drop(listener);
    let _ = std::fs::remove_file(format!("{}_5000", uds.display()));
    run.assert_success();
    assert!(
        log.contains(&format!("send done bytes={total} ")) && log.contains("reply=\"OK\""),
        "console: {log}"
    );
    // ECONNRESET (104) is what Linux reports for an RST answering a connect.
    assert!(
        log.contains("refused port=5002 errno=104") || log.contains("refused port=5002 errno=111"),
        "console: {log}"
    );
    // d) nothing left behind.
    assert!(!uds.exists(), "{} left behind", uds.display());
    let fast_mib = (got - fast_from) as f64 / (1 << 20) as f64;
    eprintln!(
        "vsock guest->host: {mib} MiB verified; slow phase {} MiB in {:.1} s; full speed {:.0} MiB in {:.2} s = {:.1} MiB/s; husk: {}",
        fast_from >> 20,
        slow.as_secs_f64(),
        fast_mib,
        fast.as_secs_f64(),
        fast_mib / fast.as_secs_f64(),
        run.stdout.trim()
    );
}

/// b) host to guest with an echo and a half-close, and c) a host CONNECT to a guest port
/// nobody listens on.
#[test]
fn host_to_guest_echo_with_half_close() {
    const ECHO_BYTES: u64 = 4 << 20;
    let uds = temp("h2g.sock");
    let console = temp("h2g.log");
    let vm = boot(&uds, &console, "vsock_test=echo vsock_port=5001");
    wait_console(&console, "HUSK-PROBE listening 5001", &vm);

    // Nobody listens on 5999: the guest resets, the device closes our socket, no `OK`.
    let mut refused = UnixStream::connect(&uds).unwrap();
    refused.write_all(b"CONNECT 5999\n").unwrap();
    refused.set_read_timeout(Some(STEP_DEADLINE)).unwrap();
    let mut nothing = Vec::new();
    assert_eq!(refused.read_to_end(&mut nothing).unwrap(), 0, "{nothing:?}");

    let mut s = UnixStream::connect(&uds).unwrap();
    s.write_all(b"CONNECT 5001\n").unwrap();
    s.set_read_timeout(Some(STEP_DEADLINE)).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("OK ") && ok.ends_with('\n'), "{ok:?}");
    let _host_port: u32 = ok[3..].trim().parse().unwrap();

    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut scratch = Vec::new();
        let mut sent = 0u64;
        while sent < ECHO_BYTES {
            let n = (64 * 1024).min(ECHO_BYTES - sent) as usize;
            let chunk = expected(sent, n, &mut scratch).to_vec();
            writer.write_all(&chunk).unwrap();
            sent += n as u64;
        }
        // Half-close: the guest sees end of file and still answers.
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut echoed = Vec::new();
    reader.read_to_end(&mut echoed).unwrap();
    sender.join().unwrap();
    let final_line = format!("FINAL {ECHO_BYTES}\n");
    assert_eq!(echoed.len() as u64, ECHO_BYTES + final_line.len() as u64);
    let mut scratch = Vec::new();
    assert!(
        echoed[..ECHO_BYTES as usize] == *expected(0, ECHO_BYTES as usize, &mut scratch),
        "the echo differs"
    );
    assert_eq!(&echoed[ECHO_BYTES as usize..], final_line.as_bytes());

    let run = vm.join().unwrap();
    let log = console_text(&console);
    let _ = std::fs::remove_file(&console);
    run.assert_success();
    assert!(
        log.contains(&format!("echo done bytes={ECHO_BYTES}")),
        "console: {log}"
    );
    assert!(!uds.exists(), "{} left behind", uds.display());
}
