//! Read-only shares, enforced by the host: the guest's `ro` mount flag is the guest's to
//! drop, so every operation that would change the host file system answers EROFS here,
//! whatever the guest mounted.

use std::ffi::CStr;
use std::io;

use fuse_backend_rs::abi::virtio_fs::SetupmappingFlags;

use super::layer::errno;

fs_signature_types!();

/// Refuses every mutating FUSE operation with EROFS when `read_only`; a pass-through
/// otherwise.
pub(super) struct ReadOnlyFs<F> {
    inner: F,
    read_only: bool,
}

impl<F> ReadOnlyFs<F> {
    pub(super) fn new(inner: F, read_only: bool) -> Self {
        Self { inner, read_only }
    }

    fn check(&self) -> io::Result<()> {
        if self.read_only {
            errno(libc::EROFS)
        } else {
            Ok(())
        }
    }
}

/// Whether open(2) `flags` ask for write access or change the file (O_TRUNC).
pub(super) fn open_writes(flags: u32) -> bool {
    let flags = flags as i32;
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl<F: FileSystem<Inode = u64, Handle = u64>> FileSystem for ReadOnlyFs<F> {
    type Inode = u64;
    type Handle = u64;

    forward_common_ops!();

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        if open_writes(flags) {
            self.check()?;
        }
        self.inner.open(ctx, inode, flags, fuse_flags)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        if mask as i32 & libc::W_OK != 0 {
            self.check()?;
        }
        self.inner.access(ctx, inode, mask)
    }

    #[allow(clippy::too_many_arguments)]
    fn setupmapping(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        if flags & SetupmappingFlags::WRITE.bits() != 0 {
            self.check()?;
        }
        self.inner
            .setupmapping(ctx, inode, handle, foffset, len, flags, moffset, vu_req)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, std::time::Duration)> {
        self.check()?;
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.check()?;
        self.inner.symlink(ctx, linkname, parent, name)
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
        self.check()?;
        self.inner.mknod(ctx, parent, name, mode, rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.check()?;
        self.inner.mkdir(ctx, parent, name, mode, umask)
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.check()?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.check()?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.check()?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.check()?;
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.check()?;
        self.inner.create(ctx, parent, name, args)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.check()?;
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.check()?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.check()?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.check()?;
        self.inner.removexattr(ctx, inode, name)
    }
}

#[cfg(test)]
mod tests {
    use fuse_backend_rs::api::filesystem::ROOT_ID;

    use super::*;
    use crate::vmm::devices::virtio::fs::test_utils::*;

    fn snapshot(dir: &std::path::Path) -> Vec<(String, u32, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let m = e.path().symlink_metadata().unwrap();
                (e.file_name().into_string().unwrap(), m.mode(), m.size())
            })
            .collect();
        entries.sort();
        entries
    }

    #[test]
    fn every_mutating_op_is_erofs_and_the_host_is_untouched() {
        let scratch = Scratch::new("ro");
        std::fs::write(scratch.share().join("f"), b"data").unwrap();
        std::fs::create_dir(scratch.share().join("d")).unwrap();
        let before = snapshot(&scratch.share());
        let fs = scratch.fs(true);
        let c = ctx();
        let f = root_lookup(&fs, "f").unwrap();
        let d = root_lookup(&fs, "d").unwrap().inode;
        let name = cstr("new");
        let erofs = libc::EROFS;

        assert_eq!(errno_of(fs.mkdir(&c, ROOT_ID, &name, 0o755, 0)), erofs);
        assert_eq!(
            errno_of(fs.mknod(&c, ROOT_ID, &name, libc::S_IFREG, 0, 0)),
            erofs
        );
        assert_eq!(errno_of(fs.symlink(&c, &cstr("f"), ROOT_ID, &name)), erofs);
        assert_eq!(errno_of(fs.link(&c, f.inode, ROOT_ID, &name)), erofs);
        assert_eq!(errno_of(fs.unlink(&c, ROOT_ID, &cstr("f"))), erofs);
        assert_eq!(errno_of(fs.rmdir(&c, ROOT_ID, &cstr("d"))), erofs);
        assert_eq!(
            errno_of(fs.rename(&c, ROOT_ID, &cstr("f"), d, &name, 0)),
            erofs
        );
        let args = CreateIn {
            flags: libc::O_RDWR as u32,
            mode: 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        assert_eq!(errno_of(fs.create(&c, ROOT_ID, &name, args)), erofs);
        let mut attr = f.attr;
        attr.st_mode = 0o777;
        attr.st_size = 0;
        for valid in [
            SetattrValid::MODE,
            SetattrValid::SIZE,
            SetattrValid::UID,
            SetattrValid::MTIME,
        ] {
            assert_eq!(errno_of(fs.setattr(&c, f.inode, attr, None, valid)), erofs);
        }
        for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
            assert_eq!(errno_of(fs.open(&c, f.inode, flags as u32, 0)), erofs);
        }
        assert_eq!(errno_of(fs.access(&c, f.inode, libc::W_OK as u32)), erofs);
        assert_eq!(
            errno_of(fs.setxattr(&c, f.inode, &cstr("user.x"), b"1", 0)),
            erofs
        );
        assert_eq!(
            errno_of(fs.removexattr(&c, f.inode, &cstr("user.x"))),
            erofs
        );

        // Reading still works, and a read-only handle cannot be written through.
        let (handle, _, _) = fs.open(&c, f.inode, libc::O_RDONLY as u32, 0).unwrap();
        let handle = handle.unwrap();
        assert_eq!(
            errno_of(fs.fallocate(&c, f.inode, handle, 0, 0, 4096)),
            erofs
        );
        fs.access(&c, f.inode, libc::R_OK as u32).unwrap();
        fs.release(&c, f.inode, 0, handle, false, false, None)
            .unwrap();

        assert_eq!(snapshot(&scratch.share()), before);
        assert_eq!(std::fs::read(scratch.share().join("f")).unwrap(), b"data");
    }

    #[test]
    fn a_writable_share_lets_the_same_ops_through() {
        let scratch = Scratch::new("rw");
        let fs = scratch.fs(false);
        let c = ctx();
        let d = fs.mkdir(&c, ROOT_ID, &cstr("d"), 0o755, 0).unwrap();
        fs.symlink(&c, &cstr("d"), ROOT_ID, &cstr("l")).unwrap();
        fs.rename(&c, ROOT_ID, &cstr("l"), d.inode, &cstr("l2"), 0)
            .unwrap();
        assert!(scratch.share().join("d/l2").symlink_metadata().is_ok());
    }

    #[test]
    fn which_open_flags_write() {
        assert!(!open_writes(libc::O_RDONLY as u32));
        assert!(!open_writes(
            (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_DIRECTORY) as u32
        ));
        assert!(open_writes(libc::O_WRONLY as u32));
        assert!(open_writes(libc::O_RDWR as u32));
        assert!(open_writes((libc::O_RDONLY | libc::O_TRUNC) as u32));
    }
}
