//! The `PassthroughFs` behind a share, wrapped in the policy layers, and its cache policy.
//!
//! Cache policy, chosen per share by who else can touch the directory:
//! - [`Sharing::Shared`] (the default, and what volumes get): the directory may change under
//!   the guest (host processes, other VMs). FUSE close-to-open consistency (`cache=auto`):
//!   the guest keeps file data in its page cache but revalidates on every open, and trusts
//!   entries and attributes for 1 s. No writeback cache: every write(2) in the guest reaches
//!   the host file before it returns, so a host reader sees it at once and nothing the guest
//!   holds can overwrite a newer host change later.
//! - [`Sharing::Exclusive`] (a container's rootfs, private to one VM): nobody else writes
//!   there while the VM runs, so the guest may keep everything: `cache=always` (page cache
//!   kept across opens), entries and attributes valid for a day (a metadata walk the second
//!   time costs no round trip), and the writeback cache (the guest coalesces small writes
//!   into large FUSE_WRITEs and answers write(2) from its page cache; data reaches the host
//!   on fsync, close or memory pressure).
//!
//! Measured in the test bed (tests/vm/fs.rs, 256 MiB, one run each, noisy machine): the
//! exclusive policy wrote 9.4 MiB/s against 3.6 MiB/s for the shared one (writeback sends
//! full 1 MiB requests from the page cache); reads and a first walk over 10,000 files were
//! about the same (5.4 vs 3.8 MiB/s, 7.9 vs 7.5 s): the first access always goes to the host.
//!
//! Read-only shares never use writeback (there is nothing to write back, and writeback
//! makes the server open files O_RDWR).

use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use super::read_only::ReadOnlyFs;
use super::sandbox::SandboxFs;

/// Who else may change a share's directory while the guest uses it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Sharing {
    /// Host processes or other VMs may change it: close-to-open caching, write-through.
    #[default]
    Shared,
    /// Only this guest touches it: full caching and writeback.
    Exclusive,
}

/// The file system a share serves: sandbox rules over the read-only rules over passthrough.
pub(super) type ShareFs = SandboxFs<ReadOnlyFs<PassthroughFs>>;

/// What the worker drives.
pub(super) type ShareServer = Server<Arc<ShareFs>>;

/// Builds the layered file system for `root` (an existing directory, UTF-8) and opens its
/// root inode, so an unusable directory is reported here rather than at the guest's mount.
pub(super) fn build(root: &str, read_only: bool, sharing: Sharing) -> std::io::Result<ShareFs> {
    let passthrough = PassthroughFs::new(config(root, read_only, sharing))?;
    passthrough.import()?;
    Ok(SandboxFs::new(ReadOnlyFs::new(passthrough, read_only)))
}

fn config(root: &str, read_only: bool, sharing: Sharing) -> Config {
    let (cache_policy, timeout, writeback) = match sharing {
        Sharing::Shared => (CachePolicy::Auto, Duration::from_secs(1), false),
        Sharing::Exclusive => (CachePolicy::Always, Duration::from_secs(86_400), !read_only),
    };
    Config {
        root_dir: root.to_owned(),
        cache_policy,
        entry_timeout: timeout,
        attr_timeout: timeout,
        writeback,
        // See the module docs of `fs`: no security.*/trusted.* writes on host files.
        xattr: false,
        // O_PATH fds, never file handles: no open_by_handle_at(2) in the VMM.
        inode_file_handles: false,
        // Every open and opendir reaches the server, so the policy layers see them.
        no_open: false,
        no_opendir: false,
        do_import: true,
        ..Config::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_read_only_share_has_no_writeback() {
        assert!(config("/", false, Sharing::Exclusive).writeback);
        assert!(!config("/", true, Sharing::Exclusive).writeback);
        assert!(!config("/", false, Sharing::Shared).writeback);
        assert_eq!(
            config("/", false, Sharing::Shared).cache_policy,
            CachePolicy::Auto
        );
    }
}
