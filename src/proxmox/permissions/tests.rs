use serde_json::json;

use super::*;

fn granted(answer: Value) -> Granted {
    Granted::parse(&answer).expect("a permissions answer")
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
fn ancestors_walk_up_to_the_root() {
    assert_eq!(ancestors("/vms/101").collect::<Vec<_>>(), ["/vms/101", "/vms", "/"]);
    assert_eq!(ancestors("/").collect::<Vec<_>>(), ["/"]);
    assert_eq!(ancestors("/sdn/zones/localnetwork/vmbr0/20").count(), 6);
}

#[test]
fn a_bridge_granted_under_an_sdn_zone_counts_and_no_other_grant_does() {
    let need = |path: &str| Need::new(&["SDN.Use"], path.to_string(), None, "web", "network");
    // A VNet `vnet1` of zone `lab`: Proxmox checks /sdn/zones/lab/vnet1, not localnetwork.
    let zone_grant = granted(json!({"/sdn/zones/lab": {"SDN.Use": 1}}));
    assert!(missing(&zone_grant, vec![need("/sdn/zones/localnetwork/vnet1")]).is_empty());
    assert!(missing(&zone_grant, vec![need("/sdn/zones/localnetwork/vnet1/20")]).is_empty(), "a tagged NIC");
    let vnet_grant = granted(json!({"/sdn/zones/lab/vnet1": {"SDN.Use": 0}}));
    assert!(missing(&vnet_grant, vec![need("/sdn/zones/localnetwork/vnet1")]).is_empty());
    assert_eq!(missing(&vnet_grant, vec![need("/sdn/zones/localnetwork/vmbr0")]).len(), 1, "another bridge");
    let other = granted(json!({"/sdn/zones/lab": {"SDN.Audit": 1}, "/vms": {"SDN.Use": 1}}));
    assert_eq!(missing(&other, vec![need("/sdn/zones/localnetwork/vnet1")]).len(), 1);
}
