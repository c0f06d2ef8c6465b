//! Host bind mounts of a container (podman's /etc/hosts, resolv.conf, hostname,
//! .containerenv are files; volumes are directories), made visible in the guest.
//!
//! The monitor gives itself a mount namespace of its own (a slave of the host's, so host
//! unmounts still reach it and it never pins another container's mounts) and bind-mounts
//! each source, file or directory, read-only when the mount says `ro`, at
//! `<state dir>/binds/<n>`. That directory is one virtio-fs share, mounted in the guest
//! at [`GUEST_BINDS`]; the spec's sources are rewritten to `GUEST_BINDS/<n>`. The host
//! mounts exist only in the monitor's namespace, so they die with it, however it dies:
//! nothing is left on the host to unmount. A bind (rather than a copy) keeps the file
//! live: podman rewrites /etc/hosts of a running container.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

/// The binds directory's name in the container's state directory.
pub const BINDS_DIR: &str = "binds";
/// virtio-fs tag of the binds share.
pub const BINDS_TAG: &str = "binds";
/// Where the binds share is mounted in the guest.
pub const GUEST_BINDS: &str = "/run/husk/binds";

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("mounts[{index}] ({destination}): bind source {source_path} does not exist")]
    Missing {
        index: usize,
        destination: String,
        source_path: PathBuf,
    },
    #[error("mounts[{index}] ({destination}): bind mount without a source")]
    NoSource { index: usize, destination: String },
    #[error("cannot give the VM monitor its own mount namespace: {0}")]
    Namespace(io::Error),
    #[error("cannot bind-mount {source_path} at {target}: {error}")]
    Mount {
        source_path: PathBuf,
        target: PathBuf,
        error: io::Error,
    },
}

/// One host source shared as `GUEST_BINDS/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindSource {
    pub host: PathBuf,
    pub name: String,
    pub dir: bool,
    pub read_only: bool,
    pub recursive: bool,
}

/// Whether a spec mount is a bind mount (runc: type "bind", or a "bind"/"rbind" option).
fn is_bind(typ: Option<&str>, options: &[String]) -> bool {
    typ == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind")
}

/// Rewrites `spec` for the guest: every bind mount's source becomes a path under
/// [`GUEST_BINDS`]; returns the host sources to share. Relative sources are relative
/// to `bundle`. Other mounts (proc, tmpfs, ...) are the guest's own and stay as they are.
pub fn plan(spec: &mut Spec, bundle: &Path) -> Result<Vec<BindSource>, BindError> {
    let mut sources = Vec::new();
    let Some(mut mounts) = spec.mounts().clone() else {
        return Ok(sources);
    };
    for (index, m) in mounts.iter_mut().enumerate() {
        let options = m.options().clone().unwrap_or_default();
        if !is_bind(m.typ().as_deref(), &options) {
            continue;
        }
        let destination = m.destination().display().to_string();
        let Some(source) = m.source().clone() else {
            return Err(BindError::NoSource { index, destination });
        };
        let host = if source.is_absolute() {
            source
        } else {
            bundle.join(source)
        };
        let meta = fs::metadata(&host).map_err(|_| BindError::Missing {
            index,
            destination,
            source_path: host.clone(),
        })?;
        let name = sources.len().to_string();
        m.set_source(Some(Path::new(GUEST_BINDS).join(&name)));
        sources.push(BindSource {
            host,
            name,
            dir: meta.is_dir(),
            read_only: options.iter().any(|o| o == "ro"),
            recursive: options.iter().any(|o| o == "rbind"),
        });
    }
    spec.set_mounts(Some(mounts));
    Ok(sources)
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))
}

fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target = cstring(target)?;
    // SAFETY: valid C strings (or null) that outlive the call; no data argument.
    let r = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Moves this process into a mount namespace of its own, a slave of the host's. Must
/// run before the process has threads (unshare(CLONE_NEWNS) refuses a threaded caller).
pub fn unshare_mounts() -> Result<(), BindError> {
    // SAFETY: plain syscall.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(BindError::Namespace(io::Error::last_os_error()));
    }
    // Slave, not private: the host's later unmounts propagate in, so this namespace
    // never keeps another container's mounts alive; nothing propagates back out.
    mount(None, Path::new("/"), libc::MS_REC | libc::MS_SLAVE).map_err(BindError::Namespace)
}

/// Bind-mounts every source at `dir/<name>` (in this process's own namespace).
pub fn mount_all(dir: &Path, sources: &[BindSource]) -> Result<(), BindError> {
    fs::create_dir_all(dir).map_err(|error| BindError::Mount {
        source_path: dir.to_path_buf(),
        target: dir.to_path_buf(),
        error,
    })?;
    for s in sources {
        let target = dir.join(&s.name);
        let err = |error| BindError::Mount {
            source_path: s.host.clone(),
            target: target.clone(),
            error,
        };
        if s.dir {
            fs::create_dir_all(&target).map_err(err)?;
        } else {
            fs::File::create(&target).map_err(err)?;
        }
        let rec = if s.recursive { libc::MS_REC } else { 0 };
        mount(Some(&s.host), &target, libc::MS_BIND | rec).map_err(err)?;
        if s.read_only {
            mount(
                None,
                &target,
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | rec,
            )
            .map_err(err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bind_sources_are_rewritten_and_the_rest_kept() {
        let dir = std::env::temp_dir().join(format!("husk-binds-{}", std::process::id()));
        fs::create_dir_all(dir.join("vol")).unwrap();
        fs::write(dir.join("hosts"), "127.0.0.1 x\n").unwrap();
        let mut spec: Spec = serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": dir.join("hosts"),
                 "options": ["rbind", "ro"]},
                {"destination": "/data", "source": "vol", "options": ["bind"]},
            ]
        }))
        .unwrap();
        let sources = plan(&mut spec, &dir).unwrap();
        assert_eq!(
            sources,
            [
                BindSource {
                    host: dir.join("hosts"),
                    name: "0".into(),
                    dir: false,
                    read_only: true,
                    recursive: true
                },
                BindSource {
                    host: dir.join("vol"),
                    name: "1".into(),
                    dir: true,
                    read_only: false,
                    recursive: false
                }
            ]
        );
        let mounts = spec.mounts().as_ref().unwrap();
        assert_eq!(mounts[0].source().as_deref(), Some(Path::new("proc")));
        assert_eq!(
            mounts[1].source().as_deref(),
            Some(Path::new("/run/husk/binds/0"))
        );
        assert_eq!(
            mounts[2].source().as_deref(),
            Some(Path::new("/run/husk/binds/1"))
        );

        let mut missing: Spec = serde_json::from_value(json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"},
            "mounts": [{"destination": "/x", "type": "bind", "source": "/nonexistent/y"}]
        }))
        .unwrap();
        let e = plan(&mut missing, &dir).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/y does not exist"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
