//! Helpers shared by the VM-level tests.
