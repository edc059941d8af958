//! CI detection against the event payload fixtures in `fixtures/events/`, with the environment
//! each runner really sets (Forgejo sets `FORGEJO_*` and `GITHUB_*`).

use std::collections::HashMap;
use std::path::PathBuf;

use nixprox::forge::{Event, ForgeContext, ForgeKind, ForgeOverrides, PullRequestEvent};

const HEAD: &str = "1f0c4a7e9b2d3c5a6e8f0b1d2c3e4f5a6b7c8d9e";
const BASE: &str = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d";
const MERGE: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
/// What `GITHUB_SHA` holds for a pull request: the test merge commit, not the head.
const TEST_MERGE: &str = "8888888888888888888888888888888888888888";

fn fixture(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/events").join(rel).display().to_string()
}

fn github_env(event: &str, payload: &str, sha: &str) -> HashMap<String, String> {
    [
        ("CI", "true"),
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_API_URL", "https://api.github.com"),
        ("GITHUB_SERVER_URL", "https://github.com"),
        ("GITHUB_REPOSITORY", "home/lab"),
        ("GITHUB_EVENT_NAME", event),
        ("GITHUB_EVENT_PATH", &fixture(payload)),
        ("GITHUB_SHA", sha),
        ("GITHUB_RUN_ID", "9876543210"),
        ("GITHUB_RUN_NUMBER", "77"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn forgejo_env(event: &str, payload: &str, sha: &str) -> HashMap<String, String> {
    let mut env = github_env(event, payload, sha);
    for (k, v) in [
        ("GITHUB_API_URL", "https://forge.example/api/v1"),
        ("GITHUB_SERVER_URL", "https://forge.example"),
        ("FORGEJO_ACTIONS", "true"),
        ("GITEA_ACTIONS", "true"),
        ("FORGEJO_API_URL", "https://forge.example/api/v1"),
        ("FORGEJO_SERVER_URL", "https://forge.example"),
        ("FORGEJO_REPOSITORY", "home/lab"),
        ("FORGEJO_EVENT_NAME", event),
        ("FORGEJO_EVENT_PATH", &fixture(payload)),
        ("FORGEJO_SHA", sha),
        ("FORGEJO_RUN_NUMBER", "77"),
        ("FORGEJO_TOKEN", "forgejo-token-value"),
    ] {
        env.insert(k.to_string(), v.to_string());
    }
    env.remove("GITHUB_ACTIONS"); // Forgejo runners do not claim to be GitHub Actions
    env
}

fn detect(env: &HashMap<String, String>, o: &ForgeOverrides) -> ForgeContext {
    ForgeContext::detect(o, &|k| env.get(k).cloned()).expect("detects").expect("in CI")
}

#[test]
fn github_pull_request_opened_uses_the_head_not_the_merge_commit() {
    let ctx = detect(
        &github_env("pull_request", "github/pull_request_opened.json", TEST_MERGE),
        &Default::default(),
    );
    assert_eq!(ctx.kind, ForgeKind::GitHub);
    assert_eq!(ctx.api_url.as_str(), "https://api.github.com/");
    assert_eq!(ctx.repo.to_string(), "home/lab");
    assert_eq!(ctx.run_url.as_deref(), Some("https://github.com/home/lab/actions/runs/9876543210"));
    assert_eq!(
        ctx.event,
        Event::PullRequest(PullRequestEvent {
            number: 17,
            action: Some("opened".into()),
            head_sha: Some(HEAD.into()),
            base_sha: Some(BASE.into()),
            from_fork: false,
        })
    );
    assert_eq!(ctx.head_sha(), Some(HEAD));
    assert_eq!(ctx.token_env, "GITHUB_TOKEN");
}

#[test]
fn github_synchronize_and_fork() {
    let ctx = detect(
        &github_env("pull_request", "github/pull_request_synchronize.json", TEST_MERGE),
        &Default::default(),
    );
    let Event::PullRequest(pr) = &ctx.event else { panic!("{:?}", ctx.event) };
    assert_eq!(
        (pr.action.as_deref(), pr.head_sha.as_deref()),
        (Some("synchronize"), Some("2".repeat(40).as_str()))
    );

    let ctx =
        detect(&github_env("pull_request", "github/pull_request_fork.json", TEST_MERGE), &Default::default());
    let Event::PullRequest(pr) = &ctx.event else { panic!("{:?}", ctx.event) };
    assert_eq!(pr.number, 18);
    assert!(pr.from_fork);
}

#[test]
fn github_push_schedule_dispatch() {
    let ctx = detect(&github_env("push", "github/push.json", MERGE), &Default::default());
    assert_eq!(ctx.event, Event::Push { sha: MERGE.into(), git_ref: Some("refs/heads/main".into()) });
    assert_eq!(ctx.pr_number(), None);

    let ctx = detect(&github_env("schedule", "github/schedule.json", MERGE), &Default::default());
    assert_eq!(ctx.event, Event::Schedule { sha: Some(MERGE.into()) });

    let mut env = github_env("workflow_dispatch", "github/workflow_dispatch.json", MERGE);
    env.insert("GITHUB_REF".into(), "refs/heads/main".into());
    let ctx = detect(&env, &Default::default());
    assert_eq!(
        ctx.event,
        Event::WorkflowDispatch { sha: Some(MERGE.into()), git_ref: Some("refs/heads/main".into()) }
    );
}

#[test]
fn forgejo_pull_request_opened_and_synchronized() {
    let ctx = detect(
        &forgejo_env("pull_request", "forgejo/pull_request_opened.json", TEST_MERGE),
        &Default::default(),
    );
    assert_eq!(ctx.kind, ForgeKind::Forgejo);
    assert_eq!(ctx.api_url.as_str(), "https://forge.example/api/v1");
    assert_eq!(ctx.run_url.as_deref(), Some("https://forge.example/home/lab/actions/runs/77"));
    assert_eq!(ctx.token_env, "FORGEJO_TOKEN");
    assert_eq!(ctx.pr_number(), Some(5));
    assert_eq!(ctx.head_sha(), Some(HEAD));

    let ctx = detect(
        &forgejo_env("pull_request", "forgejo/pull_request_synchronized.json", TEST_MERGE),
        &Default::default(),
    );
    let Event::PullRequest(pr) = &ctx.event else { panic!("{:?}", ctx.event) };
    assert_eq!(pr.action.as_deref(), Some("synchronized"));
    assert_eq!(pr.head_sha.as_deref(), Some("4".repeat(40).as_str()));
    assert!(!pr.from_fork);
}

#[test]
fn forgejo_push_and_schedule() {
    let ctx = detect(&forgejo_env("push", "forgejo/push.json", MERGE), &Default::default());
    assert_eq!(ctx.event, Event::Push { sha: MERGE.into(), git_ref: Some("refs/heads/main".into()) });
    let ctx = detect(&forgejo_env("schedule", "forgejo/schedule.json", MERGE), &Default::default());
    assert_eq!(ctx.event, Event::Schedule { sha: Some(MERGE.into()) });
}

#[test]
fn every_value_can_be_overridden() {
    let env = forgejo_env("pull_request", "forgejo/pull_request_opened.json", TEST_MERGE);
    let o = ForgeOverrides {
        forge: Some(ForgeKind::GitHub),
        repo: Some("other/repo".into()),
        pr: Some(99),
        api_url: Some("http://127.0.0.1:9/api/v3".into()),
        token_env: Some("NIXPROX_FORGE_TOKEN".into()),
        bot_login: None,
        sha: Some("abc".into()),
    };
    let ctx = detect(&env, &o);
    assert_eq!(ctx.kind, ForgeKind::GitHub);
    assert_eq!(ctx.repo.to_string(), "other/repo");
    assert_eq!(ctx.api_url.as_str(), "http://127.0.0.1:9/api/v3");
    assert_eq!(ctx.token_env, "NIXPROX_FORGE_TOKEN");
    assert_eq!((ctx.pr_number(), ctx.head_sha()), (Some(99), Some("abc")));
    assert_eq!(ctx.run_url, None, "a run URL of another repository would be wrong");
}

#[test]
fn malformed_or_missing_payload_names_the_variable() {
    let env = github_env("pull_request", "github/malformed_pull_request.json", TEST_MERGE);
    let err = ForgeContext::detect(&Default::default(), &|k| env.get(k).cloned()).expect_err("malformed");
    assert_eq!(
        err.to_string(),
        format!(
            "malformed `pull_request` event payload `{}` (from `GITHUB_EVENT_PATH`): `pull_request.head.sha` is missing",
            fixture("github/malformed_pull_request.json")
        )
    );

    let env = github_env("pull_request", "github/does-not-exist.json", TEST_MERGE);
    let err = ForgeContext::detect(&Default::default(), &|k| env.get(k).cloned()).expect_err("missing");
    let text = err.to_string();
    assert!(text.starts_with("failed to read the event payload `"), "{text}");
    assert!(text.contains("(from `GITHUB_EVENT_PATH`)"), "{text}");

    let env = github_env("push", "github/../README.md", MERGE);
    let err = ForgeContext::detect(&Default::default(), &|k| env.get(k).cloned()).expect_err("not json");
    assert!(err.to_string().starts_with("malformed event payload `"), "{err}");
}
