//! Disks nixprox did not create, letting go of a VM, moving one between nodes, and declaring
//! an existing VM with `nixprox import`: through the real binary, against the example homelab
//! (or the `import` fixture) in fakepve.

use serde_json::{Value, json};

use crate::support::cli::{self, Run, actions, kinds, nixprox_in, plan_and_apply, plan_hosts};
use crate::support::fakepve::{FakePve, Scenario};
use crate::support::nix::{Fixture, repo};
use nixprox::metadata::{Metadata, Notes};
use nixprox::proxmox::guest::ED25519_HOST_KEY;

/// The owner's notes, with the line ends and blank lines they typed.
const OWNER: &str = "Owner: alice.\r\nBackups nightly; do not delete.\n\n";

/// The homelab flake and its cluster on `nodes`, each guest passed through `edit` first.
fn homelab(nodes: &[&str], edit: impl Fn(&mut Value)) -> (Fixture, FakePve) {
    homelab_in(Scenario::new().set("nodes", json!(nodes)), edit)
}

/// The homelab flake and its cluster's guests (through `edit`) added to `scenario`.
fn homelab_in(scenario: Scenario, edit: impl Fn(&mut Value)) -> (Fixture, FakePve) {
    let path = repo().join("fixtures/homelab/cluster.json");
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("cluster.json")).expect("json");
    let scenario = file["guests"].as_array().expect("guests").iter().cloned().fold(scenario, |s, mut g| {
        edit(&mut g);
        s.guest(g)
    });
    (Fixture::copy("homelab"), FakePve::start(scenario))
}

/// `web` (VM 101) with `config` merged into its config.
fn edit_web(guest: &mut Value, config: Value) {
    if guest["vmid"] == 101 {
        for (key, value) in config.as_object().expect("an object") {
            guest["config"][key] = value.clone();
        }
    }
}

/// Appends policies to the fixture's nixprox.yaml.
fn allow(fixture: &Fixture, policy: &str) {
    let path = fixture.dir.path().join("nixprox.yaml");
    let text = std::fs::read_to_string(&path).expect("nixprox.yaml");
    std::fs::write(&path, text.replacen("policies:\n", &format!("policies:\n  {policy}: true\n"), 1))
        .expect("write nixprox.yaml");
}

/// `nixprox <args>` with only `--flake` (commands that do not evaluate it).
fn run_plain(fixture: &Fixture, pve: &FakePve, args: &[&str]) -> Run {
    let mut command = cli::nixprox();
    command.args(args).args(["--flake", &fixture.flake_ref()]).envs(cli::pve_env(pve));
    command.output().expect("run nixprox").into()
}

fn config(pve: &FakePve, vmid: u32) -> Value {
    pve.vm(vmid)["config"].clone()
}

/// The config without the keys that may change.
fn without(mut config: Value, keys: &[&str]) -> Value {
    for key in keys {
        config.as_object_mut().expect("config").remove(*key);
    }
    config
}

/// web's notes with `owner` as the owner's text before the block.
fn web_with_owner_notes(guest: &mut Value) {
    if guest["vmid"] == 101 {
        let notes = Notes::parse(guest["config"]["description"].as_str().expect("notes"));
        let metadata = notes.metadata().expect("web has a block").clone();
        guest["config"]["description"] = json!(Notes::render(OWNER, &metadata));
    }
}

#[test]
fn a_slot_mismatch_is_planned_as_blocked_and_the_boot_disk_is_never_detached() {
    // The flake says scsi0; the VM boots from virtio0 (an image from another tool).
    let (fixture, pve) = homelab(&["pve1"], |g| {
        if g["vmid"] == 101 {
            let disk = g["config"]["scsi0"].take();
            let config = g["config"].as_object_mut().expect("config");
            config.remove("scsi0");
            config.insert("virtio0".into(), disk);
            config.insert("boot".into(), json!("order=virtio0"));
        }
    });
    allow(&fixture, "allow_detach_disks");
    let plan = plan_hosts(&fixture, &pve, "web");
    assert_eq!(kinds(&plan, "web"), ["detach_disk"], "never an update: {plan:#}");
    let detach = &actions(&plan, "web")[0];
    assert_eq!(detach["blocked"]["setting"], Value::Null, "nothing allows it: {detach:#}");
    let reason = detach["blocked"]["reason"].as_str().expect("reason");
    assert!(reason.contains("`virtio0` is the disk VM 101 boots from"), "{reason}");
    let how = detach["reason"].as_str().expect("reason");
    assert!(how.contains(r#"`virtio0 = { storage = "local-lvm"; size = "20G"; };`"#), "{how}");
    let fields: Vec<&str> = detach["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["field"].as_str().expect("field"))
        .collect();
    assert_eq!(fields, ["disks.virtio0", "disks.scsi0"], "the disk to add waits with it");
    // The Markdown plan shows it as destructive.
    let run = nixprox_in(&fixture, &pve, &["plan", "--format", "markdown", "--hosts", "web"]);
    assert!(run.stdout.contains("`web`: `detach_disk` — blocked"), "{}", run.stdout);
    // Apply touches nothing.
    let before = config(&pve, 101);
    let run = plan_and_apply(&fixture, &pve, "web");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(config(&pve, 101), before);
}

#[test]
fn another_undeclared_disk_is_detached_only_with_the_policy() {
    // Stopped, so Proxmox detaches at once (a running VM takes it as a pending change).
    let (fixture, pve) = homelab(&["pve1"], |g| {
        edit_web(g, json!({"scsi1": "local-lvm:vm-101-disk-1,size=8G"}));
        if g["vmid"] == 101 {
            g["status"] = json!("stopped");
        }
    });
    let plan = plan_hosts(&fixture, &pve, "web");
    assert_eq!(kinds(&plan, "web"), ["detach_disk"], "{plan:#}");
    assert_eq!(actions(&plan, "web")[0]["blocked"]["setting"], "policies.allow_detach_disks");
    let before = config(&pve, 101);
    let run = plan_and_apply(&fixture, &pve, "web");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(config(&pve, 101), before, "blocked: untouched");

    allow(&fixture, "allow_detach_disks");
    let plan = plan_hosts(&fixture, &pve, "web");
    assert_eq!(actions(&plan, "web")[0]["blocked"], Value::Null, "{plan:#}");
    let run = plan_and_apply(&fixture, &pve, "web");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let after = config(&pve, 101);
    assert!(after.get("scsi1").is_none(), "{:#}", pve.vm(101));
    // Proxmox keeps the volume, unused: nothing is deleted.
    let unused: Vec<&str> = after
        .as_object()
        .expect("config")
        .iter()
        .filter(|(k, _)| k.starts_with("unused"))
        .filter_map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(unused, ["local-lvm:vm-101-disk-1"], "{after:#}");
    assert_eq!(after["scsi0"], before["scsi0"], "the boot disk stays");
    assert_eq!(kinds(&plan_hosts(&fixture, &pve, "web"), "web"), ["noop"]);
}

#[test]
fn forget_lets_go_of_the_vm_and_leaves_it_and_its_notes_as_they_are() {
    let (fixture, pve) = homelab(&["pve1"], web_with_owner_notes);
    let before = config(&pve, 101);
    let run = run_plain(&fixture, &pve, &["forget", "web"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("nixprox no longer manages VM 101 `web`"), "{}", run.stdout);
    let after = config(&pve, 101);
    assert_eq!(after["tags"], "web", "only the `nixprox` tag is gone");
    assert_eq!(after["description"], OWNER, "the owner's notes, byte for byte, without the block");
    let kept = ["tags", "description", "digest"];
    assert_eq!(without(after, &kept), without(before, &kept), "nothing else changed");
    assert_eq!(pve.vm(101)["status"], "running");
    // Forgetting again does nothing; the next plan adopts it again (in place).
    let run = run_plain(&fixture, &pve, &["forget", "web"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("nothing to forget"), "{}", run.stdout);
    let plan = plan_hosts(&fixture, &pve, "web");
    assert_eq!(kinds(&plan, "web")[0], "adopt", "{plan:#}");
    assert_eq!(
        (plan["summary"]["reinstall"].clone(), plan["summary"]["blocked"].clone()),
        (json!(0), json!(0))
    );
    // Several VMs of one host: refused, naming them.
    let (fixture, pve) = homelab(&["pve1"], |g| {
        if g["vmid"] == 102 {
            g["config"]["description"] = json!(r#"<!-- nixprox:v1 {"host":"web"} -->"#);
        }
    });
    let run = run_plain(&fixture, &pve, &["forget", "web"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr.contains("several VMs belong to host `web` (VMIDs 101, 102): pick one with `--vmid`"),
        "{}",
        run.stderr
    );
    let run = run_plain(&fixture, &pve, &["forget", "web", "--vmid", "102"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(config(&pve, 102)["tags"], "db");
}

#[test]
fn a_kept_host_plans_release_and_apply_lets_go_of_its_vm() {
    let (fixture, pve) = homelab(&["pve1"], web_with_owner_notes);
    let flake = fixture.dir.path().join("flake.nix");
    let text = std::fs::read_to_string(&flake).expect("flake.nix");
    std::fs::write(&flake, text.replacen("id = 101;", "id = 101;\n                keep = true;", 1))
        .expect("write");
    let plan = plan_hosts(&fixture, &pve, "web");
    assert_eq!(kinds(&plan, "web"), ["release"], "{plan:#}");
    assert_eq!(plan["summary"]["release"], 1);
    let before = config(&pve, 101);
    let run = plan_and_apply(&fixture, &pve, "web");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let after = config(&pve, 101);
    assert_eq!((after["tags"].clone(), after["description"].clone()), (json!("web"), json!(OWNER)));
    let kept = ["tags", "description", "digest"];
    assert_eq!(without(after, &kept), without(before, &kept));
    // From now on the kept host's VM is left alone: no adoption, no orphan.
    let plan = plan_hosts(&fixture, &pve, "web");
    assert_eq!(kinds(&plan, "web"), ["noop"], "{plan:#}");
    assert!(actions(&plan, "web")[0]["reason"].as_str().expect("reason").contains("not managed by nixprox"));
}

#[test]
fn a_node_change_is_a_migration_that_keeps_the_vm() {
    // web runs on pve2; the flake (defaults.node) wants it on pve1.
    let (fixture, pve) = homelab(&["pve1", "pve2"], |g| {
        if g["vmid"] == 101 {
            g["node"] = json!("pve2");
        }
    });
    let plan = plan_hosts(&fixture, &pve, "web");
    assert_eq!(kinds(&plan, "web"), ["migrate_vm"], "{plan:#}");
    assert_eq!(plan["summary"]["replace_vm"], 0);
    let change = &actions(&plan, "web")[0]["changes"][0];
    assert_eq!((change["before"].clone(), change["after"].clone()), (json!("pve2"), json!("pve1")));
    let before = config(&pve, 101);
    pve.requests(true);
    let run = plan_and_apply(&fixture, &pve, "web");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    // One POST …/migrate from pve2, live, its local disk with it; no destroy, no create.
    let writes: Vec<_> = pve.requests_with_bodies(false).into_iter().filter(|r| r.method != "GET").collect();
    let migrate: Vec<_> = writes.iter().filter(|r| r.is("POST", "/qemu/101/migrate")).collect();
    assert_eq!(migrate.len(), 1, "{writes:#?}");
    assert!(migrate[0].path.contains("/nodes/pve2/"), "{:?}", migrate[0]);
    for part in ["target=pve1", "online=1", "with-local-disks=1"] {
        assert!(migrate[0].body.contains(part), "`{part}` in {}", migrate[0].body);
    }
    assert!(
        !writes.iter().any(|r| r.method == "DELETE" || r.is("POST", "/qemu") || r.is("POST", "/clone")),
        "{writes:#?}"
    );
    let vm = pve.vm(101);
    assert_eq!((vm["node"].clone(), vm["name"].clone()), (json!("pve1"), json!("web")), "{vm:#}");
    assert_eq!(without(vm["config"].clone(), &["digest"]), without(before, &["digest"]));
    let webs = pve
        .command(json!({"cmd": "vms"}))
        .as_array()
        .expect("vms")
        .iter()
        .filter(|v| v["name"] == "web")
        .count();
    assert_eq!(webs, 1, "one VM, same VMID");
    assert_eq!(kinds(&plan_hosts(&fixture, &pve, "web"), "web"), ["noop"]);
}

#[test]
fn a_stopped_vm_migrates_offline_and_a_missing_storage_stops_the_move() {
    let (fixture, pve) = homelab(&["pve1", "pve2"], |g| {
        if g["vmid"] == 101 {
            g["node"] = json!("pve2");
            g["status"] = json!("stopped");
        }
    });
    pve.requests(true);
    let run = plan_and_apply(&fixture, &pve, "web");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let migrate = pve
        .requests_with_bodies(false)
        .into_iter()
        .find(|r| r.is("POST", "/qemu/101/migrate"))
        .expect("migrate");
    assert_eq!(migrate.body, "target=pve1", "offline: {migrate:?}");
    assert_eq!(pve.vm(101)["node"], "pve1");

    // local-lvm exists only on pve2: Proxmox's precondition check says so, nothing moves.
    let pve2_only = json!({"local-lvm": {"type": "lvmthin", "vgname": "pve", "thinpool": "data",
                                         "content": "images,rootdir", "nodes": "pve2"}});
    let scenario = Scenario::new().set("nodes", json!(["pve1", "pve2"])).set("storages", pve2_only);
    let (fixture, pve) = homelab_in(scenario, |g| {
        if g["vmid"] == 101 {
            g["node"] = json!("pve2");
        }
    });
    let run = plan_and_apply(&fixture, &pve, "web");
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("storage local-lvm is not available there"), "{}", run.stdout);
    assert_eq!(pve.vm(101)["node"], "pve2");
}

#[test]
fn nixprox_import_prints_a_block_that_evaluates_and_plans_noop() {
    let public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIImportedHostKeyxxxxxxxxxxxxxxxxxxxx root@web";
    let block = Metadata { host: "web".into(), system: Some("/nix/store/old".into()), ..Metadata::default() };
    let mut agent = crate::support::hosts::agent_with("127.0.0.21");
    agent["files"] = json!({ED25519_HOST_KEY: format!("{public}\n")});
    let vm = json!({
        "vmid": 130, "name": "web", "node": "pve1", "status": "running",
        "agent": agent,
        "config": {
            "name": "web", "cores": 4, "sockets": 2, "cpu": "host,flags=+aes", "memory": "8192", "balloon": 2048,
            "bios": "ovmf", "machine": "q35", "agent": "1", "onboot": 0, "protection": 1, "ostype": "l26",
            "scsihw": "virtio-scsi-single", "boot": "order=virtio0",
            "virtio0": "local-lvm:vm-130-disk-0,discard=on,iothread=1,serial=root,size=32G",
            "scsi1": "local-lvm:vm-130-disk-1,size=10752M",
            "efidisk0": "local-lvm:vm-130-disk-2,efitype=4m,size=4M",
            "ide2": "none,media=cdrom",
            "net0": "virtio=BC:24:11:00:01:30,bridge=vmbr0,tag=20,firewall=1",
            "net1": "e1000=bc:24:11:00:01:31,bridge=vmbr1",
            "tags": "nixprox;prod;web", "description": Notes::render(OWNER, &block)
        }
    });
    let pve = FakePve::start(Scenario::new().guest(vm));
    let fixture = Fixture::copy("import");
    let run = run_plain(&fixture, &pve, &["import", "130"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let printed = run.stdout.clone();
    assert!(printed.contains(&format!("nixprox.ssh.hostKey = \"{public}\";")), "{printed}");
    assert!(printed.contains("virtio0 = { storage = \"local-lvm\"; size = \"32G\"; serial = \"root\"; discard = true; iothread = true; };"), "{printed}");
    // By name, the same block.
    let by_name = run_plain(&fixture, &pve, &["import", "web"]);
    assert_eq!(by_name.stdout, printed);
    assert!(printed.contains("  nixprox.address = \"127.0.0.21\";"), "{printed}");
    assert!(!printed.contains("Reinstall needed"), "a NixOS VM: {printed}");
    // Written as a file, as it is: a module ready to import.
    let out = fixture.dir.path().join("imported.nix");
    let run = run_plain(&fixture, &pve, &["import", "130", "--out", &out.display().to_string()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&out).expect("imported.nix"), printed);
    // Never over an existing file.
    let again = run_plain(&fixture, &pve, &["import", "130", "--out", &out.display().to_string()]);
    assert_eq!(again.code, 1);
    assert!(
        again.stderr.contains("exists already: nixprox import never overwrites a host module"),
        "{}",
        again.stderr
    );

    // Nothing but the system differs from the VM it came from.
    let plan = plan_hosts(&fixture, &pve, "web");
    assert_eq!(kinds(&plan, "web"), ["switch"], "{plan:#}");
    let toplevel = actions(&plan, "web")[0]["changes"][0]["after"].as_str().expect("toplevel").to_string();
    let in_sync = Metadata { system: Some(toplevel), ..block };
    pve.command(
        json!({"cmd": "set_config", "vmid": 130, "config": {"description": Notes::render(OWNER, &in_sync)}}),
    );
    let plan = plan_hosts(&fixture, &pve, "web");
    assert_eq!(kinds(&plan, "web"), ["noop"], "{plan:#}");

    // An unknown VM is an error naming it.
    let run = run_plain(&fixture, &pve, &["import", "nope"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no VM `nope` in the cluster"), "{}", run.stderr);
}

/// A Debian VM made outside nixprox: `nixprox import --out` writes a host module that says it
/// needs a reinstall and pins the key it presents now for the conversion; imported as it is,
/// the VM plans its conversion (blocked until the host declares a layout and opts in), and
/// nothing else about the VM changes.
#[test]
fn nixprox_import_of_a_debian_vm_writes_a_module_that_plans_its_conversion() {
    let public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDebianHostKeyxxxxxxxxxxxxxxxxxxxxxx root@web";
    let mut agent = crate::support::hosts::agent_with("127.0.0.21");
    agent["files"] = json!({ED25519_HOST_KEY: format!("{public}\n")});
    agent["os"] = crate::support::hosts::debian_os();
    let vm = json!({
        "vmid": 131, "name": "web", "node": "pve1", "status": "running", "agent": agent,
        "config": {
            "name": "web", "cores": 2, "sockets": 1, "cpu": "x86-64-v2-AES", "memory": "2048", "agent": "1",
            "onboot": 1, "ostype": "l26", "scsihw": "virtio-scsi-single", "boot": "order=scsi0",
            "scsi0": "local-lvm:vm-131-disk-0,size=20G", "net0": "virtio=BC:24:11:00:01:31,bridge=vmbr0",
            "tags": "debian", "description": OWNER
        }
    });
    let pve = FakePve::start(Scenario::new().guest(vm));
    let fixture = Fixture::copy("import");
    let out = fixture.dir.path().join("imported.nix");
    let run = run_plain(&fixture, &pve, &["import", "web", "--out", &out.display().to_string()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let module = std::fs::read_to_string(&out).expect("imported.nix");
    assert!(module.starts_with("# VM 131 `web` on node `pve1`"), "{module}");
    assert!(module.contains("{ ... }:\n\n{\n  nixprox.enable = true;\n  nixprox.vm = {\n"), "{module}");
    assert!(
        module.contains("  # Reinstall needed: its guest agent reports `debian` (Debian GNU/Linux 12 (bookworm)), not NixOS."),
        "{module}"
    );
    assert!(module.contains(&format!("  nixprox.convert.hostKey = \"{public}\";")), "{module}");
    assert!(!module.contains("nixprox.ssh.hostKey ="), "{module}");

    let plan = plan_hosts(&fixture, &pve, "web");
    assert_eq!(kinds(&plan, "web"), ["adopt", "reinstall"], "{plan:#}");
    let reinstall = &actions(&plan, "web")[1];
    assert!(
        reinstall["blocked"]["reason"].as_str().unwrap_or_default().contains("declares no `disko.devices`"),
        "{reinstall:#}"
    );
    assert_eq!(plan["summary"]["update_vm"], 0, "the VM as it is: {plan:#}");
    assert!(reinstall["reason"].as_str().unwrap_or_default().contains("runs `debian`"), "{reinstall:#}");
}

/// A VM with the hardware nixprox manages (mapped PCI and USB devices, a virtiofs share, the
/// serial console as its display, a startup order, NUMA, CPU flags, a TPM, Microsoft's keys in
/// its EFI disk) and a raw PCI device root@pam passed through: `nixprox import` declares all
/// of the first, names the raw device as not managed, and the imported VM plans `noop`.
#[test]
fn nixprox_import_declares_the_vms_hardware_and_plans_noop() {
    let public = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIImportedHostKeyxxxxxxxxxxxxxxxxxxxx root@web";
    let block = Metadata { host: "web".into(), system: Some("/nix/store/old".into()), ..Metadata::default() };
    let mut agent = crate::support::hosts::agent_with("127.0.0.21");
    agent["files"] = json!({ED25519_HOST_KEY: format!("{public}\n")});
    let vm = json!({
        "vmid": 130, "name": "web", "node": "pve1", "status": "running", "agent": agent,
        "config": {
            "name": "web", "cores": 2, "sockets": 1, "cpu": "host,flags=+aes;-pcid", "memory": "4096",
            "bios": "ovmf", "machine": "q35", "agent": "1", "onboot": 1, "ostype": "l26",
            "scsihw": "virtio-scsi-single", "boot": "order=scsi0",
            "scsi0": "local-lvm:vm-130-disk-0,size=32G",
            "efidisk0": "local-lvm:vm-130-disk-1,efitype=4m,pre-enrolled-keys=1,size=4M",
            "tpmstate0": "local-lvm:vm-130-disk-2,size=4M,version=v2.0",
            "net0": "virtio=BC:24:11:00:01:30,bridge=vmbr0",
            "numa": 1, "serial0": "socket", "vga": "serial0", "startup": "order=2,up=30",
            "hostpci0": "mapping=gpu,pcie=1,x-vga=1", "hostpci1": "0000:02:00.0,pcie=1",
            "usb0": "mapping=zigbee,usb3=1", "usb1": "spice",
            "virtiofs0": "media,cache=never,expose-acl=1",
            // Root's: named, its value (which may carry anything) never printed.
            "args": "-fw_cfg name=opt/canary,string=CANARY-hw2-secret", "tablet": "0",
            "tags": "nixprox", "description": Notes::render(OWNER, &block)
        }
    });
    let mappings = json!({
        "pci": [{"id": "gpu", "map": ["id=10de:2204,iommugroup=50,node=pve1,path=0000:01:00.0"]}],
        "usb": [{"id": "zigbee", "map": ["id=1a86:7523,node=pve1"]}],
        "dir": [{"id": "media", "map": ["node=pve1,path=/tank/media"]}]
    });
    let pve = FakePve::start(Scenario::new().set("mappings", mappings).guest(vm));
    let fixture = Fixture::copy("import");
    let out = fixture.dir.path().join("imported.nix");
    let run = run_plain(&fixture, &pve, &["import", "130", "--out", &out.display().to_string()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let module = std::fs::read_to_string(&out).expect("imported.nix");
    for line in [
        "    cpuType = \"host\";",
        "    cpuFlags = [ \"+aes\" \"-pcid\" ];",
        "    numa = true;",
        "    serial = true;",
        "    vga = \"serial0\";",
        "    startup = { order = 2; up = 30; };",
        "    tpm = { version = \"v2.0\"; storage = \"local-lvm\"; };",
        "    efi.preEnrolledKeys = true;",
        "      hostpci0 = { mapping = \"gpu\"; pcie = true; xVga = true; };",
        "      usb0 = { mapping = \"zigbee\"; usb3 = true; };",
        "      virtiofs0 = { mapping = \"media\"; cache = \"never\"; exposeAcl = true; };",
        "    # Not managed by nixprox (only root@pam may set them; left as they are, lost by a replace): `args`, `hostpci1: 0000:02:00.0,pcie=1`.",
    ] {
        assert!(module.lines().any(|l| l == line), "{line}\n{module}");
    }
    assert!(!module.contains("CANARY"), "{module}");
    assert!(!module.contains("tablet"), "a key a token may set is not declared: {module}");
    assert!(!module.contains("spice"), "a SPICE port is no device: {module}");

    let plan = plan_hosts(&fixture, &pve, "web");
    assert_eq!(kinds(&plan, "web"), ["switch"], "{plan:#}");
    let toplevel = actions(&plan, "web")[0]["changes"][0]["after"].as_str().expect("toplevel").to_string();
    let in_sync = Metadata { system: Some(toplevel), ..block };
    pve.command(
        json!({"cmd": "set_config", "vmid": 130, "config": {"description": Notes::render(OWNER, &in_sync)}}),
    );
    let plan = plan_hosts(&fixture, &pve, "web");
    assert_eq!(kinds(&plan, "web"), ["noop"], "{plan:#}");
}
