//! The errors of the SSH layer: callers branch on them (a mismatched key is a security
//! failure, a timeout is a host that never came up).

use std::time::Duration;

/// What went wrong talking SSH to one host. Messages name the host and say how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error(
        "host key of `{host}` ({address}) does not match the pinned key: expected `{expected}`, got `{got}` (if the host was reinstalled outside nixprox, update the `host_key` in its metadata block; otherwise treat this as a possible man-in-the-middle)"
    )]
    HostKeyMismatch { host: String, address: String, expected: String, got: String },
    #[error(
        "ssh to `{host}` ({address}) did not answer within {}s: {last} (is the VM running, is `{address}` its address, and does sshd listen on that port?)",
        .waited.as_secs()
    )]
    Timeout { host: String, address: String, waited: Duration, last: String },
    #[error(
        "ssh authentication as `{user}` on `{host}` ({address}) was refused (is the public half of the configured key in the user's authorized_keys?)"
    )]
    Auth { host: String, address: String, user: String },
    #[error(
        "failed to read ssh key `{path}`: {reason} (set `ssh.key` to an unencrypted OpenSSH private key)"
    )]
    Key { path: String, reason: String },
    #[error(
        "environment variable `{var}` for the ssh key is not set or empty (set the CI secret, or use `ssh.key` with a file path)"
    )]
    KeyEnv { var: String },
    #[error(
        "invalid pinned host key `{key}`: {reason} (expected an OpenSSH public key line `ssh-ed25519 AAAA…`)"
    )]
    PinnedKey { key: String, reason: String },
    #[error("failed to generate an ed25519 host key: {0}")]
    Generate(String),
    #[error("failed to write a temporary key file: {0}")]
    TempFile(std::io::Error),
    #[error("ssh to `{host}` ({address}) failed: {reason}")]
    Protocol { host: String, address: String, reason: String },
    #[error(
        "command on `{host}` timed out after {}s: `{command}` (raise the timeout, or check what hangs on the host)",
        .waited.as_secs()
    )]
    CommandTimeout { host: String, command: String, waited: Duration },
}
