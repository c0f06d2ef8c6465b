//! virtio-rng from inside the guest: the hwrng core must have picked virtio_rng, and
//! /dev/hwrng must deliver 1 MiB of bytes that look random. Reports
//! `rng current=<name> bytes=<n> distinct=<byte values seen> ms=<read time>` and the
//! device's /proc/interrupts line (its IOAPIC pin and trigger mode).

use std::io::Read;
use std::time::Instant;

use husk_guest_tests::{mount_basics, power_off, report};

const WANT: usize = 1 << 20;

fn main() {
    mount_basics();
    let current = std::fs::read_to_string("/sys/class/misc/hw_random/rng_current")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unreadable:{}", e.kind()));
    let started = Instant::now();
    let mut got = 0usize;
    let mut seen = [false; 256];
    match std::fs::File::open("/dev/hwrng") {
        Ok(mut f) => {
            let mut buf = vec![0u8; 64 << 10];
            while got < WANT {
                let want = (WANT - got).min(buf.len());
                match f.read(&mut buf[..want]) {
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
    report(&format!(
        "rng current={current} bytes={got} distinct={distinct} ms={}",
        started.elapsed().as_millis()
    ));
    let interrupts = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    for line in interrupts.lines().filter(|l| l.contains("virtio")) {
        report(&format!(
            "rng irq {}",
            line.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    power_off();
}
