//! OCI hooks, run on the host: the hook's `path` with its `args` (`args[0]` is argv[0])
//! and exactly its `env`, the container's state as JSON on stdin, and an optional
//! timeout in seconds after which it is killed.
//!
//! prestart, createRuntime and createContainer run during `create`: one failing fails
//! `create`. poststart and poststop failures are warnings (the runtime spec says the
//! lifecycle goes on), so callers get the error and decide.

use std::io::{self, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks};

use super::state::OciState;

/// The hook points husk runs, in lifecycle order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    Poststart,
    Poststop,
}

impl HookKind {
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }

    /// This kind's hooks in `hooks`, in order.
    #[allow(deprecated)] // prestart is deprecated in the spec, still used by clients
    pub fn select(self, hooks: &Hooks) -> &[Hook] {
        let list = match self {
            HookKind::Prestart => hooks.prestart(),
            HookKind::CreateRuntime => hooks.create_runtime(),
            HookKind::CreateContainer => hooks.create_container(),
            HookKind::Poststart => hooks.poststart(),
            HookKind::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or(&[])
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{kind} hook {path}: cannot run: {source}")]
    Spawn {
        kind: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{kind} hook {path} failed: {status}{}", stderr_suffix(.stderr))]
    Failed {
        kind: &'static str,
        path: String,
        status: String,
        stderr: String,
    },
    #[error("{kind} hook {path} timed out after {secs} s{}", stderr_suffix(.stderr))]
    TimedOut {
        kind: &'static str,
        path: String,
        secs: i64,
        stderr: String,
    },
}

/// The hook's stderr as the tail of a one-line message.
fn stderr_suffix(stderr: &str) -> String {
    let text: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {}", text.join(" / "))
    }
}

/// Most of a hook's stderr kept for the message.
const STDERR_LIMIT: usize = 4096;
/// How long a finished hook's stderr may take to reach end-of-file.
const STDERR_GRACE: Duration = Duration::from_millis(200);

/// Runs every hook of `kind` in order, each with `state` on stdin; stops at the first
/// failure.
pub fn run(kind: HookKind, hooks: Option<&Hooks>, state: &OciState) -> Result<(), HookError> {
    let Some(hooks) = hooks else {
        return Ok(());
    };
    let input = serde_json::to_vec(state).unwrap_or_default();
    for hook in kind.select(hooks) {
        run_one(kind, hook, &input)?;
    }
    Ok(())
}

fn run_one(kind: HookKind, hook: &Hook, input: &[u8]) -> Result<(), HookError> {
    let path = hook.path().display().to_string();
    let kind = kind.name();
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args().as_deref() {
        if let Some((argv0, rest)) = args.split_first() {
            std::os::unix::process::CommandExt::arg0(&mut cmd, argv0);
            cmd.args(rest);
        }
    }
    cmd.env_clear();
    for kv in hook.env().as_deref().unwrap_or(&[]) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        cmd.env(k, v);
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        kind,
        path: path.clone(),
        source,
    })?;
    // A hook that does not read its stdin gets EPIPE, which is its business.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    // The text so far is shared, so that what a hook wrote is kept even when a
    // daemon it left behind holds its stderr open past its exit.
    let text = Arc::new(Mutex::new(Vec::new()));
    let (eof_tx, eof_rx) = mpsc::channel::<()>();
    if let Some(mut err) = child.stderr.take() {
        let text = text.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 1024];
            loop {
                match err.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Ok(mut t) = text.lock() {
                            let room = STDERR_LIMIT.saturating_sub(t.len());
                            t.extend_from_slice(&chunk[..n.min(room)]);
                        }
                    }
                }
            }
            let _ = eof_tx.send(());
        });
    }
    let stderr = move || {
        let _ = eof_rx.recv_timeout(STDERR_GRACE);
        let t = text.lock().map(|t| t.clone()).unwrap_or_default();
        String::from_utf8_lossy(&t).into_owned()
    };
    let deadline = hook.timeout().map(|secs| {
        (
            secs,
            Instant::now() + Duration::from_secs(secs.max(0) as u64),
        )
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(source) => {
                break Err(HookError::Spawn {
                    kind,
                    path: path.clone(),
                    source,
                })
            }
        }
        if let Some((secs, at)) = deadline {
            if Instant::now() >= at {
                // The whole process group: the hook and whatever it started.
                // SAFETY: plain syscall; the group is the hook's own (process_group(0)).
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(HookError::TimedOut {
                    kind,
                    path,
                    secs,
                    stderr: stderr(),
                });
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }?;
    if status.success() {
        return Ok(());
    }
    Err(HookError::Failed {
        kind,
        path,
        status: status.to_string(),
        stderr: stderr(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::state::Status;
    use oci_spec::runtime::{HookBuilder, HooksBuilder};

    fn state() -> OciState {
        OciState {
            oci_version: crate::oci::OCI_VERSION.into(),
            id: "c1".into(),
            pid: 42,
            status: Status::Creating,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: "2026-11-27T03:17:05Z".into(),
            annotations: Default::default(),
            owner: "root".into(),
        }
    }

    fn sh(script: &str, timeout: Option<i64>) -> Hook {
        let mut b = HookBuilder::default()
            .path("/bin/sh")
            .args(vec!["sh".to_string(), "-c".to_string(), script.to_string()])
            .env(vec!["HOOK_VAR=v1".to_string()]);
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build().unwrap()
    }

    #[test]
    fn hooks_get_state_args_and_env_in_order() {
        let dir = std::env::temp_dir().join(format!("husk-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let script = |tag: &str| {
            format!(
                "echo {tag} $HOOK_VAR ${{HOME:-nohome}} \"$(cat)\" >> {}",
                out.display()
            )
        };
        let hooks = HooksBuilder::default()
            .create_runtime(vec![sh(&script("one"), Some(10)), sh(&script("two"), None)])
            .build()
            .unwrap();
        run(HookKind::CreateRuntime, Some(&hooks), &state()).unwrap();
        run(HookKind::Poststop, Some(&hooks), &state()).unwrap();
        run(HookKind::Poststop, None, &state()).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("one v1 nohome {"), "{text}");
        assert!(lines[1].starts_with("two "), "{text}");
        let v: serde_json::Value =
            serde_json::from_str(&lines[0]["one v1 nohome ".len()..]).unwrap();
        assert_eq!(v["id"], "c1");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["status"], "creating");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failing_hook_stops_the_rest_and_says_why() {
        let hooks = HooksBuilder::default()
            .create_container(vec![
                sh("echo 'no network' >&2; echo more >&2; exit 3", None),
                sh("exit 0", None),
            ])
            .build()
            .unwrap();
        let e = run(HookKind::CreateContainer, Some(&hooks), &state())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "createContainer hook /bin/sh failed: exit status: 3: no network / more"
        );
    }

    #[test]
    fn a_slow_hook_is_killed_at_its_timeout() {
        let hooks = HooksBuilder::default()
            .poststart(vec![sh("echo waiting >&2; exec sleep 100", Some(1))])
            .build()
            .unwrap();
        let started = Instant::now();
        let e = run(HookKind::Poststart, Some(&hooks), &state())
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(20));
        assert_eq!(e, "poststart hook /bin/sh timed out after 1 s: waiting");
    }

    #[test]
    fn a_daemon_holding_the_hooks_stderr_does_not_hang_it() {
        let hooks = HooksBuilder::default()
            .poststop(vec![sh("echo bye >&2; sleep 3 & exit 2", None)])
            .build()
            .unwrap();
        let started = Instant::now();
        let e = run(HookKind::Poststop, Some(&hooks), &state())
            .unwrap_err()
            .to_string();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(e, "poststop hook /bin/sh failed: exit status: 2: bye");
    }

    #[test]
    fn a_missing_hook_binary_is_an_error() {
        let hook = HookBuilder::default()
            .path("/nonexistent/hook")
            .build()
            .unwrap();
        let hooks = HooksBuilder::default()
            .prestart(vec![hook])
            .build()
            .unwrap();
        let e = run(HookKind::Prestart, Some(&hooks), &state())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("prestart hook /nonexistent/hook: cannot run:"),
            "{e}"
        );
    }
}
