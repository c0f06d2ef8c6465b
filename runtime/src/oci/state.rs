//! What husk remembers about a container (`state.json` in its directory) and what it
//! reports (`husk state`, `husk list`, the state hooks read on stdin).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::process::HostProcess;
use super::OCI_VERSION;

/// A container's status, with the runtime spec's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// The on-disk record. `status` is what the last command that changed the container
/// did; [`ContainerRecord::status_now`] is what it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    /// The bundle directory as the client named it, made absolute (not canonicalized).
    pub bundle: PathBuf,
    /// The root filesystem on the host, absolute.
    pub rootfs: PathBuf,
    pub status: Status,
    /// The host process that stands for the container (the VMM); `None` until it runs.
    pub process: Option<HostProcess>,
    /// RFC 3339 with nanoseconds, UTC.
    pub created: String,
    /// The user who created the container.
    pub owner: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl ContainerRecord {
    /// The status now, given whether the creating command still holds the container's
    /// lock (only asked for a record still `creating`).
    ///
    /// A container whose host process is gone (exited, killed, or its pid reused) has
    /// stopped, whatever was recorded; so has one whose `create` died half-way.
    pub fn status_now(&self, creator_alive: impl FnOnce() -> bool) -> Status {
        match self.status {
            Status::Stopped => Status::Stopped,
            Status::Creating => {
                if creator_alive() {
                    Status::Creating
                } else {
                    Status::Stopped
                }
            }
            recorded => match self.process {
                Some(p) if p.is_alive() => recorded,
                _ => Status::Stopped,
            },
        }
    }

    /// The state as reported, for a given current status (runc reports pid 0 for a
    /// stopped container).
    pub fn oci_state(&self, status: Status) -> OciState {
        let pid = match (status, self.process) {
            (Status::Stopped, _) | (_, None) => 0,
            (_, Some(p)) => p.pid,
        };
        OciState {
            oci_version: OCI_VERSION.to_string(),
            id: self.id.clone(),
            pid,
            status,
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self.created.clone(),
            annotations: self.annotations.clone(),
            owner: self.owner.clone(),
        }
    }
}

/// The state as `runc state` prints it, field for field and in its order; the first
/// six fields are the runtime spec's state, which hooks get on stdin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciState {
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub owner: String,
}

impl OciState {
    /// Two-space indented JSON without a trailing newline, as `runc state` prints.
    pub fn to_pretty_json(&self) -> String {
        // A struct of strings, numbers and a string map: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: Status, process: Option<HostProcess>) -> ContainerRecord {
        ContainerRecord {
            id: "c1".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            status,
            process,
            created: "2026-11-27T03:17:05.426452299Z".into(),
            owner: "root".into(),
            annotations: BTreeMap::from([("a.b".into(), "c".into())]),
        }
    }

    #[test]
    fn status_follows_the_host_process() {
        let me = HostProcess::of_pid(std::process::id() as i32).unwrap();
        let gone = HostProcess {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        for s in [Status::Created, Status::Running, Status::Paused] {
            assert_eq!(record(s, Some(me)).status_now(|| unreachable!()), s);
            assert_eq!(record(s, Some(gone)).status_now(|| true), Status::Stopped);
            assert_eq!(record(s, None).status_now(|| true), Status::Stopped);
        }
        assert_eq!(
            record(Status::Creating, None).status_now(|| true),
            Status::Creating
        );
        assert_eq!(
            record(Status::Creating, Some(me)).status_now(|| false),
            Status::Stopped
        );
        assert_eq!(
            record(Status::Stopped, Some(me)).status_now(|| true),
            Status::Stopped
        );
    }

    #[test]
    fn reports_runc_shaped_state() {
        let me = HostProcess::of_pid(std::process::id() as i32).unwrap();
        let r = record(Status::Running, Some(me));
        let json = r.oci_state(Status::Running).to_pretty_json();
        assert!(!json.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["pid"], me.pid);
        assert_eq!(v["status"], "running");
        assert_eq!(v["ociVersion"], OCI_VERSION);
        assert_eq!(v["annotations"]["a.b"], "c");
        let keys: Vec<&str> = json
            .lines()
            .filter_map(|l| l.strip_prefix("  \""))
            .map(|l| &l[..l.find('"').unwrap()])
            .collect();
        assert_eq!(
            keys,
            [
                "ociVersion",
                "id",
                "pid",
                "status",
                "bundle",
                "rootfs",
                "created",
                "annotations",
                "owner"
            ]
        );
        let stopped = r.oci_state(Status::Stopped);
        assert_eq!(stopped.pid, 0);
        let mut bare = record(Status::Created, None);
        bare.annotations.clear();
        assert!(!bare
            .oci_state(Status::Created)
            .to_pretty_json()
            .contains("annotations"));
    }
}
