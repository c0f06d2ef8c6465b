//! The smallest probe: proves the harness (static build, initramfs, console, power-off).

fn main() {
    husk_guest_tests::report("hello");
    husk_guest_tests::power_off();
}
