//! husk's runc-compatible CLI, driven through `target/release/husk` natively (no VM):
//! spec, features, state/list/kill/delete/start on known and unknown containers,
//! validation errors, the --log file, duplicate ids and lock contention.
//!
//! Containers that need a VM are created by the VM tests (tests/vm/lifecycle.rs); here,
//! where a command under test needs an existing container, the test records one
//! through the library's state store, with a real host process (a `sleep` child)
//! standing in for the VM monitor where liveness matters.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use husk::oci::process::HostProcess;
use husk::oci::{ContainerRecord, StateStore, Status};
use husk_tests::{husk, husk_bin, Run};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);

/// A fresh directory for one test: `root` (the state root) and bundles beside it.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("husk-cli-oci-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn store(&self) -> StateStore {
        StateStore::new(self.root())
    }

    /// `husk --root ROOT args...`.
    fn husk(&self, args: &[&str]) -> Run {
        let root = self.root();
        let mut all = vec!["--root", root.to_str().unwrap()];
        all.extend_from_slice(args);
        husk(&all, DEADLINE)
    }

    /// A bundle with husk's default config (edited by `edit`) and an empty rootfs.
    fn bundle(&self, name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
        let b = self.dir.join(name);
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        let mut config = husk::oci::spec::default_config(None);
        config["process"]["terminal"] = json!(false);
        edit(&mut config);
        std::fs::write(
            b.join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        b
    }

    /// Records container `id` directly in the store, as `create` would have left it.
    fn record(&self, id: &str, status: Status, process: Option<HostProcess>) {
        let bundle = self.bundle(&format!("bundle-{id}"), |_| {});
        let record = ContainerRecord {
            id: id.into(),
            bundle: bundle.clone(),
            rootfs: bundle.join("rootfs"),
            status,
            process,
            created: "2026-11-27T03:17:05.426452299Z".into(),
            owner: "root".into(),
            annotations: [("a.b".to_string(), "c".to_string())].into(),
        };
        let c = self.store().create(record).unwrap();
        std::fs::copy(bundle.join("config.json"), c.dir.join("config.json")).unwrap();
    }

    /// Entries in the state root (what a failed command must not leave).
    fn root_entries(&self) -> Vec<String> {
        match std::fs::read_dir(self.root()) {
            Ok(d) => d
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A live host process to stand for a container's VMM.
fn stand_in() -> (Child, HostProcess) {
    let child = Command::new("sleep").arg("300").spawn().unwrap();
    let p = HostProcess::of_pid(child.id() as i32).unwrap();
    (child, p)
}

fn state_json(run: &Run) -> Value {
    run.assert_success();
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("state JSON: {e}: {run:#?}"))
}

fn assert_fails(run: &Run, code: i32, needle: &str) {
    run.assert_one_line_error(needle);
    assert_eq!(run.status.code(), Some(code), "{run:#?}");
}

#[test]
fn spec_writes_runcs_config_once() {
    let s = Scratch::new("spec");
    let b = s.dir.join("b");
    std::fs::create_dir_all(&b).unwrap();
    s.husk(&["spec", "--bundle", b.to_str().unwrap()])
        .assert_success();
    let text = std::fs::read_to_string(b.join("config.json")).unwrap();
    assert!(text.starts_with("{\n\t\"ociVersion\": "), "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["process"]["args"], json!(["sh"]));
    assert_eq!(v["process"]["terminal"], true);
    assert_eq!(v["root"], json!({"path": "rootfs", "readonly": true}));
    assert_eq!(
        v["process"]["capabilities"]["bounding"],
        json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"])
    );
    assert_eq!(v["linux"]["maskedPaths"].as_array().unwrap().len(), 10);
    assert_eq!(v["mounts"].as_array().unwrap().len(), 7);
    let again = s.husk(&["spec", "-b", b.to_str().unwrap()]);
    assert_fails(&again, 1, "File config.json exists. Remove it first");
    assert_eq!(
        std::fs::read_to_string(b.join("config.json")).unwrap(),
        text,
        "untouched"
    );

    let r = s.dir.join("rootless");
    std::fs::create_dir_all(&r).unwrap();
    s.husk(&["spec", "--rootless", "--bundle", r.to_str().unwrap()])
        .assert_success();
    let v: Value = serde_json::from_slice(&std::fs::read(r.join("config.json")).unwrap()).unwrap();
    let ns: Vec<&str> = v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(ns, ["pid", "ipc", "uts", "mount", "user"]);
    assert!(v["linux"]["uidMappings"].is_array());
}

#[test]
fn features_and_version() {
    let s = Scratch::new("features");
    let run = s.husk(&["features"]);
    run.assert_success();
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["ociVersionMin"], "1.0.0");
    assert!(v["ociVersionMax"].as_str().unwrap().starts_with("1."));
    assert!(v["hooks"]
        .as_array()
        .unwrap()
        .contains(&json!("createRuntime")));
    assert!(v["mountOptions"]
        .as_array()
        .unwrap()
        .contains(&json!("rbind")));
    assert!(v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!("pid")));
    assert!(v["linux"]["capabilities"]
        .as_array()
        .unwrap()
        .contains(&json!("CAP_SYS_ADMIN")));
    for k in ["cgroup", "seccomp", "apparmor", "selinux"] {
        assert!(v["linux"][k].is_object(), "{k}");
    }
    assert!(v["annotations"]["io.husk.vm.vcpus"].is_string());
    assert!(v["annotations"]["io.husk.vm.memory_mib"].is_string());
    let run = s.husk(&["--version"]);
    run.assert_success();
    assert!(run.stdout.starts_with("husk version "), "{}", run.stdout);
    assert!(run.stdout.contains("\nspec: 1."), "{}", run.stdout);
}

#[test]
fn unknown_and_invalid_ids() {
    let s = Scratch::new("unknown");
    for cmd in [
        vec!["state", "nope"],
        vec!["kill", "nope"],
        vec!["kill", "nope", "KILL"],
        vec!["delete", "nope"],
        vec!["start", "nope"],
        vec!["pause", "nope"],
        vec!["resume", "nope"],
        vec!["ps", "nope"],
    ] {
        assert_fails(&s.husk(&cmd), 1, "container nope does not exist");
    }
    // exec fails with 255, as runc's, so its failure is not a process status.
    assert_fails(
        &s.husk(&["exec", "nope", "true"]),
        255,
        "container nope does not exist",
    );
    // delete --force of a missing container succeeds, as runc's.
    let run = s.husk(&["delete", "--force", "nope"]);
    run.assert_success();
    assert_eq!(run.stderr, "");
    for bad in ["a/b", "../x", "..", "a b"] {
        assert_fails(&s.husk(&["state", bad]), 1, "invalid container ID format");
    }
    assert_fails(&s.husk(&["kill", "--all"]), 1, "required arguments");
}

#[test]
fn list_formats() {
    let s = Scratch::new("list");
    let empty = s.husk(&["list"]);
    empty.assert_success();
    assert_eq!(
        empty.stdout,
        "ID          PID         STATUS      BUNDLE      CREATED     OWNER\n"
    );
    assert_eq!(s.husk(&["list", "--format", "json"]).stdout, "null\n");
    assert_eq!(s.husk(&["list", "-q"]).stdout, "");

    let (mut child, p) = stand_in();
    s.record("c1", Status::Created, Some(p));
    s.record("c0", Status::Running, None);
    let run = s.husk(&["list"]);
    run.assert_success();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(lines[0].starts_with("ID          PID "), "{}", run.stdout);
    let c0: Vec<&str> = lines[1].split_whitespace().collect();
    let c1: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(&c0[..3], ["c0", "0", "stopped"]);
    assert_eq!(&c1[..3], ["c1", &p.pid.to_string(), "created"]);
    assert_eq!(c1[5], "root");
    assert_eq!(s.husk(&["list", "-q"]).stdout, "c0\nc1\n");
    let json: Value = serde_json::from_str(&s.husk(&["list", "--format", "json"]).stdout).unwrap();
    assert_eq!(json[1]["id"], "c1");
    assert_eq!(json[1]["status"], "created");
    assert_eq!(json[1]["annotations"]["a.b"], "c");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn state_follows_the_host_process() {
    let s = Scratch::new("state");
    let (mut child, p) = stand_in();
    s.record("c1", Status::Running, Some(p));
    let v = state_json(&s.husk(&["state", "c1"]));
    assert_eq!(v["status"], "running");
    assert_eq!(v["pid"], p.pid);
    assert_eq!(v["id"], "c1");
    assert!(v["bundle"].as_str().unwrap().ends_with("/bundle-c1"));
    assert!(v["rootfs"].as_str().unwrap().ends_with("/bundle-c1/rootfs"));
    assert_eq!(v["annotations"]["a.b"], "c");
    for k in ["ociVersion", "created", "owner"] {
        assert!(v[k].is_string(), "{k}");
    }
    assert!(
        !s.husk(&["state", "c1"]).stdout.ends_with('\n'),
        "runc prints no newline"
    );

    // The VMM SIGKILLed: stopped, pid 0.
    child.kill().unwrap();
    child.wait().unwrap();
    let v = state_json(&s.husk(&["state", "c1"]));
    assert_eq!(
        (v["status"].as_str(), v["pid"].as_i64()),
        (Some("stopped"), Some(0))
    );

    // A recorded pid now owned by another process (other start time) is not ours.
    let me = HostProcess::of_pid(std::process::id() as i32).unwrap();
    let reused = HostProcess {
        start_time: me.start_time + 1,
        ..me
    };
    s.record("c2", Status::Created, Some(reused));
    assert_eq!(state_json(&s.husk(&["state", "c2"]))["status"], "stopped");

    // A create that died half-way (record "creating", lock free) is stopped too.
    s.record("c3", Status::Creating, None);
    assert_eq!(state_json(&s.husk(&["state", "c3"]))["status"], "stopped");
}

#[test]
fn lifecycle_refusals() {
    let s = Scratch::new("refusals");
    let (mut child, p) = stand_in();
    s.record("live", Status::Created, Some(p));
    s.record("dead", Status::Running, None);

    let refusals: [(&[&str], i32, &str); 7] = [
        (
            &["delete", "live"],
            1,
            "cannot delete container live that is not stopped: created",
        ),
        (
            &["start", "dead"],
            1,
            "cannot start container dead: it is stopped, not created",
        ),
        (&["kill", "dead", "9"], 1, "container dead is not running"),
        (&["pause", "live"], 1, "container live is not running"),
        (&["resume", "live"], 1, "container live is not paused"),
        (&["kill", "live", "BOGUS"], 1, "unknown signal \"BOGUS\""),
        (
            &["exec", "dead", "true"],
            255,
            "cannot exec in container dead: it is stopped",
        ),
    ];
    for (args, code, needle) in refusals {
        assert_fails(&s.husk(args), code, needle);
    }
    // Signalling a live container goes to its VM monitor; a stand-in has none: said
    // plainly, nothing faked.
    for sig in ["9", "KILL", "SIGKILL"] {
        assert_fails(
            &s.husk(&["kill", "live", sig]),
            1,
            "cannot reach the container's VM monitor",
        );
    }
    assert_fails(
        &s.husk(&["start", "live"]),
        1,
        "cannot reach the container's VM monitor",
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "nothing signalled the host process"
    );

    // A stopped container deletes; a live one with --force: its host process is killed.
    s.husk(&["delete", "dead"]).assert_success();
    s.husk(&["delete", "--force", "live"]).assert_success();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    assert!(s.root_entries().is_empty(), "{:?}", s.root_entries());
}

#[test]
fn poststop_hooks_run_at_delete_with_the_state() {
    let s = Scratch::new("poststop");
    s.record("c1", Status::Stopped, None);
    let out = s.dir.join("hook-out");
    let c = s.store().load("c1").unwrap();
    let saved = c.dir.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    config["hooks"] = json!({"poststop": [{"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", out.display())]}]});
    std::fs::write(&saved, serde_json::to_vec(&config).unwrap()).unwrap();
    s.husk(&["delete", "c1"]).assert_success();
    let state: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(
        (state["id"].as_str(), state["status"].as_str()),
        (Some("c1"), Some("stopped"))
    );
}

/// A change to a bundle's config.
type Edit = Box<dyn Fn(&mut Value)>;

#[test]
fn create_validates_the_bundle_and_leaves_nothing() {
    let s = Scratch::new("validate");
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "caps",
            Box::new(|c| c["process"]["capabilities"]["bounding"] = json!(["CAP_KILL", "CAP_FOO"])),
            "unknown capability in process.capabilities.bounding: CAP_FOO",
        ),
        (
            "rlimit",
            Box::new(|c| {
                c["process"]["rlimits"] = json!([{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}])
            }),
            "unknown rlimit type in process.rlimits: RLIMIT_BOGUS",
        ),
        (
            "version",
            Box::new(|c| c["ociVersion"] = json!("2.0.0")),
            "unsupported ociVersion \"2.0.0\"",
        ),
        (
            "args",
            Box::new(|c| c["process"]["args"] = json!([])),
            "process.args must not be empty",
        ),
        (
            "rootfs",
            Box::new(|c| c["root"]["path"] = json!("missing")),
            "invalid rootfs",
        ),
        (
            "vcpus",
            Box::new(|c| c["annotations"] = json!({"io.husk.vm.vcpus": "0"})),
            "io.husk.vm.vcpus",
        ),
        (
            "tty",
            Box::new(|c| c["process"]["terminal"] = json!(true)),
            "cannot allocate tty",
        ),
    ];
    for (name, edit, want) in cases {
        let b = s.bundle(name, edit);
        let run = s.husk(&["create", "--bundle", b.to_str().unwrap(), name]);
        assert_fails(&run, 1, want);
        assert!(
            s.root_entries().is_empty(),
            "{name}: {:?}",
            s.root_entries()
        );
    }
    let run = s.husk(&[
        "create",
        "--bundle",
        s.dir.join("nonexistent").to_str().unwrap(),
        "x",
    ]);
    assert_fails(&run, 1, "config.json");
}

#[test]
fn a_create_that_fails_logs_json_and_leaves_nothing() {
    let s = Scratch::new("create");
    // A bind mount whose source is missing fails before any VM boots.
    let b = s.bundle("b", |c| {
        c["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/data", "type": "bind", "source": "/nonexistent/husk-src"}),
        )
    });
    let log = s.dir.join("log.json");
    let pid_file = s.dir.join("pid");
    std::fs::write(
        &log,
        "{\"level\":\"info\",\"msg\":\"earlier\",\"time\":\"x\"}\n",
    )
    .unwrap();
    let run = s.husk_with_log(
        &log,
        &[
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "c1",
        ],
    );
    assert_fails(&run, 1, "bind source /nonexistent/husk-src does not exist");
    assert!(s.root_entries().is_empty(), "{:?}", s.root_entries());
    assert!(!pid_file.exists());
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "appended: {text}");
    let v: Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(v["level"], "error");
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("bind source /nonexistent/husk-src does not exist"),
        "{v}"
    );
    let time = v["time"].as_str().unwrap();
    assert!(is_rfc3339(time), "{time}");
    // `run` is create + start: the same refusal.
    assert_fails(
        &s.husk(&["run", "--bundle", b.to_str().unwrap(), "c1"]),
        1,
        "bind source /nonexistent/husk-src does not exist",
    );

    // Usage errors reach the log too.
    let run = s.husk_with_log(&log, &["kill"]);
    assert_eq!(run.status.code(), Some(1));
    let last = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let v: Value = serde_json::from_str(&last).unwrap();
    assert!(
        v["msg"].as_str().unwrap().contains("required arguments"),
        "{v}"
    );
}

/// `2026-11-27T03:17:05Z`.
fn is_rfc3339(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

impl Scratch {
    /// `husk --root ROOT --log LOG --log-format json args...`, as conmon calls it.
    fn husk_with_log(&self, log: &Path, args: &[&str]) -> Run {
        let root = self.root();
        let mut all = vec![
            "--root",
            root.to_str().unwrap(),
            "--log-format=json",
            "--log",
            log.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        husk(&all, DEADLINE)
    }
}

#[test]
fn duplicate_ids_are_refused() {
    let s = Scratch::new("dup");
    s.record("c1", Status::Stopped, None);
    let b = s.bundle("b", |_| {});
    assert_fails(
        &s.husk(&["create", "--bundle", b.to_str().unwrap(), "c1"]),
        1,
        "container with id exists: c1",
    );
    // The existing container is untouched.
    assert_eq!(state_json(&s.husk(&["state", "c1"]))["status"], "stopped");
}

#[test]
fn commands_on_one_container_take_turns() {
    let s = Scratch::new("lock");
    s.record("c1", Status::Stopped, None);
    let held = s.store().lock("c1").unwrap();
    let root = s.root();
    let mut delete = Command::new(husk_bin())
        .args(["--root", root.to_str().unwrap(), "delete", "c1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        delete.try_wait().unwrap().is_none(),
        "delete must wait for the lock"
    );
    // Reads take no lock.
    assert_eq!(state_json(&s.husk(&["state", "c1"]))["status"], "stopped");
    drop(held);
    let started = Instant::now();
    let out = loop {
        if delete.try_wait().unwrap().is_some() {
            break delete.wait_with_output().unwrap();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "delete hung after the lock was released"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(out.status.success(), "{out:?}");
    assert!(s.root_entries().is_empty(), "{:?}", s.root_entries());

    // Two deletes racing: one removes it, the other finds it gone.
    s.record("c2", Status::Stopped, None);
    let held = s.store().lock("c2").unwrap();
    let spawn = || {
        Command::new(husk_bin())
            .args(["--root", root.to_str().unwrap(), "delete", "c2"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    std::thread::sleep(Duration::from_millis(300));
    drop(held);
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let ok = outs.iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 1, "{outs:?}");
    let failed = outs.iter().find(|o| !o.status.success()).unwrap();
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("container c2 does not exist"),
        "{outs:?}"
    );
}
