//! virtio-rng from inside the guest: the hwrng core must have picked virtio_rng, and
//! /dev/hwrng must deliver bytes that look random. Reports
//! `rng current=<name> bytes=<n> distinct=<byte values seen> ms=<read time>` for 64 KiB
//! from the current rng; with `rng_each=<bytes>` on the command line, instead one
//! `rng dev=<name> ...` line per virtio_rng device (switching rng_current to each). Then
//! one `rng irq ...` line per virtio device from /proc/interrupts (its IOAPIC pin and
//! trigger mode). With `rng_rebind=1`, first unbinds and rebinds the driver of every
//! virtio_rng device (a driver reset, then a full re-initialisation) and reports
//! `rng rebind dev=<virtioN> ok` or what failed.

use std::io::Read;
use std::time::Instant;

use husk_guest_tests::{mount_basics, param, power_off, report};

const HW_RANDOM: &str = "/sys/class/misc/hw_random";

/// Reads `want` bytes from /dev/hwrng: `bytes=<got> distinct=<values> ms=<time>`.
fn read_hwrng(want: usize) -> String {
    let started = Instant::now();
    let mut got = 0usize;
    let mut seen = [false; 256];
    match std::fs::File::open("/dev/hwrng") {
        Ok(mut f) => {
            let mut buf = vec![0u8; 64 << 10];
            while got < want {
                let n = (want - got).min(buf.len());
                match f.read(&mut buf[..n]) {
                    Ok(0) => break,
                    Ok(n) => {
                        for b in &buf[..n] {
                            seen[*b as usize] = true;
                        }
                        got += n;
                    }
                    Err(e) => {
                        report(&format!("rng read error: {e}"));
                        break;
                    }
                }
            }
        }
        Err(e) => report(&format!("rng open /dev/hwrng failed: {e}")),
    }
    let distinct = seen.iter().filter(|s| **s).count();
    format!(
        "bytes={got} distinct={distinct} ms={}",
        started.elapsed().as_millis()
    )
}

fn read_sys(name: &str) -> String {
    std::fs::read_to_string(format!("{HW_RANDOM}/{name}"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unreadable:{}", e.kind()))
}

const DRIVER: &str = "/sys/bus/virtio/drivers/virtio_rng";

/// Unbinds and rebinds the virtio_rng driver from each of its devices: the transport sees a
/// reset (status 0) and then a whole new initialisation.
fn rebind_all() {
    let devices: Vec<String> = std::fs::read_dir(DRIVER)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("virtio"))
                .collect()
        })
        .unwrap_or_default();
    if devices.is_empty() {
        report("rng rebind: no device bound to virtio_rng");
    }
    for dev in devices {
        let step = |what: &str| std::fs::write(format!("{DRIVER}/{what}"), &dev);
        match step("unbind").and_then(|()| step("bind")) {
            Ok(()) => report(&format!("rng rebind dev={dev} ok")),
            Err(e) => report(&format!("rng rebind dev={dev} failed: {e}")),
        }
    }
}

fn main() {
    mount_basics();
    if param("rng_rebind").is_some() {
        rebind_all();
    }
    match param("rng_each").and_then(|v| v.parse::<usize>().ok()) {
        Some(each) => {
            let available = read_sys("rng_available");
            // "none" is listed too: not a device.
            for dev in available.split_whitespace().filter(|d| *d != "none") {
                if let Err(e) = std::fs::write(format!("{HW_RANDOM}/rng_current"), dev) {
                    report(&format!("rng dev={dev} cannot select: {e}"));
                    continue;
                }
                report(&format!("rng dev={dev} {}", read_hwrng(each)));
            }
        }
        None => {
            let current = read_sys("rng_current");
            report(&format!("rng current={current} {}", read_hwrng(1 << 16)));
        }
    }
    let interrupts = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    for line in interrupts.lines().filter(|l| l.contains("virtio")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        report(&format!("rng irq {}", words.join(" ")));
    }
    power_off();
}
