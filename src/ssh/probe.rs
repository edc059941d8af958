//! `plan --probe`: read the system a host is really running (`/run/current-system`) so the
//! planner can see changes made outside nixprox. Unreachable hosts are results, not errors.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use russh::keys::PrivateKey;

use super::{ConnectOptions, HostKeyPolicy, Session, SshError, SshTarget};

/// The command that prints the running system's store path.
const READ_CURRENT_SYSTEM: &str = "readlink /run/current-system";

/// One host's probe.
#[derive(Debug)]
pub struct ProbeResult {
    pub host: String,
    /// The running system's store path, or why it could not be read.
    pub system: Result<String, SshError>,
}

/// Reads `/run/current-system` of one host, verified against its pinned key. `timeout`
/// bounds the whole probe (connect and command).
pub async fn probe_system(
    target: &SshTarget,
    key: &Arc<PrivateKey>,
    policy: &HostKeyPolicy,
    timeout: Duration,
) -> Result<String, SshError> {
    let options = ConnectOptions { attempt_timeout: timeout, bound: timeout, ..ConnectOptions::default() };
    read_current_system(target, key, policy, &options, timeout).await?.ok_or_else(|| SshError::Protocol {
        host: target.host.clone(),
        address: format!("{}:{}", target.address, target.port),
        reason: format!(
            "`{READ_CURRENT_SYSTEM}` found no `/run/current-system` (is this host running NixOS?)"
        ),
    })
}

/// The store path `/run/current-system` points to on a host verified against `policy`, or
/// `None` when the host answers but has no `/run/current-system` (it does not run NixOS).
/// Nothing but that one `readlink` runs on the host.
pub async fn read_current_system(
    target: &SshTarget,
    key: &Arc<PrivateKey>,
    policy: &HostKeyPolicy,
    options: &ConnectOptions,
    timeout: Duration,
) -> Result<Option<String>, SshError> {
    let session = Session::connect(target, key, policy, options).await?;
    let output = session.exec(READ_CURRENT_SYSTEM, timeout).await;
    session.close().await;
    let output = output?;
    let path = output.stdout.trim();
    match output.exit_status {
        Some(0) if path.starts_with('/') => Ok(Some(path.to_string())),
        // readlink(1) exits 1, printing nothing, for a path that is missing or no link.
        Some(1) if path.is_empty() => Ok(None),
        status => Err(SshError::Protocol {
            host: target.host.clone(),
            address: format!("{}:{}", target.address, target.port),
            reason: format!(
                "`{READ_CURRENT_SYSTEM}` exited with {status:?}: {} (is this host running NixOS?)",
                output.stderr.trim()
            ),
        }),
    }
}

/// Probes many hosts, at most `concurrency` at once, each bounded by `timeout`; results come
/// back in the order of `hosts`.
pub async fn probe_systems(
    hosts: Vec<(SshTarget, HostKeyPolicy)>,
    key: &Arc<PrivateKey>,
    timeout: Duration,
    concurrency: usize,
) -> Vec<ProbeResult> {
    futures::stream::iter(hosts)
        .map(|(target, policy)| async move {
            let system = probe_system(&target, key, &policy, timeout).await;
            ProbeResult { host: target.host, system }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await
}
