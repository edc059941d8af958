//! Disks an existing VM has and the flake does not declare. Taking a disk away from a guest
//! is destructive even though Proxmox keeps the volume (as `unusedN`): a system that boots or
//! mounts from it breaks. So it is its own action kind, `detach_disk`, gated by
//! `policies.allow_detach_disks`, refused on a protected VM, and never allowed on the disk the
//! VM boots from. The usual cause is a slot mismatch (the flake says `scsi0`, the VM has
//! `virtio0`): the reason says how to declare the VM's real slots instead, and while a detach
//! is blocked, the disks the flake adds wait with it (adding `scsi0` next to the real
//! `virtio0` is not what anyone meant).

use crate::config::Policies;
use crate::proxmox::LiveConfig;
use crate::spec::{DiskSpec, format_size};

use super::model::{Action, ActionKind, Blocked, Change};

/// The `detach_disk` action for `detaches` (from [`super::fields::diff`]), if any. A blocked
/// one takes the disk additions out of `updates`: they are shown in it and wait for it.
pub(super) fn plan_detach(
    vmid: u32,
    config: &LiveConfig,
    detaches: Vec<Change>,
    updates: &mut Vec<Change>,
    policies: Policies,
) -> Option<Action> {
    if detaches.is_empty() {
        return None;
    }
    let slots: Vec<&str> = detaches.iter().filter_map(|c| c.field.strip_prefix("disks.")).collect();
    let hints: Vec<String> =
        slots.iter().filter_map(|slot| config.spec.disks.get(*slot).map(|d| declaration(slot, d))).collect();
    let reason = format!(
        "VM {vmid} has disks the flake does not declare ({}); if they are the disks the flake means, declare them under their real slots in `nixprox.vm.disks` ({}; `nixprox import {vmid}` prints the VM's whole block)",
        slots.join(", "),
        hints.join(" ")
    );
    let booting: Vec<&str> =
        slots.iter().copied().filter(|slot| config.boot_disks.iter().any(|b| b == slot)).collect();
    let blocked = if !booting.is_empty() {
        Some(Blocked {
            reason: format!(
                "{} is the disk VM {vmid} boots from: nixprox never detaches a boot disk",
                booting.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(" and ")
            ),
            setting: None,
        })
    } else if config.spec.protection {
        Some(Blocked {
            reason: "the VM is protected in Proxmox; nixprox never detaches a disk of a protected VM".into(),
            setting: None,
        })
    } else if !policies.allow_detach_disks {
        Some(Blocked {
            reason: "detaching takes the disk away from the guest (Proxmox keeps the volume as `unusedN`)"
                .into(),
            setting: Some("policies.allow_detach_disks".into()),
        })
    } else {
        None
    };
    let mut changes = detaches;
    let mut reason = reason;
    if blocked.is_some() {
        let (added, kept): (Vec<Change>, Vec<Change>) =
            std::mem::take(updates).into_iter().partition(is_disk_addition);
        *updates = kept;
        if !added.is_empty() {
            let fields: Vec<String> = added.iter().map(|c| format!("`{}`", c.field)).collect();
            reason.push_str(&format!(
                "; {} waits with it: nixprox adds a disk only once the VM's own disks are declared or detached",
                fields.join(", ")
            ));
        }
        changes.extend(added);
    }
    Some(Action { kind: ActionKind::DetachDisk, reason, changes, blocked })
}

/// A new disk for a slot the VM does not have.
fn is_disk_addition(change: &Change) -> bool {
    change.before.is_none() && change.field.strip_prefix("disks.").is_some_and(|slot| !slot.contains('.'))
}

/// `virtio0 = { storage = "local-lvm"; size = "32G"; };`, the option the disk would need.
fn declaration(slot: &str, disk: &DiskSpec) -> String {
    format!("`{slot} = {{ storage = \"{}\"; size = \"{}\"; }};`", disk.storage, format_size(disk.size_bytes))
}
