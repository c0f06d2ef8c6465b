//! The devices every sandbox VM gets: entropy, the agent's vsock, and one virtio-fs share
//! per host directory (the rootfs, then the volumes).

use std::path::{Path, PathBuf};

use crate::vmm::devices::virtio::fs::{FsError, Sharing, VirtioFs};
use crate::vmm::devices::virtio::rng::Rng;
use crate::vmm::devices::virtio::vsock::{Vsock, VsockError};
use crate::vmm::devices::virtio::VirtioDevice;
use crate::vmm::Vm;

use super::volume::{Share, Volume};

/// The guest's vsock CID (2 is the host; 3 is the first a guest may have).
pub const GUEST_CID: u64 = 3;
/// virtio-fs tag of the rootfs share.
pub const ROOTFS_TAG: &str = "rootfs";

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot set up virtio-vsock on {path}: {source}")]
    Vsock { path: PathBuf, source: VsockError },
    #[error("cannot share {path} as {tag:?}: {source}")]
    Fs {
        tag: String,
        path: PathBuf,
        source: FsError,
    },
    #[error("cannot attach the {name} device: {source}")]
    Attach {
        name: &'static str,
        source: crate::vmm::Error,
    },
}

/// The tag of volume number `index`: `vol0`, `vol1`, ...
pub fn volume_tag(index: usize) -> String {
    format!("vol{index}")
}

/// Attaches rng, vsock (guest CID [`GUEST_CID`], host side at `uds`) and the shares:
/// the rootfs, the volumes, then the extra shares.
pub fn attach(
    vm: &mut Vm,
    uds: &Path,
    rootfs: &Path,
    volumes: &[Volume],
    extra: &[Share],
) -> Result<(), DeviceError> {
    let attach = |vm: &mut Vm, dev: Box<dyn VirtioDevice>, name| {
        vm.add_virtio_device(dev, name)
            .map(|_| ())
            .map_err(|source| DeviceError::Attach { name, source })
    };
    attach(vm, Box::<Rng>::default(), "virtio-rng")?;
    let vsock = Vsock::new(GUEST_CID, uds.to_path_buf()).map_err(|source| DeviceError::Vsock {
        path: uds.to_path_buf(),
        source,
    })?;
    attach(vm, Box::new(vsock), "virtio-vsock")?;
    // The rootfs is the container's alone (full caching, writeback); a volume is a
    // directory the host uses too (close-to-open, write-through).
    let shares = std::iter::once((ROOTFS_TAG.to_string(), rootfs, false, Sharing::Exclusive))
        .chain(volumes.iter().enumerate().map(|(i, v)| {
            (
                volume_tag(i),
                v.host.as_path(),
                v.read_only,
                Sharing::Shared,
            )
        }))
        .chain(extra.iter().map(|s| {
            (
                s.tag.clone(),
                s.host.as_path(),
                s.read_only,
                Sharing::Shared,
            )
        }));
    for (tag, path, read_only, sharing) in shares {
        let fs = VirtioFs::with_sharing(&tag, path, read_only, sharing).map_err(|source| {
            DeviceError::Fs {
                tag: tag.clone(),
                path: path.to_path_buf(),
                source,
            }
        })?;
        attach(vm, Box::new(fs), "virtio-fs")?;
    }
    Ok(())
}
