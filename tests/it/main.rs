//! The integration tests: one binary, real counterparts started by `tests/support`.

#[path = "../support/mod.rs"]
mod support;

mod adopt;
mod apply;
mod apply_cli;
mod containers;
mod convert;
mod ct_faults;
mod deploy;
mod docs;
mod error_messages;
mod example;
mod faults;
mod flake;
mod fleet;
mod forge;
mod gates;
mod guide;
mod hardware;
mod image;
mod image_apply;
mod install;
mod layering;
mod nixos_changes;
mod notes;
mod plan_cli;
mod privileges;
mod probe_cli;
mod proxmox;
mod review;
mod runner;
mod secret_files;
mod sizes;
mod ssh;
mod takeover;
