//! Runs on the host itself, never in the test bed: what husk says about this host's KVM.
//! On a PVM host (this project's development machines) husk must refuse at once, in one
//! sentence, instead of failing seconds into a boot; on a host with hardware
//! virtualization the same command boots.

use std::time::Duration;

use husk_tests::{host_kvm_is_pvm, husk};

#[test]
fn husk_knows_whether_this_host_can_boot_a_guest() {
    let run = husk(&["vm", "boot"], Duration::from_secs(120));
    if host_kvm_is_pvm() {
        let line = run.assert_one_line_error("PVM");
        assert!(
            line.contains("cannot run a stock guest kernel"),
            "names the consequence: {line}"
        );
        assert!(
            run.elapsed < Duration::from_secs(2),
            "refused at once, not after {:?}",
            run.elapsed
        );
    } else {
        run.assert_success();
    }
}
