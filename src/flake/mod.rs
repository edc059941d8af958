//! The flake side: evaluating `nixosConfigurations` with the real `nix` binary into
//! [`DesiredHost`]s.
//!
//! [`command`] builds every `nix` invocation (eval, build, copy, flake metadata), [`inventory`]
//! evaluates each host's module system once (declaration, system, disk layout) in
//! [`scheduler`]-managed [`worker`] processes bounded in number and memory, [`resolve`]
//! applies the settings' defaults and checks what the module's types cannot. [`probes`] and
//! [`base`] serve the plan's NixOS changes: the probes ride on the evaluation's `extra` hook,
//! at the pull request's head and at its base.

pub mod base;
pub mod command;
pub mod host;
pub mod inventory;
pub mod probes;
pub mod resolve;
pub mod scheduler;
pub mod worker;

pub use command::{
    BuildError, BuildOutputError, Nix, NixCommand, NixError, NixVersion, OverrideInput, OverrideInputError,
    exit_reason, nix_string, parse_build_json,
};
pub use host::{DesiredHost, HostDecl, SystemEval};
pub use inventory::{
    DEFAULT_MAX_MEMORY, EvalRequest, EvalStats, EvaluatedHost, Extras, FlakeError, FlakeIdentity, Hosts,
    Inventory, evaluate, evaluate_extra, flake_identity,
};
pub use resolve::{ResolveError, resolve, resolve_all, resolve_image};
