//! The integration tests: one binary, real counterparts started by `tests/support`.

#[path = "../support/mod.rs"]
mod support;

mod apply;
mod apply_cli;
mod deploy;
mod docs;
mod error_messages;
mod flake;
mod fleet;
mod forge;
mod gates;
mod install;
mod notes;
mod plan_cli;
mod probe_cli;
mod proxmox;
mod sizes;
mod ssh;
