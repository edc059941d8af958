//! The benchmark's generator (`tests/support/fleet.rs`) at a small size: the generated flake
//! evaluates, the generated cluster loads into fakepve, and the real `nixprox plan` of the two
//! shows exactly the actions the generator promises. No timings here: those live in the
//! benchmark (`cargo bench --bench plan`) and docs/performance.md.

use crate::support::cli::{self, Run};
use crate::support::fakepve::FakePve;
use crate::support::fleet::{Expected, Fleet};

fn plan(fleet: &Fleet, pve: &FakePve, args: &[&str]) -> Run {
    let mut command = cli::nixprox();
    command.arg("plan").arg("--flake").arg(fleet.flake_ref());
    for input in crate::support::nix::override_inputs() {
        command.arg("--override-input").arg(&input.name).arg(&input.flake_ref);
    }
    command
        .args(args)
        .env("PROXMOX_URL", pve.url())
        .env("PROXMOX_CA_CERT", pve.ca_cert())
        .env("PROXMOX_API_TOKEN", pve.token());
    command.output().expect("run nixprox").into()
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
