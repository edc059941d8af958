//! The test harness: starts the real counterparts (fakepve, nix, sshd, HTTP servers) and stops
//! them when a test ends.
#![allow(dead_code)]

pub mod cli;
pub mod fakepve;
pub mod fleet;
pub mod git;
pub mod hosts;
pub mod nix;
pub mod sshd;
