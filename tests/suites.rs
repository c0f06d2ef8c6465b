//! husk's tests that run the built binaries: one test binary, a module per suite (see
//! tests/Cargo.toml for why one). `host_kvm` and `cli_oci` run on this machine; each
//! `vm_*` module boots real VMs and runs where they boot (tests/run-vm-tests.sh).

#[path = "oci/cli.rs"]
mod cli_oci;
#[path = "vm/host_kvm.rs"]
mod host_kvm;

#[path = "vm/boot.rs"]
mod vm_boot;
#[path = "vm/container.rs"]
mod vm_container;
#[path = "vm/exec.rs"]
mod vm_exec;
#[path = "vm/fs.rs"]
mod vm_fs;
#[path = "vm/lifecycle.rs"]
mod vm_lifecycle;
#[path = "vm/probe.rs"]
mod vm_probe;
#[path = "vm/run.rs"]
mod vm_run;
#[path = "vm/virtio.rs"]
mod vm_virtio;
#[path = "vm/vsock.rs"]
mod vm_vsock;
