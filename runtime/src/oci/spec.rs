//! `husk spec`: the starter `config.json` runc writes (`runc spec`, runc 1.1), so that
//! instructions written for runc work unchanged. It differs from runc's in two values
//! only: `ociVersion` (the version husk implements) and `hostname` ("husk").

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// runc's words, so that scripts that match on them keep working.
    #[error("File {0} exists. Remove it first")]
    Exists(String),
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The same content as runc's example spec, as JSON.
fn default_json() -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": super::OCI_VERSION,
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "husk",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// runc's rootless changes: a user namespace mapping the caller to root instead of a
/// network namespace, no device cgroup rules, /sys bound from the host (sysfs cannot
/// be mounted without owning the network namespace), devpts without `gid=5`.
fn make_rootless(spec: &mut Value, uid: u32, gid: u32) {
    // The mappings come first in runc's output (the map keeps insertion order).
    let mut linux = serde_json::Map::new();
    linux.insert(
        "uidMappings".into(),
        json!([{"containerID": 0, "hostID": uid, "size": 1}]),
    );
    linux.insert(
        "gidMappings".into(),
        json!([{"containerID": 0, "hostID": gid, "size": 1}]),
    );
    if let Some(old) = spec["linux"].as_object() {
        linux.extend(
            old.iter()
                .filter(|(k, _)| *k != "resources")
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    spec["linux"] = Value::Object(linux);
    let linux = &mut spec["linux"];
    if let Some(ns) = linux["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "network");
        ns.push(json!({"type": "user"}));
    }
    for m in spec["mounts"].as_array_mut().into_iter().flatten() {
        if m["destination"] == "/dev/pts" {
            if let Some(opts) = m["options"].as_array_mut() {
                opts.retain(|o| o != "gid=5");
            }
        }
        if m["destination"] == "/sys" {
            *m = json!({"destination": "/sys", "type": "none", "source": "/sys",
                        "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]});
        }
    }
}

/// runc's default config, as JSON in runc's key order; with `rootless: Some((uid,
/// gid))`, its rootless variant for that user.
pub fn default_config(rootless: Option<(u32, u32)>) -> Value {
    let mut v = default_json();
    if let Some((uid, gid)) = rootless {
        make_rootless(&mut v, uid, gid);
    }
    v
}

/// runc's default config as a typed spec.
pub fn default_spec() -> Spec {
    // Built from constants above; the unit tests parse both variants.
    serde_json::from_value(default_config(None)).expect("husk's built-in spec parses")
}

/// JSON indented with tabs, as runc writes config.json. (Written from the JSON value,
/// not from a typed `Spec`: oci-spec keeps capabilities in hash sets, whose order
/// changes from run to run.)
pub fn to_json(spec: &Value) -> Vec<u8> {
    super::indented_json(spec, b"\t")
}

/// Writes `spec` to `bundle/config.json`, refusing to replace an existing one.
pub fn write_new(bundle: &Path, spec: &Value) -> Result<(), SpecError> {
    let path = bundle.join("config.json");
    let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(SpecError::Exists("config.json".into()))
        }
        Err(source) => return Err(SpecError::Write { path, source }),
    };
    file.write_all(&to_json(spec))
        .map_err(|source| SpecError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// runc 1.1.5's output, byte for byte, with husk's two differences applied.
    fn runc_output(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/oci/testdata")
            .join(name);
        std::fs::read_to_string(path)
            .unwrap()
            .replace("\"1.0.2-dev\"", &format!("{:?}", crate::oci::OCI_VERSION))
            .replace("\"hostname\": \"runc\"", "\"hostname\": \"husk\"")
    }

    #[test]
    fn matches_runc_spec_byte_for_byte() {
        let ours = String::from_utf8(to_json(&default_config(None))).unwrap();
        assert_eq!(ours, runc_output("runc-1.1.5-spec.json"));
        let parsed: Spec = serde_json::from_str(&ours).unwrap();
        assert_eq!(
            parsed.process().as_ref().unwrap().args().as_ref().unwrap(),
            &["sh"]
        );
    }

    #[test]
    fn matches_runc_spec_rootless() {
        // runc's was generated as root: uid and gid 0.
        let ours = String::from_utf8(to_json(&default_config(Some((0, 0))))).unwrap();
        assert_eq!(ours, runc_output("runc-1.1.5-spec-rootless.json"));
        let _: Spec = serde_json::from_str(&ours).unwrap();
        let other = default_config(Some((1000, 100)));
        assert_eq!(other["linux"]["uidMappings"][0]["hostID"], 1000);
        assert_eq!(other["linux"]["gidMappings"][0]["hostID"], 100);
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = std::env::temp_dir().join(format!("husk-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join("config.json"));
        write_new(&dir, &default_config(None)).unwrap();
        let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        assert!(text.starts_with("{\n\t\"ociVersion\""), "{text}");
        let e = write_new(&dir, &default_config(None)).unwrap_err();
        assert_eq!(e.to_string(), "File config.json exists. Remove it first");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
