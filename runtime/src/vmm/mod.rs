//! husk's virtual machine monitor: a library that boots a Linux microVM on KVM.
//!
//! Why it exists: husk runs every container in its own microVM, and a VMM linked into the
//! runtime (the libkrun posture) starts faster and is simpler to ship than a separate VMM
//! process driven over an API. The shape follows Firecracker: the guest kernel is an ELF
//! vmlinux entered at its PVH entry point (no firmware, no decompression, no ACPI, no
//! PCI); devices are the 8250 console, the i8042 reset line, and virtio-mmio devices
//! declared on the kernel command line.
//!
//! ```no_run
//! use husk::vmm::{Vm, VmConfig};
//! let config = VmConfig::new("/usr/share/husk/vmlinux", Some("/usr/share/husk/initramfs.cpio".into()));
//! let vm = Vm::new(config)?;
//! let stats = vm.stats(); // read exit counts from any thread, any time
//! let reason = vm.run()?; // blocks until the guest is gone
//! println!("{reason:?}, {:?}", stats.snapshot());
//! # Ok::<(), husk::vmm::Error>(())
//! ```

pub mod arch;
pub mod config;
pub mod devices;
pub mod host;
pub mod loader;
pub mod memory;
pub mod resources;
pub mod stats;
pub mod vcpu;
pub mod vm;

pub use config::{ConsoleOutput, VmConfig, DEFAULT_CMDLINE};
pub use stats::{ExitCounts, VmStats};
pub use vcpu::VmExitReason;
pub use vm::{StopHandle, Vm};

/// Everything that can go wrong building or running a VM; each message is one sentence.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    #[error("this host's KVM is PVM, which cannot run a stock guest kernel: use a host with hardware virtualization (VMX/SVM) or run husk inside tests/testbed/run")]
    PvmHost,
    #[error("the kernel loader thread panicked")]
    LoaderPanicked,
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    #[error("this host's KVM lacks {0}, which husk needs")]
    MissingCap(&'static str),
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("the kernel command line is invalid: {0}")]
    Cmdline(String),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Mptable(#[from] arch::x86_64::mptable::MptableError),
    #[error(transparent)]
    Pvh(#[from] arch::x86_64::pvh::PvhError),
    #[error("cannot configure vCPU {cpu}: {source}")]
    Arch {
        cpu: u8,
        source: arch::x86_64::ArchError,
    },
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error(transparent)]
    Bus(#[from] devices::BusError),
    #[error(transparent)]
    Resource(#[from] resources::ResourceError),
    #[error(transparent)]
    VirtioTransport(#[from] devices::virtio::mmio::TransportError),
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
}
