//! virtio devices in real VMs: the virtio-mmio transport with virtio-rng, seen from the VMM
//! (bytes served) and from inside the guest (the driver bound, /dev/hwrng delivers).

use std::time::Duration;

use husk_tests::{boot_probe, breakdown, husk};

/// Generous: inside the emulated test bed a boot takes seconds, and 64 KiB through
/// /dev/hwrng (64-byte requests, one interrupt each) a few more.
const BOOT_DEADLINE: Duration = Duration::from_secs(120);
const RNG_DEADLINE: Duration = Duration::from_secs(300);
/// What the probe reads: 1024 requests, the 64-entry queue wrapped 16 times. (1 MiB took
/// 22 s of CI's time in the test bed and showed nothing more.)
const RNG_PROBE_BYTES: f64 = (1 << 16) as f64;

fn breakdown_of(stdout: &str) -> std::collections::BTreeMap<String, f64> {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "want one breakdown line: {stdout:?}");
    breakdown(lines[0])
}

#[test]
fn every_boot_feeds_the_guest_entropy() {
    let run = husk(&["vm", "boot"], BOOT_DEADLINE);
    run.assert_success();
    let b = breakdown_of(&run.stdout);
    let served = b.get("rng_bytes").copied().unwrap_or(0.0);
    assert!(served > 0.0, "the guest took no entropy: {}", run.stdout);
    // The field is appended: the ones before it keep their order.
    let keys: Vec<&str> = run
        .stdout
        .split_whitespace()
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
        .collect();
    assert_eq!(
        &keys[..5],
        [
            "vmm_setup_ms",
            "guest_ready_ms",
            "total_ms",
            "vm_exits",
            "userspace_exits"
        ]
    );
    assert_eq!(keys.last(), Some(&"rng_bytes"));
    // Linux's driver never trips the transport's bad-access log.
    assert!(!run.stderr.contains("virtio"), "{}", run.stderr);
    println!("{}", run.stdout.trim());
}

#[test]
fn the_guest_reads_64_kib_from_virtio_rng() {
    let (run, log) = boot_probe("probe-rng", &["--timeout", "280"], RNG_DEADLINE);
    run.assert_success();
    let report = log
        .lines()
        .find_map(|l| l.split_once("HUSK-PROBE rng current=").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no rng report on the console: {log}"));
    let fields = breakdown(&format!("current={report}"));
    assert!(
        report.starts_with("virtio_rng"),
        "hwrng core picked {report:?}, not virtio_rng"
    );
    assert_eq!(fields.get("bytes"), Some(&RNG_PROBE_BYTES), "{report}");
    // 64 KiB of random bytes has every byte value (one is missing with odds ~e^-250).
    assert_eq!(fields.get("distinct"), Some(&256.0), "{report}");
    // The device's interrupt is an edge-triggered IOAPIC pin (5 is the first device IRQ).
    assert!(
        log.lines()
            .any(|l| l.contains("HUSK-PROBE rng irq 5:") && l.contains("IO-APIC 5-edge")),
        "no edge-triggered IOAPIC 5 line for virtio0: {log}"
    );
    let b = breakdown_of(&run.stdout);
    assert!(
        b["rng_bytes"] >= RNG_PROBE_BYTES,
        "the VMM served {} bytes, the guest read {RNG_PROBE_BYTES}",
        b["rng_bytes"]
    );
    println!("{report} | {}", run.stdout.trim());
}

/// Every IRQ a device can get (IOAPIC pins 5..=23, edge-triggered irqfds) reaches the
/// guest: one rng per pin, each read through /dev/hwrng in turn.
#[test]
fn every_device_irq_line_works() {
    const DEVICES: u32 = 19;
    const EACH: f64 = 4096.0;
    let devices = DEVICES.to_string();
    let (run, log) = boot_probe(
        "probe-rng",
        &[
            "--rng-devices",
            &devices,
            "--cmdline",
            "rng_each=4096",
            "--timeout",
            "280",
        ],
        RNG_DEADLINE,
    );
    run.assert_success();
    let reports: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("HUSK-PROBE rng dev=").map(|(_, r)| r))
        .collect();
    assert_eq!(reports.len(), DEVICES as usize, "console: {log}");
    for r in &reports {
        let f = breakdown(r);
        assert_eq!(f.get("bytes"), Some(&EACH), "{r}");
        assert!(f["distinct"] > 200.0, "not random: {r}");
    }
    for pin in 5..5 + DEVICES {
        let edge = format!("IO-APIC {pin}-edge virtio{}", pin - 5);
        let line = log
            .lines()
            .find(|l| l.contains(&format!("HUSK-PROBE rng irq {pin}:")))
            .unwrap_or_else(|| panic!("no interrupt line for pin {pin}: {log}"));
        assert!(line.contains(&edge), "want {edge:?}: {line}");
        let count: u64 = line
            .split_whitespace()
            .nth(4)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        assert!(count > 0, "no interrupt on pin {pin}: {line}");
    }
    let b = breakdown_of(&run.stdout);
    assert!(
        b["rng_bytes"] >= EACH * f64::from(DEVICES),
        "{}",
        run.stdout
    );
    println!("{} devices ok | {}", reports.len(), run.stdout.trim());
}

/// A driver reset in a real guest: unbinding virtio_rng resets the device (status 0, the
/// worker stopped and joined), binding it again initialises it from scratch; both devices
/// then serve again, and the transport logged nothing (Linux's order is the spec's).
#[test]
fn unbind_and_rebind_reset_and_restart_the_device() {
    let (run, log) = boot_probe(
        "probe-rng",
        &[
            "--rng-devices",
            "2",
            "--cmdline",
            "rng_rebind=1 rng_each=4096",
            "--timeout",
            "280",
        ],
        RNG_DEADLINE,
    );
    run.assert_success();
    let rebinds = log
        .lines()
        .filter(|l| l.contains("HUSK-PROBE rng rebind dev=virtio") && l.ends_with(" ok"))
        .count();
    assert_eq!(rebinds, 2, "console: {log}");
    let served: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("HUSK-PROBE rng dev=").map(|(_, r)| r))
        .collect();
    assert_eq!(served.len(), 2, "console: {log}");
    for r in served {
        assert_eq!(breakdown(r).get("bytes"), Some(&4096.0), "{r}");
    }
    assert!(!run.stderr.contains("virtio"), "{}", run.stderr);
}
