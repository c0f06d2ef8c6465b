//! `husk features`: what husk accepts in a config, in the shape of `runc features`
//! (the runtime spec's features document).
//!
//! Each value says what husk does today, not what a future agent might: the
//! namespaces and capabilities are the ones its validation accepts; seccomp, AppArmor
//! and SELinux are reported off because the guest applies none of them yet. Update
//! this file when the guest agent gains them.

use std::collections::BTreeMap;

use serde::Serialize;

use super::bundle::{ANNOTATION_MEMORY_MIB, ANNOTATION_VCPUS, CAPABILITIES};
use super::OCI_VERSION;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    pub oci_version_min: &'static str,
    pub oci_version_max: &'static str,
    pub hooks: Vec<&'static str>,
    pub mount_options: Vec<&'static str>,
    pub linux: LinuxFeatures,
    pub annotations: BTreeMap<&'static str, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxFeatures {
    pub namespaces: Vec<&'static str>,
    pub capabilities: Vec<&'static str>,
    pub cgroup: Cgroup,
    pub seccomp: Enabled,
    pub apparmor: Enabled,
    pub selinux: Enabled,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cgroup {
    pub v1: bool,
    pub v2: bool,
    pub systemd: bool,
    pub systemd_user: bool,
}

#[derive(Debug, Serialize)]
pub struct Enabled {
    pub enabled: bool,
}

/// The hooks husk runs, all on the host (startContainer would run inside the
/// container, which is in the guest).
pub const HOOKS: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "poststart",
    "poststop",
];

/// Mount options a config may use (mount(8)'s, the recursive `r*` ones of
/// mount_setattr(2), and propagation), the same set runc recognizes.
const MOUNT_OPTIONS: &[&str] = &[
    "acl",
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "iversion",
    "lazytime",
    "loud",
    "mand",
    "noacl",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "noiversion",
    "nolazytime",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "nosymfollow",
    "private",
    "ratime",
    "rbind",
    "rdev",
    "rdiratime",
    "relatime",
    "remount",
    "rexec",
    "rnoatime",
    "rnodev",
    "rnodiratime",
    "rnoexec",
    "rnorelatime",
    "rnostrictatime",
    "rnosuid",
    "rnosymfollow",
    "ro",
    "rprivate",
    "rrelatime",
    "rro",
    "rrw",
    "rshared",
    "rslave",
    "rstrictatime",
    "rsuid",
    "rsymfollow",
    "runbindable",
    "rw",
    "shared",
    "silent",
    "slave",
    "strictatime",
    "suid",
    "symfollow",
    "sync",
    "unbindable",
];

pub fn features() -> Features {
    let annotations = BTreeMap::from([
        ("io.husk.version", env!("CARGO_PKG_VERSION").to_string()),
        (
            ANNOTATION_VCPUS,
            "vCPUs of the container's VM (default 1)".to_string(),
        ),
        (
            ANNOTATION_MEMORY_MIB,
            "memory of the container's VM in MiB (default 128)".to_string(),
        ),
    ]);
    Features {
        oci_version_min: "1.0.0",
        oci_version_max: OCI_VERSION,
        hooks: HOOKS.to_vec(),
        mount_options: MOUNT_OPTIONS.to_vec(),
        linux: LinuxFeatures {
            namespaces: vec!["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            capabilities: CAPABILITIES.to_vec(),
            // The container's cgroups are the guest's, which mounts only v2.
            cgroup: Cgroup {
                v1: false,
                v2: true,
                systemd: false,
                systemd_user: false,
            },
            seccomp: Enabled { enabled: false },
            apparmor: Enabled { enabled: false },
            selinux: Enabled { enabled: false },
        },
        annotations,
    }
}

/// Four-space indented JSON, as `runc features` prints.
pub fn to_json(features: &Features) -> Vec<u8> {
    let mut out = super::indented_json(features, b"    ");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_runc_shape_and_husk_annotations() {
        let v: serde_json::Value = serde_json::from_slice(&to_json(&features())).unwrap();
        assert_eq!(v["ociVersionMin"], "1.0.0");
        assert_eq!(v["ociVersionMax"], OCI_VERSION);
        assert_eq!(v["linux"]["capabilities"].as_array().unwrap().len(), 41);
        assert_eq!(v["linux"]["seccomp"]["enabled"], false);
        assert!(v["annotations"][ANNOTATION_VCPUS].is_string());
        assert!(v["annotations"][ANNOTATION_MEMORY_MIB].is_string());
        assert!(v["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h != "startContainer"));
        let opts = v["mountOptions"].as_array().unwrap();
        assert!(
            opts.windows(2).all(|w| w[0].as_str() < w[1].as_str()),
            "sorted"
        );
    }
}
