//! Helpers for the fs unit tests: a scratch tree with a share and a secret beside it, and
//! the layered file system over the share (the tests run as root, like the VMM).

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem, ROOT_ID};

use super::backend::{build, ShareFs, Sharing};

/// A scratch directory removed on drop: `share/` is served, `secret` sits beside it.
pub(super) struct Scratch {
    pub top: PathBuf,
}

impl Scratch {
    pub fn new(what: &str) -> Scratch {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let top = std::env::temp_dir().join(format!(
            "husk-fs-{what}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir_all(top.join("share")).unwrap();
        std::fs::write(top.join("secret"), b"host secret\n").unwrap();
        Scratch { top }
    }

    pub fn share(&self) -> PathBuf {
        self.top.join("share")
    }

    pub fn secret(&self) -> PathBuf {
        self.top.join("secret")
    }

    pub fn fs(&self, read_only: bool) -> ShareFs {
        let fs = build(self.share().to_str().unwrap(), read_only, Sharing::Shared).unwrap();
        fs.init(fuse_backend_rs::api::filesystem::FsOptions::empty())
            .unwrap();
        fs
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.top);
    }
}

pub(super) fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

pub(super) fn ctx() -> Context {
    Context::default()
}

pub(super) fn lookup(fs: &ShareFs, parent: u64, name: &str) -> io::Result<Entry> {
    fs.lookup(&ctx(), parent, &cstr(name))
}

pub(super) fn root_lookup(fs: &ShareFs, name: &str) -> io::Result<Entry> {
    lookup(fs, ROOT_ID, name)
}

pub(super) fn errno_of<T: std::fmt::Debug>(result: io::Result<T>) -> i32 {
    result.unwrap_err().raw_os_error().unwrap()
}

pub(super) fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap().mode()
}
