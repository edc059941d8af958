//! The privilege preflight of `plan` and `drift`: one `GET /access/permissions` after the
//! cluster was read, so a token that cannot see every VM fails with the fix instead of
//! planning duplicates of the VMs it cannot see; and, in CI, a warning when the token could
//! change the cluster (a pull request's job should hold a read-only one). `apply` checks its
//! own needs in [`crate::apply::run`].

use crate::proxmox::permissions::{self, MissingPrivileges};

use super::source::Planned;

/// Fails when the token lacks a privilege planning needs; warns in CI when it could write.
/// A permissions answer that cannot be had is only logged: the API still enforces everything.
/// A merge of shards read nothing itself: there is no token to check.
pub async fn check_read(planned: &Planned, probe: bool, in_ci: bool) -> anyhow::Result<()> {
    let Some(client) = &planned.client else {
        return Ok(());
    };
    let granted = match permissions::fetch(client).await {
        Ok(granted) => granted,
        Err(err) => {
            tracing::warn!("could not check the token's privileges ({err}); planning goes on");
            return Ok(());
        }
    };
    let needs = crate::plan::privileges::needs_to_read(&planned.plan, &planned.desired, probe);
    let missing = permissions::missing(&granted, needs);
    if !missing.is_empty() {
        let token = client.token_id().to_string();
        let pve_major = if missing.iter().any(|n| n.is_agent()) {
            permissions::cluster_major(client).await
        } else {
            None
        };
        return Err(MissingPrivileges { token, role: permissions::PLAN_ROLE, missing, pve_major }.into());
    }
    let writes = granted.write_privileges();
    if in_ci && !writes.is_empty() {
        let list: Vec<String> = writes.iter().take(5).map(|(path, p)| format!("{p} on {path}")).collect();
        tracing::warn!(
            "the Proxmox token `{}` can change the cluster ({}{}); planning needs only read access (the `PVEAuditor` role on `/vms`): give pull-request workflows a read-only token (docs/guide.md#proxmox-tokens)",
            client.token_id(),
            list.join(", "),
            if writes.len() > 5 { ", …" } else { "" }
        );
    }
    Ok(())
}
