//! Devices the guest sees, and the buses that route vCPU exits to them.
//!
//! Only what a Linux guest needs to boot and shut down lives here today: the 8250 console
//! and the i8042 reset line on the port I/O bus. The MMIO bus is where virtio-mmio devices
//! go, each in its own folder (device model / host backend / event wiring), with slots and
//! IRQs from [`crate::vmm::resources`].

pub mod bus;
pub mod i8042;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, SharedDevice};
