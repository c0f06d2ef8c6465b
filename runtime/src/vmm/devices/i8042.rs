//! The i8042 keyboard controller, only for its CPU-reset line: with `reboot=k` the guest
//! reboots (and husk's agent powers off) by writing 0xFE to port 0x64, which ends the VM.
//!
//! Reads return 0: the guest's `kb_wait` polls the status port for "input buffer empty"
//! before it writes the reset command, and all ones would make it spin.

use vm_superio::{I8042Device as Controller, Trigger};

use super::bus::BusDevice;

/// Called when the guest pulses the reset line.
pub struct ResetTrigger(pub Box<dyn Fn() + Send>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        (self.0)();
        Ok(())
    }
}

/// The controller on the port I/O bus at 0x60 (offset 0 = data, 4 = command/status).
pub struct I8042 {
    inner: Controller<ResetTrigger>,
}

impl I8042 {
    pub fn new(on_reset: ResetTrigger) -> Self {
        Self {
            inner: Controller::new(on_reset),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(off), [b]) => *b = self.inner.read(off),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            let _ = self.inner.write(off, *b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn only_0xfe_on_the_command_port_resets() {
        let resets = Arc::new(AtomicU32::new(0));
        let r = resets.clone();
        let mut dev = I8042::new(ResetTrigger(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        })));
        let mut status = [0xaa];
        dev.read(4, &mut status);
        assert_eq!(status, [0], "input buffer empty");
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xad]);
        assert_eq!(resets.load(Ordering::SeqCst), 0);
        dev.write(4, &[0xfe]);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
    }
}
