//! nixprox: GitOps for NixOS on Proxmox VE.
//!
//! The data flows one way: the flake ([`flake`]) and the live cluster ([`proxmox`]) feed the
//! pure planner ([`plan`]), whose result (with [`nixos_changes`], what changes inside NixOS) is
//! rendered ([`render`]), posted to the forge ([`forge`]) and carried out by the executor
//! ([`apply`]), which hands the NixOS side over the [`deploy`] seam to nixos-anywhere and
//! `nix copy` ([`install`]) over SSH ([`ssh`]). Which module may use which is a table in
//! `docs/architecture.md`, enforced by a test.

pub mod apply;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod flake;
pub mod forge;
pub mod image;
pub mod install;
pub mod metadata;
pub mod nixos_changes;
pub mod plan;
pub mod proxmox;
pub mod render;
pub mod retry;
pub mod run;
pub mod secret;
pub mod spec;
pub mod ssh;
pub mod text;
