//! Changes a running VM has pending (made without a reboot): kept in view as a state of the
//! host, never planned again as an action.
//!
//! The planner compares the flake with the config as the VM's next start takes it (pending
//! values applied, [`crate::proxmox::read`]), so a change apply already made is not planned on
//! every run. But the VM still runs the old values until it restarts; without this state a
//! memory change applied with `deploy.allowReboot` off would vanish from every plan and drift
//! run while the VM keeps its old memory.

use serde_json::Value;

use crate::flake::DesiredHost;
use crate::proxmox::LiveVm;

use super::fields::all_fields;
use super::model::{Action, ActionKind, Change, PendingReboot};

/// What `live` has pending, with how to make it take effect; `None` when nothing is.
pub fn pending_of(host: &DesiredHost, live: &LiveVm, actions: &[Action]) -> Option<PendingReboot> {
    let config = live.config.as_ref()?;
    if config.pending.is_empty() {
        return None;
    }
    let changes = match &config.running {
        Some(running) => changed_fields(&all_fields(running), &all_fields(&config.spec)),
        None => Vec::new(),
    };
    let rewrites = actions
        .iter()
        .any(|a| a.blocked.is_none() && matches!(a.kind, ActionKind::UpdateVm | ActionKind::DetachDisk));
    let how = how_to_apply(host, live, rewrites);
    Some(PendingReboot { keys: config.pending.iter().cloned().collect(), changes, how })
}

/// The fields whose value differs between what runs and what is pending, in display order.
fn changed_fields(running: &[(String, Value)], pending: &[(String, Value)]) -> Vec<Change> {
    let value = |fields: &[(String, Value)], field: &str| {
        fields.iter().find(|(name, _)| name == field).map(|(_, v)| v.clone())
    };
    let mut names: Vec<&String> = pending.iter().map(|(name, _)| name).collect();
    names.extend(running.iter().map(|(name, _)| name).filter(|n| !pending.iter().any(|(p, _)| p == *n)));
    names
        .into_iter()
        .filter_map(|field| {
            let (before, after) = (value(running, field), value(pending, field));
            (before != after).then(|| Change { field: field.clone(), before, after, effect: None })
        })
        .collect()
}

/// One sentence: how the pending values get into the running VM. A restart through Proxmox
/// applies them (qemu-server `API2/Qemu.pm` `vm_reboot`: shutdown, then start, which applies
/// pending changes); apply reboots only with `deploy.allowReboot`, and only when it changes the
/// VM.
fn how_to_apply(host: &DesiredHost, live: &LiveVm, rewrites: bool) -> String {
    let vmid = live.vmid;
    if rewrites && host.deploy.allow_reboot {
        return format!(
            "the apply of this plan reboots VM {vmid} after changing it (`nixprox.deploy.allowReboot`), which makes them take effect"
        );
    }
    let reboot = format!(
        "the VM still runs the old values: reboot VM {vmid} to make them take effect (Reboot in the Proxmox UI, or `qm reboot {vmid}` on node `{}`)",
        live.node
    );
    if host.deploy.allow_reboot {
        format!("{reboot}; nixprox reboots it itself only when an apply changes the VM")
    } else {
        format!(
            "{reboot}, or set `nixprox.deploy.allowReboot = true` for host `{}` so that apply reboots it whenever it changes the VM",
            host.host
        )
    }
}
