//! Where husk finds the guest kernel and initramfs when the caller does not say.
//!
//! Without environment variables (podman and containerd strip them): next to the running
//! executable (`make` puts them beside `target/release/husk`), then `<exe dir>/../share/husk`
//! (`make install` puts them in `PREFIX/share/husk`); `/etc/husk/config.toml` (keys `kernel`
//! and `initrd`, relative paths from /etc/husk) overrides both when present.

use std::path::{Path, PathBuf};

/// The system-wide config file.
pub const SYSTEM_CONFIG: &str = "/etc/husk/config.toml";
/// File names of the guest kernel and initramfs.
pub const KERNEL_NAME: &str = "vmlinux";
pub const INITRD_NAME: &str = "initramfs.cpio";

/// Errors finding the guest's assets.
#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    #[error("cannot tell where the husk executable is: {0}")]
    Exe(std::io::Error),
    #[error("cannot read {}: {}", .0.display(), .1)]
    ReadConfig(PathBuf, std::io::Error),
    #[error("{} is not valid: {}", .0.display(), .1)]
    ParseConfig(PathBuf, String),
    #[error("no guest {what} found (looked for {}; pass --{flag} or set `{flag}` in {SYSTEM_CONFIG})", .looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and "))]
    NotFound {
        what: &'static str,
        flag: &'static str,
        looked: Vec<PathBuf>,
    },
}

/// The `/etc/husk/config.toml` keys husk reads here (other keys are for other parts).
#[derive(Debug, Default, serde::Deserialize)]
struct ConfigFile {
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
}

/// The guest kernel and initramfs paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assets {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// Which asset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asset {
    Kernel,
    Initrd,
}

/// Finds one asset for the running executable and the system config.
pub fn find(which: Asset) -> Result<PathBuf, AssetsError> {
    let exe = std::env::current_exe().map_err(AssetsError::Exe)?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    locate(which, dir, Path::new(SYSTEM_CONFIG))
}

/// Finds both assets for an executable in `exe_dir`, with `config` as the config file.
pub fn find_from(exe_dir: &Path, config: &Path) -> Result<Assets, AssetsError> {
    Ok(Assets {
        kernel: locate(Asset::Kernel, exe_dir, config)?,
        initrd: locate(Asset::Initrd, exe_dir, config)?,
    })
}

/// Finds one asset for an executable in `exe_dir`, with `config` as the config file.
pub fn locate(which: Asset, exe_dir: &Path, config: &Path) -> Result<PathBuf, AssetsError> {
    let file = match std::fs::read_to_string(config) {
        Ok(text) => toml::from_str::<ConfigFile>(&text)
            .map_err(|e| AssetsError::ParseConfig(config.to_path_buf(), e.message().to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ConfigFile::default(),
        Err(e) => return Err(AssetsError::ReadConfig(config.to_path_buf(), e)),
    };
    let (configured, name, what, flag) = match which {
        Asset::Kernel => (file.kernel, KERNEL_NAME, "kernel", "kernel"),
        Asset::Initrd => (file.initrd, INITRD_NAME, "initramfs", "initrd"),
    };
    if let Some(p) = configured {
        return Ok(config.parent().unwrap_or(Path::new("/")).join(p));
    }
    let looked = vec![
        exe_dir.join(name),
        exe_dir.join("..").join("share").join("husk").join(name),
    ];
    looked
        .iter()
        .find(|p| p.exists())
        .cloned()
        .ok_or(AssetsError::NotFound { what, flag, looked })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tree(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("husk-assets-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("share/husk")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        root
    }

    #[test]
    fn beside_the_executable_wins_over_share() {
        let r = tree("beside");
        for f in [
            "bin/vmlinux",
            "bin/initramfs.cpio",
            "share/husk/vmlinux",
            "share/husk/initramfs.cpio",
        ] {
            fs::write(r.join(f), b"x").unwrap();
        }
        let a = find_from(&r.join("bin"), &r.join("etc/none.toml")).unwrap();
        assert_eq!(a.kernel, r.join("bin/vmlinux"));
        assert_eq!(a.initrd, r.join("bin/initramfs.cpio"));
        fs::remove_dir_all(r).unwrap();
    }

    #[test]
    fn installed_layout_is_found() {
        let r = tree("share");
        fs::write(r.join("share/husk/vmlinux"), b"x").unwrap();
        fs::write(r.join("share/husk/initramfs.cpio"), b"x").unwrap();
        let a = find_from(&r.join("bin"), &r.join("etc/none.toml")).unwrap();
        assert!(a.kernel.ends_with("bin/../share/husk/vmlinux"), "{a:?}");
        fs::remove_dir_all(r).unwrap();
    }

    #[test]
    fn config_file_overrides_both() {
        let r = tree("config");
        fs::write(r.join("bin/vmlinux"), b"x").unwrap();
        fs::write(r.join("bin/initramfs.cpio"), b"x").unwrap();
        let cfg = r.join("etc/config.toml");
        fs::write(
            &cfg,
            "kernel = \"/k/vmlinux\"\ninitrd = \"rel.cpio\"\nother = 1\n",
        )
        .unwrap();
        let a = find_from(&r.join("bin"), &cfg).unwrap();
        assert_eq!(a.kernel, PathBuf::from("/k/vmlinux"));
        assert_eq!(a.initrd, r.join("etc/rel.cpio"));
        fs::write(&cfg, "kernel = [").unwrap();
        assert!(matches!(
            find_from(&r.join("bin"), &cfg),
            Err(AssetsError::ParseConfig(..))
        ));
        fs::remove_dir_all(r).unwrap();
    }

    #[test]
    fn nothing_found_names_where_it_looked() {
        let r = tree("none");
        let e = find_from(&r.join("bin"), &r.join("etc/none.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("no guest kernel found"), "{e}");
        assert!(
            e.contains("bin/vmlinux") && e.contains("share/husk/vmlinux"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        fs::remove_dir_all(r).unwrap();
    }
}
