//! husk's virtual machine monitor (placeholder, being written).
