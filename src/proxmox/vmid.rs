//! VMIDs for new VMs: `/cluster/nextid`, and the [`VmidAllocator`] that keeps the new VMs of
//! one run from racing each other for the same id.

use std::collections::BTreeSet;

use tokio::sync::Mutex;

use super::client::Client;
use super::error::ProxmoxError;
use super::property::value_text;

/// Candidates checked with `/cluster/nextid?vmid=` before one allocation gives up (ids
/// handed out in this run are skipped without asking).
const PROBES: usize = 32;

/// `GET /cluster/nextid`: the lowest free VMID. Not a reservation: a concurrent create can
/// take it before ours does.
pub async fn next_id(client: &Client) -> Result<u32, ProxmoxError> {
    let data = client.get("/cluster/nextid", &[]).await?;
    value_text(&data).and_then(|t| t.trim().parse().ok()).ok_or_else(|| ProxmoxError::Decode {
        method: reqwest::Method::GET,
        path: "/cluster/nextid".into(),
        detail: "not a VMID".into(),
        body: data.to_string(),
    })
}

/// `GET /cluster/nextid?vmid=N`: whether `N` is free now. PVE answers `N` when it is, and a
/// parameter error `VM N already exists` when not (pve-cluster's `Cluster.pm`, `nextid`).
pub async fn is_free(client: &Client, vmid: u32) -> Result<bool, ProxmoxError> {
    let id = vmid.to_string();
    match client.get("/cluster/nextid", &[("vmid", id.as_str())]).await {
        Ok(_) => Ok(true),
        Err(err) if err.is_vmid_taken() => Ok(false),
        Err(err) => Err(err),
    }
}

/// Hands out the VMIDs of one apply run. `/cluster/nextid` answers the lowest free id without
/// reserving it, so twenty hosts created at once would all be told the same id and all but
/// one clone would fail. The allocator asks for one id at a time, skips the ids it already
/// handed out (their VMs may not exist yet) and checks the next candidate with
/// `nextid?vmid=`, so the run's own creates never collide. Another tool can still take an
/// id first; the caller then asks again (see [`VmidAllocator::next`]).
#[derive(Debug, Default)]
pub struct VmidAllocator {
    handed_out: Mutex<BTreeSet<u32>>,
}

impl VmidAllocator {
    pub fn new() -> VmidAllocator {
        VmidAllocator::default()
    }

    /// A VMID that is free now and that no one else in this run was given.
    pub async fn next(&self, client: &Client) -> Result<u32, ProxmoxError> {
        let mut handed_out = self.handed_out.lock().await;
        let mut candidate = next_id(client).await?;
        // nextid's own answer was free a moment ago; later candidates are checked.
        let mut checked = true;
        let mut probes = 0;
        loop {
            if !handed_out.contains(&candidate) {
                if checked || is_free(client, candidate).await? {
                    handed_out.insert(candidate);
                    return Ok(candidate);
                }
                probes += 1;
                if probes >= PROBES {
                    return Err(ProxmoxError::Decode {
                        method: reqwest::Method::GET,
                        path: "/cluster/nextid".into(),
                        detail: format!("no free VMID among the {PROBES} after the ones this run took"),
                        body: candidate.to_string(),
                    });
                }
            }
            candidate += 1;
            checked = false;
        }
    }
}
