//! Architecture-specific boot details. husk runs on x86_64 only: the guest is entered by
//! the PVH protocol, with no firmware, so everything firmware would set up (memory map,
//! MP table, CPU state) is built here.

pub mod x86_64;
