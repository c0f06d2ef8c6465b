//! VM exit counts, readable at any moment from any thread.
//!
//! Two counts per vCPU: exits that came back to husk (KVM_RUN returned: port I/O, MMIO,
//! shutdown...), counted by the vCPU loop; and every exit the CPU took, including the ones
//! KVM handled in the kernel (interrupt windows, MSRs, EPT/NPT faults, HLT...), read from
//! KVM's per-vCPU binary statistics (`KVM_GET_STATS_FD`, Linux 5.14+; kvm-ioctls does not
//! wrap it). Where the stats fd is missing only the userspace count is known, and the
//! snapshot says so.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// `KVM_GET_STATS_FD` = `_IO(KVMIO, 0xce)` (include/uapi/linux/kvm.h).
const KVM_GET_STATS_FD: libc::c_ulong = 0xae_ce;
/// `struct kvm_stats_header` is six u32s.
const STATS_HEADER_SIZE: usize = 24;
/// `struct kvm_stats_desc` before its name: flags u32, exponent s16, size u16, offset u32,
/// bucket_size u32.
const STATS_DESC_FIXED_SIZE: usize = 16;
/// The x86 per-vCPU counter of all VM exits (`struct kvm_vcpu_stat`'s `exits`).
const EXITS_STAT: &str = "exits";

/// Errors reading KVM's binary stats.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("KVM_GET_STATS_FD failed: {0}")]
    Ioctl(std::io::Error),
    #[error("cannot read the KVM stats fd: {0}")]
    Read(std::io::Error),
    #[error("malformed KVM stats: {0}")]
    Malformed(&'static str),
    #[error("KVM's vCPU stats have no {EXITS_STAT:?} counter")]
    NoExits,
}

/// Where one u64 counter sits in a stats fd.
#[derive(Debug)]
struct KernelCounter {
    file: File,
    offset: u64,
}

impl KernelCounter {
    fn read(&self) -> Option<u64> {
        let mut b = [0u8; 8];
        self.file.read_exact_at(&mut b, self.offset).ok()?;
        Some(u64::from_ne_bytes(b))
    }
}

/// Finds the byte offset of the u64 counter `name` in a stats fd's contents, given the
/// beginning of the file (header and descriptors).
pub fn find_counter(blob: &[u8], name: &str) -> Result<Option<u64>, StatsError> {
    let u32_at = |off: usize| -> Result<u32, StatsError> {
        blob.get(off..off + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(StatsError::Malformed("truncated"))
    };
    if blob.len() < STATS_HEADER_SIZE {
        return Err(StatsError::Malformed("short header"));
    }
    let name_size = u32_at(4)? as usize;
    let num_desc = u32_at(8)? as usize;
    let desc_offset = u32_at(16)? as usize;
    let data_offset = u32_at(20)? as u64;
    let desc_size = STATS_DESC_FIXED_SIZE + name_size;
    for i in 0..num_desc {
        let d = desc_offset + i * desc_size;
        let fixed = blob
            .get(d..d + STATS_DESC_FIXED_SIZE)
            .ok_or(StatsError::Malformed("descriptor past the end"))?;
        let name_bytes = blob
            .get(d + STATS_DESC_FIXED_SIZE..d + desc_size)
            .ok_or(StatsError::Malformed("name past the end"))?;
        let len = name_bytes
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(name_bytes.len());
        if &name_bytes[..len] == name.as_bytes() {
            let size = u16::from_ne_bytes([fixed[6], fixed[7]]);
            if size != 1 {
                return Err(StatsError::Malformed("counter is not a single u64"));
            }
            let offset = u32::from_ne_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]) as u64;
            return Ok(Some(data_offset + offset));
        }
    }
    Ok(None)
}

fn open_exits_counter(vcpu: &impl AsRawFd) -> Result<KernelCounter, StatsError> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1.
    let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD as _) };
    if fd < 0 {
        return Err(StatsError::Ioctl(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh fd that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    let mut header = [0u8; STATS_HEADER_SIZE];
    file.read_exact_at(&mut header, 0)
        .map_err(StatsError::Read)?;
    let name_size = u32::from_ne_bytes(header[4..8].try_into().unwrap_or_default()) as usize;
    let num_desc = u32::from_ne_bytes(header[8..12].try_into().unwrap_or_default()) as usize;
    let desc_offset = u32::from_ne_bytes(header[16..20].try_into().unwrap_or_default()) as usize;
    let end = desc_offset
        .checked_add(num_desc.saturating_mul(STATS_DESC_FIXED_SIZE + name_size))
        .filter(|e| *e <= 1 << 20)
        .ok_or(StatsError::Malformed("descriptor block too large"))?;
    let mut blob = vec![0u8; end];
    file.read_exact_at(&mut blob, 0).map_err(StatsError::Read)?;
    let offset = find_counter(&blob, EXITS_STAT)?.ok_or(StatsError::NoExits)?;
    Ok(KernelCounter { file, offset })
}

/// One vCPU's counters.
#[derive(Debug, Default)]
struct VcpuCounters {
    userspace_exits: AtomicU64,
    kernel: Mutex<Option<KernelCounter>>,
}

/// A point-in-time copy of the VM's exit counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitCounts {
    /// Every VM exit, in-kernel ones included (KVM's stats), summed over vCPUs; equals
    /// `userspace_exits` when `from_kvm_stats` is false.
    pub vm_exits: u64,
    /// Exits that returned to husk (KVM_RUN returned), summed over vCPUs.
    pub userspace_exits: u64,
    /// Whether `vm_exits` came from KVM's stats for every vCPU.
    pub from_kvm_stats: bool,
}

/// The VM's exit counters; clone the `Arc` from [`crate::vmm::Vm::stats`] and call
/// [`VmStats::snapshot`] from any thread, at any time (also after the VM has ended: the
/// kernel counters are then frozen at their last value).
#[derive(Debug, Default)]
pub struct VmStats {
    vcpus: Vec<VcpuCounters>,
    /// Why KVM's stats are not used, if they are not.
    note: Mutex<Option<String>>,
    /// When the boot vCPU first entered KVM_RUN.
    first_run: OnceLock<Instant>,
}

impl VmStats {
    pub(crate) fn new(vcpus: usize) -> Arc<Self> {
        Arc::new(Self {
            vcpus: (0..vcpus).map(|_| VcpuCounters::default()).collect(),
            note: Mutex::new(None),
            first_run: OnceLock::new(),
        })
    }

    /// Attaches vCPU `index`'s kernel exit counter, or records why there is none.
    pub(crate) fn attach_kernel_counter(&self, index: usize, vcpu: &impl AsRawFd) {
        let Some(c) = self.vcpus.get(index) else {
            return;
        };
        match open_exits_counter(vcpu) {
            Ok(k) => *c.kernel.lock().unwrap_or_else(|e| e.into_inner()) = Some(k),
            Err(e) => {
                *self.note.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("{e}; counting userspace exits only"));
            }
        }
    }

    /// Counts one userspace exit of vCPU `index` (the vCPU loop's hot path: one relaxed add).
    #[inline]
    pub(crate) fn count_userspace_exit(&self, index: usize) {
        if let Some(c) = self.vcpus.get(index) {
            c.userspace_exits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts now.
    pub fn snapshot(&self) -> ExitCounts {
        let mut out = ExitCounts {
            from_kvm_stats: !self.vcpus.is_empty(),
            ..Default::default()
        };
        for c in &self.vcpus {
            let user = c.userspace_exits.load(Ordering::Relaxed);
            out.userspace_exits += user;
            let kernel = c
                .kernel
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .and_then(KernelCounter::read);
            match kernel {
                Some(k) => out.vm_exits += k.max(user),
                None => {
                    out.from_kvm_stats = false;
                    out.vm_exits += user;
                }
            }
        }
        out
    }

    /// Records the boot vCPU's first KVM_RUN (later calls are no-ops).
    #[inline]
    pub(crate) fn mark_first_run(&self, at: Instant) {
        if self.first_run.get().is_none() {
            let _ = self.first_run.set(at);
        }
    }

    /// When the guest's first instruction could run: the boot vCPU's first KVM_RUN.
    pub fn first_run(&self) -> Option<Instant> {
        self.first_run.get().copied()
    }

    /// Why the count is userspace-only, if it is.
    pub fn note(&self) -> Option<String> {
        self.note.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stats blob as KVM lays it out: header, id, descriptors, data.
    fn blob(names: &[&str], name_size: usize) -> Vec<u8> {
        let id_offset = STATS_HEADER_SIZE;
        let desc_offset = id_offset + name_size;
        let desc_size = STATS_DESC_FIXED_SIZE + name_size;
        let data_offset = desc_offset + names.len() * desc_size;
        let mut b = Vec::new();
        for v in [
            0u32,
            name_size as u32,
            names.len() as u32,
            id_offset as u32,
            desc_offset as u32,
            data_offset as u32,
        ] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.resize(desc_offset, 0);
        for (i, n) in names.iter().enumerate() {
            b.extend_from_slice(&0u32.to_ne_bytes()); // flags
            b.extend_from_slice(&0i16.to_ne_bytes()); // exponent
            b.extend_from_slice(&1u16.to_ne_bytes()); // size
            b.extend_from_slice(&((i * 8) as u32).to_ne_bytes()); // offset
            b.extend_from_slice(&0u32.to_ne_bytes()); // bucket size
            let mut name = n.as_bytes().to_vec();
            name.resize(name_size, 0);
            b.extend_from_slice(&name);
        }
        b
    }

    #[test]
    fn finds_exits_after_other_counters() {
        let b = blob(
            &["halt_successful_poll", "pf_taken", "exits", "irq_exits"],
            48,
        );
        let data_offset = (STATS_HEADER_SIZE + 48 + 4 * (16 + 48)) as u64;
        assert_eq!(find_counter(&b, "exits").unwrap(), Some(data_offset + 16));
        assert_eq!(
            find_counter(&b, "irq_exits").unwrap(),
            Some(data_offset + 24)
        );
        assert_eq!(find_counter(&b, "nope").unwrap(), None);
    }

    #[test]
    fn truncated_blobs_are_errors_not_panics() {
        let b = blob(&["a", "exits"], 48);
        for cut in [0, 10, 30, b.len() - 1] {
            assert!(find_counter(&b[..cut], "exits").is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn snapshot_without_kernel_counters_is_userspace_only() {
        let s = VmStats::new(2);
        s.count_userspace_exit(0);
        s.count_userspace_exit(1);
        s.count_userspace_exit(1);
        s.count_userspace_exit(7); // out of range: ignored
        let snap = s.snapshot();
        assert_eq!(
            snap,
            ExitCounts {
                vm_exits: 3,
                userspace_exits: 3,
                from_kvm_stats: false
            }
        );
    }
}
