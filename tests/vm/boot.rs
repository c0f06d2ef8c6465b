//! `husk vm boot`: real microVMs from husk's own kernel and initramfs, to the agent's
//! ready line, and every way a boot can go wrong. Each error case must fail fast with one
//! sentence naming the problem, and leave no process behind (checked by `husk()`).

use std::time::Duration;

use husk_tests::{breakdown, husk, repo_root};

/// Generous: inside the emulated test bed a boot takes seconds, natively milliseconds.
const BOOT_DEADLINE: Duration = Duration::from_secs(120);
/// Argument errors are found before any VM exists.
const ERROR_DEADLINE: Duration = Duration::from_secs(10);

/// Boots, checks the breakdown line, returns the VMM's peak RSS in KiB.
fn boot_ok(vcpus: &str, memory: &str) -> u64 {
    let run = husk(
        &["vm", "boot", "--vcpus", vcpus, "--memory", memory],
        BOOT_DEADLINE,
    );
    run.assert_success();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "want one breakdown line: {run:#?}");
    let b = breakdown(lines[0]);
    for key in ["vmm_setup_ms", "guest_ready_ms", "total_ms", "vm_exits"] {
        let v = b
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {:?}", lines[0]));
        assert!(*v > 0.0, "{key} must be positive: {}", lines[0]);
    }
    // The parts fit inside the whole, and the agent really reported its own clock.
    assert!(b["vmm_setup_ms"] < b["total_ms"], "{}", lines[0]);
    assert!(b["guest_ready_ms"] < b["total_ms"], "{}", lines[0]);
    println!(
        "{vcpus} vCPU / {memory} MiB: {} peak_rss_kib={}",
        lines[0], run.max_rss_kib
    );
    run.max_rss_kib
}

/// The VMM's whole footprint to agent-ready, guest memory it touched included.
const MAX_RSS_KIB_1_VCPU_128_MIB: u64 = 40 * 1024;

#[test]
fn boots_1_vcpu_128_mib() {
    let rss = boot_ok("1", "128");
    assert!(
        rss < MAX_RSS_KIB_1_VCPU_128_MIB,
        "peak RSS {rss} KiB, limit {MAX_RSS_KIB_1_VCPU_128_MIB} KiB"
    );
}

#[test]
fn boots_2_vcpus_128_mib() {
    boot_ok("2", "128");
}

#[test]
fn boots_1_vcpu_1024_mib() {
    boot_ok("1", "1024");
}

#[test]
fn boots_2_vcpus_1024_mib() {
    boot_ok("2", "1024");
}

#[test]
fn missing_kernel_is_named() {
    let run = husk(
        &["vm", "boot", "--kernel", "/nonexistent/vmlinux"],
        ERROR_DEADLINE,
    );
    run.assert_one_line_error("/nonexistent/vmlinux");
}

#[test]
fn a_file_that_is_not_a_kernel_is_refused() {
    // Not an ELF at all: the initramfs.
    let cpio = repo_root().join("target/release/initramfs.cpio");
    let cpio = cpio.to_str().unwrap();
    let run = husk(&["vm", "boot", "--kernel", cpio], ERROR_DEADLINE);
    let line = run.assert_one_line_error(cpio);
    assert!(line.contains("kernel"), "{line}");
    // An ELF, but not a kernel with a PVH entry: husk itself.
    let husk_elf = repo_root().join("target/release/husk");
    let husk_elf = husk_elf.to_str().unwrap();
    let run = husk(&["vm", "boot", "--kernel", husk_elf], ERROR_DEADLINE);
    let line = run.assert_one_line_error(husk_elf);
    assert!(line.contains("kernel"), "{line}");
}

#[test]
fn a_guest_panic_is_reported_with_its_reason() {
    let run = husk(
        &["vm", "boot", "--cmdline", "rdinit=/bogus-init"],
        BOOT_DEADLINE,
    );
    let line = run.assert_one_line_error("panic");
    assert!(
        line.contains("not syncing"),
        "the panic's own words: {line}"
    );
}

#[test]
fn zero_and_absurd_memory_are_refused() {
    for mib in ["0", "100000000"] {
        let run = husk(&["vm", "boot", "--memory", mib], ERROR_DEADLINE);
        let line = run.assert_one_line_error("memory");
        assert!(line.contains(mib), "the bad value is named: {line}");
    }
}

#[test]
fn zero_and_300_vcpus_are_refused() {
    for n in ["0", "300"] {
        let run = husk(&["vm", "boot", "--vcpus", n], ERROR_DEADLINE);
        let line = run.assert_one_line_error("vcpu");
        assert!(line.contains(n), "the bad value is named: {line}");
    }
}
