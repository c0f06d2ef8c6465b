//! The guest-probe harness itself: a static probe as /init reports on the console and
//! powers off (what device tests build on).

use std::time::Duration;

use husk_tests::boot_probe;

#[test]
fn a_probe_reports_on_the_console() {
    let (run, log) = boot_probe("probe-hello", &[], Duration::from_secs(120));
    run.assert_success();
    assert!(log.contains("HUSK-PROBE hello"), "console: {log}");
}
