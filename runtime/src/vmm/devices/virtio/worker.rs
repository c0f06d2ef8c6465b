//! A device's worker thread with a stop switch: [`DeviceWorker::spawn`] starts it with an
//! eventfd it must watch; dropping the handle (device reset or drop) signals that eventfd
//! and joins the thread, so no worker ever outlives its device, nor guest memory.

use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

/// Stack of a device worker: request handling is shallow. Small on purpose (a default
/// 2 MiB stack can become one resident huge page under THP "always").
pub const WORKER_STACK_SIZE: usize = 256 << 10;

/// A running worker; stopping is dropping.
pub struct DeviceWorker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl DeviceWorker {
    /// Starts `body` on a thread named `name`, handing it the eventfd that becomes readable
    /// when it must return (poll it with the queue eventfds).
    pub fn spawn<F>(name: String, body: F) -> std::io::Result<Self>
    where
        F: FnOnce(EventFd) + Send + 'static,
    {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let theirs = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(name)
            .stack_size(WORKER_STACK_SIZE)
            .spawn(move || body(theirs))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for DeviceWorker {
    fn drop(&mut self) {
        // Fails only if the counter would overflow: the worker is being told already.
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            // A worker that panicked has nothing left to clean up.
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn dropping_stops_and_joins() {
        let exited = Arc::new(AtomicBool::new(false));
        let flag = exited.clone();
        let w = DeviceWorker::spawn("test-worker".into(), move |stop| {
            let mut fds = [libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&stop),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: one valid pollfd.
            while unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) } != 1 {}
            flag.store(true, Ordering::SeqCst);
        })
        .unwrap();
        drop(w);
        assert!(exited.load(Ordering::SeqCst));
    }
}
