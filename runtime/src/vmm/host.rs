//! What the host offers, read from /proc and /sys under a root path (so tests can hand
//! in a fake tree): whether its KVM can run a stock guest kernel, and how much memory it has.

use std::path::Path;

/// The host's KVM flavour, as far as booting a stock Linux guest is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKvm {
    /// Hardware virtualization (VMX or SVM): stock kernels boot.
    Hardware,
    /// PVM (`kvm_pvm`): only PVM-built guest kernels run; a stock one dies early.
    Pvm,
}

/// Detects PVM: `/sys/module/kvm_pvm` exists, or /proc/cpuinfo lists neither `vmx` nor
/// `svm` (KVM without hardware virtualization can only be PVM). An unreadable cpuinfo is
/// not taken as evidence of PVM.
pub fn detect_kvm(root: &Path) -> HostKvm {
    if root.join("sys/module/kvm_pvm").exists() {
        return HostKvm::Pvm;
    }
    let Ok(cpuinfo) = std::fs::read_to_string(root.join("proc/cpuinfo")) else {
        return HostKvm::Hardware;
    };
    let has_hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .filter_map(|l| l.split_once(':'))
        .any(|(_, flags)| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let has_flags = cpuinfo.lines().any(|l| l.starts_with("flags"));
    if has_flags && !has_hw {
        HostKvm::Pvm
    } else {
        HostKvm::Hardware
    }
}

/// The host's MemTotal in MiB, from `<root>/proc/meminfo`.
pub fn mem_total_mib(root: &Path) -> Option<u64> {
    let meminfo = std::fs::read_to_string(root.join("proc/meminfo")).ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake_root(name: &str, cpuinfo: Option<&str>, pvm_module: bool) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("husk-host-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("proc")).unwrap();
        if let Some(c) = cpuinfo {
            fs::write(root.join("proc/cpuinfo"), c).unwrap();
        }
        if pvm_module {
            fs::create_dir_all(root.join("sys/module/kvm_pvm")).unwrap();
        }
        root
    }

    const VMX: &str = "processor\t: 0\nflags\t\t: fpu vme vmx sse2\n\nprocessor\t: 1\nflags\t\t: fpu vme vmx sse2\n";
    const SVM: &str = "processor\t: 0\nflags\t\t: fpu svm npt\n";
    const NONE: &str = "processor\t: 0\nflags\t\t: fpu vme sse2 hypervisor\n";

    #[test]
    fn hardware_virtualization_is_not_pvm() {
        for (name, c) in [("vmx", VMX), ("svm", SVM)] {
            let root = fake_root(name, Some(c), false);
            assert_eq!(detect_kvm(&root), HostKvm::Hardware, "{name}");
            fs::remove_dir_all(root).unwrap();
        }
    }

    #[test]
    fn kvm_pvm_module_means_pvm_even_with_vmx() {
        let root = fake_root("module", Some(VMX), true);
        assert_eq!(detect_kvm(&root), HostKvm::Pvm);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn no_vmx_nor_svm_means_pvm() {
        let root = fake_root("noflags", Some(NONE), false);
        assert_eq!(detect_kvm(&root), HostKvm::Pvm);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn unreadable_cpuinfo_is_no_evidence() {
        let root = fake_root("nocpuinfo", None, false);
        assert_eq!(detect_kvm(&root), HostKvm::Hardware);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn mem_total_is_read_in_mib() {
        let root = fake_root("meminfo", None, false);
        fs::write(
            root.join("proc/meminfo"),
            "MemTotal:       24684104 kB\nMemFree: 1 kB\n",
        )
        .unwrap();
        assert_eq!(mem_total_mib(&root), Some(24105));
        fs::remove_dir_all(root).unwrap();
    }
}
