//! `--pid-file`: the pid in decimal, no trailing newline, written atomically (a
//! temporary file beside it, renamed over it) so that a reader such as conmon never
//! sees a partial number.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("write pid file {path}: {source}")]
pub struct PidFileError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Writes `pid` to `path` (relative paths are taken from the current directory).
pub fn write(path: &Path, pid: i32) -> Result<(), PidFileError> {
    let err = |source| PidFileError {
        path: path.to_path_buf(),
        source,
    };
    let path = std::path::absolute(path).map_err(err)?;
    let name = path.file_name().ok_or_else(|| {
        err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file name",
        ))
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".husk-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        file.write_all(pid.to_string().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_decimal_without_newline_and_replaces() {
        let dir = std::env::temp_dir().join(format!("husk-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pid");
        write(&path, 16055).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"16055");
        write(&path, 7).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"7");
        // Nothing else left beside it.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let e = write(&dir.join("missing/pid"), 1).unwrap_err();
        assert!(e.to_string().contains("missing/pid"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
