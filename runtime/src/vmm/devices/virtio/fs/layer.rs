//! Plumbing shared by the policy layers: a `FileSystem` wrapper overrides the few operations
//! it has a rule for and forwards every other one, unchanged, to the layer below.

/// Imports every type a `FileSystem` signature names, for the layers' `impl` blocks.
macro_rules! fs_signature_types {
    () => {
        #[allow(unused_imports)]
        use fuse_backend_rs::abi::fuse_abi::{
            stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
        };
        #[allow(unused_imports)]
        use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
        #[allow(unused_imports)]
        use fuse_backend_rs::api::filesystem::{
            Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData,
            ListxattrReply, ZeroCopyReader, ZeroCopyWriter,
        };
        #[allow(unused_imports)]
        use fuse_backend_rs::transport::FsCacheReqHandler;
    };
}

/// Generates `fn name(&self, args...) -> Ret { self.inner.name(args...) }` for each listed
/// signature. Signatures are copied from fuse-backend-rs 0.14's `FileSystem` trait.
macro_rules! forward_to_inner {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;)*) => {
        $(
            #[inline]
            fn $name(&self $(, $arg: $ty)*) -> $ret {
                self.inner.$name($($arg),*)
            }
        )*
    };
}

/// The operations no layer has a rule for (no effect on the host file system beyond reading,
/// or acting only on handles an earlier checked operation created).
macro_rules! forward_common_ops {
    () => {
        forward_common_ops!(except init);
        forward_to_inner! {
            fn init(&self, capable: FsOptions) -> std::io::Result<FsOptions>;
        }
    };
    (except init) => {
        fn destroy(&self) {
            self.inner.destroy()
        }
        fn forget(&self, ctx: &Context, inode: u64, count: u64) {
            self.inner.forget(ctx, inode, count)
        }
        fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
            self.inner.batch_forget(ctx, requests)
        }
        forward_to_inner! {
            fn lookup(&self, ctx: &Context, parent: u64, name: &std::ffi::CStr) -> std::io::Result<Entry>;
            fn getattr(&self, ctx: &Context, inode: u64, handle: Option<u64>) -> std::io::Result<(stat64, std::time::Duration)>;
            fn readlink(&self, ctx: &Context, inode: u64) -> std::io::Result<Vec<u8>>;
            fn read(&self, ctx: &Context, inode: u64, handle: u64, w: &mut dyn ZeroCopyWriter, size: u32, offset: u64, lock_owner: Option<u64>, flags: u32) -> std::io::Result<usize>;
            fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> std::io::Result<()>;
            fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> std::io::Result<()>;
            fn release(&self, ctx: &Context, inode: u64, flags: u32, handle: u64, flush: bool, flock_release: bool, lock_owner: Option<u64>) -> std::io::Result<()>;
            fn statfs(&self, ctx: &Context, inode: u64) -> std::io::Result<statvfs64>;
            fn getxattr(&self, ctx: &Context, inode: u64, name: &std::ffi::CStr, size: u32) -> std::io::Result<GetxattrReply>;
            fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> std::io::Result<ListxattrReply>;
            fn opendir(&self, ctx: &Context, inode: u64, flags: u32) -> std::io::Result<(Option<u64>, OpenOptions)>;
            fn readdir(&self, ctx: &Context, inode: u64, handle: u64, size: u32, offset: u64, add_entry: &mut dyn FnMut(DirEntry) -> std::io::Result<usize>) -> std::io::Result<()>;
            fn readdirplus(&self, ctx: &Context, inode: u64, handle: u64, size: u32, offset: u64, add_entry: &mut dyn FnMut(DirEntry, Entry) -> std::io::Result<usize>) -> std::io::Result<()>;
            fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> std::io::Result<()>;
            fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> std::io::Result<()>;
            fn removemapping(&self, ctx: &Context, inode: u64, requests: Vec<RemovemappingOne>, vu_req: &mut dyn FsCacheReqHandler) -> std::io::Result<()>;
            fn lseek(&self, ctx: &Context, inode: u64, handle: u64, offset: u64, whence: u32) -> std::io::Result<u64>;
            fn getlk(&self, ctx: &Context, inode: u64, handle: u64, owner: u64, lock: FileLock, flags: u32) -> std::io::Result<FileLock>;
            fn setlk(&self, ctx: &Context, inode: u64, handle: u64, owner: u64, lock: FileLock, flags: u32) -> std::io::Result<()>;
            fn setlkw(&self, ctx: &Context, inode: u64, handle: u64, owner: u64, lock: FileLock, flags: u32) -> std::io::Result<()>;
            fn ioctl(&self, ctx: &Context, inode: u64, handle: u64, flags: u32, cmd: u32, data: IoctlData, out_size: u32) -> std::io::Result<IoctlData<'_>>;
            fn bmap(&self, ctx: &Context, inode: u64, block: u64, blocksize: u32) -> std::io::Result<u64>;
            fn poll(&self, ctx: &Context, inode: u64, handle: u64, khandle: u64, flags: u32, events: u32) -> std::io::Result<u32>;
            fn notify_reply(&self) -> std::io::Result<()>;
            fn id_remap(&self, ctx: &mut Context) -> std::io::Result<()>;
        }
    };
}

/// `Err(errno)` as the `io::Error` FUSE replies carry.
pub(super) fn errno<T>(errno: i32) -> std::io::Result<T> {
    Err(std::io::Error::from_raw_os_error(errno))
}
