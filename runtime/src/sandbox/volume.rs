//! Host directories shared into the sandbox: the rootfs and `--volume HOST:GUEST[:ro]`.
//! Everything here is checked before a VM boots, so a typo costs nothing.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    #[error("--volume {spec:?}: want HOST:GUEST or HOST:GUEST:ro")]
    Syntax { spec: String },
    #[error(
        "--volume {spec:?}: the guest path {guest:?} must be absolute, without '..', and not /"
    )]
    GuestPath { spec: String, guest: String },
    #[error("{what} {path} does not exist")]
    Missing { what: &'static str, path: PathBuf },
    #[error("{what} {path} is not a directory")]
    NotADirectory { what: &'static str, path: PathBuf },
    #[error("{what} {path}: {message}")]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
}

/// A host directory mounted at a path inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub host: PathBuf,
    /// Absolute, normalized (no `.`/`..`, no trailing `/`), not `/`.
    pub guest: String,
    pub read_only: bool,
}

impl Volume {
    /// Parses `HOST:GUEST` or `HOST:GUEST:ro` (`:rw` is accepted too). Checks the syntax
    /// and the guest path, not the host side (see [`check_dir`]).
    pub fn parse(spec: &str) -> Result<Self, VolumeError> {
        let syntax = || VolumeError::Syntax {
            spec: spec.to_string(),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (host, guest, read_only) = match parts.as_slice() {
            [h, g] => (*h, *g, false),
            [h, g, "ro"] => (*h, *g, true),
            [h, g, "rw"] => (*h, *g, false),
            _ => return Err(syntax()),
        };
        if host.is_empty() || guest.is_empty() {
            return Err(syntax());
        }
        let guest = normalize_guest(guest).ok_or_else(|| VolumeError::GuestPath {
            spec: spec.to_string(),
            guest: guest.to_string(),
        })?;
        Ok(Self {
            host: PathBuf::from(host),
            guest,
            read_only,
        })
    }
}

/// A host directory shared under its own virtio-fs tag and mounted at an absolute guest
/// path outside the rootfs (the OCI backend's bind-mount sources, for instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The virtio-fs tag: unique in the VM, not `rootfs` nor `vol<N>`.
    pub tag: String,
    pub host: PathBuf,
    /// Absolute guest path.
    pub guest: String,
    pub read_only: bool,
}

/// `/a//b/./c/` -> `/a/b/c`; `None` for a relative path, one with `..`, or `/` itself.
fn normalize_guest(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut out = String::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                out.push('/');
                out.push_str(n.to_str()?);
            }
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Checks that `path` is an existing directory; `what` names it in the error ("--rootfs").
pub fn check_dir(what: &'static str, path: &Path) -> Result<(), VolumeError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(VolumeError::NotADirectory {
            what,
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(VolumeError::Missing {
            what,
            path: path.to_path_buf(),
        }),
        Err(e) => Err(VolumeError::Unreadable {
            what,
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_syntax() {
        assert_eq!(
            Volume::parse("/h:/g").unwrap(),
            Volume {
                host: "/h".into(),
                guest: "/g".into(),
                read_only: false
            }
        );
        let v = Volume::parse("rel/dir:/data//x/./:ro").unwrap();
        assert_eq!(
            (v.host.to_str().unwrap(), v.guest.as_str(), v.read_only),
            ("rel/dir", "/data/x", true)
        );
        assert!(!Volume::parse("/h:/g:rw").unwrap().read_only);
        for bad in ["/h", "/h:/g:rx", ":/g", "/h:", "/h:/g:ro:x", ""] {
            assert!(
                matches!(Volume::parse(bad), Err(VolumeError::Syntax { .. })),
                "{bad}"
            );
        }
        for bad in ["/h:g", "/h:/", "/h:/a/../b", "/h:///"] {
            let e = Volume::parse(bad).unwrap_err();
            assert!(matches!(e, VolumeError::GuestPath { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn dirs_are_checked() {
        assert!(check_dir("--rootfs", Path::new("/")).is_ok());
        let e = check_dir("--rootfs", Path::new("/nonexistent/x")).unwrap_err();
        assert_eq!(e.to_string(), "--rootfs /nonexistent/x does not exist");
        let e = check_dir("--rootfs", Path::new("/proc/self/status")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--rootfs /proc/self/status is not a directory"
        );
    }
}
