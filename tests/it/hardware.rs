//! VM hardware beyond CPU, memory, disks and NICs (the `hardware` fixture), through the binary
//! against fakepve: CPU flags, NUMA, the serial console, the display and the startup order are
//! planned with qemu-server's effect, applied, and read back in sync; the privileges they need
//! are in the preflight. And what the module derives inside NixOS from the declaration (initrd
//! modules, kernel parameters, the guest agent's service, the boot checks), evaluated by real
//! nix with the stand-ins of `fixtures/lib/hardware.nix`.

use serde_json::{Value, json};

use crate::support::cli::{self, Run, actions, kinds, plan_and_apply, plan_hosts};
use crate::support::fakepve::{FakePve, Scenario, TOKEN_ID};
use crate::support::nix::{Fixture, override_inputs};

/// VM 130 `nas`, stopped, exactly as the fixture declares it.
fn nas_vm() -> Value {
    json!({
        "vmid": 130, "name": "nas", "node": "pve1", "status": "stopped",
        "config": {
            "name": "nas", "cores": 2, "sockets": 1, "cpu": "host,flags=-pcid;+aes", "memory": 2048,
            "agent": "1", "bios": "ovmf", "machine": "q35", "onboot": 1, "tags": "nixprox",
            "scsihw": "virtio-scsi-single", "numa": 1, "serial0": "socket", "vga": "serial0",
            "startup": "up=30,order=1",
            "efidisk0": "local-lvm:vm-130-disk-2,efitype=4m,pre-enrolled-keys=0,size=4M",
            "scsi0": "local-lvm:vm-130-disk-0,serial=root,size=32G",
            "virtio1": "local-lvm:vm-130-disk-1,size=100G",
            "net0": "e1000=BC:24:11:00:01:30,bridge=vmbr0", "boot": "order=scsi0"
        }
    })
}

fn lab(scenario: Scenario) -> (Fixture, FakePve) {
    (Fixture::copy("hardware"), FakePve::start(scenario.guest(nas_vm())))
}

/// `(field, before, after, effect)` of the host's `update_vm`, if it has one.
fn updates(plan: &Value, host: &str) -> Vec<(String, Value, Value, Value)> {
    actions(plan, host)
        .iter()
        .filter(|a| a["kind"] == "update_vm")
        .flat_map(|a| a["changes"].as_array().expect("changes").clone())
        .map(|c| {
            (
                c["field"].as_str().expect("field").to_string(),
                c["before"].clone(),
                c["after"].clone(),
                c["effect"].clone(),
            )
        })
        .collect()
}

fn config(pve: &FakePve) -> Value {
    pve.vm(130)["config"].clone()
}

#[test]
fn hardware_in_sync_is_no_change_even_with_cpu_flags() {
    let (fixture, pve) = lab(Scenario::new());
    // `cpuType = "host,flags=+aes"` and `cpuFlags = [ "-pcid" ]` against `host,flags=-pcid;+aes`:
    // the flags compare as a set, the type alone.
    let plan = plan_hosts(&fixture, &pve, "nas");
    assert!(updates(&plan, "nas").is_empty(), "{plan:#}");
    assert!(!kinds(&plan, "nas").contains(&"update_vm".to_string()), "{plan:#}");
}

#[test]
fn hardware_is_planned_with_qemu_servers_effects_applied_and_read_back() {
    let (fixture, pve) = lab(Scenario::new());
    // Someone took it all away in the UI.
    pve.command(json!({"cmd": "set_config", "vmid": 130, "config": {"cpu": "host,hidden=1"},
                       "delete": ["numa", "serial0", "vga", "startup"]}));
    let plan = plan_hosts(&fixture, &pve, "nas");
    let reboot = json!("needs_reboot");
    assert_eq!(
        updates(&plan, "nas"),
        [
            ("cpuFlags".to_string(), json!(""), json!("+aes;-pcid"), reboot.clone()),
            ("numa".into(), json!(false), json!(true), reboot.clone()),
            ("serial".into(), json!(false), json!(true), reboot.clone()),
            ("vga".into(), json!(null), json!("serial0"), reboot),
            ("startup".into(), json!(""), json!("order=1,up=30"), json!("hotplug")),
        ],
        "{plan:#}"
    );
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let written = config(&pve);
    // The line keeps what nixprox does not manage (`hidden=1`).
    assert_eq!(written["cpu"], "host,flags=+aes;-pcid,hidden=1", "{written:#}");
    assert_eq!(written["numa"], "1");
    assert_eq!(written["serial0"], "socket");
    assert_eq!(written["vga"], "serial0");
    assert_eq!(written["startup"], "order=1,up=30");
    assert!(updates(&plan_hosts(&fixture, &pve, "nas"), "nas").is_empty(), "read back in sync");

    // Declared off: the socket goes, and the flags with `cpuFlags` emptied.
    std::fs::write(
        fixture.dir.path().join("case.json"),
        json!({"vm": {"nas": {"serial": false, "vga": "std", "cpuFlags": [], "cpuType": "host"}}})
            .to_string(),
    )
    .expect("case.json");
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let written = config(&pve);
    assert_eq!(written.get("serial0"), None, "{written:#}");
    assert_eq!(written["cpu"], "host,hidden=1");
    assert_eq!(written["vga"], "std");
    assert!(updates(&plan_hosts(&fixture, &pve, "nas"), "nas").is_empty(), "read back in sync");
}

#[test]
fn on_a_running_vm_startup_applies_at_once_and_the_rest_waits_for_a_reboot() {
    let (fixture, pve) = lab(Scenario::new());
    pve.command(
        json!({"cmd": "set_config", "vmid": 130, "config": {"startup": "order=9"}, "delete": ["numa"]}),
    );
    pve.command(json!({"cmd": "set_vm", "vmid": 130, "status": "running"}));
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let vm = pve.vm(130);
    assert_eq!(vm["config"]["startup"], "order=1,up=30", "a fast-plug option: {vm:#}");
    assert_eq!(vm["config"].get("numa"), None, "{vm:#}");
    assert_eq!(vm["pending"]["numa"], "1", "numa waits for the next start: {vm:#}");
    // The plan compares with the config as it will be after the reboot: nothing to do again.
    let plan = plan_hosts(&fixture, &pve, "nas");
    assert!(updates(&plan, "nas").is_empty(), "{plan:#}");
}

/// The `NixproxApply` role of the guide (which has no `Sys.Modify`) on `/`.
fn guide_role() -> Vec<&'static str> {
    vec![
        "VM.Audit",
        "VM.Allocate",
        "VM.Clone",
        "VM.Config.CPU",
        "VM.Config.Memory",
        "VM.Config.Disk",
        "VM.Config.Network",
        "VM.Config.Options",
        "VM.Config.HWType",
        "VM.Config.Cloudinit",
        "VM.Config.CDROM",
        "VM.PowerMgmt",
        "VM.Migrate",
        "VM.GuestAgent.Audit",
        "VM.GuestAgent.FileRead",
        "Datastore.Audit",
        "Datastore.AllocateSpace",
        "SDN.Use",
        "Pool.Audit",
    ]
}

#[test]
fn a_startup_order_needs_sys_modify_on_the_root_and_the_preflight_says_so() {
    let role = guide_role();
    let scenario = Scenario::new().grant("nixprox@pve", "/", &role).grant(TOKEN_ID, "/", &role);
    let (fixture, pve) = lab(scenario);
    pve.command(json!({"cmd": "set_config", "vmid": 130, "delete": ["startup"]}));
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("  Sys.Modify on / (`nas`: startup (the node's start order))"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("nothing was changed"), "{}", run.stderr);
    assert_eq!(config(&pve).get("startup"), None, "nothing written");
    // Granted, it runs.
    pve.command(json!({"cmd": "grant", "user": "nixprox@pve", "path": "/", "privs": ["Sys.Modify"]}));
    pve.command(json!({"cmd": "grant", "user": TOKEN_ID, "path": "/", "privs": ["Sys.Modify"]}));
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(config(&pve)["startup"], "order=1,up=30");
}

/// The error part of a failed run's stderr.
fn error_text(run: &Run) -> String {
    run.stderr.lines().skip_while(|l| !l.starts_with("error")).collect::<Vec<_>>().join("\n")
}

#[test]
fn a_firmware_that_cannot_boot_the_system_fails_the_plan_naming_host_and_fix() {
    let (fixture, pve) = lab(Scenario::new());
    for (host, message) in [
        (
            "noesp",
            "nixprox.vm.bios is \"ovmf\", but the disk layout has no EFI system partition: add one to disko.devices (a partition with type = \"EF00\", formatted vfat, mounted at /boot), or set nixprox.vm.bios = \"seabios\"",
        ),
        (
            "noloader",
            "nixprox.vm.bios is \"ovmf\", but no EFI boot loader is enabled: set boot.loader.systemd-boot.enable = true (or boot.loader.grub.efiSupport = true), or set nixprox.vm.bios = \"seabios\"",
        ),
        (
            "bootless",
            "nixprox.vm.bios is \"seabios\", which cannot boot systemd-boot (an EFI boot loader): set nixprox.vm.bios = \"ovmf\" (with an EFI system partition), or use GRUB",
        ),
    ] {
        std::fs::write(fixture.dir.path().join("case.json"), json!({"broken": [host]}).to_string())
            .expect("case.json");
        let run = cli::plan(&fixture, &pve, &["--hosts", host]);
        assert_eq!(run.code, 1, "{host}: {}", run.stderr);
        let error = error_text(&run);
        assert!(error.contains(&format!("`{host}`")), "{host}: {error}");
        assert!(error.contains(message), "{host}: {error}");
    }
}

#[test]
fn a_cpu_flag_proxmox_refuses_on_a_vm_fails_at_evaluation() {
    let (fixture, pve) = lab(Scenario::new());
    std::fs::write(fixture.dir.path().join("case.json"), json!({"broken": ["badflag"]}).to_string())
        .expect("case.json");
    let run = cli::plan(&fixture, &pve, &["--hosts", "badflag"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let error = error_text(&run);
    assert!(error.contains("`badflag`") && error.contains("nixprox.vm.cpuFlags"), "{error}");
    // No request reached Proxmox's config.
    assert!(pve.requests(false).iter().all(|(method, _)| method == "GET"));
}

/// `config.<path>` of a fixture host, evaluated by real nix.
fn eval_config(fixture: &Fixture, host: &str, apply: &str) -> Value {
    let mut command = std::process::Command::new("nix");
    command
        .env("NIX_CONFIG", "substituters =")
        .args([
            "--extra-experimental-features",
            "nix-command flakes",
            "eval",
            "--json",
            "--no-write-lock-file",
        ])
        .arg(format!("{}#nixosConfigurations.{host}.config", fixture.flake_ref()))
        .args(["--apply", apply]);
    for input in override_inputs() {
        command.args(["--override-input", &input.name, &input.flake_ref]);
    }
    let output = command.output().expect("run nix");
    assert!(output.status.success(), "{host}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("json")
}

#[test]
fn the_module_configures_nixos_for_the_declared_vm_and_yields_to_overrides() {
    let fixture = Fixture::copy("hardware");
    let apply = "c: { modules = c.boot.initrd.availableKernelModules; params = c.boot.kernelParams; agent = c.services.qemuGuest.enable; }";
    // A SCSI and a virtio disk, an e1000 NIC, the serial console as the only display.
    assert_eq!(
        eval_config(&fixture, "nas", apply),
        json!({"modules": ["virtio_pci", "virtio_scsi", "sd_mod", "virtio_blk", "e1000"],
               "params": ["console=ttyS0,115200"], "agent": true})
    );
    // The defaults: one SCSI disk and a virtio NIC, no serial console declared.
    assert_eq!(
        eval_config(&fixture, "plain", apply),
        json!({"modules": ["virtio_pci", "virtio_scsi", "sd_mod", "virtio_net"], "params": [], "agent": true})
    );
    // The host's own choices win: its initrd modules, no agent service.
    assert_eq!(
        eval_config(&fixture, "custom", apply),
        json!({"modules": ["sym53c8xx"], "params": [], "agent": false})
    );
    // With a display beside the serial port, the kernel logs to both.
    std::fs::write(
        fixture.dir.path().join("case.json"),
        json!({"vm": {"plain": {"serial": true}}}).to_string(),
    )
    .expect("case.json");
    assert_eq!(
        eval_config(&fixture, "plain", apply)["params"],
        json!(["console=tty0", "console=ttyS0,115200"])
    );
}

#[test]
fn a_created_vm_gets_its_hardware_in_the_create() {
    // No VM yet: `nas` is created from the template with all of it.
    let template = json!({
        "vmid": 9000, "name": "nixos-bootstrap", "node": "pve1", "status": "stopped", "template": true,
        "config": {"memory": "1024", "cores": 1, "agent": "1", "ostype": "l26", "scsihw": "virtio-scsi-single",
                   "bios": "ovmf", "efidisk0": "local-lvm:base-9000-disk-1,efitype=4m,size=4M",
                   "scsi0": "local-lvm:base-9000-disk-0,size=2G", "ide2": "local-lvm:vm-9000-cloudinit,media=cdrom",
                   "net0": "virtio=BC:24:11:00:90:00,bridge=vmbr0", "boot": "order=scsi0", "template": 1}
    });
    let fixture = Fixture::copy("hardware");
    let pve = FakePve::start(Scenario::new().guest(template));
    let plan = plan_hosts(&fixture, &pve, "nas");
    let create = actions(&plan, "nas").into_iter().find(|a| a["kind"] == "create_vm").expect("create_vm");
    let fields: Vec<&str> =
        create["changes"].as_array().expect("changes").iter().filter_map(|c| c["field"].as_str()).collect();
    for field in ["cpuFlags", "numa", "serial", "vga", "startup"] {
        assert!(fields.contains(&field), "{field}: {create:#}");
    }
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let written = config(&pve);
    for (key, value) in [
        ("cpu", "host,flags=+aes;-pcid"),
        ("numa", "1"),
        ("serial0", "socket"),
        ("vga", "serial0"),
        ("startup", "order=1,up=30"),
    ] {
        assert_eq!(written[key], value, "{key}: {written:#}");
    }
}

/// The cluster's resource mappings: a GPU and a Zigbee stick, both on `pve1`, and a NIC on
/// `pve2` only.
fn mappings() -> Value {
    json!({
        "pci": [
            {"id": "gpu", "map": ["id=10de:2204,iommugroup=50,node=pve1,path=0000:01:00.0"], "description": "RTX 3090"},
            {"id": "nic", "map": ["node=pve2,path=0000:05:00.0"]}
        ],
        "usb": [{"id": "zigbee", "map": ["id=1a86:7523,node=pve1"]}],
        "dir": [{"id": "media", "map": ["node=pve1,path=/tank/media"]}]
    })
}

/// `case.json` declaring a mapped GPU and USB stick on `nas` (and `more` on top).
fn declare_devices(fixture: &Fixture, more: Value) {
    let mut nas = json!({
        "pci": {"hostpci0": {"mapping": "gpu", "pcie": true}},
        "usb": {"usb0": {"mapping": "zigbee"}}
    });
    if let (Some(nas), Some(more)) = (nas.as_object_mut(), more.as_object()) {
        nas.extend(more.clone());
    }
    std::fs::write(fixture.dir.path().join("case.json"), json!({"vm": {"nas": nas}}).to_string())
        .expect("case.json");
}

#[test]
fn a_mapped_gpu_and_usb_stick_are_added_read_back_and_removed_leaving_raw_devices_alone() {
    let (fixture, pve) = lab(Scenario::new().set("mappings", mappings()));
    // A raw device root@pam passed through by hand: never nixprox's.
    pve.command(json!({"cmd": "set_config", "vmid": 130, "config": {"hostpci1": "host=0000:03:00.0", "ostype": "l26"}}));
    declare_devices(&fixture, json!({}));
    let plan = plan_hosts(&fixture, &pve, "nas");
    assert_eq!(
        updates(&plan, "nas"),
        [
            ("pci.hostpci0".to_string(), json!(null), json!("mapping=gpu,pcie=1"), json!("needs_reboot")),
            ("usb.usb0".into(), json!(null), json!("mapping=zigbee"), json!("hotplug")),
        ],
        "{plan:#}"
    );
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let written = config(&pve);
    assert_eq!(written["hostpci0"], "mapping=gpu,pcie=1", "{written:#}");
    assert_eq!(written["usb0"], "mapping=zigbee");
    assert_eq!(written["hostpci1"], "host=0000:03:00.0");
    assert!(updates(&plan_hosts(&fixture, &pve, "nas"), "nas").is_empty(), "read back in sync");

    // Removed from the flake: removed from the VM, the raw device stays.
    std::fs::remove_file(fixture.dir.path().join("case.json")).expect("rm case.json");
    let plan = plan_hosts(&fixture, &pve, "nas");
    let fields: Vec<String> = updates(&plan, "nas").into_iter().map(|u| u.0).collect();
    assert_eq!(fields, ["pci.hostpci0", "usb.usb0"], "{plan:#}");
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let written = config(&pve);
    assert_eq!(written.get("hostpci0"), None, "{written:#}");
    assert_eq!(written.get("usb0"), None);
    assert_eq!(written["hostpci1"], "host=0000:03:00.0");
}

#[test]
fn on_a_running_vm_the_usb_stick_is_plugged_at_once_and_the_gpu_waits_for_a_reboot() {
    let (fixture, pve) = lab(Scenario::new().set("mappings", mappings()));
    pve.command(json!({"cmd": "set_config", "vmid": 130, "config": {"ostype": "l26"}}));
    pve.command(json!({"cmd": "set_vm", "vmid": 130, "status": "running"}));
    declare_devices(&fixture, json!({}));
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let vm = pve.vm(130);
    assert_eq!(vm["config"]["usb0"], "mapping=zigbee", "hot-plugged: {vm:#}");
    assert_eq!(vm["pending"]["hostpci0"], "mapping=gpu,pcie=1", "pending: {vm:#}");
    assert!(updates(&plan_hosts(&fixture, &pve, "nas"), "nas").is_empty());
}

#[test]
fn a_mapping_missing_on_the_vms_node_or_unseen_blocks_the_change_with_the_fix() {
    let (fixture, pve) = lab(Scenario::new().set("mappings", mappings()));
    declare_devices(&fixture, json!({"pci": {"hostpci0": {"mapping": "nic"}}}));
    let plan = plan_hosts(&fixture, &pve, "nas");
    let update = actions(&plan, "nas").into_iter().find(|a| a["kind"] == "update_vm").expect("update_vm");
    assert_eq!(
        update["blocked"]["reason"],
        "the PCI mapping `nic` has no device on node `pve1`; add the node's device to the mapping, or change `nixprox.vm.pci.hostpci0.mapping`",
        "{plan:#}"
    );
    declare_devices(&fixture, json!({"usb": {"usb0": {"mapping": "nosuch"}}}));
    let plan = plan_hosts(&fixture, &pve, "nas");
    let update = actions(&plan, "nas").into_iter().find(|a| a["kind"] == "update_vm").expect("update_vm");
    assert_eq!(
        update["blocked"]["reason"],
        "the USB mapping `nosuch` does not exist, or the token cannot see it (it needs `Mapping.Use` on /mapping/usb/nosuch); create it under Datacenter → Resource Mappings, or change `nixprox.vm.usb.usb0.mapping`"
    );
    // Blocked: apply writes nothing.
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(config(&pve).get("usb0"), None);
}

#[test]
fn a_token_that_sees_the_mapping_but_may_not_use_it_is_stopped_by_the_preflight() {
    let mut role = guide_role();
    role.push("Sys.Modify");
    let scenario = Scenario::new()
        .set("mappings", mappings())
        .grant("nixprox@pve", "/", &role)
        .grant(TOKEN_ID, "/", &role)
        .grant("nixprox@pve", "/mapping", &["Mapping.Audit"])
        .grant(TOKEN_ID, "/mapping", &["Mapping.Audit"]);
    let (fixture, pve) = lab(scenario);
    declare_devices(&fixture, json!({}));
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    for line in [
        "  Mapping.Use on /mapping/pci/gpu (`nas`: pci.hostpci0)",
        "  Mapping.Use on /mapping/usb/zigbee (`nas`: usb.usb0)",
    ] {
        assert!(run.stderr.contains(line), "{line}\n{}", run.stderr);
    }
    assert_eq!(config(&pve).get("hostpci0"), None, "nothing written");
    // With Mapping.Use it runs (and Proxmox's own check passes).
    for user in ["nixprox@pve", TOKEN_ID] {
        pve.command(json!({"cmd": "grant", "user": user, "path": "/mapping", "privs": ["Mapping.Use"]}));
    }
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(config(&pve)["hostpci0"], "mapping=gpu,pcie=1");
}

#[test]
fn a_tpm_is_added_to_a_stopped_vm_and_a_new_version_is_a_gated_replace() {
    let (fixture, pve) = lab(Scenario::new());
    std::fs::write(
        fixture.dir.path().join("case.json"),
        json!({"vm": {"nas": {"tpm": {"version": "v2.0"}}}}).to_string(),
    )
    .expect("case.json");
    let plan = plan_hosts(&fixture, &pve, "nas");
    assert_eq!(
        updates(&plan, "nas"),
        [("tpm".to_string(), json!(null), json!("v2.0 on local-lvm"), json!("needs_reboot"))],
        "{plan:#}"
    );
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let tpm = config(&pve)["tpmstate0"].as_str().expect("tpmstate0").to_string();
    assert!(tpm.starts_with("local-lvm:vm-130-") && tpm.contains("version=v2.0"), "{tpm}");
    assert!(updates(&plan_hosts(&fixture, &pve, "nas"), "nas").is_empty(), "read back in sync");

    // v1.2 now: the state cannot be converted, so the VM would be replaced, which the policy holds back.
    std::fs::write(
        fixture.dir.path().join("case.json"),
        json!({"vm": {"nas": {"tpm": {"version": "v1.2"}}}}).to_string(),
    )
    .expect("case.json");
    let plan = plan_hosts(&fixture, &pve, "nas");
    let replace = actions(&plan, "nas").into_iter().find(|a| a["kind"] == "replace_vm").expect("replace_vm");
    assert_eq!(
        replace["reason"],
        "the TPM's version changes from v2.0 to v1.2, and its state cannot be converted: destroy and recreate the VM"
    );
    assert_eq!(replace["blocked"]["setting"], "policies.allow_replace", "{replace:#}");
}

#[test]
fn efi_keys_are_enrolled_only_when_declared() {
    let template = json!({
        "vmid": 9000, "name": "nixos-bootstrap", "node": "pve1", "status": "stopped", "template": true,
        "config": {"memory": "1024", "cores": 1, "agent": "1", "ostype": "l26", "scsihw": "virtio-scsi-single",
                   "scsi0": "local-lvm:base-9000-disk-0,size=2G", "ide2": "local-lvm:vm-9000-cloudinit,media=cdrom",
                   "net0": "virtio=BC:24:11:00:90:00,bridge=vmbr0", "boot": "order=scsi0", "template": 1}
    });
    let fixture = Fixture::copy("hardware");
    std::fs::write(
        fixture.dir.path().join("case.json"),
        json!({"vm": {"nas": {"efi": {"preEnrolledKeys": true}}}}).to_string(),
    )
    .expect("case.json");
    let pve = FakePve::start(Scenario::new().guest(template));
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let efi = config(&pve)["efidisk0"].as_str().expect("efidisk0").to_string();
    assert!(efi.contains("pre-enrolled-keys=1"), "{efi}");
    assert!(updates(&plan_hosts(&fixture, &pve, "nas"), "nas").is_empty());
}

/// `case.json` with `nas`'s `nixprox.vm` forced to `vm`.
fn case_nas(fixture: &Fixture, vm: Value) {
    std::fs::write(fixture.dir.path().join("case.json"), json!({"vm": {"nas": vm}}).to_string())
        .expect("case.json");
}

#[test]
fn extra_config_is_compared_exactly_and_applied_as_proxmox_applies_each_key() {
    let (fixture, pve) = lab(Scenario::new());
    case_nas(
        &fixture,
        json!({"extraConfig": {"cpuunits": "200", "watchdog": "model=i6300esb,action=reset"}}),
    );
    pve.command(json!({"cmd": "set_vm", "vmid": 130, "status": "running"}));
    let plan = plan_hosts(&fixture, &pve, "nas");
    assert_eq!(
        updates(&plan, "nas"),
        [
            ("extraConfig.cpuunits".to_string(), json!(null), json!("200"), json!("hotplug")),
            (
                "extraConfig.watchdog".into(),
                json!(null),
                json!("model=i6300esb,action=reset"),
                json!("needs_reboot")
            ),
        ],
        "{plan:#}"
    );
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let vm = pve.vm(130);
    assert_eq!(vm["pending"]["watchdog"], "model=i6300esb,action=reset", "{vm:#}");
    assert!(updates(&plan_hosts(&fixture, &pve, "nas"), "nas").is_empty(), "in sync once it reboots");
}

#[test]
fn extra_config_refuses_root_only_and_owned_keys_at_evaluation() {
    let (fixture, pve) = lab(Scenario::new());
    for (key, value, why) in [
        (
            "args",
            "-cpu host",
            "only root@pam may set it, never an API token (qemu-server `check_vm_modify_config_perm`); set it by hand as root, or leave it out",
        ),
        (
            "hugepages",
            "1024",
            "only root@pam may set it, never an API token (qemu-server `check_vm_modify_config_perm`); set it by hand as root, or leave it out",
        ),
        (
            "hostpci0",
            "host=0000:01:00.0",
            "nixprox manages this key: use its own option (docs/configuration.md)",
        ),
        ("cores", "8", "nixprox manages this key: use its own option (docs/configuration.md)"),
        (
            "serial1",
            "/dev/ttyS1",
            "only `socket` (a host device is root@pam's: `$check_vm_create_serial_perm`)",
        ),
    ] {
        case_nas(&fixture, json!({"extraConfig": {key: value}}));
        let run = cli::plan(&fixture, &pve, &["--hosts", "nas"]);
        assert_eq!(run.code, 1, "{key}: {}", run.stderr);
        assert_eq!(
            error_text(&run),
            format!("error: host `nas`: `nixprox.vm.extraConfig.{key}` cannot be set: {why}"),
            "{key}"
        );
    }
    assert!(pve.requests(false).iter().all(|(method, _)| method == "GET"), "nothing written");
}

#[test]
fn a_replace_lists_what_it_would_lose_and_is_gated_with_it() {
    let (fixture, pve) = lab(Scenario::new());
    // Set by hand in the UI, as root: nixprox manages none of it.
    pve.command(json!({"cmd": "set_config", "vmid": 130, "config": {
        "args": "-device intel-hda", "hostpci1": "host=0000:03:00.0", "unused0": "local-lvm:vm-130-disk-7",
        "tpmstate0": "local-lvm:vm-130-disk-5,size=4M,version=v1.2", "tablet": "0"
    }}));
    // A new TPM version cannot be made in place; `tablet` is declared, so it is not lost.
    case_nas(&fixture, json!({"tpm": {"version": "v2.0"}, "extraConfig": {"tablet": "0"}}));
    let plan = plan_hosts(&fixture, &pve, "nas");
    let replace = actions(&plan, "nas").into_iter().find(|a| a["kind"] == "replace_vm").expect("replace_vm");
    assert_eq!(
        replace["reason"],
        "the TPM's version changes from v1.2 to v2.0, and its state cannot be converted; the new VM would not have what nixprox does not manage: `args`, `hostpci1`, `unused0` (declare them, e.g. in `nixprox.vm.extraConfig`, or note them down): destroy and recreate the VM",
        "{replace:#}"
    );
    let lost =
        replace["changes"].as_array().expect("changes").iter().find(|c| c["field"] == "unmanaged").cloned();
    assert_eq!(
        lost,
        Some(
            json!({"field": "unmanaged", "before": {"args": "-device intel-hda", "hostpci1": "host=0000:03:00.0", "unused0": "local-lvm:vm-130-disk-7"}, "after": null})
        ),
        "{replace:#}"
    );
    assert_eq!(replace["blocked"]["setting"], "policies.allow_replace");
    // The text plan says it too.
    let run = cli::plan(&fixture, &pve, &["--hosts", "nas"]);
    assert!(run.stdout.contains("unmanaged"), "{}", run.stdout);
}

#[test]
fn a_virtiofs_share_is_added_read_back_and_removed_and_needs_its_mapping() {
    let (fixture, pve) = lab(Scenario::new().set("mappings", mappings()));
    case_nas(&fixture, json!({"virtiofs": {"virtiofs0": {"mapping": "media", "cache": "never"}}}));
    let plan = plan_hosts(&fixture, &pve, "nas");
    assert_eq!(
        updates(&plan, "nas"),
        [(
            "virtiofs.virtiofs0".to_string(),
            json!(null),
            json!("dirid=media,cache=never"),
            json!("needs_reboot")
        )],
        "{plan:#}"
    );
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(config(&pve)["virtiofs0"], "dirid=media,cache=never");
    assert!(updates(&plan_hosts(&fixture, &pve, "nas"), "nas").is_empty(), "read back in sync");
    // The NixOS side: the initrd can mount it.
    let modules = eval_config(&fixture, "nas", "c: c.boot.initrd.availableKernelModules");
    assert!(modules.as_array().expect("list").contains(&json!("virtiofs")), "{modules}");

    // A share on a mapping the node lacks is blocked; removed from the flake, it goes.
    case_nas(&fixture, json!({"virtiofs": {"virtiofs0": {"mapping": "backups"}}}));
    let plan = plan_hosts(&fixture, &pve, "nas");
    let update = actions(&plan, "nas").into_iter().find(|a| a["kind"] == "update_vm").expect("update_vm");
    assert!(
        update["blocked"]["reason"]
            .as_str()
            .expect("blocked")
            .starts_with("the directory mapping `backups` does not exist"),
        "{update:#}"
    );
    std::fs::remove_file(fixture.dir.path().join("case.json")).expect("rm case.json");
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(config(&pve).get("virtiofs0"), None);
}

/// Proxmox VE 8.3 has no virtiofs and no `/cluster/mapping/dir` (fakepve answers 501 there,
/// as the real one does for an unknown path): a declared share is blocked with a reason that
/// names the host and the cluster's version, never a generic mapping-read error, and apply
/// writes nothing.
#[test]
fn a_virtiofs_share_on_a_cluster_older_than_8_4_is_blocked_naming_host_and_version() {
    let (fixture, pve) = lab(Scenario::new().set("version", json!("8.3.2")).set("mappings", mappings()));
    case_nas(&fixture, json!({"virtiofs": {"virtiofs0": {"mapping": "media"}}}));
    let reason = "`nas` shares a directory through virtiofs (`nixprox.vm.virtiofs.virtiofs0`), which needs Proxmox VE 8.4 or later, and the cluster runs 8.3.2 (GET /version); upgrade the cluster, or remove the share";
    let plan = plan_hosts(&fixture, &pve, "nas");
    let update = actions(&plan, "nas").into_iter().find(|a| a["kind"] == "update_vm").expect("update_vm");
    assert_eq!(update["blocked"]["reason"], reason, "{plan:#}");
    let run = cli::plan(&fixture, &pve, &["--hosts", "nas"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("needs Proxmox VE 8.4 or later, and the cluster runs 8.3.2"),
        "{}",
        run.stdout
    );
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(config(&pve).get("virtiofs0"), None);
    assert!(!run.stderr.contains("not implemented"), "{}", run.stderr);

    // The same flake on 8.4 adds it.
    pve.command(json!({"cmd": "set", "version": "8.4.1"}));
    let plan = plan_hosts(&fixture, &pve, "nas");
    let update = actions(&plan, "nas").into_iter().find(|a| a["kind"] == "update_vm").expect("update_vm");
    assert_eq!(update["blocked"], Value::Null, "{plan:#}");
}

#[test]
fn an_ha_managed_vm_is_left_where_ha_put_it() {
    // HA failed `nas` over to pve2; the flake still says pve1 (the default node).
    let mut vm = nas_vm();
    vm["node"] = json!("pve2");
    vm["status"] = json!("running");
    vm["ha_state"] = json!("started");
    let fixture = Fixture::copy("hardware");
    let pve = FakePve::start(Scenario::new().set("nodes", json!(["pve1", "pve2"])).guest(vm));
    let plan = plan_hosts(&fixture, &pve, "nas");
    let migrate = actions(&plan, "nas").into_iter().find(|a| a["kind"] == "migrate_vm").expect("migrate_vm");
    assert_eq!(
        migrate["blocked"]["reason"],
        "the VM is an HA resource (requested state `started`) and HA placed it on node pve2: nixprox leaves its placement to HA; set `nixprox.vm.node = \"pve2\"`, or move it with `ha-manager migrate vm:130 pve1`",
        "{plan:#}"
    );
    pve.requests(true);
    let run = plan_and_apply(&fixture, &pve, "nas");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(pve.requests(false).iter().all(|(_, path)| !path.ends_with("/migrate")), "no migration");
    assert_eq!(pve.vm(130)["node"], "pve2");

    // A replacement would end its HA membership (destroyed with `purge`): the plan says so.
    pve.command(json!({"cmd": "set_config", "vmid": 130, "config": {"tpmstate0": "local-lvm:vm-130-disk-5,size=4M,version=v1.2"}}));
    case_nas(&fixture, json!({"tpm": {"version": "v2.0"}}));
    let plan = plan_hosts(&fixture, &pve, "nas");
    let replace = actions(&plan, "nas").into_iter().find(|a| a["kind"] == "replace_vm").expect("replace_vm");
    let reason = replace["reason"].as_str().expect("reason");
    assert!(
        reason.contains("the VM is an HA resource, which destroying it ends (the new VM is not one: add it again with `ha-manager add vm:130`)"),
        "{reason}"
    );
}

#[test]
fn an_iso_host_whose_system_logs_to_ttys0_gets_a_serial_port_unless_it_says_otherwise() {
    let fixture = Fixture::copy("hardware");
    let scenario = Scenario::new()
        .set("files", json!([{"storage": "local", "name": "nixos-minimal.iso", "size": 1048576}]));
    let pve = FakePve::start(scenario);
    let plan = plan_hosts(&fixture, &pve, "installer");
    let create =
        actions(&plan, "installer").into_iter().find(|a| a["kind"] == "create_vm").expect("create_vm");
    let serial =
        create["changes"].as_array().expect("changes").iter().find(|c| c["field"] == "serial").cloned();
    assert_eq!(serial.map(|c| c["after"].clone()), Some(json!(true)), "{create:#}");
    let run = plan_and_apply(&fixture, &pve, "installer");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(pve.vm(132)["config"]["serial0"], "socket");

    // Declared off, it is off; a template host is never given one by this rule (`plain`).
    case_nas(&fixture, json!({}));
    std::fs::write(
        fixture.dir.path().join("case.json"),
        json!({"vm": {"installer": {"serial": false}}}).to_string(),
    )
    .expect("case.json");
    let plan = plan_hosts(&fixture, &pve, "installer");
    let fields: Vec<String> = updates(&plan, "installer").into_iter().map(|u| u.0).collect();
    assert_eq!(fields, ["serial"], "the socket goes: {plan:#}");
    let plain = plan_hosts(&fixture, &pve, "plain");
    let create = actions(&plain, "plain").into_iter().find(|a| a["kind"] == "create_vm").expect("create_vm");
    assert!(
        create["changes"].as_array().expect("changes").iter().all(|c| c["field"] != "serial"),
        "{create:#}"
    );
}

/// `nas` on pve2 (the flake says pve1), `status`, with `config` on top of its own.
fn nas_on_pve2(status: &str, config: Value, mappings: Value) -> (Fixture, FakePve) {
    let mut vm = nas_vm();
    vm["node"] = json!("pve2");
    vm["status"] = json!(status);
    if let (Some(into), Some(extra)) = (vm["config"].as_object_mut(), config.as_object()) {
        into.extend(extra.clone());
    }
    let scenario = Scenario::new().set("nodes", json!(["pve1", "pve2"])).set("mappings", mappings).guest(vm);
    (Fixture::copy("hardware"), FakePve::start(scenario))
}

fn migrate_of(plan: &Value) -> Value {
    actions(plan, "nas").into_iter().find(|a| a["kind"] == "migrate_vm").expect("migrate_vm")
}

#[test]
fn a_vm_with_passthrough_migrates_only_the_way_proxmox_can() {
    // A raw device: Proxmox does not migrate the VM at all.
    let (fixture, pve) = nas_on_pve2("stopped", json!({"hostpci1": "host=0000:03:00.0"}), json!({}));
    let migrate = migrate_of(&plan_hosts(&fixture, &pve, "nas"));
    assert_eq!(
        migrate["blocked"]["reason"],
        "the VM uses local devices (hostpci1), which Proxmox does not migrate; move the VM yourself (as root: remove them, migrate, add them back), or declare its current node"
    );

    // A mapped GPU on both nodes: a stopped VM migrates (offline), a running one cannot move live…
    let gpu_everywhere = |live: bool| {
        let mut gpu =
            json!({"id": "gpu", "map": ["node=pve1,path=0000:01:00.0", "node=pve2,path=0000:01:00.0"]});
        if live {
            gpu["live-migration-capable"] = json!(1);
        }
        json!({"pci": [gpu]})
    };
    let mapped = json!({"hostpci0": "mapping=gpu,pcie=1"});
    let declare = |fixture: &Fixture| {
        std::fs::write(
            fixture.dir.path().join("case.json"),
            json!({"vm": {"nas": {"pci": {"hostpci0": {"mapping": "gpu", "pcie": true}}}}}).to_string(),
        )
        .expect("case.json");
    };
    let (fixture, pve) = nas_on_pve2("stopped", mapped.clone(), gpu_everywhere(false));
    declare(&fixture);
    assert!(migrate_of(&plan_hosts(&fixture, &pve, "nas"))["blocked"].is_null(), "offline: allowed");
    let (fixture, pve) = nas_on_pve2("running", mapped.clone(), gpu_everywhere(false));
    declare(&fixture);
    assert_eq!(
        migrate_of(&plan_hosts(&fixture, &pve, "nas"))["blocked"]["reason"],
        "the VM runs with mapped devices Proxmox cannot live-migrate (hostpci0:gpu); shut it down, and the next apply migrates it offline"
    );
    // …unless the mapping is live-migration capable.
    let (fixture, pve) = nas_on_pve2("running", mapped, gpu_everywhere(true));
    declare(&fixture);
    assert!(migrate_of(&plan_hosts(&fixture, &pve, "nas"))["blocked"].is_null());
}

/// An HA resource's shutdown and stop only ask the HA manager (qemu-server `vm_shutdown` and
/// `vm_stop`: "Requesting HA stop"), whose task ends before the VM has stopped; fakepve's HA
/// manager acts a round later (`ha_delay`, 1 s here). Pruning an orphan that HA keeps
/// running waits for the VM to stop before it destroys it, and asks for the stop once: it
/// never destroys a running VM or keeps re-requesting.
#[test]
fn an_ha_managed_orphan_is_stopped_through_ha_and_waited_for_before_it_is_destroyed() {
    let (fixture, pve) = cli::homelab_with(|g| {
        if g["vmid"] == 150 {
            g["status"] = json!("running");
            g["ha_state"] = json!("started");
        }
    });
    pve.command(json!({"cmd": "set", "time_scale": 0.1}));
    // The homelab's nixprox.yaml sets `prune_orphans`.
    pve.requests(true);
    let run = plan_and_apply(&fixture, &pve, "old-wiki");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(pve.try_command(json!({"cmd": "vm", "vmid": 150})).is_err(), "VM 150 is gone");
    let requests = pve.requests(false);
    let posted = |what: &str| requests.iter().filter(|(m, p)| m == "POST" && p.ends_with(what)).count();
    assert_eq!(posted("/qemu/150/status/shutdown"), 1, "{requests:?}");
    assert_eq!(posted("/qemu/150/status/stop"), 0, "HA shut it down: no second request {requests:?}");
    let deletes = requests.iter().filter(|(m, p)| m == "DELETE" && p.ends_with("/qemu/150")).count();
    assert_eq!(deletes, 1, "destroyed once it had stopped, never refused as running: {requests:?}");
}
