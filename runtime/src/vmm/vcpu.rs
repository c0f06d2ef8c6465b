//! One thread per vCPU running KVM_RUN, dispatching port I/O and MMIO exits to the buses,
//! and the machinery that ends every vCPU when one of them (or a device, or the caller)
//! ends the VM.
//!
//! Ending a VM: the first outcome reported wins and sets `stop`; then every vCPU thread
//! still registered gets `immediate_exit` set in its `kvm_run` and a signal. A vCPU inside
//! KVM_RUN returns EINTR at once; one about to enter it returns at once because of
//! `immediate_exit` (the signal alone could arrive just before the ioctl and be lost). A
//! thread deregisters under the same lock before its `kvm_run` mapping goes away, so a
//! kick never touches freed memory or an exited thread.
//!
//! Pausing a VM uses the same kick: `pause` is set, every vCPU is kicked out of KVM_RUN
//! and parks on a condition variable before it would enter again; `pause` waits until
//! every registered vCPU is parked, so when it returns no guest instruction runs. Resume
//! clears the flag and wakes them; ending the VM wakes them too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::devices::Bus;
use super::stats::VmStats;

/// Why the VM ended, when it ended cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExitReason {
    /// The guest pulsed the i8042 reset line (`reboot=k`: its reboot and power-off).
    Reset,
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN; `reboot=t` does this on purpose).
    TripleFault,
    /// A vCPU halted with nothing to wake it (only without the in-kernel irqchip).
    Halted,
    /// KVM reported a system event (PSCI-style reset/shutdown/crash), with its type.
    SystemEvent(u32),
    /// The caller stopped the VM ([`crate::vmm::StopHandle::stop`]).
    Stopped,
}

/// `kvm_run.internal.suberror` values (include/uapi/linux/kvm.h).
fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure",
        2 => "exception while delivering an exception",
        3 => "error while delivering an event",
        4 => "unexpected exit reason",
        _ => "unknown suberror",
    }
}

/// A vCPU that ended the VM with an error.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {cpu}: KVM internal error {suberror} ({})", internal_error_name(*suberror))]
    InternalError { cpu: u8, suberror: u32 },
    #[error(
        "vCPU {cpu}: KVM could not enter the guest (hardware entry failure reason {reason:#x})"
    )]
    FailEntry { cpu: u8, reason: u64 },
    #[error("vCPU {cpu}: unhandled VM exit {exit}")]
    UnhandledExit { cpu: u8, exit: String },
    #[error("vCPU {cpu}: KVM_RUN failed: {source}")]
    Run { cpu: u8, source: kvm_ioctls::Error },
    #[error("cannot start a thread for vCPU {cpu}: {source}")]
    Spawn { cpu: u8, source: std::io::Error },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("the vCPUs did not stop within {0:?}")]
    PauseTimeout(Duration),
    #[error("the VM has ended")]
    Ended,
}

/// The signal that kicks a vCPU thread out of KVM_RUN (what Firecracker uses too).
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: being interrupted is the point (KVM_RUN returns EINTR).
}

/// Installs the no-op handler for the kick signal, once per process.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
                .map_err(|e| e.errno())
        })
        .map_err(|errno| VcpuError::Signal(vmm_sys_util::errno::Error::new(errno)))
}

/// How to reach a running vCPU thread.
struct KickTarget {
    thread: libc::pthread_t,
    immediate_exit: *mut u8,
}

// SAFETY: the pointer is only dereferenced under `Shared::targets`' lock, and the owning
// thread removes its target under that lock before the mapping is unmapped.
unsafe impl Send for KickTarget {}

/// Whether the vCPUs should park, and how many have.
#[derive(Default)]
struct PauseState {
    requested: bool,
    parked: usize,
}

/// State shared by the vCPU threads, the devices and stop handles.
pub(crate) struct Shared {
    stop: AtomicBool,
    outcome: Mutex<Option<Result<VmExitReason, VcpuError>>>,
    targets: Mutex<Vec<Option<KickTarget>>>,
    pause: Mutex<PauseState>,
    /// Signalled when `pause` changes: parked vCPUs wait on it for a resume, `pause`
    /// waits on it for the last vCPU to park.
    pause_changed: Condvar,
}

impl Shared {
    pub(crate) fn new(vcpus: usize) -> Arc<Self> {
        Arc::new(Self {
            stop: AtomicBool::new(false),
            outcome: Mutex::new(None),
            targets: Mutex::new((0..vcpus).map(|_| None).collect()),
            pause: Mutex::new(PauseState::default()),
            pause_changed: Condvar::new(),
        })
    }

    fn kick_all(&self) {
        let targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        for t in targets.iter().flatten() {
            // SAFETY: the target is registered, so its kvm_run mapping and thread are alive
            // (see KickTarget). A volatile byte store races benignly with KVM reading it.
            unsafe {
                std::ptr::write_volatile(t.immediate_exit, 1);
                libc::pthread_kill(t.thread, kick_signal());
            }
        }
    }

    fn running_vcpus(&self) -> usize {
        let targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        targets.iter().flatten().count()
    }

    /// Stops every vCPU outside KVM_RUN and returns once all are parked (at most
    /// `timeout`). Pausing a paused VM is a no-op.
    pub(crate) fn pause(&self, timeout: Duration) -> Result<(), VcpuError> {
        if self.stopping() {
            return Err(VcpuError::Ended);
        }
        self.pause
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requested = true;
        self.kick_all();
        let deadline = Instant::now() + timeout;
        let mut state = self.pause.lock().unwrap_or_else(|e| e.into_inner());
        // A vCPU that is not registered (not started yet, or ended) runs no guest code.
        while state.parked < self.running_vcpus() {
            if self.stopping() {
                return Err(VcpuError::Ended);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                state.requested = false;
                self.pause_changed.notify_all();
                return Err(VcpuError::PauseTimeout(timeout));
            }
            // Short waits: a vCPU that deregisters does not signal the condvar.
            let wait = left.min(Duration::from_millis(10));
            state = self
                .pause_changed
                .wait_timeout(state, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Lets parked vCPUs run again.
    pub(crate) fn resume(&self) {
        let mut state = self.pause.lock().unwrap_or_else(|e| e.into_inner());
        state.requested = false;
        self.pause_changed.notify_all();
    }

    /// Parks the calling vCPU thread while a pause is requested (and the VM not ending).
    fn park_while_paused(&self) {
        let mut state = self.pause.lock().unwrap_or_else(|e| e.into_inner());
        if !state.requested {
            return;
        }
        state.parked += 1;
        self.pause_changed.notify_all();
        while state.requested && !self.stopping() {
            state = self
                .pause_changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        state.parked -= 1;
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Records how the VM ends (the first report wins) and kicks every vCPU.
    pub(crate) fn finish(&self, outcome: Result<VmExitReason, VcpuError>) {
        {
            let mut o = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
            if o.is_none() {
                *o = Some(outcome);
            }
        }
        self.stop.store(true, Ordering::Release);
        // Parked vCPUs wake up to end.
        {
            let _state = self.pause.lock().unwrap_or_else(|e| e.into_inner());
            self.pause_changed.notify_all();
        }
        self.kick_all();
    }

    pub(crate) fn take_outcome(&self) -> Option<Result<VmExitReason, VcpuError>> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn register(&self, index: usize, vcpu: &mut VcpuFd) {
        let run = vcpu.get_kvm_run();
        let target = KickTarget {
            // SAFETY: pthread_self has no preconditions.
            thread: unsafe { libc::pthread_self() },
            immediate_exit: std::ptr::addr_of_mut!(run.immediate_exit),
        };
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = targets.get_mut(index) {
            *slot = Some(target);
        }
    }

    fn deregister(&self, index: usize) {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = targets.get_mut(index) {
            *slot = None;
        }
    }
}

/// What a vCPU thread needs besides its fd.
pub(crate) struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub stats: Arc<VmStats>,
    pub shared: Arc<Shared>,
}

/// The body of vCPU thread `index`: runs until the VM ends, reports how, and only then lets
/// `vcpu` (and its kvm_run mapping) go.
pub(crate) fn vcpu_thread(mut vcpu: VcpuFd, index: u8, ctx: VcpuContext) {
    /// Deregisters and ends the VM even if the loop unwinds, so no kick ever targets a
    /// dead thread and no other vCPU is left running.
    struct Guard<'a>(&'a Shared, u8);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            self.0.deregister(self.1.into());
            self.0.finish(Err(VcpuError::UnhandledExit {
                cpu: self.1,
                exit: "vCPU thread panicked".into(),
            }));
        }
    }
    ctx.shared.register(index.into(), &mut vcpu);
    let guard = Guard(&ctx.shared, index);
    let outcome = run_loop(&mut vcpu, index, &ctx);
    std::mem::forget(guard);
    ctx.shared.deregister(index.into());
    ctx.shared.finish(outcome);
}

enum Step {
    Continue,
    End(VmExitReason),
    InternalError,
}

fn run_loop(vcpu: &mut VcpuFd, index: u8, ctx: &VcpuContext) -> Result<VmExitReason, VcpuError> {
    let cpu = index;
    loop {
        ctx.shared.park_while_paused();
        if ctx.shared.stopping() {
            return Ok(VmExitReason::Stopped);
        }
        if index == 0 {
            ctx.stats.mark_first_run(Instant::now());
        }
        let step = match vcpu.run() {
            Ok(exit) => {
                ctx.stats.count_userspace_exit(index.into());
                match exit {
                    VcpuExit::IoIn(port, data) => {
                        if !ctx.pio.read(port.into(), data) {
                            data.fill(0xff);
                        }
                        Step::Continue
                    }
                    VcpuExit::IoOut(port, data) => {
                        ctx.pio.write(port.into(), data);
                        Step::Continue
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        if !ctx.mmio.read(addr, data) {
                            data.fill(0xff);
                        }
                        Step::Continue
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        ctx.mmio.write(addr, data);
                        Step::Continue
                    }
                    VcpuExit::Hlt => Step::End(VmExitReason::Halted),
                    VcpuExit::Shutdown => {
                        report_triple_fault(vcpu, cpu);
                        Step::End(VmExitReason::TripleFault)
                    }
                    VcpuExit::SystemEvent(kind, _) => Step::End(match kind {
                        KVM_SYSTEM_EVENT_RESET | KVM_SYSTEM_EVENT_SHUTDOWN => VmExitReason::Reset,
                        KVM_SYSTEM_EVENT_CRASH => VmExitReason::SystemEvent(kind),
                        other => VmExitReason::SystemEvent(other),
                    }),
                    VcpuExit::FailEntry(reason, _) => {
                        return Err(VcpuError::FailEntry { cpu, reason })
                    }
                    VcpuExit::InternalError => Step::InternalError,
                    VcpuExit::Intr | VcpuExit::IrqWindowOpen => Step::Continue,
                    other => {
                        return Err(VcpuError::UnhandledExit {
                            cpu,
                            exit: format!("{other:?}"),
                        })
                    }
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                Step::Continue
            }
            Err(source) => return Err(VcpuError::Run { cpu, source }),
        };
        match step {
            Step::Continue => {}
            Step::End(reason) => return Ok(reason),
            Step::InternalError => {
                // SAFETY: KVM filled the `internal` member for KVM_EXIT_INTERNAL_ERROR.
                let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
                return Err(VcpuError::InternalError { cpu, suberror });
            }
        }
    }
}

/// One line on stderr with where the guest was when it triple-faulted: a triple fault
/// is deliberate only with `reboot=t`, so this is what tells a guest bug, a host (or
/// nested-virtualisation) bug and an intended reset apart afterwards.
fn report_triple_fault(vcpu: &VcpuFd, cpu: u8) {
    let regs = vcpu.get_regs();
    let sregs = vcpu.get_sregs();
    match (regs, sregs) {
        // KVM on AMD resets the vCPU when it sees the shutdown (the VMCB is undefined
        // after one): the registers then say nothing about the fault.
        (Ok(r), Ok(s)) if r.rip == 0xfff0 && s.cs.selector == 0xf000 => eprintln!(
            "husk: vCPU {cpu} triple-faulted (KVM reset its registers, as it does on AMD: \
             where it faulted is lost)"
        ),
        (Ok(r), Ok(s)) => eprintln!(
            "husk: vCPU {cpu} triple-faulted: rip={:#x} rsp={:#x} rflags={:#x} cr0={:#x} \
             cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x} idt={:#x}/{:#x} gdt={:#x}/{:#x}",
            r.rip,
            r.rsp,
            r.rflags,
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer,
            s.cs.selector,
            s.idt.base,
            s.idt.limit,
            s.gdt.base,
            s.gdt.limit,
        ),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("husk: vCPU {cpu} triple-faulted (registers unreadable: {e})")
        }
    }
}

/// A tiny real-mode guest through the real vCPU loop and buses. Simple guest code runs on
/// any KVM, PVM included; skipped where /dev/kvm cannot be opened.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::serial::{IrqTrigger, SerialDevice};
    use crate::vmm::devices::{BusDevice, SharedDevice};
    use kvm_bindings::kvm_userspace_memory_region;
    use kvm_ioctls::Kvm;
    use std::io::Write;
    use vmm_sys_util::eventfd::EventFd;

    const CODE_ADDR: u64 = 0x1000;
    const RAM_SIZE: usize = 0x4000;
    const TEST_MMIO: u64 = 0x5000;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Default)]
    struct MmioProbe {
        writes: Vec<(u64, Vec<u8>)>,
    }
    impl BusDevice for MmioProbe {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(b'!');
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    /// A VM without irqchip (so HLT exits to userspace) running `code` in real mode.
    /// Returns None where KVM is not usable here.
    fn tiny_vm(code: &[u8]) -> Option<(Kvm, kvm_ioctls::VmFd, VcpuFd, vm_memory::MmapRegion)> {
        let kvm = Kvm::new().ok()?;
        let vm = kvm.create_vm().ok()?;
        let ram = vm_memory::MmapRegion::<()>::new(RAM_SIZE).unwrap();
        // SAFETY: the test owns `ram`; the code fits inside it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                code.as_ptr(),
                ram.as_ptr().add(CODE_ADDR as usize),
                code.len(),
            );
            vm.set_user_memory_region(kvm_userspace_memory_region {
                slot: 0,
                guest_phys_addr: 0,
                memory_size: RAM_SIZE as u64,
                userspace_addr: ram.as_ptr() as u64,
                flags: 0,
            })
            .unwrap();
        }
        let vcpu = vm.create_vcpu(0).unwrap();
        let mut sregs = vcpu.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        sregs.ds.base = 0;
        sregs.ds.selector = 0;
        vcpu.set_sregs(&sregs).unwrap();
        vcpu.set_regs(&kvm_bindings::kvm_regs {
            rip: CODE_ADDR,
            rflags: 2,
            ..Default::default()
        })
        .unwrap();
        Some((kvm, vm, vcpu, ram))
    }

    #[test]
    fn port_io_mmio_and_hlt_reach_the_devices() {
        #[rustfmt::skip]
        let code = [
            0xba, 0xf8, 0x03, // mov dx, 0x3f8
            0xb0, b'H', 0xee, // mov al, 'H'; out dx, al
            0xb0, b'i', 0xee, // mov al, 'i'; out dx, al
            0xba, 0x71, 0x00, // mov dx, 0x71 (CMOS data: no device)
            0xec,             // in al, dx      -> 0xff
            0xa2, 0x00, 0x50, // mov [0x5000], al (MMIO write of 0xff)
            0xa0, 0x04, 0x50, // mov al, [0x5004] (MMIO read -> '!')
            0xba, 0xf8, 0x03, // mov dx, 0x3f8
            0xee,             // out dx, al
            0xf4,             // hlt
        ];
        let Some((_kvm, _vm, mut vcpu, _ram)) = tiny_vm(&code) else {
            eprintln!("skipped: /dev/kvm not usable");
            return;
        };
        let sink = Sink::default();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let serial: SharedDevice = Arc::new(Mutex::new(SerialDevice::new(
            IrqTrigger(evt),
            Box::new(sink.clone()),
        )));
        let probe = Arc::new(Mutex::new(MmioProbe::default()));
        let mut pio = Bus::new();
        pio.insert(serial, 0x3f8, 8).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(probe.clone(), TEST_MMIO, 0x10).unwrap();
        let stats = VmStats::new(1);
        stats.attach_kernel_counter(0, &vcpu);
        let ctx = VcpuContext {
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            stats: stats.clone(),
            shared: Shared::new(1),
        };
        let reason = run_loop(&mut vcpu, 0, &ctx).unwrap();
        assert_eq!(reason, VmExitReason::Halted);
        assert_eq!(&*sink.0.lock().unwrap(), b"Hi!");
        assert_eq!(probe.lock().unwrap().writes, vec![(0, vec![0xff])]);
        let snap = stats.snapshot();
        assert_eq!(snap.userspace_exits, 7, "{snap:?}");
        assert!(snap.vm_exits >= 7, "{snap:?}, {:?}", stats.note());
        assert!(stats.first_run().is_some());
    }

    /// A `jmp $` guest on its own vCPU thread (through `vcpu_thread`, kick handler
    /// installed), with its shared state; the first item keeps the VM and its RAM alive.
    #[allow(clippy::type_complexity)]
    fn spinning_vcpu() -> Option<(
        (Kvm, kvm_ioctls::VmFd, vm_memory::MmapRegion),
        Arc<Shared>,
        std::thread::JoinHandle<()>,
    )> {
        let (kvm, vm, vcpu, ram) = tiny_vm(&[0xeb, 0xfe])?;
        install_kick_handler().unwrap();
        let shared = Shared::new(1);
        let ctx = VcpuContext {
            pio: Arc::new(Bus::new()),
            mmio: Arc::new(Bus::new()),
            stats: VmStats::new(1),
            shared: shared.clone(),
        };
        let t = std::thread::spawn(move || vcpu_thread(vcpu, 0, ctx));
        Some(((kvm, vm, ram), shared, t))
    }

    #[test]
    fn a_spinning_vcpu_is_kicked_out() {
        let Some((_vm, shared, t)) = spinning_vcpu() else {
            eprintln!("skipped: /dev/kvm not usable");
            return;
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!t.is_finished(), "jmp $ runs until kicked");
        shared.finish(Ok(VmExitReason::Stopped));
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while !t.is_finished() {
            assert!(
                Instant::now() < deadline,
                "vCPU thread not kicked out of KVM_RUN"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        t.join().unwrap();
        assert!(matches!(
            shared.take_outcome(),
            Some(Ok(VmExitReason::Stopped))
        ));
    }

    #[test]
    fn a_spinning_vcpu_is_paused_resumed_and_stopped_while_parked() {
        let Some((_vm, shared, t)) = spinning_vcpu() else {
            eprintln!("skipped: /dev/kvm not usable");
            return;
        };
        while shared.running_vcpus() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        shared.pause(Duration::from_secs(5)).unwrap();
        assert_eq!(shared.pause.lock().unwrap().parked, 1);
        // Pausing again is a no-op; resume lets it run (out of the park) again.
        shared.pause(Duration::from_secs(5)).unwrap();
        shared.resume();
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.pause.lock().unwrap().parked != 0 {
            assert!(Instant::now() < deadline, "vCPU not unparked");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!t.is_finished());
        // Ending the VM wakes a parked vCPU.
        shared.pause(Duration::from_secs(5)).unwrap();
        shared.finish(Ok(VmExitReason::Stopped));
        t.join().unwrap();
        assert!(matches!(
            shared.pause(Duration::from_secs(1)),
            Err(VcpuError::Ended)
        ));
    }
}
