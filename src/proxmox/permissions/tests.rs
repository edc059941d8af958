use serde_json::json;

use super::*;
use crate::plan::{PlanInput, testkit};
use crate::proxmox::LiveVm;

fn granted(answer: Value) -> Granted {
    Granted::parse(&answer).expect("a permissions answer")
}

fn template(vmid: u32, node: &str) -> LiveVm {
    LiveVm {
        vmid,
        node: node.into(),
        name: "nixos-bootstrap".into(),
        status: "stopped".into(),
        template: true,
        lock: None,
        tags: Default::default(),
        config: None,
    }
}

fn plan_of(desired: &[DesiredHost], live: &[LiveVm]) -> Plan {
    crate::plan::plan(PlanInput { desired, live, policies: Default::default(), only: None, probes: None })
}

#[test]
fn the_nearest_listed_path_decides_and_only_propagated_privileges_reach_children() {
    let answer = granted(json!({
        "/": {"Sys.Audit": 1},
        "/vms": {"VM.Audit": 1, "VM.PowerMgmt": 0},
        "/vms/101": {"VM.Config.CPU": 1},
        "/storage/local-lvm": {"Datastore.AllocateSpace": true}
    }));
    assert!(answer.holds("/vms", "VM.Audit"));
    assert!(answer.holds("/vms/102", "VM.Audit"), "propagated from /vms");
    assert!(answer.holds("/vms/*", "VM.Audit"), "a VM not created yet");
    assert!(answer.holds("/vms", "VM.PowerMgmt"), "on the path itself");
    assert!(!answer.holds("/vms/102", "VM.PowerMgmt"), "not propagated");
    // Proxmox lists /vms/101 with everything that holds there: an ACL on it replaced the
    // inherited roles, so VM.Audit is not inherited from /vms.
    assert!(answer.holds("/vms/101", "VM.Config.CPU"));
    assert!(!answer.holds("/vms/101", "VM.Audit"));
    assert!(answer.holds("/storage/local-lvm", "Datastore.AllocateSpace"));
    assert!(!answer.holds("/storage/local", "Datastore.AllocateSpace"));
    assert!(answer.holds("/nodes/pve1", "Sys.Audit"));
    assert!(!granted(json!({})).holds("/", "VM.Audit"));
    assert!(Granted::parse(&json!([])).is_err());
    assert!(Granted::parse(&json!({"/": 1})).is_err());
}

#[test]
fn finds_write_privileges_only() {
    let answer = granted(json!({
        "/": {"Sys.Audit": 1, "VM.Audit": 1},
        "/vms": {"VM.Audit": 1, "VM.PowerMgmt": 1, "VM.Allocate": 1, "VM.Monitor": 1},
        "/storage": {"Datastore.Audit": 1}
    }));
    assert_eq!(
        answer.write_privileges(),
        [
            ("/vms".to_string(), "VM.Allocate".to_string()),
            ("/vms".to_string(), "VM.Monitor".to_string()),
            ("/vms".to_string(), "VM.PowerMgmt".to_string())
        ]
    );
    assert!(granted(json!({"/": {"VM.Audit": 1, "VM.GuestAgent.Audit": 1}})).write_privileges().is_empty());
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
    let missing = missing(&reader, needs.clone());
    assert_eq!(missing.len(), 1, "{missing:#?}");
    assert_eq!((missing[0].privileges, missing[0].path.as_str()), (&["Pool.Audit"][..], "/pool/lab"));
    let auditor = granted(json!({"/vms": {"VM.Audit": 1}, "/pool": {"Pool.Audit": 1}}));
    assert!(super::missing(&auditor, needs).is_empty());
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
        missing: missing(&granted(all), needs),
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

#[test]
fn ancestors_walk_up_to_the_root() {
    assert_eq!(ancestors("/vms/101").collect::<Vec<_>>(), ["/vms/101", "/vms", "/"]);
    assert_eq!(ancestors("/").collect::<Vec<_>>(), ["/"]);
    assert_eq!(ancestors("/sdn/zones/localnetwork/vmbr0/20").count(), 6);
}
