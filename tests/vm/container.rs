//! The container the agent builds inside the guest, checked from inside it: real VMs
//! (through the `husk` library's `Sandbox`, as `husk vm run` boots them), the agent
//! driven with the protocol's `Client`, a busybox rootfs shared over virtio-fs.
//!
//! Each test boots one VM and runs several containers in it (a boot costs ~10 s in the
//! test bed). Specs start from `husk spec`'s default (`husk::oci::spec`), edited as JSON.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use husk::assets;
use husk::sandbox::{Sandbox, SandboxConfig, Volume};
use husk_protocol::{
    Client, ErrorKind, ExitStatus, ProcessRef, ProtocolError, StdioConfig, StreamKind,
};
use husk_tests::repo_root;
use oci_spec::runtime::{Process, Spec};
use serde_json::{json, Value};

/// Booting in the test bed (TCG, nested KVM) is slow; a boot never takes this long.
const READY_TIMEOUT: Duration = Duration::from_secs(240);
/// Any single request or container run in these tests.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Where the test's volume is in the guest (the sandbox mounts it under the rootfs).
const VOLUME_GUEST: &str = "/vol";

const OUT_ERR: StdioConfig = StdioConfig {
    stdin: false,
    stdout: true,
    stderr: true,
    terminal: false,
};

fn scratch(name: &str) -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "husk-vm-container-{}-{}-{name}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A busybox rootfs plus what the checks look at: a directory to mask.
fn rootfs() -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: apt-get install busybox-static"
    );
    let root = scratch("rootfs");
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "etc/secret-dir",
        "root",
        "run",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("etc/secret-dir/secret"), "hidden\n").unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" && !applet.is_empty() {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    root
}

struct Vm {
    sandbox: Sandbox,
    /// The guest path of the rootfs share (`root.path` of every container).
    rootfs: String,
}

/// Boots a sandbox on a fresh busybox rootfs with one volume (`VOLUME_GUEST`) holding a
/// file and a directory for the bind mounts.
fn boot(name: &str) -> Vm {
    let release = repo_root().join("target/release");
    let found = assets::find_from(&release, Path::new("/etc/husk/config.toml"))
        .expect("kernel and initramfs next to target/release/husk: run `make`");
    let volume = scratch("volume");
    std::fs::write(volume.join("hello.txt"), "hello from the host\n").unwrap();
    std::fs::create_dir_all(volume.join("dir")).unwrap();
    std::fs::write(volume.join("dir/inside"), "in the dir\n").unwrap();
    let mut config = SandboxConfig::new(
        format!("container-{name}-{}", std::process::id()),
        found.kernel,
        found.initrd,
        rootfs(),
    );
    config.volumes = vec![Volume {
        host: volume,
        guest: VOLUME_GUEST.into(),
        read_only: false,
    }];
    config.memory_mib = 512;
    config.ready_timeout = READY_TIMEOUT;
    config.request_timeout = RUN_TIMEOUT;
    config.console = Some(scratch("console").join("console.log"));
    let sandbox = Sandbox::start(config).expect("the sandbox boots");
    let rootfs = sandbox.rootfs_path().to_owned();
    Vm { sandbox, rootfs }
}

impl Vm {
    fn control(&self) -> Client<UnixStream> {
        self.sandbox
            .agent()
            .control()
            .expect("a control connection")
    }

    fn stream(&self, process: &ProcessRef, kind: StreamKind) -> UnixStream {
        self.sandbox
            .agent()
            .open_stream(process, kind)
            .expect("a stdio stream")
    }

    /// The guest path of `path` inside the volume.
    fn in_volume(&self, path: &str) -> String {
        format!("{}{VOLUME_GUEST}/{path}", self.rootfs)
    }

    /// `husk spec`'s default, rooted at the rootfs share, running `sh -c script`.
    fn spec(&self, script: &str) -> Value {
        let mut v = husk::oci::spec::default_config(None);
        v["root"]["path"] = json!(self.rootfs);
        v["process"]["terminal"] = json!(false);
        v["process"]["args"] = json!(["sh", "-c", script]);
        v
    }

    /// Creates and starts container `id`, reads its stdout and stderr to the end and
    /// waits for it.
    fn run(&self, id: &str, spec: Value) -> (String, String, ExitStatus) {
        let init = ProcessRef::init(id);
        let out = self.stream(&init, StreamKind::Stdout);
        let err = self.stream(&init, StreamKind::Stderr);
        let mut c = self.control();
        c.create_container(id, parse(spec), OUT_ERR)
            .unwrap_or_else(|e| panic!("create {id}: {e}"));
        c.start_container(id)
            .unwrap_or_else(|e| panic!("start {id}: {e}"));
        let err = std::thread::spawn(move || read_all(err));
        let out = read_all(out);
        let err = err.join().unwrap();
        let status = self.wait(init);
        (out, err, status)
    }

    fn wait(&self, process: ProcessRef) -> ExitStatus {
        let mut c = self.control();
        c.get_ref().set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
        c.wait(process).expect("wait")
    }

    fn shutdown(self) {
        self.sandbox.shutdown().expect("the VM shuts down");
    }
}

fn parse(v: Value) -> Spec {
    serde_json::from_value(v).expect("a valid spec")
}

fn read_all(mut s: UnixStream) -> String {
    s.set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
    let mut v = Vec::new();
    s.read_to_end(&mut v).expect("reading a stream");
    String::from_utf8_lossy(&v).into_owned()
}

/// The value of `key=` on its own line of `out`.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {out:?}"))
        .trim()
}

fn agent_error<T: std::fmt::Debug>(r: Result<T, ProtocolError>) -> husk_protocol::AgentError {
    match r {
        Err(ProtocolError::Agent(e)) => e,
        other => panic!("expected an agent error, got {other:?}"),
    }
}

#[test]
fn the_container_is_built_as_its_spec_says() {
    let vm = boot("build");
    identity_user_caps_limits(&vm);
    masked_readonly_paths_and_bind_mounts(&vm);
    seccomp_profile_applies(&vm);
    failed_creates_name_the_step_and_leave_nothing(&vm);
    vm.shutdown();
}

/// /proc/1 is the container's process, hostname, user and groups, capabilities,
/// no_new_privs, rlimits, cwd, env, umask, sysctl.
fn identity_user_caps_limits(vm: &Vm) {
    let script = r#"
        echo "cmdline=$(tr '\0' ' ' < /proc/1/cmdline)"
        echo "pid=$$"
        echo "host=$(hostname)"
        echo "uid=$(id -u)"
        echo "gid=$(id -g)"
        echo "groups=$(id -G)"
        sed -n 's/^\(CapEff\|CapBnd\|CapPrm\|NoNewPrivs\|Seccomp\):\s*/\1=/p' /proc/self/status
        echo "nofile=$(ulimit -n)"
        echo "umask=$(umask)"
        echo "cwd=$(pwd)"
        echo "foo=$FOO"
        echo "shmmax=$(cat /proc/sys/kernel/shmmax)"
        echo "procs=$(ls /proc | grep -c '^[0-9]')"
        echo "kernel=$(uname -r)"
    "#;
    let mut spec = vm.spec(script);
    let caps = json!(["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    spec["process"]["capabilities"] = json!({
        "bounding": caps, "effective": caps, "permitted": caps,
        "inheritable": caps, "ambient": caps
    });
    spec["process"]["user"] =
        json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 23});
    spec["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 777, "soft": 777}]);
    spec["process"]["cwd"] = json!("/bin");
    spec["process"]["env"] = json!(["PATH=/bin", "FOO=bar baz"]);
    spec["hostname"] = json!("inside-husk");
    spec["linux"]["sysctl"] = json!({"kernel.shmmax": "12345678"});
    let (out, err, status) = vm.run("identity", spec);
    assert_eq!(
        status,
        ExitStatus::Exited(0),
        "stdout {out:?} stderr {err:?}"
    );
    // Its own pid namespace: the init is pid 1 there, and /proc/1 is the container's
    // process (not the agent); the kernel is husk's guest kernel.
    assert_eq!(field(&out, "pid"), "1", "{out}");
    assert!(field(&out, "cmdline").starts_with("sh -c"), "{out}");
    assert!(field(&out, "kernel").ends_with("-husk"), "{out}");
    assert_eq!(field(&out, "host"), "inside-husk");
    assert_eq!(field(&out, "uid"), "1000");
    assert_eq!(field(&out, "gid"), "1000");
    let groups: Vec<&str> = field(&out, "groups").split_whitespace().collect();
    assert!(groups.contains(&"10") && groups.contains(&"20"), "{out}");
    // CAP_CHOWN (0), CAP_KILL (5), CAP_NET_BIND_SERVICE (10): 0x421, kept past the exec
    // of a non-root user through the ambient set.
    assert_eq!(field(&out, "CapBnd"), "0000000000000421", "{out}");
    assert_eq!(field(&out, "CapEff"), "0000000000000421", "{out}");
    assert_eq!(field(&out, "CapPrm"), "0000000000000421", "{out}");
    assert_eq!(field(&out, "NoNewPrivs"), "1");
    assert_eq!(field(&out, "Seccomp"), "0", "no profile, no filter");
    assert_eq!(field(&out, "nofile"), "777");
    assert_eq!(field(&out, "umask"), "0027");
    assert_eq!(field(&out, "cwd"), "/bin");
    assert_eq!(field(&out, "foo"), "bar baz");
    assert_eq!(field(&out, "shmmax"), "12345678");
}

/// maskedPaths (a file reads empty, a directory is empty), readonlyPaths and the
/// read-only root refuse writes, a file bind and a read-only directory bind from a share.
fn masked_readonly_paths_and_bind_mounts(vm: &Vm) {
    let script = r#"
        echo "kcore=$(if [ -e /proc/kcore ]; then wc -c < /proc/kcore; else echo 0; fi)"
        echo "version=$(wc -c < /proc/version)"
        echo "secret=$(ls -A /etc/secret-dir | wc -l)"
        echo "sysrq=$( (echo x > /proc/sys/kernel/domainname) 2>&1)"
        echo "rootfs=$( (touch /new-file) 2>&1)"
        echo "bound=$(cat /etc/bound.txt)"
        echo "dir=$(cat /data/inside)"
        echo "dirwrite=$( (touch /data/new) 2>&1)"
        echo "shm=$(touch /dev/shm/ok && echo writable)"
        echo "devnull=$(ls -l /dev/null | cut -c1)"
        echo "ptmx=$(readlink /dev/ptmx)"
    "#;
    let mut spec = vm.spec(script);
    spec["linux"]["maskedPaths"]
        .as_array_mut()
        .unwrap()
        .extend([json!("/etc/secret-dir"), json!("/proc/version")]);
    let mounts = spec["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/etc/bound.txt", "type": "bind",
        "source": vm.in_volume("hello.txt"), "options": ["rbind", "ro"]}));
    mounts.push(json!({"destination": "/data", "type": "bind",
        "source": vm.in_volume("dir"),
        "options": ["rbind", "ro", "nosuid", "nodev", "noexec", "rprivate"]}));
    let (out, err, status) = vm.run("paths", spec);
    assert_eq!(
        status,
        ExitStatus::Exited(0),
        "stdout {out:?} stderr {err:?}"
    );
    // The guest kernel has no /proc/kcore; where it has one, it is masked.
    assert_eq!(field(&out, "kcore"), "0", "/proc/kcore is masked: {out}");
    assert_eq!(
        field(&out, "version"),
        "0",
        "a masked file reads empty: {out}"
    );
    assert_eq!(
        field(&out, "secret"),
        "0",
        "a masked directory is empty: {out}"
    );
    assert!(
        field(&out, "sysrq").contains("Read-only file system"),
        "/proc/sys is read-only: {out}"
    );
    assert!(
        field(&out, "rootfs").contains("Read-only file system"),
        "root.readonly: {out}"
    );
    assert_eq!(field(&out, "bound"), "hello from the host");
    assert_eq!(field(&out, "dir"), "in the dir");
    assert!(
        field(&out, "dirwrite").contains("Read-only file system"),
        "a ro bind: {out}"
    );
    assert_eq!(field(&out, "shm"), "writable");
    assert_eq!(field(&out, "devnull"), "c");
    assert_eq!(field(&out, "ptmx"), "pts/ptmx");
}

/// A profile denying mkdir with errnoRet 1 (EPERM); everything else allowed.
fn seccomp_profile_applies(vm: &Vm) {
    let script = r#"
        echo "mkdir=$( (mkdir /dev/shm/d) 2>&1)"
        echo "touch=$(touch /dev/shm/f && echo ok)"
        sed -n 's/^Seccomp:\s*/seccomp=/p' /proc/self/status
    "#;
    let mut spec = vm.spec(script);
    spec["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat", "no_such_syscall_anywhere"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
        ]
    });
    let (out, err, status) = vm.run("seccomp", spec);
    assert_eq!(
        status,
        ExitStatus::Exited(0),
        "stdout {out:?} stderr {err:?}"
    );
    assert!(
        field(&out, "mkdir").contains("Operation not permitted"),
        "mkdir is denied with EPERM: {out}"
    );
    assert_eq!(field(&out, "touch"), "ok");
    assert_eq!(field(&out, "seccomp"), "2", "a filter is loaded");
}

/// A create that fails says which step failed, and its id is free again.
fn failed_creates_name_the_step_and_leave_nothing(vm: &Vm) {
    let mut c = vm.control();
    let mut spec = vm.spec("true");
    spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/x", "type": "nosuchfs", "source": "none"}));
    let e = agent_error(c.create_container("broken", parse(spec), StdioConfig::default()));
    assert!(e.message.contains("mount nosuchfs on /x"), "{e}");
    let mut spec = vm.spec("true");
    spec["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/y", "type": "bind", "source": "/no/such/source", "options": ["bind"]}),
    );
    let e = agent_error(c.create_container("broken", parse(spec), StdioConfig::default()));
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains("/no/such/source"), "{e}");
    // Nothing was kept: the id works now.
    let (_, _, status) = vm.run("broken", vm.spec("exit 3"));
    assert_eq!(status, ExitStatus::Exited(3));
}

#[test]
fn execs_join_the_container_and_signal_all_ends_it() {
    let vm = boot("exec");
    let id = "long";
    let mut spec = vm.spec("sleep 1001 & sleep 1002 & wait");
    spec["hostname"] = json!("long-runner");
    let mut c = vm.control();
    c.create_container(id, parse(spec), StdioConfig::default())
        .expect("create");
    c.start_container(id).expect("start");

    // An exec as another user sees the container's pid namespace, hostname and root.
    let exec = ProcessRef::exec(id, "look");
    let out = vm.stream(&exec, StreamKind::Stdout);
    let err = vm.stream(&exec, StreamKind::Stderr);
    let mut p: Process = serde_json::from_value(json!({
        "args": ["sh", "-c", "ps -o pid,args; echo host=$(hostname); echo uid=$(id -u); echo pid=$$; sed -n 's/^CapEff:\\s*/capeff=/p' /proc/self/status"],
        "env": ["PATH=/bin"],
        "cwd": "/",
        "user": {"uid": 1000, "gid": 1000},
        "noNewPrivileges": true
    }))
    .unwrap();
    p.set_terminal(Some(false));
    c.exec_process(id, "look", p, OUT_ERR).expect("exec");
    let out = read_all(out);
    let err = read_all(err);
    assert_eq!(vm.wait(exec), ExitStatus::Exited(0), "{out} {err}");
    // The exec is in the container's pid namespace: pid 1 there is the init.
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("sleep 1001")),
        "{out}"
    );
    assert_eq!(field(&out, "host"), "long-runner");
    assert_eq!(field(&out, "uid"), "1000");
    // A non-root exec without capabilities in its spec keeps none after its exec.
    assert_eq!(field(&out, "capeff"), "0000000000000000");

    // ListProcesses: the init, its two sleeps and a running exec, pids as inside.
    let sleeper = ProcessRef::exec(id, "sleeper");
    let p: Process = serde_json::from_value(json!({
        "args": ["sleep", "1003"], "env": ["PATH=/bin"], "cwd": "/",
        "user": {"uid": 0, "gid": 0}, "terminal": false
    }))
    .unwrap();
    c.exec_process(id, "sleeper", p, StdioConfig::default())
        .expect("exec sleeper");
    let procs = c.list_processes(id).expect("list");
    assert_eq!(procs[0].pid, 1, "{procs:?}");
    assert!(
        procs[0].command.starts_with("sh -c sleep 1001"),
        "{procs:?}"
    );
    for cmd in ["sleep 1001", "sleep 1002", "sleep 1003"] {
        assert!(procs.iter().any(|p| p.command == cmd), "{cmd}: {procs:?}");
    }
    assert_eq!(procs.len(), 4, "{procs:?}");

    // Signal all: every process of the container, execs included, and nothing else.
    c.signal_all(id, libc::SIGKILL).expect("signal all");
    assert_eq!(
        vm.wait(ProcessRef::init(id)),
        ExitStatus::Signaled(libc::SIGKILL)
    );
    assert_eq!(vm.wait(sleeper), ExitStatus::Signaled(libc::SIGKILL));
    assert_eq!(c.list_processes(id).expect("list").len(), 0);
    let e = agent_error(c.signal_all(id, libc::SIGKILL));
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    // And the agent still serves.
    c.ping().expect("ping");
    vm.shutdown();
}
