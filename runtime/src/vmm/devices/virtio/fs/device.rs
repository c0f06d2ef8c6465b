//! The virtio-fs device model: config space (tag, number of request queues), features,
//! queues, and the worker's lifecycle.

use std::path::Path;
use std::sync::Arc;

use fuse_backend_rs::api::server::Server;

use super::backend::{self, ShareFs, Sharing};
use super::worker::{self, QueueServer};
use super::{FsError, TAG_MAX_LEN};
use crate::vmm::devices::virtio::worker::DeviceWorker;
use crate::vmm::devices::virtio::{
    ActivateError, Activation, VirtioDevice, TYPE_FS, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// Queue 0 is hiprio (FORGET, INTERRUPT), queue 1 the one request queue. More request queues
/// would only help with more worker threads (see the module docs of `worker`).
const NUM_REQUEST_QUEUES: u32 = 1;
const HIPRIO_QUEUE_SIZE: u16 = 128;
const REQUEST_QUEUE_SIZE: u16 = 1024;
const QUEUE_MAX_SIZES: [u16; 2] = [HIPRIO_QUEUE_SIZE, REQUEST_QUEUE_SIZE];

/// Config space (virtio 1.2, 5.11.4): `u8 tag[36]; le32 num_request_queues;`.
const CONFIG_SIZE: usize = TAG_MAX_LEN + 4;

/// A virtio-fs device sharing one host directory under a tag.
pub struct VirtioFs {
    tag: String,
    root: String,
    read_only: bool,
    sharing: Sharing,
    config: [u8; CONFIG_SIZE],
    /// The file system served; rebuilt after a driver reset so no inode or handle of the
    /// previous driver survives.
    fs: Option<Arc<ShareFs>>,
    worker: Option<DeviceWorker>,
}

impl VirtioFs {
    /// Shares `shared_dir` under `tag` with the close-to-open cache policy that is safe when
    /// host processes also use the directory ([`Sharing::Shared`]).
    pub fn new(tag: &str, shared_dir: &Path, read_only: bool) -> Result<VirtioFs, FsError> {
        Self::with_sharing(tag, shared_dir, read_only, Sharing::Shared)
    }

    /// Like [`new`](Self::new), with the cache policy chosen by who else uses the directory
    /// (a container's rootfs is [`Sharing::Exclusive`]).
    pub fn with_sharing(
        tag: &str,
        shared_dir: &Path,
        read_only: bool,
        sharing: Sharing,
    ) -> Result<VirtioFs, FsError> {
        validate_tag(tag)?;
        let root = validate_dir(shared_dir)?;
        raise_fd_limit();
        let fs = backend::build(&root, read_only, sharing).map_err(|source| FsError::Backend {
            path: shared_dir.to_path_buf(),
            source,
        })?;
        let mut config = [0u8; CONFIG_SIZE];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_MAX_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        Ok(VirtioFs {
            tag: tag.to_owned(),
            root,
            read_only,
            sharing,
            config,
            fs: Some(Arc::new(fs)),
            worker: None,
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }
}

fn validate_tag(tag: &str) -> Result<(), FsError> {
    if tag.is_empty() {
        return Err(FsError::EmptyTag);
    }
    if tag.len() > TAG_MAX_LEN {
        return Err(FsError::TagTooLong {
            tag: tag.to_owned(),
            len: tag.len(),
        });
    }
    Ok(())
}

/// The directory as the absolute, UTF-8 path `PassthroughFs` opens.
fn validate_dir(dir: &Path) -> Result<String, FsError> {
    let canonical = std::fs::canonicalize(dir).map_err(|source| FsError::SharedDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let meta = std::fs::metadata(&canonical).map_err(|source| FsError::SharedDir {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(FsError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    canonical
        .into_os_string()
        .into_string()
        .map_err(|_| FsError::NonUtf8Path {
            path: dir.to_path_buf(),
        })
}

/// `PassthroughFs` keeps one `O_PATH` fd per inode the guest has looked up: a walk over a
/// large tree needs far more than the usual soft limit of 1024.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write `limit`, a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

impl VirtioDevice for VirtioFs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_MAX_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start >= CONFIG_SIZE {
            return;
        }
        let n = data.len().min(CONFIG_SIZE - start);
        data[..n].copy_from_slice(&self.config[start..start + n]);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if activation.queues.len() != QUEUE_MAX_SIZES.len() {
            return Err(ActivateError::QueueCount {
                want: QUEUE_MAX_SIZES.len(),
                got: activation.queues.len(),
            });
        }
        let fs = match self.fs.clone() {
            Some(fs) => fs,
            None => {
                let fs = backend::build(&self.root, self.read_only, self.sharing)
                    .map_err(|e| ActivateError::Backend(format!("virtio-fs {}: {e}", self.root)))?;
                let fs = Arc::new(fs);
                self.fs = Some(fs.clone());
                fs
            }
        };
        // With EVENT_IDX acked the transport has already switched it on in every queue.
        let state = QueueServer {
            memory: activation.memory,
            interrupt: activation.interrupt,
            queues: activation.queues,
            server: Arc::new(Server::new(fs)),
            dropped: 0,
        };
        self.worker = Some(worker::spawn(&self.tag, state).map_err(ActivateError::Worker)?);
        Ok(())
    }

    fn reset(&mut self) {
        // Joins the worker; its queues, memory and interrupt go with it.
        self.worker = None;
        self.fs = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::virtio::fs::test_utils::Scratch;

    #[test]
    fn tag_and_directory_are_validated() {
        let scratch = Scratch::new("device");
        let share = scratch.share();
        assert!(matches!(
            VirtioFs::new("", &share, false),
            Err(FsError::EmptyTag)
        ));
        let long = "x".repeat(TAG_MAX_LEN + 1);
        assert!(matches!(
            VirtioFs::new(&long, &share, false),
            Err(FsError::TagTooLong { len: 37, .. })
        ));
        let missing = scratch.top.join("missing");
        let err = VirtioFs::new("t", &missing, false).err().unwrap();
        assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");
        let err = VirtioFs::new("t", &scratch.secret(), false).err().unwrap();
        assert!(matches!(err, FsError::NotADirectory { .. }), "{err}");
        assert!(err.to_string().contains("secret"));
        VirtioFs::new(&"x".repeat(TAG_MAX_LEN), &share, true).unwrap();
    }

    #[test]
    fn config_space_holds_the_tag_and_one_request_queue() {
        let scratch = Scratch::new("config");
        let fs = VirtioFs::new("rootfs", &scratch.share(), false).unwrap();
        assert_eq!(fs.device_type(), 26);
        assert_eq!(fs.queue_max_sizes().len(), 2);
        assert_eq!(fs.features(), VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
        let mut tag = [0xffu8; 36];
        fs.read_config(0, &mut tag);
        assert_eq!(&tag[..6], b"rootfs");
        assert!(tag[6..].iter().all(|&b| b == 0));
        let mut queues = [0u8; 4];
        fs.read_config(36, &mut queues);
        assert_eq!(u32::from_le_bytes(queues), 1);
        // Past the end reads as zero; a huge offset does not panic.
        let mut past = [0xffu8; 8];
        fs.read_config(38, &mut past);
        assert_eq!(past, [0; 8]); // bytes 2-3 of num_request_queues = 1, then nothing
        fs.read_config(u64::MAX, &mut past);
        assert_eq!(past, [0; 8]);
    }
}
