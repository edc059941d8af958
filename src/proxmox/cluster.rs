//! The cluster's own state: whether it has quorum, from `GET /cluster/status` (pve-manager
//! `PVE/API2/Cluster.pm`; the `cluster` entry's `quorate` is pve-cluster's view of corosync).
//! Without quorum `/etc/pve` is read-only: every config write fails with PVE's "cluster not
//! ready - no quorum?" (pve-cluster `PVE/Cluster.pm`, `check_cfs_quorum`), and a destroy's task
//! can free a VM's local disks before it fails to remove the VM's config (qemu-server
//! `destroy_vm`, then `AbstractConfig::destroy_config`). Apply asks before it writes anything.

use serde_json::Value;

use super::client::Client;
use super::error::ProxmoxError;

/// What `/cluster/status` says about quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quorum {
    Quorate,
    /// The cluster (named) has lost quorum: nothing can be written.
    Lost {
        cluster: String,
    },
    /// A standalone node (no `cluster` entry), or a token that may not read the status
    /// (`Sys.Audit` on `/`): writes will tell.
    Unknown,
}

/// Reads the cluster's quorum. A 403 is [`Quorum::Unknown`], not an error: the apply role
/// does not need `Sys.Audit`.
pub async fn quorum(client: &Client) -> Result<Quorum, ProxmoxError> {
    match client.get("/cluster/status", &[]).await {
        Ok(data) => Ok(parse_quorum(&data)),
        Err(err) if err.status() == Some(403) => Ok(Quorum::Unknown),
        Err(err) => Err(err),
    }
}

/// The quorum from a `/cluster/status` answer.
pub fn parse_quorum(data: &Value) -> Quorum {
    let entries = data.as_array().map(Vec::as_slice).unwrap_or_default();
    let Some(cluster) = entries.iter().find(|entry| entry["type"] == "cluster") else {
        return Quorum::Unknown;
    };
    let quorate = match &cluster["quorate"] {
        Value::Number(n) => n.as_u64() != Some(0),
        Value::String(text) => text != "0",
        Value::Bool(quorate) => *quorate,
        _ => true,
    };
    if quorate {
        Quorum::Quorate
    } else {
        Quorum::Lost { cluster: cluster["name"].as_str().unwrap_or("the cluster").to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quorum_from_the_cluster_entry() {
        let status = |quorate: Value| {
            json!([
                {"type": "cluster", "id": "cluster", "name": "lab", "nodes": 2, "quorate": quorate, "version": 3},
                {"type": "node", "id": "node/pve1", "name": "pve1", "online": 1, "local": 1, "nodeid": 1}
            ])
        };
        assert_eq!(parse_quorum(&status(json!(1))), Quorum::Quorate);
        assert_eq!(parse_quorum(&status(json!(0))), Quorum::Lost { cluster: "lab".into() });
        // A standalone node lists itself only.
        let standalone = json!([{"type": "node", "id": "node/pve1", "name": "pve1", "online": 1}]);
        assert_eq!(parse_quorum(&standalone), Quorum::Unknown);
    }
}
