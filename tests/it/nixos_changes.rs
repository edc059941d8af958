//! The plan's NixOS changes through the binary: the fixture `fixtures/nixos-changes` in a real
//! git repository (a base commit and a head commit), evaluated by real nix, against fakepve.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::support::cli::{self, Run};
use crate::support::fakepve::FakePve;
use crate::support::fleet::{Fleet, FleetHost, State};
use crate::support::git::Git;
use crate::support::nix::{Fixture, override_inputs};

/// The fixture in a subdirectory of a repository (so the base is `git+file://…?rev=…&dir=…`):
/// the base commit (`./state.nix` = `base_state`), then the head (as checked in).
struct Repository {
    /// The fixture's hosts and their VMs: `db` runs the head's system, `monitor` has none, the
    /// others an older one. `fleet.dir` is the flake, below `root`.
    fleet: Fleet,
    git: Git,
    base: String,
    _root: tempfile::TempDir,
}

fn repository(base_state: &str) -> Repository {
    let root = tempfile::Builder::new().prefix("nixos-changes-").tempdir().expect("tempdir");
    let fixture = Fixture::copy_in("nixos-changes", root.path());
    let git = Git::init(root.path());
    let state = fixture.dir.path().join("state.nix");
    std::fs::write(&state, base_state).expect("write the base state");
    let base = git.commit_all("base");
    std::fs::write(&state, "import ./head.nix\n").expect("write the head state");
    git.commit_all("head");
    let host = |attr: &str, vmid: u32, state: State| FleetHost {
        attr: attr.into(),
        vmid,
        node: "pve1".into(),
        state,
        running: false,
    };
    let hosts = vec![
        host("web", 301, State::OldSystem),
        host("db", 302, State::InSync),
        host("cache", 303, State::OldSystem),
        host("monitor", 304, State::Missing),
        host("broken", 305, State::OldSystem),
        host("oddity", 306, State::OldSystem),
    ];
    let fleet =
        Fleet { dir: fixture.dir, hosts, orphans: vec![], strangers: 0, nodes: 1, declared_ids: true };
    Repository { fleet, git, base, _root: root }
}

/// The flake's directory relative to the repository's top.
fn subdir(repo: &Repository) -> String {
    repo.fleet.dir.path().strip_prefix(&repo.git.dir).expect("below the root").display().to_string()
}

async fn cluster(fleet: &Fleet) -> FakePve {
    FakePve::start(fleet.scenario(&fleet.toplevels().await))
}

/// `nixprox plan` of the repository's work tree (the head) with `args`.
fn plan(dir: &std::path::Path, pve: &FakePve, args: &[&str]) -> Run {
    let mut command = cli::nixprox();
    command.arg("plan").arg("--flake").arg(dir).args(args).envs(cli::pve_env(pve));
    for input in override_inputs() {
        command.args(["--override-input", &input.name, &input.flake_ref]);
    }
    command.output().expect("run nixprox").into()
}

fn json_plan(run: &Run) -> Value {
    assert_eq!(run.code, 0, "nixprox failed:\n{}", run.stderr);
    serde_json::from_str(&run.stdout).expect("json plan")
}

fn changes_by_host(plan: &Value) -> BTreeMap<String, Value> {
    plan["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| (h["host"].as_str().expect("host").to_string(), h["nixos_changes"].clone()))
        .collect()
}

fn names(changes: &Value) -> Vec<String> {
    changes["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| format!("{}:{}", c["probe"].as_str().expect("probe"), c["name"].as_str().expect("name")))
        .collect()
}

#[tokio::test]
async fn every_probe_kind_shows_its_change_and_unchanged_hosts_show_nothing() {
    let repo = repository("import ./base.nix\n");
    let (fleet, base) = (&repo.fleet, &repo.base);
    let pve = cluster(fleet).await;
    let dir = fleet.dir.path().to_path_buf();
    // `oddity`'s type error costs only its own probes, whatever batch it shares.
    let run = plan(&dir, &pve, &["--format", "json", "--base", base]);
    let plan_json = json_plan(&run);
    let by_host = changes_by_host(&plan_json);

    let web = &by_host["web"];
    assert_eq!(web["state"], "compared", "{web:#}");
    assert_eq!(web["reboot_needed"], true);
    assert_eq!(
        names(web),
        [
            "release:nixos",
            "release:nixpkgs",
            "kernel:build",
            "kernel:initrd",
            "kernel:version",
            "kernel_params:console=ttyS0",
            "packages:htop",
            "packages:openssl",
            "packages:vim",
            "services:gitea",
            "services:grafana",
            "services:nginx",
            "firewall:3000/tcp",
            "users:deploy",
            "file_systems:/data",
            "substituters:https://cache.example/",
            "extra:grafana port",
        ]
    );
    assert_eq!(
        web["changes"][7],
        json!({"probe": "packages", "name": "openssl", "before": ["3.0.13"], "after": ["3.0.14"]})
    );
    assert_eq!(by_host["db"], Value::Null, "an unchanged host shows nothing");
    assert_eq!(by_host["cache"], json!({"state": "compared", "reboot_needed": false, "changes": []}));
    assert_eq!(by_host["monitor"], json!({"state": "new_host"}));
    assert_eq!(
        by_host["broken"],
        json!({"state": "compared", "reboot_needed": false,
               "changes": [{"probe": "packages", "name": "htop", "before": ["3.2.2"], "after": ["3.3.0"]}],
               "failed": [{"probe": "kernel_params", "side": "base"},
                          {"probe": "extra", "name": "motd", "side": "head"}]})
    );
    assert_eq!(by_host["oddity"]["state"], "unavailable");
    let reason = by_host["oddity"]["reason"].as_str().expect("reason");
    assert!(reason.starts_with("the probes failed to evaluate at the head: error:"), "{reason}");

    // The same plan as text, with the base as a flake reference this time.
    let flake_ref = format!("git+file://{}?rev={base}&dir={}", repo.git.dir.display(), subdir(&repo));
    let run = plan(&dir, &pve, &["--base", &flake_ref, "--eval-batch", "1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let line = |host: &str| {
        let section =
            run.stdout.split(&format!("\n{host} (")).nth(1).unwrap_or_else(|| panic!("{}", run.stdout));
        section.lines().nth(1).expect("line under the host").trim().to_string()
    };
    assert_eq!(
        line("web"),
        "NixOS: NixOS 24.05 → 24.11 · nixpkgs 0123456 → 89abcde · kernel 6.6.30 → 6.6.31, params \
         +console=ttyS0, initrd changed (reboot needed) · packages +htop 3.3.0, openssl 3.0.13 → 3.0.14, \
         −vim · services +grafana, ~nginx (unit changed), −gitea · firewall +3000/tcp · users +deploy \
         (wheel) · file systems +/data · substituters +https://cache.example/ · grafana port 3000 → 3001"
    );
    assert_eq!(line("cache"), "NixOS: no probed option changed");
    assert_eq!(line("monitor"), "NixOS: new host: the base has no configuration of this name");
    assert_eq!(
        line("broken"),
        "NixOS: packages htop 3.2.2 → 3.3.0 · could not evaluate kernel_params (base), extra `motd` (head)"
    );
    assert!(run.stdout.contains("Unchanged: db"), "{}", run.stdout);

    // The plan id is the same with and without the comparison.
    let without = json_plan(&plan(&dir, &pve, &["--format", "json", "--no-base"]));
    assert_eq!(without["plan_id"], plan_json["plan_id"]);
    assert!(changes_by_host(&without).values().all(Value::is_null));
}

#[tokio::test]
async fn a_base_that_does_not_evaluate_says_so_and_the_plan_goes_on() {
    let repo = repository("{ this is not nix\n");
    let (fleet, base) = (&repo.fleet, &repo.base);
    let pve = cluster(fleet).await;
    let run = plan(fleet.dir.path(), &pve, &["--format", "json", "--base", base]);
    let by_host = changes_by_host(&json_plan(&run));
    for host in ["web", "cache", "monitor", "broken"] {
        let changes = &by_host[host];
        assert_eq!(changes["state"], "unavailable", "{host}: {changes}");
        let reason = changes["reason"].as_str().expect("reason");
        let expected = format!("the base `{}` could not be evaluated: error: syntax error", &base[..12]);
        assert!(reason.starts_with(&expected), "{host}: {reason}");
        assert!(!reason.contains('\n'));
    }
    // What broke at the head is said first: that is the pull request's to fix.
    let reason = by_host["oddity"]["reason"].as_str().expect("reason");
    assert!(reason.starts_with("the probes failed to evaluate at the head: error:"), "{reason}");
    assert_eq!(by_host["db"], Value::Null);

    // A revision the repository does not have.
    let run = plan(fleet.dir.path(), &pve, &["--format", "json", "--base", "no-such-branch"]);
    let top = repo.git.run(&["rev-parse", "--show-toplevel"]);
    let expected = format!("the base `no-such-branch` is not a commit of the repository at `{top}`");
    assert_eq!(changes_by_host(&json_plan(&run))["web"], json!({"state": "unavailable", "reason": expected}));
}

#[tokio::test]
async fn a_shallow_clone_without_the_base_commit_gets_a_one_line_note_until_it_is_fetched() {
    let repo = repository("import ./base.nix\n");
    let base = &repo.base;
    let pve = cluster(&repo.fleet).await;
    let clone = tempfile::tempdir().expect("tempdir");
    let source = format!("file://{}", repo.git.dir.display());
    let shallow = Git { dir: clone.path().to_path_buf() };
    shallow.run(&["clone", "--quiet", "--depth", "1", &source, "."]);
    let flake = clone.path().join(subdir(&repo));

    let run = plan(&flake, &pve, &["--format", "json", "--base", base]);
    let by_host = changes_by_host(&json_plan(&run));
    let expected = format!(
        "the base commit `{base}` is not in this shallow clone (fetch it: `git fetch --depth=1 origin {base}`, or check out with `fetch-depth: 0`)"
    );
    assert_eq!(by_host["web"], json!({"state": "unavailable", "reason": expected}));
    assert!(run.stderr.contains("not comparing NixOS configurations with the base"), "{}", run.stderr);

    // What the note says to do works: the clone stays shallow (nix is told `shallow=1`).
    shallow.run(&["fetch", "--quiet", "--depth=1", "origin", base]);
    assert_eq!(shallow.run(&["rev-parse", "--is-shallow-repository"]), "true");
    let by_host = changes_by_host(&json_plan(&plan(&flake, &pve, &["--format", "json", "--base", base])));
    assert_eq!(by_host["web"]["state"], "compared", "{}", by_host["web"]);
    assert_eq!(by_host["monitor"]["state"], "new_host");
}

#[tokio::test]
async fn in_ci_the_base_is_the_pull_requests_base_commit() {
    let repo = repository("import ./base.nix\n");
    let (fleet, base) = (&repo.fleet, &repo.base);
    let pve = cluster(fleet).await;
    let head = repo.git.run(&["rev-parse", "HEAD"]);
    let ci = tempfile::tempdir().expect("tempdir");
    // The parts of GitHub's `pull_request` payload nixprox reads (rest-api-description's
    // `webhook-pull-request-opened`: `pull_request.{number,head,base}.{sha,repo.full_name}`).
    let payload = json!({
        "action": "opened",
        "number": 7,
        "pull_request": {
            "number": 7,
            "head": {"sha": head, "repo": {"full_name": "home/lab"}},
            "base": {"sha": base, "repo": {"full_name": "home/lab"}}
        }
    });
    let event = ci.path().join("event.json");
    std::fs::write(&event, payload.to_string()).expect("write the event");
    let summary = ci.path().join("summary.md");
    let env = [
        ("GITHUB_ACTIONS", "true".to_string()),
        ("GITHUB_REPOSITORY", "home/lab".into()),
        ("GITHUB_EVENT_NAME", "pull_request".into()),
        ("GITHUB_EVENT_PATH", event.display().to_string()),
        ("GITHUB_SHA", head.clone()),
        ("GITHUB_API_URL", "http://127.0.0.1:9".into()),
        ("GITHUB_STEP_SUMMARY", summary.display().to_string()),
    ];
    let run: Run = {
        let mut command = cli::nixprox();
        command.arg("plan").arg("--flake").arg(fleet.dir.path()).envs(cli::pve_env(&pve)).envs(env.clone());
        for input in override_inputs() {
            command.args(["--override-input", &input.name, &input.flake_ref]);
        }
        command.output().expect("run nixprox").into()
    };
    assert_eq!(run.code, 0, "{}", run.stderr);
    let markdown = std::fs::read_to_string(&summary).expect("job summary written");
    assert!(
        markdown.contains(
            "- **NixOS**: NixOS 24.05 → 24.11 · nixpkgs 0123456 → 89abcde · kernel 6.6.30 → 6.6.31"
        ),
        "{markdown}"
    );
    assert!(
        markdown.contains("- **NixOS**: new host: the base has no configuration of this name"),
        "{markdown}"
    );

    // `--no-base` turns it off, in CI too.
    std::fs::remove_file(&summary).expect("remove the summary");
    let mut command = cli::nixprox();
    command
        .arg("plan")
        .arg("--no-base")
        .arg("--flake")
        .arg(fleet.dir.path())
        .envs(cli::pve_env(&pve))
        .envs(env);
    for input in override_inputs() {
        command.args(["--override-input", &input.name, &input.flake_ref]);
    }
    let run: Run = command.output().expect("run nixprox").into();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let markdown = std::fs::read_to_string(&summary).expect("job summary written");
    assert!(!markdown.contains("**NixOS**"), "{markdown}");
}

#[tokio::test]
async fn the_comment_of_500_changed_hosts_fits_the_limit_and_timings_show_the_phase() {
    let fleet = Fleet::generate_nixos(500, 500);
    let git = Git::init(fleet.dir.path());
    let base = git.commit_all("base");
    fleet.set_version(2);
    git.commit_all("head");
    let pve = FakePve::start(fleet.scenario(&BTreeMap::new()));
    let timings = fleet.dir.path().join("timings.json");
    let out = fleet.dir.path().join("plan.json");
    let run = plan(
        fleet.dir.path(),
        &pve,
        &[
            "--format",
            "json",
            "--out",
            out.to_str().expect("utf-8"),
            "--base",
            &base,
            "--timings",
            timings.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let plan_json: Value = serde_json::from_str(&std::fs::read_to_string(&out).expect("plan")).expect("json");
    let by_host = changes_by_host(&plan_json);
    assert_eq!(by_host.len(), 500);
    for (host, changes) in &by_host {
        assert_eq!(changes["state"], "compared", "{host}: {changes}");
        assert_eq!(changes["reboot_needed"], true, "{host}");
    }
    assert_eq!(
        names(&by_host["h0042"]),
        [
            "kernel:build",
            "kernel:initrd",
            "kernel:version",
            "packages:app",
            "services:app",
            "firewall:3001/tcp",
            "firewall:3002/tcp",
            "users:deploy1",
            "users:deploy2",
            "extra:app generation"
        ]
    );
    let timings: Value =
        serde_json::from_str(&std::fs::read_to_string(&timings).expect("timings")).expect("json");
    let chars = timings["comment_chars"].as_u64().expect("comment_chars");
    assert!(chars <= 65_536, "{chars} characters");
    assert_ne!(timings["comment_detail"], "Full", "500 hosts' details cannot all fit");
    assert!(timings["nixos_changes_ms"].as_f64().expect("nixos_changes_ms") > 0.0, "{timings}");
}

#[tokio::test]
async fn a_sharded_plan_carries_the_nixos_changes_of_the_unsharded_one() {
    let repo = repository("import ./base.nix\n");
    let (fleet, base) = (&repo.fleet, &repo.base);
    let pve = cluster(fleet).await;
    let dir = fleet.dir.path().to_path_buf();
    let unsharded = json_plan(&plan(&dir, &pve, &["--format", "json", "--base", base]));

    let out = tempfile::tempdir().expect("tempdir");
    let part = |i: usize| out.path().join(format!("part-{i}.json")).display().to_string();
    for i in 1..=2 {
        let spec = format!("{i}/2");
        let run =
            plan(&dir, &pve, &["--shard", &spec, "--format", "json", "--out", &part(i), "--base", base]);
        assert_eq!(run.code, 0, "shard {i}:\n{}", run.stderr);
    }
    let merged = json_plan(&plan(&dir, &pve, &["--format", "json", "--merge", &part(1), &part(2)]));
    assert_eq!(merged["plan_id"], unsharded["plan_id"]);
    assert_eq!(changes_by_host(&merged), changes_by_host(&unsharded));
    assert_eq!(changes_by_host(&merged)["monitor"], json!({"state": "new_host"}));

    // Shards planned without a base: the merge says the summary is absent.
    for i in 1..=2 {
        let spec = format!("{i}/2");
        let run = plan(&dir, &pve, &["--shard", &spec, "--format", "json", "--out", &part(i)]);
        assert_eq!(run.code, 0, "shard {i}:\n{}", run.stderr);
    }
    let run = plan(&dir, &pve, &["--format", "json", "--merge", &part(1), &part(2), "--base", base]);
    let merged = json_plan(&run);
    assert!(changes_by_host(&merged).values().all(Value::is_null));
    assert!(
        run.stderr
            .contains("the shards were planned without a base, so the merged plan shows no NixOS changes"),
        "{}",
        run.stderr
    );

    // Shards that compared with different bases are refused.
    let run = plan(&dir, &pve, &["--shard", "1/2", "--format", "json", "--out", &part(1), "--base", base]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = plan(&dir, &pve, &["--format", "json", "--merge", &part(1), &part(2)]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("compared with another base than shard 1"), "{}", run.stderr);
}
