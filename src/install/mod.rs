//! Putting NixOS on a VM and keeping it current: install with nixos-anywhere (host key pinned
//! before the install), switch with `nix copy` plus a detached, self-rolling-back activation.
//!
//! Nothing here talks to Proxmox. The apply executor hands [`SshDeployer`] a
//! [`DeployTarget`](crate::deploy::DeployTarget) (the host, its address, the metadata block it
//! read from the VM); the deployer fills the plain request structs below from it and the
//! settings, and the executor writes the metadata block from the outcome.

mod anywhere;
mod boot;
mod deployer;
mod extra_files;
mod nix;
mod pin_proxy;
mod run;
mod switch;

pub use anywhere::{CLI_FLAGS, NixosAnywhere, default_command};
pub use deployer::{DEFAULT_KEY_ENV, SshDeployer, pinned_host_key};
pub use extra_files::{HOST_KEY_PATH, prepare_extra_files};
pub use nix::{NixCopy, build_toplevel};
pub use pin_proxy::{PinProxy, PinProxyRequest, pin_proxy};
pub use run::{CommandSpec, RunFailure, TAIL_LINES, run_streaming};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
pub use switch::{ACTIVATE_SCRIPT, Activation, FinalStatus, SwitchAction};

pub use crate::flake::host::BuildOn;
use crate::metadata::Metadata;
use crate::ssh::{
    ClientKey, ConnectOptions, GeneratedHostKey, HostKeyPolicy, KeyFile, Retry, Session, SshError, SshTarget,
    known_hosts_line, wait_for_port,
};

/// Where a disk encryption key comes from (`file:` or `env:` in `install.diskEncryptionKeys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskKeySource {
    File(PathBuf),
    /// Environment variable; its value is written to a 0600 temporary file for the install.
    Env(String),
}

/// A disk key source that is neither `file:/path` nor `env:VARIABLE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid disk key source `{0}` (expected `file:/path` or `env:VARIABLE`)")]
pub struct InvalidDiskKeySource(pub String);

impl DiskKeySource {
    /// Parses `file:/path` or `env:VAR`.
    pub fn parse(text: &str) -> Result<DiskKeySource, InvalidDiskKeySource> {
        match text.split_once(':') {
            Some(("file", path)) if !path.is_empty() => Ok(DiskKeySource::File(path.into())),
            Some(("env", var)) if !var.is_empty() => Ok(DiskKeySource::Env(var.into())),
            _ => Err(InvalidDiskKeySource(text.to_string())),
        }
    }
}

/// Everything one install needs.
#[derive(Debug, Clone)]
pub struct InstallRequest {
    pub host: String,
    /// The address the cluster reported: the bootstrap key is trusted there, for the install only.
    pub address: String,
    pub port: u16,
    pub user: String,
    pub key: ClientKey,
    /// The host key to install and pin (generated with [`crate::ssh::generate_host_key`], or
    /// the user's own via [`GeneratedHostKey::from_private_openssh`]).
    pub host_key: GeneratedHostKey,
    pub flake: String,
    /// The `system.build.toplevel` store path the installed host must run.
    pub toplevel: String,
    /// nixos-anywhere command prefix ([`default_command`] when the settings have none).
    pub command: Vec<String>,
    pub build_on: BuildOn,
    pub kexec_image: Option<String>,
    /// Path on the target → source.
    pub disk_encryption_keys: Vec<(String, DiskKeySource)>,
    /// The user's `install.extraFiles` directory.
    pub extra_files: Option<PathBuf>,
    /// Bound for nixos-anywhere as a whole.
    pub install_timeout: Duration,
    /// Bound for the SSH port to answer before, and for the pinned SSH after, the install.
    pub connect_timeout: Duration,
    /// The host key the machine at `address` must present before anything is handed to
    /// nixos-anywhere (the key pinned in the VM's metadata block). `None` only for a VM nixprox
    /// created and has not installed yet: no key was ever pinned for it.
    pub pinned_host_key: Option<String>,
}

/// A verified install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallOutcome {
    pub host: String,
    /// `/run/current-system` after the reboot (equal to the request's toplevel).
    pub system: String,
    /// The pinned public key the host answered with.
    pub host_key: String,
    /// Last lines of nixos-anywhere's output.
    pub log_tail: Vec<String>,
}

impl InstallOutcome {
    /// The metadata block to write into the VM notes after this install.
    pub fn metadata(&self, disk_layout: Option<String>, git_rev: Option<String>, time: String) -> Metadata {
        Metadata {
            host: self.host.clone(),
            system: Some(self.system.clone()),
            disk_layout,
            host_key: Some(self.host_key.clone()),
            git_rev,
            time: Some(time),
            // The install finished: nothing is left half done, and the VM is installed.
            applying: None,
            created: None,
            adopted: None,
        }
    }
}

/// Why an install failed. The VM is left as it is, for a resumed run.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("failed to prepare the install of `{host}`: {reason}")]
    Prepare { host: String, reason: String },
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(
        "refusing to install `{host}`: the machine at its address could not be verified against the host key pinned for its VM, so nothing was sent to it (no host key, no disk-encryption key): {reason}"
    )]
    Unverified { host: String, reason: String },
    #[error(
        "nixos-anywhere failed for `{host}`: {reason}\n(the VM is left as it is; fix the cause and run apply again to resume)"
    )]
    Installer { host: String, reason: String },
    #[error(
        "installed `{host}` runs `{got}` instead of the expected `{expected}` (did the flake change during the install, or did nixos-anywhere install another attribute?)"
    )]
    SystemMismatch { host: String, expected: String, got: String },
}

/// A disk key on its way to the installer: a file the user keeps, or bytes from the
/// environment, written to a private file only right before the installer runs.
enum DiskKey {
    File(std::path::PathBuf),
    Bytes(secrecy::SecretBox<Vec<u8>>),
}

/// Installs NixOS on a VM reachable at the request's address: waits for its SSH port, runs
/// nixos-anywhere with the pinned host key in `--extra-files`, waits for the rebooted host to
/// answer with that key, and checks that it runs the expected toplevel.
pub async fn install_host(request: &InstallRequest) -> Result<InstallOutcome, InstallError> {
    let host = request.host.clone();
    let prepare = |reason: String| InstallError::Prepare { host: host.clone(), reason };
    let policy = HostKeyPolicy::pinned(&request.host_key.public)?;
    // Disk keys from the environment are read (and a missing one refused) before waiting, but
    // written to disk only right before the installer runs.
    let mut disk_sources = Vec::new();
    for (remote, source) in &request.disk_encryption_keys {
        let source = match source {
            DiskKeySource::File(path) => DiskKey::File(path.clone()),
            DiskKeySource::Env(var) => {
                // Byte for byte: a key's trailing newline or spaces are part of the key.
                let value = std::env::var_os(var).filter(|v| !v.is_empty()).ok_or_else(|| {
                    prepare(format!(
                        "environment variable `{var}` for disk key `{remote}` is not set or empty (set the CI secret)"
                    ))
                })?;
                DiskKey::Bytes(secrecy::SecretBox::new(Box::new(
                    std::os::unix::ffi::OsStrExt::as_bytes(value.as_os_str()).to_vec(),
                )))
            }
        };
        disk_sources.push((remote.clone(), source));
    }
    // Every secret is written only once the machine answers (the port wait can take minutes),
    // each in its own private directory, removed when this function returns or is dropped.
    wait_for_port(&request.host, &request.address, request.port, request.connect_timeout).await?;
    let key_file = request.key.materialize()?;
    if let Some(pinned) = &request.pinned_host_key {
        verify_target(request, &key_file, pinned).await?;
    }
    let extra = prepare_extra_files(&request.host_key, request.extra_files.as_deref())
        .map_err(|err| prepare(format!("failed to build the `--extra-files` directory: {err}")))?;
    let mut disk_key_files = Vec::new();
    let mut disk_keys = Vec::new();
    for (remote, source) in disk_sources {
        let local = match source {
            DiskKey::File(path) => path,
            DiskKey::Bytes(bytes) => {
                use secrecy::ExposeSecret;
                let file = KeyFile::from_exact_bytes(bytes.expose_secret())?;
                let path = file.path().to_path_buf();
                disk_key_files.push(file);
                path
            }
        };
        disk_keys.push((remote, local));
    }
    // With a pinned key, nixos-anywhere's own (unchecked) connections go through a tunnel
    // that verifies it (see `pin_proxy`): no window between the check above and the installer.
    let mut proxy = None;
    if let Some(pinned) = &request.pinned_host_key {
        let pin = PinProxyRequest {
            address: &request.address,
            port: request.port,
            user: &request.user,
            identity: key_file.path(),
            pinned,
        };
        proxy =
            Some(pin_proxy(&pin).map_err(|err| prepare(format!("failed to write the SSH proxy: {err}")))?);
    }
    let anywhere = NixosAnywhere {
        command: request.command.clone(),
        flake: request.flake.clone(),
        host: request.host.clone(),
        user: request.user.clone(),
        address: request.address.clone(),
        port: request.port,
        identity: key_file.path().to_path_buf(),
        extra_files: extra.path().to_path_buf(),
        build_on: request.build_on,
        kexec: request.kexec_image.clone(),
        disk_encryption_keys: disk_keys,
        ssh_options: proxy.iter().map(PinProxy::ssh_option).collect(),
    };
    tracing::info!(host = %request.host, "installing NixOS with nixos-anywhere");
    let spec = CommandSpec { argv: anywhere.argv(), env: Vec::new() };
    let log_tail = run_streaming(&spec, &request.host, request.install_timeout)
        .await
        .map_err(|failure| InstallError::Installer { host: host.clone(), reason: failure.describe() })?;
    drop(disk_key_files);
    drop(proxy);
    let target = SshTarget {
        host: request.host.clone(),
        address: request.address.clone(),
        port: request.port,
        user: request.user.clone(),
    };
    // The old system may answer with its key until the reboot happens: keep trying, but only
    // the pinned key is ever accepted.
    let options =
        ConnectOptions { bound: request.connect_timeout, retry: Retry::Anything, ..Default::default() };
    let session = Session::connect(&target, &key_file.load()?, &policy, &options).await?;
    let output = session.exec("readlink /run/current-system", Duration::from_secs(30)).await;
    session.close().await;
    let system = output?.stdout.trim().to_string();
    if system != request.toplevel {
        return Err(InstallError::SystemMismatch { host, expected: request.toplevel.clone(), got: system });
    }
    Ok(InstallOutcome { host, system, host_key: request.host_key.public.trim().to_string(), log_tail })
}

/// Checks that the machine at the request's address presents `pinned` (and lets nixprox's key
/// in) before the new host key and the disk-encryption keys go to nixos-anywhere. nixos-anywhere
/// itself connects without checking host keys (`StrictHostKeyChecking=no`, which
/// `--ssh-option` cannot undo: ssh keeps an option's first value), so this check, right before
/// it starts, is what stands between the secrets and a machine that took over the address.
async fn verify_target(
    request: &InstallRequest,
    key_file: &KeyFile,
    pinned: &str,
) -> Result<(), InstallError> {
    let unverified = |reason: String| InstallError::Unverified { host: request.host.clone(), reason };
    let policy = HostKeyPolicy::pinned(pinned).map_err(|err| unverified(err.to_string()))?;
    let target = SshTarget {
        host: request.host.clone(),
        address: request.address.clone(),
        port: request.port,
        user: request.user.clone(),
    };
    let options = ConnectOptions { bound: request.connect_timeout, ..Default::default() };
    let session = Session::connect(&target, &key_file.load()?, &policy, &options)
        .await
        .map_err(|err| unverified(err.to_string()))?;
    session.close().await;
    Ok(())
}

/// Everything one switch needs.
#[derive(Debug, Clone)]
pub struct SwitchRequest {
    pub host: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub key: ClientKey,
    /// The public key recorded in the metadata block.
    pub host_key: String,
    /// The toplevel to switch to (built on this runner).
    pub toplevel: String,
    pub action: SwitchAction,
    pub rollback: bool,
    pub confirm_timeout: Duration,
    pub allow_failed_units: bool,
    /// Check signatures in `nix copy` (off by default, as in deploy-rs).
    pub check_sigs: bool,
    pub connect_timeout: Duration,
    pub copy_timeout: Duration,
    pub activation_timeout: Duration,
}

/// How a switch ended on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchResult {
    Switched,
    /// `switch-to-configuration` exited 4; a failure unless the host allows failed units.
    SwitchedUnitsFailed {
        allowed: bool,
    },
    /// The host went back to the previous generation: a failed host.
    RolledBack {
        reason: String,
    },
    /// Activation failed and rollback is off: a failed host.
    ActivationFailed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchOutcome {
    pub host: String,
    pub system: String,
    pub result: SwitchResult,
    /// Last lines of the activation's log on the host.
    pub log: String,
}

impl SwitchOutcome {
    /// Whether the report counts this host as failed (non-zero exit).
    pub fn is_failure(&self) -> bool {
        !matches!(self.result, SwitchResult::Switched | SwitchResult::SwitchedUnitsFailed { allowed: true })
    }

    /// Whether the host now runs the new system (so the metadata block gets updated).
    pub fn switched(&self) -> bool {
        matches!(self.result, SwitchResult::Switched | SwitchResult::SwitchedUnitsFailed { .. })
    }

    /// A one-line summary for the report: "switched", "switched, some units failed", …
    pub fn summary(&self) -> String {
        match &self.result {
            SwitchResult::Switched => "switched".into(),
            SwitchResult::SwitchedUnitsFailed { .. } => "switched, some units failed".into(),
            SwitchResult::RolledBack { reason } => format!("rolled back: {reason}"),
            SwitchResult::ActivationFailed { reason } => format!("activation failed: {reason}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("failed to prepare the switch of `{host}`: {reason}")]
    Prepare { host: String, reason: String },
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(
        "failed to copy `{system}` to `{host}` with nix copy: {reason}\n(the host still runs its previous system; is there room in its /nix/store, and does `nix-daemon` run there?)"
    )]
    Copy { host: String, system: String, reason: String },
    #[error("failed to start the activation on `{host}`: {reason}")]
    Launch { host: String, reason: String },
    #[error(
        "rollback on `{host}` failed: {reason}\n{log}\n(log in on the host and run `nixos-rebuild switch --rollback`)"
    )]
    RollbackFailed { host: String, reason: String, log: String },
    #[error(
        "could not learn how the switch of `{host}` ended: {reason} (it rolls back by itself unless confirmed; check the host's `/run/nixprox` state and console)"
    )]
    Unconfirmed { host: String, reason: String },
}

/// Copies the closure to an installed host and switches it, confirming over a new SSH
/// connection (or letting it roll back). A rolled-back host is an `Ok` outcome whose
/// [`SwitchOutcome::is_failure`] is true; errors are for switches whose end is unknown or
/// that never started.
pub async fn switch_host(request: &SwitchRequest) -> Result<SwitchOutcome, SwitchError> {
    let host = request.host.clone();
    // Another user than root does what needs root through `sudo -n` (docs/security.md).
    let sudo = request.user != "root";
    let key_file = request.key.materialize()?;
    let key: Arc<_> = key_file.load()?;
    let policy = HostKeyPolicy::pinned(&request.host_key)?;
    let target = SshTarget {
        host: request.host.clone(),
        address: request.address.clone(),
        port: request.port,
        user: request.user.clone(),
    };
    let connect = ConnectOptions { bound: request.connect_timeout, ..Default::default() };
    // Verify the host before anything travels to it.
    Session::connect(&target, &key, &policy, &connect).await?.close().await;
    let mut known_hosts = tempfile::Builder::new()
        .prefix("nixprox-known-hosts-")
        .tempfile()
        .map_err(|err| SwitchError::Prepare { host: host.clone(), reason: err.to_string() })?;
    let line = known_hosts_line(&request.address, request.port, &policy.lines().join("\n"));
    std::io::Write::write_all(&mut known_hosts, format!("{line}\n").as_bytes())
        .map_err(|err| SwitchError::Prepare { host: host.clone(), reason: err.to_string() })?;
    let copy = NixCopy {
        user: request.user.clone(),
        address: request.address.clone(),
        port: request.port,
        identity: key_file.path().to_path_buf(),
        known_hosts: known_hosts.path().to_path_buf(),
        check_sigs: request.check_sigs,
        paths: vec![request.toplevel.clone()],
        sudo,
    };
    tracing::info!(host = %host, "copying {} with nix copy", request.toplevel);
    run_streaming(&copy.spec(&crate::flake::Nix::default()), &host, request.copy_timeout).await.map_err(
        |failure| SwitchError::Copy {
            host: host.clone(),
            system: request.toplevel.clone(),
            reason: failure.describe(),
        },
    )?;
    let activation = Activation {
        system: request.toplevel.clone(),
        action: request.action,
        rollback: request.rollback,
        confirm_timeout: request.confirm_timeout,
        activation_timeout: request.activation_timeout,
        id: unique_id(),
        sudo,
    };
    tracing::info!(host = %host, "activating ({})", request.action.as_str());
    let (status, log) =
        switch::activate(&target, &key, &policy, &connect, &activation).await.map_err(|err| match err {
            switch::ActivateError::Ssh(err) => SwitchError::Ssh(err),
            switch::ActivateError::Launch(reason) => SwitchError::Launch { host: host.clone(), reason },
            err @ switch::ActivateError::Unconfirmed { .. } => {
                SwitchError::Unconfirmed { host: host.clone(), reason: err.to_string() }
            }
        })?;
    let result = match status {
        FinalStatus::Switched { exit_code: 4 } => {
            SwitchResult::SwitchedUnitsFailed { allowed: request.allow_failed_units }
        }
        FinalStatus::Switched { .. } => SwitchResult::Switched,
        FinalStatus::RolledBack { reason } => SwitchResult::RolledBack { reason },
        FinalStatus::Failed { reason } => SwitchResult::ActivationFailed { reason },
        FinalStatus::RollbackFailed { reason } => {
            return Err(SwitchError::RollbackFailed { host, reason, log });
        }
    };
    Ok(SwitchOutcome { host, system: request.toplevel.clone(), result, log })
}

/// A name for one switch's state directory, unique on the target in practice.
fn unique_id() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{nanos}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_key_sources() {
        assert_eq!(DiskKeySource::parse("file:/run/k"), Ok(DiskKeySource::File("/run/k".into())));
        assert_eq!(DiskKeySource::parse("env:DISK_KEY"), Ok(DiskKeySource::Env("DISK_KEY".into())));
        assert!(DiskKeySource::parse("env:").is_err());
        assert!(DiskKeySource::parse("/path").is_err());
    }

    #[test]
    fn outcome_failure_policy() {
        let outcome = |result| SwitchOutcome {
            host: "web".into(),
            system: "/nix/store/x".into(),
            result,
            log: String::new(),
        };
        assert!(!outcome(SwitchResult::Switched).is_failure());
        let units = outcome(SwitchResult::SwitchedUnitsFailed { allowed: false });
        assert!(units.is_failure() && units.switched());
        assert_eq!(units.summary(), "switched, some units failed");
        assert!(!outcome(SwitchResult::SwitchedUnitsFailed { allowed: true }).is_failure());
        let back = outcome(SwitchResult::RolledBack { reason: "r".into() });
        assert!(back.is_failure() && !back.switched());
    }
}
