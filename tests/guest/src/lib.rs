//! What every guest probe does: report lines on the console (the test reads them from
//! `husk vm boot --console`), read its parameters, and power the VM off when done.
//!
//! Parameters: the kernel hands `key=value` words of its command line that it does not know
//! to /init as environment variables, so a test passes them with `husk vm boot --cmdline`.

use std::io::Write;

/// Prints `HUSK-PROBE <line>` on the console: tests look for that prefix.
pub fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "HUSK-PROBE {line}");
    let _ = out.flush();
}

/// A parameter from the kernel command line (`key=value`), if given.
pub fn param(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// Creates `target` and mounts `src` of type `fstype` on it, read-write, no options.
pub fn mount(src: &str, target: &str, fstype: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(target)?;
    let c = |s: &str| {
        std::ffi::CString::new(s)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (src_c, target_c, fstype_c) = (c(src)?, c(target)?, c(fstype)?);
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src_c.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts /proc, /sys and devtmpfs on /dev, as probes usually need them. Errors are
/// reported, not fatal (a probe may not need all three).
pub fn mount_basics() {
    for (src, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
    ] {
        if let Err(e) = mount(src, target, fstype) {
            report(&format!("mount {target} failed: {e}"));
        }
    }
}

/// The guest's CLOCK_BOOTTIME in microseconds (what the agent's ready line carries).
pub fn boottime_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Ends the VM (the guest runs with `reboot=k`: a restart is husk's power-off). Never
/// returns. Prints the agent's ready line first: a probe stands in for the agent, and
/// `husk vm boot` counts a run as a boot only once it has seen that line.
pub fn power_off() -> ! {
    report("END");
    println!("HUSK-AGENT-READY boottime_us={}", boottime_us());
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        loop {
            libc::reboot(libc::RB_AUTOBOOT);
            libc::sleep(1);
        }
    }
}
