//! What a caller asks for (`VmConfig`), and checking it before anything touches KVM.

use std::path::PathBuf;

use super::devices::serial::ConsoleSink;
use super::memory::HugePages;

/// husk's kernel command line; callers append to it (see [`VmConfig::cmdline`]).
///
/// - `console=ttyS0`: the 8250 at 0x3f8 is the console; `quiet` keeps it nearly silent.
///   This matters most: every byte on the UART is a VM exit (two with the console
///   driver's status poll) plus an interrupt; at loglevel 7 husk's kernel prints ~10 KB.
/// - `reboot=k`: reboot and power-off go through the i8042 reset line, which ends the VM
///   at once (husk's agent powers off with reboot(2)); `panic=-1`: a panic reboots
///   immediately, so the VM ends with the panic message already on the console.
/// - `tsc=reliable`: the TSC (constant and synchronized under KVM) needs no clocksource
///   watchdog; `no_timer_check`: skip the IOAPIC timer-IRQ check that waits for ticks;
///   `rcupdate.rcu_expedited=1`: synchronize_rcu() during boot (and netns/mount setup
///   later) does not wait for normal grace periods; `cryptomgr.notests`: no crypto
///   self-tests. In the test bed these four made no difference measurable through its
///   noise with husk's kernel (which has kvmclock and the TSC-deadline timer, so it
///   neither calibrates the TSC nor the LAPIC timer); they stay because each removes a
///   wait a busier guest or another kernel config would pay.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet tsc=reliable \
     no_timer_check rcupdate.rcu_expedited=1 cryptomgr.notests";

/// Fewest MiB of guest memory: below this a kernel plus initramfs does not boot reliably.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Most MiB of guest memory, whatever the host has (256 GiB: fits any x86 CPU's guest
/// physical address width with room for the MMIO gap).
pub const MAX_MEMORY_MIB: u64 = 256 * 1024;
/// Most vCPUs: APIC ids are 8 bits, 255 is broadcast, and the IOAPIC takes the id after
/// the last CPU.
pub const MAX_VCPUS: u32 = 254;

/// Where the guest's serial console output goes.
#[derive(Default)]
pub enum ConsoleOutput {
    /// Dropped.
    #[default]
    Discard,
    /// Written byte by byte to this sink (a file, a pipe, a line watcher...), from the
    /// vCPU thread that wrote the UART: keep it fast.
    Sink(ConsoleSink),
}

impl std::fmt::Debug for ConsoleOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Discard => "Discard",
            Self::Sink(_) => "Sink(..)",
        })
    }
}

/// A microVM to build.
#[derive(Debug)]
pub struct VmConfig {
    /// Number of vCPUs, 1..=min(KVM's limit, 254).
    pub vcpus: u32,
    /// Guest RAM in MiB, [`MIN_MEMORY_MIB`]..=min(host MemTotal, [`MAX_MEMORY_MIB`]).
    pub memory_mib: u64,
    /// An uncompressed ELF vmlinux with a PVH entry note (CONFIG_PVH=y).
    pub kernel: PathBuf,
    /// An initramfs (uncompressed newc cpio, or whatever the kernel can unpack).
    pub initrd: Option<PathBuf>,
    /// The whole kernel command line, usually [`DEFAULT_CMDLINE`] plus the caller's
    /// additions; devices append their own parameters.
    pub cmdline: String,
    /// The serial console's destination.
    pub console: ConsoleOutput,
    /// Whether guest RAM is backed by 2 MiB pages (see [`crate::vmm::memory`]).
    pub huge_pages: HugePages,
}

impl VmConfig {
    /// A config with husk's defaults: 1 vCPU, 128 MiB, [`DEFAULT_CMDLINE`], no console.
    pub fn new(kernel: impl Into<PathBuf>, initrd: Option<PathBuf>) -> Self {
        Self {
            vcpus: 1,
            memory_mib: 128,
            kernel: kernel.into(),
            initrd,
            cmdline: DEFAULT_CMDLINE.to_string(),
            console: ConsoleOutput::Discard,
            huge_pages: HugePages::default(),
        }
    }
}

/// A config value out of range. Each message is one sentence naming the value and the
/// allowed range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{got} vCPUs is out of range: a VM has 1 to {max} vCPUs")]
    Vcpus { got: u32, max: u32 },
    #[error("memory of {got} MiB is out of range: allowed is {MIN_MEMORY_MIB} to {max} MiB{why}")]
    Memory { got: u64, max: u64, why: String },
}

/// Checks the vCPU count against `max_vcpus` (KVM's limit, capped at [`MAX_VCPUS`]).
pub fn check_vcpus(vcpus: u32, max_vcpus: u32) -> Result<(), ConfigError> {
    let max = max_vcpus.clamp(1, MAX_VCPUS);
    if (1..=max).contains(&vcpus) {
        Ok(())
    } else {
        Err(ConfigError::Vcpus { got: vcpus, max })
    }
}

/// Checks guest memory against the host's MemTotal (if known) and [`MAX_MEMORY_MIB`].
pub fn check_memory(memory_mib: u64, host_total_mib: Option<u64>) -> Result<(), ConfigError> {
    let (max, why) = match host_total_mib {
        Some(t) if t < MAX_MEMORY_MIB => {
            (t.max(MIN_MEMORY_MIB), " (this host's memory)".to_string())
        }
        _ => (MAX_MEMORY_MIB, String::new()),
    };
    if (MIN_MEMORY_MIB..=max).contains(&memory_mib) {
        Ok(())
    } else {
        Err(ConfigError::Memory {
            got: memory_mib,
            max,
            why,
        })
    }
}

/// The checks that need no KVM: vCPUs within 1..=254 and memory within this host's.
pub fn check_args(vcpus: u32, memory_mib: u64) -> Result<(), ConfigError> {
    check_vcpus(vcpus, MAX_VCPUS)?;
    check_memory(
        memory_mib,
        super::host::mem_total_mib(std::path::Path::new("/")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_bounds() {
        assert!(check_vcpus(1, 1024).is_ok());
        assert!(check_vcpus(254, 1024).is_ok());
        assert!(check_vcpus(2, 1).is_err());
        for bad in [0, 255, 300] {
            let e = check_vcpus(bad, 1024).unwrap_err().to_string();
            assert!(e.contains(&bad.to_string()) && e.contains("vCPUs"), "{e}");
            assert!(e.contains("1 to 254"), "{e}");
        }
    }

    #[test]
    fn memory_bounds() {
        assert!(check_memory(32, Some(24000)).is_ok());
        assert!(check_memory(24000, Some(24000)).is_ok());
        assert!(check_memory(24001, Some(24000)).is_err());
        assert!(check_memory(MAX_MEMORY_MIB, None).is_ok());
        assert!(check_memory(MAX_MEMORY_MIB + 1, Some(u64::MAX)).is_err());
        for bad in [0, 31, 100_000_000] {
            let e = check_memory(bad, Some(24000)).unwrap_err().to_string();
            assert!(e.contains(&bad.to_string()) && e.contains("memory"), "{e}");
            assert!(e.contains("32 to 24000 MiB"), "{e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn default_cmdline_keeps_quiet_and_the_reset_path() {
        for p in ["console=ttyS0", "reboot=k", "panic=-1", "quiet"] {
            assert!(DEFAULT_CMDLINE.split(' ').any(|x| x == p), "{p}");
        }
        assert!(DEFAULT_CMDLINE.len() < 512);
    }
}
