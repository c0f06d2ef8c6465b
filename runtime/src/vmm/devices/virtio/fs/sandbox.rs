//! What a guest may do to the host file system beyond `PassthroughFs`'s own guarantees
//! (see the `fs` module docs for the whole analysis): no host device nodes, and nothing but
//! regular files and directories is ever opened on the host, and no symlink is chmodded.

use std::ffi::CStr;
use std::io;

use super::layer::errno;

fs_signature_types!();

/// Applies the sandbox rules in front of `inner`.
pub(super) struct SandboxFs<F> {
    inner: F,
}

impl<F> SandboxFs<F> {
    pub(super) fn new(inner: F) -> Self {
        Self { inner }
    }
}

/// Whether MKNOD may create a node of `mode`/`rdev` on the host: regular files, FIFOs and
/// sockets (the guest kernel serves the last two itself), and the 0/0 character device that
/// overlayfs uses as a whiteout (it names no device). No other device node.
pub(super) fn mknod_allowed(mode: u32, rdev: u32) -> bool {
    match mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK => true,
        libc::S_IFCHR => rdev == 0,
        _ => false,
    }
}

/// Whether the host may open (or chmod/truncate) an inode of this type: regular files and
/// directories only, never a device, FIFO, socket or symlink.
pub(super) fn openable(mode: u32) -> bool {
    matches!(mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
}

impl<F: FileSystem<Inode = u64, Handle = u64>> SandboxFs<F> {
    fn require_openable(&self, ctx: &Context, inode: u64) -> io::Result<()> {
        let (st, _) = self.inner.getattr(ctx, inode, None)?;
        if openable(st.st_mode) {
            Ok(())
        } else {
            // What open(2) of a device says on a `nodev` mount.
            errno(libc::EACCES)
        }
    }
}

impl<F: FileSystem<Inode = u64, Handle = u64>> FileSystem for SandboxFs<F> {
    type Inode = u64;
    type Handle = u64;

    forward_common_ops!(except init);

    /// The outermost layer is also where transfer sizes are negotiated: `PassthroughFs`
    /// does not ask for MAX_PAGES/BIG_WRITES, and without them the server offers a
    /// max_write of 4 KiB, so a 1 MiB write(2) in the guest became 256 FUSE requests
    /// (measured: 0.5 MiB/s sequential write in the test bed). With them: up to 1 MiB
    /// (256 pages) per request, in both directions.
    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let wanted = self.inner.init(capable)?;
        Ok(wanted | (capable & (FsOptions::MAX_PAGES | FsOptions::BIG_WRITES)))
    }

    forward_to_inner! {
        fn symlink(&self, ctx: &Context, linkname: &CStr, parent: u64, name: &CStr) -> io::Result<Entry>;
        fn mkdir(&self, ctx: &Context, parent: u64, name: &CStr, mode: u32, umask: u32) -> io::Result<Entry>;
        fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()>;
        fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()>;
        fn rename(&self, ctx: &Context, olddir: u64, oldname: &CStr, newdir: u64, newname: &CStr, flags: u32) -> io::Result<()>;
        fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry>;
        fn create(&self, ctx: &Context, parent: u64, name: &CStr, args: CreateIn) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)>;
        fn write(&self, ctx: &Context, inode: u64, handle: u64, r: &mut dyn ZeroCopyReader, size: u32, offset: u64, lock_owner: Option<u64>, delayed_write: bool, flags: u32, fuse_flags: u32) -> io::Result<usize>;
        fn fallocate(&self, ctx: &Context, inode: u64, handle: u64, mode: u32, offset: u64, length: u64) -> io::Result<()>;
        fn setxattr(&self, ctx: &Context, inode: u64, name: &CStr, value: &[u8], flags: u32) -> io::Result<()>;
        fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()>;
        fn setupmapping(&self, ctx: &Context, inode: u64, handle: u64, foffset: u64, len: u64, flags: u64, moffset: u64, vu_req: &mut dyn FsCacheReqHandler) -> io::Result<()>;
        fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()>;
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        if !mknod_allowed(mode, rdev) {
            return errno(libc::EPERM);
        }
        self.inner.mknod(ctx, parent, name, mode, rdev, umask)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        self.require_openable(ctx, inode)?;
        self.inner.open(ctx, inode, flags, fuse_flags)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, std::time::Duration)> {
        // Linux has no chmod for symlinks (lchmod is EOPNOTSUPP); refusing it here means the
        // rule never depends on how the layer below names the inode.
        if valid.contains(SetattrValid::MODE) {
            let (st, _) = self.inner.getattr(ctx, inode, None)?;
            if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                return errno(libc::EOPNOTSUPP);
            }
        }
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use fuse_backend_rs::api::filesystem::ROOT_ID;

    use super::*;
    use crate::vmm::devices::virtio::fs::test_utils::*;

    #[test]
    fn dotdot_at_the_root_stays_at_the_root() {
        let scratch = Scratch::new("dotdot");
        std::fs::create_dir(scratch.share().join("sub")).unwrap();
        let fs = scratch.fs(false);
        assert_eq!(root_lookup(&fs, "..").unwrap().inode, ROOT_ID);
        let sub = root_lookup(&fs, "sub").unwrap().inode;
        let up = lookup(&fs, sub, "..").unwrap().inode;
        assert_eq!(lookup(&fs, up, "..").unwrap().inode, ROOT_ID);
        // The secret beside the share is never reachable by name.
        assert_eq!(errno_of(lookup(&fs, up, "secret")), libc::ENOENT);
        assert_eq!(errno_of(root_lookup(&fs, "../secret")), libc::EINVAL);
        let name = cstr("a/b");
        assert_eq!(
            errno_of(fs.mkdir(&ctx(), ROOT_ID, &name, 0o755, 0)),
            libc::EINVAL
        );
    }

    #[test]
    fn symlinks_are_never_followed_on_the_host() {
        let scratch = Scratch::new("symlink");
        let secret_mode = mode_of(&scratch.secret());
        symlink(scratch.secret(), scratch.share().join("abs")).unwrap();
        symlink("../secret", scratch.share().join("rel")).unwrap();
        symlink(&scratch.top, scratch.share().join("dir")).unwrap();
        let fs = scratch.fs(false);
        for name in ["abs", "rel"] {
            let link = root_lookup(&fs, name).unwrap();
            assert_eq!(link.attr.st_mode & libc::S_IFMT, libc::S_IFLNK);
            assert_eq!(
                errno_of(fs.open(&ctx(), link.inode, libc::O_RDONLY as u32, 0)),
                libc::EACCES
            );
            let mut attr = link.attr;
            attr.st_mode = 0o777;
            let chmod = fs.setattr(&ctx(), link.inode, attr, None, SetattrValid::MODE);
            assert_eq!(errno_of(chmod), libc::EOPNOTSUPP);
            attr.st_size = 0;
            let _ = fs.setattr(&ctx(), link.inode, attr, None, SetattrValid::SIZE);
            attr.st_uid = 1234;
            let _ = fs.setattr(&ctx(), link.inode, attr, None, SetattrValid::UID);
        }
        // The guest reads the target as text; the host never resolves it.
        let abs = root_lookup(&fs, "abs").unwrap().inode;
        let target = fs.readlink(&ctx(), abs).unwrap();
        assert_eq!(target, scratch.secret().as_os_str().as_encoded_bytes());
        // A symlink to a directory outside is not a directory to walk through.
        let dir = root_lookup(&fs, "dir").unwrap().inode;
        assert_eq!(errno_of(lookup(&fs, dir, "secret")), libc::ENOTDIR);
        assert_eq!(std::fs::read(scratch.secret()).unwrap(), b"host secret\n");
        assert_eq!(mode_of(&scratch.secret()), secret_mode);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(scratch.secret()).unwrap().uid(), 0);
    }

    #[test]
    fn create_over_a_symlink_does_not_follow_it() {
        let scratch = Scratch::new("create");
        symlink(scratch.secret(), scratch.share().join("abs")).unwrap();
        let fs = scratch.fs(false);
        // FUSE_CREATE without O_EXCL on a name that is a symlink to a host file: the server
        // creates with O_CREAT|O_EXCL (never follows), then finds a symlink it won't open.
        let args = CreateIn {
            flags: (libc::O_RDWR | libc::O_TRUNC) as u32,
            mode: 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        assert!(fs.create(&ctx(), ROOT_ID, &cstr("abs"), args).is_err());
        assert_eq!(std::fs::read(scratch.secret()).unwrap(), b"host secret\n");
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_mid_walk_leads_nowhere() {
        let scratch = Scratch::new("race");
        std::fs::create_dir(scratch.share().join("d")).unwrap();
        std::fs::write(scratch.share().join("d/secret"), b"inside\n").unwrap();
        let fs = scratch.fs(false);
        let held = root_lookup(&fs, "d").unwrap().inode;
        // The swap a racing process would do between two lookups of the guest's walk.
        std::fs::rename(scratch.share().join("d"), scratch.share().join("d.old")).unwrap();
        symlink(&scratch.top, scratch.share().join("d")).unwrap();
        let swapped = root_lookup(&fs, "d").unwrap();
        assert_eq!(swapped.attr.st_mode & libc::S_IFMT, libc::S_IFLNK);
        assert_eq!(
            errno_of(lookup(&fs, swapped.inode, "secret")),
            libc::ENOTDIR
        );
        // The inode the guest already held is the renamed directory, still inside the share.
        let inside = lookup(&fs, held, "secret").unwrap();
        let (_, options) = fs.opendir(&ctx(), held, 0).unwrap();
        let _ = options;
        assert_eq!(inside.attr.st_size, 7);
    }

    #[test]
    fn device_nodes_are_neither_created_nor_opened() {
        let scratch = Scratch::new("mknod");
        // A device node that was in the share before boot: /dev/null's numbers.
        let dev_null = libc::makedev(1, 3);
        let path = cstr(scratch.share().join("null").to_str().unwrap());
        // SAFETY: mknod with a valid NUL-terminated path.
        assert_eq!(
            unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, dev_null) },
            0
        );
        let fs = scratch.fs(false);

        let char_dev = fs.mknod(&ctx(), ROOT_ID, &cstr("c"), libc::S_IFCHR | 0o666, 0x103, 0);
        assert_eq!(errno_of(char_dev), libc::EPERM);
        let block_dev = fs.mknod(&ctx(), ROOT_ID, &cstr("b"), libc::S_IFBLK | 0o666, 0x801, 0);
        assert_eq!(errno_of(block_dev), libc::EPERM);
        assert!(!scratch.share().join("c").exists() && !scratch.share().join("b").exists());

        let whiteout = fs
            .mknod(&ctx(), ROOT_ID, &cstr("wh"), libc::S_IFCHR, 0, 0)
            .unwrap();
        let fifo = fs
            .mknod(&ctx(), ROOT_ID, &cstr("fifo"), libc::S_IFIFO | 0o644, 0, 0)
            .unwrap();
        let existing = root_lookup(&fs, "null").unwrap();
        for node in [whiteout.inode, fifo.inode, existing.inode] {
            let open = fs.open(&ctx(), node, libc::O_RDWR as u32, 0);
            assert_eq!(errno_of(open), libc::EACCES);
        }
    }

    #[test]
    fn hard_links_stay_inside_the_share() {
        let scratch = Scratch::new("link");
        std::fs::write(scratch.share().join("f"), b"x").unwrap();
        let fs = scratch.fs(false);
        let f = root_lookup(&fs, "f").unwrap().inode;
        let linked = fs.link(&ctx(), f, ROOT_ID, &cstr("f2")).unwrap();
        assert_eq!(linked.attr.st_nlink, 2);
        // The only inodes a guest can name come from lookups under the root; `..` stops there.
        let up = root_lookup(&fs, "..").unwrap().inode;
        let secret = fs.link(&ctx(), up, ROOT_ID, &cstr("root-link"));
        assert!(secret.is_err(), "linking the share root itself must fail");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(scratch.secret()).unwrap().nlink(), 1);
    }

    #[test]
    fn mknod_policy() {
        assert!(mknod_allowed(libc::S_IFREG | 0o644, 0));
        assert!(mknod_allowed(libc::S_IFIFO, 0));
        assert!(mknod_allowed(libc::S_IFSOCK, 0));
        assert!(mknod_allowed(libc::S_IFCHR, 0));
        assert!(!mknod_allowed(libc::S_IFCHR, 0x103));
        assert!(!mknod_allowed(libc::S_IFBLK, 0));
        assert!(!mknod_allowed(libc::S_IFDIR, 0));
        assert!(!mknod_allowed(libc::S_IFLNK, 0));
    }
}
