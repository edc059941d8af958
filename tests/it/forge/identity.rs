//! Through the binary: which token nixprox uses, and which account's comment it edits, with
//! the tokens CI really hands out (the runner's automatic token next to an explicit one,
//! Forgejo's `forgejo-actions` system user, a GitHub App's installation token).

use nixprox::forge::ForgeKind;
use wiremock::matchers::body_string_contains;

use super::cli::{ci_env, homelab, mount_plan_statuses, pull_request, run_in_ci};
use super::spec::Op;
use super::{APP_BOT, CANARY, FORGEJO_ACTIONS, Fake, GHOST, MALLORY, ME, both_forges};
use crate::support::nix::Fixture;

/// The sticky comment is edited in place (`PATCH`), never posted again.
async fn expect_edit(fake: &Fake, id: i64, author: (&str, i64), pr: u64) {
    fake.req("PATCH", &fake.repo_path(&format!("issues/comments/{id}")))
        .and(body_string_contains("<!-- nixprox:plan"))
        .respond_with(fake.answer(Op::EditComment, 200, fake.comment(id, author, pr, "the plan")))
        .expect(1)
        .mount(&fake.server)
        .await;
}

/// A plan comment for the fixture flake as an earlier run wrote it.
fn earlier_plan_comment(fixture: &Fixture) -> String {
    let key = nixprox::forge::comment::marker_key(&format!("{},nixprox.yaml", fixture.flake_ref()));
    format!("<!-- nixprox:plan key={key} plan_id=0000000000000000 -->\nold plan")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| a.to_string()).collect()
}

/// The runner's own variables hold the automatic token; the explicitly named one (what the
/// action's `token` input becomes) is used: every mock matches only that token, and a request
/// with another one hits the catch-all.
async fn explicit_token_wins_over_the_runners_variables(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    let (fixture, pve, dir) = homelab();
    let mut env = ci_env(&fake, "pull_request", "pull_request_opened.json", dir.path());
    env.insert("GITHUB_TOKEN".into(), "automatic-runner-token".into());
    if kind == ForgeKind::Forgejo {
        env.insert("FORGEJO_TOKEN".into(), "automatic-runner-token".into());
    }
    env.insert("NIXPROX_ACTION_TOKEN".into(), CANARY.into());
    let (pr, head) = pull_request(kind);
    fake.mount_user(ME).await;
    fake.mount_comments(pr, Vec::new()).await;
    fake.req("POST", &fake.repo_path(&format!("issues/{pr}/comments")))
        .respond_with(fake.answer(Op::CreateComment, 201, fake.comment(9001, ME, pr, "the plan")))
        .expect(1)
        .mount(&fake.server)
        .await;
    mount_plan_statuses(&fake, &head, ME).await;
    let run =
        run_in_ci(args(&["plan", "--comment", "--token-env", "NIXPROX_ACTION_TOKEN"]), env, &fixture, &pve)
            .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    fake.next_run().await;
}

/// Forgejo's automatic token: `GET /user` answers the system user `forgejo-actions` (id -2);
/// the list holds a deleted account's comment (`Ghost`, id -1) and a pasted marker. The run
/// edits its own comment and posts nothing new.
#[tokio::test]
async fn forgejo_actions_token_edits_its_comment_among_ghosts() {
    let fake = Fake::start(ForgeKind::Forgejo).await;
    let (fixture, pve, dir) = homelab();
    let env = ci_env(&fake, "pull_request", "pull_request_opened.json", dir.path());
    let (pr, head) = pull_request(ForgeKind::Forgejo);
    let ours = earlier_plan_comment(&fixture);
    fake.mount_user(FORGEJO_ACTIONS).await;
    fake.mount_comments(
        pr,
        vec![
            fake.comment(8001, GHOST, pr, "a comment of a deleted account"),
            fake.comment(8002, FORGEJO_ACTIONS, pr, &ours),
            fake.comment(8003, MALLORY, pr, &ours),
        ],
    )
    .await;
    expect_edit(&fake, 8002, FORGEJO_ACTIONS, pr).await;
    mount_plan_statuses(&fake, &head, FORGEJO_ACTIONS).await;
    let run = run_in_ci(args(&["plan", "--comment"]), env, &fixture, &pve).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("updated the plan comment"), "{}", run.stderr);
    fake.next_run().await;
}

/// A GitHub App's installation token: `GET /user` is refused; the pending status's `creator`
/// tells the run it writes as `nixprox-lab[bot]`, so its comment is edited although another
/// app's bot also wrote a marker. When statuses are refused too, two apps cannot be told apart
/// and the error names `--bot-login`; with it, the comment is found.
#[tokio::test]
async fn github_app_token_finds_its_comment_by_its_own_writes_or_bot_login() {
    let fake = Fake::start(ForgeKind::GitHub).await;
    let (fixture, pve, dir) = homelab();
    let env = ci_env(&fake, "pull_request", "pull_request_opened.json", dir.path());
    let (pr, head) = pull_request(ForgeKind::GitHub);
    let marked = earlier_plan_comment(&fixture);
    let other_app = ("renovate[bot]", 29139614);
    let comments = vec![fake.comment(8001, other_app, pr, &marked), fake.comment(8002, APP_BOT, pr, &marked)];
    let refuse_statuses = || async {
        fake.req("POST", &fake.repo_path(&format!("statuses/{head}")))
            .respond_with(fake.error(Op::CreateStatus, 403, "Resource not accessible by integration"))
            .mount(&fake.server)
            .await;
    };

    fake.mount_user_refused().await;
    fake.mount_comments(pr, comments.clone()).await;
    expect_edit(&fake, 8002, APP_BOT, pr).await;
    mount_plan_statuses(&fake, &head, APP_BOT).await;
    let run = run_in_ci(args(&["plan", "--comment"]), env.clone(), &fixture, &pve).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("writes as `nixprox-lab[bot]`"), "{}", run.stderr);
    fake.next_run().await;

    fake.mount_user_refused().await;
    fake.mount_comments(pr, comments.clone()).await;
    refuse_statuses().await;
    let run = run_in_ci(args(&["plan", "--comment"]), env.clone(), &fixture, &pve).await;
    assert!(run.stderr.contains("set `--bot-login <slug>[bot]`"), "{}", run.stderr);
    assert!(run.stderr.contains("`nixprox-lab[bot]`, `renovate[bot]`"), "{}", run.stderr);
    fake.next_run().await;

    fake.mount_comments(pr, comments).await;
    expect_edit(&fake, 8002, APP_BOT, pr).await;
    refuse_statuses().await;
    let run =
        run_in_ci(args(&["plan", "--comment", "--bot-login", "nixprox-lab[bot]"]), env, &fixture, &pve).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    fake.next_run().await; // no `GET /user`: the login was given
}

both_forges!(explicit_token_wins_over_the_runners_variables);
