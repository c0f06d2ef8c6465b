//! `process.capabilities`: the five sets as bit masks, and the steps that apply them
//! around the uid switch (as runc does): the bounding set is dropped and keep-caps set
//! while still root; after `setuid` the effective/permitted/inheritable sets are set with
//! `capset`, then the ambient set is raised.

use husk_protocol::{AgentError, ErrorKind};
use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use super::setup::{Step, Steps};

/// Capability names in kernel order (the index is the capability's number).
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The number of `cap`.
pub fn number(cap: &Capability) -> Result<u32, AgentError> {
    let name = cap.to_string();
    let bare = name.strip_prefix("CAP_").unwrap_or(&name);
    NAMES
        .iter()
        .position(|n| *n == bare)
        .map(|i| i as u32)
        .ok_or_else(|| {
            AgentError::new(
                ErrorKind::InvalidArgument,
                format!("unknown capability {name}"),
            )
        })
}

/// The set as a bit mask; capabilities above `last_cap` (this kernel lacks them) are left
/// out, as runc does.
pub fn mask(set: Option<&Capabilities>, last_cap: u32) -> Result<u64, AgentError> {
    let mut m = 0u64;
    for cap in set.into_iter().flatten() {
        let n = number(cap)?;
        if n <= last_cap {
            m |= 1 << n;
        }
    }
    Ok(m)
}

/// The highest capability number of the running kernel.
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Adds the steps for `caps` (nothing when the spec gives none: runc then leaves the
/// process's capabilities alone).
pub fn steps(steps: &mut Steps, caps: Option<&LinuxCapabilities>) -> Result<(), AgentError> {
    let Some(caps) = caps else {
        return Ok(());
    };
    let last = last_cap();
    let bounding = mask(caps.bounding().as_ref(), last)?;
    let effective = mask(caps.effective().as_ref(), last)?;
    let permitted = mask(caps.permitted().as_ref(), last)?;
    let inheritable = mask(caps.inheritable().as_ref(), last)?;
    let ambient = mask(caps.ambient().as_ref(), last)?;
    for n in 0..=last {
        if bounding & (1 << n) == 0 {
            steps.before_user(
                format!("dropping CAP_{} from the bounding set", name(n)),
                Step::Prctl {
                    option: libc::PR_CAPBSET_DROP,
                    arg2: n as libc::c_ulong,
                    arg3: 0,
                },
            );
        }
    }
    steps.before_user(
        "prctl(PR_SET_KEEPCAPS)",
        Step::Prctl {
            option: libc::PR_SET_KEEPCAPS,
            arg2: 1,
            arg3: 0,
        },
    );
    steps.after_user(
        format!(
            "capset(effective {effective:#x}, permitted {permitted:#x}, inheritable {inheritable:#x})"
        ),
        Step::Capset {
            effective,
            permitted,
            inheritable,
        },
    );
    steps.after_user(
        "clearing the ambient capabilities",
        Step::Prctl {
            option: libc::PR_CAP_AMBIENT,
            arg2: libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            arg3: 0,
        },
    );
    for n in 0..=last {
        if ambient & (1 << n) != 0 {
            steps.after_user(
                format!("raising ambient CAP_{}", name(n)),
                Step::PrctlBestEffort {
                    option: libc::PR_CAP_AMBIENT,
                    arg2: libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    arg3: n as libc::c_ulong,
                },
            );
        }
    }
    Ok(())
}

fn name(n: u32) -> &'static str {
    NAMES.get(n as usize).copied().unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_kernel() {
        let caps: Capabilities = serde_json::from_str(
            r#"["CAP_CHOWN","CAP_KILL","CAP_NET_BIND_SERVICE","CAP_SYS_ADMIN","CAP_CHECKPOINT_RESTORE"]"#,
        )
        .unwrap();
        assert_eq!(
            mask(Some(&caps), 40).unwrap(),
            1 | 1 << 5 | 1 << 10 | 1 << 21 | 1 << 40
        );
        // A kernel without CAP_CHECKPOINT_RESTORE (40) leaves it out.
        assert_eq!(mask(Some(&caps), 39).unwrap() & (1 << 40), 0);
        assert_eq!(mask(None, 40).unwrap(), 0);
    }
}
