//! Faults injected into fakepve while the real `nixprox apply` runs against the example
//! homelab flake (evaluated by real nix): after each, the cluster is checked through fakepve
//! (exactly one VM per host, nothing duplicated) and a second apply converges. The table of
//! faults and what nixprox does about each is docs/reliability.md.

use serde_json::{Value, json};

use crate::support::cli::{self, Run};
use crate::support::fakepve::{FakePve, Request};
use crate::support::fleet::Fleet;
use crate::support::nix::{Fixture, repo};

/// The homelab flake and its cluster, with the installer ISO `media` boots on `local`.
fn homelab() -> (Fixture, FakePve) {
    let fixture = Fixture::copy("homelab");
    let scenario = cli::cluster_scenario(&repo().join("fixtures/homelab/cluster.json"))
        .set("files", json!([{"storage": "local", "name": "nixos-minimal.iso", "size": 1u64 << 30}]));
    (fixture, FakePve::start(scenario))
}

fn nixprox(fixture: &Fixture, pve: &FakePve, args: &[&str]) -> Run {
    cli::run_on(&fixture.flake_ref(), pve, args)
}

fn path(fixture: &Fixture, name: &str) -> String {
    fixture.dir.path().join(name).display().to_string()
}

/// `nixprox plan --format json --out plan.json --hosts <hosts>`; returns the file.
fn reviewed_plan(fixture: &Fixture, pve: &FakePve, hosts: &str) -> String {
    let file = path(fixture, "plan.json");
    let run = nixprox(fixture, pve, &["plan", "--format", "json", "--out", &file, "--hosts", hosts]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    file
}

/// `nixprox apply --reviewed-plan <plan> --hosts <hosts> --report report.json`: the report.
fn apply(fixture: &Fixture, pve: &FakePve, plan: &str, hosts: &str) -> Value {
    let report = path(fixture, "report.json");
    let run =
        nixprox(fixture, pve, &["apply", "--reviewed-plan", plan, "--hosts", hosts, "--report", &report]);
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("report json")
}

/// The action kinds a new plan shows for `host`.
fn planned_kinds(fixture: &Fixture, pve: &FakePve, host: &str) -> Vec<String> {
    let run = nixprox(fixture, pve, &["plan", "--format", "json", "--hosts", host]);
    let plan: Value = serde_json::from_str(&run.stdout).expect("plan json");
    plan["hosts"][0]["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| a["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The VMs named `name`, as fakepve lists them.
fn vms_named(pve: &FakePve, name: &str) -> Vec<Value> {
    let vms = pve.command(json!({"cmd": "vms"}));
    vms.as_array().expect("vms").iter().filter(|vm| vm["name"] == name).cloned().collect()
}

/// The report's step `step` of `host`.
fn step<'a>(report: &'a Value, host: &str, step: &str) -> &'a Value {
    let host = report["hosts"].as_array().expect("hosts").iter().find(|h| h["host"] == host).expect("host");
    host["steps"].as_array().expect("steps").iter().find(|s| s["step"] == step).expect("step")
}

/// One VM for `host` after the faulty run, carrying the metadata block that names it; a second
/// plan has no create for it, and a second apply of the reviewed plan converges without
/// sending any create again.
fn converges_with_one_vm(fixture: &Fixture, pve: &FakePve, plan: &str, host: &str, create: &str) {
    let vms = vms_named(pve, host);
    assert_eq!(vms.len(), 1, "exactly one VM for `{host}`: {vms:?}");
    let vmid = vms[0]["vmid"].as_u64().expect("vmid") as u32;
    let notes = pve.vm(vmid)["config"]["description"].as_str().unwrap_or_default().to_string();
    assert!(notes.contains(&format!("<!-- nixprox:v1 {{\"host\":\"{host}\"")), "{notes}");
    assert!(!planned_kinds(fixture, pve, host).contains(&"create_vm".to_string()));
    pve.requests(true);
    apply(fixture, pve, plan, host);
    let creates: Vec<Request> =
        pve.requests_with_bodies(false).into_iter().filter(|r| r.is("POST", create)).collect();
    assert_eq!(creates, Vec::<Request>::new(), "the re-run sends no create");
    assert_eq!(vms_named(pve, host).len(), 1, "still one VM for `{host}`");
}

/// What a faulty apply of one new host did.
struct FaultyRun {
    /// The reviewed plan, for the re-run.
    plan: String,
    report: Value,
    /// `POST`s on the create path (`create` of [`apply_with_fault`]) sent during the apply.
    creates: usize,
}

/// Plans `host` alone, injects `fault` (a fakepve driver command), applies the reviewed plan.
fn apply_with_fault(fixture: &Fixture, pve: &FakePve, host: &str, fault: Value, create: &str) -> FaultyRun {
    let plan = reviewed_plan(fixture, pve, host);
    pve.command(fault);
    pve.requests(true);
    let report = apply(fixture, pve, &plan, host);
    let creates = pve.requests_with_bodies(false).into_iter().filter(|r| r.is("POST", create)).count();
    FaultyRun { plan, report, creates }
}

/// Whether the report says the create step found the VM after a lost answer.
fn found_after_loss(report: &Value, host: &str, step_name: &str) -> bool {
    let found = step(report, host, step_name);
    found["status"] == "ok"
        && found["detail"].as_str().unwrap_or_default().contains("answer was lost; the VM is there")
}

#[test]
fn a_clone_whose_answer_was_lost_after_it_ran_is_found_not_sent_again() {
    let (fixture, pve) = homelab();
    let fault = json!({"cmd": "lose_answer", "method": "POST", "path": "/qemu/9000/clone$", "times": 1});
    let run = apply_with_fault(&fixture, &pve, "matrix", fault, "/qemu/9000/clone");
    assert_eq!(run.creates, 1, "the clone was sent once");
    assert!(found_after_loss(&run.report, "matrix", "clone"), "{:#}", run.report);
    converges_with_one_vm(&fixture, &pve, &run.plan, "matrix", "/qemu/9000/clone");
}

#[test]
fn a_clone_whose_task_could_not_be_followed_is_found_not_sent_again() {
    let (fixture, pve) = homelab();
    // The clone is answered with its task; every read of that task's status (the client's
    // first try and its 4 retries) loses its answer.
    let fault = json!({"cmd": "lose_answer", "method": "GET", "path": "/tasks/.+/status$", "times": 5});
    let run = apply_with_fault(&fixture, &pve, "matrix", fault, "/qemu/9000/clone");
    assert_eq!(run.creates, 1, "the clone was sent once");
    assert!(found_after_loss(&run.report, "matrix", "clone"), "{:#}", run.report);
    converges_with_one_vm(&fixture, &pve, &run.plan, "matrix", "/qemu/9000/clone");
}

#[test]
fn an_iso_create_whose_answer_was_lost_after_it_ran_is_found_not_sent_again() {
    let (fixture, pve) = homelab();
    let fault = json!({"cmd": "lose_answer", "method": "POST", "path": "/nodes/pve1/qemu$", "times": 1});
    let run = apply_with_fault(&fixture, &pve, "media", fault, "/nodes/pve1/qemu");
    assert_eq!(run.creates, 1, "the create was sent once");
    assert!(found_after_loss(&run.report, "media", "create"), "{:#}", run.report);
    assert_eq!(vms_named(&pve, "media")[0]["vmid"], 120, "the declared VMID");
    converges_with_one_vm(&fixture, &pve, &run.plan, "media", "/nodes/pve1/qemu");
}

#[test]
fn twenty_new_hosts_on_one_node_get_twenty_distinct_vmids() {
    // No host declares `vm.id`, so every one asks `/cluster/nextid`, which reserves nothing;
    // with the default concurrency eight creates run at once on the one node, over a network
    // with some latency so their requests interleave. Another tool's creates take the id
    // nixprox was about to use, twice.
    let fleet = Fleet::generate_new_unnumbered(20);
    let pve = FakePve::start(fleet.apply_scenario(&Default::default(), 0.0).set("latency", json!(0.02)));
    let plan = fleet.dir.path().join("plan.json").display().to_string();
    let run = cli::run_on(&fleet.flake_ref(), &pve, &["plan", "--format", "json", "--out", &plan]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    pve.command(json!({"cmd": "fail", "method": "POST", "path": "/qemu/9000/clone",
                       "error": "unable_create_config_file_already", "times": 2}));
    let report_file = fleet.dir.path().join("report.json").display().to_string();
    let args = ["apply", "--reviewed-plan", &plan, "--report", &report_file];
    let run = cli::run_on(&fleet.flake_ref(), &pve, &args);
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).expect("report")).expect("json");
    let hosts = report["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 20, "{report:#}");
    let ids: std::collections::BTreeSet<u64> = hosts.iter().filter_map(|h| h["vmid"].as_u64()).collect();
    assert_eq!(ids.len(), 20, "twenty distinct VMIDs: {ids:?}");
    for host in &fleet.hosts {
        let vms = vms_named(&pve, &host.attr);
        assert_eq!(vms.len(), 1, "exactly one VM for `{}`: {vms:?}", host.attr);
        assert_eq!((vms[0]["node"].as_str(), vms[0]["status"].as_str()), (Some("pve1"), Some("running")));
    }
    let guests = pve.command(json!({"cmd": "vms"})).as_array().expect("vms").len();
    assert_eq!(guests, 21, "twenty VMs and the template");
}

#[test]
fn a_create_that_failed_after_its_answer_was_lost_is_sent_once_more_with_the_same_vmid() {
    // Without the installer ISO on `local`, the create's task fails (and removes the VM);
    // its answer is lost, so nixprox does not know that yet.
    let fixture = Fixture::copy("homelab");
    let pve = FakePve::start(cli::cluster_scenario(&repo().join("fixtures/homelab/cluster.json")));
    let plan = reviewed_plan(&fixture, &pve, "media");
    pve.command(json!({"cmd": "lose_answer", "method": "POST", "path": "/nodes/pve1/qemu$", "times": 1}));
    pve.requests(true);
    let report = path(&fixture, "report.json");
    let run = nixprox(
        &fixture,
        &pve,
        &["apply", "--reviewed-plan", &plan, "--hosts", "media", "--report", &report],
    );
    assert_eq!(run.code, 3, "the host fails:\n{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("looking for VM 120 before anything is sent again"), "{}", run.stderr);
    assert!(run.stdout.contains("volume local:iso/nixos-minimal.iso does not exist"), "{}", run.stdout);
    // Nothing was there, so the same request went out once more, with the same VMID.
    let creates: Vec<Request> =
        pve.requests_with_bodies(false).into_iter().filter(|r| r.is("POST", "/nodes/pve1/qemu")).collect();
    assert_eq!(creates.len(), 2, "{creates:?}");
    assert!(creates.iter().all(|r| r.body.starts_with("vmid=120&")), "{creates:?}");
    assert!(vms_named(&pve, "media").is_empty());
}
