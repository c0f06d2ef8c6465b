//! The OCI spec for running one command in a sandbox's rootfs (`husk vm run`): runc's
//! defaults (oci-spec's `Spec::default()`), with the root at the guest path where the
//! rootfs share is mounted and the process the caller asked for.
//!
//! One change to the defaults: no pid namespace. The command is the user's own process,
//! as under `chroot`: the init of a pid namespace ignores every signal it has no handler
//! for (`husk vm run -- sleep 100` would shrug off the SIGTERM husk forwards), and the
//! VM already holds nothing else. Everything else (mount, uts, ipc, cgroup namespaces,
//! mounts, masked paths, capabilities, rlimits, no_new_privs) is the OCI default.

use oci_spec::runtime::{BoxBuilder, LinuxNamespaceType, Process, Root, Spec};

/// `$PATH` of the process (the OCI/runc default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub args: Vec<String>,
    /// `KEY=VALUE` entries; `PATH` defaults to [`DEFAULT_PATH`] when absent.
    pub env: Vec<String>,
    /// Absolute path inside the container.
    pub cwd: String,
    /// `Some((rows, cols))`: a tty of that size.
    pub tty: Option<(u16, u16)>,
}

/// The spec for `command` with its root at `root_path` (a guest path) and `hostname`.
pub fn command_spec(root_path: &str, hostname: &str, command: &Command) -> Spec {
    let mut env = command.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    if command.tty.is_some() && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".to_string());
    }
    let mut process = Process::default();
    process.set_args(Some(command.args.clone()));
    process.set_env(Some(env));
    process.set_cwd(command.cwd.clone().into());
    process.set_terminal(Some(command.tty.is_some()));
    if let Some((rows, cols)) = command.tty {
        let size = BoxBuilder::default()
            .height(u64::from(rows))
            .width(u64::from(cols))
            .build();
        process.set_console_size(size.ok());
    }
    let mut root = Root::default();
    root.set_path(root_path.into());
    root.set_readonly(Some(false));
    let mut spec = Spec::default();
    spec.set_process(Some(process));
    spec.set_root(Some(root));
    spec.set_hostname(Some(hostname.to_string()));
    if let Some(namespaces) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    {
        namespaces.retain(|n| n.typ() != LinuxNamespaceType::Pid);
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_carries_the_command() {
        let cmd = Command {
            args: vec!["sh".into(), "-c".into(), "exit 7".into()],
            env: vec!["A=b".into()],
            cwd: "/tmp".into(),
            tty: Some((30, 100)),
        };
        let spec = command_spec("/run/husk/rootfs", "sb", &cmd);
        assert_eq!(
            spec.root().as_ref().unwrap().path().to_str(),
            Some("/run/husk/rootfs")
        );
        assert_eq!(spec.hostname().as_deref(), Some("sb"));
        let namespaces = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        assert!(namespaces
            .iter()
            .all(|n| n.typ() != LinuxNamespaceType::Pid));
        assert!(namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Mount));
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &cmd.args);
        let env = p.env().as_ref().unwrap();
        assert_eq!(env, &[DEFAULT_PATH, "A=b", "TERM=xterm"]);
        assert_eq!(p.cwd().to_str(), Some("/tmp"));
        assert_eq!(p.terminal(), Some(true));
        let size = p.console_size().unwrap();
        assert_eq!((size.height(), size.width()), (30, 100));

        let plain = Command {
            env: vec!["PATH=/bin".into()],
            tty: None,
            ..cmd
        };
        let spec = command_spec("/r", "sb", &plain);
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.env().as_ref().unwrap(), &["PATH=/bin"]);
        assert_eq!(p.terminal(), Some(false));
        assert!(p.console_size().is_none());
    }
}
