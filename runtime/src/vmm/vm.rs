//! A whole microVM: built from a [`VmConfig`] by [`Vm::new`], run to its end by
//! [`Vm::run`].

use std::path::Path;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::arch::x86_64::layout::{
    CMDLINE_ADDR, CMDLINE_MAX_SIZE, I8042_PORT, I8042_PORT_LEN, KVM_TSS_ADDR, SERIAL_IRQ,
    SERIAL_PORT, SERIAL_PORT_LEN,
};
use super::arch::x86_64::pvh::InitrdPlacement;
use super::arch::x86_64::{configure_vcpu, mptable, pvh, regs};
use super::config::{check_memory, check_vcpus, ConsoleOutput, VmConfig, MAX_VCPUS};
use super::devices::i8042::{ResetTrigger, I8042};
use super::devices::serial::{Discard, IrqTrigger, SerialDevice};
use super::devices::virtio::mmio::{self, MmioTransport, MMIO_SLOT_SIZE};
use super::devices::virtio::{VirtioDevice, VirtioInterrupt};
use super::devices::{Bus, SharedDevice};
use super::host::{detect_kvm, mem_total_mib, HostKvm};
use super::memory::{create_guest_memory, register_with_kvm, GuestRam, ResidentProbe};
use super::resources::{MmioSlot, ResourceAllocator};
use super::stats::VmStats;
use super::vcpu::{
    install_kick_handler, vcpu_thread, Shared, VcpuContext, VcpuError, VmExitReason,
};
use super::{loader, Error};

/// Stack of a vCPU thread: device emulation is shallow. Kept under 2 MiB on purpose: on a
/// host with THP "always", Rust's default 2 MiB stack becomes one resident huge page.
const VCPU_STACK_SIZE: usize = 512 << 10;

/// Stops a VM from another thread (a watchdog, a signal handler thread, an API call).
#[derive(Clone)]
pub struct StopHandle(Arc<Shared>);

impl StopHandle {
    /// Ends the VM: [`Vm::run`] returns [`VmExitReason::Stopped`] (unless the guest ended
    /// first). Safe to call at any time, any number of times.
    pub fn stop(&self) {
        self.0.finish(Ok(VmExitReason::Stopped));
    }

    /// Freezes the guest: returns once no vCPU runs guest code (at most `timeout`).
    pub fn pause(&self, timeout: std::time::Duration) -> Result<(), VcpuError> {
        self.0.pause(timeout)
    }

    /// Lets a paused guest run again.
    pub fn resume(&self) {
        self.0.resume()
    }
}

/// A built microVM, ready to [`run`](Vm::run).
pub struct Vm {
    // Fields drop in order: vCPU fds, devices, the VM fd, then guest memory.
    vcpus: Vec<VcpuFd>,
    pio: Bus,
    mmio: Bus,
    resources: ResourceAllocator,
    cmdline: Cmdline,
    stats: Arc<VmStats>,
    shared: Arc<Shared>,
    vm_fd: Arc<VmFd>,
    _kvm: Kvm,
    memory: Arc<GuestRam>,
    mem_size: u64,
    initrd: Option<InitrdPlacement>,
}

/// With HUSK_TRACE_SETUP set, prints when each setup step ended (ms since `Vm::new`
/// began, and on which thread) to stderr: a developer aid for finding where VM creation
/// spends its time. Copy, so the loader thread and the KVM side share one origin.
#[derive(Clone, Copy)]
struct SetupTrace(Option<std::time::Instant>);

impl SetupTrace {
    fn from_env() -> Self {
        Self(std::env::var_os("HUSK_TRACE_SETUP").map(|_| std::time::Instant::now()))
    }

    fn mark(&self, phase: &str) {
        if let Some(origin) = self.0 {
            let thread = std::thread::current();
            eprintln!(
                "husk-trace: {:>7.1} ms {phase} [{}]",
                origin.elapsed().as_secs_f64() * 1000.0,
                thread.name().unwrap_or("?")
            );
        }
    }
}

/// Stack of the thread that reads the kernel into guest memory.
const LOADER_STACK_SIZE: usize = 256 << 10;

/// The KVM side of a VM: the VM with its in-kernel irqchip and PIT, guest memory
/// registered, and configured vCPUs (all but the boot vCPU's entry registers, which need
/// the kernel).
struct KvmVm {
    kvm: Kvm,
    vm_fd: Arc<VmFd>,
    vcpus: Vec<VcpuFd>,
}

impl KvmVm {
    fn create(vcpus: u32, memory: &GuestRam, trace: SetupTrace) -> Result<Self, Error> {
        let kvm = Kvm::new().map_err(Error::OpenKvm)?;
        trace.mark("open /dev/kvm");
        let max_vcpus = u32::try_from(kvm.get_max_vcpus()).unwrap_or(u32::MAX);
        check_vcpus(vcpus, max_vcpus)?;
        // Bounded by check_vcpus (<= 254).
        let vcpus = vcpus as u8;
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
            (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(Error::MissingCap(name));
            }
        }
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        trace.mark("caps, supported cpuid");

        let vm_fd = Arc::new(kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?);
        trace.mark("KVM_CREATE_VM");
        vm_fd
            .set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        vm_fd
            .create_pit2(kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            })
            .map_err(kvm_err("KVM_CREATE_PIT2"))?;
        trace.mark("tss, irqchip, pit");
        register_with_kvm(&vm_fd, memory)?;
        trace.mark("memory slots");

        let mut fds = Vec::with_capacity(vcpus.into());
        for index in 0..vcpus {
            let fd = vm_fd
                .create_vcpu(index.into())
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            trace.mark("KVM_CREATE_VCPU");
            configure_vcpu(&fd, index, vcpus, &supported_cpuid, tsc_deadline)
                .map_err(|source| Error::Arch { cpu: index, source })?;
            trace.mark("configure vcpu");
            fds.push(fd);
        }
        Ok(Self {
            kvm,
            vm_fd,
            vcpus: fds,
        })
    }
}

/// The boot GDT/IDT and the MP table, in guest memory.
fn write_boot_tables(memory: &GuestMemoryMmap, vcpus: u8) -> Result<(), Error> {
    regs::write_boot_tables(memory).map_err(|e| Error::Arch {
        cpu: 0,
        source: e.into(),
    })?;
    mptable::write(memory, vcpus)?;
    Ok(())
}

/// With HUSK_TRIPLE_FAULT_DUMP=FILE set, a guest that triple-faulted leaves its RAM in FILE
/// (see [`write_ram_image`]), so its page tables and IDT can be examined afterwards: KVM on
/// AMD resets the vCPU at the shutdown, so memory is all that is left. A developer aid for
/// the rare triple fault in the test bed (tests/testbed/soak); a failure to write is
/// reported, never fatal.
fn dump_ram_for_triple_fault(memory: &GuestMemoryMmap) {
    let Some(path) = std::env::var_os("HUSK_TRIPLE_FAULT_DUMP") else {
        return;
    };
    let path = Path::new(&path);
    match write_ram_image(memory, path) {
        Ok(()) => eprintln!("husk: guest RAM written to {}", path.display()),
        Err(e) => eprintln!("husk: cannot write guest RAM to {}: {e}", path.display()),
    }
}

/// Writes every RAM region into `path` at its guest-physical address as file offset: a
/// sparse file whose holes are the gaps (the MMIO gap below 4 GiB).
fn write_ram_image(memory: &GuestMemoryMmap, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    use vm_memory::{Bytes, GuestMemory, GuestMemoryRegion, MemoryRegionAddress};
    let file = std::fs::File::create(path)?;
    let mut buf = Vec::new();
    for region in memory.iter() {
        let len = usize::try_from(region.len()).map_err(std::io::Error::other)?;
        buf.resize(len, 0);
        region
            .read_slice(&mut buf, MemoryRegionAddress(0))
            .map_err(std::io::Error::other)?;
        file.write_all_at(&buf, region.start_addr().0)?;
    }
    Ok(())
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

impl Vm {
    /// Checks `config`, then creates the VM: KVM VM with in-kernel irqchip and PIT, guest
    /// memory, kernel and initrd loaded, boot tables written, vCPUs configured, console and
    /// i8042 attached. Nothing runs until [`Vm::run`]. On error everything created so far
    /// is released (fds closed, memory unmapped; no thread exists yet).
    pub fn new(config: VmConfig) -> Result<Self, Error> {
        Self::new_on_host(config, Path::new("/"))
    }

    /// [`Vm::new`] with the host's /proc and /sys read under `root`.
    pub fn new_on_host(config: VmConfig, root: &Path) -> Result<Self, Error> {
        let trace = SetupTrace::from_env();
        // The caller's mistakes first: they do not depend on the host.
        check_vcpus(config.vcpus, MAX_VCPUS)?;
        check_memory(config.memory_mib, mem_total_mib(root))?;
        loader::precheck_kernel(&config.kernel)?;
        if let Some(initrd) = &config.initrd {
            loader::precheck_initrd(initrd)?;
        }
        let mut cmdline =
            Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| Error::Cmdline(e.to_string()))?;
        cmdline
            .insert_str(&config.cmdline)
            .map_err(|e| Error::Cmdline(e.to_string()))?;
        let mem_size = config.memory_mib << 20;
        trace.mark("checks");
        let memory = create_guest_memory(mem_size, config.huge_pages)?;
        trace.mark("mmap");

        // Bounded by check_vcpus (<= 254).
        let vcpus = config.vcpus as u8;
        let stats = VmStats::new(vcpus.into());

        // Reading the kernel into guest memory is the longest step of setup: a thread does
        // only that, from the start. Meanwhile this thread creates the KVM VM and vCPUs,
        // writes the boot tables, then reads the initrd (its place does not depend on the
        // kernel). File errors win over host errors, so a file that is not a kernel is
        // named as such anywhere.
        let (kernel, initrd, kvm) = std::thread::scope(|scope| {
            let load_kernel = || {
                let kernel = loader::load_kernel(&memory, &config.kernel).map_err(Error::from);
                trace.mark("kernel loaded");
                kernel
            };
            let loader_thread = std::thread::Builder::new()
                .name("husk-loader".into())
                .stack_size(LOADER_STACK_SIZE)
                .spawn_scoped(scope, load_kernel);
            let kvm = if detect_kvm(root) == HostKvm::Pvm {
                Err(Error::PvmHost)
            } else {
                KvmVm::create(config.vcpus, &memory, trace).and_then(|kvm| {
                    write_boot_tables(&memory, vcpus)?;
                    for (index, fd) in kvm.vcpus.iter().enumerate() {
                        stats.attach_kernel_counter(index, fd);
                    }
                    trace.mark("boot tables, exit counters");
                    Ok(kvm)
                })
            };
            let initrd = config
                .initrd
                .as_deref()
                .map(|path| loader::load_initrd(&memory, path, mem_size))
                .transpose();
            trace.mark("initrd loaded");
            let kernel = match loader_thread {
                Ok(t) => t.join().unwrap_or(Err(Error::LoaderPanicked)),
                // No thread: load here instead.
                Err(_) => load_kernel(),
            };
            (kernel, initrd, kvm)
        });
        let kernel = kernel?;
        let initrd = initrd?;
        if let (Some(placement), Some(path)) = (&initrd, &config.initrd) {
            loader::check_initrd_clear_of_kernel(placement, path, mem_size, kernel.end)?;
        }
        let KvmVm {
            kvm,
            vm_fd,
            vcpus: vcpu_fds,
        } = kvm?;
        trace.mark("kernel load || kvm vm+vcpus, initrd load");
        if let Some(bsp) = vcpu_fds.first() {
            regs::setup_boot_vcpu(bsp, kernel.entry).map_err(|e| Error::Arch {
                cpu: 0,
                source: e.into(),
            })?;
        }
        let shared = Shared::new(vcpus.into());

        trace.mark("vcpus");
        let mut pio = Bus::new();
        let serial_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        vm_fd
            .register_irqfd(&serial_evt, SERIAL_IRQ)
            .map_err(kvm_err("KVM_IRQFD"))?;
        let sink = match config.console {
            ConsoleOutput::Discard => Box::new(Discard),
            ConsoleOutput::Sink(s) => s,
        };
        let serial: SharedDevice =
            Arc::new(Mutex::new(SerialDevice::new(IrqTrigger(serial_evt), sink)));
        pio.insert(serial, SERIAL_PORT.into(), SERIAL_PORT_LEN.into())?;
        let on_reset = shared.clone();
        let i8042: SharedDevice =
            Arc::new(Mutex::new(I8042::new(ResetTrigger(Box::new(move || {
                on_reset.finish(Ok(VmExitReason::Reset))
            })))));
        pio.insert(i8042, I8042_PORT.into(), I8042_PORT_LEN.into())?;

        trace.mark("devices");
        Ok(Self {
            vcpus: vcpu_fds,
            pio,
            mmio: Bus::new(),
            resources: ResourceAllocator::new(),
            cmdline,
            stats,
            shared,
            vm_fd,
            _kvm: kvm,
            memory,
            mem_size,
            initrd,
        })
    }

    /// The VM's exit counters, shareable with other threads (see [`VmStats::snapshot`]).
    pub fn stats(&self) -> Arc<VmStats> {
        self.stats.clone()
    }

    /// A handle that stops the VM from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.shared.clone())
    }

    /// The KVM VM, for devices that wire irqfds and ioeventfds.
    pub fn vm_fd(&self) -> &Arc<VmFd> {
        &self.vm_fd
    }

    /// Measures how much guest RAM is resident, from any thread, while the VM runs.
    pub fn resident_probe(&self) -> ResidentProbe {
        ResidentProbe::new(&self.memory)
    }

    /// Guest RAM, for devices that read and write it.
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Attaches a virtio device behind its own virtio-mmio transport: allocates a slot in
    /// the MMIO window and an IRQ, wires the IRQ as a KVM irqfd and each queue's
    /// QueueNotify as a KVM ioeventfd (datamatch = queue index: a notify wakes the
    /// device's worker without the vCPU leaving the kernel), routes the slot's accesses to
    /// the transport, and declares the device on the kernel command line. Call between
    /// [`Vm::new`] and [`Vm::run`]. The device (and its worker threads) is dropped when the
    /// VM ends, before guest memory is unmapped.
    pub fn add_virtio_device(
        &mut self,
        device: Box<dyn VirtioDevice>,
        name: &'static str,
    ) -> Result<MmioSlot, Error> {
        // The device's own description first, before anything is registered with KVM; an
        // error after that is the host's, and leaves the VM unusable (drop it).
        MmioTransport::check_device(device.as_ref(), name)?;
        let slot = self.resources.allocate_mmio(MMIO_SLOT_SIZE)?;
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        self.vm_fd
            .register_irqfd(&irqfd, slot.irq)
            .map_err(kvm_err("KVM_IRQFD"))?;
        let interrupt = Arc::new(VirtioInterrupt::new(irqfd, name));
        let notify_addr = IoEventAddress::Mmio(slot.addr + mmio::reg::QUEUE_NOTIFY);
        let queues = device.queue_max_sizes().len();
        let mut notify = Vec::with_capacity(queues);
        for index in 0..queues {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
            // Linux writes QueueNotify with a 32-bit access, so the datamatch is a u32.
            let datamatch = u32::try_from(index).unwrap_or(u32::MAX);
            self.vm_fd
                .register_ioevent(&evt, &notify_addr, datamatch)
                .map_err(kvm_err("KVM_IOEVENTFD"))?;
            notify.push(evt);
        }
        let memory: GuestMemoryMmap = (**self.memory).clone();
        let transport = MmioTransport::new(device, name, memory, interrupt, notify)?;
        self.mmio
            .insert(Arc::new(Mutex::new(transport)), slot.addr, slot.len)?;
        self.cmdline
            .insert_str(slot.virtio_mmio_cmdline())
            .map_err(|e| Error::Cmdline(e.to_string()))?;
        Ok(slot)
    }

    /// Runs the VM until the guest is gone (reset, triple fault), a vCPU fails, or a
    /// [`StopHandle`] stops it. Every vCPU thread has been joined when this returns.
    pub fn run(self) -> Result<VmExitReason, Error> {
        linux_loader::loader::load_cmdline(
            &**self.memory,
            GuestAddress(CMDLINE_ADDR),
            &self.cmdline,
        )
        .map_err(|e| Error::Cmdline(e.to_string()))?;
        pvh::write_start_info(&self.memory, self.mem_size, self.initrd)?;
        install_kick_handler()?;

        let Vm {
            vcpus,
            pio,
            mmio,
            stats,
            shared,
            vm_fd,
            _kvm,
            memory,
            ..
        } = self;
        let pio = Arc::new(pio);
        let mmio = Arc::new(mmio);
        let mut threads = Vec::with_capacity(vcpus.len());
        for (index, fd) in vcpus.into_iter().enumerate() {
            let ctx = VcpuContext {
                pio: pio.clone(),
                mmio: mmio.clone(),
                stats: stats.clone(),
                shared: shared.clone(),
            };
            // At most 254 vCPUs.
            let index = index as u8;
            let spawned = std::thread::Builder::new()
                .name(format!("husk-vcpu{index}"))
                .stack_size(VCPU_STACK_SIZE)
                .spawn(move || vcpu_thread(fd, index, ctx));
            match spawned {
                Ok(t) => threads.push(t),
                Err(source) => {
                    shared.finish(Err(VcpuError::Spawn { cpu: index, source }));
                    break;
                }
            }
        }
        for t in threads {
            // A panicking vCPU thread reports and kicks the others itself (its guard).
            let _ = t.join();
        }
        let outcome = shared.take_outcome();
        if matches!(outcome, Some(Ok(VmExitReason::TripleFault))) {
            dump_ram_for_triple_fault(&memory);
        }
        // Devices, the VM fd, then guest memory go away here, after every vCPU thread.
        drop((pio, mmio, vm_fd, _kvm, memory));
        match outcome {
            Some(Ok(reason)) => Ok(reason),
            Some(Err(e)) => Err(Error::Vcpu(e)),
            None => Ok(VmExitReason::Stopped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn a_ram_image_keeps_every_region_at_its_guest_address() {
        let memory = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x2000),
            (GuestAddress(0x10_0000), 0x1000),
        ])
        .unwrap();
        memory.write_slice(b"low", GuestAddress(0x1ffd)).unwrap();
        memory
            .write_slice(b"high", GuestAddress(0x10_0ffc))
            .unwrap();
        let dir = std::env::temp_dir().join(format!("husk-ram-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ram");
        write_ram_image(&memory, &path).unwrap();
        let image = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(image.len(), 0x10_1000, "ends where the last region ends");
        assert_eq!(&image[0x1ffd..0x2000], b"low");
        assert!(
            image[0x2000..0x10_0000].iter().all(|b| *b == 0),
            "the gap is a hole"
        );
        assert_eq!(&image[0x10_0ffc..], b"high");
    }
}
