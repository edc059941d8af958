//! The fault suite's invariants for containers: the real `nixprox apply` against fakepve and the
//! SSH test host (`containers::CtLab`, the locked `fixtures/ct-deploy` flake), one fault at a
//! time, in the five moves of `faults.rs`: plan and keep the plan as the reviewed one; inject
//! the fault and apply; clear it and check the cluster through the API; apply the same reviewed
//! plan again; check again, now complete. What is checked ([`assert_invariants`]): one container
//! for the host and no second one, the guests nixprox does not manage (a container and a VM
//! with their owners' notes) byte for byte as they were, the container's notes keeping the
//! declared description, and, once finished, the key Proxmox generated pinned and recorded, the
//! flake's system running and recorded, and a new plan with nothing to do.
//!
//! The rows for these cases are in docs/reliability.md;
//! `every_container_fault_is_in_the_reliability_table` keeps the two in step.

use serde_json::{Value, json};

use crate::containers::CtLab;
use crate::support::cli;
use crate::support::nix::repo;

/// One fault the container suite injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CtFault {
    /// The container's create runs, its answer is lost.
    LostCreateAnswer,
    /// The create is accepted, but its task's status cannot be read.
    UnfollowedCreateTask,
    /// Another tool's creates take the VMID nixprox was given by `/cluster/nextid`, twice.
    NextidRace,
    /// A share of connections dropped before their request runs (fakepve's `flaky_network`).
    DroppedConnections,
    /// The start task of the new container fails (`TASK ERROR`).
    FailedStartTask,
    /// The container's config lock is held by someone else during a resize, twice.
    ConfigLockTimeout,
    /// The resize task fails on the storage (`lvextend` finds no free space).
    FailedResizeTask,
}

/// The cases, by the test that runs each.
const SUITE: &[(&str, CtFault)] = &[
    ("a_lost_container_create_answer_is_found_in_the_same_run", CtFault::LostCreateAnswer),
    ("a_container_create_whose_task_could_not_be_followed_is_found", CtFault::UnfollowedCreateTask),
    ("a_vmid_taken_by_another_tool_before_the_container_create_takes_another", CtFault::NextidRace),
    ("dropped_connections_create_one_container", CtFault::DroppedConnections),
    ("a_failed_container_start_task_is_finished_by_a_rerun", CtFault::FailedStartTask),
    ("a_config_lock_held_during_a_container_resize_is_waited_out", CtFault::ConfigLockTimeout),
    ("a_failed_container_resize_task_is_finished_by_a_rerun", CtFault::FailedResizeTask),
];

/// What LVM's `lvextend` says through pve-storage when the volume group is full.
const RESIZE_ERROR: &str = "error resizing volume '/dev/pve/vm-250-disk-0': Insufficient free space: 512 extents needed, but only 0 available";

/// Whether the case changes an existing container (a resize) rather than creating one.
fn resizes(fault: CtFault) -> bool {
    matches!(fault, CtFault::ConfigLockTimeout | CtFault::FailedResizeTask)
}

/// The container's owner's description, declared in the fixture's flake.
const DESCRIPTION: &str = "End-to-end test container.";

/// Guests nixprox does not manage, with their owners' notes: never touched.
fn bystanders(lab: &CtLab) {
    lab.pve.command(json!({"cmd": "add_vm", "guest": {
        "vmid": 260, "name": "other-ct", "node": "pve1", "status": "running", "type": "lxc",
        "config": {"hostname": "other-ct", "ostype": "debian", "memory": 256, "swap": 0, "unprivileged": 1,
                   "rootfs": "local-lvm:vm-260-disk-0,size=4G",
                   "net0": "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:02:60,ip=dhcp,type=veth",
                   "description": "Owner's container.\nDo not touch."}
    }}));
    lab.pve.command(json!({"cmd": "add_vm", "guest": {
        "vmid": 261, "name": "other-vm", "node": "pve1", "status": "stopped",
        "config": {"name": "other-vm", "memory": 1024, "scsi0": "local-lvm:vm-261-disk-0,size=8G",
                   "description": "Owner's VM."}
    }}));
}

/// What the bystanders look like through the API.
fn bystander_state(lab: &CtLab) -> Value {
    json!({
        "ct": lab.pve.command(json!({"cmd": "ct", "vmid": 260}))["config"],
        "vm": lab.pve.command(json!({"cmd": "vm", "vmid": 261}))["config"],
    })
}

/// The containers whose notes name host `ct`, with their configs.
fn containers_of_ct(lab: &CtLab) -> Vec<(u64, Value)> {
    let guests = lab.pve.command(json!({"cmd": "vms"}));
    guests
        .as_array()
        .expect("guests")
        .iter()
        .filter(|g| g["type"] == "lxc")
        .filter_map(|g| {
            let vmid = g["vmid"].as_u64().expect("vmid");
            let config = lab.pve.command(json!({"cmd": "ct", "vmid": vmid}))["config"].clone();
            let notes = config["description"].as_str().unwrap_or_default().to_string();
            let ours = nixprox::metadata::Notes::parse(&notes).metadata().is_some_and(|m| m.host == "ct");
            ours.then_some((vmid, config))
        })
        .collect()
}

/// The checks after each apply; `complete` after the re-run.
fn assert_invariants(lab: &CtLab, before: &Value, complete: bool) {
    assert_eq!(&bystander_state(lab), before, "the guests nixprox does not manage are untouched");
    let ours = containers_of_ct(lab);
    assert!(ours.len() <= 1, "a second container for `ct`: {ours:?}");
    let creates = lab
        .pve
        .requests(false)
        .into_iter()
        .filter(|(m, p)| m == "POST" && p.ends_with("/nodes/pve1/lxc"))
        .count();
    assert!(creates >= usize::from(complete), "{creates} creates");
    if let Some((_, config)) = ours.first() {
        let notes = config["description"].as_str().unwrap_or_default();
        assert!(notes.starts_with(DESCRIPTION), "the declared description is kept: {notes}");
    }
    if !complete {
        return;
    }
    let [(vmid, config)] = ours.as_slice() else { panic!("exactly one container for `ct`: {ours:?}") };
    let notes = config["description"].as_str().expect("notes");
    let metadata = nixprox::metadata::Notes::parse(notes).metadata().cloned().expect("block");
    let pinned =
        nixprox::ssh::HostKeyPolicy::pinned(&lab.host.host_public()).expect("pin").lines()[0].clone();
    assert_eq!(metadata.host_key.as_deref(), Some(pinned.as_str()), "the key Proxmox generated, pinned");
    let system = metadata.system.clone().expect("system recorded");
    assert_eq!(lab.host.current_system().as_deref(), Some(system.as_str()), "switched over SSH");
    assert_eq!(metadata.applying, None, "finished: {metadata:?}");
    assert!(config["tags"].as_str().unwrap_or_default().split(';').any(|t| t == "nixprox"), "{config}");
    assert!(*vmid != 260 && *vmid != 261);
    assert_eq!(cli::kinds(&lab.plan(), "ct"), ["noop"], "nothing left to do");
}

/// Everything a run said: stdout, stderr and the report.
fn said(run: &cli::Run, report: &Value) -> String {
    format!("{}\n{}\n{report}", run.stdout, run.stderr)
}

fn run_case(fault: CtFault) {
    let lab = CtLab::start();
    bystanders(&lab);
    let before = bystander_state(&lab);
    if fault == CtFault::NextidRace {
        lab.declare_more("id", Value::Null);
    }
    if resizes(fault) {
        // The container first, cleanly; the fault hits its resize.
        lab.plan();
        let (run, report) = lab.apply();
        assert_eq!(run.code, 0, "apply failed:\n{}", said(&run, &report));
        lab.declare("1", 512, "10G");
    }
    // 1. The reviewed plan.
    let plan = lab.plan();
    let expected: &[&str] = if resizes(fault) { &["resize_disk"] } else { &["create_vm", "switch"] };
    assert_eq!(cli::kinds(&plan, "ct"), expected, "{plan:#}");

    // 2. The fault, and what nixprox does about it.
    let command = |value: Value| {
        lab.pve.command(value);
    };
    match fault {
        CtFault::LostCreateAnswer => {
            command(json!({"cmd": "lose_answer", "method": "POST", "path": "/nodes/pve1/lxc$", "times": 1}))
        }
        // The client's first read of the create task's status and its 4 retries.
        CtFault::UnfollowedCreateTask => command(json!({"cmd": "lose_answer", "method": "GET",
                                                        "path": "/tasks/[^/]*:vzcreate:[^/]*/status$",
                                                        "times": 5})),
        // pve-cluster's `check_vmid_unused` (`PVE/Cluster.pm`), called by pve-container's
        // create (`PVE/API2/LXC.pm`, `create_vm`): "CT <vmid> already exists on node '<node>'".
        CtFault::NextidRace => command(json!({"cmd": "fail", "method": "POST", "path": "/nodes/pve1/lxc",
                                              "status": 500, "message": "CT 100 already exists on node 'pve1'",
                                              "times": 2})),
        CtFault::DroppedConnections => {
            command(json!({"cmd": "flaky_network", "drop_rate": 0.1, "seed": 9}));
        }
        // A start refused inside its worker (pve-container's `LXC/Config.pm` checks the
        // network against the bridge at start): the task ends in `TASK ERROR`.
        CtFault::FailedStartTask => command(json!({"cmd": "fail", "method": "POST",
                                                   "path": "/lxc/250/status/start",
                                                   "error": "mtu_size_bigger_than_bridge", "times": 1})),
        CtFault::ConfigLockTimeout => command(json!({"cmd": "fail", "method": "PUT",
                                                     "path": "/nodes/pve1/lxc/250/resize",
                                                     "error": "config_lock_timeout", "times": 2})),
        CtFault::FailedResizeTask => command(json!({"cmd": "task_error", "method": "PUT",
                                                    "path": "/lxc/250/resize$", "type": "resize",
                                                    "message": RESIZE_ERROR, "times": 1})),
    }
    let (run, report) = lab.apply();
    let text = said(&run, &report);
    match fault {
        CtFault::LostCreateAnswer | CtFault::UnfollowedCreateTask => {
            assert_eq!(run.code, 0, "found in the same run:\n{text}");
            assert!(text.contains("looking for VM"), "{text}");
            assert!(text.contains("answer was lost; the VM is there"), "{text}");
            assert_eq!(
                CtLab::steps(&report),
                ["create", "start", "host key", "switch", "finish"],
                "the key read from the create task's log: {report:#}"
            );
        }
        CtFault::NextidRace => {
            assert_eq!(run.code, 0, "another VMID taken:\n{text}");
            assert!(text.contains("was taken before the VM of `ct` was created"), "{text}");
            let ours = containers_of_ct(&lab);
            assert!(ours.iter().all(|(vmid, _)| *vmid > 101), "neither taken id is used: {ours:?}");
        }
        CtFault::DroppedConnections => {
            assert!(
                text.contains("retrying in") || text.contains("broke"),
                "connections were dropped:\n{text}"
            );
            assert!(
                run.code == 0 || (run.code == 3 && text.contains("broke")),
                "retried, or failed naming the broken connection:\n{text}"
            );
        }
        CtFault::FailedStartTask => {
            assert_eq!(run.code, 3, "{text}");
            assert_eq!(report["hosts"][0]["status"], "failed", "{report:#}");
            assert!(text.contains("MTU size"), "the task's error: {text}");
        }
        CtFault::ConfigLockTimeout => {
            assert_eq!(run.code, 0, "waited out:\n{text}");
            assert!(text.contains("can't lock file") && text.contains("got timeout"), "{text}");
        }
        CtFault::FailedResizeTask => {
            assert_eq!(run.code, 3, "{text}");
            let host = &report["hosts"][0];
            assert_eq!(
                (host["status"].as_str(), host["step"].as_str()),
                (Some("failed"), Some("resize")),
                "{report:#}"
            );
            assert!(text.contains("error resizing volume"), "the task's error: {text}");
            let config = lab.config();
            assert!(
                config["rootfs"].as_str().unwrap_or_default().ends_with("size=8G"),
                "not grown: {config}"
            );
        }
    }

    // 3. The fault cleared; the cluster as nixprox left it.
    command(json!({"cmd": "clear_failures"}));
    command(json!({"cmd": "clear_task_errors"}));
    command(json!({"cmd": "clear_answer_loss"}));
    command(json!({"cmd": "flaky_network", "drop_rate": 0.0}));
    assert_invariants(&lab, &before, false);

    // 4. The same reviewed plan again: it finishes.
    let (run, report) = lab.apply();
    assert_eq!(run.code, 0, "the re-run failed:\n{}", said(&run, &report));

    // 5. Complete.
    assert_invariants(&lab, &before, true);
    let creates = lab
        .pve
        .requests(false)
        .into_iter()
        .filter(|(m, p)| m == "POST" && p.ends_with("/nodes/pve1/lxc"))
        .count();
    match fault {
        CtFault::LostCreateAnswer | CtFault::UnfollowedCreateTask | CtFault::FailedStartTask => {
            assert_eq!(creates, 1, "never sent twice");
        }
        CtFault::NextidRace => assert_eq!(creates, 3, "two refused, one made"),
        CtFault::ConfigLockTimeout | CtFault::FailedResizeTask => {
            assert_eq!(creates, 1);
            let config = lab.config();
            assert!(config["rootfs"].as_str().unwrap_or_default().ends_with("size=10G"), "{config}");
        }
        CtFault::DroppedConnections => {}
    }
}

#[test]
fn a_lost_container_create_answer_is_found_in_the_same_run() {
    run_case(CtFault::LostCreateAnswer);
}

#[test]
fn a_container_create_whose_task_could_not_be_followed_is_found() {
    run_case(CtFault::UnfollowedCreateTask);
}

#[test]
fn a_vmid_taken_by_another_tool_before_the_container_create_takes_another() {
    run_case(CtFault::NextidRace);
}

#[test]
fn dropped_connections_create_one_container() {
    run_case(CtFault::DroppedConnections);
}

#[test]
fn a_failed_container_start_task_is_finished_by_a_rerun() {
    run_case(CtFault::FailedStartTask);
}

#[test]
fn a_config_lock_held_during_a_container_resize_is_waited_out() {
    run_case(CtFault::ConfigLockTimeout);
}

#[test]
fn a_failed_container_resize_task_is_finished_by_a_rerun() {
    run_case(CtFault::FailedResizeTask);
}

#[test]
fn every_container_fault_is_in_the_reliability_table() {
    let table = std::fs::read_to_string(repo().join("docs/reliability.md")).expect("docs/reliability.md");
    for (name, _) in SUITE {
        assert!(
            table.contains(&format!("`ct_faults::{name}`")),
            "docs/reliability.md does not name `{name}`"
        );
    }
    let distinct: std::collections::BTreeSet<String> = SUITE.iter().map(|(_, f)| format!("{f:?}")).collect();
    assert_eq!(distinct.len(), SUITE.len(), "one test per fault");
}

/// With a declared `nixprox.container.id`, a VMID another tool took is not replaced: the host
/// fails with PVE's answer, nothing is created, and once the id is free the re-run creates it.
#[test]
fn a_declared_container_id_taken_by_another_tool_fails_the_host_with_pves_answer() {
    let lab = CtLab::start();
    bystanders(&lab);
    let before = bystander_state(&lab);
    lab.plan();
    lab.pve.command(json!({"cmd": "fail", "method": "POST", "path": "/nodes/pve1/lxc", "status": 500,
                           "message": "CT 250 already exists on node 'pve1'", "times": 1}));
    let (run, report) = lab.apply();
    let text = said(&run, &report);
    assert_eq!(run.code, 3, "{text}");
    let host = &report["hosts"][0];
    assert_eq!(
        (host["status"].as_str(), host["step"].as_str()),
        (Some("failed"), Some("create")),
        "{report:#}"
    );
    assert!(text.contains("CT 250 already exists on node 'pve1'"), "{text}");
    assert!(containers_of_ct(&lab).is_empty(), "nothing created");
    assert_invariants(&lab, &before, false);

    let (run, report) = lab.apply();
    assert_eq!(run.code, 0, "the re-run failed:\n{}", said(&run, &report));
    assert_invariants(&lab, &before, true);
}
