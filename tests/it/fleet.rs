//! The benchmark's generator (`tests/support/fleet.rs`) at a small size: the generated flake
//! evaluates, the generated cluster loads into fakepve, and the real `nixprox plan` of the two
//! shows exactly the actions the generator promises; the apply benchmark's all-new fleet plans
//! one `create_vm` per host and applies on fakepve's RBD storage. No timings here: those live in
//! the benchmarks (`cargo bench --bench plan`, `--bench apply`) and docs/performance.md.

use crate::support::cli::{self, Run};
use crate::support::fakepve::FakePve;
use crate::support::fleet::{Expected, Fleet, SLOW_STORAGE};

fn plan(fleet: &Fleet, pve: &FakePve, args: &[&str]) -> Run {
    nixprox_in(fleet, pve, "plan", args)
}

fn nixprox_in(fleet: &Fleet, pve: &FakePve, subcommand: &str, args: &[&str]) -> Run {
    cli::run_on(&fleet.flake_ref(), pve, &[&[subcommand], args].concat())
}

#[tokio::test]
async fn a_generated_fleet_plans_as_generated() {
    let fleet = Fleet::generate(12);
    let toplevels = fleet.toplevels().await;
    assert_eq!(toplevels.len(), 12);
    let pve = FakePve::start(fleet.scenario(&toplevels));

    let run = plan(&fleet, &pve, &["--format", "json", "--concurrency", "4", "--eval-jobs", "2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("json plan");
    let expected = fleet.expected();
    assert_eq!(
        expected,
        Expected {
            noop: 8,
            update_vm: 1,
            switch: 1,
            create_vm: 1,
            install: 1,
            resize_disk: 1,
            destroy_vm: 1
        }
    );
    assert_eq!(Expected::from_plan(&json), expected, "{}", run.stdout);
    assert_eq!(json["hosts"].as_array().expect("hosts").len(), 13, "12 hosts and one orphan");

    // Only the VMs that matter are read: every host's and the orphan's config, never the
    // untagged stranger's (12 hosts → none) nor the template's.
    let reads: Vec<String> = pve
        .requests(false)
        .into_iter()
        .filter(|(method, path)| method == "GET" && path.ends_with("/config"))
        .map(|(_, path)| path)
        .collect();
    assert_eq!(reads.len(), 11 + 1, "{reads:?}");
    assert!(!reads.iter().any(|p| p.contains("/9000/")), "{reads:?}");
}

#[tokio::test]
async fn the_matrix_of_a_fleet_shards_its_changed_hosts_by_node() {
    let fleet = Fleet::generate(12);
    let toplevels = fleet.toplevels().await;
    let pve = FakePve::start(fleet.scenario(&toplevels));

    let run = plan(&fleet, &pve, &["--format", "matrix", "--shards", "2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 1, "a step output is one line: {}", run.stdout);
    let matrix: serde_json::Value = serde_json::from_str(&run.stdout).expect("matrix json");
    let include = matrix["include"].as_array().expect("include");
    assert_eq!(include.len(), 2, "{matrix}");
    let mut hosts: Vec<String> = Vec::new();
    let mut nodes: Vec<String> = Vec::new();
    for shard in include {
        hosts.extend(shard["hosts"].as_str().expect("hosts").split(',').map(str::to_string));
        nodes.extend(shard["nodes"].as_str().expect("nodes").split(',').map(str::to_string));
    }
    // Every changed host (4 declared, 1 orphan) exactly once; no node in two shards.
    hosts.sort();
    assert_eq!(hosts, ["h0006", "h0007", "h0008", "h0009", "retired000"]);
    let before = nodes.len();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), before, "{matrix}");
}

#[test]
fn the_apply_fleet_plans_one_create_per_host_and_applies_on_the_slow_storage() {
    let fleet = Fleet::generate_new(3);
    fleet.set_host_concurrency(Some(1));
    // No VM exists, so no evaluated system is recorded anywhere: no `toplevels` needed.
    let pve = FakePve::start(fleet.apply_scenario(&Default::default(), 0.0));
    let plan_file = fleet.dir.path().join("plan.json").display().to_string();
    let run = plan(&fleet, &pve, &["--format", "json", "--out", &plan_file]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan_file).expect("plan written")).expect("json plan");
    let expected = Expected { create_vm: 3, install: 3, ..Expected::default() };
    assert_eq!(fleet.expected(), expected);
    assert_eq!(Expected::from_plan(&json), expected, "{json:#}");

    let report_file = fleet.dir.path().join("report.json").display().to_string();
    let run = nixprox_in(&fleet, &pve, "apply", &["--reviewed-plan", &plan_file, "--report", &report_file]);
    assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).expect("report")).expect("json report");
    let hosts = report["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 3, "{report:#}");
    // Every VM was cloned onto the RBD storage and started; installing is skipped (no SSH key).
    for host in &fleet.hosts {
        let vm = pve.vm(host.vmid);
        assert_eq!(vm["status"], "running", "{vm:#}");
        assert_eq!(vm["node"], host.node.as_str(), "{vm:#}");
        let disk = vm["config"]["scsi0"].as_str().expect("scsi0");
        assert!(disk.starts_with(&format!("{SLOW_STORAGE}:")), "{disk}");
    }
}
