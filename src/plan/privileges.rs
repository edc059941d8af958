//! What a plan needs from the Proxmox API token, per path: the `permissions` checks of the
//! API calls apply makes for each runnable action, as qemu-server (`API2/Qemu.pm`,
//! `API2/Qemu/Agent.pm`), pve-manager (`API2/Pool.pm`, `API2/Cluster.pm`), pve-guest-common
//! (`GuestHelpers.pm`) and pve-storage (`Storage.pm::check_volume_access`) declare them; the
//! table in docs/guide.md cites each. Pure: `plan`, `drift` and `apply` compare the result with
//! what `/access/permissions` answers (`proxmox::permissions`) before they act.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{ActionKind, Change, Effect, HostPlan, Plan};
use crate::flake::DesiredHost;
use crate::flake::host::{Bootstrap, TemplateRef};
use crate::proxmox::permissions::{AGENT_FILE_READ, AGENT_READ, Need};
use crate::proxmox::{LiveVm, find_template};
use crate::spec::KEXEC_MIN_MEMORY_MIB;

/// What `plan` (and `drift`) need: `VM.Audit` on every VM (a VM the token cannot see would
/// be planned as missing and created twice), `Pool.Audit` on declared pools (without it
/// Proxmox leaves the pool out of the resource list), and with `--probe` the agent read on
/// installed hosts without a static address.
pub fn needs_to_read(plan: &Plan, desired: &[DesiredHost], probe: bool) -> Vec<Need> {
    let mut needs = vec![Need {
        privileges: &["VM.Audit"],
        path: "/vms/*".into(),
        pool: None,
        why: "reading the cluster's VMs".into(),
    }];
    for host in desired {
        if let Some(pool) = &host.spec.pool {
            needs.push(Need::new(&["Pool.Audit"], format!("/pool/{pool}"), None, &host.host, "its pool"));
        }
    }
    for planned in &plan.hosts {
        for action in planned.actions.iter().filter(|a| a.kind == ActionKind::UploadImage) {
            for storage in image_storages(action) {
                let path = format!("/storage/{storage}");
                needs.push(Need::new(STORAGE_READ, path, None, &planned.host, "its image storage's files"));
            }
        }
    }
    if probe {
        for planned in &plan.hosts {
            let declared = desired.iter().find(|d| d.host == planned.host);
            if let (Some(host), Some(vmid)) = (declared, planned.vm.vmid)
                && host.address.is_none()
                && host.spec.agent
            {
                let why = "its address for --probe (guest agent)";
                needs.push(Need::new(AGENT_READ, format!("/vms/{vmid}"), None, &host.host, why));
            }
        }
    }
    needs
}

/// What `apply` needs for the runnable actions of `plan`. `deploying`: install and switch
/// will run (an SSH key is configured), which asks the guest agent for addresses and
/// records the result in the notes.
pub fn needs_to_apply(plan: &Plan, desired: &[DesiredHost], live: &[LiveVm], deploying: bool) -> Vec<Need> {
    let mut needs = Vec::new();
    for planned in &plan.hosts {
        let host = desired.iter().find(|d| d.host == planned.host).filter(|_| !planned.orphan);
        host_needs(planned, host, live, deploying, &mut needs);
    }
    needs
}

/// The privileges of one host's runnable actions, step by step as the executor takes them.
/// Long because it mirrors the executor's sequence in one place, which keeps the two easy
/// to compare.
fn host_needs(
    planned: &HostPlan,
    host: Option<&DesiredHost>,
    live: &[LiveVm],
    deploying: bool,
    needs: &mut Vec<Need>,
) {
    let kinds: BTreeSet<ActionKind> = planned
        .actions
        .iter()
        .filter(|a| a.blocked.is_none() && a.kind != ActionKind::Noop)
        .map(|a| a.kind)
        .collect();
    if kinds.is_empty() {
        return;
    }
    let has = |kind| kinds.contains(&kind);
    let name = planned.host.as_str();
    let current = planned.vm.vmid.map_or_else(|| "/vms/*".to_string(), |id| format!("/vms/{id}"));
    let mut add = |privileges, path: &str, pool: Option<&String>, what: &str| {
        needs.push(Need::new(privileges, path.to_string(), pool.cloned(), name, what));
    };
    if has(ActionKind::Release) {
        add(&["VM.Config.Options"], &current, None, "remove its tag and metadata block");
        return;
    }
    if has(ActionKind::DestroyVm) || has(ActionKind::ReplaceVm) {
        add(&["VM.Allocate"], &current, None, "destroy");
        let running = planned.vm.vmid.and_then(|id| live.iter().find(|vm| vm.vmid == id));
        if running.is_some_and(|vm| vm.status == "running") {
            add(&["VM.PowerMgmt"], &current, None, "shut down before destroying");
        }
    }
    let Some(host) = host else { return };
    if kinds == BTreeSet::from([ActionKind::DestroyVm]) {
        return;
    }
    let creating = has(ActionKind::CreateVm) || has(ActionKind::ReplaceVm);
    let vm = match (creating, host.vmid) {
        (true, Some(id)) => format!("/vms/{id}"),
        (true, None) => "/vms/*".to_string(),
        (false, _) => current,
    };
    // Proxmox accepts a new VM's privileges on the pool it is created in.
    let pool = host.spec.pool.as_ref().filter(|_| creating).map(|p| format!("/pool/{p}"));
    let pool = pool.as_ref();
    if creating {
        create_needs(host, live, &vm, pool, &mut add);
    } else if [ActionKind::Adopt, ActionKind::UpdateVm, ActionKind::DetachDisk].into_iter().any(has) {
        add(&["VM.Config.Options"], &vm, None, "tag and metadata block");
        update_needs(planned, host, &vm, &mut add);
    }
    // A conversion (adopt + reinstall) pins the key of the old system: `nixprox.convert.hostKey`.
    let converting = has(ActionKind::Adopt) && has(ActionKind::Reinstall);
    if converting && !creating {
        add(AGENT_READ, &vm, None, "what it runs, read again as the plan read it (guest agent)");
    }
    if has(ActionKind::Adopt) && !creating && deploying {
        let declared = if converting { host.convert.host_key.is_some() } else { host.ssh.host_key.is_some() };
        if !declared {
            add(AGENT_FILE_READ, &vm, None, "its SSH host key, to adopt it (guest agent)");
        }
        if host.address.is_none() {
            add(AGENT_READ, &vm, None, "its address, to adopt it (guest agent)");
        }
    }
    if has(ActionKind::MigrateVm) {
        add(&["VM.Migrate"], &vm, None, &format!("move it to node {}", host.node));
    }
    if has(ActionKind::UploadImage) {
        for action in planned.actions.iter().filter(|a| a.kind == ActionKind::UploadImage) {
            for storage in image_storages(action) {
                let path = format!("/storage/{storage}");
                add(STORAGE_READ, &path, None, "its image storage's files");
                add(&["Datastore.AllocateTemplate"], &path, None, "upload its image");
            }
        }
    }
    if has(ActionKind::ResizeDisk) && !creating {
        add(&["VM.Config.Disk"], &vm, None, "grow disks");
        for disk in host.spec.disks.values() {
            add(&["Datastore.AllocateSpace"], &format!("/storage/{}", disk.storage), None, "grow disks");
        }
    }
    let deploys = [ActionKind::Install, ActionKind::Reinstall, ActionKind::Switch].into_iter().any(has);
    if (creating || (deploying && deploys)) && host.address.is_none() && host.spec.agent {
        add(AGENT_READ, &vm, pool, "its address (guest agent)");
    }
    if boots_from_image(host, planned, live, creating) {
        add(AGENT_FILE_READ, &vm, pool, "its host key (guest agent)");
    }
    let installs = has(ActionKind::Install) || has(ActionKind::Reinstall);
    if deploying && installs && host.spec.memory_mib < KEXEC_MIN_MEMORY_MIB {
        add(&["VM.Config.Memory"], &vm, pool, "memory for the kexec installer");
        if host.deploy.allow_reboot {
            add(&["VM.PowerMgmt"], &vm, pool, "reboot for the kexec memory");
        }
    }
    if deploying || !deploys {
        add(&["VM.Config.Options"], &vm, pool, "record the result in the notes");
    }
}

/// A new VM: clone or create, configure, resize, start.
fn create_needs(
    host: &DesiredHost,
    live: &[LiveVm],
    vm: &str,
    pool: Option<&String>,
    add: &mut impl FnMut(&'static [&'static str], &str, Option<&String>, &str),
) {
    add(&["VM.Allocate"], vm, pool, "create the VM");
    match &host.bootstrap {
        Bootstrap::Template { template, .. } => {
            let wanted = match template {
                TemplateRef::Id(id) => id.to_string(),
                TemplateRef::Name(name) => name.clone(),
            };
            // A missing template is the plan's and the clone's error to report, not this one.
            if let Ok(source) = find_template(live, &wanted, Some(&host.node)) {
                add(&["VM.Clone"], &format!("/vms/{}", source.vmid), None, "clone the template");
            }
            // The clone's disks go to the first declared disk's storage (`storage=` of the clone).
            let target = host.spec.disks.values().next().map_or("local-lvm", |d| d.storage.as_str());
            add(&["Datastore.AllocateSpace"], &format!("/storage/{target}"), None, "the clone's disks");
            add(&["VM.Config.Cloudinit", "VM.Config.Network"], vm, pool, "cloud-init settings");
        }
        // Its create is blocked (nothing to create the VM from): nothing runs.
        Bootstrap::Undeclared => {}
        Bootstrap::Image(source) => {
            // pve-storage `Storage.pm` `check_volume_access`: an `import` volume needs read
            // access to its storage.
            let path = format!("/storage/{}", source.storage);
            add(STORAGE_READ, &path, None, "import its image");
            add(&["VM.Config.HWType"], vm, pool, "SCSI controller");
            add(&["VM.Config.Disk"], vm, pool, "boot order");
        }
        Bootstrap::Iso { iso } => {
            if let Some((storage, _)) = iso.split_once(':') {
                let path = format!("/storage/{storage}");
                add(&["Datastore.AllocateSpace", "Datastore.Audit"], &path, None, "the installer ISO");
            }
            add(&["VM.Config.HWType"], vm, pool, "SCSI controller");
            add(&["VM.Config.Disk"], vm, pool, "boot order");
        }
    }
    for privilege in [&["VM.Config.CPU"], &["VM.Config.Memory"], &["VM.Config.Options"], &["VM.Config.Disk"]]
    {
        add(privilege, vm, pool, "configure");
    }
    if host.spec.machine.is_some() {
        add(&["VM.Config.HWType"], vm, pool, "machine type");
    }
    let hardware = &host.spec.hardware;
    if hardware.serial == Some(true) || hardware.vga.is_some() {
        add(&["VM.Config.HWType"], vm, pool, "serial console and display");
    }
    if hardware.startup.is_some() {
        startup_needs(vm, pool, add);
    }
    for key in hardware.extra.keys() {
        if let Ok(privilege) = crate::spec::extra::extra_key(key) {
            add(privilege_list(privilege), vm, pool, &format!("extraConfig.{key}"));
        }
    }
    if let Some(tpm) = &hardware.tpm {
        add(&["VM.Config.Disk"], vm, pool, "tpm");
        add(&["Datastore.AllocateSpace"], &format!("/storage/{}", tpm.storage), None, "tpm");
    }
    for (kind, slot, mapping) in hardware
        .pci
        .iter()
        .map(|(slot, d)| ("pci", slot, &d.mapping))
        .chain(hardware.usb.iter().map(|(slot, d)| ("usb", slot, &d.mapping)))
    {
        let path = format!("/mapping/{kind}/{mapping}");
        add(&["VM.Config.HWType"], vm, pool, &format!("{kind}.{slot}"));
        add(&["Mapping.Use"], &path, None, &format!("{kind}.{slot}"));
    }
    for (slot, share) in &hardware.virtiofs {
        add(&["VM.Config.Disk"], vm, pool, &format!("virtiofs.{slot}"));
        add(&["Mapping.Use"], &format!("/mapping/dir/{}", share.mapping), None, &format!("virtiofs.{slot}"));
    }
    for disk in host.spec.disks.values() {
        add(&["Datastore.AllocateSpace"], &format!("/storage/{}", disk.storage), None, "disks");
    }
    for net in host.spec.networks.values() {
        add(&["VM.Config.Network"], vm, pool, "network");
        add(&["SDN.Use"], &bridge_path(&net.bridge, net.vlan), None, "network");
    }
    if let Some(container) = &host.container {
        container_create_needs(container, vm, pool, add);
    }
    add(&["VM.PowerMgmt"], vm, pool, "start");
}

/// What a new container needs beyond a VM's `VM.Allocate` and `VM.Config.*` (pve-container
/// `API2/LXC.pm` `create_vm` and `LXC.pm` `check_ct_modify_config_perm`): space on the storages
/// of its volumes, its bridges, read access to its template's storage, and `Sys.Modify` on `/`
/// for a privileged container.
fn container_create_needs(
    container: &crate::flake::host::DesiredContainer,
    vm: &str,
    pool: Option<&String>,
    add: &mut impl FnMut(&'static [&'static str], &str, Option<&String>, &str),
) {
    let spec = &container.spec;
    let volumes = std::iter::once(&spec.rootfs).chain(spec.mounts.values().map(|m| &m.volume));
    for volume in volumes {
        add(&["Datastore.AllocateSpace"], &format!("/storage/{}", volume.storage), None, "volumes");
    }
    for net in spec.networks.values() {
        add(&["VM.Config.Network"], vm, pool, "network");
        add(&["SDN.Use"], &bridge_path(&net.bridge, net.vlan), None, "network");
    }
    if let Some((storage, _)) =
        super::container::template_of(container).as_deref().and_then(|t| t.split_once(':'))
    {
        add(STORAGE_READ, &format!("/storage/{storage}"), None, "its template");
    }
    if !spec.unprivileged {
        add(&["Sys.Modify"], "/", None, "a privileged container");
    }
}

/// Reading a storage's status and content (pve-storage `API2/Storage/Status.pm` and
/// `Content.pm`: either privilege).
const STORAGE_READ: &[&str] = &["Datastore.Audit", "Datastore.AllocateSpace"];

/// The storages an `upload_image` action uploads to (from its changes' volume ids).
fn image_storages(action: &super::Action) -> BTreeSet<String> {
    action
        .changes
        .iter()
        .filter_map(|c| c.after.as_ref()?.as_str()?.split_once(':').map(|(s, _)| s.to_string()))
        .collect()
}

/// Whether apply reads the VM's host key through the guest agent: a VM created from the
/// host's image now, or one an earlier run created from an image and did not check yet.
fn boots_from_image(host: &DesiredHost, planned: &HostPlan, live: &[LiveVm], creating: bool) -> bool {
    (creating && matches!(host.bootstrap, Bootstrap::Image(_)))
        || super::image::created_from_image_unchecked(planned, live)
}

/// An existing VM's config changes, by the field the plan names.
fn update_needs(
    planned: &HostPlan,
    host: &DesiredHost,
    vm: &str,
    add: &mut impl FnMut(&'static [&'static str], &str, Option<&String>, &str),
) {
    let changes = planned
        .actions
        .iter()
        .filter(|a| {
            a.blocked.is_none()
                && matches!(a.kind, ActionKind::UpdateVm | ActionKind::Adopt | ActionKind::DetachDisk)
        })
        .flat_map(|a| &a.changes);
    let mut reboot = false;
    for change in changes {
        reboot |= change.effect == Some(Effect::NeedsReboot);
        let field = change.field.as_str();
        let top = field.split('.').next().unwrap_or(field);
        let privilege: &'static [&'static str] = match top {
            "cores" | "sockets" | "cpuType" | "cpuFlags" | "numa" => &["VM.Config.CPU"],
            "memory" | "balloon" | "swap" => &["VM.Config.Memory"],
            // A container's (pve-container `check_ct_modify_config_perm`).
            "rootfs" | "mountPoints" => &["VM.Config.Disk"],
            "hostname" => &["VM.Config.Network"],
            "features" => &["VM.Allocate"],
            // `check_vm_create_serial_perm`: a socket needs `VM.Config.HWType`.
            "machine" | "serial" | "vga" => &["VM.Config.HWType"],
            "startup" => {
                startup_needs(vm, None, add);
                continue;
            }
            "pci" | "usb" | "virtiofs" => {
                device_needs(top, change, vm, None, add);
                continue;
            }
            "extraConfig" => {
                let key = field.split_once('.').map_or("", |(_, k)| k);
                if let Ok(privilege) = crate::spec::extra::extra_key(key) {
                    add(privilege_list(privilege), vm, None, field);
                }
                continue;
            }
            "tpm" => {
                if let Some(tpm) = &host.spec.hardware.tpm {
                    add(&["Datastore.AllocateSpace"], &format!("/storage/{}", tpm.storage), None, field);
                }
                &["VM.Config.Disk"]
            }
            "disks" => &["VM.Config.Disk"],
            "networks" => &["VM.Config.Network"],
            "pool" => {
                pool_needs(change, vm, add);
                continue;
            }
            _ => &["VM.Config.Options"],
        };
        add(privilege, vm, None, field);
        let slot = field.split('.').nth(1).unwrap_or_default();
        if top == "disks"
            && let Some(disk) = host.spec.disks.get(slot)
        {
            add(&["Datastore.AllocateSpace"], &format!("/storage/{}", disk.storage), None, field);
        }
        if top == "networks"
            && let Some(net) = host.spec.networks.get(slot)
        {
            add(&["SDN.Use"], &bridge_path(&net.bridge, net.vlan), None, field);
        }
    }
    if reboot && host.deploy.allow_reboot {
        add(&["VM.PowerMgmt"], vm, None, "reboot for pending changes");
    }
}

/// One privilege as the list `Need` takes.
fn privilege_list(privilege: &'static str) -> &'static [&'static str] {
    match privilege {
        "VM.Config.CPU" => &["VM.Config.CPU"],
        "VM.Config.Memory" => &["VM.Config.Memory"],
        "VM.Config.HWType" => &["VM.Config.HWType"],
        "VM.PowerMgmt" => &["VM.PowerMgmt"],
        "VM.Config.Disk" => &["VM.Config.Disk"],
        _ => &["VM.Config.Options"],
    }
}

/// `startup`: `VM.Config.Options`, and `Sys.Modify` on `/` because it changes how the node
/// starts and stops its guests (qemu-server `API2/Qemu.pm`, `check_vm_modify_config_perm`).
fn startup_needs(
    vm: &str,
    pool: Option<&String>,
    add: &mut impl FnMut(&'static [&'static str], &str, Option<&String>, &str),
) {
    add(&["VM.Config.Options"], vm, pool, "startup");
    add(&["Sys.Modify"], "/", None, "startup (the node's start order)");
}

/// A mapped PCI or USB device added, changed or removed: `VM.Config.HWType` on the VM and
/// `Mapping.Use` on the mapping of the old and of the new value (qemu-server `API2/Qemu.pm`,
/// `check_hostpci_perm` and `check_usb_perm`, called for both in `update_vm`).
fn device_needs(
    kind: &str,
    change: &Change,
    vm: &str,
    pool: Option<&String>,
    add: &mut impl FnMut(&'static [&'static str], &str, Option<&String>, &str),
) {
    // `check_dir_perm`: a share needs VM.Config.Disk, and its mapping lives under /mapping/dir.
    let (privilege, kind, key): (&'static [&'static str], &str, &str) = match kind {
        "virtiofs" => (&["VM.Config.Disk"], "dir", "dirid="),
        other => (&["VM.Config.HWType"], other, "mapping="),
    };
    add(privilege, vm, pool, &change.field);
    let mappings = [&change.before, &change.after]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|v| v.split(',').find_map(|p| p.strip_prefix(key)));
    for mapping in mappings {
        add(&["Mapping.Use"], &format!("/mapping/{kind}/{mapping}"), None, &change.field);
    }
}

/// `PUT /pools`: `Pool.Allocate` on the pool joined and the pool left, and the right to
/// change the VM's permissions (`VM.Allocate` or `Permissions.Modify`).
fn pool_needs(
    change: &Change,
    vm: &str,
    add: &mut impl FnMut(&'static [&'static str], &str, Option<&String>, &str),
) {
    for pool in [&change.before, &change.after].into_iter().flatten().filter_map(Value::as_str) {
        add(&["Pool.Allocate"], &format!("/pool/{pool}"), None, "pool membership");
    }
    add(&["VM.Allocate", "Permissions.Modify"], vm, None, "pool membership");
}

/// The SDN path Proxmox checks for a NIC on a plain Linux bridge (zone `localnetwork`),
/// with the VLAN as a child when the NIC is tagged.
fn bridge_path(bridge: &str, vlan: Option<u16>) -> String {
    match vlan {
        Some(tag) => format!("/sdn/zones/localnetwork/{bridge}/{tag}"),
        None => format!("/sdn/zones/localnetwork/{bridge}"),
    }
}

#[cfg(test)]
mod tests;
