//! The container's build as a list of precomputed steps, run in the child between fork
//! and exec ([`ChildSetup`]).
//!
//! Everything a step needs (paths as C strings, mount flags, the seccomp program, open
//! fds) is built by the agent before the fork; the child only makes async-signal-safe
//! syscalls on that data. A failed step is reported as its index and errno, and the agent
//! turns that into a message naming the step ("mount proc on /proc: ...").

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};

use husk_protocol::process::{ChildSetup, SetupPhase};
use husk_protocol::{AgentError, ErrorKind};
use nix::errno::Errno;

use crate::errno_text;

/// One syscall-sized step of the build.
#[derive(Debug)]
pub enum Step {
    /// `unshare(flags)`.
    Unshare(libc::c_int),
    /// `setns(fd, nstype)`: join a namespace opened before the fork.
    Setns { fd: OwnedFd, nstype: libc::c_int },
    /// `write(fd, data)` on a file opened before the fork (`cgroup.procs`).
    WriteFd { fd: OwnedFd, data: Vec<u8> },
    /// Open `path` for writing and write `data` (sysctl, oom_score_adj).
    WriteFile { path: CString, data: Vec<u8> },
    /// `mkdir(path, mode)`; an existing path is fine.
    Mkdir { path: CString, mode: libc::mode_t },
    /// Creates an empty file at `path` if nothing is there (a file bind's target).
    Touch { path: CString },
    /// `mount(2)`.
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// `linux.maskedPaths`: a read-only empty tmpfs over a directory, /dev/null over
    /// anything else; a missing path is skipped.
    MaskPath { path: CString },
    /// `linux.readonlyPaths`: bound on itself, remounted read-only; missing is skipped.
    ReadonlyPath { path: CString },
    /// `pivot_root` into `root` and detach the old root (runc's `pivot_root(".", ".")`).
    PivotRoot { root: CString },
    /// `mknod(path, mode, dev)`, `chmod` (past the umask) and `chown(path, uid, gid)`; an
    /// existing file is replaced.
    Mknod {
        path: CString,
        mode: libc::mode_t,
        dev: libc::dev_t,
        uid: libc::uid_t,
        gid: libc::gid_t,
    },
    /// `symlink(target, link)`; an existing link is fine.
    Symlink { target: CString, link: CString },
    /// `sethostname`.
    Hostname(Vec<u8>),
    /// `setrlimit`.
    Rlimit {
        resource: libc::__rlimit_resource_t,
        soft: u64,
        hard: u64,
    },
    /// `prctl(option, arg2, arg3)`.
    Prctl {
        option: libc::c_int,
        arg2: libc::c_ulong,
        arg3: libc::c_ulong,
    },
    /// `prctl` whose failure is ignored (raising an ambient capability that is not also
    /// permitted and inheritable: runc ignores those too).
    PrctlBestEffort {
        option: libc::c_int,
        arg2: libc::c_ulong,
        arg3: libc::c_ulong,
    },
    /// `capset` (version 3: two 32-bit halves of each set).
    Capset {
        effective: u64,
        permitted: u64,
        inheritable: u64,
    },
    /// `seccomp(SECCOMP_SET_MODE_FILTER, flags, program)`.
    Seccomp {
        program: Vec<libc::sock_filter>,
        flags: libc::c_uint,
    },
}

/// A step and what it does, in words, for its error message.
#[derive(Debug)]
struct Named {
    step: Step,
    what: String,
}

/// The steps of one process's build, in the two phases of [`ChildSetup`].
#[derive(Debug, Default)]
pub struct Steps {
    before_user: Vec<Named>,
    after_user: Vec<Named>,
}

impl Steps {
    /// Adds `step` to the phase run before the uid switch.
    pub fn before_user(&mut self, what: impl Into<String>, step: Step) {
        self.before_user.push(Named {
            step,
            what: what.into(),
        });
    }

    /// Adds `step` to the phase run after the uid switch.
    pub fn after_user(&mut self, what: impl Into<String>, step: Step) {
        self.after_user.push(Named {
            step,
            what: what.into(),
        });
    }

    fn named(&self, index: u32) -> Option<&Named> {
        let i = index as usize;
        if i < self.before_user.len() {
            self.before_user.get(i)
        } else {
            self.after_user.get(i - self.before_user.len())
        }
    }
}

impl ChildSetup for Steps {
    unsafe fn run(&self, phase: SetupPhase) -> Result<(), (u32, i32)> {
        let (steps, first) = match phase {
            SetupPhase::BeforeUser => (&self.before_user, 0),
            SetupPhase::AfterUser => (&self.after_user, self.before_user.len()),
        };
        for (i, named) in steps.iter().enumerate() {
            if let Err(e) = run_step(&named.step) {
                return Err(((first + i) as u32, e));
            }
        }
        Ok(())
    }

    fn describe(&self, step: u32, errno: Errno) -> AgentError {
        let what = self
            .named(step)
            .map(|n| n.what.as_str())
            .unwrap_or("container setup");
        let kind = match errno {
            Errno::EPERM | Errno::EACCES => ErrorKind::PermissionDenied,
            Errno::ENOENT | Errno::ENOTDIR | Errno::EINVAL => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        };
        AgentError::new(kind, format!("{what}: {}", errno_text(errno)))
    }
}

fn errno() -> i32 {
    // SAFETY: the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

fn check(r: libc::c_long) -> Result<(), i32> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

fn opt_ptr(s: &Option<CString>) -> *const libc::c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
}

/// One step, in the child. Async-signal-safe calls only.
unsafe fn run_step(step: &Step) -> Result<(), i32> {
    match step {
        Step::Unshare(flags) => check(libc::unshare(*flags) as _),
        Step::Setns { fd, nstype } => check(libc::setns(fd.as_raw_fd(), *nstype) as _),
        Step::WriteFd { fd, data } => write_all(fd.as_raw_fd(), data),
        Step::WriteFile { path, data } => {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(errno());
            }
            let r = write_all(fd, data);
            libc::close(fd);
            r
        }
        Step::Mkdir { path, mode } => {
            if libc::mkdir(path.as_ptr(), *mode) < 0 && errno() != libc::EEXIST {
                return Err(errno());
            }
            Ok(())
        }
        Step::Touch { path } => {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                0o644,
            );
            if fd < 0 {
                // A directory there is the mount's problem, reported by the mount.
                return if errno() == libc::EISDIR {
                    Ok(())
                } else {
                    Err(errno())
                };
            }
            libc::close(fd);
            Ok(())
        }
        Step::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => check(libc::mount(
            opt_ptr(source),
            target.as_ptr(),
            opt_ptr(fstype),
            *flags,
            opt_ptr(data).cast(),
        ) as _),
        Step::MaskPath { path } => {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::stat(path.as_ptr(), &mut st) < 0 {
                return if errno() == libc::ENOENT {
                    Ok(())
                } else {
                    Err(errno())
                };
            }
            let r = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    path.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY,
                    std::ptr::null(),
                )
            } else {
                libc::mount(
                    c"/dev/null".as_ptr(),
                    path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            check(r as _)
        }
        Step::ReadonlyPath { path } => {
            let bind = libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            );
            if bind < 0 {
                return if errno() == libc::ENOENT {
                    Ok(())
                } else {
                    Err(errno())
                };
            }
            check(libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
                std::ptr::null(),
            ) as _)
        }
        Step::PivotRoot { root } => {
            // pivot_root(".", ".") stacks the old root on top of the new one; detaching
            // "." then removes the old root without needing a directory for it.
            check(libc::chdir(root.as_ptr()) as _)?;
            check(libc::syscall(
                libc::SYS_pivot_root,
                c".".as_ptr(),
                c".".as_ptr(),
            ))?;
            // Nothing of the old root may propagate anywhere before it goes.
            check(libc::mount(
                std::ptr::null(),
                c".".as_ptr(),
                std::ptr::null(),
                libc::MS_SLAVE | libc::MS_REC,
                std::ptr::null(),
            ) as _)?;
            check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH) as _)?;
            check(libc::chdir(c"/".as_ptr()) as _)
        }
        Step::Mknod {
            path,
            mode,
            dev,
            uid,
            gid,
        } => {
            libc::unlink(path.as_ptr());
            check(libc::mknod(path.as_ptr(), *mode, *dev) as _)?;
            // The mode as given, whatever the umask.
            check(libc::chmod(path.as_ptr(), *mode & 0o7777) as _)?;
            check(libc::chown(path.as_ptr(), *uid, *gid) as _)
        }
        Step::Symlink { target, link } => {
            if libc::symlink(target.as_ptr(), link.as_ptr()) < 0 && errno() != libc::EEXIST {
                return Err(errno());
            }
            Ok(())
        }
        Step::Hostname(name) => check(libc::sethostname(name.as_ptr().cast(), name.len()) as _),
        Step::Rlimit {
            resource,
            soft,
            hard,
        } => {
            let limit = libc::rlimit {
                rlim_cur: *soft,
                rlim_max: *hard,
            };
            check(libc::setrlimit(*resource, &limit) as _)
        }
        Step::Prctl { option, arg2, arg3 } => check(libc::prctl(
            *option,
            *arg2,
            *arg3,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ) as _),
        Step::PrctlBestEffort { option, arg2, arg3 } => {
            libc::prctl(
                *option,
                *arg2,
                *arg3,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            );
            Ok(())
        }
        Step::Capset {
            effective,
            permitted,
            inheritable,
        } => {
            // struct __user_cap_header_struct / __user_cap_data_struct, version 3.
            let header: [u32; 2] = [0x2008_0522, 0];
            let half = |v: u64, i: usize| (v >> (32 * i)) as u32;
            let data: [u32; 6] = [
                half(*effective, 0),
                half(*permitted, 0),
                half(*inheritable, 0),
                half(*effective, 1),
                half(*permitted, 1),
                half(*inheritable, 1),
            ];
            check(libc::syscall(
                libc::SYS_capset,
                header.as_ptr(),
                data.as_ptr(),
            ))
        }
        Step::Seccomp { program, flags } => {
            let prog = libc::sock_fprog {
                len: program.len() as libc::c_ushort,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            check(libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                *flags,
                &prog as *const libc::sock_fprog,
            ))
        }
    }
}

unsafe fn write_all(fd: libc::c_int, data: &[u8]) -> Result<(), i32> {
    let mut done = 0;
    while done < data.len() {
        let n = libc::write(fd, data[done..].as_ptr().cast(), data.len() - done);
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(errno());
        }
        done += n as usize;
    }
    Ok(())
}
