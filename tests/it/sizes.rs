//! Disk sizes that are not whole GiB, or that a storage rounds up, read back as in sync:
//! through the binary against fakepve with an LVM and a ZFS storage (the driver models qemu
//! `/resize` and each storage's rounding from the Proxmox sources).

use serde_json::{Value, json};

use crate::support::cli::{kinds, nixprox_in, plan_and_apply, plan_hosts};
use crate::support::fakepve::{FakePve, Scenario};
use crate::support::nix::Fixture;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// The `sizes` fixture and a cluster with its storages and a template with a 2G disk.
fn lab(zfs_blocksize: Option<&str>) -> (Fixture, FakePve) {
    let mut tank = json!({"type": "zfspool", "pool": "tank/vms", "content": "images,rootdir"});
    if let Some(blocksize) = zfs_blocksize {
        tank["blocksize"] = json!(blocksize);
    }
    let scenario = Scenario::new()
        .set(
            "storages",
            json!({"lvm": {"type": "lvm", "vgname": "vg0", "content": "images,rootdir"}, "tank": tank}),
        )
        .guest(json!({
            "vmid": 9001, "name": "small-bootstrap", "node": "pve1", "status": "stopped", "template": true,
            "config": {
                "memory": "1024", "cores": 1, "agent": "1", "ostype": "l26", "scsihw": "virtio-scsi-single",
                "scsi0": "local-lvm:base-9001-disk-0,size=2G", "ide2": "local-lvm:vm-9001-cloudinit,media=cdrom",
                "net0": "virtio=BC:24:11:00:90:01,bridge=vmbr0", "boot": "order=scsi0", "template": 1
            }
        }));
    (Fixture::copy("sizes"), FakePve::start(scenario))
}

fn vm_named(pve: &FakePve, name: &str) -> Value {
    let vms = pve.command(json!({"cmd": "vms"}));
    let found: Vec<&Value> = vms.as_array().expect("vms").iter().filter(|v| v["name"] == name).collect();
    assert_eq!(found.len(), 1, "exactly one VM `{name}`: {vms:#}");
    pve.vm(u32::try_from(found[0]["vmid"].as_u64().expect("vmid")).expect("vmid fits"))
}

/// `size=` of a drive, in bytes.
fn size_of(vm: &Value, slot: &str) -> u64 {
    let drive = vm["config"][slot].as_str().unwrap_or_else(|| panic!("no {slot}: {vm:#}"));
    let size = drive.split(',').find_map(|p| p.strip_prefix("size=")).expect("size=");
    nixprox::spec::parse_size(size, 1).expect("a size")
}

/// Only the install is left for every host (no SSH key is configured): no disk change, no
/// replacement, no update.
fn assert_only_install_left(fixture: &Fixture, pve: &FakePve, hosts: &str, when: &str) {
    let plan = plan_hosts(fixture, pve, hosts);
    for host in hosts.split(',') {
        assert_eq!(kinds(&plan, host), ["install"], "{when}: {plan:#}");
    }
}

#[test]
fn sizes_the_storage_rounds_read_back_in_sync() {
    let (fixture, pve) = lab(None);
    let plan = plan_hosts(&fixture, &pve, "thick,zfs");
    assert_eq!(kinds(&plan, "thick"), ["create_vm", "install"], "{plan:#}");
    let run = plan_and_apply(&fixture, &pve, "thick,zfs");
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    let declared_root = (10.3 * GIB as f64).round() as u64;
    for name in ["thick", "zfs"] {
        let vm = vm_named(&pve, name);
        assert!(size_of(&vm, "scsi0") >= declared_root, "{vm:#}");
        assert!(size_of(&vm, "scsi1") >= 2049 * MIB, "{vm:#}");
    }
    assert_only_install_left(&fixture, &pve, "thick,zfs", "after apply");
    // A second apply has nothing to grow.
    let run = plan_and_apply(&fixture, &pve, "thick,zfs");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let resizes: Vec<&str> = run.stdout.lines().filter(|l| l.trim_start().starts_with("resize")).collect();
    assert!(resizes.iter().all(|l| l.contains("already done")), "{}", run.stdout);

    // Proxmox reads the sizes back from the storage (`qm disk rescan`, a clone, a restore):
    // the config now shows what LVM and ZFS really allocated.
    for name in ["thick", "zfs"] {
        let vmid = vm_named(&pve, name)["vmid"].clone();
        pve.command(json!({"cmd": "rescan", "vmid": vmid}));
    }
    // nixprox asked for whole 4 MiB: what LVM's extents and ZFS's padding keep as they are.
    for name in ["thick", "zfs"] {
        let vm = vm_named(&pve, name);
        assert_eq!(size_of(&vm, "scsi0") % (4 * MIB), 0, "{vm:#}");
        assert_eq!(size_of(&vm, "scsi1"), 2052 * MIB, "2049M allocated as 2052M: {vm:#}");
    }
    assert_only_install_left(&fixture, &pve, "thick,zfs", "after a rescan");
}

/// A VM nixprox created on `storage` whose disks an earlier release grew to the exact declared
/// sizes: Proxmox recorded those, the storage allocated more.
fn exact_sizes_vm(vmid: u32, name: &str, storage: &str) -> Value {
    let root = (10.3 * GIB as f64).round() as u64;
    let block = format!(
        r#"<!-- nixprox:v1 {{"host":"{name}","created":{{"vmid":{vmid},"plan":"0123456789abcdef"}}}} -->"#
    );
    json!({
        "vmid": vmid, "name": name, "node": "pve1", "status": "stopped",
        "config": {
            "name": name, "cores": 2, "sockets": 1, "cpu": "x86-64-v2-AES", "memory": 2048, "agent": "1",
            "onboot": 1, "scsihw": "virtio-scsi-single", "tags": "nixprox", "description": block,
            "scsi0": format!("{storage}:vm-{vmid}-disk-0,size={root}"),
            "scsi1": format!("{storage}:vm-{vmid}-disk-1,size=2049M"),
            "net0": format!("virtio=BC:24:11:00:01:{:02X},bridge=vmbr0", vmid % 256),
        }
    })
}

/// The `sizes` fixture and a cluster with VMs 120 `thick` and 121 `zfs` as an earlier release
/// left them (see [`exact_sizes_vm`]).
fn earlier_lab() -> (Fixture, FakePve) {
    let scenario = Scenario::new()
        .set(
            "storages",
            json!({"lvm": {"type": "lvm", "vgname": "vg0", "content": "images,rootdir"},
                   "tank": {"type": "zfspool", "pool": "tank/vms", "content": "images,rootdir"}}),
        )
        .guest(exact_sizes_vm(120, "thick", "lvm"))
        .guest(exact_sizes_vm(121, "zfs", "tank"));
    (Fixture::copy("sizes"), FakePve::start(scenario))
}

#[test]
fn exact_sizes_read_back_as_the_storage_rounded_them_are_in_sync() {
    let (fixture, pve) = earlier_lab();
    assert_only_install_left(&fixture, &pve, "thick,zfs", "as recorded");
    for vmid in [120, 121] {
        pve.command(json!({"cmd": "rescan", "vmid": vmid}));
    }
    let thick = pve.vm(120);
    assert_eq!(size_of(&thick, "scsi1"), 2052 * MIB, "LVM's extents: {thick:#}");
    assert!(size_of(&thick, "scsi0") > (10.3 * GIB as f64) as u64, "{thick:#}");
    let zfs = pve.vm(121);
    assert_eq!(size_of(&zfs, "scsi1"), 2049 * MIB, "ZFS pads to whole MiB: {zfs:#}");
    assert_eq!(size_of(&zfs, "scsi0") % MIB, 0, "{zfs:#}");
    assert_only_install_left(&fixture, &pve, "thick,zfs", "after a rescan");
    // Apply finds nothing to grow and nothing to replace.
    let run = plan_and_apply(&fixture, &pve, "thick,zfs");
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(pve.vm(120)["config"]["scsi0"], thick["config"]["scsi0"]);
}

#[test]
fn a_zfs_storage_with_large_blocks_takes_the_sizes_nixprox_asks_for() {
    // With 1M blocks ZFS refuses a volsize that is not a whole number of blocks.
    let (fixture, pve) = lab(Some("1M"));
    let run = plan_and_apply(&fixture, &pve, "zfs");
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert_only_install_left(&fixture, &pve, "zfs", "after apply");
    let vmid = vm_named(&pve, "zfs")["vmid"].clone();
    pve.command(json!({"cmd": "rescan", "vmid": vmid}));
    let run = nixprox_in(&fixture, &pve, &["plan", "--format", "json", "--hosts", "zfs"]);
    let plan: Value = serde_json::from_str(&run.stdout).expect("plan json");
    assert_eq!(kinds(&plan, "zfs"), ["install"], "{plan:#}");
}

#[test]
fn a_grow_the_storage_already_holds_is_reported_not_failed() {
    // 2049M was recorded, LVM allocated 2052M; the flake now wants 2050M: Proxmox has nothing
    // to do and keeps 2049M in the config. Apply says how to record the real size.
    let (fixture, pve) = earlier_lab();
    let flake = fixture.dir.path().join("flake.nix");
    let text = std::fs::read_to_string(&flake).expect("flake.nix");
    std::fs::write(&flake, text.replace("\"2049M\"", "\"2050M\"")).expect("write flake.nix");
    let plan = plan_hosts(&fixture, &pve, "thick");
    assert_eq!(kinds(&plan, "thick"), ["resize_disk", "install"], "{plan:#}");
    let run = plan_and_apply(&fixture, &pve, "thick");
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("qm disk rescan --vmid 120"), "{}", run.stdout);
    pve.command(json!({"cmd": "rescan", "vmid": 120}));
    assert_only_install_left(&fixture, &pve, "thick", "after the rescan");
}
