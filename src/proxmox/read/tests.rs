use super::*;
use crate::metadata::{Metadata, Notes};
use crate::spec::{DiskSpec, NetSpec};
use serde_json::json;

const G: u64 = 1 << 30;

fn object(value: Value) -> Map<String, Value> {
    value.as_object().expect("object").clone()
}

#[test]
fn absent_keys_take_proxmox_defaults() {
    let live = live_config(&object(json!({"name": "bare", "digest": "abc"})), BTreeSet::new());
    assert_eq!(
        live.spec,
        VmSpec {
            name: "bare".into(),
            cores: 1,
            sockets: 1,
            cpu_type: "kvm64".into(),
            memory_mib: 512,
            balloon_mib: None,
            bios: Bios::Seabios,
            machine: None,
            agent: false,
            disks: Default::default(),
            networks: Default::default(),
            tags: BTreeSet::new(),
            description: String::new(),
            on_boot: false,
            protection: false,
            pool: None,
            // No `hotplug` key: Proxmox's default, `network,disk,usb`.
            hardware: crate::spec::Hardware { usb_hotplug_feature: true, ..Default::default() },
        }
    );
    assert_eq!(live.digest, "abc");
    assert_eq!(live.metadata, None);
}

/// A config as PVE 9 returns it for a VM nixprox created and installed.
#[test]
fn full_config() {
    let metadata =
        Metadata { host: "web".into(), system: Some("/nix/store/x-system".into()), ..Default::default() };
    let notes = Notes::render("Reverse proxy.", &metadata);
    let config = object(json!({
        "name": "web", "cores": 4, "sockets": "2", "cpu": "x86-64-v2-AES,flags=+aes", "memory": "4096",
        "balloon": 1024, "bios": "ovmf", "machine": "q35,viommu=virtio", "agent": "enabled=1,fstrim_cloned_disks=1",
        "onboot": 1, "protection": "1", "tags": "nixprox;Web;prod", "description": notes,
        "scsi0": "local-lvm:vm-101-disk-0,size=20G,discard=on,ssd=1,iothread=1,serial=root",
        "virtio1": "ceph-pool:vm-101-disk-1,size=100G",
        "ide2": "none,media=cdrom", "ide0": "local-lvm:vm-101-cloudinit,media=cdrom",
        "efidisk0": "local-lvm:vm-101-disk-2,efitype=4m,size=4M", "unused0": "local-lvm:vm-101-disk-9",
        "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0,tag=20,firewall=1",
        "net1": "e1000=bc:24:11:00:00:02,bridge=vmbr1",
        "scsihw": "virtio-scsi-single", "boot": "order=scsi0;net0", "digest": "d1"
    }));
    let live = live_config(&config, ["memory".to_string()].into());
    let spec = &live.spec;
    assert_eq!((spec.cores, spec.sockets, spec.memory_mib, spec.balloon_mib), (4, 2, 4096, Some(1024)));
    assert_eq!(spec.cpu_type, "x86-64-v2-AES");
    assert_eq!(spec.bios, Bios::Ovmf);
    assert_eq!(spec.machine.as_deref(), Some("q35"));
    assert!(spec.agent && spec.on_boot && spec.protection);
    assert_eq!(spec.tags, ["prod".to_string(), "web".to_string()].into());
    assert_eq!(spec.description, "Reverse proxy.");
    assert_eq!(live.metadata, Some(metadata));
    assert_eq!(live.pending, ["memory".to_string()].into());
    assert_eq!(spec.disks.keys().collect::<Vec<_>>(), ["scsi0", "virtio1"]);
    assert_eq!(
        spec.disks["scsi0"],
        DiskSpec {
            storage: "local-lvm".into(),
            size_bytes: 20 * G,
            serial: Some("root".into()),
            discard: true,
            ssd: true,
            iothread: true
        }
    );
    assert_eq!(spec.disks["virtio1"].size_bytes, 100 * G);
    assert_eq!(
        spec.networks["net0"],
        NetSpec {
            model: "virtio".into(),
            mac: Some("BC:24:11:00:00:01".into()),
            bridge: "vmbr0".into(),
            vlan: Some(20),
            firewall: true
        }
    );
    assert_eq!(spec.networks["net1"].mac.as_deref(), Some("BC:24:11:00:00:02"));
}

#[test]
fn boot_disks_follow_qemu_servers_rules() {
    let disks = |config: Value| boot_disks(&object(config));
    let base = json!({"virtio0": "local-lvm:vm-1-disk-0,size=32G", "scsi1": "local-lvm:vm-1-disk-1,size=8G",
                      "ide2": "local:iso/x.iso,media=cdrom", "net0": "virtio,bridge=vmbr0"});
    let with = |key: &str, value: &str| {
        let mut config = base.clone();
        config[key] = json!(value);
        config
    };
    assert_eq!(disks(with("boot", "order=virtio0;ide2;net0")), ["virtio0"]);
    assert_eq!(disks(with("boot", "order=ide2;scsi1;virtio0")), ["scsi1", "virtio0"]);
    // Legacy forms: `bootdisk`, else the first disk in qemu-server's bus order.
    assert_eq!(disks(with("bootdisk", "virtio0")), ["virtio0"]);
    assert_eq!(disks(with("boot", "cdn")), ["scsi1"]);
    assert_eq!(disks(base.clone()), ["scsi1"]);
    assert_eq!(disks(json!({"scsi10": "a:b,size=1G", "scsi2": "a:c,size=1G"})), ["scsi2"]);
    assert!(disks(json!({"ide2": "none,media=cdrom"})).is_empty());
}

#[test]
fn memory_as_property_string_and_agent_forms() {
    let live = live_config(&object(json!({"memory": "current=2048", "agent": 1})), BTreeSet::new());
    assert_eq!(live.spec.memory_mib, 2048);
    assert!(live.spec.agent);
    let live = live_config(&object(json!({"memory": 1024, "agent": "0"})), BTreeSet::new());
    assert_eq!(live.spec.memory_mib, 1024);
    assert!(!live.spec.agent);
}

#[test]
fn pending_values_overlay_the_config() {
    let mut config = serde_json::json!({"cores": 2, "memory": "4096", "net1": "virtio,bridge=vmbr0"});
    let map = config.as_object_mut().expect("object");
    let pending = serde_json::json!([
        {"key": "cores", "value": 2, "pending": 4},
        {"key": "memory", "value": "4096"},
        {"key": "net1", "value": "virtio,bridge=vmbr0", "delete": 1}
    ]);
    overlay_pending(map, &pending);
    assert_eq!(serde_json::Value::Object(map.clone()), serde_json::json!({"cores": 4, "memory": "4096"}));
}

#[test]
fn pending_changes_and_deletions() {
    let data = json!([
        {"key": "cores", "value": 2, "pending": 4},
        {"key": "memory", "value": "2048"},
        {"key": "net1", "value": "virtio,bridge=vmbr0", "delete": 1},
        {"key": "tags", "value": "a", "delete": 0}
    ]);
    assert_eq!(pending_keys(&data), Ok(["cores".to_string(), "net1".to_string()].into()));
    assert!(pending_keys(&json!({})).is_err());
}

#[test]
fn resources_keep_vms_and_containers_with_their_kind_sorted_by_vmid() {
    let data = json!([
        {"id": "qemu/300", "type": "qemu", "vmid": 300, "node": "pve2", "name": "db", "status": "running", "template": 0, "tags": "nixprox;DB"},
        {"id": "lxc/200", "type": "lxc", "vmid": 200, "node": "pve1", "name": "ct", "status": "running"},
        {"id": "node/pve1", "type": "node", "node": "pve1", "status": "online"},
        {"id": "storage/pve1/local", "type": "storage", "node": "pve1", "storage": "local"},
        {"id": "qemu/9000", "type": "qemu", "vmid": "9000", "node": "pve1", "name": "debian-12", "status": "stopped", "template": 1, "lock": ""},
        {"id": "qemu/101", "type": "qemu", "vmid": 101, "node": "pve1", "name": "web", "status": "stopped", "lock": "backup", "pool": "lab"}
    ]);
    let listed = parse_resources(&data).expect("valid");
    assert_eq!(listed[0].1.as_deref(), Some("lab"));
    let vms: Vec<LiveVm> = listed.into_iter().map(|(vm, _)| vm).collect();
    assert_eq!(vms.iter().map(|vm| vm.vmid).collect::<Vec<_>>(), [101, 200, 300, 9000]);
    let kinds: Vec<GuestKind> = vms.iter().map(|vm| vm.kind).collect();
    assert_eq!(kinds, [GuestKind::Vm, GuestKind::Container, GuestKind::Vm, GuestKind::Vm]);
    assert_eq!(vms[0].lock.as_deref(), Some("backup"));
    assert!(vms[2].is_managed());
    assert_eq!(vms[2].tags, ["db".to_string(), "nixprox".to_string()].into());
    assert!(vms[3].template && vms[3].lock.is_none());
    assert!(parse_resources(&json!([{"type": "qemu", "node": "pve1"}])).is_err());
    assert!(parse_resources(&json!([{"type": "lxc", "node": "pve1"}])).is_err());
}

#[test]
fn a_container_template_is_no_clone_source() {
    let mut ct = vm(9001, "debian-12", "pve1", true);
    ct.kind = GuestKind::Container;
    let vms = vec![ct, vm(9000, "debian-12", "pve1", true)];
    assert_eq!(find_template(&vms, "debian-12", None).map(|v| v.vmid), Ok(9000));
    assert!(matches!(find_template(&vms, "9001", None), Err(TemplateError::NotFound { .. })));
}

fn vm(vmid: u32, name: &str, node: &str, template: bool) -> LiveVm {
    LiveVm {
        vmid,
        kind: Default::default(),
        node: node.into(),
        name: name.into(),
        status: "stopped".into(),
        template,
        lock: None,
        tags: BTreeSet::new(),
        config: None,
        ha_state: None,
    }
}

#[test]
fn templates_by_name_or_vmid() {
    let vms = vec![
        vm(101, "web", "pve1", false),
        vm(9000, "debian-12", "pve1", true),
        vm(9001, "nixos", "pve1", true),
        vm(9101, "nixos", "pve2", true),
    ];
    assert_eq!(find_template(&vms, "9000", None).map(|v| v.vmid), Ok(9000));
    assert_eq!(find_template(&vms, "debian-12", None).map(|v| v.vmid), Ok(9000));
    assert_eq!(find_template(&vms, "nixos", Some("pve2")).map(|v| v.vmid), Ok(9101));
    assert_eq!(
        find_template(&vms, "nixos", None).expect_err("ambiguous").to_string(),
        "template name `nixos` is ambiguous: VMs 9001, 9101 carry it (name the template by VMID)"
    );
    assert_eq!(
        find_template(&vms, "101", None).expect_err("not a template").to_string(),
        "VM 101 (`web`) is not a template (convert it with `qm template 101`, or name a template)"
    );
    assert_eq!(
        find_template(&vms, "web", None).expect_err("not a template"),
        TemplateError::NotATemplate { vmid: 101, name: "web".into() }
    );
    assert_eq!(
        find_template(&vms, "ubuntu", None).expect_err("missing").to_string(),
        "template `ubuntu` not found (templates in the cluster: `debian-12` (9000), `nixos` (9001), `nixos` (9101); set `nixprox.proxmox.template` or `defaults.template` to one of them, by name or VMID)"
    );
    assert_eq!(
        find_template(&[], "x", None).expect_err("missing").to_string(),
        "template `x` not found (templates in the cluster: none; set `nixprox.proxmox.template` or `defaults.template` to one of them, by name or VMID)"
    );
}

#[test]
fn current_values_undo_what_waits_for_a_reboot() {
    // `GET …/config` as Proxmox answers it by default: pending values applied (net2 is a
    // pending addition, net1 a pending deletion already gone).
    let mut config = json!({"cores": 4, "memory": "4096", "net2": "virtio,bridge=vmbr1"});
    let map = config.as_object_mut().expect("object");
    let pending = json!([
        {"key": "cores", "value": 2, "pending": 4},
        {"key": "memory", "value": "2048", "pending": "4096"},
        {"key": "net1", "value": "virtio,bridge=vmbr0", "delete": 1},
        {"key": "net2", "pending": "virtio,bridge=vmbr1"},
        {"key": "tags", "value": "a"}
    ]);
    current_values(map, &pending);
    assert_eq!(
        serde_json::Value::Object(map.clone()),
        json!({"cores": 2, "memory": "2048", "net1": "virtio,bridge=vmbr0"})
    );
}
