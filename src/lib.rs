//! nixprox: GitOps for NixOS on Proxmox VE.
//!
//! The data flows one way: the flake ([`flake`]) and the live cluster ([`proxmox`]) feed the
//! pure planner ([`plan`]), whose result is rendered ([`render`]), posted to the forge
//! ([`forge`]) and carried out by the executor ([`apply`]) through SSH ([`ssh`]) and
//! nixos-anywhere ([`install`]).

pub mod apply;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod flake;
pub mod forge;
pub mod install;
pub mod metadata;
pub mod plan;
pub mod proxmox;
pub mod render;
pub mod retry;
pub mod run;
pub mod secret;
pub mod spec;
pub mod ssh;
pub mod text;
