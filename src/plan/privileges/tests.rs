use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::*;
use crate::plan::{PlanInput, testkit};
use crate::proxmox::permissions::{AGENT_FILE_READ, APPLY_ROLE, Granted, MissingPrivileges, Need, missing};

fn granted(answer: Value) -> Granted {
    Granted::parse(&answer).expect("a permissions answer")
}

fn template(vmid: u32, node: &str) -> LiveVm {
    LiveVm {
        vmid,
        kind: Default::default(),
        node: node.into(),
        name: "nixos-bootstrap".into(),
        status: "stopped".into(),
        template: true,
        lock: None,
        tags: Default::default(),
        config: None,
        ha_state: None,
    }
}

fn plan_of(desired: &[DesiredHost], live: &[LiveVm]) -> Plan {
    crate::plan::plan(PlanInput { desired, live, policies: Default::default(), only: None, probes: None })
}

#[test]
fn a_clone_needs_the_template_the_new_vm_its_storage_and_its_bridge() {
    let mut web = testkit::host("web");
    web.address = None;
    let live = vec![template(9000, "pve1"), template(9001, "pve2")];
    let plan = plan_of(std::slice::from_ref(&web), &live);
    let needs = needs_to_apply(&plan, &[web], &live, true);
    let has = |privilege: &str, path: &str| {
        needs.iter().any(|n| n.privileges.contains(&privilege) && n.path == path)
    };
    assert!(has("VM.Clone", "/vms/9000"), "the template on the host's node: {needs:#?}");
    assert!(!has("VM.Clone", "/vms/9001"));
    for privilege in ["VM.Allocate", "VM.Config.CPU", "VM.Config.Memory", "VM.Config.Options", "VM.PowerMgmt"]
    {
        assert!(has(privilege, "/vms/*"), "{privilege}: {needs:#?}");
    }
    assert!(has("VM.GuestAgent.Audit", "/vms/*"), "no static address: the agent");
    assert!(has("Datastore.AllocateSpace", "/storage/local-lvm"));
    assert!(has("SDN.Use", "/sdn/zones/localnetwork/vmbr0"));
}

#[test]
fn an_update_needs_only_what_its_fields_touch() {
    let mut db = testkit::host("db");
    db.spec.cores = 4;
    let live = vec![testkit::live("db", 102)];
    let plan = plan_of(std::slice::from_ref(&db), &live);
    let needs = needs_to_apply(&plan, &[db], &live, true);
    let privileges: BTreeSet<&str> = needs.iter().flat_map(|n| n.privileges.iter().copied()).collect();
    assert_eq!(privileges, BTreeSet::from(["VM.Config.CPU", "VM.Config.Options"]), "{needs:#?}");
    assert!(needs.iter().all(|n| n.path == "/vms/102"), "{needs:#?}");
}

#[test]
fn plan_needs_audit_on_every_vm_and_on_declared_pools() {
    let mut web = testkit::host("web");
    web.spec.pool = Some("lab".into());
    let plan = plan_of(std::slice::from_ref(&web), &[]);
    let needs = needs_to_read(&plan, &[web], false);
    let reader = granted(json!({"/vms": {"VM.Audit": 1}}));
    let lacking = missing(&reader, needs.clone());
    assert_eq!(lacking.len(), 1, "{lacking:#?}");
    assert_eq!((lacking[0].privileges, lacking[0].path.as_str()), (&["Pool.Audit"][..], "/pool/lab"));
    let auditor = granted(json!({"/vms": {"VM.Audit": 1}, "/pool": {"Pool.Audit": 1}}));
    assert!(missing(&auditor, needs).is_empty());
}

#[test]
fn the_message_names_privilege_path_and_the_pveum_fix() {
    let mut web = testkit::host("web");
    web.address = None;
    let live = vec![template(9000, "pve1")];
    let plan = plan_of(std::slice::from_ref(&web), &live);
    let needs = needs_to_apply(&plan, &[web], &live, true);
    let mut all = json!({"/vms": {}, "/storage": {"Datastore.AllocateSpace": 1}, "/sdn": {}});
    for privilege in [
        "VM.Allocate",
        "VM.Config.CPU",
        "VM.Config.Memory",
        "VM.Config.Options",
        "VM.Config.Disk",
        "VM.Config.Network",
        "VM.Config.Cloudinit",
        "VM.PowerMgmt",
        "VM.Audit",
    ] {
        all["/vms"][privilege] = json!(1);
    }
    let err = MissingPrivileges {
        token: "nixprox@pve!apply".into(),
        role: APPLY_ROLE,
        missing: missing(&granted(all), needs.clone()),
        pve_major: None,
    };
    assert_eq!(
        err.to_string(),
        "the Proxmox token `nixprox@pve!apply` lacks privileges this run needs; nothing was changed:
  SDN.Use on /sdn/zones/localnetwork/vmbr0 (`web`: network)
  VM.Clone on /vms/9000 (`web`: clone the template)
  VM.GuestAgent.Audit (VM.Monitor on PVE 8) on /vms (propagated) (`web`: its address (guest agent))
grant the role `NixproxApply` (docs/guide.md#proxmox-tokens) on these paths to the token and its user (a privilege-separated token holds only what both hold):
  pveum acl modify /sdn/zones/localnetwork --users 'nixprox@pve' --tokens 'nixprox@pve!apply' --roles NixproxApply
  pveum acl modify /vms --users 'nixprox@pve' --tokens 'nixprox@pve!apply' --roles NixproxApply
or add them to the role you use: pveum role modify <role> --append 1 --privs 'SDN.Use,VM.Clone,VM.GuestAgent.Audit'"
    );
}

/// The guest agent's privileges are named as the cluster's version knows them (issue 22):
/// PVE 8 rejects `VM.GuestAgent.*` as invalid, PVE 9 has no `VM.Monitor` any more.
#[test]
fn the_agent_privilege_is_named_for_the_clusters_version() {
    let mut web = testkit::host("web");
    web.address = None;
    let live = vec![template(9000, "pve1")];
    let plan = plan_of(std::slice::from_ref(&web), &live);
    let needs = needs_to_apply(&plan, &[web], &live, true);
    let reader = granted(json!({"/vms": {"VM.Audit": 1}}));
    let lacking = missing(&reader, needs).into_iter().filter(Need::is_agent).collect::<Vec<_>>();
    assert!(!lacking.is_empty());
    let message = |pve_major| {
        MissingPrivileges {
            token: "nixprox@pve!apply".into(),
            role: APPLY_ROLE,
            missing: lacking.clone(),
            pve_major,
        }
        .to_string()
    };
    let eight = message(Some(8));
    assert!(
        eight.contains(
            "\n  VM.Monitor (Proxmox VE 8) on /vms (propagated) (`web`: its address (guest agent))"
        ),
        "{eight}"
    );
    assert!(eight.ends_with("pveum role modify <role> --append 1 --privs 'VM.Monitor'"), "{eight}");
    assert!(!eight.contains("GuestAgent"), "{eight}");
    let nine = message(Some(9));
    assert!(
        nine.contains(
            "\n  VM.GuestAgent.Audit (Proxmox VE 9) on /vms (propagated) (`web`: its address (guest agent))"
        ),
        "{nine}"
    );
    assert!(nine.ends_with("--privs 'VM.GuestAgent.Audit'"), "{nine}");
    assert!(!nine.contains("VM.Monitor"), "{nine}");
    // The read-only plan token on PVE 8: no read-only role has the agent's privilege.
    let plan = MissingPrivileges {
        token: "nixprox@pve!plan".into(),
        role: crate::proxmox::permissions::PLAN_ROLE,
        missing: lacking.clone(),
        pve_major: Some(8),
    };
    assert!(
        plan.to_string().ends_with(
            "\non Proxmox VE 8 no read-only role holds VM.Monitor, which can also change a running VM: rather give these hosts a static `nixprox.address`"
        ),
        "{plan}"
    );
}

#[test]
fn taking_over_moving_and_letting_go_need_their_own_privileges() {
    let has = |needs: &[Need], privilege: &str, path: &str| {
        needs.iter().any(|n| n.privileges.contains(&privilege) && n.path == path)
    };
    // Adopting in place with the key from the guest agent (no declared key, no static address).
    let mut web = testkit::host("web");
    web.address = None;
    let mut vm = testkit::live("web", 150);
    vm.tags.clear();
    testkit::config(&mut vm).metadata = None;
    let live = vec![vm];
    let plan = plan_of(std::slice::from_ref(&web), &live);
    let needs = needs_to_apply(&plan, std::slice::from_ref(&web), &live, true);
    assert!(has(&needs, "VM.GuestAgent.FileRead", "/vms/150"), "{needs:#?}");
    assert!(needs.iter().any(|n| n.privileges == AGENT_FILE_READ), "VM.Monitor on PVE 8: {needs:#?}");
    assert!(has(&needs, "VM.GuestAgent.Audit", "/vms/150"));
    assert!(has(&needs, "VM.Config.Options", "/vms/150"));
    // A declared key needs no file read.
    web.ssh.host_key = Some("ssh-ed25519 AAAA root@web".into());
    let needs = needs_to_apply(&plan_of(std::slice::from_ref(&web), &live), &[web], &live, true);
    assert!(!has(&needs, "VM.GuestAgent.FileRead", "/vms/150"), "{needs:#?}");

    // Moving to another node: VM.Migrate, nothing of a destroy or create.
    let mut moved = testkit::host("db");
    moved.node = "pve2".into();
    let live = vec![testkit::live("db", 102)];
    let needs = needs_to_apply(&plan_of(std::slice::from_ref(&moved), &live), &[moved], &live, true);
    let privileges: BTreeSet<&str> = needs.iter().flat_map(|n| n.privileges.iter().copied()).collect();
    assert_eq!(privileges, BTreeSet::from(["VM.Config.Options", "VM.Migrate"]), "{needs:#?}");
    assert!(has(&needs, "VM.Migrate", "/vms/102"));

    // Letting go: the notes and tags only.
    let mut kept = testkit::host("cache");
    kept.keep = true;
    let live = vec![testkit::live("cache", 103)];
    let needs = needs_to_apply(&plan_of(std::slice::from_ref(&kept), &live), &[kept], &live, true);
    assert_eq!(needs.len(), 1, "{needs:#?}");
    assert!(has(&needs, "VM.Config.Options", "/vms/103"));
}

#[test]
fn an_allowed_detach_needs_the_disk_privilege() {
    let db = testkit::host("db");
    let mut vm = testkit::live("db", 102);
    let disk = testkit::config(&mut vm).spec.disks["scsi0"].clone();
    testkit::config(&mut vm).spec.disks.insert("scsi1".into(), disk);
    let live = vec![vm];
    let policies = crate::config::Policies { allow_detach_disks: true, ..Default::default() };
    let plan = crate::plan::plan(PlanInput {
        desired: std::slice::from_ref(&db),
        live: &live,
        policies,
        only: None,
        probes: None,
    });
    let needs = needs_to_apply(&plan, &[db], &live, true);
    assert!(needs.iter().any(|n| n.privileges == ["VM.Config.Disk"] && n.path == "/vms/102"), "{needs:#?}");
}

/// `web` as an image host whose images go to the `images` storage.
fn image_host() -> DesiredHost {
    use crate::flake::host::{ImageEval, ImageSource};
    let mut web = testkit::host("web");
    web.bootstrap = Bootstrap::Image(ImageSource {
        package: ImageEval {
            out_path: "/nix/store/0c8yzlgy9xbfn6sjcx6rh6fzqfvc3ai2-web-images".into(),
            drv_path: None,
            image_sizes: Default::default(),
        },
        format: crate::spec::ImageFormat::Qcow2,
        storage: "images".into(),
    });
    web
}

#[test]
fn an_image_host_needs_the_upload_the_import_and_the_agent_file_read() {
    let web = image_host();
    let plan = plan_of(std::slice::from_ref(&web), &[]);
    let needs = needs_to_apply(&plan, std::slice::from_ref(&web), &[], true);
    let has = |privilege: &str, path: &str| {
        needs.iter().any(|n| n.privileges.contains(&privilege) && n.path == path)
    };
    // pve-storage Status.pm `upload`; Storage.pm `check_volume_access` for an `import` volume.
    assert!(has("Datastore.AllocateTemplate", "/storage/images"), "{needs:#?}");
    assert!(has("Datastore.Audit", "/storage/images"));
    assert!(has("VM.GuestAgent.FileRead", "/vms/*"), "the host key through the agent");
    assert!(has("VM.Allocate", "/vms/*") && has("Datastore.AllocateSpace", "/storage/local-lvm"));
    assert!(!has("VM.Clone", "/vms/9000"), "no template");
    let reader = needs_to_read(&plan, &[web], false);
    assert!(
        reader.iter().any(|n| n.path == "/storage/images" && n.privileges.contains(&"Datastore.Audit")),
        "planning reads the image storage: {reader:#?}"
    );
    let apply_token = granted(json!({"/vms": {"VM.Audit": 1}}));
    let lacking = MissingPrivileges {
        token: "nixprox@pve!apply".into(),
        role: APPLY_ROLE,
        missing: missing(&apply_token, needs),
        pve_major: None,
    };
    assert!(
        lacking.to_string().contains("\n  VM.GuestAgent.FileRead (VM.Monitor on PVE 8) on /vms (propagated) (`web`: its host key (guest agent))"),
        "{lacking}"
    );
}

#[test]
fn an_installed_image_host_switches_without_reading_files_in_the_guest() {
    let mut web = image_host();
    web.system.toplevel.push_str("-2");
    let live = vec![testkit::live("web", 101)];
    let plan = plan_of(std::slice::from_ref(&web), &live);
    let needs = needs_to_apply(&plan, &[web], &live, true);
    assert!(!needs.iter().any(|n| n.privileges.contains(&"VM.GuestAgent.FileRead")), "{needs:#?}");
    assert!(!needs.iter().any(|n| n.path.starts_with("/storage/")), "{needs:#?}");
}

#[test]
fn a_conversion_needs_the_agents_os_again_and_its_key_unless_declared() {
    let mut web = testkit::host("web");
    web.allow.reinstall = true;
    let mut vm = testkit::live("web", 150);
    vm.tags.clear();
    let config = testkit::config(&mut vm);
    config.metadata = None;
    config.guest_os =
        Some(crate::proxmox::guest::GuestOs::Read { id: "debian".into(), pretty_name: "Debian".into() });
    let live = vec![vm];
    let plan = plan_of(std::slice::from_ref(&web), &live);
    let needs = needs_to_apply(&plan, std::slice::from_ref(&web), &live, true);
    let has =
        |privilege: &str| needs.iter().any(|n| n.privileges.contains(&privilege) && n.path == "/vms/150");
    assert!(has("VM.GuestAgent.Audit"), "{needs:#?}");
    assert!(has("VM.GuestAgent.FileRead"), "{needs:#?}");
    // The key of the old system declared: no file read (a declared `ssh.hostKey` is the new
    // system's key and does not count).
    web.convert.host_key = Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIold".into());
    let plan = plan_of(std::slice::from_ref(&web), &live);
    let needs = needs_to_apply(&plan, std::slice::from_ref(&web), &live, true);
    assert!(!needs.iter().any(|n| n.privileges == AGENT_FILE_READ), "{needs:#?}");
}

#[test]
fn a_new_container_needs_its_storages_its_bridge_its_template_and_sys_modify_when_privileged() {
    use crate::flake::host::DesiredContainer;
    use crate::spec::container::{ContainerSpec, CtNetSpec, Features, MountSpec, VolumeSpec};
    let mut ct = testkit::host("ct");
    let volume = |storage: &str| VolumeSpec { storage: storage.into(), size_bytes: 8 << 30 };
    let net = CtNetSpec {
        name: "eth0".into(),
        bridge: "vmbr1".into(),
        mac: None,
        vlan: None,
        firewall: false,
        address: None,
    };
    ct.container = Some(DesiredContainer {
        spec: ContainerSpec {
            cores: None,
            memory_mib: 512,
            swap_mib: 512,
            rootfs: volume("fast"),
            mounts: [(
                "mp0".to_string(),
                MountSpec { volume: volume("bulk"), path: "/data".into(), backup: false },
            )]
            .into(),
            networks: [("net0".to_string(), net)].into(),
            features: Features::default(),
            unprivileged: false,
            startup: None,
        },
        template: Some("templates:vztmpl/nixos.tar.xz".into()),
        tarball: None,
        ssh_keys: Vec::new(),
    });
    ct.spec.disks.clear();
    ct.spec.networks.clear();
    let plan = plan_of(std::slice::from_ref(&ct), &[]);
    let needs = needs_to_apply(&plan, &[ct], &[], true);
    let has = |privilege: &str, path: &str| {
        needs.iter().any(|n| n.privileges.contains(&privilege) && n.path == path)
    };
    assert!(has("VM.Allocate", "/vms/*"));
    assert!(
        has("Datastore.AllocateSpace", "/storage/fast") && has("Datastore.AllocateSpace", "/storage/bulk")
    );
    assert!(has("Datastore.Audit", "/storage/templates"));
    assert!(has("VM.Config.Network", "/vms/*"));
    assert!(needs.iter().any(|n| n.privileges.contains(&"SDN.Use") && n.path.contains("vmbr1")), "{needs:?}");
    assert!(has("Sys.Modify", "/"), "a privileged container: {needs:?}");
}
