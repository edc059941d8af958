//! The integration tests: one binary, real counterparts started by `tests/support`.

#[path = "../support/mod.rs"]
mod support;

mod apply;
mod apply_cli;
mod deploy;
mod docs;
mod error_messages;
mod faults;
mod flake;
mod fleet;
mod forge;
mod install;
mod layering;
mod plan_cli;
mod probe_cli;
mod proxmox;
mod ssh;
