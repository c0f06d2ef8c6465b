//! The rng worker: waits on the queue's notify eventfd (and the stop eventfd), fills every
//! available chain's write-only buffers with getrandom(2) bytes, completes it.

use std::os::fd::AsRawFd;

use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{RngCounter, MAX_BYTES_PER_REQUEST};
use crate::vmm::devices::virtio::ring::{self, Chain};
use crate::vmm::devices::virtio::{ActiveQueue, VirtioInterrupt};

const TOKEN_QUEUE: u64 = 0;
const TOKEN_STOP: u64 = 1;

/// Fills `buf` from the host's CSPRNG (blocks only until the host's pool is initialized,
/// once per boot).
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is valid for writes of its length.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

/// Writes random bytes into the chain's write-only descriptors, at most
/// [`MAX_BYTES_PER_REQUEST`] in all, and returns how many. Read-only descriptors are
/// skipped; a descriptor outside guest RAM ends the request there (the guest gets what
/// was written before it).
pub(super) fn fill_chain(mem: &GuestMemoryMmap, chain: Chain<'_>, buf: &mut [u8]) -> u32 {
    let mut written: u32 = 0;
    for desc in chain {
        if !desc.is_write_only() {
            continue;
        }
        let want = desc.len().min(MAX_BYTES_PER_REQUEST - written) as usize;
        if want == 0 {
            break;
        }
        let part = &mut buf[..want];
        if getrandom(part).is_err() || mem.write_slice(part, desc.addr()).is_err() {
            break;
        }
        written += want as u32;
    }
    written
}

/// Serves the queue until `stop` is signalled. A broken queue fails the device
/// (DEVICE_NEEDS_RESET) and the worker then only waits to be stopped.
pub(super) fn run(
    active: ActiveQueue,
    mem: GuestMemoryMmap,
    interrupt: &VirtioInterrupt,
    served: &RngCounter,
    stop: &EventFd,
) {
    let ActiveQueue { mut queue, notify } = active;
    let epoll = match Epoll::new().and_then(|ep| {
        ep.ctl(
            ControlOperation::Add,
            notify.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_QUEUE),
        )?;
        ep.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_STOP),
        )?;
        Ok(ep)
    }) {
        Ok(ep) => ep,
        Err(e) => {
            interrupt.fail(&format_args!("cannot set up the worker's epoll: {e}"));
            return;
        }
    };
    let mut buf = vec![0u8; MAX_BYTES_PER_REQUEST as usize];
    // Chains made available before activation were notified before anyone listened.
    let mut serving = true;
    let mut pending = true;
    let mut events = [EpollEvent::default(); 2];
    loop {
        if pending && serving {
            let result = ring::drain(&mut queue, &mem, interrupt, |chain| {
                let n = fill_chain(&mem, chain, &mut buf);
                served.add(n.into());
                n
            });
            if let Err(e) = result {
                interrupt.fail(&format_args!("broken request queue: {e}"));
                serving = false;
            }
        }
        pending = false;
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                interrupt.fail(&format_args!("epoll_wait failed: {e}"));
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_STOP => return,
                _ => {
                    // Reset the counter: one drain serves every kick so far.
                    let _ = notify.read();
                    pending = true;
                }
            }
        }
    }
}
