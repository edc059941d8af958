//! The flake side: evaluating `nixosConfigurations` with the real `nix` binary into
//! [`DesiredHost`]s.
//!
//! [`command`] builds `nix` invocations, [`inventory`] runs them (one evaluation of every host's
//! `config.nixprox`, then each host's system in parallel), [`resolve`] applies the settings'
//! defaults and checks what the module's types cannot.

pub mod command;
pub mod host;
pub mod inventory;
pub mod resolve;

pub use command::{Nix, NixError, NixVersion, OverrideInput};
pub use host::{DesiredHost, HostDecl, SystemEval};
pub use inventory::{EvalRequest, EvalTimings, EvaluatedHost, FlakeError, Inventory, evaluate};
pub use resolve::{ResolveError, resolve, resolve_all, resolve_image};
