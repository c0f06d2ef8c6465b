//! Prints the guest's CLOCK_BOOTTIME every 250 ms of guest time, ten times: a host that
//! timestamps the lines as they arrive sees whether the guest clock runs at its own rate.

fn main() {
    for _ in 0..10 {
        husk_guest_tests::report(&format!(
            "clock boottime_us={}",
            husk_guest_tests::boottime_us()
        ));
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    husk_guest_tests::power_off();
}
