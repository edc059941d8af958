//! What the API token may do: plan needs only `VM.Audit`, so a plan token that can change VMs
//! is worth a warning (a pull request's workflow should never hold write access).

use serde_json::Value;

use super::{Client, ProxmoxError};

/// Privileges that change or create VMs, storage or access: none of them is needed to plan.
const WRITE_PRIVILEGES: &[&str] = &[
    "VM.Allocate",
    "VM.Clone",
    "VM.Config.CDROM",
    "VM.Config.CPU",
    "VM.Config.Cloudinit",
    "VM.Config.Disk",
    "VM.Config.HWType",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.Migrate",
    "VM.PowerMgmt",
    "Datastore.Allocate",
    "Datastore.AllocateSpace",
    "Permissions.Modify",
    "Sys.Modify",
];

/// `(path, privilege)` pairs the token holds that could change the cluster, sorted.
pub fn write_privileges(permissions: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    if let Some(paths) = permissions.as_object() {
        for (path, privileges) in paths {
            for privilege in WRITE_PRIVILEGES {
                let granted = privileges.get(*privilege).is_some_and(|v| v.as_u64() == Some(1) || v == true);
                if granted {
                    found.push((path.clone(), (*privilege).to_string()));
                }
            }
        }
    }
    found.sort();
    found
}

/// `GET /access/permissions` for the token itself, reduced to its write privileges.
pub async fn token_write_privileges(client: &Client) -> Result<Vec<(String, String)>, ProxmoxError> {
    let permissions = client.get("/access/permissions", &[]).await?;
    Ok(write_privileges(&permissions))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn finds_write_privileges_only() {
        let answer = json!({
            "/": {"Sys.Audit": 1, "VM.Audit": 1},
            "/vms": {"VM.Audit": 1, "VM.PowerMgmt": 1, "VM.Allocate": 1},
            "/storage": {"Datastore.Audit": 1}
        });
        assert_eq!(
            write_privileges(&answer),
            [
                ("/vms".to_string(), "VM.Allocate".to_string()),
                ("/vms".to_string(), "VM.PowerMgmt".to_string())
            ]
        );
        assert!(write_privileges(&json!({"/": {"VM.Audit": 1}})).is_empty());
    }
}
