//! SSH to the managed hosts, over russh: waiting for a host to answer, authenticating with the
//! configured key, verifying the host against its pinned key, running commands, and reading the
//! running system (`plan --probe`).
//!
//! Host keys are always verified: a connection is only ever made against a key the caller
//! pins ([`HostKeyPolicy`]); there is no "accept anything" mode here. nixos-anywhere's own SSH
//! during an install is the one place a bootstrap key is trusted (see `docs/security.md`).

mod client;
mod error;
mod keys;
mod probe;

pub use client::{ConnectOptions, ExecOutput, Retry, Session, SshTarget, verify_host_key, wait_for_port};
pub use error::SshError;
pub use keys::{
    ClientKey, GeneratedHostKey, HostKeyPolicy, KeyFile, RUNNER_TEMP, generate_host_key, known_hosts_line,
    private_dir,
};
pub use probe::{ProbeResult, probe_system, probe_systems, read_current_system};
