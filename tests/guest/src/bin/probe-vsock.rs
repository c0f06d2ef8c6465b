//! Guest side of the vsock VM tests (tests/vm/vsock.rs), over AF_VSOCK.
//!
//! `vsock_test=send`: connects to host port `vsock_refused_port` (nobody listens: reports
//! the error), then to host port `vsock_port`, sends `vsock_mib` MiB of the position
//! pattern, shuts down its writing side and waits for the host's `OK` and end of file.
//! `vsock_test=echo`: listens on `vsock_port`, echoes one connection until end of file,
//! then sends `FINAL <bytes>\n` (half-close: it can still send after the host stopped).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use husk_guest_tests::{mount_basics, param, power_off, report};

const HOST_CID: u32 = 2;
const CHUNK: usize = 64 * 1024;

/// Byte `offset` of the stream: every 8-byte word holds a function of its position, so a
/// lost, repeated or reordered byte shows (tests/vm/vsock.rs computes the same).
fn fill_pattern(offset: u64, buf: &mut [u8]) {
    debug_assert!(offset % 8 == 0 && buf.len() % 8 == 0);
    for (i, word) in buf.chunks_exact_mut(8).enumerate() {
        let pos = offset + 8 * i as u64;
        word.copy_from_slice(&pos.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    }
}

fn vsock_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: plain data; zero is valid.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

fn connect(port: u32) -> std::io::Result<File> {
    let sock = vsock_socket()?;
    let a = addr(HOST_CID, port);
    // SAFETY: a valid sockaddr_vm of the size given.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            &a as *const libc::sockaddr_vm as *const libc::sockaddr,
            ADDR_LEN,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(File::from(sock))
}

fn shutdown_write(f: &File) {
    // SAFETY: valid fd.
    unsafe { libc::shutdown(f.as_raw_fd(), libc::SHUT_WR) };
}

fn param_u32(key: &str, default: u32) -> u32 {
    param(key).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn send() -> Result<(), String> {
    let refused_port = param_u32("vsock_refused_port", 5002);
    match connect(refused_port) {
        Ok(_) => report(&format!("refused connected?! port={refused_port}")),
        Err(e) => report(&format!(
            "refused port={refused_port} errno={} ({e})",
            e.raw_os_error().unwrap_or(0)
        )),
    }
    let port = param_u32("vsock_port", 5000);
    let total = u64::from(param_u32("vsock_mib", 256)) << 20;
    let mut s = connect(port).map_err(|e| format!("connect to host port {port}: {e}"))?;
    let start = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    while sent < total {
        let n = CHUNK.min((total - sent) as usize);
        fill_pattern(sent, &mut buf[..n]);
        s.write_all(&buf[..n])
            .map_err(|e| format!("write at {sent}: {e}"))?;
        sent += n as u64;
    }
    shutdown_write(&s);
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .map_err(|e| format!("reading the host's reply: {e}"))?;
    let ms = start.elapsed().as_millis();
    report(&format!(
        "send done bytes={sent} ms={ms} reply={:?}",
        reply.trim()
    ));
    Ok(())
}

fn echo() -> Result<(), String> {
    let port = param_u32("vsock_port", 5001);
    let sock = vsock_socket().map_err(|e| format!("socket: {e}"))?;
    let a = addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: valid fd and sockaddr_vm.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            &a as *const libc::sockaddr_vm as *const libc::sockaddr,
            ADDR_LEN,
        )
    };
    // SAFETY: valid fd.
    if rc != 0 || unsafe { libc::listen(sock.as_raw_fd(), 4) } != 0 {
        return Err(format!(
            "listen on {port}: {}",
            std::io::Error::last_os_error()
        ));
    }
    report(&format!("listening {port}"));
    // SAFETY: valid listening fd; no peer address wanted.
    let fd = unsafe { libc::accept(sock.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut()) };
    if fd < 0 {
        return Err(format!("accept: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd nobody else owns.
    let mut conn = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut buf = vec![0u8; CHUNK];
    let mut echoed = 0u64;
    loop {
        let n = conn.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        conn.write_all(&buf[..n])
            .map_err(|e| format!("echo write: {e}"))?;
        echoed += n as u64;
    }
    // End of file from the host, yet this side can still send.
    conn.write_all(format!("FINAL {echoed}\n").as_bytes())
        .map_err(|e| format!("final write after the host's half-close: {e}"))?;
    drop(conn);
    report(&format!("echo done bytes={echoed}"));
    Ok(())
}

fn main() {
    mount_basics();
    let result = match param("vsock_test").as_deref() {
        Some("send") => send(),
        Some("echo") => echo(),
        other => Err(format!("unknown vsock_test {other:?}")),
    };
    if let Err(e) = result {
        report(&format!("error: {e}"));
    }
    power_off();
}
