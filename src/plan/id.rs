//! The plan id: a stable hash of what the plan means.
//!
//! It covers every action with its before/after values and the inputs they derive from (the
//! resolved host declarations with their toplevels and disk-layout hashes, and the policies).
//! Volatile live data (power state, uptime, usage, config digests, answer order) is not in
//! the plan's data at all, so the same meaning always hashes to the same id; apply compares it
//! with the id of the plan that was reviewed.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::Policies;
use crate::flake::DesiredHost;

use super::model::{ActionKind, HostPlan};

#[derive(Serialize)]
struct Hashed<'a> {
    schema: u32,
    hosts: &'a [HostPlan],
    inputs: Vec<&'a DesiredHost>,
    policies: Policies,
}

/// 16 hex digits (64 bits) of SHA-256 over the canonical JSON of the plan's meaning.
///
/// A host's `nixos_changes` is left out: it describes the system (whose store path is already
/// hashed) against the pull request's base, which apply after the merge does not have. So is
/// its `pending_reboot`: live state that a reboot between review and merge clears (and that
/// apply does not act on), which must not turn a reviewed plan into a refused one; a `noop`
/// that mentions it ("in sync once the VM reboots") is hashed as the plain "in sync" it becomes
/// after the reboot.
pub fn plan_id(hosts: &[HostPlan], desired: &[DesiredHost], policies: Policies) -> String {
    let hosts: Vec<HostPlan> = hosts.iter().map(without_live_state).collect();
    let hosts = hosts.as_slice();
    let planned: std::collections::BTreeSet<&str> =
        hosts.iter().filter(|h| !h.orphan).map(|h| h.host.as_str()).collect();
    let mut inputs: Vec<&DesiredHost> =
        desired.iter().filter(|d| planned.contains(d.host.as_str())).collect();
    inputs.sort_by(|a, b| a.host.cmp(&b.host));
    let hashed = Hashed { schema: super::model::SCHEMA_VERSION, hosts, inputs, policies };
    // Serialising plain data cannot fail; an empty string still hashes deterministically.
    let bytes = serde_json::to_vec(&hashed).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    hex::encode(&digest[..8])
}

/// The host as the id sees it: no NixOS comparison, nothing waiting for a reboot.
fn without_live_state(host: &HostPlan) -> HostPlan {
    let mut hashed = HostPlan { nixos_changes: None, pending_reboot: None, ..host.clone() };
    if host.pending_reboot.is_some() {
        for action in hashed.actions.iter_mut().filter(|a| a.kind == ActionKind::Noop) {
            action.reason = super::engine::in_sync_reason(Vec::new(), host.kind.noun());
        }
    }
    hashed
}
