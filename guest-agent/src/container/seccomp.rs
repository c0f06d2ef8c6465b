//! `linux.seccomp` compiled to a classic BPF program for `seccomp(SECCOMP_SET_MODE_FILTER)`
//! (x86_64 only), without libseccomp.
//!
//! The program, in order:
//! 1. the architecture must be x86_64 (`AUDIT_ARCH_X86_64`), else the process is killed
//!    (libseccomp's default for a foreign architecture); x32 syscall numbers (bit 30) get
//!    the default action, since the guest kernel has no x32 ABI anyway;
//! 2. one block per (rule, syscall name): `nr == N` and every argument condition of the
//!    rule (they are ANDed, as libseccomp does) -> the rule's action;
//! 3. the default action.
//!
//! Blocks are tried in the profile's order, so the first matching rule wins. Names this
//! table does not know are skipped (runc/libseccomp do the same: profiles name syscalls
//! of every architecture and kernel version). Argument values are 64-bit and BPF is
//! 32-bit: each comparison looks at the high word, then the low word.

use husk_protocol::{AgentError, ErrorKind};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator,
};

use super::syscalls;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// `struct seccomp_data`: nr at 0, arch at 4, args[i] at 16 + 8i (low word first).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const fn arg_low(i: u32) -> u32 {
    16 + 8 * i
}
const fn arg_high(i: u32) -> u32 {
    16 + 8 * i + 4
}

const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_KILL_THREAD: u32 = 0;
const SECCOMP_RET_TRAP: u32 = 0x0003_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_TRACE: u32 = 0x7ff0_0000;
const SECCOMP_RET_LOG: u32 = 0x7ffc_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
/// The kernel's limit on a filter's length.
const BPF_MAXINSNS: usize = 4096;

// Classic BPF opcodes (linux/filter.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGT_K: u16 = 0x25;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_JMP_JSET_K: u16 = 0x45;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_RET_K: u16 = 0x06;

/// A compiled filter and the flags to load it with.
#[derive(Debug, Clone)]
pub struct Filter {
    pub program: Vec<libc::sock_filter>,
    pub flags: libc::c_uint,
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn invalid(message: String) -> AgentError {
    AgentError::new(ErrorKind::InvalidArgument, message)
}

/// The return value for `action` with its errno.
fn action_value(action: LinuxSeccompAction, errno_ret: Option<u32>) -> Result<u32, AgentError> {
    // runc's default errno for SCMP_ACT_ERRNO without errnoRet is EPERM.
    let errno = errno_ret.unwrap_or(libc::EPERM as u32) & 0xffff;
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SECCOMP_RET_KILL_THREAD
        }
        LinuxSeccompAction::ScmpActKillProcess => SECCOMP_RET_KILL_PROCESS,
        LinuxSeccompAction::ScmpActTrap => SECCOMP_RET_TRAP,
        LinuxSeccompAction::ScmpActErrno => SECCOMP_RET_ERRNO | errno,
        LinuxSeccompAction::ScmpActTrace => SECCOMP_RET_TRACE | errno,
        LinuxSeccompAction::ScmpActLog => SECCOMP_RET_LOG,
        LinuxSeccompAction::ScmpActAllow => SECCOMP_RET_ALLOW,
        LinuxSeccompAction::ScmpActNotify => return Err(AgentError::new(
            ErrorKind::Unsupported,
            "seccomp action SCMP_ACT_NOTIFY is not supported (no seccomp agent in a husk guest)",
        )),
    })
}

/// Where a conditional jump of an argument check goes.
#[derive(Clone, Copy)]
enum To {
    /// The next instruction.
    Next,
    /// `n` instructions further than the next one.
    Skip(u8),
    /// Out of this rule's block: the condition does not hold.
    Fail,
}

/// One instruction of a rule block before its jumps to `Fail` are resolved.
struct Draft {
    code: u16,
    jt: To,
    jf: To,
    k: u32,
}

fn ld(offset: u32) -> Draft {
    Draft {
        code: BPF_LD_W_ABS,
        jt: To::Next,
        jf: To::Next,
        k: offset,
    }
}

fn jmp(code: u16, k: u32, jt: To, jf: To) -> Draft {
    Draft { code, jt, jf, k }
}

/// The checks of one argument condition: falls through when it holds, `Fail` otherwise.
fn condition(arg: &LinuxSeccompArg) -> Result<Vec<Draft>, AgentError> {
    let index = arg.index() as u32;
    if index > 5 {
        return Err(invalid(format!(
            "seccomp argument index {index} is out of range (0..=5)"
        )));
    }
    let (hi, lo) = (arg_high(index), arg_low(index));
    let value = arg.value();
    let (vh, vl) = ((value >> 32) as u32, value as u32);
    use LinuxSeccompOperator as Op;
    use To::{Fail, Next, Skip};
    Ok(match arg.op() {
        Op::ScmpCmpEq => vec![
            ld(hi),
            jmp(BPF_JMP_JEQ_K, vh, Next, Fail),
            ld(lo),
            jmp(BPF_JMP_JEQ_K, vl, Next, Fail),
        ],
        Op::ScmpCmpNe => vec![
            ld(hi),
            jmp(BPF_JMP_JEQ_K, vh, Next, Skip(2)),
            ld(lo),
            jmp(BPF_JMP_JEQ_K, vl, Fail, Next),
        ],
        // a > v: high words decide unless equal, then the low words.
        Op::ScmpCmpGt | Op::ScmpCmpGe => {
            let last = if arg.op() == Op::ScmpCmpGt {
                BPF_JMP_JGT_K
            } else {
                BPF_JMP_JGE_K
            };
            vec![
                ld(hi),
                jmp(BPF_JMP_JGT_K, vh, Skip(3), Next),
                jmp(BPF_JMP_JEQ_K, vh, Next, Fail),
                ld(lo),
                jmp(last, vl, Next, Fail),
            ]
        }
        // a < v is !(a >= v); a <= v is !(a > v).
        Op::ScmpCmpLt | Op::ScmpCmpLe => {
            let last = if arg.op() == Op::ScmpCmpLt {
                BPF_JMP_JGE_K
            } else {
                BPF_JMP_JGT_K
            };
            vec![
                ld(hi),
                jmp(BPF_JMP_JGT_K, vh, Fail, Next),
                jmp(BPF_JMP_JEQ_K, vh, Next, Skip(2)),
                ld(lo),
                jmp(last, vl, Fail, Next),
            ]
        }
        // (a & value) == valueTwo, as runc maps it to libseccomp's MASKED_EQ.
        Op::ScmpCmpMaskedEq => {
            let datum = arg.value_two().unwrap_or(0);
            let (dh, dl) = ((datum >> 32) as u32, datum as u32);
            vec![
                ld(hi),
                Draft {
                    code: BPF_ALU_AND_K,
                    jt: Next,
                    jf: Next,
                    k: vh,
                },
                jmp(BPF_JMP_JEQ_K, dh, Next, Fail),
                ld(lo),
                Draft {
                    code: BPF_ALU_AND_K,
                    jt: Next,
                    jf: Next,
                    k: vl,
                },
                jmp(BPF_JMP_JEQ_K, dl, Next, Fail),
            ]
        }
    })
}

/// Resolves a block's jumps: `Fail` goes to the first instruction after the block.
fn emit(block: Vec<Draft>, out: &mut Vec<libc::sock_filter>) -> Result<(), AgentError> {
    let len = block.len();
    for (i, d) in block.into_iter().enumerate() {
        let resolve = |t: To| -> Result<u8, AgentError> {
            match t {
                To::Next => Ok(0),
                To::Skip(n) => Ok(n),
                To::Fail => u8::try_from(len - i - 1)
                    .map_err(|_| invalid("a seccomp rule has too many argument conditions".into())),
            }
        };
        out.push(insn(d.code, resolve(d.jt)?, resolve(d.jf)?, d.k));
    }
    Ok(())
}

/// Compiles `profile` for x86_64.
pub fn compile(profile: &LinuxSeccomp) -> Result<Filter, AgentError> {
    if let Some(arches) = profile.architectures() {
        let native = arches
            .iter()
            .any(|a| matches!(a, Arch::ScmpArchX86_64 | Arch::ScmpArchNative));
        // Profiles list every architecture they were written for; only x86_64 runs here.
        if !arches.is_empty() && !native {
            return Err(invalid(format!(
                "seccomp profile does not cover x86_64 (architectures: {arches:?})"
            )));
        }
    }
    let default = action_value(profile.default_action(), profile.default_errno_ret())?;
    let mut program = vec![
        insn(BPF_LD_W_ABS, 0, 0, DATA_ARCH),
        insn(BPF_JMP_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        insn(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        insn(BPF_LD_W_ABS, 0, 0, DATA_NR),
        insn(BPF_JMP_JSET_K, 0, 1, X32_SYSCALL_BIT),
        insn(BPF_RET_K, 0, 0, default),
    ];
    for rule in profile.syscalls().as_deref().unwrap_or(&[]) {
        let action = action_value(rule.action(), rule.errno_ret())?;
        if action == default {
            continue; // nothing to say that the default does not
        }
        let mut checks = Vec::new();
        for arg in rule.args().as_deref().unwrap_or(&[]) {
            checks.extend(condition(arg)?);
        }
        for name in rule.names() {
            let Some(nr) = syscalls::number(name) else {
                continue;
            };
            // ld nr; jeq nr ? next : out; <conditions>; ret action
            let mut block = vec![ld(DATA_NR), jmp(BPF_JMP_JEQ_K, nr, To::Next, To::Fail)];
            block.extend(checks.iter().map(|d| Draft {
                code: d.code,
                jt: d.jt,
                jf: d.jf,
                k: d.k,
            }));
            block.push(Draft {
                code: BPF_RET_K,
                jt: To::Next,
                jf: To::Next,
                k: action,
            });
            emit(block, &mut program)?;
        }
    }
    program.push(insn(BPF_RET_K, 0, 0, default));
    if program.len() > BPF_MAXINSNS {
        return Err(invalid(format!(
            "seccomp profile compiles to {} BPF instructions, more than the kernel's {BPF_MAXINSNS}",
            program.len()
        )));
    }
    let mut flags = 0;
    for f in profile.flags().as_deref().unwrap_or(&[]) {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 1,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => 2,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => 4,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 32,
        };
    }
    Ok(Filter { program, flags })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    /// Loads `filter` in a forked child (with no_new_privs), runs `probe` there and
    /// returns its exit code: the filter is tested by the kernel itself.
    fn in_child(filter: &Filter, probe: fn() -> i32) -> i32 {
        // SAFETY: the child only makes syscalls and _exits; the test harness's threads
        // are not touched in it.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                let prog = libc::sock_fprog {
                    len: filter.program.len() as u16,
                    filter: filter.program.as_ptr() as *mut _,
                };
                if libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    filter.flags,
                    &prog as *const libc::sock_fprog,
                ) != 0
                {
                    libc::_exit(200);
                }
                libc::_exit(probe());
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            assert!(libc::WIFEXITED(status), "child status {status:#x}");
            libc::WEXITSTATUS(status)
        }
    }

    fn errno() -> i32 {
        // SAFETY: this thread's errno.
        unsafe { *libc::__errno_location() }
    }

    #[test]
    fn errno_rule_denies_mkdir_only() {
        let f = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],
                "syscalls":[{"names":["no_such_syscall","mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        ))
        .unwrap();
        let code = in_child(&f, || {
            // SAFETY: plain syscalls.
            let r = unsafe { libc::mkdir(c"/nonexistent-dir/x".as_ptr(), 0o755) };
            if r == 0 || errno() != libc::EPERM {
                return 1;
            }
            // Other calls still work.
            if unsafe { libc::getpid() } <= 0 {
                return 2;
            }
            0
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn default_errno_with_allow_list() {
        let f = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,
                "syscalls":[{"names":["exit","exit_group","write","getpid","brk","mmap","munmap","rt_sigreturn"],"action":"SCMP_ACT_ALLOW"}]}"#,
        ))
        .unwrap();
        let code = in_child(&f, || {
            // SAFETY: plain syscall (glibc's getppid() would not set errno: it cannot fail).
            let r = unsafe { libc::syscall(libc::SYS_getppid) };
            if r != -1 || errno() != libc::ENOSYS {
                return 1;
            }
            0
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn argument_conditions() {
        // dup(fd): EBADE when fd == 0, EXDEV when fd > 2^32 + 5 (never), ENOTNAM when
        // fd & 0xf0 == 0x10 (fd 16..31); personality: ELNRNG when arg != 0xffffffff.
        let f = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["dup"],"action":"SCMP_ACT_ERRNO","errnoRet":52,"args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]},
                {"names":["dup"],"action":"SCMP_ACT_ERRNO","errnoRet":18,"args":[{"index":0,"value":4294967301,"op":"SCMP_CMP_GT"}]},
                {"names":["dup"],"action":"SCMP_ACT_ERRNO","errnoRet":55,"args":[{"index":0,"value":240,"valueTwo":16,"op":"SCMP_CMP_MASKED_EQ"}]},
                {"names":["dup"],"action":"SCMP_ACT_ERRNO","errnoRet":48,"args":[{"index":0,"value":100,"op":"SCMP_CMP_GE"},{"index":0,"value":200,"op":"SCMP_CMP_LT"}]},
                {"names":["personality"],"action":"SCMP_ACT_ERRNO","errnoRet":58,"args":[{"index":0,"value":4294967295,"op":"SCMP_CMP_NE"}]}
            ]}"#,
        ))
        .unwrap();
        let code = in_child(&f, || {
            // SAFETY: plain syscalls on fds of this child.
            unsafe {
                let denied = |fd: i32, want: i32| libc::dup(fd) == -1 && errno() == want;
                if !denied(0, 52) {
                    return 1;
                }
                if libc::dup(1) < 0 {
                    return 2; // allowed
                }
                if !denied(20, 55) || !denied(150, 48) {
                    return 3;
                }
                // 1000: >= 100 but not < 200: allowed by the rules (EBADF from the kernel).
                if libc::dup(1000) != -1 || errno() != libc::EBADF {
                    return 4;
                }
                // 0xffffffff queries the persona: allowed; anything else: denied.
                if libc::personality(0xffff_ffff) == -1 {
                    return 5;
                }
                if libc::personality(0) != -1 || errno() != 58 {
                    return 6;
                }
            }
            0
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn notify_is_refused_by_name_and_foreign_profiles_too() {
        let e = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        ))
        .unwrap_err();
        assert!(e.message.contains("SCMP_ACT_NOTIFY"), "{e}");
        let e = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_AARCH64"]}"#,
        ))
        .unwrap_err();
        assert!(e.message.contains("x86_64"), "{e}");
        // An unknown action does not even decode, and the error names it.
        let e = serde_json::from_str::<LinuxSeccomp>(r#"{"defaultAction":"SCMP_ACT_FROB"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("SCMP_ACT_FROB"), "{e}");
    }
}
