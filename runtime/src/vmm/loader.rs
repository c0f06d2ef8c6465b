//! Loading the guest kernel (an ELF vmlinux, entered at its PVH entry point) and the
//! initrd (at the top of low memory, page aligned) into guest RAM.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::arch::x86_64::layout::{low_mem_end, HIMEM_START, PAGE_SIZE};
use super::arch::x86_64::pvh::InitrdPlacement;

/// ELF magic.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// Errors loading the kernel or initrd; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("kernel {} does not exist", .0.display())]
    KernelMissing(PathBuf),
    #[error("cannot read kernel {}: {}", .0.display(), .1)]
    KernelRead(PathBuf, std::io::Error),
    #[error("{} is not a kernel: not an ELF file (husk boots an uncompressed vmlinux, not a bzImage)", .0.display())]
    NotElf(PathBuf),
    #[error("{} is not a bootable kernel: {}", .0.display(), .1)]
    BadKernel(PathBuf, String),
    #[error("kernel {} has no PVH entry point (build it with CONFIG_PVH=y)", .0.display())]
    NoPvh(PathBuf),
    #[error("initrd {} does not exist", .0.display())]
    InitrdMissing(PathBuf),
    #[error("cannot read initrd {}: {}", .0.display(), .1)]
    InitrdRead(PathBuf, std::io::Error),
    #[error("initrd {} ({size} bytes) does not fit in guest memory above the kernel", .path.display())]
    InitrdTooBig { path: PathBuf, size: u64 },
}

/// Where the kernel landed.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// The PVH entry point (32-bit protected mode).
    pub entry: u64,
    /// First byte after the kernel's highest segment (memsz, so .bss included).
    pub end: u64,
}

fn open(
    path: &Path,
    missing: fn(PathBuf) -> LoaderError,
    read: fn(PathBuf, std::io::Error) -> LoaderError,
) -> Result<File, LoaderError> {
    File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            missing(path.to_path_buf())
        } else {
            read(path.to_path_buf(), e)
        }
    })
}

/// Opens the kernel and checks it starts like an ELF file (cheap: done before any VM
/// resource exists, so a wrong path fails at once).
pub fn precheck_kernel(path: &Path) -> Result<(), LoaderError> {
    let mut f = open(path, LoaderError::KernelMissing, LoaderError::KernelRead)?;
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic) {
        Ok(()) if &magic == ELF_MAGIC => Ok(()),
        Ok(()) => Err(LoaderError::NotElf(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(LoaderError::NotElf(path.to_path_buf()))
        }
        Err(e) => Err(LoaderError::KernelRead(path.to_path_buf(), e)),
    }
}

/// Checks the initrd exists and is readable.
pub fn precheck_initrd(path: &Path) -> Result<(), LoaderError> {
    open(path, LoaderError::InitrdMissing, LoaderError::InitrdRead).map(drop)
}

/// Loads the ELF kernel at its physical addresses; it must carry a PVH entry note.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let mut f = open(path, LoaderError::KernelMissing, LoaderError::KernelRead)?;
    let result = Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(|e| {
        use linux_loader::loader::elf::Error as E;
        use linux_loader::loader::Error as L;
        match e {
            L::Elf(E::InvalidElfMagicNumber) => LoaderError::NotElf(path.to_path_buf()),
            L::Elf(E::InvalidEntryAddress) => LoaderError::BadKernel(
                path.to_path_buf(),
                "its entry point is below 1 MiB (an ordinary program, not a vmlinux)".into(),
            ),
            L::Elf(E::ReadKernelImage) => LoaderError::BadKernel(
                path.to_path_buf(),
                "its segments do not fit in guest memory".into(),
            ),
            other => LoaderError::BadKernel(path.to_path_buf(), other.to_string()),
        }
    })?;
    match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(LoadedKernel {
            entry: entry.0,
            end: result.kernel_end,
        }),
        _ => Err(LoaderError::NoPvh(path.to_path_buf())),
    }
}

/// Where an initrd of `size` bytes goes: the highest page-aligned address that keeps it
/// below the end of low memory and above the kernel.
pub fn initrd_address(mem_size: u64, kernel_end: u64, size: u64) -> Option<u64> {
    let top = low_mem_end(mem_size);
    let addr = top.checked_sub(size)? & !(PAGE_SIZE - 1);
    let kernel_end = kernel_end.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end).then_some(addr)
}

/// Loads the initrd at the top of low memory. Its place does not depend on the kernel, so
/// this runs while the kernel loads; [`check_initrd_clear_of_kernel`] then makes sure the
/// two do not overlap (if they do, the VM is not built, so what the two loads left in that
/// memory does not matter).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_size: u64,
) -> Result<InitrdPlacement, LoaderError> {
    let mut f = open(path, LoaderError::InitrdMissing, LoaderError::InitrdRead)?;
    let size = f
        .metadata()
        .map_err(|e| LoaderError::InitrdRead(path.to_path_buf(), e))?
        .len();
    let too_big = || LoaderError::InitrdTooBig {
        path: path.to_path_buf(),
        size,
    };
    let addr = initrd_address(mem_size, 0, size).ok_or_else(too_big)?;
    let len = usize::try_from(size).map_err(|_| too_big())?;
    // One read straight into guest memory (no bounce buffer).
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, len)
        .map_err(|e| LoaderError::InitrdRead(path.to_path_buf(), std::io::Error::other(e)))?;
    Ok(InitrdPlacement { addr, size })
}

/// Checks that the initrd [`load_initrd`] placed lies above the kernel, which ends at
/// `kernel_end`.
pub fn check_initrd_clear_of_kernel(
    initrd: &InitrdPlacement,
    path: &Path,
    mem_size: u64,
    kernel_end: u64,
) -> Result<(), LoaderError> {
    if initrd_address(mem_size, kernel_end, initrd.size) == Some(initrd.addr) {
        Ok(())
    } else {
        Err(LoaderError::InitrdTooBig {
            path: path.to_path_buf(),
            size: initrd.size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_goes_to_the_top_page_aligned() {
        let mib = 1u64 << 20;
        assert_eq!(
            initrd_address(128 * mib, 20 * mib, 4096),
            Some(128 * mib - 4096)
        );
        assert_eq!(
            initrd_address(128 * mib, 20 * mib, 4097),
            Some(128 * mib - 8192)
        );
        // Memory beyond the gap: still under 3 GiB.
        assert_eq!(
            initrd_address(8 << 30, 20 * mib, 4096),
            Some(0xc000_0000 - 4096)
        );
        // Would overlap the kernel, or is larger than memory.
        assert_eq!(initrd_address(32 * mib, 30 * mib, 3 * mib), None);
        assert_eq!(initrd_address(32 * mib, 0, u64::MAX), None);
    }

    #[test]
    fn an_initrd_over_the_kernel_is_refused() {
        let mib = 1u64 << 20;
        let path = Path::new("/x/initrd");
        let fits = InitrdPlacement {
            addr: 32 * mib - 3 * mib,
            size: 3 * mib,
        };
        check_initrd_clear_of_kernel(&fits, path, 32 * mib, 20 * mib).unwrap();
        let e = check_initrd_clear_of_kernel(&fits, path, 32 * mib, 30 * mib).unwrap_err();
        assert!(matches!(e, LoaderError::InitrdTooBig { size, .. } if size == 3 * mib));
        assert!(e.to_string().contains("/x/initrd"), "{e}");
    }

    #[test]
    fn files_that_are_not_kernels_are_named() {
        let e = precheck_kernel(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert_eq!(e.to_string(), "kernel /nonexistent/vmlinux does not exist");
        let dir = std::env::temp_dir().join(format!("husk-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cpio = dir.join("initramfs.cpio");
        std::fs::write(&cpio, b"070701000000").unwrap();
        let e = precheck_kernel(&cpio).unwrap_err().to_string();
        assert!(e.contains("initramfs.cpio is not a kernel"), "{e}");
        std::fs::write(&cpio, b"\x7f").unwrap();
        assert!(matches!(
            precheck_kernel(&cpio),
            Err(LoaderError::NotElf(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_ordinary_program_is_not_a_kernel() {
        // This test binary: an ELF, but a PIE program with a low entry point.
        let exe = std::env::current_exe().unwrap();
        precheck_kernel(&exe).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let e = load_kernel(&mem, &exe).unwrap_err().to_string();
        assert!(
            e.contains("is not a bootable kernel") || e.contains("no PVH entry"),
            "{e}"
        );
    }
}
