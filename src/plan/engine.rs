//! The planner: `(desired hosts, live VMs, policies) → Plan`. Pure: no I/O, no clock, no
//! environment, so the same inputs always give the same plan and the same plan id.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use crate::config::Policies;
use crate::flake::DesiredHost;
use crate::flake::host::Bootstrap;
use crate::proxmox::LiveVm;
use crate::proxmox::import::ImageStores;
use crate::spec::format_size;

use super::fields::{self, SpecDiff};
use super::id::plan_id;
use super::model::{
    Action, ActionKind, Blocked, Change, Drift, HostPlan, Plan, PoolMove, Probe, ProbeReport, SCHEMA_VERSION,
    Summary, Unreachable, VmRef,
};
use super::system::{install_action, plan_system};

/// Everything the planner looks at.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub desired: &'a [DesiredHost],
    pub live: &'a [LiveVm],
    pub policies: Policies,
    /// Restricts the plan to these hosts (and orphan VM names); `None` plans everything.
    pub only: Option<&'a BTreeSet<String>>,
    /// What `--probe` read from installed hosts, by host; `None` when not probing.
    pub probes: Option<&'a BTreeMap<String, Probe>>,
}

/// Computes the plan (image hosts as if their storages were empty and able to take images).
pub fn plan(input: PlanInput<'_>) -> Plan {
    plan_with_images(input, &ImageStores::default())
}

/// Computes the plan, with what the image storages of image hosts hold and allow
/// ([`crate::proxmox::import::read_image_stores`]).
pub fn plan_with_images(input: PlanInput<'_>, images: &ImageStores) -> Plan {
    let mut claimed = BTreeSet::new();
    let mut hosts: Vec<HostPlan> = Vec::new();
    let mut desired: Vec<&DesiredHost> = input.desired.iter().collect();
    desired.sort_by(|a, b| a.host.cmp(&b.host));
    for host in desired {
        let found = find_vm(host, input.live, &claimed);
        if let Found::Vm(vm, _) | Found::Taken(vm) = &found {
            claimed.insert(vm.vmid);
        }
        let probe = input.probes.and_then(|p| p.get(&host.host));
        hosts.push(plan_host(host, found, input.policies, probe));
    }
    let mut orphans: Vec<&LiveVm> = input
        .live
        .iter()
        .filter(|vm| vm.is_managed() && !vm.template && !claimed.contains(&vm.vmid))
        .collect();
    orphans.sort_by_key(|vm| vm.vmid);
    hosts.extend(orphans.into_iter().map(|vm| plan_orphan(vm, input.policies)));
    if let Some(only) = input.only {
        hosts.retain(|h| only.contains(&h.host));
    }
    super::image::amend(&mut hosts, input.desired, input.live, images);
    super::container::note_shared_uploads(&mut hosts, input.desired);
    let summary = summarize(&hosts);
    let id = plan_id(&hosts, input.desired, input.policies);
    let probe = input.probes.map(|probes| probe_report(probes, &hosts));
    Plan { version: SCHEMA_VERSION, plan_id: id, summary, hosts, probe, unreferenced_images: Vec::new() }
}

/// The probe section: which planned hosts were asked, which run something else, which did not
/// answer.
fn probe_report(probes: &BTreeMap<String, Probe>, hosts: &[HostPlan]) -> ProbeReport {
    let planned = |host: &String| hosts.iter().any(|h| !h.orphan && &h.host == host);
    let mut report = ProbeReport::default();
    for (host, probe) in probes.iter().filter(|(host, _)| planned(host)) {
        report.probed += 1;
        if let Probe::Unreachable { reason } = probe {
            report.unreachable.push(Unreachable { host: host.clone(), reason: reason.clone() });
        }
    }
    report.changed = hosts.iter().filter(|h| h.drift.is_some()).map(|h| h.host.clone()).collect();
    report
}

/// How a host was matched to the cluster.
enum Found<'a> {
    /// The host's VM; `true` when it is not yet managed (an adoption).
    Vm(&'a LiveVm, bool),
    /// The declared VMID belongs to a VM that is not this host's.
    Taken(&'a LiveVm),
    /// Several unmanaged VMs carry the host's name.
    Ambiguous(Vec<u32>),
    None,
}

/// Finds the host's VM: by declared VMID, then by the metadata's host name, then by VM name
/// among managed VMs, then by VM name among unmanaged ones (adoption). Templates never match.
fn find_vm<'a>(host: &DesiredHost, live: &'a [LiveVm], claimed: &BTreeSet<u32>) -> Found<'a> {
    // A host matches guests of its own kind only: a VM is never adopted as a container.
    let kind = host.kind();
    let candidates =
        || live.iter().filter(|vm| vm.kind == kind && !vm.template && !claimed.contains(&vm.vmid));
    if let Some(vmid) = host.vmid {
        return match live.iter().find(|vm| vm.vmid == vmid) {
            None => Found::None,
            Some(vm) if vm.template || vm.kind != kind => Found::Taken(vm),
            Some(vm) if vm.is_managed() => {
                let recorded = recorded_host(vm);
                if recorded.is_none_or(|name| name == host.host) {
                    Found::Vm(vm, false)
                } else {
                    Found::Taken(vm)
                }
            }
            // Untagged, its block naming this host: a create that stopped before the tag.
            Some(vm) if recorded_host(vm) == Some(host.host.as_str()) => Found::Vm(vm, false),
            Some(vm) if vm.name == host.spec.name && recorded_host(vm).is_none() => Found::Vm(vm, true),
            Some(vm) => Found::Taken(vm),
        };
    }
    // A VM whose metadata names the host is its VM even without the tag: an interrupted
    // create leaves exactly that (the notes are written with the clone, the tag just after).
    if let Some(vm) = candidates().find(|vm| recorded_host(vm) == Some(host.host.as_str())) {
        return Found::Vm(vm, false);
    }
    if let Some(vm) = candidates().find(|vm| {
        vm.is_managed() && vm.name == host.spec.name && recorded_host(vm).is_none_or(|n| n == host.host)
    }) {
        return Found::Vm(vm, false);
    }
    let unmanaged: Vec<&LiveVm> =
        candidates().filter(|vm| !vm.is_managed() && vm.name == host.spec.name).collect();
    match unmanaged.as_slice() {
        [] => Found::None,
        [vm] => Found::Vm(vm, true),
        many => Found::Ambiguous(many.iter().map(|vm| vm.vmid).collect()),
    }
}

/// Why the VM's metadata block cannot be read (with the fix), if it cannot.
fn unreadable_block(vm: &LiveVm) -> Option<&str> {
    vm.config.as_ref()?.unreadable_block.as_deref()
}

fn recorded_host(vm: &LiveVm) -> Option<&str> {
    vm.config.as_ref()?.metadata.as_ref().map(|m| m.host.as_str())
}

pub(super) fn action(kind: ActionKind, reason: impl Into<String>, changes: Vec<Change>) -> Action {
    Action { kind, reason: reason.into(), changes, blocked: None }
}

pub(super) fn blocked(mut action: Action, reason: impl Into<String>, setting: Option<&str>) -> Action {
    action.blocked = Some(Blocked { reason: reason.into(), setting: setting.map(str::to_string) });
    action
}

fn plan_host(host: &DesiredHost, found: Found<'_>, policies: Policies, probe: Option<&Probe>) -> HostPlan {
    if host.keep {
        return plan_kept(host, found);
    }
    let global = policies;
    let policies = super::gates::for_host(global, host);
    let mut vm = VmRef { node: host.node.clone(), vmid: host.vmid };
    let mut drift = None;
    let mut pending = Vec::new();
    let mut pool_move = None;
    let mut pending_reboot = None;
    let actions = match found {
        Found::None => plan_create(host),
        Found::Taken(other) => vec![blocked(
            action(ActionKind::CreateVm, "no VM exists for this host", create_changes(host)),
            format!(
                "VMID {} is already used by `{}`, which is not this host's VM; choose another `nixprox.vm.id`",
                other.vmid, other.name
            ),
            None,
        )],
        Found::Ambiguous(vmids) => {
            let ids: Vec<String> = vmids.iter().map(u32::to_string).collect();
            vec![blocked(
                action(ActionKind::Adopt, "unmanaged VMs carry this host's name", Vec::new()),
                format!(
                    "{} VMs are named `{}` (VMIDs {}); set `nixprox.vm.id` to the one to adopt",
                    vmids.len(),
                    host.spec.name,
                    ids.join(", ")
                ),
                None,
            )]
        }
        Found::Vm(live, _) if let Some(reason) = unreadable_block(live) => {
            vm = VmRef { node: live.node.clone(), vmid: Some(live.vmid) };
            vec![blocked(
                action(ActionKind::UpdateVm, "nixprox cannot read this VM's metadata block", Vec::new()),
                format!(
                    "the nixprox block in the notes of VM {} cannot be read: {reason}; nixprox leaves the VM untouched until then",
                    live.vmid
                ),
                None,
            )]
        }
        Found::Vm(live, adopting) => {
            vm = VmRef { node: live.node.clone(), vmid: Some(live.vmid) };
            drift = drift_of(live, probe);
            pending = live.config.as_ref().map(|c| c.pending.iter().cloned().collect()).unwrap_or_default();
            let actions = plan_existing(host, live, adopting, policies, drift.as_ref());
            pool_move = pool_move_of(host, live, &actions);
            pending_reboot = super::pending::pending_of(host, live, &actions);
            actions
        }
    };
    let mut actions = if actions.is_empty() {
        vec![action(ActionKind::Noop, in_sync_reason(pending, host.kind().noun()), Vec::new())]
    } else {
        actions
    };
    super::gates::note_opt_ins(&mut actions, global, host);
    HostPlan {
        host: host.host.clone(),
        vm,
        kind: host.kind(),
        orphan: false,
        drift,
        actions,
        pool_move,
        nixos_changes: None,
        pending_reboot,
    }
}

/// A host with `nixprox.vm.keep`: `release` of the VM nixprox manages for it, else `noop`.
fn plan_kept(host: &DesiredHost, found: Found<'_>) -> HostPlan {
    let (vm, managed) = match found {
        Found::Vm(vm, adopting) => (Some(vm), !adopting),
        _ => (None, false),
    };
    let released = super::adopt::plan_keep(vm.filter(|_| managed), vm.and_then(unreadable_block));
    let actions = if released.is_empty() {
        vec![action(ActionKind::Noop, super::adopt::kept_reason(vm), Vec::new())]
    } else {
        released
    };
    let vm = match vm {
        Some(vm) => VmRef { node: vm.node.clone(), vmid: Some(vm.vmid) },
        None => VmRef { node: host.node.clone(), vmid: host.vmid },
    };
    HostPlan {
        host: host.host.clone(),
        vm,
        kind: host.kind(),
        orphan: false,
        drift: None,
        actions,
        pool_move: None,
        nixos_changes: None,
        pending_reboot: None,
    }
}

/// The pool move of a runnable `update_vm` (whose `pool` change shows it), for the executor.
fn pool_move_of(host: &DesiredHost, live: &LiveVm, actions: &[Action]) -> Option<PoolMove> {
    let current = &live.config.as_ref()?.spec.pool;
    let updating = actions.iter().any(|a| a.kind == ActionKind::UpdateVm && a.blocked.is_none());
    (updating && *current != host.spec.pool)
        .then(|| PoolMove { from: current.clone(), to: host.spec.pool.clone() })
}

/// "in sync", or that the VM is in sync once it reboots into changes already made.
pub(super) fn in_sync_reason(pending: Vec<String>, noun: &str) -> String {
    if pending.is_empty() {
        "in sync".to_string()
    } else {
        format!("in sync once the {noun} reboots (pending: {})", pending.join(", "))
    }
}

/// A running system other than the recorded one.
fn drift_of(live: &LiveVm, probe: Option<&Probe>) -> Option<Drift> {
    let recorded = live.config.as_ref()?.metadata.as_ref()?.system.as_ref()?;
    match probe? {
        Probe::Running { system } if system != recorded => {
            Some(Drift { recorded: recorded.clone(), running: system.clone() })
        }
        _ => None,
    }
}

fn create_changes(host: &DesiredHost) -> Vec<Change> {
    let mut changes =
        vec![Change { field: "node".into(), before: None, after: Some(json!(host.node)), effect: None }];
    if let Some(vmid) = host.vmid {
        changes.push(Change { field: "id".into(), before: None, after: Some(json!(vmid)), effect: None });
    }
    changes.extend(fields::all_fields(&host.spec).into_iter().map(|(field, value)| Change {
        field,
        before: None,
        after: Some(value),
        effect: None,
    }));
    changes
}

/// Why a VM cannot be created (or recreated) for the host: it declares no way to boot one.
const NO_BOOTSTRAP: &str = "neither `nixprox.bootstrap.template` nor `nixprox.bootstrap.iso` is set and nixprox.yaml has no `defaults.template`: set one of them (only a VM nixprox creates needs one)";

fn plan_create(host: &DesiredHost) -> Vec<Action> {
    if host.container.is_some() {
        return super::container::plan_create(host);
    }
    let source = match &host.bootstrap {
        Bootstrap::Template { template, .. } => match template {
            crate::flake::host::TemplateRef::Id(id) => format!("clone of template {id}"),
            crate::flake::host::TemplateRef::Name(name) => format!("clone of template `{name}`"),
        },
        Bootstrap::Iso { iso } => format!("booting `{iso}`"),
        Bootstrap::Image(_) => "VM from its image".to_string(),
        Bootstrap::Undeclared => {
            let create = action(ActionKind::CreateVm, "no VM exists for this host", create_changes(host));
            return vec![blocked(create, NO_BOOTSTRAP, None)];
        }
    };
    vec![
        action(
            ActionKind::CreateVm,
            format!("no VM exists for this host; new VM as a {source}"),
            create_changes(host),
        ),
        install_action(host, "new VM: install NixOS with nixos-anywhere"),
    ]
}

fn plan_existing(
    host: &DesiredHost,
    live: &LiveVm,
    adopting: bool,
    policies: Policies,
    drift: Option<&Drift>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let Some(config) = &live.config else {
        // The read path fetches the config of every VM that can match a host; a missing one is
        // a bug upstream, surfaced as a blocked adoption rather than a guess.
        return vec![blocked(
            action(ActionKind::UpdateVm, "the VM's config was not read", Vec::new()),
            "nixprox could not read this VM's config; re-run the plan",
            None,
        )];
    };
    // A VM to adopt whose guest agent reports another OS than NixOS is converted: adopted with
    // the key it presents now, then reinstalled (gated), never switched.
    let mut conversion = None;
    if adopting
        && host.container.is_none()
        && let Some(os) = super::adopt::other_os(config)
    {
        let (adopt, reinstall) = super::adopt::convert_actions(host, live, config, os, policies);
        if adopt.blocked.is_some() || reinstall.blocked.is_some() {
            // Nothing changes on a VM whose conversion is not allowed: no tag, no update.
            return vec![adopt, reinstall];
        }
        actions.push(adopt);
        conversion = Some(reinstall);
    } else if adopting {
        let adopt = match host.container {
            Some(_) => super::container::adopt_action(host, live, config),
            None => super::adopt::adopt_action(host, live, config),
        };
        if adopt.blocked.is_some() {
            // Nothing may change on a VM nixprox cannot adopt: no tag, no update.
            return vec![adopt];
        }
        actions.push(adopt);
    }
    let (diff, root_only) = match super::container::diff(host, config) {
        Some(container) => (container.diff, container.root_only),
        None => (fields::diff(&host.spec, &config.spec), Vec::new()),
    };
    let SpecDiff { mut updates, grows, replacements, detaches } = diff;
    if !adopting && !live.is_managed() {
        updates.insert(0, managed_change());
    }
    let placement = plan_placement(host, live, config, replacements, policies);
    let replacing =
        placement.as_ref().is_some_and(|a| a.kind == ActionKind::ReplaceVm && a.blocked.is_none());
    actions.extend(placement);
    if replacing {
        match &host.container {
            // Recreated from its template: what follows the create (an upload precedes it).
            Some(_) => {
                let created = super::container::plan_create(host);
                let uploads = created.iter().filter(|a| a.kind == ActionKind::UploadImage).cloned();
                let after = created.iter().skip_while(|a| a.kind != ActionKind::CreateVm).skip(1).cloned();
                let mut all: Vec<Action> = uploads.collect();
                all.append(&mut actions);
                all.extend(after);
                actions = all;
            }
            None => actions.push(install_action(host, "the replaced VM needs NixOS installed")),
        }
        return actions;
    }
    let detach = super::detach::plan_detach(live.vmid, config, detaches, &mut updates, policies);
    actions.extend(update_action(updates, live.kind.noun()));
    if let Some(container) = &host.container {
        actions.extend(super::container::root_only_action(live.vmid, root_only, &container.spec));
    }
    actions.extend(detach);
    actions.extend(resize_action(grows, if host.container.is_some() { "volume" } else { "disk" }));
    if let Some(reinstall) = conversion {
        actions.push(reinstall);
    } else if adopting {
        actions.extend(super::adopt::adopted_switch(host));
    } else if host.container.is_some() && config.metadata.as_ref().and_then(|m| m.system.as_ref()).is_none() {
        actions.extend(super::container::unswitched(host));
    } else {
        actions.extend(plan_system(host, live, policies, drift));
    }
    actions
}

/// The tag a managed VM gets when nixprox takes it over (a VM matched by its block alone).
fn managed_change() -> Change {
    Change {
        field: "managed".into(),
        before: Some(json!(false)),
        after: Some(json!(true)),
        effect: Some(super::model::Effect::Hotplug),
    }
}

/// Where the VM lives: `replace_vm` for what cannot change in place (on the new node, if it
/// moves too), else `migrate_vm` when only the node differs.
fn plan_placement(
    host: &DesiredHost,
    live: &LiveVm,
    config: &crate::proxmox::LiveConfig,
    mut replacements: Vec<(Change, String)>,
    policies: Policies,
) -> Option<Action> {
    let node_change = (live.node != host.node).then(|| Change {
        field: "node".into(),
        before: Some(json!(live.node)),
        after: Some(json!(host.node)),
        effect: None,
    });
    if !replacements.is_empty() {
        if let Some(lost) = super::hardware::ha_lost_on_replace(live) {
            replacements.push(lost);
        }
        if let Some(change) = node_change {
            // Recreated anyway: on the new node.
            let why = format!("the VM moves from node {} to {}", live.node, host.node);
            replacements.insert(0, (change, why));
        }
        return Some(plan_replace(host, config, replacements, policies));
    }
    if let (Some(change), Some(state)) = (&node_change, &live.ha_state) {
        return Some(super::hardware::ha_placement(live, host, state, change.clone()));
    }
    if let (Some(change), Some(why)) = (&node_change, super::hardware::local_devices(live)) {
        let reason = format!("the VM moves from node {} to {}", live.node, host.node);
        return Some(blocked(action(ActionKind::MigrateVm, reason, vec![change.clone()]), why, None));
    }
    node_change.map(|change| {
        let reason = match live.kind {
            crate::spec::GuestKind::Vm => format!(
                "the VM moves from node {} to {}: Proxmox migrates it (live while it runs, its local disks with it), keeping its VMID, disks and system",
                live.node, host.node
            ),
            // pve-container `API2/LXC.pm` `migrate_vm`: no live migration, restart mode.
            crate::spec::GuestKind::Container => format!(
                "the container moves from node {} to {}: Proxmox migrates it offline, and restarts it if it runs (shut down, moved, started again: containers cannot migrate live), keeping its VMID, volumes and system",
                live.node, host.node
            ),
        };
        action(ActionKind::MigrateVm, reason, vec![change])
    })
}

/// `update_vm` for the settings that differ, saying when some wait for a reboot.
fn update_action(updates: Vec<Change>, noun: &str) -> Option<Action> {
    if updates.is_empty() {
        return None;
    }
    let reboot = updates.iter().any(|c| c.effect == Some(super::model::Effect::NeedsReboot));
    let reason = if reboot {
        format!("the {noun}'s settings differ from the flake; some take effect after a reboot")
    } else {
        format!("the {noun}'s settings differ from the flake")
    };
    Some(action(ActionKind::UpdateVm, reason, updates))
}

/// `resize_disk` for the disks that grow.
fn resize_action(grows: Vec<Change>, what: &str) -> Option<Action> {
    let n = grows.len();
    (n > 0).then(|| {
        action(
            ActionKind::ResizeDisk,
            if n == 1 { format!("a {what} grows") } else { format!("{n} {what}s grow") },
            grows,
        )
    })
}

/// `replace_vm` for what Proxmox cannot change in place, gated: never on a protected VM, never
/// without a way to create the VM again, and only with `policies.allow_replace`.
fn plan_replace(
    host: &DesiredHost,
    config: &crate::proxmox::LiveConfig,
    replacements: Vec<(Change, String)>,
    policies: Policies,
) -> Action {
    let reason = replacements.iter().map(|(_, r)| r.as_str()).collect::<Vec<_>>().join("; ");
    let changes = replacements.into_iter().map(|(c, _)| c).collect();
    let noun = host.kind().noun();
    let replace =
        action(ActionKind::ReplaceVm, format!("{reason}: destroy and recreate the {noun}"), changes);
    if config.spec.protection {
        let option = if host.container.is_some() { "container" } else { "vm" };
        blocked(
            replace,
            format!(
                "the {noun} is protected in Proxmox; turn off its protection (and `nixprox.{option}.protection`) first"
            ),
            None,
        )
    } else if let Some(container) = &host.container {
        if super::container::template_of(container).is_none() {
            blocked(replace, super::container::NO_TEMPLATE, None)
        } else if !policies.allow_replace {
            blocked(
                replace,
                "replacing destroys the container and its volumes",
                Some("policies.allow_replace"),
            )
        } else {
            replace
        }
    } else if host.bootstrap == Bootstrap::Undeclared {
        blocked(replace, NO_BOOTSTRAP, None)
    } else if !policies.allow_replace {
        blocked(replace, "replacing destroys the VM and its disks", Some("policies.allow_replace"))
    } else {
        replace
    }
}

fn plan_orphan(vm: &LiveVm, policies: Policies) -> HostPlan {
    let config = vm.config.as_ref();
    let host = config.and_then(|c| c.metadata.as_ref()).map(|m| m.host.as_str());
    let reason = match host {
        Some(host) if host != vm.name => {
            format!("tagged `nixprox` but no host declares it (it was host `{host}`)")
        }
        _ => "tagged `nixprox` but no host in the flake declares it".to_string(),
    };
    let mut changes =
        vec![Change { field: "vm".into(), before: Some(json!(vm.name)), after: None, effect: None }];
    if let Some(ct) = config.and_then(|c| c.container.as_ref()) {
        changes.push(Change {
            field: "rootfs".into(),
            before: Some(super::container::volume_value(&ct.rootfs)),
            after: None,
            effect: None,
        });
    }
    if let Some(config) = config {
        changes.extend(config.spec.disks.iter().map(|(slot, disk)| Change {
            field: format!("disks.{slot}"),
            before: Some(json!(format!("{},size={}", disk.storage, format_size(disk.size_bytes)))),
            after: None,
            effect: None,
        }));
    }
    let destroy = action(ActionKind::DestroyVm, reason, changes);
    let protected = config.is_some_and(|c| c.spec.protection);
    let destroy = if let Some(unreadable) = unreadable_block(vm) {
        blocked(
            destroy,
            format!(
                "the nixprox block in the notes of VM {} cannot be read: {unreadable}; nixprox never destroys a VM it cannot identify, whatever `policies.prune_orphans` says",
                vm.vmid
            ),
            None,
        )
    } else if protected {
        blocked(destroy, "the VM is protected in Proxmox; nixprox never destroys a protected VM", None)
    } else if !policies.prune_orphans {
        blocked(
            destroy,
            "orphans are only reported unless pruning is enabled",
            Some("policies.prune_orphans"),
        )
    } else {
        destroy
    };
    HostPlan {
        host: vm.name.clone(),
        vm: VmRef { node: vm.node.clone(), vmid: Some(vm.vmid) },
        kind: vm.kind,
        orphan: true,
        drift: None,
        actions: vec![destroy],
        pool_move: None,
        nixos_changes: None,
        pending_reboot: None,
    }
}

pub(super) fn summarize(hosts: &[HostPlan]) -> Summary {
    let mut counts: BTreeMap<&'static str, usize> = ActionKind::ALL.iter().map(|k| (k.as_str(), 0)).collect();
    let mut summary = Summary::default();
    for host in hosts {
        if host.orphan {
            summary.orphans += 1;
        }
        if host.pending_reboot.is_some() {
            summary.pending_reboot += 1;
        }
        for action in &host.actions {
            if action.blocked.is_some() {
                summary.blocked += 1;
            } else if let Some(count) = counts.get_mut(action.kind.as_str()) {
                *count += 1;
            }
        }
    }
    summary.counts = counts;
    summary
}
