//! The guest's initramfs: a newc cpio archive that husk writes itself.
//!
//! Writing the archive in-process (instead of running `cpio` over a staging tree) means
//! no root privileges are needed for the device node the kernel wants (`/dev/console`),
//! the output is byte-for-byte reproducible (fixed inode numbers and mtimes), and the
//! archive stays uncompressed: the guest kernel spends no boot time decompressing it.

use std::io::{self, Write};

/// newc header magic ("new ASCII" format, what the kernel's initramfs unpacker reads).
const NEWC_MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// Writes a newc archive entry by entry; [`CpioWriter::finish`] adds the trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

struct Header<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    /// A directory; `name` is relative to the archive root ("dev", not "/dev").
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(
            Header {
                name,
                mode: S_IFDIR | (perm & 0o7777),
                nlink: 2,
                size: 0,
                rdev: (0, 0),
            },
            &[],
        )
    }

    /// A regular file with the given contents.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: newc entries are limited to 4 GiB"),
            )
        })?;
        self.entry(
            Header {
                name,
                mode: S_IFREG | (perm & 0o7777),
                nlink: 1,
                size,
                rdev: (0, 0),
            },
            data,
        )
    }

    /// A character device node, e.g. `/dev/console` (5, 1).
    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(
            Header {
                name,
                mode: S_IFCHR | (perm & 0o7777),
                nlink: 1,
                size: 0,
                rdev: (major, minor),
            },
            &[],
        )
    }

    /// Writes the trailer and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(
            Header {
                name: TRAILER,
                mode: 0,
                nlink: 1,
                size: 0,
                rdev: (0, 0),
            },
            &[],
        )?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, h: Header<'_>, data: &[u8]) -> io::Result<()> {
        if h.name.is_empty() || h.name.starts_with('/') || h.name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cpio entry name {:?} must be relative and non-empty",
                    h.name
                ),
            ));
        }
        let ino = if h.name == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        // Fields: ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
        // rdevminor namesize check. mtime 0 keeps the archive reproducible.
        let namesize = h.name.len() + 1;
        let header = format!(
            "{NEWC_MAGIC}{ino:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
            h.mode, 0, 0, h.nlink, 0, h.size, 0, 0, h.rdev.0, h.rdev.1, 0
        );
        self.put(header.as_bytes())?;
        self.put(h.name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// newc aligns every header and every file body to 4 bytes.
    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.put(&[0u8; 4][..4 - rem])?;
        }
        Ok(())
    }
}

/// The initramfs of a husk microVM: the agent as `/init`, the console node the kernel
/// opens for init's stdio, and the mount points the agent uses.
pub fn write_guest_initramfs<W: Write>(out: W, agent: &[u8]) -> io::Result<W> {
    let mut cpio = CpioWriter::new(out);
    for dir in ["dev", "proc", "sys", "run", "tmp"] {
        cpio.dir(dir, 0o755)?;
    }
    cpio.char_device("dev/console", 0o600, 5, 1)?;
    cpio.file("init", 0o755, agent)?;
    cpio.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_parse_back() {
        let out = write_guest_initramfs(Vec::new(), b"\x7fELF-agent").unwrap();
        assert_eq!(out.len() % 4, 0);
        // Walk the archive the way the kernel does.
        let mut off = 0;
        let mut names = Vec::new();
        loop {
            let hdr = std::str::from_utf8(&out[off..off + 110]).unwrap();
            assert_eq!(&hdr[..6], NEWC_MAGIC);
            let field = |i: usize| u32::from_str_radix(&hdr[6 + i * 8..14 + i * 8], 16).unwrap();
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&out[off + 110..off + 110 + namesize - 1]).unwrap();
            off = (off + 110 + namesize).next_multiple_of(4);
            if name == "init" {
                assert_eq!(&out[off..off + size], b"\x7fELF-agent");
                assert_eq!(mode, S_IFREG | 0o755);
            }
            if name == "dev/console" {
                assert_eq!((mode, field(9), field(10)), (S_IFCHR | 0o600, 5, 1));
            }
            off = (off + size).next_multiple_of(4);
            names.push(name.to_string());
            if name == TRAILER {
                break;
            }
        }
        assert_eq!(off, out.len());
        assert_eq!(
            names,
            [
                "dev",
                "proc",
                "sys",
                "run",
                "tmp",
                "dev/console",
                "init",
                TRAILER
            ]
        );
    }

    #[test]
    fn absolute_names_are_refused() {
        let mut cpio = CpioWriter::new(Vec::new());
        let err = cpio.file("/init", 0o755, b"").unwrap_err();
        assert!(err.to_string().contains("must be relative"));
    }

    #[test]
    fn is_reproducible() {
        let a = write_guest_initramfs(Vec::new(), b"agent").unwrap();
        let b = write_guest_initramfs(Vec::new(), b"agent").unwrap();
        assert_eq!(a, b);
    }
}
