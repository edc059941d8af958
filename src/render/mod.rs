//! Renderings of a plan: text for terminals, Markdown for PR comments, JSON for machines;
//! and, for `nixprox import`, a VM's declaration as Nix.
//! All pure: the caller passes whatever context (commit, time, links) a rendering shows.

pub mod json;
pub mod markdown;
pub mod matrix;
pub mod nix;
pub mod nixos;
pub mod text;
mod values;

use crate::plan::{ActionKind, Plan};

/// The one-line summary every rendering starts with:
/// "2 to create, 1 to update, 1 to switch, 0 to destroy".
///
/// Create, update, switch and destroy are always shown so a reviewer sees the zeros that
/// matter; other kinds appear when they occur. Blocked actions, unchanged hosts and hosts
/// waiting for a reboot follow.
pub fn summary_line(plan: &Plan) -> String {
    const ALWAYS: [ActionKind; 4] =
        [ActionKind::CreateVm, ActionKind::UpdateVm, ActionKind::Switch, ActionKind::DestroyVm];
    let mut parts: Vec<String> = ActionKind::ALL
        .iter()
        .filter(|k| **k != ActionKind::Noop)
        .filter(|k| ALWAYS.contains(k) || plan.summary.count(**k) > 0)
        .map(|k| format!("{} to {}", plan.summary.count(*k), k.summary_verb()))
        .collect();
    if plan.summary.blocked > 0 {
        parts.push(format!("{} blocked", plan.summary.blocked));
    }
    let unchanged = plan.summary.count(ActionKind::Noop);
    if unchanged > 0 {
        parts.push(format!("{unchanged} unchanged"));
    }
    if plan.summary.pending_reboot > 0 {
        parts.push(format!("{} waiting for a reboot", plan.summary.pending_reboot));
    }
    parts.join(", ")
}

/// What a host's pending changes are, when no field of the VM vocabulary shows them: the
/// Proxmox keys.
fn pending_keys_line(pending: &crate::plan::PendingReboot) -> String {
    format!("pending in Proxmox: {}", pending.keys.join(", "))
}

/// `pve1/101`, or `pve1/new` for a VM Proxmox has not allocated yet.
pub fn vm_label(vm: &crate::plan::VmRef) -> String {
    match vm.vmid {
        Some(vmid) => format!("{}/{vmid}", vm.node),
        None => format!("{}/new", vm.node),
    }
}

/// [`vm_label`] with the guest kind for a container (`container pve1/201`): a VM's label stays
/// as it always was, so the kind shows only where it is not the default.
pub fn guest_label(host: &crate::plan::HostPlan) -> String {
    match host.kind {
        crate::spec::GuestKind::Vm => vm_label(&host.vm),
        kind => format!("{} {}", kind.noun(), vm_label(&host.vm)),
    }
}

#[cfg(test)]
pub(crate) mod fixture;
#[cfg(test)]
mod tests;
