//! The bridge from the apply executor to SSH and nixos-anywhere: [`SshDeployer`] implements
//! [`NixosDeployer`] with [`install_host`](super::install_host) and
//! [`switch_host`](super::switch_host), taking what they need from the host's declaration,
//! the settings and the metadata block the executor read from the VM (the pinned host key).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::future::BoxFuture;

use super::{
    DiskKeySource, InstallRequest, SwitchAction, SwitchRequest, boot, build_toplevel, default_command,
    install_host, switch_host,
};
use crate::config::Settings;
use crate::deploy::{DeployTarget, Deployed, NixosDeployer};
use crate::flake::DesiredHost;
use crate::flake::host::{Bootstrap, DeployStrategy};
use crate::flake::{Nix, OverrideInput};
use crate::metadata::Metadata;
use crate::ssh::{
    ClientKey, ConnectOptions, GeneratedHostKey, HostKeyPolicy, SshError, SshTarget, generate_host_key,
    probe_system, read_current_system, verify_host_key, wait_for_port,
};

/// The environment variable read for the SSH key when the settings name neither a key file
/// nor another variable.
pub const DEFAULT_KEY_ENV: &str = "NIXPROX_SSH_KEY";

/// Installs and switches hosts over SSH.
#[derive(Debug)]
pub struct SshDeployer {
    /// The flake reference nixos-anywhere builds `<flake>#<host>` from.
    flake: String,
    key: ClientKey,
    command: Vec<String>,
    user_override: Option<String>,
    /// `--override-input`s for the builds nixprox runs itself (nixos-anywhere evaluates the
    /// flake with its lock file).
    override_inputs: Vec<OverrideInput>,
    install_timeout: Duration,
    connect_timeout: Duration,
}

impl SshDeployer {
    /// The SSH key from the settings (`ssh.key`, `ssh.key_env`, else `NIXPROX_SSH_KEY` when set).
    /// `None` when none is configured: the executor then skips install and switch steps.
    pub fn client_key(settings: &Settings, env: &dyn Fn(&str) -> Option<String>) -> Option<ClientKey> {
        if let Some(path) = &settings.ssh.key {
            return Some(ClientKey::File(path.clone()));
        }
        if let Some(var) = &settings.ssh.key_env {
            return Some(ClientKey::Env(var.clone()));
        }
        env(DEFAULT_KEY_ENV).filter(|v| !v.trim().is_empty()).map(|_| ClientKey::Env(DEFAULT_KEY_ENV.into()))
    }

    pub fn new(flake: String, key: ClientKey, settings: &Settings) -> SshDeployer {
        SshDeployer {
            flake,
            key,
            command: settings.install.command.clone().unwrap_or_else(default_command),
            user_override: settings.ssh.user.clone(),
            override_inputs: Vec::new(),
            install_timeout: Duration::from_secs(settings.install.timeout.max(1)),
            connect_timeout: Duration::from_secs(settings.ssh.connect_timeout.unwrap_or(300).max(1)),
        }
    }

    /// Builds with these `--override-input`s (the ones the flake was evaluated with).
    pub fn with_override_inputs(mut self, inputs: Vec<OverrideInput>) -> SshDeployer {
        self.override_inputs = inputs;
        self
    }

    /// The host key the install puts in place: `install.hostKeyFile`'s, or a new one. With
    /// `ssh.hostKey` declared it must be that key's private half: a new key would not match
    /// what the flake says the host presents, and every later connection would be refused.
    fn host_key(target: &DeployTarget<'_>) -> anyhow::Result<GeneratedHostKey> {
        let host = &target.host.host;
        let key = match &target.host.install.host_key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!(
                        "failed to read the host key `{path}` of host `{host}` (nixprox.install.hostKeyFile)"
                    )
                })?;
                GeneratedHostKey::from_private_openssh(&text)?
            }
            None if target.host.ssh.host_key.is_some() => bail!(
                "host `{host}` declares `nixprox.ssh.hostKey`, so its install must put that key in place: set `nixprox.install.hostKeyFile` to its private half on the runner, or unset `nixprox.ssh.hostKey` to let nixprox generate and pin a new key"
            ),
            None => generate_host_key(&format!("root@{host}"))?,
        };
        if let Some(declared) = &target.host.ssh.host_key
            && !same_key(declared, &key.public)
        {
            bail!(
                "the key in `nixprox.install.hostKeyFile` of host `{host}` is not the one `nixprox.ssh.hostKey` declares (`{}`): make them the two halves of one key",
                declared.trim()
            );
        }
        Ok(key)
    }

    async fn install_one(&self, target: DeployTarget<'_>) -> anyhow::Result<Deployed> {
        let host = target.host;
        let recorded = target.recorded;
        let pinned_host_key = install_trust(&target, recorded)?;
        // nixos-anywhere logs in to what runs now: an installed NixOS (a reinstall) as the
        // host's SSH user; a new VM's bootstrap system as the template's cloud-init user.
        // A VM being converted runs its old system: logged in to as the host's SSH user too.
        let installed = recorded.is_some_and(|m| m.system.is_some() || converting(m));
        let user = match &host.bootstrap {
            Bootstrap::Template { user, .. } if !installed => user.clone(),
            _ => self.ssh_user(target),
        };
        let disk_encryption_keys = host
            .install
            .disk_encryption_keys
            .iter()
            .map(|(remote, source)| {
                DiskKeySource::parse(source).map(|source| (remote.clone(), source)).map_err(|err| {
                    anyhow!("host `{}`: nixprox.install.diskEncryptionKeys.{remote}: {err}", host.host)
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let request = InstallRequest {
            host: host.host.clone(),
            address: target.address.to_string(),
            port: host.ssh.port,
            user,
            key: self.key.clone(),
            host_key: Self::host_key(&target)?,
            flake: self.flake.clone(),
            toplevel: host.system.toplevel.clone(),
            command: self.command.clone(),
            build_on: host.install.build_on,
            kexec_image: host.install.kexec_image.clone(),
            disk_encryption_keys,
            extra_files: host.install.extra_files.as_ref().map(PathBuf::from),
            install_timeout: self.install_timeout,
            connect_timeout: self.connect_timeout,
            pinned_host_key,
        };
        let outcome = install_host(&request).await?;
        Ok(Deployed {
            system: Some(outcome.system),
            disk_layout: Some(host.system.disk_layout_hash.clone()),
            host_key: Some(outcome.host_key),
            time: Some(now()),
            reboot_needed: Vec::new(),
        })
    }

    async fn switch_one(&self, target: DeployTarget<'_>) -> anyhow::Result<Deployed> {
        let host = target.host;
        let action = match host.deploy.strategy {
            DeployStrategy::Switch => SwitchAction::Switch,
            DeployStrategy::Boot => SwitchAction::Boot,
            DeployStrategy::None => {
                bail!("host `{}` has deploy.strategy = none; nothing to switch", host.host)
            }
        };
        let host_key = Self::pinned_key(&target)?;
        self.build(host).await?;
        let request = SwitchRequest {
            host: host.host.clone(),
            address: target.address.to_string(),
            port: host.ssh.port,
            user: self.ssh_user(target),
            key: self.key.clone(),
            host_key,
            toplevel: host.system.toplevel.clone(),
            action,
            rollback: host.deploy.rollback,
            confirm_timeout: Duration::from_secs(host.deploy.confirm_timeout.max(1)),
            allow_failed_units: host.deploy.allow_failed_units,
            check_sigs: false,
            connect_timeout: self.connect_timeout,
            copy_timeout: self.install_timeout,
            activation_timeout: self.install_timeout,
        };
        let outcome = switch_host(&request).await?;
        if outcome.is_failure() {
            bail!("{}", outcome.summary());
        }
        let reboot_needed = self.boot_changes(target, &request.host_key, &outcome.system).await;
        Ok(Deployed { system: Some(outcome.system), time: Some(now()), reboot_needed, ..Deployed::default() })
    }

    /// What an image boot left: the system the VM runs, checked over SSH against the key
    /// pinned from the guest agent; a switch when that is not the host's toplevel.
    async fn verify_image_one(&self, target: DeployTarget<'_>) -> anyhow::Result<Deployed> {
        let host = target.host;
        let host_key = Self::pinned_key(&target)?;
        let key_file = self.key.materialize()?;
        let policy = HostKeyPolicy::pinned(&host_key)?;
        let ssh = SshTarget {
            host: host.host.clone(),
            address: target.address.to_string(),
            port: host.ssh.port,
            user: self.ssh_user(target),
        };
        // The VM has just booted: wait for sshd (it may still be generating its keys).
        wait_for_port(&host.host, target.address, host.ssh.port, self.connect_timeout).await?;
        let running = probe_system(&ssh, &key_file.load()?, &policy, self.connect_timeout)
            .await
            .with_context(|| format!("failed to check which system host `{}` booted", host.host))?;
        let booted = Deployed {
            system: Some(running.clone()),
            disk_layout: Some(host.system.disk_layout_hash.clone()),
            host_key: Some(host_key),
            time: Some(now()),
            reboot_needed: Vec::new(),
        };
        if running == host.system.toplevel {
            return Ok(booted);
        }
        tracing::info!(
            host = %host.host,
            "the image booted `{running}`, not the host's system: switching to {}",
            host.system.toplevel
        );
        let switched = self.switch_one(target).await?;
        Ok(Deployed { system: switched.system, time: switched.time, ..booted })
    }

    /// Builds the host's toplevel on this runner, so `nix copy` has a closure to send (the
    /// plan only evaluated it). A different out path means the flake changed since evaluation.
    async fn build(&self, host: &crate::flake::DesiredHost) -> anyhow::Result<()> {
        let build = build_toplevel(&Nix::default(), &self.flake, &host.host, &self.override_inputs);
        tracing::info!(host = %host.host, "building {}", host.system.toplevel);
        let built = build.run_build(self.install_timeout).await.map_err(|reason| {
            anyhow!("failed to build the system of host `{}` (`{}`): {reason}", host.host, build.describe())
        })?;
        if built != host.system.toplevel {
            bail!(
                "building the system of host `{}` gave `{built}` instead of the evaluated `{}` (did the flake change since it was evaluated? run apply again)",
                host.host,
                host.system.toplevel
            );
        }
        Ok(())
    }

    /// The SSH target of `target` with its pinned key's policy and the loaded client key.
    fn connection(
        &self,
        target: DeployTarget<'_>,
        host_key: &str,
    ) -> anyhow::Result<(SshTarget, HostKeyPolicy, std::sync::Arc<russh::keys::PrivateKey>)> {
        let ssh = SshTarget {
            host: target.host.host.clone(),
            address: target.address.to_string(),
            port: target.host.ssh.port,
            user: self.ssh_user(target),
        };
        Ok((ssh, HostKeyPolicy::pinned(host_key)?, self.key.materialize()?.load()?))
    }

    /// What a confirmed switch to `system` leaves for a reboot (see [`boot::boot_changes`]).
    /// Unknown (no `/run/booted-system`, or the check failed: logged) claims nothing.
    async fn boot_changes(&self, target: DeployTarget<'_>, host_key: &str, system: &str) -> Vec<String> {
        let host = &target.host.host;
        let checked = async {
            let (ssh, policy, key) = self.connection(target, host_key)?;
            let options = ConnectOptions { bound: self.connect_timeout, ..ConnectOptions::default() };
            anyhow::Ok(boot::boot_changes(&ssh, &key, &policy, &options, system).await?)
        };
        match checked.await {
            Ok(Some(changes)) => changes,
            Ok(None) => {
                tracing::info!(host = %host, "no `/run/booted-system`: cannot tell whether a reboot is needed");
                Vec::new()
            }
            Err(err) => {
                tracing::warn!(host = %host, "could not check whether the switch needs a reboot: {err:#}");
                Vec::new()
            }
        }
    }

    async fn check_rebooted_one(&self, target: DeployTarget<'_>, system: &str) -> anyhow::Result<()> {
        let host_key = Self::pinned_key(&target)?;
        let (ssh, policy, key) = self.connection(target, &host_key)?;
        boot::wait_rebooted(&ssh, &key, &policy, system, self.connect_timeout).await
    }

    fn ssh_user(&self, target: DeployTarget<'_>) -> String {
        self.user_override.clone().unwrap_or_else(|| target.host.ssh.user.clone())
    }

    /// The key the host must present: the declared `nixprox.ssh.hostKey`, else the one
    /// pinned in the metadata block the executor just read.
    fn pinned_key(target: &DeployTarget<'_>) -> anyhow::Result<String> {
        let host = &target.host.host;
        pinned_host_key(target.host, target.recorded).map(str::to_string).with_context(|| {
            format!(
                "host `{host}` has no pinned SSH host key (neither `nixprox.ssh.hostKey` nor one in its metadata block), so nixprox cannot verify it; declare `nixprox.ssh.hostKey`, or reinstall it through nixprox (policies.allow_reinstall) to pin one"
            )
        })
    }

    /// See [`NixosDeployer::pin_fingerprints`].
    async fn pin_fingerprints_one(
        &self,
        target: DeployTarget<'_>,
        fingerprints: &[String],
    ) -> anyhow::Result<String> {
        let host = &target.host.host;
        let policy = HostKeyPolicy::fingerprints(fingerprints)?;
        let key = self.key.materialize()?.load()?;
        let ssh = SshTarget {
            host: host.clone(),
            address: target.address.to_string(),
            port: target.host.ssh.port,
            user: self.ssh_user(target),
        };
        let options = ConnectOptions { bound: self.connect_timeout, ..ConnectOptions::default() };
        let session = crate::ssh::Session::connect(&ssh, &key, &policy, &options)
            .await
            .with_context(|| format!("failed to pin the host key of container {} (`{host}`)", target.vmid))?;
        let line = session.server_key().to_string();
        session.close().await;
        Ok(line)
    }

    async fn read_system_one(&self, target: DeployTarget<'_>, host_key: &str) -> anyhow::Result<String> {
        let host = &target.host.host;
        let vmid = target.vmid;
        let policy = HostKeyPolicy::pinned(host_key)
            .map_err(|err| anyhow!("refusing to adopt `{host}` (VM {vmid}): {err}; nothing was changed"))?;
        let key_file = self.key.materialize()?;
        let key = key_file.load()?;
        let ssh = SshTarget {
            host: host.clone(),
            address: target.address.to_string(),
            port: target.host.ssh.port,
            user: self.ssh_user(target),
        };
        let options = ConnectOptions { bound: self.connect_timeout, ..ConnectOptions::default() };
        match read_current_system(&ssh, &key, &policy, &options, Duration::from_secs(30)).await {
            Ok(Some(system)) => Ok(system),
            Ok(None) => bail!(
                "refusing to adopt `{host}` (VM {vmid}) in place: the machine at `{}` does not run NixOS (it has no `/run/current-system`); nothing was changed. To convert it, which wipes its disks, let the plan read its OS through the guest agent (qemu-guest-agent running; `VM.GuestAgent.Audit`, `VM.Monitor` before Proxmox VE 9, for the plan's token): the next plan shows its conversion as a gated `reinstall` (`nixprox.allow.reinstall`)",
                target.address
            ),
            Err(err @ SshError::HostKeyMismatch { .. }) => {
                bail!("refusing to adopt `{host}` (VM {vmid}): {err}; nothing was sent to it or changed")
            }
            Err(err) => Err(anyhow!(err).context(format!(
                "failed to read the running system of `{host}` (VM {vmid}) before adopting it; nothing was changed"
            ))),
        }
    }
}

/// The key a host must present: the declared `nixprox.ssh.hostKey` (the flake is reviewed,
/// and an agenix or sops-nix user rotates the key there), else the one its metadata block pins.
pub fn pinned_host_key<'a>(host: &'a DesiredHost, recorded: Option<&'a Metadata>) -> Option<&'a str> {
    host.ssh.host_key.as_deref().or_else(|| recorded.and_then(|m| m.host_key.as_deref())).map(str::trim)
}

/// Whether the block is that of a VM adopted for its conversion and not installed yet.
fn converting(metadata: &Metadata) -> bool {
    metadata.adopted.is_some() && metadata.system.is_none()
}

/// Whether two OpenSSH public key lines are the same key (comments do not count).
fn same_key(a: &str, b: &str) -> bool {
    a.split_whitespace().take(2).eq(b.split_whitespace().take(2))
}

/// Which machine an install may hand the new host key and the disk-encryption keys to: the one
/// presenting the key pinned in the VM's block (`Some`), or, for a VM nixprox created and has
/// not installed yet, whatever answers at its address (`None`: no key was ever pinned for it;
/// see docs/security.md). Any other VM is refused: nothing identifies the machine.
fn install_trust(target: &DeployTarget<'_>, recorded: Option<&Metadata>) -> anyhow::Result<Option<String>> {
    if recorded.is_some_and(|m| m.created_uninstalled(target.vmid)) {
        return Ok(None);
    }
    // A VM adopted to be converted: the key its old system presents, pinned by the adopt step
    // (a declared `nixprox.ssh.hostKey` is the key the new system will present).
    if let Some(m) = recorded.filter(|m| converting(m))
        && let Some(key) = &m.host_key
    {
        return Ok(Some(key.trim().to_string()));
    }
    match pinned_host_key(target.host, recorded) {
        Some(key) => Ok(Some(key.to_string())),
        None => bail!(
            "refusing to install `{}` on VM {}: no SSH host key is pinned for it in its metadata block and nixprox did not create it, so nixprox cannot verify the machine at `{}` before handing it the new host key and disk-encryption keys (check the key the VM presents on its console and add it to the block as `\"host_key\":\"ssh-ed25519 …\"`, or delete the VM so nixprox creates it anew)",
            target.host.host,
            target.vmid,
            target.address
        ),
    }
}

impl SshDeployer {
    async fn verify_host_key_one(&self, target: DeployTarget<'_>, host_key: &str) -> anyhow::Result<()> {
        let host = &target.host.host;
        let vmid = target.vmid;
        let refused = |reason: String| {
            anyhow!(
                "refusing to convert `{host}` (VM {vmid}): {reason}; nixprox did not log in, ran no installer and changed nothing"
            )
        };
        let policy = HostKeyPolicy::pinned(host_key).map_err(|err| refused(err.to_string()))?;
        let ssh = SshTarget {
            host: host.clone(),
            address: target.address.to_string(),
            port: target.host.ssh.port,
            user: self.ssh_user(target),
        };
        let options = ConnectOptions { bound: self.connect_timeout, ..ConnectOptions::default() };
        match verify_host_key(&ssh, &policy, &options).await {
            Ok(()) => Ok(()),
            Err(err @ SshError::HostKeyMismatch { .. }) => Err(refused(err.to_string())),
            Err(err) => Err(anyhow!(err).context(format!(
                "failed to check the SSH host key of `{host}` (VM {vmid}) before converting it; nothing was changed"
            ))),
        }
    }
}

impl NixosDeployer for SshDeployer {
    fn verify_host_key<'a>(
        &'a self,
        target: DeployTarget<'a>,
        host_key: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.verify_host_key_one(target, host_key))
    }

    fn install<'a>(&'a self, target: DeployTarget<'a>) -> BoxFuture<'a, anyhow::Result<Deployed>> {
        Box::pin(self.install_one(target))
    }

    fn switch<'a>(&'a self, target: DeployTarget<'a>) -> BoxFuture<'a, anyhow::Result<Deployed>> {
        Box::pin(self.switch_one(target))
    }

    fn read_system<'a>(
        &'a self,
        target: DeployTarget<'a>,
        host_key: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<String>> {
        Box::pin(self.read_system_one(target, host_key))
    }

    fn verify_image_boot<'a>(&'a self, target: DeployTarget<'a>) -> BoxFuture<'a, anyhow::Result<Deployed>> {
        Box::pin(self.verify_image_one(target))
    }

    fn pin_fingerprints<'a>(
        &'a self,
        target: DeployTarget<'a>,
        fingerprints: &'a [String],
    ) -> BoxFuture<'a, anyhow::Result<String>> {
        Box::pin(self.pin_fingerprints_one(target, fingerprints))
    }

    fn check_rebooted<'a>(
        &'a self,
        target: DeployTarget<'a>,
        system: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.check_rebooted_one(target, system))
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::Created;
    use crate::plan::testkit;

    #[test]
    fn secrets_go_to_a_pinned_machine_or_a_vm_nixprox_created() {
        let host = testkit::host("web");
        let target = DeployTarget {
            host: &host,
            node: "pve1",
            vmid: 120,
            address: "127.0.0.10",
            plan_id: "p",
            recorded: None,
        };
        let created = Metadata {
            host: "web".into(),
            created: Some(Created { vmid: 120, plan: "p".into(), image: None }),
            ..Metadata::default()
        };
        assert_eq!(install_trust(&target, Some(&created)).expect("trusted"), None);
        let pinned = Metadata { host_key: Some("ssh-ed25519 AAAA web".into()), ..created.clone() };
        let installed = Metadata { system: Some("/nix/store/x".into()), ..pinned.clone() };
        assert_eq!(
            install_trust(&target, Some(&installed)).expect("pinned"),
            Some("ssh-ed25519 AAAA web".into())
        );
        // A copy of the notes on another VM, an adopted VM, no block at all: refused.
        let copied =
            Metadata { created: Some(Created { vmid: 99, plan: "p".into(), image: None }), ..created };
        for recorded in [Some(&copied), Some(&Metadata { host: "web".into(), ..Metadata::default() }), None] {
            let err = install_trust(&target, recorded).expect_err("refused").to_string();
            assert!(
                err.starts_with("refusing to install `web` on VM 120: no SSH host key is pinned"),
                "{err}"
            );
            assert!(err.contains("`127.0.0.10`"), "{err}");
        }
    }
}
