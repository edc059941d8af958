//! Field-level comparison of two [`VmSpec`]s, named like the NixOS module's options so a
//! reviewer can map every line of a plan back to the flake.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::metadata::Notes;
use crate::spec::{DiskSpec, NetSpec, SizeCheck, VmSpec, check_size, format_size};

use super::model::{Change, Effect};

/// What comparing a desired spec with a live one found, sorted into action kinds.
#[derive(Debug, Default)]
pub struct SpecDiff {
    /// In-place changes (`update_vm`).
    pub updates: Vec<Change>,
    /// Disks that grow (`resize_disk`).
    pub grows: Vec<Change>,
    /// Changes Proxmox cannot make in place, with the reason (`replace_vm`).
    pub replacements: Vec<(Change, String)>,
    /// Disks the VM has and the flake does not declare (`detach_disk`, gated).
    pub detaches: Vec<Change>,
}

/// Every field of a spec as `(field, value)`, in display order: the `after` side of a create.
pub fn all_fields(spec: &VmSpec) -> Vec<(String, Value)> {
    let mut fields = vec![
        ("name".to_string(), json!(spec.name)),
        ("cores".into(), json!(spec.cores)),
        ("sockets".into(), json!(spec.sockets)),
        ("cpuType".into(), json!(spec.cpu_type)),
        ("memory".into(), json!(spec.memory_mib)),
    ];
    if let Some(balloon) = spec.balloon_mib {
        fields.push(("balloon".into(), json!(balloon)));
    }
    fields.push(("bios".into(), json!(spec.bios.as_str())));
    if let Some(machine) = &spec.machine {
        fields.push(("machine".into(), json!(machine)));
    }
    fields.push(("agent".into(), json!(spec.agent)));
    for (slot, disk) in &spec.disks {
        fields.push((format!("disks.{slot}"), disk_value(disk)));
    }
    for (slot, net) in &spec.networks {
        fields.push((format!("networks.{slot}"), net_value(net)));
    }
    fields.push(("tags".into(), json!(spec.tags)));
    fields.push(("description".into(), json!(spec.description)));
    fields.push(("onBoot".into(), json!(spec.on_boot)));
    fields.push(("protection".into(), json!(spec.protection)));
    if let Some(pool) = &spec.pool {
        fields.push(("pool".into(), json!(pool)));
    }
    fields.extend(super::hardware::fields(&spec.hardware));
    fields
}

/// A disk as one compact value, as Proxmox would show it.
pub fn disk_value(disk: &DiskSpec) -> Value {
    let mut text = format!("{},size={}", disk.storage, format_size(disk.size_bytes));
    if let Some(serial) = &disk.serial {
        text.push_str(&format!(",serial={serial}"));
    }
    for (flag, on) in [("discard=on", disk.discard), ("ssd=1", disk.ssd), ("iothread=1", disk.iothread)] {
        if on {
            text.push(',');
            text.push_str(flag);
        }
    }
    json!(text)
}

/// A NIC as one compact value, as Proxmox would show it.
pub fn net_value(net: &NetSpec) -> Value {
    let mut text = match &net.mac {
        Some(mac) => format!("{}={mac},bridge={}", net.model, net.bridge),
        None => format!("{},bridge={}", net.model, net.bridge),
    };
    if let Some(vlan) = net.vlan {
        text.push_str(&format!(",tag={vlan}"));
    }
    if net.firewall {
        text.push_str(",firewall=1");
    }
    json!(text)
}

fn change(field: impl Into<String>, before: Value, after: Value, effect: Option<Effect>) -> Change {
    Change { field: field.into(), before: Some(before), after: Some(after), effect }
}

/// Compares what the flake wants with what Proxmox has.
///
/// Desired-side `None`s (balloon, machine, MAC) mean "not declared" and are not compared.
pub fn diff(desired: &VmSpec, live: &VmSpec) -> SpecDiff {
    let mut out = SpecDiff::default();
    let mut update = |field: &str, before: Value, after: Value, effect: Effect| {
        if before != after {
            out.updates.push(change(field, before, after, Some(effect)));
        }
    };
    // Metadata-only settings apply at once; CPU, memory and firmware need a reboot
    // (Proxmox's default hotplug set is network, disk and usb).
    update("name", json!(live.name), json!(desired.name), Effect::Hotplug);
    update("cores", json!(live.cores), json!(desired.cores), Effect::NeedsReboot);
    update("sockets", json!(live.sockets), json!(desired.sockets), Effect::NeedsReboot);
    update("cpuType", json!(live.cpu_type), json!(desired.cpu_type), Effect::NeedsReboot);
    update("memory", json!(live.memory_mib), json!(desired.memory_mib), Effect::NeedsReboot);
    if desired.balloon_mib.is_some() {
        update("balloon", json!(live.balloon_mib), json!(desired.balloon_mib), Effect::NeedsReboot);
    }
    if desired.machine.is_some() {
        update("machine", json!(live.machine), json!(desired.machine), Effect::NeedsReboot);
    }
    update("agent", json!(live.agent), json!(desired.agent), Effect::NeedsReboot);
    update("tags", json!(live.tags), json!(desired.tags), Effect::Hotplug);
    // An empty description leaves the notes alone: adopting a VM must not erase what its
    // owner wrote there. Trailing white space is not a difference (Proxmox drops it).
    if !desired.description.is_empty() && !Notes::same_text(&desired.description, &live.description) {
        update("description", json!(live.description), json!(desired.description), Effect::Hotplug);
    }
    update("onBoot", json!(live.on_boot), json!(desired.on_boot), Effect::Hotplug);
    update("protection", json!(live.protection), json!(desired.protection), Effect::Hotplug);
    update("pool", json!(live.pool), json!(desired.pool), Effect::Hotplug);
    if desired.bios != live.bios {
        out.replacements.push((
            change("bios", json!(live.bios.as_str()), json!(desired.bios.as_str()), None),
            format!(
                "the firmware changes from {} to {}, which Proxmox cannot do in place",
                live.bios.as_str(),
                desired.bios.as_str()
            ),
        ));
    }
    super::hardware::diff(&desired.hardware, &live.hardware, &mut out);
    diff_disks(&desired.disks, &live.disks, &mut out);
    diff_networks(&desired.networks, &live.networks, &mut out);
    // A replacement recreates the VM from the declaration: it says what it would lose.
    if !out.replacements.is_empty()
        && let Some(lost) = super::hardware::lost_on_replace(desired, &live.hardware)
    {
        out.replacements.push(lost);
    }
    out
}

fn diff_disks(desired: &BTreeMap<String, DiskSpec>, live: &BTreeMap<String, DiskSpec>, out: &mut SpecDiff) {
    for (slot, want) in desired {
        let Some(have) = live.get(slot) else {
            out.updates.push(Change {
                field: format!("disks.{slot}"),
                before: None,
                after: Some(disk_value(want)),
                effect: Some(Effect::Hotplug),
            });
            continue;
        };
        let field = |name: &str| format!("disks.{slot}.{name}");
        if want.storage != have.storage {
            out.replacements.push((
                change(field("storage"), json!(have.storage), json!(want.storage), None),
                format!("disk {slot} moves from storage {} to {}", have.storage, want.storage),
            ));
        }
        let (before, after) = (format_size(have.size_bytes), format_size(want.size_bytes));
        // A disk a little larger than declared is what the storage made of the declared size.
        match check_size(want.size_bytes, have.size_bytes) {
            SizeCheck::Grow => out.grows.push(change(field("size"), json!(before), json!(after), None)),
            SizeCheck::InSync => {}
            SizeCheck::Shrink => out.replacements.push((
                change(field("size"), json!(before), json!(after), None),
                format!("disk {slot} would shrink from {before} to {after}, and Proxmox cannot shrink disks"),
            )),
        }
        let mut option = |name: &str, before: Value, after: Value| {
            if before != after {
                out.updates.push(change(field(name), before, after, Some(Effect::NeedsReboot)));
            }
        };
        option("serial", json!(have.serial), json!(want.serial));
        option("discard", json!(have.discard), json!(want.discard));
        option("ssd", json!(have.ssd), json!(want.ssd));
        option("iothread", json!(have.iothread), json!(want.iothread));
    }
    for (slot, have) in live {
        if !desired.contains_key(slot) {
            // Proxmox detaches a removed disk as `unusedN` (the data stays on the storage), but
            // the guest loses it: never a plain update (see `plan::detach`).
            out.detaches.push(Change {
                field: format!("disks.{slot}"),
                before: Some(disk_value(have)),
                after: None,
                effect: None,
            });
        }
    }
}

fn diff_networks(desired: &BTreeMap<String, NetSpec>, live: &BTreeMap<String, NetSpec>, out: &mut SpecDiff) {
    for (slot, want) in desired {
        let Some(have) = live.get(slot) else {
            out.updates.push(Change {
                field: format!("networks.{slot}"),
                before: None,
                after: Some(net_value(want)),
                effect: Some(Effect::Hotplug),
            });
            continue;
        };
        let mut option = |name: &str, before: Value, after: Value| {
            if before != after {
                out.updates.push(change(
                    format!("networks.{slot}.{name}"),
                    before,
                    after,
                    Some(Effect::Hotplug),
                ));
            }
        };
        option("model", json!(have.model), json!(want.model));
        if want.mac.is_some() {
            option("macAddress", json!(have.mac), json!(want.mac));
        }
        option("bridge", json!(have.bridge), json!(want.bridge));
        option("vlan", json!(have.vlan), json!(want.vlan));
        option("firewall", json!(have.firewall), json!(want.firewall));
    }
    for (slot, have) in live {
        if !desired.contains_key(slot) {
            out.updates.push(Change {
                field: format!("networks.{slot}"),
                before: Some(net_value(have)),
                after: None,
                effect: Some(Effect::Hotplug),
            });
        }
    }
}
