//! Prints the guest clock when /init started, the kernel's log (each /dev/kmsg record with
//! its timestamp; initcalls under 1 ms left out), the clocksource, clockevent device,
//! interrupts and /proc/cpuinfo: for comparing where two VMMs' guests spend their boot.
//! Boot with `--cmdline initcall_debug` to see each initcall (`quiet` keeps the console
//! silent, so the log costs no UART exits until this probe prints it), or `dmesg=0` to
//! skip the log. See docs/benchmarks.md ("Is husk's guest slower than qemu's?").

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

/// An `initcall ... returned N after U usecs` line with U under 1000.
fn quick_initcall(msg: &str) -> bool {
    msg.starts_with("initcall ")
        && msg
            .rsplit(" after ")
            .next()
            .and_then(|t| t.trim_end_matches(" usecs").parse::<u64>().ok())
            .is_some_and(|us| us < 1000)
}

fn main() {
    let started = husk_guest_tests::boottime_us();
    husk_guest_tests::mount_basics();
    husk_guest_tests::report(&format!("init_started_us={started}"));
    // `dmesg=0` on the command line: only the files below.
    let kmsg = if husk_guest_tests::param("dmesg").as_deref() == Some("0") {
        Err(std::io::Error::other("skipped (dmesg=0)"))
    } else {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
    };
    match kmsg {
        Ok(mut kmsg) => {
            let mut buf = vec![0u8; 8192];
            // One record per read; EAGAIN at the end of the log.
            while let Ok(n) = kmsg.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let rec = String::from_utf8_lossy(&buf[..n]);
                let (head, msg) = rec.split_once(';').unwrap_or(("", &rec));
                let ts = head.split(',').nth(2).unwrap_or("?");
                let msg = msg.lines().next().unwrap_or("");
                // Only what takes time: initcalls of 1 ms or more, and every other
                // message (the boot's milestones); not the "calling" lines.
                if msg.starts_with("calling ") || quick_initcall(msg) {
                    continue;
                }
                husk_guest_tests::report(&format!("kmsg {ts} {msg}"));
            }
        }
        Err(e) => husk_guest_tests::report(&format!("cannot open /dev/kmsg: {e}")),
    }
    for f in [
        "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        "/sys/devices/system/clocksource/clocksource0/available_clocksource",
        "/sys/devices/system/clockevents/clockevent0/current_device",
        "/proc/interrupts",
        "/proc/cpuinfo",
    ] {
        match std::fs::read_to_string(f) {
            Ok(s) => {
                for l in s.lines() {
                    husk_guest_tests::report(&format!("{f}: {l}"));
                }
            }
            Err(e) => husk_guest_tests::report(&format!("{f}: {e}")),
        }
    }
    husk_guest_tests::power_off();
}
