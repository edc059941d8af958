//! The flake side: evaluating `nixosConfigurations` with the real `nix` binary into
//! [`DesiredHost`]s.

pub mod host;

pub use host::{DesiredHost, HostDecl};
