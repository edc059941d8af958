//! The integration tests: one binary, real counterparts started by `tests/support`.

#[path = "../support/mod.rs"]
mod support;

mod apply;
mod flake;
mod proxmox;
