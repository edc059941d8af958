//! The Proxmox VE side: API client, DTOs, property strings and tasks.

pub mod vm;

pub use vm::{LiveConfig, LiveVm};
