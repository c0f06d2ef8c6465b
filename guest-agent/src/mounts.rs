//! mount(2) for the agent: the guest's kernel filesystems (PID 1), the virtio-fs shares
//! the host asks for, and the filesystems inside a container's root.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

use husk_protocol::{AgentError, ErrorKind};
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use crate::errno_text;

/// The filesystem type the guest kernel registers for virtio-fs.
const VIRTIOFS: &str = "virtiofs";

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// (fstype, path, flags, data): what every process in the guest expects to find, in
/// order. /dev is devtmpfs: the kernel's automount does not apply to an initramfs root,
/// so PID 1 mounts it; /dev/pts is where every tty the agent opens lives (newinstance
/// semantics are the default since 4.7, ptmxmode lets /dev/ptmx users open it).
const KERNEL_FILESYSTEMS: &[(&str, &str, MsFlags, &str)] = &[
    ("proc", "/proc", NOSUID_NODEV_NOEXEC, ""),
    ("sysfs", "/sys", NOSUID_NODEV_NOEXEC, ""),
    ("devtmpfs", "/dev", MsFlags::MS_NOSUID, "mode=0755"),
    (
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        "mode=0620,ptmxmode=0666,gid=5",
    ),
    (
        "tmpfs",
        "/dev/shm",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=1777",
    ),
    (
        "tmpfs",
        "/run",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=0755",
    ),
    (
        "tmpfs",
        "/tmp",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=1777",
    ),
];

/// Where PID 1 moves the root to, for a moment, in [`leave_initramfs`].
const NEW_ROOT: &str = "/.husk-root";

/// PID 1, first thing: makes the root a mount of its own instead of the initramfs
/// (`rootfs`), which `pivot_root` refuses to pivot away from (EINVAL: it has no parent
/// mount). The initramfs is bound recursively on a directory of itself, the bind is
/// moved onto "/" and PID 1 chroots into it (what switch_root does, minus the copy): the
/// same files, now on a mount that has a parent. Costs two mounts, no copy.
pub fn leave_initramfs() -> Result<(), AgentError> {
    let fail = |what: &str, e: Errno| {
        AgentError::internal(format!("leaving the initramfs: {what}: {}", errno_text(e)))
    };
    let new_root = Path::new(NEW_ROOT);
    create_dir(new_root)?;
    mount(
        Some("/"),
        new_root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| fail("bind / on ", e))?;
    nix::unistd::chdir(new_root).map_err(|e| fail("chdir", e))?;
    mount(
        Some(new_root),
        "/",
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .map_err(|e| fail("move to /", e))?;
    nix::unistd::chroot(".").map_err(|e| fail("chroot", e))?;
    nix::unistd::chdir("/").map_err(|e| fail("chdir /", e))?;
    // The directory is visible again in the bind, empty: nothing needs it any more.
    let _ = std::fs::remove_dir(new_root);
    Ok(())
}

/// PID 1: mounts the kernel filesystems (see `KERNEL_FILESYSTEMS`).
pub fn mount_kernel_filesystems() -> Result<(), AgentError> {
    for &(fstype, path, flags, data) in KERNEL_FILESYSTEMS {
        mount_fs(fstype, Path::new(path), fstype, flags, data)?;
    }
    Ok(())
}

/// Mounts virtio-fs share `tag` at the guest path `target` (created if missing).
pub fn mount_share(tag: &str, target: &str, read_only: bool) -> Result<(), AgentError> {
    if tag.is_empty() || tag.contains('\0') {
        return Err(AgentError::new(
            ErrorKind::InvalidArgument,
            format!("invalid virtio-fs tag {tag:?}"),
        ));
    }
    let target = guest_path(target)?;
    create_dir(target)?;
    let flags = if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    mount(Some(tag), target, Some(VIRTIOFS), flags, None::<&str>).map_err(|e| {
        let what = format!(
            "mounting virtio-fs share {tag:?} on {}: {}",
            target.display(),
            errno_text(e)
        );
        match e {
            // What the virtio-fs driver says when no device carries the tag.
            Errno::EINVAL | Errno::ENOENT => AgentError::new(
                ErrorKind::NotFound,
                format!("{what} (is there a virtio-fs device with this tag?)"),
            ),
            Errno::ENODEV => AgentError::new(
                ErrorKind::Unsupported,
                format!("{what} (the guest kernel has no virtio-fs)"),
            ),
            _ => AgentError::internal(what),
        }
    })
}

/// Checks that `path` is an absolute guest path without `..`.
pub fn guest_path(path: &str) -> Result<&Path, AgentError> {
    let p = Path::new(path);
    let ok = p.is_absolute()
        && !path.contains('\0')
        && p.components().all(|c| !matches!(c, Component::ParentDir));
    if ok {
        Ok(p)
    } else {
        Err(AgentError::new(
            ErrorKind::InvalidArgument,
            format!("{path:?} is not an absolute guest path without \"..\""),
        ))
    }
}

/// `mkdir -p`, as an agent error.
pub fn create_dir(path: &Path) -> Result<(), AgentError> {
    std::fs::create_dir_all(path).map_err(|e| {
        AgentError::internal(format!("cannot create mount point {}: {e}", path.display()))
    })
}

/// Creates `target` and mounts `source` of type `fstype` there.
pub fn mount_fs(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MsFlags,
    data: &str,
) -> Result<(), AgentError> {
    create_dir(target)?;
    let data = (!data.is_empty()).then_some(data);
    mount(Some(source), target, Some(fstype), flags, data).map_err(|e| {
        AgentError::internal(format!(
            "cannot mount {fstype} on {}: {}",
            target.display(),
            errno_text(e)
        ))
    })
}

/// Recursively bind-mounts `source` on `target` (created if missing).
pub fn rbind(source: &Path, target: &Path) -> Result<(), AgentError> {
    create_dir(target)?;
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        AgentError::internal(format!(
            "cannot bind {} on {}: {}",
            source.display(),
            target.display(),
            errno_text(e)
        ))
    })
}

/// Whether something is mounted on `path` (a directory on another device than its
/// parent's). A missing path is not a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    let (Ok(meta), Some(parent)) = (std::fs::metadata(path), path.parent()) else {
        return false;
    };
    std::fs::metadata(parent)
        .map(|p| p.dev() != meta.dev())
        .unwrap_or(false)
}

/// Lazily unmounts `path` and everything below it (cleanup after a failed create).
pub fn detach(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
}
