//! husk: an OCI container runtime that runs every container in its own KVM microVM.
//!
//! The VMM is a library first: [`vmm`] boots a microVM from a kernel and an initramfs;
//! the `husk` binary is a thin CLI over it.

pub mod assets;
pub mod cli;
pub mod initramfs;
pub mod monitor;
pub mod oci;
pub mod sandbox;
pub mod vmm;
