//! The binary in CI: `nixprox plan --comment` and `nixprox drift --issue` with a GitHub or
//! Forgejo Actions environment, a forge API on wiremock, fakepve and the example flake.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use nixprox::forge::ForgeKind;
use serde_json::{Value, json};
use wiremock::Request;
use wiremock::matchers::{body_partial_json, body_string_contains};

use super::spec::Op;
use super::{CANARY, Fake, ME, both_forges};
use crate::support::cli::{self, Run};
use crate::support::fakepve::FakePve;
use crate::support::nix::{Fixture, repo};

/// The pull request number and head commit of a forge's `pull_request_opened.json` fixture.
pub(super) fn pull_request(kind: ForgeKind) -> (u64, String) {
    let dir = match kind {
        ForgeKind::GitHub => "github",
        ForgeKind::Forgejo => "forgejo",
    };
    let path = repo().join("fixtures/events").join(dir).join("pull_request_opened.json");
    let payload: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("payload")).expect("json");
    let number = payload["number"].as_u64().expect("number");
    (number, payload["pull_request"]["head"]["sha"].as_str().expect("head sha").to_string())
}

/// The CI variables a runner sets for a pull request (or another `event`).
pub(super) fn ci_env(
    fake: &Fake,
    event: &str,
    payload: &str,
    dir: &std::path::Path,
) -> BTreeMap<String, String> {
    let kind = match fake.kind {
        ForgeKind::GitHub => "github",
        ForgeKind::Forgejo => "forgejo",
    };
    let payload = repo().join("fixtures/events").join(kind).join(payload).display().to_string();
    let api = format!("{}{}", fake.server.uri(), fake.prefix());
    let mut env: BTreeMap<String, String> = [
        ("CI", "true"),
        ("GITHUB_SERVER_URL", "https://forge.example"),
        ("GITHUB_REPOSITORY", "home/lab"),
        ("GITHUB_EVENT_NAME", event),
        ("GITHUB_EVENT_PATH", payload.as_str()),
        ("GITHUB_SHA", "0000000000000000000000000000000000000000"),
        ("GITHUB_RUN_ID", "42"),
        ("GITHUB_RUN_NUMBER", "42"),
        ("GITHUB_TOKEN", CANARY),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.insert("GITHUB_STEP_SUMMARY".into(), dir.join("summary.md").display().to_string());
    env.insert("GITHUB_OUTPUT".into(), dir.join("output").display().to_string());
    match fake.kind {
        ForgeKind::GitHub => {
            env.insert("GITHUB_ACTIONS".into(), "true".into());
            env.insert("GITHUB_API_URL".into(), api);
        }
        ForgeKind::Forgejo => {
            env.insert("FORGEJO_ACTIONS".into(), "true".into());
            env.insert("FORGEJO_API_URL".into(), api.clone());
            env.insert("GITHUB_API_URL".into(), api);
        }
    }
    env
}

pub(super) async fn run_in_ci(
    args: Vec<String>,
    env: BTreeMap<String, String>,
    fixture: &Fixture,
    pve: &FakePve,
) -> Run {
    let mut command = cli::nixprox();
    command.args(&args).args(cli::source_args(fixture)).envs(cli::pve_env(pve)).envs(&env);
    let run: Run = tokio::task::spawn_blocking(move || command.output().expect("run nixprox").into())
        .await
        .expect("join the nixprox run");
    for text in [&run.stdout, &run.stderr] {
        assert!(!text.contains(CANARY), "the forge token leaked into the output");
    }
    run
}

fn status_body(state: &str) -> Value {
    json!({ "state": state, "context": "nixprox/plan" })
}

/// Mounts the two statuses a `plan --comment` run sets, answered with `creator` as the
/// status's creator (the token's account).
pub(super) async fn mount_plan_statuses(fake: &Fake, head: &str, creator: (&str, i64)) {
    for state in ["pending", "success"] {
        fake.req("POST", &fake.repo_path(&format!("statuses/{head}")))
            .and(body_partial_json(status_body(state)))
            .respond_with(fake.answer(Op::CreateStatus, 201, fake.status(state, "nixprox/plan", creator)))
            .expect(1)
            .mount(&fake.server)
            .await;
    }
}

/// Expects one new comment on `pr` containing `marker`, answered as ours; returns where its
/// body is kept once posted.
pub(super) async fn capture_new_comment(fake: &Fake, pr: u64, marker: &str) -> Arc<Mutex<String>> {
    let posted = Arc::new(Mutex::new(String::new()));
    let created = fake.answer(Op::CreateComment, 201, fake.comment(9001, ME, pr, "the plan"));
    let sink = posted.clone();
    fake.req("POST", &fake.repo_path(&format!("issues/{pr}/comments")))
        .and(body_string_contains(marker))
        .respond_with(move |request: &Request| {
            let body: Value = serde_json::from_slice(&request.body).expect("json body");
            *sink.lock().expect("lock") = body["body"].as_str().unwrap_or_default().to_string();
            created.clone()
        })
        .expect(1)
        .mount(&fake.server)
        .await;
    posted
}

/// Starts what every binary run needs: the example flake, fakepve with its cluster, a
/// directory for the job summary and outputs.
pub(super) fn homelab() -> (Fixture, FakePve, tempfile::TempDir) {
    let fixture = Fixture::copy("homelab");
    let pve = FakePve::start(cli::cluster_scenario(&repo().join("fixtures/homelab/cluster.json")));
    (fixture, pve, tempfile::tempdir().expect("tempdir"))
}

async fn plan_comment_status_summary_and_outputs(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    let fixture = Fixture::copy("homelab");
    let pve = FakePve::start(cli::cluster_scenario(&repo().join("fixtures/homelab/cluster.json")));
    let dir = tempfile::tempdir().expect("tempdir");
    let env = ci_env(&fake, "pull_request", "pull_request_opened.json", dir.path());
    let (pr, head) = pull_request(kind);

    fake.mount_user(ME).await;
    fake.mount_comments(pr, Vec::new()).await;
    let posted = capture_new_comment(&fake, pr, "<!-- nixprox:plan").await;
    mount_plan_statuses(&fake, &head, ME).await;

    let run = run_in_ci(vec!["plan".into(), "--comment".into()], env, &fixture, &pve).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    fake.next_run().await;

    let body = posted.lock().expect("lock").clone();
    let plan_id =
        run.stdout.lines().next().and_then(|l| l.split(':').next()).map(|l| l.trim_start_matches("Plan "));
    let plan_id = plan_id.expect("the text plan starts with its id");
    assert!(body.contains(&format!("plan_id={plan_id}")), "marker carries the plan id:\n{body}");
    assert!(body.contains("[!CAUTION]"), "destructive banner");
    assert!(body.contains(&format!("planned at commit `{}`", &head[..12])), "{body}");
    let summary = std::fs::read_to_string(dir.path().join("summary.md")).expect("job summary written");
    assert!(summary.contains("### nixprox plan") && summary.contains("<details>"));
    let output = std::fs::read_to_string(dir.path().join("output")).expect("outputs written");
    assert!(output.contains("plan-id<<") && output.contains(plan_id), "{output}");
    assert!(output.contains("has-changes<<") && output.contains("\ntrue\n"), "{output}");
}

async fn fork_pull_request_warns_and_still_succeeds(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    let fixture = Fixture::copy("homelab");
    let pve = FakePve::start(cli::cluster_scenario(&repo().join("fixtures/homelab/cluster.json")));
    let dir = tempfile::tempdir().expect("tempdir");
    let env = ci_env(&fake, "pull_request", "pull_request_opened.json", dir.path());
    let (pr, head) = pull_request(kind);
    let mount = || async {
        fake.mount_user(ME).await;
        fake.mount_comments(pr, Vec::new()).await;
        let forbidden = "Resource not accessible by integration";
        fake.req("POST", &fake.repo_path(&format!("issues/{pr}/comments")))
            .respond_with(fake.error(Op::CreateComment, 403, forbidden))
            .mount(&fake.server)
            .await;
        fake.req("POST", &fake.repo_path(&format!("statuses/{head}")))
            .respond_with(fake.error(Op::CreateStatus, 403, forbidden))
            .mount(&fake.server)
            .await;
    };
    mount().await;
    let run = run_in_ci(vec!["plan".into(), "--comment".into()], env.clone(), &fixture, &pve).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    // The warning names the fix for this forge (issue 22: Forgejo's automatic token may be
    // read-only for every pull request).
    let fix = match kind {
        ForgeKind::GitHub => {
            "the token cannot write to the pull request (a pull request from a fork gets a read-only `GITHUB_TOKEN`; otherwise give the job `pull-requests: write`); the plan is in the job summary"
        }
        ForgeKind::Forgejo => {
            "the token cannot write to the pull request (Forgejo may give `pull_request` runs a read-only automatic token, and always does for forks): give the plan job a bot account's token with the `write:issue` and `write:repository` scopes, as the action's `token` (the examples read the secret `NIXPROX_BOT_TOKEN`; docs/ci.md#forgejo); the plan is in the job log"
        }
    };
    let warning = run.stderr.lines().find(|l| l.contains("cannot comment on #")).expect("a warning");
    assert!(warning.ends_with(&format!("): {fix}")), "{warning}");
    assert!(
        std::fs::read_to_string(dir.path().join("summary.md")).expect("summary").contains("nixprox plan")
    );
    fake.next_run().await;
    mount().await;

    let required =
        run_in_ci(vec!["plan".into(), "--comment".into(), "--comment-required".into()], env, &fixture, &pve)
            .await;
    assert_eq!(required.code, 1, "{}", required.stderr);
    assert!(required.stderr.contains("--comment-required"), "{}", required.stderr);
}

async fn drift_opens_an_issue_when_the_cluster_differs(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    let fixture = Fixture::copy("homelab");
    let pve = FakePve::start(cli::cluster_scenario(&repo().join("fixtures/homelab/cluster.json")));
    let dir = tempfile::tempdir().expect("tempdir");
    let env = ci_env(&fake, "schedule", "schedule.json", dir.path());
    fake.mount_user(ME).await;
    fake.mount_issues(Vec::new()).await;
    fake.req("POST", &fake.repo_path("issues"))
        .and(body_string_contains("nixprox:drift"))
        .respond_with(fake.answer(Op::CreateIssue, 201, fake.issue(5, ME, "drift", "", true)))
        .expect(1)
        .mount(&fake.server)
        .await;
    let run = run_in_ci(vec!["drift".into(), "--issue".into()], env, &fixture, &pve).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("opened drift issue #5"), "{}", run.stderr);
    fake.next_run().await;
}

/// `db`'s new cores and memory were applied without a reboot: Proxmox holds them as pending,
/// the VM runs the old ones. Nothing is left to apply, but the cluster does not run the flake
/// yet: drift opens its issue, saying what waits for the reboot and how to make it happen.
async fn drift_keeps_an_issue_open_while_changes_wait_for_a_reboot(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    let fixture = Fixture::copy("homelab");
    let path = repo().join("fixtures/homelab/cluster.json");
    let mut cluster: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("cluster.json")).expect("json");
    for guest in cluster["guests"].as_array_mut().expect("guests") {
        if guest["name"] == "db" {
            guest["pending"] = json!({"cores": "4", "memory": "8192"});
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let patched = dir.path().join("cluster.json");
    std::fs::write(&patched, cluster.to_string()).expect("write cluster");
    let pve = FakePve::start(cli::cluster_scenario(&patched));
    let env = ci_env(&fake, "schedule", "schedule.json", dir.path());
    fake.mount_user(ME).await;
    fake.mount_issues(Vec::new()).await;
    fake.req("POST", &fake.repo_path("issues"))
        .and(body_string_contains("nixprox:drift"))
        .and(body_string_contains("1 waiting for a reboot"))
        .and(body_string_contains("#### Waiting for a reboot"))
        .and(body_string_contains("`qm reboot 102`"))
        .respond_with(fake.answer(Op::CreateIssue, 201, fake.issue(5, ME, "drift", "", true)))
        .expect(1)
        .mount(&fake.server)
        .await;
    let args = vec!["drift".into(), "--issue".into(), "--hosts".into(), "db".into()];
    let run = run_in_ci(args, env, &fixture, &pve).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("opened drift issue #5"), "{}", run.stderr);
    fake.next_run().await;
}

both_forges!(
    plan_comment_status_summary_and_outputs,
    fork_pull_request_warns_and_still_succeeds,
    drift_opens_an_issue_when_the_cluster_differs,
    drift_keeps_an_issue_open_while_changes_wait_for_a_reboot
);
