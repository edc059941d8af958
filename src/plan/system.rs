//! The system side of a host's plan: install, switch or reinstall, decided from the metadata
//! block's recorded system and disk layout against the evaluated ones, with the gates on a
//! reinstall (it wipes the disks). Pure, like the rest of the planner.

use serde_json::json;

use crate::config::Policies;
use crate::flake::DesiredHost;
use crate::flake::host::{DeployStrategy, NO_DISK_LAYOUT};
use crate::metadata::LAYOUT_NOT_MANAGED;
use crate::proxmox::LiveVm;
use crate::spec::KEXEC_MIN_MEMORY_MIB;

use super::engine::{action, blocked};
use super::model::{Action, ActionKind, Change, Drift};

/// `install` of the evaluated system on a VM without one.
pub(super) fn install_action(host: &DesiredHost, reason: &str) -> Action {
    // The executor raises the memory for nixos-anywhere's kexec image; the reviewer sees it.
    let reason = if host.spec.memory_mib < KEXEC_MIN_MEMORY_MIB {
        format!("{reason} (memory raised to {KEXEC_MIN_MEMORY_MIB} MiB for kexec, restored after)")
    } else {
        reason.to_string()
    };
    action(
        ActionKind::Install,
        reason,
        vec![Change {
            field: "system".into(),
            before: None,
            after: Some(json!(host.system.toplevel)),
            effect: None,
        }],
    )
}

/// install, switch or reinstall, from the metadata block against the evaluated system.
pub(super) fn plan_system(
    host: &DesiredHost,
    live: &LiveVm,
    policies: Policies,
    drift: Option<&Drift>,
) -> Vec<Action> {
    let metadata = live.config.as_ref().and_then(|c| c.metadata.as_ref());
    let want = &host.system;
    let system = metadata.and_then(|m| m.system.as_deref());
    let Some(system) = system else {
        return vec![first_install(host, live, policies)];
    };
    let recorded_layout = metadata.and_then(|m| m.disk_layout.as_deref());
    // A host without `disko.devices` does not manage its disks: never a reinstall for them.
    if let Some(layout) = recorded_layout
        && want.manages_disks()
        && layout != want.disk_layout_hash
    {
        let why = if layout == LAYOUT_NOT_MANAGED || layout == NO_DISK_LAYOUT {
            "the disks were not laid out by nixprox (layout not managed) and `disko.devices` is declared now; laying them out wipes them"
        } else {
            "the disk layout (disko.devices) changed; the disks must be repartitioned"
        };
        let reinstall = action(
            ActionKind::Reinstall,
            why,
            vec![
                Change {
                    field: "diskLayout".into(),
                    before: Some(json!(layout)),
                    after: Some(json!(want.disk_layout_hash)),
                    effect: None,
                },
                Change {
                    field: "system".into(),
                    before: Some(json!(system)),
                    after: Some(json!(want.toplevel)),
                    effect: None,
                },
            ],
        );
        return vec![gate_reinstall(reinstall, live, policies)];
    }
    if host.deploy.strategy == DeployStrategy::None {
        return Vec::new();
    }
    let strategy = strategy_name(host.deploy.strategy);
    let (reason, before) = match drift {
        Some(drift) if system != want.toplevel => (
            format!(
                "the configuration changed, and the running system was changed outside nixprox (deploy.strategy = {strategy})"
            ),
            drift.running.as_str(),
        ),
        Some(drift) => (
            format!(
                "the running system was changed outside nixprox; switch back to the flake's system (deploy.strategy = {strategy})"
            ),
            drift.running.as_str(),
        ),
        None if system != want.toplevel => {
            (format!("the configuration changed (deploy.strategy = {strategy})"), system)
        }
        None => return Vec::new(),
    };
    vec![action(
        ActionKind::Switch,
        reason,
        vec![Change {
            field: "system".into(),
            before: Some(json!(before)),
            after: Some(json!(want.toplevel)),
            effect: None,
        }],
    )]
}

/// NixOS on a VM that records no system. Without a gate only on a VM nixprox created itself
/// (its `created` marker names this VMID): any other VM may hold data that the install wipes.
fn first_install(host: &DesiredHost, live: &LiveVm, policies: Policies) -> Action {
    let metadata = live.config.as_ref().and_then(|c| c.metadata.as_ref());
    let why = match metadata {
        Some(m) if m.created_uninstalled(live.vmid) => {
            return install_action(host, "nixprox created this VM and has not installed NixOS on it yet");
        }
        None => "the VM is tagged `nixprox` but its notes hold no metadata block, so nixprox did not create it"
            .to_string(),
        Some(m) => match &m.created {
            Some(created) => format!(
                "the metadata block says nixprox created VM {}, but this is VM {} (a copy or a restore?)",
                created.vmid, live.vmid
            ),
            None if m.adopted.is_some() && m.host_key.is_some() => format!(
                "nixprox adopted VM {} to convert it to NixOS (pinning the SSH host key it presented) and has not installed NixOS on it yet",
                live.vmid
            ),
            None if m.applying.is_some() => "an install started by an earlier nixprox did not finish, and its block does not record that nixprox created the VM (allow the install with `policies.allow_reinstall`, or delete the VM so nixprox creates it anew)".to_string(),
            None => "no NixOS system is recorded and nixprox did not create this VM".to_string(),
        },
    };
    let converting = metadata.is_some_and(|m| m.adopted.is_some());
    let mut changes = vec![Change {
        field: "system".into(),
        before: None,
        after: Some(json!(host.system.toplevel)),
        effect: None,
    }];
    // A conversion adopted by an earlier run of the plan: the same changes as the conversion's
    // reviewed `reinstall` (plan/adopt.rs), so a re-run resumes exactly what was reviewed.
    if converting && host.system.manages_disks() {
        changes.push(Change {
            field: "diskLayout".into(),
            before: None,
            after: Some(json!(host.system.disk_layout_hash)),
            effect: None,
        });
    }
    let reinstall = action(
        ActionKind::Reinstall,
        format!(
            "{why}; installing NixOS wipes its disks (if it already runs NixOS, `nixprox forget {}` lets the next plan adopt it in place instead)",
            host.host
        ),
        changes,
    );
    if converting && !host.system.manages_disks() {
        return blocked(
            reinstall,
            "the host declares no `disko.devices`: nixos-anywhere lays out the disks with it, so converting needs one (declare the layout the new system gets)",
            None,
        );
    }
    gate_reinstall(reinstall, live, policies)
}

fn strategy_name(strategy: DeployStrategy) -> &'static str {
    match strategy {
        DeployStrategy::Switch => "switch",
        DeployStrategy::Boot => "boot",
        DeployStrategy::None => "none",
    }
}

fn gate_reinstall(reinstall: Action, live: &LiveVm, policies: Policies) -> Action {
    let protected = live.config.as_ref().is_some_and(|c| c.spec.protection);
    if protected {
        blocked(reinstall, "the VM is protected in Proxmox; turn off its protection first", None)
    } else if !policies.allow_reinstall {
        blocked(reinstall, "reinstalling wipes the VM's disks", Some("policies.allow_reinstall"))
    } else {
        reinstall
    }
}
