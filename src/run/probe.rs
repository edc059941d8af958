//! `plan --probe`: read `/run/current-system` of every installed host over SSH, verified
//! against its pinned key, so the plan can show what was changed outside nixprox. Unreachable
//! hosts are findings, not errors.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

use crate::config::Settings;
use crate::flake::DesiredHost;
use crate::install::{SshDeployer, pinned_host_key};
use crate::plan::Probe;
use crate::proxmox::qemu::agent_address;
use crate::proxmox::{Client, LiveVm, ProxmoxError};
use crate::ssh::{HostKeyPolicy, SshError, SshTarget, probe_systems};

/// How long one host may take to answer a probe (connect, authenticate, read).
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// One installed host to ask: where, as whom, and which key it must present.
struct Candidate {
    host: String,
    target: Result<(SshTarget, HostKeyPolicy), Unaskable>,
}

/// Why an installed host cannot be asked at all; reported as the host's finding.
#[derive(Debug, thiserror::Error)]
enum Unaskable {
    #[error("the QEMU guest agent does not answer, so its address is unknown")]
    NoAddress,
    #[error("could not ask the guest agent for its address: {0}")]
    Agent(#[source] ProxmoxError),
    #[error(transparent)]
    HostKey(#[from] SshError),
}

/// Probes every desired host that nixprox installed or adopted (its VM's metadata records a
/// system) and whose host key is pinned (declared, or in the block). Other hosts are not asked.
pub async fn probe(
    client: &Client,
    settings: &Settings,
    desired: &[DesiredHost],
    live: &[LiveVm],
) -> anyhow::Result<BTreeMap<String, Probe>> {
    let key = SshDeployer::client_key(settings, &super::publish::env).context(
        "--probe needs an SSH key: set `ssh.key` or `ssh.key_env` in nixprox.yaml, or NIXPROX_SSH_KEY_FILE or NIXPROX_SSH_KEY",
    )?;
    let key_file = key.materialize()?;
    let key = key_file.load()?;
    let mut candidates = Vec::new();
    for host in desired {
        let Some((vm, metadata)) = live.iter().find_map(|vm| {
            let metadata = vm.config.as_ref()?.metadata.as_ref()?;
            (metadata.host == host.host).then_some((vm, metadata))
        }) else {
            continue;
        };
        let (Some(_), Some(host_key)) = (&metadata.system, pinned_host_key(host, Some(metadata))) else {
            continue;
        };
        candidates.push(Candidate {
            host: host.host.clone(),
            target: target(client, settings, host, vm, host_key).await,
        });
    }
    let mut probes = BTreeMap::new();
    let mut reachable = Vec::new();
    for candidate in candidates {
        match candidate.target {
            Ok(target) => reachable.push(target),
            Err(reason) => {
                probes.insert(candidate.host, Probe::Unreachable { reason: reason.to_string() });
            }
        }
    }
    let concurrency = settings.concurrency.api.max(1);
    for result in probe_systems(reachable, &key, PROBE_TIMEOUT, concurrency).await {
        let probe = match result.system {
            Ok(system) => Probe::Running { system },
            Err(err) => Probe::Unreachable { reason: err.to_string() },
        };
        probes.insert(result.host, probe);
    }
    let unreachable = probes.values().filter(|p| matches!(p, Probe::Unreachable { .. })).count();
    tracing::info!(probed = probes.len(), unreachable, "probed the installed hosts over SSH");
    Ok(probes)
}

async fn target(
    client: &Client,
    settings: &Settings,
    host: &DesiredHost,
    vm: &LiveVm,
    host_key: &str,
) -> Result<(SshTarget, HostKeyPolicy), Unaskable> {
    let address = match &host.address {
        Some(address) => address.clone(),
        None => agent_address(client, &vm.node, vm.vmid)
            .await
            .map_err(Unaskable::Agent)?
            .ok_or(Unaskable::NoAddress)?,
    };
    let policy = HostKeyPolicy::pinned(host_key)?;
    let user = settings.ssh.user.clone().unwrap_or_else(|| host.ssh.user.clone());
    Ok((SshTarget { host: host.host.clone(), address, port: host.ssh.port, user }, policy))
}
