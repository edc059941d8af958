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

/// `GET …/config` paths a run read, sorted.
fn config_reads(pve: &FakePve) -> Vec<String> {
    let mut reads: Vec<String> = pve
        .requests(true)
        .into_iter()
        .filter(|(method, path)| method == "GET" && path.ends_with("/config"))
        .map(|(_, path)| path)
        .collect();
    reads.sort();
    reads
}

/// Three shards (`plan --shard I/3`), each reading only the VMs of its nodes, merged with
/// `plan --merge` give exactly the plan of one unsharded run: the same JSON, the same plan id,
/// the same exit code. A missing shard, a shard of another commit, shards of another commit than
/// the checkout, and a shard that read another cluster are refused with what to do.
#[tokio::test]
async fn three_shards_merge_into_the_unsharded_plan_and_stale_ones_are_refused() {
    let fleet = Fleet::generate(12);
    let toplevels = fleet.toplevels().await;
    let pve = FakePve::start(fleet.scenario(&toplevels));
    // Outside the flake: a file beside a `path:` flake is part of its content (its narHash).
    let out = tempfile::tempdir().expect("tempdir");
    let part = |name: &str| out.path().join(name).display().to_string();

    pve.requests(true);
    let whole = plan(&fleet, &pve, &["--format", "json", "--detailed-exitcode"]);
    assert_eq!(whole.code, 2, "{}", whole.stderr);
    let unsharded_reads = config_reads(&pve);

    let mut sharded_reads = Vec::new();
    let mut hosts = Vec::new();
    for i in 1..=3 {
        let out = part(&format!("part-{i}.json"));
        let run = plan(&fleet, &pve, &["--shard", &format!("{i}/3"), "--format", "json", "--out", &out]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let shard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).expect("shard written")).expect("shard json");
        assert_eq!((shard["shard"].as_u64(), shard["shards"].as_u64()), (Some(i), Some(3)));
        // Only the tagged VMs of its own nodes (no untagged VM is named like a host here).
        let nodes: Vec<&str> =
            shard["nodes"].as_array().expect("nodes").iter().filter_map(|n| n.as_str()).collect();
        assert!(!nodes.is_empty(), "{shard}");
        let reads = config_reads(&pve);
        for read in &reads {
            assert!(
                nodes.iter().any(|n| read.contains(&format!("/nodes/{n}/"))),
                "shard {i} read {read}, nodes {nodes:?}"
            );
        }
        sharded_reads.extend(reads);
        hosts.extend(
            shard["hosts"]
                .as_array()
                .expect("hosts")
                .iter()
                .map(|h| h["attr"].as_str().expect("attr").to_string()),
        );
    }
    sharded_reads.sort();
    assert_eq!(sharded_reads, unsharded_reads, "the shards together read what one run reads, once");
    hosts.sort();
    assert_eq!(
        hosts,
        fleet.hosts.iter().map(|h| h.attr.clone()).collect::<Vec<_>>(),
        "every host evaluated once"
    );

    let (p1, p2, p3) = (part("part-1.json"), part("part-2.json"), part("part-3.json"));
    let merged = plan(&fleet, &pve, &["--merge", &p3, &p1, &p2, "--format", "json", "--detailed-exitcode"]);
    assert_eq!(merged.code, 2, "{}", merged.stderr);
    assert_eq!(merged.stdout, whole.stdout, "the merged plan is the unsharded plan");
    assert!(config_reads(&pve).is_empty(), "a merge reads nothing from Proxmox");
    let text_whole = plan(&fleet, &pve, &["--format", "text"]);
    let text_merged = plan(&fleet, &pve, &["--merge", &p1, &p2, &p3]);
    assert_eq!(text_merged.stdout, text_whole.stdout);

    let error = |run: &Run| -> String {
        assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
        run.stderr.lines().filter(|l| l.starts_with("error:")).collect::<Vec<_>>().join("\n")
    };
    let missing = plan(&fleet, &pve, &["--merge", &p1, &p3, "--format", "json"]);
    assert_eq!(
        error(&missing),
        "error: shard 2 of 3 missing: pass every shard file of the run (`--merge part-*.json`), and re-run a shard job that failed"
    );
    let twice = plan(&fleet, &pve, &["--merge", &p1, &p2, &p2, &p3]);
    assert_eq!(
        error(&twice),
        format!("error: shard 2 of 3 is given twice (`{p2}` and `{p2}`): pass each shard file once")
    );

    // Another commit: the flake changes, shard 2 runs again.
    let flake = fleet.dir.path().join("flake.nix");
    let original = std::fs::read_to_string(&flake).expect("flake");
    std::fs::write(&flake, format!("{original}# a later commit\n")).expect("edit flake");
    let p2_new = part("part-2-new.json");
    assert_eq!(plan(&fleet, &pve, &["--shard", "2/3", "--format", "json", "--out", &p2_new]).code, 0);
    let stale = error(&plan(&fleet, &pve, &["--merge", &p1, &p2_new, &p3]));
    assert!(
        stale.starts_with(&format!(
            "error: shard 2 (`{p2_new}`) evaluated another commit than shard 1 (flake sha256-"
        )),
        "{stale}"
    );
    assert!(stale.ends_with("): re-run every shard on the same commit"), "{stale}");
    // All three of the old commit, merged in the new checkout.
    let old = error(&plan(&fleet, &pve, &["--merge", &p1, &p2, &p3]));
    assert!(
        old.starts_with("error: the shards evaluated another commit than the flake here (flake sha256-"),
        "{old}"
    );
    std::fs::write(&flake, &original).expect("restore flake");

    // Another cluster: a VM is renamed between the shard runs.
    let p3_new = part("part-3-new.json");
    pve.client().put("/nodes/pve1/qemu/1000/config", &[("name", "renamed")]).await.expect("rename a VM");
    assert_eq!(plan(&fleet, &pve, &["--shard", "3/3", "--format", "json", "--out", &p3_new]).code, 0);
    assert_eq!(
        error(&plan(&fleet, &pve, &["--merge", &p1, &p2, &p3_new])),
        format!(
            "error: shard 3 (`{p3_new}`) read another cluster than shard 1 (VMs were created, removed, renamed, moved, started or stopped between the shard runs): re-run every shard"
        )
    );

    // Not a shard at all, and a shard without `--format json`.
    let plan_file = part("plan.json");
    std::fs::write(&plan_file, &whole.stdout).expect("write plan");
    assert_eq!(
        error(&plan(&fleet, &pve, &["--merge", &plan_file])),
        format!(
            "error: `{plan_file}` is not a nixprox plan shard (write one with `nixprox plan --shard I/N --format json --out FILE`)"
        )
    );
    assert_eq!(
        error(&plan(&fleet, &pve, &["--shard", "1/3"])),
        "error: `--shard` writes a shard file for `plan --merge`, which is JSON: add `--format json`"
    );
}
