//! The runtime's log, as runc keeps it: `--log FILE` gets one line per message, JSON
//! (`{"level":"error","msg":"...","time":"RFC3339"}`) with `--log-format json`, logfmt
//! (`time="..." level=error msg="..."`) otherwise. conmon and podman read the last
//! error line of that file to tell the user why a command failed.
//!
//! Errors and warnings also go to stderr as one line `husk: ...` (runc prints the bare
//! message to stderr when it logs to a file, too). Debug lines go only to the file,
//! and only with `--debug`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use super::time::rfc3339;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Warning,
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("open log file {path}: {source}")]
pub struct LogError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    level: &'a str,
    msg: &'a str,
    time: &'a str,
}

/// Where this command's messages go.
#[derive(Debug, Default)]
pub struct Logger {
    file: Option<Mutex<File>>,
    format: LogFormat,
    debug: bool,
}

impl Logger {
    /// A logger appending to `path` (created 0644 if missing), or stderr only.
    pub fn open(path: Option<&Path>, format: LogFormat, debug: bool) -> Result<Logger, LogError> {
        let file = match path {
            None => None,
            Some(p) => Some(Mutex::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o644)
                    .open(p)
                    .map_err(|source| LogError {
                        path: p.to_path_buf(),
                        source,
                    })?,
            )),
        };
        Ok(Logger {
            file,
            format,
            debug,
        })
    }

    /// One line in the log's format.
    pub fn format_line(format: LogFormat, level: Level, msg: &str, time: SystemTime) -> String {
        let time = rfc3339(time);
        match format {
            LogFormat::Json => {
                let line = JsonLine {
                    level: level.name(),
                    msg,
                    time: &time,
                };
                serde_json::to_string(&line).unwrap_or_default()
            }
            // logfmt quoting is Go's %q; JSON string escaping is a close, safe subset.
            LogFormat::Text => format!(
                "time=\"{time}\" level={} msg={}",
                level.name(),
                serde_json::to_string(msg).unwrap_or_default()
            ),
        }
    }

    fn to_file(&self, level: Level, msg: &str) {
        if let Some(file) = &self.file {
            let mut line = Self::format_line(self.format, level, msg, SystemTime::now());
            line.push('\n');
            if let Ok(mut f) = file.lock() {
                // Nowhere left to report a failing log write.
                let _ = f.write_all(line.as_bytes());
            }
        }
    }

    pub fn error(&self, msg: &str) {
        self.to_file(Level::Error, msg);
        eprintln!("husk: {msg}");
    }

    pub fn warn(&self, msg: &str) {
        self.to_file(Level::Warning, msg);
        eprintln!("husk: warning: {msg}");
    }

    pub fn debug(&self, msg: &str) {
        if self.debug {
            self.to_file(Level::Debug, msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn lines_look_like_runcs() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_749_425);
        assert_eq!(
            Logger::format_line(
                LogFormat::Json,
                Level::Error,
                "container \"x\" does not exist",
                t
            ),
            r#"{"level":"error","msg":"container \"x\" does not exist","time":"2026-11-27T03:17:05Z"}"#
        );
        assert_eq!(
            Logger::format_line(LogFormat::Text, Level::Warning, "a \"b\"", t),
            r#"time="2026-11-27T03:17:05Z" level=warning msg="a \"b\"""#
        );
    }

    #[test]
    fn appends_to_the_file_debug_only_when_asked() {
        let path = std::env::temp_dir().join(format!("husk-log-{}.json", std::process::id()));
        std::fs::write(&path, "earlier\n").unwrap();
        let log = Logger::open(Some(&path), LogFormat::Json, false).unwrap();
        log.debug("hidden");
        log.error("boom");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(
            (v["level"].as_str(), v["msg"].as_str()),
            (Some("error"), Some("boom"))
        );
        let log = Logger::open(Some(&path), LogFormat::Json, true).unwrap();
        log.debug("shown");
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("\"shown\""));
        std::fs::remove_file(&path).unwrap();
    }
}
