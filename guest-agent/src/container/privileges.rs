//! What one OCI `process` asks of its own credentials, in runc's order: rlimits and
//! oom_score_adj while still root, the capability bounding set, then (after the uid
//! switch) the capability sets, no_new_privs and the seccomp filter last.
//! Shared by a container's init and its execs (an exec gets its own `process`, and the
//! container's seccomp profile).

use husk_protocol::AgentError;
use oci_spec::runtime::{PosixRlimitType, Process};

use super::capabilities;
use super::seccomp::Filter;
use super::setup::{Step, Steps};

fn resource(t: PosixRlimitType) -> libc::__rlimit_resource_t {
    use PosixRlimitType as R;
    match t {
        R::RlimitCpu => libc::RLIMIT_CPU,
        R::RlimitFsize => libc::RLIMIT_FSIZE,
        R::RlimitData => libc::RLIMIT_DATA,
        R::RlimitStack => libc::RLIMIT_STACK,
        R::RlimitCore => libc::RLIMIT_CORE,
        R::RlimitRss => libc::RLIMIT_RSS,
        R::RlimitNproc => libc::RLIMIT_NPROC,
        R::RlimitNofile => libc::RLIMIT_NOFILE,
        R::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        R::RlimitAs => libc::RLIMIT_AS,
        R::RlimitLocks => libc::RLIMIT_LOCKS,
        R::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        R::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        R::RlimitNice => libc::RLIMIT_NICE,
        R::RlimitRtprio => libc::RLIMIT_RTPRIO,
        R::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// oom_score_adj first: it is written through the guest's /proc (the child's own entry),
/// before the namespaces and the pivot change what /proc is.
pub fn oom_step(steps: &mut Steps, process: &Process) -> Result<(), AgentError> {
    if let Some(adj) = process.oom_score_adj() {
        steps.before_user(
            format!("setting oom_score_adj to {adj}"),
            Step::WriteFile {
                path: c"/proc/self/oom_score_adj".to_owned(),
                data: adj.to_string().into_bytes(),
            },
        );
    }
    Ok(())
}

/// rlimits, capabilities, no_new_privs and seccomp for `process`.
pub fn steps(
    steps: &mut Steps,
    process: &Process,
    seccomp: Option<&Filter>,
) -> Result<(), AgentError> {
    for r in process.rlimits().as_deref().unwrap_or(&[]) {
        steps.before_user(
            format!("setrlimit({}, {}, {})", r.typ(), r.soft(), r.hard()),
            Step::Rlimit {
                resource: resource(r.typ()),
                soft: r.soft(),
                hard: r.hard(),
            },
        );
    }
    let nnp = process.no_new_privileges().unwrap_or(false);
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it while the
    // process is still root with every capability (runc does the same).
    if let (Some(filter), false) = (seccomp, nnp) {
        steps.before_user("loading the seccomp filter", seccomp_step(filter));
    }
    capabilities::steps(steps, process.capabilities().as_ref())?;
    if nnp {
        steps.after_user(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            Step::Prctl {
                option: libc::PR_SET_NO_NEW_PRIVS,
                arg2: 1,
                arg3: 0,
            },
        );
        if let Some(filter) = seccomp {
            steps.after_user("loading the seccomp filter", seccomp_step(filter));
        }
    }
    Ok(())
}

fn seccomp_step(filter: &Filter) -> Step {
    Step::Seccomp {
        program: filter.program.clone(),
        flags: filter.flags,
    }
}
