//! A sandbox's private state directory, `/run/husk-vm/<id>/` (mode 0700): the vsock unix
//! sockets live there, so only root can reach the guest agent. Removed, with whatever
//! the VMM left in it, when the [`StateDir`] is dropped.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Where `husk vm run` sandboxes keep their state unless told otherwise: beside, not
/// under, the OCI root (/run/husk), whose entries are container ids (`husk create vm`
/// must not meet a sandbox directory).
pub const DEFAULT_STATE_ROOT: &str = "/run/husk-vm";

/// Errors creating a state directory; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("cannot create the state directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("a sandbox with id {id} already exists ({path})")]
    Exists { id: String, path: PathBuf },
}

/// An exclusive, private directory for one sandbox; removed on drop.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Creates `<root>/<id>` with mode 0700 (and `root` itself, 0700, if missing). Fails
    /// if `<root>/<id>` already exists: two sandboxes never share one.
    pub fn create(root: &Path, id: &str) -> Result<Self, StateDirError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|source| StateDirError::Create {
                path: root.to_path_buf(),
                source,
            })?;
        let path = root.join(id);
        match DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => Ok(Self { path }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(StateDirError::Exists {
                id: id.to_string(),
                path,
            }),
            Err(source) => Err(StateDirError::Create { path, source }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        // Sockets only; nothing in here is worth keeping after the sandbox.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_exclusive_and_removed_on_drop() {
        let root = std::env::temp_dir().join(format!("husk-statedir-test-{}", std::process::id()));
        let dir = StateDir::create(&root, "sb1").unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(dir.path().join("sock"), b"x").unwrap();
        let again = StateDir::create(&root, "sb1").unwrap_err().to_string();
        assert!(
            again.contains("sb1") && again.contains("already exists"),
            "{again}"
        );
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
