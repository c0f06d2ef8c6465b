//! AF_VSOCK stream sockets through libc: listen, accept, connect, and whether the guest
//! has a vsock transport at all. (The `vsock` crate would add a second copy of `nix` to
//! a binary whose size is boot time, for four syscalls.)

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `IOCTL_VM_SOCKETS_GET_LOCAL_CID` from linux/vm_sockets.h: `_IO(7, 0xb9)`.
const IOCTL_VM_SOCKETS_GET_LOCAL_CID: libc::c_ulong = 0x7b9;
/// `VMADDR_CID_ANY` from linux/vm_sockets.h: also what the ioctl answers without a
/// transport (no virtio-vsock device).
const VMADDR_CID_ANY: u32 = u32::MAX;

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is ours on success.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn address(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: all-zero is a valid sockaddr_vm (reserved and padding fields must be 0).
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = cid;
    addr
}

const ADDRESS_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

/// A listening socket on `port` of any local CID.
pub fn listen(port: u32) -> io::Result<OwnedFd> {
    let fd = socket()?;
    let addr = address(VMADDR_CID_ANY, port);
    // SAFETY: bind/listen on our socket with a valid address of the size given.
    unsafe {
        if libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            ADDRESS_LEN,
        ) != 0
            || libc::listen(fd.as_raw_fd(), 128) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(fd)
}

/// The next connection on `listener` (EINTR retried).
pub fn accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: accept4 on our listening socket; we do not want the peer address.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh fd nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Connects to (`cid`, `port`).
pub fn connect(cid: u32, port: u32) -> io::Result<OwnedFd> {
    let fd = socket()?;
    let addr = address(cid, port);
    // SAFETY: connect our socket to a valid address of the size given.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            ADDRESS_LEN,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The guest's own CID, or `None` without a vsock transport (no virtio-vsock device).
pub fn local_cid() -> Option<u32> {
    let dev = std::fs::File::open("/dev/vsock").ok()?;
    let mut cid: u32 = VMADDR_CID_ANY;
    // SAFETY: the ioctl writes one u32 through the pointer.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            IOCTL_VM_SOCKETS_GET_LOCAL_CID,
            &mut cid as *mut u32,
        )
    };
    (r == 0 && cid != VMADDR_CID_ANY).then_some(cid)
}
