//! The state store under `--root`: one directory per container (mode 0700) holding
//! `state.json`, and one lock per container so that concurrent commands on one id take
//! turns.
//!
//! The lock is `flock(2)` on the container's directory itself. A container comes into
//! existence fully formed and already locked: it is built in a temporary directory
//! whose name no id can have (`@...`), then renamed into place with
//! `RENAME_NOREPLACE`, which is also what makes a duplicate id fail. Deleting renames
//! the directory away before removing it, under the lock; a command that was waiting
//! on the lock then sees that its directory is no longer the one at the id's path.
//! Reading a container (`state`, `list`) takes no lock: `state.json` is only ever
//! replaced whole by a rename.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::id::{self, IdError};
use super::state::{ContainerRecord, Status};

/// The record's file name inside a container's directory.
pub const STATE_FILE: &str = "state.json";
/// How long a command waits for another one holding a container's lock. Generous: a
/// `create` holds it while a microVM boots, which in an emulated test host is slow.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container with id exists: {0}")]
    Exists(String),
    #[error("container {id} is busy: another command held its lock for {waited:?}")]
    Busy { id: String, waited: Duration },
    #[error("state root {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("container {id}: {what} {path}: {source}")]
    Io {
        id: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("container {id}: corrupt {path}: {source}")]
    Corrupt {
        id: String,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// A container as read from the store: its directory (where a backend may keep its
/// own files, such as sockets) and its record.
#[derive(Clone, Debug)]
pub struct Container {
    pub dir: PathBuf,
    pub record: ContainerRecord,
}

impl Container {
    pub fn id(&self) -> &str {
        &self.record.id
    }
}

/// A container whose lock this process holds, until it is dropped or removed.
#[derive(Debug)]
pub struct LockedContainer {
    container: Container,
    /// The directory, `flock`ed exclusively.
    lock: OwnedFd,
}

impl std::ops::Deref for LockedContainer {
    type Target = Container;
    fn deref(&self) -> &Container {
        &self.container
    }
}

/// The store rooted at a `--root` directory.
#[derive(Clone, Debug)]
pub struct StateStore {
    root: PathBuf,
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)?;
    Ok(dir.into())
}

/// `flock(fd, op)`; Ok(false) when `LOCK_NB` was given and the lock is held elsewhere.
fn flock(fd: &OwnedFd, op: i32) -> io::Result<bool> {
    loop {
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::flock(fd.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

/// Renames `from` to `to` unless `to` exists (a plain rename would replace an empty
/// directory).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let cstr = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))
    };
    let (from, to) = (cstr(from)?, cstr(to)?);
    // SAFETY: two valid C strings; plain syscall.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Replaces `path` with `bytes` atomically: a temporary file beside it, synced, renamed.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl StateStore {
    pub fn new(root: impl Into<PathBuf>) -> StateStore {
        StateStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir_of(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn io_err(id: &str, what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
        let (id, path) = (id.to_string(), path.to_path_buf());
        move |source| StoreError::Io {
            id,
            what,
            path,
            source,
        }
    }

    /// Adds a container, locked by the caller. Fails if the id is taken.
    pub fn create(&self, record: ContainerRecord) -> Result<LockedContainer, StoreError> {
        let id = record.id.clone();
        id::validate(&id)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|source| StoreError::Root {
                path: self.root.clone(),
                source,
            })?;
        let dir = self.dir_of(&id);
        if dir.exists() {
            return Err(StoreError::Exists(id));
        }
        // '@' is in no id, so the temporary name never collides with a container.
        let tmp = self
            .root
            .join(format!("@creating.{id}.{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let built = (|| {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&tmp)
                .map_err(Self::io_err(&id, "create directory", &tmp))?;
            let lock = open_dir(&tmp).map_err(Self::io_err(&id, "open", &tmp))?;
            flock(&lock, libc::LOCK_EX).map_err(Self::io_err(&id, "lock", &tmp))?;
            let mut locked = LockedContainer {
                container: Container {
                    dir: tmp.clone(),
                    record,
                },
                lock,
            };
            locked.save()?;
            match rename_noreplace(&tmp, &dir) {
                Ok(()) => {
                    locked.container.dir = dir.clone();
                    Ok(locked)
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
                    Err(StoreError::Exists(id.clone()))
                }
                Err(e) => Err(Self::io_err(&id, "rename into place", &dir)(e)),
            }
        })();
        if built.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        built
    }

    /// Reads a container without locking it.
    pub fn load(&self, id: &str) -> Result<Container, StoreError> {
        id::validate(id)?;
        let dir = self.dir_of(id);
        let record = read_record(id, &dir)?;
        Ok(Container { dir, record })
    }

    /// Locks a container, waiting up to [`LOCK_TIMEOUT`] for another command that
    /// holds it, and reads its record.
    pub fn lock(&self, id: &str) -> Result<LockedContainer, StoreError> {
        self.lock_with_timeout(id, LOCK_TIMEOUT)
    }

    pub fn lock_with_timeout(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<LockedContainer, StoreError> {
        id::validate(id)?;
        let dir = self.dir_of(id);
        let started = Instant::now();
        loop {
            let lock = match open_dir(&dir) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::NotFound(id.to_string()))
                }
                Err(e) => return Err(Self::io_err(id, "open", &dir)(e)),
            };
            let mut pause = Duration::from_millis(1);
            while !flock(&lock, libc::LOCK_EX | libc::LOCK_NB)
                .map_err(Self::io_err(id, "lock", &dir))?
            {
                if started.elapsed() >= timeout {
                    return Err(StoreError::Busy {
                        id: id.to_string(),
                        waited: started.elapsed(),
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            // Deleted (or deleted and created again) while we waited: start over.
            let ours = File::from(lock.try_clone().map_err(Self::io_err(id, "lock", &dir))?)
                .metadata()
                .map_err(Self::io_err(id, "stat", &dir))?;
            match fs::metadata(&dir) {
                Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::NotFound(id.to_string()))
                }
                Err(e) => return Err(Self::io_err(id, "stat", &dir)(e)),
            }
            let record = read_record(id, &dir)?;
            return Ok(LockedContainer {
                container: Container { dir, record },
                lock,
            });
        }
    }

    /// Every container, sorted by id. Directories that are not containers (temporary
    /// ones, strays) are passed over, and so is one deleted while listing.
    pub fn list(&self) -> Result<Vec<Container>, StoreError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Root {
                    path: self.root.clone(),
                    source,
                })
            }
        };
        let mut containers = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if id::validate(&name).is_err() {
                continue;
            }
            match self.load(&name) {
                Ok(c) => containers.push(c),
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        containers.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        Ok(containers)
    }

    /// The container's status now. A record still `creating` is only creating while
    /// some command holds its lock (the creating one); otherwise `create` died.
    pub fn status_now(&self, container: &Container) -> Status {
        container.record.status_now(|| lock_is_held(&container.dir))
    }

    /// A container read without its lock, with its current status. A `creating`
    /// record whose lock is free may be one whose `create` finished just after the
    /// read: it is read once more before it counts as a dead `create`.
    pub fn load_current(&self, container: Container) -> (Container, Status) {
        let status = self.status_now(&container);
        if container.record.status != Status::Creating || status != Status::Stopped {
            return (container, status);
        }
        match self.load(container.id()) {
            Ok(fresh) if fresh.record.status != Status::Creating => {
                let status = self.status_now(&fresh);
                (fresh, status)
            }
            _ => (container, status),
        }
    }
}

/// Whether some process holds the lock on `dir` (false if it is gone).
fn lock_is_held(dir: &Path) -> bool {
    let Ok(fd) = open_dir(dir) else {
        return false;
    };
    // Taking the lock for an instant is the only way to ask; it is dropped at once.
    !flock(&fd, libc::LOCK_EX | libc::LOCK_NB).unwrap_or(true)
}

fn read_record(id: &str, dir: &Path) -> Result<ContainerRecord, StoreError> {
    let path = dir.join(STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::NotFound(id.to_string()))
        }
        Err(e) => return Err(StateStore::io_err(id, "read", &path)(e)),
    };
    serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
        id: id.to_string(),
        path,
        source,
    })
}

impl LockedContainer {
    pub fn record_mut(&mut self) -> &mut ContainerRecord {
        &mut self.container.record
    }

    /// The status now: this command holds the lock, so a record still `creating`
    /// belongs to a `create` that died (unless this command is that `create`).
    pub fn status_now(&self) -> Status {
        self.record.status_now(|| false)
    }

    /// Writes the record (atomically).
    pub fn save(&mut self) -> Result<(), StoreError> {
        let path = self.dir.join(STATE_FILE);
        let bytes = serde_json::to_vec(&self.record).map_err(|source| StoreError::Corrupt {
            id: self.record.id.clone(),
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes).map_err(StateStore::io_err(&self.record.id, "write", &path))
    }

    /// Removes the container from the store, then releases its lock. A command
    /// waiting for the lock finds the container gone.
    pub fn remove(self) -> Result<(), StoreError> {
        let id = self.record.id.clone();
        let parent = self.dir.parent().unwrap_or(Path::new("/")).to_path_buf();
        let doomed = parent.join(format!("@deleting.{id}.{}", std::process::id()));
        let _ = fs::remove_dir_all(&doomed);
        fs::rename(&self.dir, &doomed).map_err(StateStore::io_err(
            &id,
            "rename away",
            &self.dir,
        ))?;
        let removed = fs::remove_dir_all(&doomed);
        drop(self.lock);
        removed.map_err(StateStore::io_err(&id, "remove", &doomed))
    }

    /// Gives up the lock, keeping a snapshot of the container.
    pub fn unlock(self) -> Container {
        self.container
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn temp_root(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("husk-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        root
    }

    fn record(id: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            status: Status::Creating,
            process: None,
            created: "2026-11-27T03:17:05Z".into(),
            owner: "root".into(),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn create_load_list_remove() {
        let root = temp_root("basic");
        let store = StateStore::new(&root);
        assert!(
            store.list().unwrap().is_empty(),
            "a missing root lists nothing"
        );
        let mut c = store.create(record("c1")).unwrap();
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&c.dir).unwrap().mode() & 0o777, 0o700);
        c.record_mut().status = Status::Stopped;
        c.save().unwrap();
        assert!(matches!(store.create(record("c1")), Err(StoreError::Exists(id)) if id == "c1"));
        drop(c);
        assert_eq!(store.load("c1").unwrap().record.status, Status::Stopped);
        store.create(record("a0")).unwrap();
        fs::create_dir(root.join("@stray")).unwrap();
        let ids: Vec<String> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|c| c.record.id)
            .collect();
        assert_eq!(ids, ["a0", "c1"]);
        store.lock("c1").unwrap().remove().unwrap();
        assert!(matches!(store.load("c1"), Err(StoreError::NotFound(_))));
        assert!(matches!(store.lock("c1"), Err(StoreError::NotFound(_))));
        assert!(matches!(store.lock("../x"), Err(StoreError::Id(_))));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn one_holder_at_a_time_and_waiters_see_a_delete() {
        let root = temp_root("lock");
        let store = StateStore::new(&root);
        let held = store.create(record("c1")).unwrap();
        // While the creator holds it, the record is "creating"; a waiter times out.
        assert_eq!(
            store.status_now(&store.load("c1").unwrap()),
            Status::Creating
        );
        let e = store
            .lock_with_timeout("c1", Duration::from_millis(50))
            .unwrap_err();
        assert!(matches!(e, StoreError::Busy { .. }), "{e}");
        // A waiter that gets the lock after a delete finds no container.
        let waiter = {
            let store = store.clone();
            std::thread::spawn(move || store.lock("c1").map(|_| ()))
        };
        std::thread::sleep(Duration::from_millis(50));
        held.remove().unwrap();
        assert!(matches!(
            waiter.join().unwrap(),
            Err(StoreError::NotFound(_))
        ));
        // A creating record whose creator let go (died) counts as stopped.
        drop(store.create(record("c2")).unwrap());
        assert_eq!(
            store.status_now(&store.load("c2").unwrap()),
            Status::Stopped
        );
        assert_eq!(store.lock("c2").unwrap().status_now(), Status::Stopped);
        fs::remove_dir_all(&root).unwrap();
    }
}
