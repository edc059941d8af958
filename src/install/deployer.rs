//! The bridge from the apply executor to SSH and nixos-anywhere: [`SshDeployer`] implements
//! [`NixosDeployer`] with [`install_host`](super::install_host) and
//! [`switch_host`](super::switch_host), taking what they need from the host's declaration,
//! the settings and the VM's metadata block (the pinned host key).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::future::BoxFuture;

use super::{
    DiskKeySource, InstallRequest, SwitchAction, SwitchRequest, build_toplevel, default_command,
    install_host, run_build, switch_host,
};
use crate::apply::{DeployTarget, Deployed, NixosDeployer};
use crate::config::Settings;
use crate::flake::host::{Bootstrap, DeployStrategy};
use crate::flake::{Nix, OverrideInput};
use crate::metadata::Notes;
use crate::proxmox::Client;
use crate::ssh::{ClientKey, GeneratedHostKey, generate_host_key};

/// The environment variable read for the SSH key when the settings name neither a key file
/// nor another variable.
pub const DEFAULT_KEY_ENV: &str = "NIXPROX_SSH_KEY";

/// Installs and switches hosts over SSH.
#[derive(Debug)]
pub struct SshDeployer {
    client: Client,
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

    pub fn new(client: Client, flake: String, key: ClientKey, settings: &Settings) -> SshDeployer {
        SshDeployer {
            client,
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

    fn host_key(target: &DeployTarget<'_>) -> anyhow::Result<GeneratedHostKey> {
        let host = &target.host.host;
        match &target.host.install.host_key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!(
                        "failed to read the host key `{path}` of host `{host}` (nixprox.install.hostKeyFile)"
                    )
                })?;
                Ok(GeneratedHostKey::from_private_openssh(&text)?)
            }
            None => Ok(generate_host_key(&format!("root@{host}"))?),
        }
    }

    async fn install_one(&self, target: DeployTarget<'_>) -> anyhow::Result<Deployed> {
        let host = target.host;
        // nixos-anywhere logs in to the bootstrap system: the cloud-init user of a template.
        let user = match &host.bootstrap {
            Bootstrap::Template { user, .. } => user.clone(),
            Bootstrap::Iso { .. } => self.ssh_user(target),
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
        };
        let outcome = install_host(&request).await?;
        Ok(Deployed {
            system: Some(outcome.system),
            disk_layout: Some(host.system.disk_layout_hash.clone()),
            host_key: Some(outcome.host_key),
            time: Some(now()),
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
        let host_key = self.pinned_key(&target).await?;
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
        Ok(Deployed { system: Some(outcome.system), disk_layout: None, host_key: None, time: Some(now()) })
    }

    /// Builds the host's toplevel on this runner, so `nix copy` has a closure to send (the
    /// plan only evaluated it). A different out path means the flake changed since evaluation.
    async fn build(&self, host: &crate::flake::DesiredHost) -> anyhow::Result<()> {
        let build = build_toplevel(&Nix::default(), &self.flake, &host.host, &self.override_inputs);
        tracing::info!(host = %host.host, "building {}", host.system.toplevel);
        let built = run_build(&build, self.install_timeout).await.map_err(|reason| {
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

    fn ssh_user(&self, target: DeployTarget<'_>) -> String {
        self.user_override.clone().unwrap_or_else(|| target.host.ssh.user.clone())
    }

    /// The host key recorded at install, read fresh from the VM's notes.
    async fn pinned_key(&self, target: &DeployTarget<'_>) -> anyhow::Result<String> {
        let host = &target.host.host;
        let config = crate::apply::vm::read_raw(&self.client, target.node, target.vmid)
            .await?
            .with_context(|| format!("the VM of host `{host}` ({}/{}) is gone", target.node, target.vmid))?;
        let description = config.get("description").and_then(|v| v.as_str()).unwrap_or_default();
        Notes::parse(description).metadata().and_then(|m| m.host_key.clone()).with_context(|| {
            format!(
                "host `{host}` has no pinned SSH host key in its metadata block, so nixprox cannot verify it; reinstall it through nixprox (policies.allow_reinstall) to pin one"
            )
        })
    }
}

impl NixosDeployer for SshDeployer {
    fn install<'a>(&'a self, target: DeployTarget<'a>) -> BoxFuture<'a, anyhow::Result<Deployed>> {
        Box::pin(self.install_one(target))
    }

    fn switch<'a>(&'a self, target: DeployTarget<'a>) -> BoxFuture<'a, anyhow::Result<Deployed>> {
        Box::pin(self.switch_one(target))
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
