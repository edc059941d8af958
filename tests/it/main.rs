//! The integration tests: one binary, real counterparts started by `tests/support`.

#[path = "../support/mod.rs"]
mod support;

mod flake;
mod install;
mod proxmox;
mod ssh;
