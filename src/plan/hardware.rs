//! The planner's rules for [`Hardware`]: which field changes, and when it takes effect, by
//! qemu-server's own rules (`PVE/QemuServer.pm`): `startup` is a `$fast_plug_option` (written at
//! once, also on a running VM); `vmconfig_hotplug_pending` has no hot-plug branch for `cpu`,
//! `numa`, `serialN` or `vga`, so on a running VM they wait in the pending config for the next
//! start; `hostpciN` neither; `usbN` is hot-plugged where `$is_usb_hotplug_supported` says so.
//! Field names are the module's (`cpuFlags`, `numa`, `serial`, `vga`, `startup`,
//! `pci.<slot>`, `usb.<slot>`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::config::Policies;
use crate::flake::DesiredHost;
use crate::proxmox::LiveVm;
use crate::proxmox::mapping::Mappings;
use crate::spec::hardware::{PciDevice, Tpm, UsbDevice, VirtiofsShare, format_flags};
use crate::spec::{Hardware, VmSpec};

use super::fields::SpecDiff;
use super::model::{ActionKind, Blocked, Change, Effect, Plan};

/// The declared hardware as `(field, value)` for a create's changes (only what is declared).
pub fn fields(hardware: &Hardware) -> Vec<(String, Value)> {
    let mut fields = Vec::new();
    if !hardware.cpu_flags.is_empty() {
        fields.push(("cpuFlags".to_string(), json!(format_flags(&hardware.cpu_flags))));
    }
    if let Some(numa) = hardware.numa {
        fields.push(("numa".into(), json!(numa)));
    }
    if let Some(serial) = hardware.serial {
        fields.push(("serial".into(), json!(serial)));
    }
    if let Some(vga) = &hardware.vga {
        fields.push(("vga".into(), json!(vga)));
    }
    if let Some(startup) = &hardware.startup {
        fields.push(("startup".into(), json!(startup.format())));
    }
    if let Some(tpm) = &hardware.tpm {
        fields.push(("tpm".into(), json!(tpm_value(tpm))));
    }
    if let Some(keys) = hardware.efi_pre_enrolled_keys {
        fields.push(("efi.preEnrolledKeys".into(), json!(keys)));
    }
    for (key, value) in &hardware.extra {
        fields.push((format!("extraConfig.{key}"), json!(value)));
    }
    for (slot, device) in &hardware.pci {
        fields.push((format!("pci.{slot}"), json!(device.format())));
    }
    for (slot, device) in &hardware.usb {
        fields.push((format!("usb.{slot}"), json!(device.format())));
    }
    for (slot, share) in &hardware.virtiofs {
        fields.push((format!("virtiofs.{slot}"), json!(share.format())));
    }
    fields
}

/// Compares the declared hardware with the live one; changes go to `out.updates`.
pub fn diff(desired: &Hardware, live: &Hardware, out: &mut SpecDiff) {
    let mut update = |field: &str, before: Value, after: Value, effect: Effect| {
        if before != after {
            out.updates.push(Change {
                field: field.to_string(),
                before: Some(before),
                after: Some(after),
                effect: Some(effect),
            });
        }
    };
    // The whole `cpu` line counts: flags are compared as a set (the type beside them is the
    // core spec's `cpuType`).
    update(
        "cpuFlags",
        json!(format_flags(&live.cpu_flags)),
        json!(format_flags(&desired.cpu_flags)),
        Effect::NeedsReboot,
    );
    if let Some(numa) = desired.numa {
        update("numa", json!(live.numa.unwrap_or(false)), json!(numa), Effect::NeedsReboot);
    }
    match (desired.serial, live.serial) {
        // A host device there (`serial0: /dev/ttyS0`) is root@pam's: nixprox neither removes
        // nor replaces it (`update_vm` lets a token change a serial port only from a socket).
        (Some(_), Some(false)) | (None, _) => {}
        (Some(want), have) => {
            update("serial", json!(have == Some(true)), json!(want), Effect::NeedsReboot);
        }
    }
    if let Some(vga) = &desired.vga {
        update("vga", json!(live.vga), json!(vga), Effect::NeedsReboot);
    }
    if let Some(startup) = &desired.startup {
        let have = live.startup.clone().unwrap_or_default();
        update("startup", json!(have.format()), json!(startup.format()), Effect::Hotplug);
    }
    tpm(desired, live, out);
    // `extraConfig`: declared keys, compared exactly; an undeclared one is left as it is.
    for (key, value) in &desired.extra {
        let have = live.extra.get(key);
        if have != Some(value) {
            let at_once = crate::spec::extra::applies_at_once(key, live.usb_hotplug_feature);
            out.updates.push(Change {
                field: format!("extraConfig.{key}"),
                before: have.map(|v| json!(v)),
                after: Some(json!(value)),
                effect: Some(if at_once { Effect::Hotplug } else { Effect::NeedsReboot }),
            });
        }
    }
    if let (Some(want), Some(have)) = (desired.efi_pre_enrolled_keys, live.efi_pre_enrolled_keys)
        && want != have
    {
        // The keys are written into the EFI vars when Proxmox creates the EFI disk.
        out.replacements.push((
            Change {
                field: "efi.preEnrolledKeys".into(),
                before: Some(json!(have)),
                after: Some(json!(want)),
                effect: None,
            },
            "the EFI disk's pre-enrolled keys change, which Proxmox only sets when it creates the EFI disk"
                .into(),
        ));
    }
    // No hot-plug branch for `hostpciN`: pending until the next start. USB where qemu-server
    // hot-plugs it (`usb_hotplug`), else pending too.
    let pci = |d: &PciDevice| d.format();
    devices("pci", &desired.pci, &live.pci, pci, Effect::NeedsReboot, out);
    let usb_effect = if live.usb_hotplug { Effect::Hotplug } else { Effect::NeedsReboot };
    devices("usb", &desired.usb, &live.usb, UsbDevice::format, usb_effect, out);
    // No hot-plug branch for `virtiofsN` either.
    devices("virtiofs", &desired.virtiofs, &live.virtiofs, VirtiofsShare::format, Effect::NeedsReboot, out);
}

/// A VM under HA (`/cluster/resources` `hastate`) on another node than declared: HA placed it
/// there (a failover, or its own rules), so nixprox does not migrate it back; the plan shows the
/// migration held back with the fix. The seam for declaring HA itself (PVE 8 groups, PVE 9
/// node-affinity rules) is here too: a declared HA placement would decide instead.
pub fn ha_placement(live: &LiveVm, host: &DesiredHost, state: &str, change: Change) -> super::model::Action {
    let migrate = super::engine::action(
        ActionKind::MigrateVm,
        format!("the VM runs on node {}, not on {} as declared", live.node, host.node),
        vec![change],
    );
    super::engine::blocked(
        migrate,
        format!(
            "the VM is an HA resource (requested state `{state}`) and HA placed it on node {}: nixprox leaves its placement to HA; set `nixprox.vm.node = \"{}\"`, or move it with `ha-manager migrate vm:{} {}`",
            live.node, live.node, live.vmid, host.node
        ),
        None,
    )
}

/// Why Proxmox would refuse to migrate the VM at all: devices that are not mapped and not
/// sockets (`hostpciN`/`usbN` with `host=`, `serialN` devices, `parallelN`): qemu-server
/// `QemuMigrate.pm` "can't migrate VM which uses local devices".
pub fn local_devices(live: &LiveVm) -> Option<String> {
    let hardware = &live.config.as_ref()?.spec.hardware;
    let numbered = |key: &str, prefix: &str| {
        key.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let local: Vec<&str> = hardware
        .extra
        .iter()
        .filter(|(key, value)| {
            (numbered(key, "hostpci") && !hardware.pci.contains_key(*key))
                || (numbered(key, "usb")
                    && !hardware.usb.contains_key(*key)
                    && !value.to_lowercase().contains("spice"))
                || (numbered(key, "serial") && value.as_str() != "socket")
                || numbered(key, "parallel")
        })
        .map(|(key, _)| key.as_str())
        .collect();
    (!local.is_empty()).then(|| {
        format!(
            "the VM uses local devices ({}), which Proxmox does not migrate; move the VM yourself (as root: remove them, migrate, add them back), or declare its current node",
            local.join(", ")
        )
    })
}

/// A replacement of an HA resource: apply destroys with `purge=1`, which removes the VM from
/// HA (qemu-server `destroy_vm`), and the new VM is not one.
pub fn ha_lost_on_replace(live: &LiveVm) -> Option<(Change, String)> {
    let state = live.ha_state.as_ref()?;
    let change = Change { field: "ha".into(), before: Some(json!(state)), after: None, effect: None };
    let why = format!(
        "the VM is an HA resource, which destroying it ends (the new VM is not one: add it again with `ha-manager add vm:{}`)",
        live.vmid
    );
    Some((change, why))
}

/// What a replacement of the VM would lose: the live keys nixprox does not write for this
/// declaration (hand-added devices, raw passthrough, `args`, unused disks, settings whose
/// option is `null`, …), as one change listing them with their values, and the reason.
pub fn lost_on_replace(desired: &VmSpec, live: &Hardware) -> Option<(Change, String)> {
    let want = &desired.hardware;
    let kept = |key: &str, value: &str| match key {
        "balloon" => desired.balloon_mib.is_some(),
        "machine" => desired.machine.is_some(),
        "numa" => want.numa.is_some(),
        "vga" => want.vga.is_some(),
        "startup" => want.startup.is_some(),
        "tpmstate0" => want.tpm.is_some(),
        "serial0" => want.serial == Some(true) && value == "socket",
        _ => {
            want.pci.contains_key(key)
                || want.usb.contains_key(key)
                || want.virtiofs.contains_key(key)
                || want.extra.contains_key(key)
        }
    };
    let lost: BTreeMap<&String, &String> = live.extra.iter().filter(|(k, v)| !kept(k, v)).collect();
    if lost.is_empty() {
        return None;
    }
    let keys: Vec<String> = lost.keys().map(|k| format!("`{k}`")).collect();
    let change = Change { field: "unmanaged".into(), before: Some(json!(lost)), after: None, effect: None };
    let why = format!(
        "the new VM would not have what nixprox does not manage: {} (declare them, e.g. in `nixprox.vm.extraConfig`, or note them down)",
        keys.join(", ")
    );
    Some((change, why))
}

/// `version=v2.0 on local-lvm`, as the plan shows a TPM.
fn tpm_value(tpm: &Tpm) -> String {
    format!("{} on {}", tpm.version, tpm.storage)
}

/// A declared TPM: added when missing (its state volume is a drive: `vmconfig_hotplug_pending`
/// skips `tpmstate0`, so on a running VM it waits for the next start); a new version or storage
/// is a `replace_vm` (the TPM's state cannot be converted, and nixprox moves no volume).
fn tpm(desired: &Hardware, live: &Hardware, out: &mut SpecDiff) {
    let Some(want) = &desired.tpm else { return };
    match &live.tpm {
        None => out.updates.push(Change {
            field: "tpm".into(),
            before: None,
            after: Some(json!(tpm_value(want))),
            effect: Some(Effect::NeedsReboot),
        }),
        Some(have) if have != want => {
            let why = if have.version != want.version {
                format!(
                    "the TPM's version changes from {} to {}, and its state cannot be converted",
                    have.version, want.version
                )
            } else {
                format!("the TPM's state moves from storage {} to {}", have.storage, want.storage)
            };
            let change = Change {
                field: "tpm".into(),
                before: Some(json!(tpm_value(have))),
                after: Some(json!(tpm_value(want))),
                effect: None,
            };
            out.replacements.push((change, why));
        }
        Some(_) => {}
    }
}

/// Mapped devices by slot: added, changed, and removed when the flake no longer declares them
/// (only mapped ones are read, so a raw device is never removed).
fn devices<T: PartialEq>(
    field: &str,
    desired: &BTreeMap<String, T>,
    live: &BTreeMap<String, T>,
    format: impl Fn(&T) -> String,
    effect: Effect,
    out: &mut SpecDiff,
) {
    let slots: BTreeSet<&String> = desired.keys().chain(live.keys()).collect();
    for slot in slots {
        let (want, have) = (desired.get(slot), live.get(slot));
        if want != have {
            out.updates.push(Change {
                field: format!("{field}.{slot}"),
                before: have.map(|d| json!(format(d))),
                after: want.map(|d| json!(format(d))),
                effect: Some(effect),
            });
        }
    }
}

/// The mapping kinds the flake's hosts name (`pci`, `usb`): what [`check_mappings`] needs read.
pub fn mappings_to_read(desired: &[DesiredHost]) -> BTreeSet<&'static str> {
    let mut kinds = BTreeSet::new();
    for host in desired {
        if !host.spec.hardware.pci.is_empty() {
            kinds.insert("pci");
        }
        if !host.spec.hardware.usb.is_empty() {
            kinds.insert("usb");
        }
        if !host.spec.hardware.virtiofs.is_empty() {
            kinds.insert("dir");
        }
    }
    kinds
}

/// Blocks each runnable create, replace, update or migration whose declared mapping the
/// cluster lacks, or has no device of on the VM's (target) node (a VM cannot start with it
/// there), and a live migration of a running VM with mapped devices Proxmox cannot move live;
/// drops the install that would follow a blocked create. The summary and plan id are computed again.
pub fn check_mappings(
    plan: &mut Plan,
    desired: &[DesiredHost],
    live: &[LiveVm],
    policies: Policies,
    mappings: &Mappings,
) {
    // Which planned hosts' VMs run (a running VM with mapped devices cannot always move live).
    let live_running: BTreeMap<String, bool> = plan
        .hosts
        .iter()
        .filter_map(|h| {
            let vm = live.iter().find(|vm| Some(vm.vmid) == h.vm.vmid)?;
            Some((h.host.clone(), vm.status == "running"))
        })
        .collect();
    for planned in plan.hosts.iter_mut().filter(|h| !h.orphan) {
        let Some(host) = desired.iter().find(|d| d.host == planned.host) else { continue };
        let hardware = &host.spec.hardware;
        let devices = hardware
            .pci
            .iter()
            .map(|(slot, d)| ("pci", "PCI", slot, &d.mapping))
            .chain(hardware.usb.iter().map(|(slot, d)| ("usb", "USB", slot, &d.mapping)))
            .chain(hardware.virtiofs.iter().map(|(slot, d)| ("dir", "directory", slot, &d.mapping)));
        let problem = devices.into_iter().find_map(|(kind, name, slot, id)| {
            let option = format!("`nixprox.vm.{}.{slot}.mapping`", if kind == "dir" { "virtiofs" } else { kind });
            if let (Some(version), "dir") = (&mappings.dir_unsupported, kind) {
                return Some(format!(
                    "`{}` shares a directory through virtiofs (`nixprox.vm.virtiofs.{slot}`), which needs Proxmox VE 8.4 or later, and the cluster runs {version} (GET /version); upgrade the cluster, or remove the share",
                    planned.host
                ));
            }
            match mappings.nodes(kind, id) {
                None => Some(format!(
                    "the {name} mapping `{id}` does not exist, or the token cannot see it (it needs `Mapping.Use` on /mapping/{kind}/{id}); create it under Datacenter → Resource Mappings, or change {option}"
                )),
                Some(nodes) if !nodes.contains(&host.node) => Some(format!(
                    "the {name} mapping `{id}` has no device on node `{}`; add the node's device to the mapping, or change {option}",
                    host.node
                )),
                Some(_) => None,
            }
        });
        let running = planned.actions.iter().any(|a| a.kind == ActionKind::MigrateVm)
            && live_running.get(planned.host.as_str()).copied().unwrap_or(false);
        let problem = problem.or_else(|| {
            // qemu-server `QemuMigrate.pm` `prepare`: a running VM with mapped devices migrates
            // live only when every one is a live-migration capable PCI mapping.
            let held: Vec<String> = hardware
                .pci
                .iter()
                .filter(|(_, d)| !mappings.live_migratable.contains(&d.mapping))
                .map(|(slot, d)| format!("{slot}:{}", d.mapping))
                .chain(hardware.usb.iter().map(|(slot, d)| format!("{slot}:{}", d.mapping)))
                .chain(hardware.virtiofs.iter().map(|(slot, d)| format!("{slot}:{}", d.mapping)))
                .collect();
            (running && !held.is_empty()).then(|| {
                format!(
                    "the VM runs with mapped devices Proxmox cannot live-migrate ({}); shut it down, and the next apply migrates it offline",
                    held.join(", ")
                )
            })
        });
        let Some(problem) = problem else { continue };
        let mut blocked_create = false;
        for action in planned.actions.iter_mut().filter(|a| a.blocked.is_none()) {
            let touches = |a: &super::model::Action| {
                a.changes.iter().any(|c| ["pci.", "usb.", "virtiofs."].iter().any(|p| c.field.starts_with(p)))
            };
            let creating = matches!(action.kind, ActionKind::CreateVm | ActionKind::ReplaceVm);
            let moving = action.kind == ActionKind::MigrateVm;
            if creating || moving || (action.kind == ActionKind::UpdateVm && touches(action)) {
                blocked_create |= creating;
                action.blocked = Some(Blocked { reason: problem.clone(), setting: None });
            }
        }
        if blocked_create {
            planned.actions.retain(|a| a.kind != ActionKind::Install);
        }
    }
    plan.summary = super::engine::summarize(&plan.hosts);
    plan.plan_id = super::id::plan_id(&plan.hosts, desired, policies);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::spec::hardware::Startup;

    fn flags(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn changes(desired: &Hardware, live: &Hardware) -> Vec<(String, Value, Value, Effect)> {
        let mut out = SpecDiff::default();
        diff(desired, live, &mut out);
        out.updates
            .into_iter()
            .map(|c| {
                (
                    c.field,
                    c.before.unwrap_or_default(),
                    c.after.unwrap_or_default(),
                    c.effect.expect("effect"),
                )
            })
            .collect()
    }

    /// The rule table of docs/plan.md ("VM hardware"), row by row.
    #[test]
    fn each_key_changes_with_qemu_servers_effect() {
        let live = Hardware::default();
        let desired = Hardware {
            cpu_flags: flags(&["+aes"]),
            numa: Some(true),
            serial: Some(true),
            vga: Some("serial0".into()),
            startup: Some(Startup { order: Some(1), up: Some(30), down: None }),
            ..Hardware::default()
        };
        assert_eq!(
            changes(&desired, &live),
            [
                ("cpuFlags".to_string(), json!(""), json!("+aes"), Effect::NeedsReboot),
                ("numa".into(), json!(false), json!(true), Effect::NeedsReboot),
                ("serial".into(), json!(false), json!(true), Effect::NeedsReboot),
                ("vga".into(), json!(null), json!("serial0"), Effect::NeedsReboot),
                ("startup".into(), json!(""), json!("order=1,up=30"), Effect::Hotplug),
            ]
        );
        assert!(changes(&desired, &desired).is_empty(), "the same hardware is in sync");
    }

    #[test]
    fn undeclared_keys_keep_what_proxmox_has() {
        let live = Hardware {
            numa: Some(true),
            serial: Some(true),
            vga: Some("qxl".into()),
            startup: Some(Startup::parse("order=3")),
            ..Hardware::default()
        };
        assert!(changes(&Hardware::default(), &live).is_empty());
    }

    #[test]
    fn flags_are_a_set_and_undeclared_flags_are_removed() {
        let live = Hardware { cpu_flags: flags(&["-pcid", "+aes"]), ..Hardware::default() };
        let same = Hardware { cpu_flags: flags(&["+aes", "-pcid"]), ..Hardware::default() };
        assert!(changes(&same, &live).is_empty());
        assert_eq!(
            changes(&Hardware::default(), &live),
            [("cpuFlags".to_string(), json!("+aes;-pcid"), json!(""), Effect::NeedsReboot)]
        );
    }

    #[test]
    fn mapped_devices_are_added_changed_and_removed_pci_at_reboot_usb_where_it_hot_plugs() {
        let gpu = PciDevice { mapping: "gpu".into(), pcie: true, rombar: true, x_vga: false };
        let stick = UsbDevice { mapping: "zigbee".into(), usb3: false };
        let desired = Hardware {
            pci: BTreeMap::from([("hostpci0".to_string(), gpu.clone())]),
            usb: BTreeMap::from([("usb0".to_string(), stick.clone())]),
            ..Hardware::default()
        };
        let live = Hardware {
            usb: BTreeMap::from([("usb1".to_string(), stick.clone())]),
            usb_hotplug: true,
            ..Hardware::default()
        };
        assert_eq!(
            changes(&desired, &live),
            [
                ("pci.hostpci0".to_string(), json!(null), json!("mapping=gpu,pcie=1"), Effect::NeedsReboot),
                ("usb.usb0".into(), json!(null), json!("mapping=zigbee"), Effect::Hotplug),
                ("usb.usb1".into(), json!("mapping=zigbee"), json!(null), Effect::Hotplug),
            ]
        );
        let cold = Hardware { usb_hotplug: false, ..live };
        assert!(
            changes(&desired, &cold)
                .iter()
                .filter(|c| c.0.starts_with("usb"))
                .all(|c| c.3 == Effect::NeedsReboot)
        );
    }

    #[test]
    fn a_tpm_is_added_and_a_new_version_or_efi_keys_replace_the_vm() {
        let v2 = Tpm { version: "v2.0".into(), storage: "local-lvm".into() };
        let desired =
            Hardware { tpm: Some(v2.clone()), efi_pre_enrolled_keys: Some(true), ..Hardware::default() };
        let mut out = SpecDiff::default();
        diff(&desired, &Hardware::default(), &mut out);
        assert_eq!(out.updates.len(), 1, "added: {:?}", out.updates);
        assert_eq!(out.updates[0].after, Some(json!("v2.0 on local-lvm")));
        assert!(out.replacements.is_empty(), "no EFI disk to compare with");
        let live = Hardware {
            tpm: Some(Tpm { version: "v1.2".into(), ..v2 }),
            efi_pre_enrolled_keys: Some(false),
            ..Hardware::default()
        };
        let mut out = SpecDiff::default();
        diff(&desired, &live, &mut out);
        let reasons: Vec<&str> = out.replacements.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "the TPM's version changes from v1.2 to v2.0, and its state cannot be converted",
                "the EFI disk's pre-enrolled keys change, which Proxmox only sets when it creates the EFI disk"
            ]
        );
    }

    #[test]
    fn a_serial_host_device_is_roots_and_left_alone() {
        let device = Hardware { serial: Some(false), ..Hardware::default() };
        let off = Hardware { serial: Some(false), ..Hardware::default() };
        assert!(changes(&off, &device).is_empty());
        let on = Hardware { serial: Some(true), ..Hardware::default() };
        assert!(changes(&on, &device).is_empty());
        let socket = Hardware { serial: Some(true), ..Hardware::default() };
        assert_eq!(
            changes(&off, &socket),
            [("serial".to_string(), json!(true), json!(false), Effect::NeedsReboot)]
        );
    }
}
