//! The container kind in the one planner (docs/architecture.md, "Two kinds of guest"). The
//! engine matches, gates, orders and hashes containers exactly as VMs; this module holds what
//! differs: which changes a container takes immediately, on the running container, or at its
//! next start (pve-container `src/PVE/LXC/Config.pm`: `$LXC_FASTPLUG_OPTIONS` and
//! `vmconfig_hotplug_pending`), what cannot change in place (`unprivileged` is read-only, a
//! volume does not move storage or shrink: a gated `replace_vm`), what only `root@pam` may
//! change (features other than nesting: `src/PVE/LXC.pm`, `check_ct_modify_config_perm`), how a
//! container is created (from an `ostemplate`, no installer: a switch follows) and adopted (its
//! key declared: no guest agent and no file API exist for containers). `ssh-public-keys` is
//! create-only in Proxmox: it is never compared, so it is never an update.

use serde_json::{Value, json};

use crate::flake::DesiredHost;
use crate::flake::host::{DeployStrategy, DesiredContainer};
use crate::proxmox::{LiveConfig, LiveVm};
use crate::spec::container::{ContainerSpec, CtNetSpec, MountSpec, VolumeSpec};
use crate::spec::{SizeCheck, check_size, format_size};

use super::engine::{action, blocked};
use super::fields::{self, SpecDiff};
use super::model::{Action, ActionKind, Blocked, Change, Effect};

/// Why a container cannot be created (or recreated): no template is declared.
pub(super) const NO_TEMPLATE: &str = "`nixprox.container.template` is not set: name the NixOS container template (`<storage>:vztmpl/<file>`, e.g. nixpkgs' `proxmox-lxc` image with `/etc/ssh`) new containers are made from (only a container nixprox creates needs one)";

/// The container part of a host; the engine only calls this module for container hosts.
fn container_of(host: &DesiredHost) -> Option<&DesiredContainer> {
    host.container.as_ref()
}

/// The `ostemplate` a new container is made from: the user's template, or the host's own
/// (`<storage>:vztmpl/nixprox-<hash>.tar.xz`); `None` when neither is declared.
pub(super) fn template_of(ct: &DesiredContainer) -> Option<String> {
    match (&ct.template, &ct.tarball) {
        (Some(template), _) => Some(template.clone()),
        (None, Some(build)) => crate::image::template_file_name(&build.package.out_path)
            .ok()
            .map(|file| format!("{}:vztmpl/{file}", build.storage)),
        (None, None) => None,
    }
}

/// `create_vm` of a new container from its template, then `switch` to the host's system (or,
/// from the host's own template, the check that it runs it), preceded by `upload_image` of a
/// template built from the flake. Proxmox prints the host keys' fingerprints that pin the
/// first connection.
pub(super) fn plan_create(host: &DesiredHost) -> Vec<Action> {
    let Some(ct) = container_of(host) else { return Vec::new() };
    let changes = create_changes(host, ct);
    let Some(template) = template_of(ct) else {
        let create = action(ActionKind::CreateVm, "no container exists for this host", changes);
        return vec![blocked(create, NO_TEMPLATE, None)];
    };
    let mut actions = Vec::new();
    if let Some(build) = &ct.tarball {
        actions.push(action(
            ActionKind::UploadImage,
            format!(
                "the host's template (`{}`) is built from the flake and uploaded to storage `{}` as `vztmpl`, unless it is there already",
                build.package.out_path, build.storage
            ),
            vec![Change { field: "template".into(), before: None, after: Some(json!(template)), effect: None }],
        ));
        actions.push(action(
            ActionKind::CreateVm,
            format!("no container exists for this host; new container from its own template `{template}`"),
            changes,
        ));
        actions.extend(first_switch(
            host,
            "new container from the host's own template: apply pins its host key from the create task's log, checks over SSH that it runs the host's system, and switches only if not",
        ));
        return actions;
    }
    actions.push(action(
        ActionKind::CreateVm,
        format!("no container exists for this host; new container from the template `{template}`"),
        changes,
    ));
    actions.extend(first_switch(host, "new container: switch it from its template to the host's system"));
    actions
}

/// Says in every `upload_image` of a container template which hosts share it (one file, one
/// upload): hosts whose own templates are the same package.
pub(super) fn note_shared_uploads(hosts: &mut [super::model::HostPlan], desired: &[DesiredHost]) {
    let template = |name: &str| {
        desired
            .iter()
            .find(|d| d.host == name)
            .and_then(|d| d.container.as_ref())
            .filter(|c| c.tarball.is_some())
            .and_then(template_of)
    };
    let mut sharing: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    for plan in hosts.iter().filter(|h| h.actions.iter().any(|a| a.kind == ActionKind::UploadImage)) {
        if let Some(file) = template(&plan.host) {
            sharing.entry(file).or_default().push(plan.host.clone());
        }
    }
    for plan in hosts.iter_mut() {
        let Some(file) = template(&plan.host) else { continue };
        let Some(others) = sharing.get(&file).filter(|hosts| hosts.len() > 1) else { continue };
        let names: Vec<String> =
            others.iter().filter(|h| **h != plan.host).map(|h| format!("`{h}`")).collect();
        for upload in plan.actions.iter_mut().filter(|a| a.kind == ActionKind::UploadImage) {
            upload.reason.push_str(&format!("; shared with {}: uploaded once", names.join(", ")));
        }
    }
}

/// The `switch` of a container that records no system (made from a template): over SSH, its
/// key pinned from the create task's log.
fn first_switch(host: &DesiredHost, reason: &str) -> Option<Action> {
    (host.deploy.strategy != DeployStrategy::None).then(|| {
        action(
            ActionKind::Switch,
            reason,
            vec![Change {
                field: "system".into(),
                before: None,
                after: Some(json!(host.system.toplevel)),
                effect: None,
            }],
        )
    })
}

/// Every declared field of a new container, as the `after` side of its `create_vm`.
fn create_changes(host: &DesiredHost, ct: &DesiredContainer) -> Vec<Change> {
    let spec = &ct.spec;
    let mut fields: Vec<(String, Value)> = vec![("node".into(), json!(host.node))];
    if let Some(vmid) = host.vmid {
        fields.push(("id".into(), json!(vmid)));
    }
    fields.push(("hostname".into(), json!(host.spec.name)));
    if let Some(template) = template_of(ct) {
        fields.push(("template".into(), json!(template)));
    }
    if let Some(cores) = spec.cores {
        fields.push(("cores".into(), json!(cores)));
    }
    fields.push(("memory".into(), json!(spec.memory_mib)));
    fields.push(("swap".into(), json!(spec.swap_mib)));
    fields.push(("rootfs".into(), volume_value(&spec.rootfs)));
    for (slot, mount) in &spec.mounts {
        fields.push((format!("mountPoints.{slot}"), mount_value(mount)));
    }
    for (slot, net) in &spec.networks {
        fields.push((format!("networks.{slot}"), net_value(net)));
    }
    fields.push(("features".into(), json!(spec.features.property())));
    fields.push(("unprivileged".into(), json!(spec.unprivileged)));
    if let Some(startup) = &spec.startup {
        fields.push(("startup".into(), json!(startup)));
    }
    fields.push(("tags".into(), json!(host.spec.tags)));
    fields.push(("description".into(), json!(host.spec.description)));
    fields.push(("onBoot".into(), json!(host.spec.on_boot)));
    fields.push(("protection".into(), json!(host.spec.protection)));
    if let Some(pool) = &host.spec.pool {
        fields.push(("pool".into(), json!(pool)));
    }
    fields
        .into_iter()
        .map(|(field, value)| Change { field, before: None, after: Some(value), effect: None })
        .collect()
}

/// A volume as Proxmox shows it (`local-lvm,size=8G`).
pub fn volume_value(volume: &VolumeSpec) -> Value {
    json!(format!("{},size={}", volume.storage, format_size(volume.size_bytes)))
}

fn mount_value(mount: &MountSpec) -> Value {
    let backup = if mount.backup { ",backup=1" } else { "" };
    json!(format!(
        "{},mp={},size={}{backup}",
        mount.volume.storage,
        mount.path,
        format_size(mount.volume.size_bytes)
    ))
}

fn net_value(net: &CtNetSpec) -> Value {
    json!(crate::proxmox::container::format_ct_net(net))
}

/// What comparing a container with the flake found: the engine's [`SpecDiff`] (updates with
/// their effect, grows, replacements; containers detach nothing) and the feature changes only
/// `root@pam` may make.
pub(super) struct ContainerDiff {
    pub diff: SpecDiff,
    pub root_only: Vec<Change>,
}

/// Compares a container host with its live config: the shared settings as the engine compares
/// a VM's (then taking effect at once, as pve-container applies them), the rest here.
pub(super) fn diff(host: &DesiredHost, config: &LiveConfig) -> Option<ContainerDiff> {
    let want = &container_of(host)?.spec;
    let have = config.container.as_ref()?;
    let mut diff = fields::diff(&host.spec, &config.spec);
    for change in &mut diff.updates {
        // description, onboot, protection, hostname, tags: `$LXC_FASTPLUG_OPTIONS`.
        change.effect = Some(Effect::Immediate);
        if change.field == "name" {
            change.field = "hostname".into();
        }
    }
    let mut root_only = Vec::new();
    diff_settings(want, have, &mut diff);
    diff_volume("rootfs", &want.rootfs, &have.rootfs, &mut diff);
    diff_mounts(want, have, &mut diff);
    diff_networks(want, have, &mut diff);
    let (wf, hf) = (want.features, have.features);
    if wf.nesting != hf.nesting {
        diff.updates.push(change(
            "features.nesting",
            json!(hf.nesting),
            json!(wf.nesting),
            Effect::NeedsReboot,
        ));
    }
    for (name, before, after) in [("keyctl", hf.keyctl, wf.keyctl), ("fuse", hf.fuse, wf.fuse)] {
        if before != after {
            root_only.push(change(
                &format!("features.{name}"),
                json!(before),
                json!(after),
                Effect::NeedsReboot,
            ));
        }
    }
    if want.unprivileged != have.unprivileged {
        diff.replacements.push((
            Change {
                field: "unprivileged".into(),
                before: Some(json!(have.unprivileged)),
                after: Some(json!(want.unprivileged)),
                effect: None,
            },
            "`unprivileged` is read-only in Proxmox once the container exists".to_string(),
        ));
    }
    Some(ContainerDiff { diff, root_only })
}

fn change(field: &str, before: Value, after: Value, effect: Effect) -> Change {
    Change { field: field.into(), before: Some(before), after: Some(after), effect: Some(effect) }
}

/// cores and startup at once; memory and swap on the running container.
fn diff_settings(want: &ContainerSpec, have: &ContainerSpec, diff: &mut SpecDiff) {
    let mut update = |field: &str, before: Value, after: Value, effect: Effect| {
        if before != after {
            diff.updates.push(change(field, before, after, effect));
        }
    };
    update("cores", json!(have.cores), json!(want.cores), Effect::Immediate);
    update("memory", json!(have.memory_mib), json!(want.memory_mib), Effect::Hotplug);
    update("swap", json!(have.swap_mib), json!(want.swap_mib), Effect::Hotplug);
    if want.startup.is_some() {
        update("startup", json!(have.startup), json!(want.startup), Effect::Immediate);
    }
}

/// A volume grows in place (`PUT …/resize`); another storage or a smaller size is a replace.
fn diff_volume(field: &str, want: &VolumeSpec, have: &VolumeSpec, diff: &mut SpecDiff) {
    if want.storage != have.storage {
        diff.replacements.push((
            Change {
                field: format!("{field}.storage"),
                before: Some(json!(have.storage)),
                after: Some(json!(want.storage)),
                effect: None,
            },
            format!("{field} moves from storage {} to {}", have.storage, want.storage),
        ));
        return;
    }
    let (before, after) = (format_size(have.size_bytes), format_size(want.size_bytes));
    let size = Change {
        field: format!("{field}.size"),
        before: Some(json!(before)),
        after: Some(json!(after)),
        effect: None,
    };
    match check_size(want.size_bytes, have.size_bytes) {
        SizeCheck::Grow => diff.grows.push(size),
        SizeCheck::InSync => {}
        SizeCheck::Shrink => diff.replacements.push((
            size,
            format!("{field} would shrink from {before} to {after}, and Proxmox cannot shrink a volume"),
        )),
    }
}

/// A new mount point is added to the running container; a changed one waits for a restart.
/// Mount points the flake does not declare are left alone (their data stays reachable).
fn diff_mounts(want: &ContainerSpec, have: &ContainerSpec, diff: &mut SpecDiff) {
    for (slot, mount) in &want.mounts {
        let field = format!("mountPoints.{slot}");
        let Some(live) = have.mounts.get(slot) else {
            diff.updates.push(Change {
                field,
                before: None,
                after: Some(mount_value(mount)),
                effect: Some(Effect::Hotplug),
            });
            continue;
        };
        diff_volume(&field, &mount.volume, &live.volume, diff);
        if live.path != mount.path {
            diff.updates.push(change(
                &format!("{field}.path"),
                json!(live.path),
                json!(mount.path),
                Effect::NeedsReboot,
            ));
        }
        if live.backup != mount.backup {
            diff.updates.push(change(
                &format!("{field}.backup"),
                json!(live.backup),
                json!(mount.backup),
                Effect::NeedsReboot,
            ));
        }
    }
}

/// Interfaces change on the running container (`update_net`); an undeclared MAC or address
/// keeps what the container has.
fn diff_networks(want: &ContainerSpec, have: &ContainerSpec, diff: &mut SpecDiff) {
    for (slot, net) in &want.networks {
        let Some(live) = have.networks.get(slot) else {
            diff.updates.push(Change {
                field: format!("networks.{slot}"),
                before: None,
                after: Some(net_value(net)),
                effect: Some(Effect::Hotplug),
            });
            continue;
        };
        let mut option = |name: &str, before: Value, after: Value| {
            if before != after {
                diff.updates.push(change(&format!("networks.{slot}.{name}"), before, after, Effect::Hotplug));
            }
        };
        option("name", json!(live.name), json!(net.name));
        option("bridge", json!(live.bridge), json!(net.bridge));
        if net.mac.is_some() {
            option("macAddress", json!(live.mac), json!(net.mac));
        }
        if net.address.is_some() {
            option("address", json!(live.address), json!(net.address));
        }
        option("vlan", json!(live.vlan), json!(net.vlan));
        option("firewall", json!(live.firewall), json!(net.firewall));
    }
    for (slot, live) in &have.networks {
        if !want.networks.contains_key(slot) {
            diff.updates.push(Change {
                field: format!("networks.{slot}"),
                before: Some(net_value(live)),
                after: None,
                effect: Some(Effect::Hotplug),
            });
        }
    }
}

/// The `update_vm` of feature changes only `root@pam` may make: blocked, naming the command.
pub(super) fn root_only_action(vmid: u32, changes: Vec<Change>, want: &ContainerSpec) -> Option<Action> {
    if changes.is_empty() {
        return None;
    }
    let update = action(ActionKind::UpdateVm, "the container's features differ from the flake", changes);
    Some(blocked(
        update,
        format!(
            "only `root@pam` may change features other than nesting, and API tokens never can (pve-container `check_ct_modify_config_perm`): run `pct set {vmid} --features {}` on the node as root, or declare the container's features as they are",
            want.features.property()
        ),
        None,
    ))
}

/// The `adopt` of an unmanaged container named like the host: only a NixOS container (Proxmox
/// detects it from the root file system: `ostype` `nixos`) whose key is declared. nixprox never
/// converts another container in place: that is a `replace_vm`.
pub(super) fn adopt_action(host: &DesiredHost, live: &LiveVm, config: &LiveConfig) -> Action {
    let vmid = live.vmid;
    let managed = Change {
        field: "managed".into(),
        before: Some(json!(false)),
        after: Some(json!(true)),
        effect: None,
    };
    let ostype = config.ostype.as_deref().unwrap_or("unknown");
    let why = if ostype != "nixos" {
        Some(format!(
            "container {vmid} runs `{ostype}` (its `ostype`), not NixOS: nixprox adopts only NixOS containers in place; delete it, or rename it and let nixprox create the host's container"
        ))
    } else if host.ssh.host_key.is_none() {
        Some(format!(
            "nixprox cannot verify the SSH host key of container {vmid} (containers have no guest agent and no file API), and never trusts a key on first use: declare it in `nixprox.ssh.hostKey` (the line of /etc/ssh/ssh_host_ed25519_key.pub in the container)"
        ))
    } else if host.address.is_none() {
        Some(
            "nixprox cannot find the container's address without a guest agent: set `nixprox.address`".into(),
        )
    } else {
        None
    };
    let reason = format!("container {vmid} is named like this host but not tagged `nixprox`");
    match why {
        Some(why) => Action {
            kind: ActionKind::Adopt,
            reason,
            changes: vec![managed],
            blocked: Some(Blocked {
                reason: format!("before adopting container {vmid}, {why}"),
                setting: None,
            }),
        },
        None => Action {
            kind: ActionKind::Adopt,
            reason: format!(
                "{reason}: nixprox adopts it in place; apply first checks over SSH that it runs NixOS and presents the declared `nixprox.ssh.hostKey`, and changes nothing otherwise"
            ),
            changes: vec![managed],
            blocked: None,
        },
    }
}

/// The switch of a container whose metadata records no system (created from a template and
/// not switched yet): never a reinstall, a container has no installer.
pub(super) fn unswitched(host: &DesiredHost) -> Option<Action> {
    first_switch(host, "the container has not been switched to the host's system yet")
}
