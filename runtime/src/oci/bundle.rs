//! A bundle (a directory with `config.json` and a root filesystem), loaded and checked
//! the way `create` needs it.
//!
//! Checks run on the raw JSON before it is parsed into typed `oci-spec` values: a
//! typed parse rejects an unknown capability or rlimit with a serde message about an
//! enum variant, while a client deserves the names it got wrong, all of them at once.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::Value;

use crate::vmm::config::{MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};

/// Every capability the kernel defines (include/uapi/linux/capability.h, 0..=40).
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Every rlimit the kernel defines (include/uapi/asm-generic/resource.h).
pub const RLIMITS: &[&str] = &[
    "RLIMIT_CPU",
    "RLIMIT_FSIZE",
    "RLIMIT_DATA",
    "RLIMIT_STACK",
    "RLIMIT_CORE",
    "RLIMIT_RSS",
    "RLIMIT_NPROC",
    "RLIMIT_NOFILE",
    "RLIMIT_MEMLOCK",
    "RLIMIT_AS",
    "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
];

/// Annotation: the container's VM gets this many vCPUs.
pub const ANNOTATION_VCPUS: &str = "io.husk.vm.vcpus";
/// Annotation: the container's VM gets this much memory, MiB.
pub const ANNOTATION_MEMORY_MIB: &str = "io.husk.vm.memory_mib";
/// The VM a container gets without annotations or resource limits.
pub const DEFAULT_VCPUS: u32 = 1;
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Guest RAM added to a container's memory limit: the guest kernel and the agent live
/// beside the container in the VM.
pub const MEMORY_OVERHEAD_MIB: u64 = 64;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {}", problems.join("; "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
    #[error("invalid rootfs: stat {path}: {source}")]
    Rootfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid rootfs: {0} is not a directory")]
    RootfsNotDir(PathBuf),
}

/// The VM sizing a container asked for through annotations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmResources {
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// A loaded, checked bundle.
#[derive(Debug)]
pub struct Bundle {
    /// The directory as given, made absolute without resolving symlinks.
    pub dir: PathBuf,
    pub spec: Spec,
    /// `root.path`, absolute.
    pub rootfs: PathBuf,
    pub vm: VmResources,
}

/// `path` made absolute against the current directory, with `.` and `..` folded
/// lexically (Go's `filepath.Abs`, which runc uses for the bundle).
pub fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    let abs = std::path::absolute(path)?;
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

impl Bundle {
    /// Reads `dir/config.json`, checks it, and checks that the root filesystem exists.
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let dir = absolute(dir).map_err(|source| BundleError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("config.json");
        let text = std::fs::read(&path).map_err(|source| BundleError::Read {
            path: path.clone(),
            source,
        })?;
        let value: Value = serde_json::from_slice(&text).map_err(|source| BundleError::Json {
            path: path.clone(),
            source,
        })?;
        let invalid = |problems| BundleError::Invalid {
            path: path.clone(),
            problems,
        };
        let problems = check_config(&value);
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        let spec: Spec = serde_json::from_value(value).map_err(|e| invalid(vec![e.to_string()]))?;
        let vm = vm_resources(&spec).map_err(|p| invalid(vec![p]))?;
        // check_config made sure root.path is there.
        let root = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_default();
        let rootfs = absolute(&dir.join(root)).map_err(|source| BundleError::Read {
            path: dir.clone(),
            source,
        })?;
        let meta = std::fs::metadata(&rootfs).map_err(|source| BundleError::Rootfs {
            path: rootfs.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(BundleError::RootfsNotDir(rootfs));
        }
        Ok(Bundle {
            dir,
            spec,
            rootfs,
            vm,
        })
    }
}

/// Whether `v` is a runtime-spec 1.x version (`1.0.0`, `1.0.2-dev`, `1.1.0-rc.1`...).
fn is_v1(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts[0] == "1"
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Problems with a whole config, as messages naming the field.
pub fn check_config(config: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(obj) = config.as_object() else {
        return vec!["the config is not a JSON object".into()];
    };
    match obj.get("ociVersion").and_then(Value::as_str) {
        None => problems.push("ociVersion is missing".into()),
        Some(v) if !is_v1(v) => problems.push(format!(
            "unsupported ociVersion {v:?}: husk implements runtime-spec 1.x (up to {})",
            super::OCI_VERSION
        )),
        Some(_) => {}
    }
    match obj
        .get("root")
        .and_then(|r| r.get("path"))
        .and_then(Value::as_str)
    {
        None => problems.push("root.path is missing".into()),
        Some("") => problems.push("root.path is empty".into()),
        Some(_) => {}
    }
    match obj.get("process") {
        None | Some(Value::Null) => problems.push("process is missing".into()),
        Some(p) => problems.extend(check_process(p, "process.")),
    }
    if let Some(mounts) = obj.get("mounts").and_then(Value::as_array) {
        for (i, m) in mounts.iter().enumerate() {
            let dest = m.get("destination").and_then(Value::as_str).unwrap_or("");
            if dest.is_empty() {
                problems.push(format!("mounts[{i}].destination is missing"));
            }
        }
    }
    if let Some(hooks) = obj.get("hooks").and_then(Value::as_object) {
        for (kind, list) in hooks {
            if kind == "startContainer" && list.as_array().is_some_and(|l| !l.is_empty()) {
                problems.push(
                    "startContainer hooks are not supported (they run inside the container; \
                     husk runs hooks on the host)"
                        .into(),
                );
                continue;
            }
            for (i, h) in list.as_array().into_iter().flatten().enumerate() {
                let path = h.get("path").and_then(Value::as_str).unwrap_or("");
                if !path.starts_with('/') {
                    problems.push(format!("hooks.{kind}[{i}].path {path:?} is not absolute"));
                }
                if let Some(t) = h.get("timeout") {
                    if t.as_i64().is_none_or(|t| t <= 0) {
                        problems.push(format!(
                            "hooks.{kind}[{i}].timeout {t} must be a positive number of seconds"
                        ));
                    }
                }
            }
        }
    }
    if let Some(ns) = obj
        .get("linux")
        .and_then(|l| l.get("namespaces"))
        .and_then(Value::as_array)
    {
        let mut seen = HashSet::new();
        for n in ns {
            if let Some(t) = n.get("type").and_then(Value::as_str) {
                if !seen.insert(t) {
                    problems.push(format!("linux.namespaces: duplicate namespace type {t}"));
                }
            }
        }
    }
    problems
}

/// Problems with a process (the config's, or one given to `exec`); `at` prefixes the
/// field names in messages.
pub fn check_process(process: &Value, at: &str) -> Vec<String> {
    let mut problems = Vec::new();
    match process.get("args").and_then(Value::as_array) {
        Some(args) if !args.is_empty() => {}
        _ => problems.push(format!("{at}args must not be empty")),
    }
    if let Some(cwd) = process.get("cwd").and_then(Value::as_str) {
        if !cwd.starts_with('/') {
            problems.push(format!("{at}cwd {cwd:?} is not an absolute path"));
        }
    }
    if let Some(caps) = process.get("capabilities").and_then(Value::as_object) {
        for (set, names) in caps {
            let unknown: Vec<&str> = names
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| n.as_str().unwrap_or("(not a string)"))
                .filter(|n| !CAPABILITIES.contains(n))
                .collect();
            if !unknown.is_empty() {
                problems.push(format!(
                    "unknown capabilit{} in {at}capabilities.{set}: {}",
                    if unknown.len() == 1 { "y" } else { "ies" },
                    unknown.join(", ")
                ));
            }
        }
    }
    if let Some(rlimits) = process.get("rlimits").and_then(Value::as_array) {
        let mut seen = HashSet::new();
        let mut unknown = Vec::new();
        for r in rlimits {
            let t = r.get("type").and_then(Value::as_str).unwrap_or("(missing)");
            if !RLIMITS.contains(&t) {
                unknown.push(t);
            } else if !seen.insert(t) {
                problems.push(format!("{at}rlimits: duplicate type {t}"));
            }
        }
        if !unknown.is_empty() {
            problems.push(format!(
                "unknown rlimit type{} in {at}rlimits: {}",
                if unknown.len() == 1 { "" } else { "s" },
                unknown.join(", ")
            ));
        }
    }
    problems
}

/// The CFS period runc assumes when a quota comes without one (µs).
const DEFAULT_CPU_PERIOD_US: u64 = 100_000;

/// This host's online CPUs: a VM never gets more vCPUs from a CPU quota.
fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(MAX_VCPUS))
        .unwrap_or(1)
}

/// The VM sizing a container gets: from `linux.resources` (a CPU quota of q/p CPUs ->
/// ceil(q/p) vCPUs, at least 1, at most the host's CPUs; a memory limit -> that much
/// guest RAM plus [`MEMORY_OVERHEAD_MIB`] for the guest kernel and agent, at least
/// [`DEFAULT_MEMORY_MIB`]), then the annotations, which win. Checked against what the
/// VMM accepts.
pub fn vm_resources(spec: &Spec) -> Result<VmResources, String> {
    let mut vm = vm_from_limits(spec, host_cpus());
    let annotations = spec.annotations().as_ref();
    let get = |key: &str| annotations.and_then(|a| a.get(key));
    if let Some(v) = get(ANNOTATION_VCPUS) {
        vm.vcpus = v
            .parse()
            .ok()
            .filter(|n| (1..=MAX_VCPUS).contains(n))
            .ok_or_else(|| format!("annotation {ANNOTATION_VCPUS}={v:?}: want a whole number from 1 to {MAX_VCPUS}"))?;
    }
    if let Some(v) = get(ANNOTATION_MEMORY_MIB) {
        vm.memory_mib = v
            .parse()
            .ok()
            .filter(|n| (MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(n))
            .ok_or_else(|| {
                format!(
                    "annotation {ANNOTATION_MEMORY_MIB}={v:?}: want a whole number of MiB from \
                     {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB}"
                )
            })?;
    }
    Ok(vm)
}

/// The sizing that `linux.resources` asks for, with `host_cpus` CPUs on this host.
fn vm_from_limits(spec: &Spec, host_cpus: u32) -> VmResources {
    let mut vm = VmResources {
        vcpus: DEFAULT_VCPUS,
        memory_mib: DEFAULT_MEMORY_MIB,
    };
    let Some(resources) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) else {
        return vm;
    };
    if let Some(cpu) = resources.cpu() {
        let period = cpu
            .period()
            .filter(|p| *p > 0)
            .unwrap_or(DEFAULT_CPU_PERIOD_US);
        if let Some(quota) = cpu
            .quota()
            .and_then(|q| u64::try_from(q).ok())
            .filter(|q| *q > 0)
        {
            let cpus = quota.div_ceil(period);
            vm.vcpus = u32::try_from(cpus)
                .unwrap_or(u32::MAX)
                .clamp(1, host_cpus.clamp(1, MAX_VCPUS));
        }
    }
    if let Some(limit) = resources
        .memory()
        .as_ref()
        .and_then(|m| m.limit())
        .and_then(|l| u64::try_from(l).ok())
        .filter(|l| *l > 0)
    {
        let mib = limit.div_ceil(1 << 20).saturating_add(MEMORY_OVERHEAD_MIB);
        vm.memory_mib = mib.clamp(DEFAULT_MEMORY_MIB, MAX_MEMORY_MIB);
    }
    vm
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        serde_json::to_value(crate::oci::spec::default_spec()).unwrap()
    }

    #[test]
    fn the_default_spec_and_the_client_samples_pass() {
        assert!(
            check_config(&good()).is_empty(),
            "{:?}",
            check_config(&good())
        );
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/facts/samples");
        for entry in std::fs::read_dir(&samples).into_iter().flatten().flatten() {
            let v: Value = serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap();
            assert!(
                check_config(&v).is_empty(),
                "{:?}: {:?}",
                entry.path(),
                check_config(&v)
            );
            let spec: Spec = serde_json::from_value(v).unwrap();
            assert_eq!(vm_resources(&spec).unwrap().vcpus, DEFAULT_VCPUS);
        }
    }

    #[test]
    fn names_every_unknown_capability_and_rlimit() {
        let mut v = good();
        v["process"]["capabilities"]["bounding"] = json!(["CAP_KILL", "CAP_FOO", "CAP_BAR"]);
        v["process"]["capabilities"]["ambient"] = json!(["CAP_BAZ"]);
        v["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 1, "soft": 1},
                                         {"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1},
                                         {"type": "RLIMIT_NOFILE", "hard": 1, "soft": 1}]);
        let p = check_config(&v).join("\n");
        assert!(
            p.contains("unknown capabilities in process.capabilities.bounding: CAP_FOO, CAP_BAR"),
            "{p}"
        );
        assert!(
            p.contains("unknown capability in process.capabilities.ambient: CAP_BAZ"),
            "{p}"
        );
        assert!(
            p.contains("unknown rlimit type in process.rlimits: RLIMIT_BOGUS"),
            "{p}"
        );
        assert!(p.contains("duplicate type RLIMIT_NOFILE"), "{p}");
    }

    #[test]
    fn rejects_bad_versions_and_missing_parts() {
        for (bad, want) in [
            ("2.0.0", "unsupported ociVersion \"2.0.0\""),
            ("1.0", "unsupported"),
            ("", "unsupported"),
            ("x1.0.0", "unsupported"),
        ] {
            let mut v = good();
            v["ociVersion"] = json!(bad);
            assert!(check_config(&v).join(" ").contains(want), "{bad}");
        }
        for ok in ["1.0.0", "1.0.2-dev", "1.1.0-rc.1", "1.2.0"] {
            let mut v = good();
            v["ociVersion"] = json!(ok);
            assert!(check_config(&v).is_empty(), "{ok}");
        }
        let mut v = good();
        v["process"]["args"] = json!([]);
        v["process"]["cwd"] = json!("rel");
        v.as_object_mut().unwrap().remove("root");
        v["hooks"] =
            json!({"prestart": [{"path": "rel"}], "poststop": [{"path": "/x", "timeout": 0}]});
        let p = check_config(&v).join("\n");
        for want in [
            "process.args must not be empty",
            "cwd \"rel\" is not an absolute path",
            "root.path is missing",
            "hooks.prestart[0].path \"rel\" is not absolute",
            "hooks.poststop[0].timeout 0",
        ] {
            assert!(p.contains(want), "{want}: {p}");
        }
        assert_eq!(
            check_config(&json!({"ociVersion": "1.0.0", "root": {"path": "r"}})),
            ["process is missing"]
        );
    }

    #[test]
    fn vm_annotations_are_checked() {
        let mut spec = crate::oci::spec::default_spec();
        let with = |spec: &mut Spec, k: &str, v: &str| {
            spec.set_annotations(Some([(k.to_string(), v.to_string())].into()));
        };
        with(&mut spec, ANNOTATION_VCPUS, "2");
        assert_eq!(vm_resources(&spec).unwrap().vcpus, 2);
        with(&mut spec, ANNOTATION_MEMORY_MIB, "512");
        assert_eq!(
            vm_resources(&spec).unwrap(),
            VmResources {
                vcpus: 1,
                memory_mib: 512
            }
        );
        for (k, v) in [
            (ANNOTATION_VCPUS, "0"),
            (ANNOTATION_VCPUS, "x"),
            (ANNOTATION_MEMORY_MIB, "1"),
        ] {
            with(&mut spec, k, v);
            assert!(vm_resources(&spec).unwrap_err().contains(k));
        }
    }

    #[test]
    fn vm_size_follows_linux_resources_and_annotations_win() {
        let spec = |resources: Value, annotations: Value| -> Spec {
            let mut v = good();
            v["linux"]["resources"] = resources;
            v["annotations"] = annotations;
            serde_json::from_value(v).unwrap()
        };
        let none = json!({});
        let sized = |r: Value, cpus| {
            let vm = vm_from_limits(&spec(r, none.clone()), cpus);
            (vm.vcpus, vm.memory_mib)
        };
        assert_eq!(sized(json!({}), 8), (1, 128));
        // 1.5 CPUs -> 2 vCPUs; 3 CPUs on a 2-CPU host -> 2; no period: runc's 100 ms.
        assert_eq!(
            sized(json!({"cpu": {"quota": 150000, "period": 100000}}), 8).0,
            2
        );
        assert_eq!(
            sized(json!({"cpu": {"quota": 300000, "period": 100000}}), 2).0,
            2
        );
        assert_eq!(sized(json!({"cpu": {"quota": 50000}}), 8).0, 1);
        assert_eq!(
            sized(json!({"cpu": {"quota": -1, "period": 100000}}), 8).0,
            1
        );
        // 256 MiB -> 256 + overhead; a tiny limit still gets the minimum.
        assert_eq!(
            sized(json!({"memory": {"limit": 256 << 20}}), 8).1,
            256 + MEMORY_OVERHEAD_MIB
        );
        assert_eq!(sized(json!({"memory": {"limit": 1 << 20}}), 8).1, 128);
        assert_eq!(sized(json!({"memory": {"limit": -1}}), 8).1, 128);
        let both = spec(
            json!({"cpu": {"quota": 200000, "period": 100000}, "memory": {"limit": 512 << 20}}),
            json!({ANNOTATION_VCPUS: "1", ANNOTATION_MEMORY_MIB: "200"}),
        );
        assert_eq!(
            vm_resources(&both).unwrap(),
            VmResources {
                vcpus: 1,
                memory_mib: 200
            }
        );
    }

    #[test]
    fn bundle_paths_are_made_absolute_lexically() {
        assert_eq!(
            absolute(Path::new("/a/./b/../c")).unwrap(),
            PathBuf::from("/a/c")
        );
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(absolute(Path::new(".")).unwrap(), cwd);
    }
}
