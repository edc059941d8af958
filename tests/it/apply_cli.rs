//! `nixprox apply` end to end through the binary: the reviewed plan written by `plan`, the
//! example flake evaluated by real nix, and fakepve holding the example cluster.

use serde_json::Value;

use crate::support::cli::{self, Run};
use crate::support::fakepve::FakePve;
use crate::support::nix::{Fixture, repo};

fn homelab() -> (Fixture, FakePve) {
    let fixture = Fixture::copy("homelab");
    let pve = FakePve::start(cli::cluster_scenario(&repo().join("fixtures/homelab/cluster.json")));
    (fixture, pve)
}

fn nixprox(fixture: &Fixture, pve: &FakePve, args: &[&str]) -> Run {
    cli::run_on(&fixture.flake_ref(), pve, args)
}

fn path(fixture: &Fixture, name: &str) -> String {
    fixture.dir.path().join(name).display().to_string()
}

#[test]
fn apply_carries_out_the_reviewed_plan_and_a_rerun_converges() {
    let (fixture, pve) = homelab();
    let plan_file = path(&fixture, "plan.json");
    let run = nixprox(&fixture, &pve, &["plan", "--format", "json", "--out", &plan_file]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let report_file = path(&fixture, "report.json");
    let hosts = "matrix,db,old-wiki,old-mail";
    let run = nixprox(
        &fixture,
        &pve,
        &["apply", "--reviewed-plan", &plan_file, "--hosts", hosts, "--report", &report_file],
    );
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("install and switch steps will be skipped"), "{}", run.stderr);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).expect("report")).expect("json");
    let status = |host: &str| {
        report["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .find(|h| h["host"] == host)
            .map(|h| h["status"].clone())
    };
    // db runs: its new cores and memory wait for a reboot (deploy.allowReboot is off).
    assert_eq!(status("db").expect("db"), "pending_reboot", "{report:#}");
    assert_eq!(status("old-wiki").expect("old-wiki"), "ok", "{report:#}");

    // The cluster now holds what the plan said: the new VM is tagged and carries its metadata,
    // the orphan is gone, the protected orphan is still there, db has its new size.
    let vms = pve.command(serde_json::json!({"cmd": "vms"}));
    let names: Vec<&str> = vms.as_array().expect("vms").iter().filter_map(|v| v["name"].as_str()).collect();
    assert!(
        names.contains(&"matrix") && !names.contains(&"old-wiki") && names.contains(&"old-mail"),
        "{names:?}"
    );
    let db = pve.vm(102);
    assert_eq!(db["pending"]["cores"].to_string().trim_matches('"'), "4", "{db:#}");
    let matrix_id =
        vms.as_array().expect("vms").iter().find(|v| v["name"] == "matrix").expect("matrix")["vmid"]
            .as_u64()
            .expect("vmid");
    let matrix = pve.vm(matrix_id as u32);
    let tags = matrix["config"]["tags"].as_str().expect("tags");
    assert!(tags.split(';').any(|t| t == "nixprox"), "{tags}");
    let notes = matrix["config"]["description"].as_str().expect("notes");
    assert!(notes.contains("<!-- nixprox:v1 {\"host\":\"matrix\""), "{notes}");

    // A second plan shows only what is left: NixOS on matrix (no SSH key was configured).
    let run = nixprox(&fixture, &pve, &["plan", "--format", "json", "--hosts", hosts]);
    let plan: Value = serde_json::from_str(&run.stdout).expect("plan json");
    let kinds = |host: &str| -> Vec<String> {
        plan["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .filter(|h| h["host"] == host)
            .flat_map(|h| {
                h["actions"]
                    .as_array()
                    .expect("actions")
                    .iter()
                    .map(|a| a["kind"].as_str().unwrap_or("").to_string())
            })
            .collect()
    };
    // Only the install is left: no second VM, no second create, the grown disk in sync.
    assert_eq!(kinds("matrix"), ["install"]);
    assert_eq!(kinds("db"), ["noop"]);
    let db_reason = plan["hosts"].as_array().expect("hosts").iter().find(|h| h["host"] == "db").expect("db")
        ["actions"][0]["reason"]
        .clone();
    assert_eq!(db_reason, "in sync once the VM reboots (pending: cores, memory)");
    assert!(kinds("old-wiki").is_empty());
}

#[test]
fn apply_refuses_a_plan_that_changed_since_review() {
    let (fixture, pve) = homelab();
    let run = nixprox(&fixture, &pve, &["apply", "--plan-id", "0000000000000000", "--hosts", "db"]);
    // Exit code 4: refused since review, distinct from errors (1) and failed hosts (3).
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stderr.contains("0000000000000000"), "{}", run.stderr);
    let vm = pve.vm(102);
    assert_eq!(vm["config"]["cores"].to_string().trim_matches('"'), "2", "nothing was changed");
}

#[test]
fn apply_without_a_reviewed_plan_outside_ci_says_what_to_pass() {
    let (fixture, pve) = homelab();
    let run = nixprox(&fixture, &pve, &["apply"]);
    assert_eq!(run.code, 1);
    assert_eq!(
        run.stderr.lines().last().unwrap_or_default(),
        "error: apply needs the reviewed plan: pass --plan-id or --reviewed-plan, or run in CI on the push of a merged pull request that has nixprox's plan comment"
    );
}

/// A change applied without a reboot (`deploy.allowReboot` off) stays in view: the next plan
/// and drift read a config whose pending values match the flake (as Proxmox answers `GET
/// …/config`), plan nothing again, but show what waits for the reboot (text, Markdown, JSON)
/// and how to make it take effect; drift keeps reporting it. Once the VM reboots through the
/// API, it is gone, and the plan id never changed.
#[test]
fn a_change_waiting_for_a_reboot_stays_in_the_plan_and_drift_until_the_vm_reboots() {
    let (fixture, pve) = homelab();
    let plan_file = path(&fixture, "plan.json");
    let run = nixprox(&fixture, &pve, &["plan", "--format", "json", "--out", &plan_file, "--hosts", "db"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report_file = path(&fixture, "report.json");
    let run = nixprox(
        &fixture,
        &pve,
        &["apply", "--reviewed-plan", &plan_file, "--hosts", "db", "--report", &report_file],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    // Proxmox holds the new values as pending, the VM still runs the old ones.
    let db = pve.vm(102);
    assert_eq!(db["pending"]["memory"].to_string().trim_matches('"'), "8192", "{db:#}");
    assert_eq!(db["config"]["memory"].to_string().trim_matches('"'), "4096", "{db:#}");

    let run = nixprox(&fixture, &pve, &["plan", "--format", "json", "--hosts", "db"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let waiting: Value = serde_json::from_str(&run.stdout).expect("plan json");
    let host = &waiting["hosts"][0];
    assert_eq!(host["host"], "db");
    assert_eq!(host["actions"][0]["kind"], "noop", "nothing is written again: {host:#}");
    assert_eq!(waiting["summary"]["pending_reboot"], 1);
    let pending = &host["pending_reboot"];
    assert_eq!(pending["keys"], serde_json::json!(["cores", "memory"]), "{pending:#}");
    assert_eq!(
        pending["changes"],
        serde_json::json!([
            {"field": "cores", "before": 2, "after": 4},
            {"field": "memory", "before": 4096, "after": 8192}
        ])
    );
    assert_eq!(
        pending["how"],
        "the VM still runs the old values: reboot VM 102 to make them take effect (Reboot in the Proxmox UI, or `qm reboot 102` on node `pve1`), or set `nixprox.deploy.allowReboot = true` for host `db` so that apply reboots it whenever it changes the VM"
    );

    let text = nixprox(&fixture, &pve, &["plan", "--hosts", "db", "--detailed-exitcode"]);
    assert_eq!(text.code, 0, "nothing for apply to do: {}", text.stderr);
    for says in [
        "1 waiting for a reboot",
        "Waiting for a reboot",
        "db (pve1/102)",
        "- memory: 4096",
        "+ memory: 8192",
        "`qm reboot 102`",
    ] {
        assert!(text.stdout.contains(says), "`{says}` in:\n{}", text.stdout);
    }
    assert!(!text.stdout.contains("Unchanged: db"), "{}", text.stdout);
    let markdown = nixprox(&fixture, &pve, &["plan", "--hosts", "db", "--format", "markdown"]);
    assert!(markdown.stdout.contains("#### Waiting for a reboot"), "{}", markdown.stdout);
    assert!(markdown.stdout.contains("+ memory: 8192"), "{}", markdown.stdout);
    let drift = nixprox(&fixture, &pve, &["drift", "--hosts", "db", "--detailed-exitcode"]);
    assert_eq!(drift.code, 2, "drift keeps reporting it:\n{}\n{}", drift.stdout, drift.stderr);

    // The operator reboots the VM (what `qm reboot` does, through the API): nothing waits.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime
        .block_on(nixprox::proxmox::post_and_wait(
            &pve.client(),
            "/nodes/pve1/qemu/102/status/reboot",
            &[],
            std::time::Duration::from_secs(30),
        ))
        .expect("reboot");
    let run = nixprox(&fixture, &pve, &["plan", "--format", "json", "--hosts", "db"]);
    let rebooted: Value = serde_json::from_str(&run.stdout).expect("plan json");
    assert_eq!(rebooted["hosts"][0]["pending_reboot"], Value::Null, "{rebooted:#}");
    assert_eq!(rebooted["summary"]["pending_reboot"], 0);
    assert_eq!(rebooted["plan_id"], waiting["plan_id"], "the plan id is not live state");
    let drift = nixprox(&fixture, &pve, &["drift", "--hosts", "db", "--detailed-exitcode"]);
    assert_eq!(drift.code, 0, "{}\n{}", drift.stdout, drift.stderr);
}
