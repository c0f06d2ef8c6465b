//! The guest-probe harness itself: a static probe as /init reports on the console and
//! powers off (what device tests build on).

use std::time::Duration;

use husk_tests::{husk, probe_initramfs};

#[test]
fn a_probe_reports_on_the_console() {
    let initrd = probe_initramfs("probe-hello");
    let console = std::env::temp_dir().join(format!("husk-probe-hello-{}.log", std::process::id()));
    let run = husk(
        &[
            "vm",
            "boot",
            "--initrd",
            initrd.to_str().unwrap(),
            "--console",
            console.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    let _ = std::fs::remove_file(&console);
    let _ = std::fs::remove_file(&initrd);
    run.assert_success();
    assert!(log.contains("HUSK-PROBE hello"), "console: {log}");
}
