//! virtio-fs (device type 26) served in the VMM process by fuse-backend-rs's
//! `PassthroughFs`: no virtiofsd, no vhost-user socket, one less process per sandbox.
//!
//! Layers, from the queue inwards:
//! - [`device`]: the virtio device model (config space, features, queues) and its lifecycle.
//! - [`worker`]: one thread per activation, epoll on the queues' ioeventfds and a stop
//!   eventfd; turns each descriptor chain into a FUSE request for `Server::handle_message`.
//! - [`read_only`]: host-side enforcement of read-only shares (EROFS for every mutating op).
//! - [`sandbox`]: what a guest may do to the host file system beyond what `PassthroughFs`
//!   already guarantees (device nodes, special files).
//! - [`backend`]: the `PassthroughFs` configuration: cache policy and writeback, and why.
//!
//! # Data path and copy count
//! The VMM holds all of guest RAM mapped. A FUSE_READ reply is filled by `preadv(2)` straight
//! from the host file into the guest buffers named by the descriptor chain
//! (`VirtioFsWriter::write_from_at` hands the guest memory slices to the file as iovecs);
//! FUSE_WRITE is `pwritev(2)` from the guest buffers. So file data moves host page cache ->
//! guest memory (or back) in exactly one copy, done by the host kernel, with no bounce
//! buffer in the VMM. Checked with strace on a guest writing then reading 16 MiB (twice):
//! 16 `pwritev` of 1 MiB (256 iovecs of one guest page each) and 144 `preadv` totalling
//! 32 MiB, and no `read`/`write` of file data. (DAX, zero copies, needs a shared-memory
//! window and the guest kernel's ZONE_DEVICE/FS_DAX chain; not done.)
//!
//! Request size: the sandbox layer asks for MAX_PAGES, so one request carries up to 1 MiB
//! (without it the server offered a 4 KiB max_write: 0.5 MiB/s sequential writes in the test
//! bed, 17.7 MiB/s with it). Reads are limited by the guest, not the VMM: FUSE caps a
//! mount's readahead at 128 KiB, so sequential reads go 128 KiB per request; raising
//! `/sys/class/bdi/<dev>/read_ahead_kb` to 1024 in the guest after mounting made a 256 MiB
//! read 3-8x faster in the test bed (probe-fs measures both). The guest agent should do that
//! for its virtio-fs mounts.
//!
//! # Security: what a malicious guest can and cannot do
//! The VMM runs as root and the guest kernel (possibly hostile, it can send any FUSE message)
//! is the client. Conclusions, with where each is enforced:
//! - **No path outside the share.** `PassthroughFs` never resolves guest paths: every
//!   inode is an `O_PATH` fd, every lookup is one component `openat(parent_fd, name,
//!   O_PATH|O_NOFOLLOW)`, names containing `/` are refused, and `..` at the share root is
//!   turned into `.`. Symlinks are never followed on the host (the guest reads them with
//!   READLINK and resolves them in its own namespace), so an absolute symlink or `../..`
//!   target only ever means something inside the guest. A rename race (a directory swapped
//!   for a symlink while the guest walks) yields at worst a symlink inode, and a lookup under
//!   a symlink's `O_PATH` fd fails with ENOTDIR. Tested in [`sandbox`]'s unit tests and from
//!   a guest (tests/vm/fs.rs).
//! - **Hard links.** LINK takes an inode the guest already holds, so it can only link files
//!   that are inside the share. A hard link to an outside file that already existed in the
//!   share before boot is the same inode as the outside file: the guest can read and write it
//!   like any file in the share. Whoever prepares the share decides that; husk does not scan.
//! - **Device nodes.** MKNOD of a character or block device is refused (EPERM), except the
//!   0/0 character device that overlayfs uses as a whiteout (it names no device; opening it
//!   fails with ENXIO). FIFOs and sockets are allowed: the guest kernel serves them itself,
//!   they never reach the host. OPEN of anything but a regular file or directory is refused
//!   (`PassthroughFs` reopens only S_IFREG/S_IFDIR through /proc/self/fd; the sandbox layer
//!   checks again so the rule does not depend on that detail), so a device node that exists
//!   in the share (pre-existing, or a whiteout) is never opened as a host device. A FIFO is
//!   never opened on the host either, so a guest cannot park the worker in a blocking open.
//!   Seen from a guest (tests/vm/fs.rs): mknod of 1:3 or 8:0 fails with EPERM; a 1:1 node
//!   the host left in the share opens the guest's own device of that number (ENXIO there).
//! - **setattr on symlinks.** chmod and utimes go through `/proc/self/fd/N` of the symlink's
//!   `O_PATH` fd, which names the link itself, never its target; chown uses
//!   AT_SYMLINK_NOFOLLOW; truncate needs an open, refused for symlinks. The sandbox layer
//!   refuses chmod of a symlink anyway (EOPNOTSUPP, as Linux does), and FUSE_CREATE over a
//!   symlink's name uses O_CREAT|O_EXCL, which never follows (tested).
//! - **Guest root is root in the share.** New files are created with the caller's uid/gid
//!   (`setfsuid`), chown to any id works, setuid-root binaries can be created. That is fine
//!   inside the share (the guest owns it), but a host process must never execute files from
//!   a share or trust their ownership. Permission checks are the guest kernel's job
//!   (virtio-fs mounts with `default_permissions`): the VMM's CAP_DAC_OVERRIDE means the host
//!   checks nothing beyond the share boundary.
//! - **xattrs are off.** No `security.*`/`trusted.*` attribute (file capabilities, SELinux
//!   labels, overlayfs metadata) can be set on host files; GETXATTR/SETXATTR answer ENOSYS.
//!   Cost: file capabilities and ACLs in an image are not visible to the guest.
//! - **No file handles.** `inode_file_handles` stays off, so the VMM never calls
//!   `open_by_handle_at(2)` (which, with CAP_DAC_READ_SEARCH, opens any inode on a file
//!   system from a forged handle); FUSE has no message that carries a host handle.
//! - **Resource use is not bounded.** The guest can fill the host file system the share is
//!   on and make the VMM hold one `O_PATH` fd per inode it has looked up (up to the VMM's
//!   RLIMIT_NOFILE, which [`VirtioFs::new`] raises to its hard limit). Quotas and limits
//!   belong to whoever sets up the share and the VMM's cgroup.

#[macro_use]
mod layer;
mod backend;
mod device;
mod read_only;
mod sandbox;
mod worker;

#[cfg(test)]
mod test_utils;

pub use backend::Sharing;
pub use device::VirtioFs;

use std::path::PathBuf;

/// Longest tag the config space holds (virtio 1.2, 5.11.4: `tag[36]`, not NUL-terminated
/// when full).
pub const TAG_MAX_LEN: usize = 36;

/// Errors building a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag must not be empty")]
    EmptyTag,
    #[error("virtio-fs tag {tag:?} is {len} bytes, at most {TAG_MAX_LEN} fit")]
    TagTooLong { tag: String, len: usize },
    #[error("virtio-fs shared directory {}: {source}", path.display())]
    SharedDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("virtio-fs shared directory {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("virtio-fs shared directory {} is not valid UTF-8", path.display())]
    NonUtf8Path { path: PathBuf },
    #[error("virtio-fs: cannot serve {}: {source}", path.display())]
    Backend {
        path: PathBuf,
        source: std::io::Error,
    },
}
