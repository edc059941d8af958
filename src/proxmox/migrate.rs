//! Moving a VM to another node (`/nodes/{node}/qemu/{vmid}/migrate`), as qemu-server's
//! `API2/Qemu.pm` (`migrate_vm_precondition`, `migrate_vm`) and `QemuMigrate.pm` define it:
//!
//! - `GET …/migrate?target=…` answers whether the VM runs, which nodes lack a storage it uses
//!   (`not_allowed_nodes`), its volumes on storages that are not shared (`local_disks`) and
//!   the local resources (PCI, USB) that pin it to its node;
//! - `POST …/migrate` with `target`: a running VM needs `online=1` ("can't migrate running VM
//!   without --online"), and a running VM with attached local disks also `with-local-disks=1`
//!   (the worker refuses otherwise); a stopped VM is moved offline, local disks included. The
//!   VM keeps its VMID and config. Privilege: `VM.Migrate` on `/vms/{vmid}`.
//!
//! A container moves through `/nodes/{node}/lxc/{vmid}/migrate` as pve-container's
//! `API2/LXC.pm` (`migrate_vm`) and `LXC/Migrate.pm` define it: containers cannot migrate live
//! (`online=1` fails: "lxc live migration is currently not implemented"), so a running
//! container needs `restart=1` ("can't migrate running container without --online or
//! --restart"): it is shut down (within `timeout`, 180 s by default), moved and started again
//! on the target; a stopped one is moved offline. Volumes on storages that are not shared are
//! copied to the storage of the same name on the target (`target-storage` would map them to
//! another; nixprox keeps the declared storage). Same VMID, same config, same privilege.

use serde_json::Value;

use super::property::{value_bool, value_text};
use super::{Client, ProxmoxError};

/// What `GET …/migrate` says about moving a VM to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateCheck {
    pub running: bool,
    /// Attached volumes (not CD-ROMs) on storages that are not shared: copied with the VM.
    pub local_disks: Vec<String>,
    /// Local resources (PCI or USB passthrough, …) that keep the VM on its node.
    pub local_resources: Vec<String>,
    /// Storages the VM uses that the target node does not have.
    pub unavailable_storages: Vec<String>,
}

impl MigrateCheck {
    /// Why the VM cannot move to `target`, with the fix; `None` when it can.
    pub fn blocker(&self, vmid: u32, target: &str) -> Option<String> {
        if !self.unavailable_storages.is_empty() {
            return Some(format!(
                "VM {vmid} cannot move to node `{target}`: its storage {} is not available there (make the storage available on `{target}`, or declare disks on a storage `{target}` has, which plans a `replace_vm`)",
                self.unavailable_storages.join(", ")
            ));
        }
        if !self.local_resources.is_empty() {
            return Some(format!(
                "VM {vmid} cannot move to node `{target}`: it uses local resources ({}) that only its node has",
                self.local_resources.join(", ")
            ));
        }
        None
    }

    /// The `POST …/migrate` form: live for a running VM, its local disks with it.
    pub fn form(&self, target: &str) -> Vec<(String, String)> {
        let mut form = vec![("target".to_string(), target.to_string())];
        if self.running {
            form.push(("online".into(), "1".into()));
            if !self.local_disks.is_empty() {
                form.push(("with-local-disks".into(), "1".into()));
            }
        }
        form
    }
}

/// The `POST /nodes/{node}/lxc/{vmid}/migrate` form: restart mode for a running container
/// (it cannot move live), offline otherwise.
pub fn container_form(running: bool, target: &str) -> Vec<(String, String)> {
    let mut form = vec![("target".to_string(), target.to_string())];
    if running {
        form.push(("restart".into(), "1".into()));
    }
    form
}

/// `GET /nodes/{node}/qemu/{vmid}/migrate?target=…`.
pub async fn migrate_check(
    client: &Client,
    node: &str,
    vmid: u32,
    target: &str,
) -> Result<MigrateCheck, ProxmoxError> {
    let path = format!("/nodes/{node}/qemu/{vmid}/migrate");
    let data = client.get(&path, &[("target", target)]).await?;
    Ok(parse_check(&data, target))
}

fn parse_check(data: &Value, target: &str) -> MigrateCheck {
    let strings = |value: Option<&Value>| -> Vec<String> {
        value.and_then(Value::as_array).into_iter().flatten().filter_map(value_text).collect()
    };
    let local_disks = data
        .get("local_disks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|disk| !disk.get("cdrom").and_then(value_bool).unwrap_or(false))
        .filter(|disk| !disk.get("is_unused").and_then(value_bool).unwrap_or(false))
        .filter_map(|disk| disk.get("volid").and_then(value_text))
        .collect();
    let blocked = data.get("not_allowed_nodes").and_then(|n| n.get(target));
    MigrateCheck {
        running: data.get("running").and_then(value_bool).unwrap_or(false),
        local_disks,
        local_resources: strings(data.get("local_resources")),
        unavailable_storages: strings(blocked.and_then(|b| b.get("unavailable_storages"))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_running_vm_with_local_disks_moves_live_with_them() {
        // The shape qemu-server 9 answers (API2/Qemu.pm, migrate_vm_precondition).
        let answer = json!({
            "running": 1, "allowed_nodes": ["pve2"], "not_allowed_nodes": {},
            "local_disks": [
                {"volid": "local-lvm:vm-101-disk-0", "size": 21474836480u64, "drivename": "scsi0"},
                {"volid": "local-lvm:vm-101-cloudinit", "cdrom": 1, "size": 4194304},
                {"volid": "local-lvm:vm-101-disk-9", "is_unused": 1, "size": 1}
            ],
            "local_resources": [], "mapped-resources": [], "mapped-resource-info": {}, "has-dbus-vmstate": 1
        });
        let check = parse_check(&answer, "pve2");
        assert_eq!(check.local_disks, ["local-lvm:vm-101-disk-0"]);
        assert_eq!(check.blocker(101, "pve2"), None);
        let form = check.form("pve2");
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(form, [("target", "pve2"), ("online", "1"), ("with-local-disks", "1")]);
        let stopped = MigrateCheck { running: false, ..check };
        assert_eq!(stopped.form("pve2"), [("target".to_string(), "pve2".to_string())]);
    }

    #[test]
    fn a_running_container_moves_in_restart_mode_a_stopped_one_offline() {
        assert_eq!(
            container_form(true, "pve2"),
            [("target".to_string(), "pve2".to_string()), ("restart".to_string(), "1".to_string())]
        );
        assert_eq!(container_form(false, "pve2"), [("target".to_string(), "pve2".to_string())]);
    }

    #[test]
    fn a_missing_storage_or_a_local_device_blocks_the_move() {
        let answer = json!({"running": 0, "allowed_nodes": [], "local_disks": [], "local_resources": ["hostpci0"],
                            "not_allowed_nodes": {"pve2": {"unavailable_storages": ["tank"]}}});
        let check = parse_check(&answer, "pve2");
        let blocker = check.blocker(101, "pve2").expect("blocked");
        assert!(blocker.contains("storage tank is not available there"), "{blocker}");
        let device = MigrateCheck { unavailable_storages: vec![], ..check };
        assert!(device.blocker(101, "pve2").expect("blocked").contains("hostpci0"));
    }
}
