//! virtio-fs from inside the guest: mounts the shares with mount(2) type "virtiofs" and
//! reports one `HUSK-PROBE <check>=ok|FAIL <detail>` line per check.
//!
//! Parameters (kernel command line, see tests/vm/fs.rs for the host side):
//! - `fs_rw=TAG`: a writable share, mounted at /mnt/rw: file ops, then escape attempts.
//! - `fs_ro=TAG`: a share exported read-only by the VMM, mounted read-WRITE at /mnt/ro:
//!   every write must still fail with EROFS.
//! - `fs_outside=PATH`: the host path of the secret file beside the rw share (the escape
//!   attempts aim at it); the file and escape checks run only when it is given.
//! - `fs_bench_mib=N`: write then read an N MiB file on the rw share; `fs_walk=DIR`: walk and
//!   stat DIR (under the rw share), reporting `bench-*` lines with times.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Instant;

use husk_guest_tests::{mount, mount_basics, param, power_off, report};

const RW: &str = "/mnt/rw";
const RO: &str = "/mnt/ro";

fn main() {
    mount_basics();
    let rw = param("fs_rw");
    let ro = param("fs_ro");
    if let Some(tag) = &rw {
        check("mount-rw", mount_virtiofs(tag, RW));
    }
    if let Some(tag) = &ro {
        check("mount-ro", mount_virtiofs(tag, RO));
    }
    if let (Some(_), Some(outside)) = (&rw, param("fs_outside")) {
        file_ops();
        escapes(outside);
    }
    if ro.is_some() {
        read_only();
    }
    if let Some(mib) = param("fs_bench_mib").and_then(|s| s.parse::<usize>().ok()) {
        check("bench-io", bench_io(mib));
    }
    if let Some(dir) = param("fs_walk") {
        check("bench-walk", bench_walk(&dir));
    }
    sync_all();
    power_off();
}

type Check = Result<String, String>;

fn check(name: &str, result: Check) {
    match result {
        Ok(detail) if detail.is_empty() => report(&format!("{name}=ok")),
        Ok(detail) => report(&format!("{name}=ok {detail}")),
        Err(detail) => report(&format!("{name}=FAIL {detail}")),
    }
}

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL in probe paths")
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Mounted read-write on purpose: the read-only share must hold without the guest's help.
fn mount_virtiofs(tag: &str, target: &str) -> Check {
    mount(tag, target, "virtiofs").map_err(|e| format!("mount {tag} on {target}: {e}"))?;
    Ok(String::new())
}

/// Expects `result` to fail with `want` (an errno).
fn expect_errno<T>(what: &str, result: std::io::Result<T>, want: i32) -> Result<(), String> {
    match result {
        Ok(_) => Err(format!("{what}: succeeded, want errno {want}")),
        Err(e) if e.raw_os_error() == Some(want) => Ok(()),
        Err(e) => Err(format!("{what}: {e}, want errno {want}")),
    }
}

fn io<T>(what: &str, result: std::io::Result<T>) -> Result<T, String> {
    result.map_err(|e| format!("{what}: {e}"))
}

/// Read, write, mkdir, rename, unlink, symlink, readlink, stat, chmod on the rw share. The
/// host test looks at the results from its side.
fn file_ops() {
    check(
        "host-file-visible",
        (|| {
            let text = io(
                "read from-host.txt",
                fs::read_to_string(format!("{RW}/from-host.txt")),
            )?;
            (text == "written by the host\n")
                .then(String::new)
                .ok_or(format!("read {text:?}"))
        })(),
    );
    check(
        "write-read",
        (|| {
            let path = format!("{RW}/hello.txt");
            io("write", fs::write(&path, b"hello from the guest\n"))?;
            let back = io("read back", fs::read(&path))?;
            (back == b"hello from the guest\n")
                .then(String::new)
                .ok_or("content differs".into())
        })(),
    );
    check(
        "mkdir-rename",
        (|| {
            io("mkdir", fs::create_dir(format!("{RW}/dir")))?;
            io(
                "rename",
                fs::rename(format!("{RW}/hello.txt"), format!("{RW}/dir/renamed.txt")),
            )?;
            let gone = !Path::new(&format!("{RW}/hello.txt")).exists();
            gone.then(String::new).ok_or("old name still there".into())
        })(),
    );
    check(
        "unlink",
        (|| {
            let path = format!("{RW}/gone.txt");
            io("create", fs::write(&path, b"x"))?;
            io("unlink", fs::remove_file(&path))?;
            expect_errno("stat after unlink", fs::metadata(&path), libc::ENOENT)
                .map(|_| String::new())
        })(),
    );
    check(
        "symlink-readlink",
        (|| {
            io("symlink", symlink("dir/renamed.txt", format!("{RW}/link")))?;
            let target = io("readlink", fs::read_link(format!("{RW}/link")))?;
            let through = io("read through link", fs::read(format!("{RW}/link")))?;
            (target == Path::new("dir/renamed.txt") && through == b"hello from the guest\n")
                .then(String::new)
                .ok_or(format!("readlink {target:?}"))
        })(),
    );
    check(
        "chmod-stat",
        (|| {
            let path = format!("{RW}/dir/renamed.txt");
            io(
                "chmod",
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600)),
            )?;
            let meta = io("stat", fs::metadata(&path))?;
            (meta.mode() & 0o7777 == 0o600 && meta.len() == 21)
                .then(String::new)
                .ok_or(format!("mode {:o} size {}", meta.mode(), meta.len()))
        })(),
    );
}

/// The host's secret must stay out of reach: by `..`, by symlinks (absolute, relative,
/// made by the host or the guest, swapped in mid-walk), by hard links; device nodes can't
/// be made, and one the host left in the share is never the host's device.
fn escapes(outside: String) {
    let secret_name = Path::new(&outside)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let never_secret = |what: &str, path: &str| -> Result<(), String> {
        match fs::read(path) {
            Ok(data) if data.starts_with(b"HOST SECRET") => {
                Err(format!("{what}: read the host secret"))
            }
            _ => Ok(()),
        }
    };
    check(
        "escape-dotdot",
        (|| {
            // The guest's VFS stops `..` at the mount; the VMM also maps `..` at the root to the
            // root. Either way: the guest's own /mnt, never the host directory above the share.
            never_secret("..", &format!("{RW}/../{secret_name}"))?;
            never_secret("../..", &format!("{RW}/dir/../../{secret_name}"))?;
            let up = io("readdir ..", fs::read_dir(format!("{RW}/..")))?;
            let names: Vec<_> = up.flatten().map(|e| e.file_name()).collect();
            if names.iter().any(|n| n.to_string_lossy() == secret_name) {
                return Err(format!("`..` listed {secret_name}: {names:?}"));
            }
            Ok(String::new())
        })(),
    );
    check(
        "escape-symlinks",
        (|| {
            io(
                "guest abs symlink",
                symlink(&outside, format!("{RW}/g-abs")),
            )?;
            io(
                "guest rel symlink",
                symlink(format!("../{secret_name}"), format!("{RW}/g-rel")),
            )?;
            for name in ["h-abs", "h-rel", "g-abs", "g-rel"] {
                never_secret(name, &format!("{RW}/{name}"))?;
                let meta = io(name, fs::symlink_metadata(format!("{RW}/{name}")))?;
                if !meta.file_type().is_symlink() {
                    return Err(format!("{name} is not a symlink"));
                }
            }
            // Writing through them must not reach the host file either.
            for name in ["h-abs", "g-abs"] {
                let _ = fs::OpenOptions::new()
                    .append(true)
                    .open(format!("{RW}/{name}"))
                    .and_then(|mut f| f.write_all(b"guest was here\n"));
            }
            // A directory symlink to the host directory above the share.
            let top = Path::new(&outside)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            io("symlink to top", symlink(&top, format!("{RW}/g-top")))?;
            never_secret("g-top", &format!("{RW}/g-top/{secret_name}"))?;
            Ok(String::new())
        })(),
    );
    check("escape-symlink-race", symlink_race(&secret_name));
    check(
        "escape-hardlink",
        (|| {
            // Through the host's absolute symlink (resolved in the guest: nothing there).
            let (from, to) = (c(&format!("{RW}/h-abs")), c(&format!("{RW}/hl-follow")));
            // SAFETY: valid NUL-terminated paths.
            let rc = unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    from.as_ptr(),
                    libc::AT_FDCWD,
                    to.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            };
            let follow = if rc == 0 { 0 } else { errno() };
            if rc == 0 {
                never_secret("hard link through symlink", &format!("{RW}/hl-follow"))?;
            }
            // By the host path itself.
            let (outside_c, to) = (c(&outside), c(&format!("{RW}/hl-direct")));
            // SAFETY: as above.
            if unsafe { libc::link(outside_c.as_ptr(), to.as_ptr()) } == 0 {
                return Err(format!("link({outside}) succeeded in the guest"));
            }
            Ok(format!(
                "through_symlink_errno={follow} direct_errno={}",
                errno()
            ))
        })(),
    );
    check(
        "escape-mknod",
        (|| {
            let mut refused = Vec::new();
            for (name, kind, dev) in [
                ("g-null", libc::S_IFCHR, libc::makedev(1, 3)),
                ("g-blk", libc::S_IFBLK, libc::makedev(8, 0)),
            ] {
                let path = c(&format!("{RW}/{name}"));
                // SAFETY: valid path.
                let rc = unsafe { libc::mknod(path.as_ptr(), kind | 0o666, dev) };
                if rc == 0 {
                    return Err(format!("mknod {name} succeeded"));
                }
                refused.push(format!("{name}:errno={}", errno()));
            }
            let fifo = c(&format!("{RW}/g-fifo"));
            // SAFETY: valid path.
            if unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) } != 0 {
                return Err(format!("mkfifo: {}", std::io::Error::last_os_error()));
            }
            Ok(refused.join(" "))
        })(),
    );
    check(
        "host-device-node",
        (|| {
            // The host left a device node for its own memory (/dev/mem's 1:1) in the share. The
            // guest kernel serves device nodes itself: opening it reaches the guest's device of
            // that number, never the host's.
            let meta = io("stat h-mem", fs::symlink_metadata(format!("{RW}/h-mem")))?;
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_char_device() {
                return Err("h-mem is not a char device in the guest".into());
            }
            let outcome = match fs::File::open(format!("{RW}/h-mem")) {
                Ok(mut f) => {
                    let mut buf = [0u8; 16];
                    format!(
                        "opened as the guest's device, read {:?}",
                        f.read(&mut buf).map_err(|e| e.to_string())
                    )
                }
                Err(e) => format!("open: {e}"),
            };
            Ok(outcome.replace(' ', "_"))
        })(),
    );
    check(
        "xattr-refused",
        (|| {
            let path = c(&format!("{RW}/dir/renamed.txt"));
            // A well-formed v2 file capability (CAP_NET_RAW permitted, effective) and a user
            // attribute: both must fail, the VMM serves no xattrs.
            let mut cap = [0u8; 20];
            cap[..4].copy_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
            cap[4..8].copy_from_slice(&(1u32 << 13).to_le_bytes());
            let mut errnos = Vec::new();
            for (name, value) in [("security.capability", &cap[..]), ("user.husk", &b"1"[..])] {
                let name_c = c(name);
                // SAFETY: valid strings; value points to value.len() valid bytes.
                let rc = unsafe {
                    libc::setxattr(
                        path.as_ptr(),
                        name_c.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    )
                };
                if rc == 0 {
                    return Err(format!("setxattr {name} succeeded"));
                }
                errnos.push(format!("{name}:errno={}", errno()));
            }
            Ok(errnos.join(" "))
        })(),
    );
}

/// Swaps a directory for a symlink to the host directory above the share, over and over,
/// while walking through that name: every walk that succeeds must land inside the share.
fn symlink_race(secret_name: &str) -> Check {
    let base = format!("{RW}/race");
    io("mkdir race", fs::create_dir_all(format!("{base}/real")))?;
    io(
        "plant",
        fs::write(format!("{base}/real/{secret_name}"), b"inside the share\n"),
    )?;
    io("symlink", symlink("../../..", format!("{base}/link")))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (base, stop) = (base.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut swaps = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // d is the directory, then the symlink, then the directory again.
                let _ = fs::rename(format!("{base}/real"), format!("{base}/d"));
                let _ = fs::rename(format!("{base}/d"), format!("{base}/real"));
                let _ = fs::rename(format!("{base}/link"), format!("{base}/d"));
                let _ = fs::rename(format!("{base}/d"), format!("{base}/link"));
                swaps += 1;
            }
            swaps
        })
    };
    let (mut inside, mut missing) = (0u32, 0u32);
    let mut leaked = None;
    let start = Instant::now();
    while start.elapsed().as_secs() < 3 {
        match fs::read(format!("{base}/d/{secret_name}")) {
            Ok(data) if data == b"inside the share\n" => inside += 1,
            Ok(data) => leaked = Some(String::from_utf8_lossy(&data).into_owned()),
            Err(_) => missing += 1,
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap_or(0);
    match leaked {
        Some(data) => Err(format!("read {data:?} through the swapped name")),
        None => Ok(format!(
            "swaps={swaps} reads_inside={inside} reads_failed={missing}"
        )),
    }
}

/// On a share the VMM exports read-only, mounted read-write by the guest.
fn read_only() {
    check(
        "ro-read",
        (|| {
            let text = io("read", fs::read_to_string(format!("{RO}/keep.txt")))?;
            (text == "read-only data\n")
                .then(String::new)
                .ok_or(format!("read {text:?}"))
        })(),
    );
    check(
        "ro-writes-refused",
        (|| {
            let erofs = libc::EROFS;
            let file = format!("{RO}/keep.txt");
            expect_errno("create", fs::write(format!("{RO}/new.txt"), b"x"), erofs)?;
            expect_errno(
                "open for write",
                fs::OpenOptions::new().write(true).open(&file),
                erofs,
            )?;
            expect_errno(
                "truncate",
                fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&file),
                erofs,
            )?;
            expect_errno("mkdir", fs::create_dir(format!("{RO}/d")), erofs)?;
            expect_errno("unlink", fs::remove_file(&file), erofs)?;
            expect_errno(
                "rename",
                fs::rename(&file, format!("{RO}/moved.txt")),
                erofs,
            )?;
            expect_errno("symlink", symlink("keep.txt", format!("{RO}/l")), erofs)?;
            expect_errno(
                "chmod",
                fs::set_permissions(&file, fs::Permissions::from_mode(0o777)),
                erofs,
            )?;
            expect_errno("hard link", fs::hard_link(&file, format!("{RO}/hl")), erofs)?;
            let fifo = c(&format!("{RO}/fifo"));
            // SAFETY: valid path.
            let rc = unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
            expect_errno(
                "mkfifo",
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                },
                erofs,
            )?;
            Ok(String::new())
        })(),
    );
}

fn drop_guest_caches() -> Result<(), String> {
    sync_all();
    io("drop_caches", fs::write("/proc/sys/vm/drop_caches", b"3"))
}

fn sync_all() {
    // SAFETY: no arguments.
    unsafe { libc::sync() };
}

/// Sequential write (1 MiB writes, then fsync) and read of an `mib` MiB file, the read after
/// dropping the guest's page cache so it goes through the device.
fn bench_io(mib: usize) -> Check {
    let path = format!("{RW}/bench.dat");
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let start = Instant::now();
    let mut f = io("create", fs::File::create(&path))?;
    for _ in 0..mib {
        io("write", f.write_all(&chunk))?;
    }
    io("fsync", f.sync_all())?;
    drop(f);
    let write_s = start.elapsed().as_secs_f64();
    let read_s = timed_read(&path, mib)?;
    // Again with the share's readahead at 1 MiB: FUSE caps it at 128 KiB (one 128 KiB
    // request at a time), whatever the VMM offers.
    set_read_ahead_kb(RW, 1024)?;
    let read_ra_s = timed_read(&path, mib)?;
    let _ = fs::remove_file(&path);
    Ok(format!(
        "mib={mib} write_s={write_s:.3} write_mib_s={:.1} read_s={read_s:.3} read_mib_s={:.1} \
         read_ra1m_s={read_ra_s:.3} read_ra1m_mib_s={:.1}",
        mib as f64 / write_s,
        mib as f64 / read_s,
        mib as f64 / read_ra_s
    ))
}

/// Reads `path` whole with 1 MiB reads after dropping the guest's page cache; seconds.
fn timed_read(path: &str, mib: usize) -> Result<f64, String> {
    drop_guest_caches()?;
    let start = Instant::now();
    let mut f = io("open", fs::File::open(path))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        let n = io("read", f.read(&mut buf))?;
        if n == 0 {
            break;
        }
        total += n;
    }
    if total != mib << 20 {
        return Err(format!("read {total} bytes, wrote {}", mib << 20));
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Sets the readahead of the file system mounted at `mount` (its bdi, by device number).
fn set_read_ahead_kb(mount: &str, kb: u32) -> Result<(), String> {
    let dev = io("stat mount", fs::metadata(mount))?.dev();
    let bdi = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    io(&bdi, fs::write(&bdi, kb.to_string()))
}

/// Walks `dir` (relative to the rw share): readdir, then lstat of every entry.
fn bench_walk(dir: &str) -> Check {
    drop_guest_caches()?;
    let root = format!("{RW}/{dir}");
    let start = Instant::now();
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut stack = vec![std::path::PathBuf::from(&root)];
    while let Some(d) = stack.pop() {
        for entry in io("readdir", fs::read_dir(&d))? {
            let entry = io("entry", entry)?;
            let meta = io("lstat", fs::symlink_metadata(entry.path()))?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    let walk_s = start.elapsed().as_secs_f64();
    Ok(format!("files={files} bytes={bytes} walk_s={walk_s:.3}"))
}
