//! `nixprox plan` end to end: the real binary, real nix on the example flake, and fakepve
//! holding the example cluster (`fixtures/homelab`).

use crate::support::cli::{self, Run};
use crate::support::fakepve::FakePve;
use crate::support::nix::{Fixture, repo};

fn homelab() -> (Fixture, FakePve) {
    let fixture = Fixture::copy("homelab");
    let pve = FakePve::start(cli::cluster_scenario(&repo().join("fixtures/homelab/cluster.json")));
    (fixture, pve)
}

fn ok(run: &Run) -> &str {
    assert_eq!(run.code, 0, "nixprox failed:\n{}", run.stderr);
    &run.stdout
}

#[test]
fn homelab_text() {
    let (fixture, pve) = homelab();
    let run = cli::plan(&fixture, &pve, &[]);
    insta::assert_snapshot!(ok(&run));
}

#[test]
fn homelab_markdown() {
    let (fixture, pve) = homelab();
    let run = cli::plan(&fixture, &pve, &["--format", "markdown"]);
    insta::assert_snapshot!(ok(&run));
}

#[test]
fn homelab_json_has_every_action_kind() {
    let (fixture, pve) = homelab();
    let run = cli::plan(&fixture, &pve, &["--format", "json"]);
    let plan: serde_json::Value = serde_json::from_str(ok(&run)).expect("json output");
    insta::assert_json_snapshot!(plan);
    let mut kinds: Vec<&str> = plan["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .flat_map(|h| h["actions"].as_array().expect("actions"))
        .map(|a| a["kind"].as_str().expect("kind"))
        .collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "adopt",
            "create_vm",
            "destroy_vm",
            "install",
            "noop",
            "reinstall",
            "replace_vm",
            "resize_disk",
            "switch",
            "update_vm",
            "upload_image"
        ]
    );
}

#[test]
fn the_same_cluster_gives_the_same_plan_id_and_out_writes_a_file() {
    let (fixture, pve) = homelab();
    let first = cli::plan(&fixture, &pve, &["--format", "json"]);
    let out = fixture.dir.path().join("plan.json");
    let second = cli::plan(&fixture, &pve, &["--format", "json", "--out", out.to_str().expect("utf-8 path")]);
    assert_eq!(ok(&second), "", "--out writes nothing to stdout");
    let written = std::fs::read_to_string(&out).expect("plan.json written");
    assert_eq!(written, ok(&first));
}

#[test]
fn detailed_exitcode_is_2_with_changes_and_0_in_sync() {
    let (fixture, pve) = homelab();
    let changed = cli::plan(&fixture, &pve, &["--detailed-exitcode"]);
    assert_eq!(changed.code, 2, "{}", changed.stderr);
    let in_sync = cli::plan(&fixture, &pve, &["--detailed-exitcode", "--hosts", "web"]);
    assert_eq!(in_sync.code, 0, "{}", in_sync.stderr);
    assert!(in_sync.stdout.contains("Unchanged: web"), "{}", in_sync.stdout);
}

#[test]
fn logs_go_to_stderr_only() {
    let (fixture, pve) = homelab();
    let run = cli::plan(&fixture, &pve, &["--format", "json"]);
    assert!(run.stderr.contains("read the cluster at"), "{}", run.stderr);
    assert!(ok(&run).starts_with('{'));
}

#[test]
fn the_token_secret_never_appears_even_in_debug_logs() {
    let (fixture, pve) = homelab();
    let run: Run = cli::plan_command(&fixture, &pve, &["--format", "markdown"])
        .env("NIXPROX_LOG", "trace")
        .output()
        .expect("run nixprox")
        .into();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("TRACE"), "trace logging is on");
    for text in [&run.stdout, &run.stderr] {
        assert!(!text.contains(pve.secret()), "the token secret leaked");
    }
}

/// The example's image host `ci` makes a merged plan read the image storage (what it holds
/// decides the upload): with the plan token the merge equals the unsharded plan; without a
/// token it says what the merge job needs.
#[test]
fn a_merge_whose_plan_creates_image_vms_reads_their_storage_and_equals_the_unsharded_plan() {
    let (fixture, pve) = homelab();
    // Outside the flake: a file beside a `path:` flake is part of its content.
    let out = tempfile::tempdir().expect("tempdir");
    let part = |i: usize| out.path().join(format!("part-{i}.json")).display().to_string();
    let whole = cli::plan(&fixture, &pve, &["--format", "json"]);
    let whole = ok(&whole).to_string();
    assert!(whole.contains("\"upload_image\""), "the example uploads an image");
    for i in 1..=2 {
        let run =
            cli::plan(&fixture, &pve, &["--shard", &format!("{i}/2"), "--format", "json", "--out", &part(i)]);
        ok(&run);
    }
    let merged = cli::plan(&fixture, &pve, &["--merge", &part(1), &part(2), "--format", "json"]);
    assert_eq!(ok(&merged), whole, "the merged plan is the unsharded plan");

    // The same cluster (the shards' settings digest names its URL), no token.
    let mut command = cli::nixprox();
    command.arg("plan").args(cli::source_args(&fixture)).args(["--merge", &part(1), &part(2)]);
    command.envs(cli::pve_env(&pve).into_iter().filter(|(name, _)| *name != "PROXMOX_API_TOKEN"));
    let run: Run = command.output().expect("run nixprox").into();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "error: the merged plan creates VMs from images, whose storages must be read: give the merge job the Proxmox URL and token: PROXMOX_API_TOKEN is not set"
        ),
        "{}",
        run.stderr
    );
}
