//! The sticky comment, statuses, the drift issue and the reviewed plan, against both forges.

use nixprox::forge::comment::{plan_body_budget, plan_marker};
use nixprox::forge::{CommentOutcome, ForgeError, ForgeKind, IssueOutcome, StatusState};
use serde_json::{Value, json};
use wiremock::ResponseTemplate;
use wiremock::matchers::body_json;

use super::spec::Op;
use super::{CANARY, FORGEJO_ACTIONS, Fake, GHOST, GITHUB_ACTIONS, MALLORY, ME, both_forges};

const KEY: &str = "flake=.#,settings=nixprox.yaml";
const BODY: &str = "## nixprox plan\n\n1 to create\n";

fn full(plan_id: &str) -> String {
    format!("{}\n{BODY}", plan_marker(KEY, plan_id))
}

fn filler(fake: &Fake, from: i64, n: i64, pr: u64) -> Vec<Value> {
    (from..from + n).map(|id| fake.comment(id, MALLORY, pr, &format!("looks good ({id})"))).collect()
}

both_forges!(
    first_run_creates_second_run_edits,
    someone_elses_marker_is_not_touched,
    finds_our_comment_beyond_the_first_hundred,
    fork_token_403_is_forbidden_not_an_error,
    deleted_comment_404_creates_a_new_one,
    server_errors_are_retried_boundedly,
    validation_errors_are_retried_then_reported_with_body,
    oversized_body_is_refused_before_sending,
    commit_status_on_the_head_sha,
    drift_issue_opened_updated_closed,
    reviewed_plan_found_after_merge,
    echoed_token_is_redacted_from_errors,
    actions_token_without_user_endpoint,
    apply_report_is_a_new_comment,
);

async fn first_run_creates_second_run_edits(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    let forge = fake.forge();
    let comments = fake.repo_path("issues/17/comments");

    // Run 1: no comment yet → exactly one POST with the marker and the body.
    fake.mount_user(ME).await;
    fake.mount_comments(17, filler(&fake, 1, 2, 17)).await;
    fake.req("POST", &comments)
        .and(body_json(json!({ "body": full("p-1") })))
        .respond_with(fake.answer(Op::CreateComment, 201, fake.comment(9001, ME, 17, &full("p-1"))))
        .expect(1)
        .mount(&fake.server)
        .await;
    let outcome = forge.upsert_plan_comment(17, KEY, "p-1", BODY, None).await.expect("first run");
    assert!(matches!(outcome, CommentOutcome::Created { id: 9001, .. }), "{outcome:?}");
    fake.next_run().await;

    // Run 2: the comment is found by its marker and edited in place with the new plan id.
    fake.mount_user(ME).await;
    let mut listed = filler(&fake, 1, 2, 17);
    listed.push(fake.comment(9001, ME, 17, &full("p-1")));
    fake.mount_comments(17, listed).await;
    fake.req("PATCH", &fake.repo_path("issues/comments/9001"))
        .and(body_json(json!({ "body": full("p-2") })))
        .respond_with(fake.answer(Op::EditComment, 200, fake.comment(9001, ME, 17, &full("p-2"))))
        .expect(1)
        .mount(&fake.server)
        .await;
    let outcome = forge.upsert_plan_comment(17, KEY, "p-2", BODY, None).await.expect("second run");
    assert!(matches!(outcome, CommentOutcome::Updated { id: 9001, .. }), "{outcome:?}");
    fake.next_run().await;
}

async fn someone_elses_marker_is_not_touched(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    fake.mount_user(ME).await;
    // Mallory pasted our marker (same key) into her comment; a comment of ours for another
    // flake (other key) is not ours to edit either.
    let other_key = format!("{}\nother flake", plan_marker("flake=./other", "p-x"));
    fake.mount_comments(
        17,
        vec![fake.comment(500, MALLORY, 17, &full("p-evil")), fake.comment(501, ME, 17, &other_key)],
    )
    .await;
    fake.req("POST", &fake.repo_path("issues/17/comments"))
        .and(body_json(json!({ "body": full("p-1") })))
        .respond_with(fake.answer(Op::CreateComment, 201, fake.comment(9002, ME, 17, &full("p-1"))))
        .expect(1)
        .mount(&fake.server)
        .await;
    let outcome = fake.forge().upsert_plan_comment(17, KEY, "p-1", BODY, None).await.expect("upsert");
    assert!(matches!(outcome, CommentOutcome::Created { id: 9002, .. }), "{outcome:?}");
    // No PATCH reached the server: the catch-all would have failed the test.
    fake.next_run().await;
}

async fn finds_our_comment_beyond_the_first_hundred(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    fake.mount_user(ME).await;
    let mut comments = filler(&fake, 1, 230, 17);
    // A deleted account's comment: GitHub answers `"user": null`, Forgejo the `Ghost` (-1).
    comments.push(fake.comment(8999, GHOST, 17, &full("p-0")));
    comments.push(fake.comment(9001, ME, 17, &full("p-1")));
    comments.extend(filler(&fake, 300, 10, 17));
    fake.mount_comments(17, comments).await; // GitHub: 3 pages; Forgejo: 5 pages
    fake.req("PATCH", &fake.repo_path("issues/comments/9001"))
        .and(body_json(json!({ "body": full("p-2") })))
        .respond_with(fake.answer(Op::EditComment, 200, fake.comment(9001, ME, 17, &full("p-2"))))
        .expect(1)
        .mount(&fake.server)
        .await;
    let outcome = fake.forge().upsert_plan_comment(17, KEY, "p-2", BODY, None).await.expect("upsert");
    assert!(matches!(outcome, CommentOutcome::Updated { id: 9001, .. }), "{outcome:?}");
    fake.next_run().await;
}

async fn fork_token_403_is_forbidden_not_an_error(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    fake.mount_user(ME).await;
    fake.mount_comments(18, vec![]).await;
    let denied = match kind {
        ForgeKind::GitHub => "Resource not accessible by integration",
        ForgeKind::Forgejo => "user should have a permission to write to the target branch",
    };
    fake.req("POST", &fake.repo_path("issues/18/comments"))
        .respond_with(fake.error(Op::CreateComment, 403, denied))
        .expect(1) // 403 is not retried
        .mount(&fake.server)
        .await;
    let outcome = fake.forge().upsert_plan_comment(18, KEY, "p-1", BODY, None).await.expect("not an error");
    let CommentOutcome::Forbidden { message } = outcome else {
        panic!("expected Forbidden, got {outcome:?}")
    };
    assert!(message.starts_with("failed to comment on `home/lab#18`: HTTP 403: "), "{message}");
    assert!(message.contains("fork pull requests get a read-only token"), "{message}");
    assert!(fake.logs.text().contains("the plan is in the job summary instead"), "{}", fake.logs.text());
    fake.next_run().await;
}

async fn deleted_comment_404_creates_a_new_one(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    fake.mount_user(ME).await;
    fake.mount_comments(17, vec![fake.comment(9001, ME, 17, &full("p-1"))]).await;
    fake.req("PATCH", &fake.repo_path("issues/comments/9001"))
        .respond_with(fake.error(Op::EditComment, 404, "Not Found"))
        .expect(1)
        .mount(&fake.server)
        .await;
    fake.req("POST", &fake.repo_path("issues/17/comments"))
        .and(body_json(json!({ "body": full("p-2") })))
        .respond_with(fake.answer(Op::CreateComment, 201, fake.comment(9005, ME, 17, &full("p-2"))))
        .expect(1)
        .mount(&fake.server)
        .await;
    let outcome = fake.forge().upsert_plan_comment(17, KEY, "p-2", BODY, None).await.expect("upsert");
    assert!(matches!(outcome, CommentOutcome::Created { id: 9005, .. }), "{outcome:?}");
    fake.next_run().await;
}

async fn server_errors_are_retried_boundedly(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    let forge = fake.forge();
    // One 502, then success: two attempts of the whole operation, one comment.
    fake.mount_user(ME).await;
    fake.req("GET", &fake.repo_path("issues/17/comments"))
        // A reverse proxy's answer, not the forge's: not a schema-shaped body.
        .respond_with(ResponseTemplate::new(502).set_body_string("<html>502 Bad Gateway</html>"))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&fake.server)
        .await;
    fake.mount_comments(17, vec![]).await;
    fake.req("POST", &fake.repo_path("issues/17/comments"))
        .respond_with(fake.answer(Op::CreateComment, 201, fake.comment(9001, ME, 17, &full("p-1"))))
        .expect(1)
        .mount(&fake.server)
        .await;
    let outcome = forge.upsert_plan_comment(17, KEY, "p-1", BODY, None).await.expect("retried");
    assert!(matches!(outcome, CommentOutcome::Created { .. }), "{outcome:?}");
    assert!(fake.logs.text().contains("attempt 1/3 failed, retrying"), "{}", fake.logs.text());
    fake.next_run().await;

    // Always 503: exactly three attempts, then the error with the body.
    fake.mount_user(ME).await;
    fake.req("POST", &fake.repo_path("statuses/abc123"))
        // A reverse proxy's answer, not the forge's.
        .respond_with(ResponseTemplate::new(503).set_body_string("upstream overloaded"))
        .expect(3)
        .mount(&fake.server)
        .await;
    let err = forge
        .set_status("abc123", "nixprox/plan", StatusState::Success, "no changes", None)
        .await
        .expect_err("gives up");
    assert_eq!(
        err.to_string(),
        "failed to set status `nixprox/plan` on commit `abc123`: HTTP 503: upstream overloaded"
    );
    fake.next_run().await;
}

async fn validation_errors_are_retried_then_reported_with_body(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    fake.mount_user(ME).await;
    // Each attempt lists again (in case a failed write went through): three listings.
    fake.req("GET", &fake.repo_path("issues/17/comments"))
        .respond_with(fake.answer(Op::ListComments, 200, json!([])))
        .expect(3)
        .mount(&fake.server)
        .await;
    let invalid = json!({
        "message": "Validation Failed",
        "errors": [{ "resource": "IssueComment", "code": "custom", "field": "body", "message": "body is too long" }],
        "documentation_url": "https://docs.github.com/rest/issues/comments#create-an-issue-comment",
        "status": "422"
    });
    fake.req("POST", &fake.repo_path("issues/17/comments"))
        .respond_with(fake.answer(Op::CreateComment, 422, invalid))
        .expect(3)
        .mount(&fake.server)
        .await;
    let err =
        fake.forge().upsert_plan_comment(17, KEY, "p-1", BODY, None).await.expect_err("422 three times");
    assert_eq!(err.status(), Some(422));
    let text = err.to_string();
    assert!(text.starts_with("failed to comment on `home/lab#17`: HTTP 422: Validation Failed"), "{text}");
    if kind == ForgeKind::GitHub {
        assert!(text.contains("body is too long"), "the error list is shown: {text}");
    }
    fake.next_run().await;
}

async fn oversized_body_is_refused_before_sending(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    fake.mount_user(ME).await;
    fake.mount_comments(17, vec![]).await;
    let fits = "x".repeat(plan_body_budget(KEY, "p-1", None));
    fake.req("POST", &fake.repo_path("issues/17/comments"))
        .and(body_json(json!({ "body": format!("{}\n{fits}", plan_marker(KEY, "p-1")) })))
        .respond_with(fake.answer(Op::CreateComment, 201, fake.comment(1, ME, 17, "x")))
        .expect(1)
        .mount(&fake.server)
        .await;
    fake.forge().upsert_plan_comment(17, KEY, "p-1", &fits, None).await.expect("exactly the budget fits");
    fake.next_run().await;

    fake.mount_user(ME).await;
    fake.mount_comments(17, vec![]).await;
    let too_big = format!("{fits}y");
    let err =
        fake.forge().upsert_plan_comment(17, KEY, "p-1", &too_big, None).await.expect_err("one too many");
    assert!(matches!(err, ForgeError::TooLarge { chars: 65_537, max: 65_536, .. }), "{err:?}");
    fake.next_run().await; // the catch-all proves no POST was sent
}

async fn commit_status_on_the_head_sha(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    let sha = "1f0c4a7e9b2d3c5a6e8f0b1d2c3e4f5a6b7c8d9e";
    let long = "2 to create, 1 to update, 1 to destroy; ".repeat(5);
    let cut: String = long.chars().take(139).chain(['…']).collect();
    fake.req("POST", &fake.repo_path(&format!("statuses/{sha}")))
        .and(body_json(json!({
            "state": "failure",
            "context": "nixprox/plan",
            "description": cut,
            "target_url": "https://github.com/home/lab/actions/runs/42"
        })))
        .respond_with(fake.answer(Op::CreateStatus, 201, fake.status("failure", "nixprox/plan", ME)))
        .expect(1)
        .mount(&fake.server)
        .await;
    fake.forge()
        .set_status(
            sha,
            "nixprox/plan",
            StatusState::Failure,
            &long,
            Some("https://github.com/home/lab/actions/runs/42"),
        )
        .await
        .expect("status");
    fake.next_run().await;
}

async fn drift_issue_opened_updated_closed(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    let forge = fake.forge();
    let marker = "<!-- nixprox:drift key=main -->";
    let title = "nixprox: drift detected";
    let unrelated = fake.issue(3, MALLORY, "Printer on fire", "help", true);
    let fake_drift = fake.issue(4, MALLORY, title, &format!("{marker}\nspoof"), true);

    // Opened: none of ours exists.
    fake.mount_user(ME).await;
    fake.mount_issues(vec![unrelated.clone(), fake_drift.clone()]).await;
    let body1 = format!("{marker}\n1 VM drifted");
    fake.req("POST", &fake.repo_path("issues"))
        .and(body_json(json!({ "title": title, "body": body1 })))
        .respond_with(fake.answer(Op::CreateIssue, 201, fake.issue(12, ME, title, &body1, true)))
        .expect(1)
        .mount(&fake.server)
        .await;
    let outcome = forge.upsert_drift_issue("main", title, "1 VM drifted").await.expect("open");
    assert!(matches!(outcome, IssueOutcome::Created { number: 12, .. }), "{outcome:?}");
    fake.next_run().await;

    // Updated: ours is found and edited, never a second one.
    fake.mount_user(ME).await;
    fake.mount_issues(vec![unrelated.clone(), fake_drift.clone(), fake.issue(12, ME, title, &body1, true)])
        .await;
    let body2 = format!("{marker}\n2 VMs drifted");
    fake.req("PATCH", &fake.repo_path("issues/12"))
        .and(body_json(json!({ "title": title, "body": body2, "state": "open" })))
        .respond_with(fake.answer(
            Op::EditIssue,
            fake.edit_issue_status(),
            fake.issue(12, ME, title, &body2, true),
        ))
        .expect(1)
        .mount(&fake.server)
        .await;
    let outcome = forge.upsert_drift_issue("main", title, "2 VMs drifted").await.expect("update");
    assert!(matches!(outcome, IssueOutcome::Updated { number: 12, .. }), "{outcome:?}");
    fake.next_run().await;

    // Closed: no drift any more.
    fake.mount_user(ME).await;
    fake.mount_issues(vec![unrelated.clone(), fake_drift.clone(), fake.issue(12, ME, title, &body2, true)])
        .await;
    fake.req("PATCH", &fake.repo_path("issues/12"))
        .and(body_json(json!({ "state": "closed" })))
        .respond_with(fake.answer(
            Op::EditIssue,
            fake.edit_issue_status(),
            fake.issue(12, ME, title, &body2, false),
        ))
        .expect(1)
        .mount(&fake.server)
        .await;
    assert_eq!(forge.close_drift_issue("main").await.expect("close"), Some(12));
    fake.next_run().await;

    // Drift again: the closed issue is reopened, still one issue.
    fake.mount_user(ME).await;
    fake.mount_issues(vec![unrelated.clone(), fake.issue(12, ME, title, &body2, false)]).await;
    fake.req("PATCH", &fake.repo_path("issues/12"))
        .and(body_json(json!({ "title": title, "body": body1, "state": "open" })))
        .respond_with(fake.answer(
            Op::EditIssue,
            fake.edit_issue_status(),
            fake.issue(12, ME, title, &body1, true),
        ))
        .expect(1)
        .mount(&fake.server)
        .await;
    let outcome = forge.upsert_drift_issue("main", title, "1 VM drifted").await.expect("reopen");
    assert!(matches!(outcome, IssueOutcome::Reopened { number: 12, .. }), "{outcome:?}");
    fake.next_run().await;

    // Nothing to close: no request but the listing.
    fake.mount_user(ME).await;
    fake.mount_issues(vec![unrelated]).await;
    assert_eq!(forge.close_drift_issue("main").await.expect("nothing"), None);
    fake.next_run().await;
}

async fn reviewed_plan_found_after_merge(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    let merge = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
    let pull = fake.pull(17, merge, "1f0c4a7e9b2d3c5a6e8f0b1d2c3e4f5a6b7c8d9e");
    fake.mount_user(ME).await;
    fake.mount_commit_pull(merge, Some(pull)).await;
    fake.mount_comments(
        17,
        vec![
            fake.comment(9001, ME, 17, &full("p-reviewed")),
            fake.comment(9002, MALLORY, 17, &full("p-forged")),
        ],
    )
    .await;
    let found = fake.forge().find_reviewed_plan_id(merge, KEY).await.expect("lookup").expect("found");
    assert_eq!((found.pr, found.plan_id.as_str()), (17, "p-reviewed"));
    fake.next_run().await;

    // A direct push (no pull request).
    let direct = "6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b";
    fake.mount_commit_pull(direct, None).await;
    assert_eq!(fake.forge().find_reviewed_plan_id(direct, KEY).await.expect("lookup"), None);
    fake.next_run().await;
}

async fn echoed_token_is_redacted_from_errors(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    // A broken proxy that echoes the request's Authorization header back in its error page.
    fake.req("POST", &fake.repo_path("statuses/abc"))
        .respond_with(
            ResponseTemplate::new(400).set_body_string(format!("bad request; you sent: {}", fake.auth())),
        )
        .expect(1)
        .mount(&fake.server)
        .await;
    let err = fake
        .forge()
        .set_status("abc", "nixprox/apply", StatusState::Pending, "applying", None)
        .await
        .expect_err("400");
    tracing::error!("{err}"); // what the caller would log
    for text in [err.to_string(), format!("{err:?}"), format!("{:?}", fake.forge())] {
        assert!(!text.contains(CANARY), "token leaked: {text}");
    }
    assert!(err.to_string().contains("you sent: "), "{err}");
    fake.next_run().await;
}

async fn actions_token_without_user_endpoint(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    // GitHub refuses `GET /user` to the Actions token (an installation token), whose comments
    // are the Actions app's; a Forgejo that refused it would mean its Actions user.
    let bot = match kind {
        ForgeKind::GitHub => GITHUB_ACTIONS,
        ForgeKind::Forgejo => FORGEJO_ACTIONS,
    };
    fake.mount_user_refused().await;
    fake.mount_comments(17, vec![fake.comment(9001, bot, 17, &full("p-1"))]).await;
    fake.req("PATCH", &fake.repo_path("issues/comments/9001"))
        .and(body_json(json!({ "body": full("p-2") })))
        .respond_with(fake.answer(Op::EditComment, 200, fake.comment(9001, bot, 17, &full("p-2"))))
        .expect(1)
        .mount(&fake.server)
        .await;
    let outcome = fake.forge().upsert_plan_comment(17, KEY, "p-2", BODY, None).await.expect("upsert");
    assert!(matches!(outcome, CommentOutcome::Updated { id: 9001, .. }), "{outcome:?}");
    fake.next_run().await;
}

#[tokio::test]
async fn github_rate_limit_403_is_retried_not_forbidden() {
    let fake = Fake::start(ForgeKind::GitHub).await;
    fake.mount_user(ME).await;
    // Listed once per attempt: the retry looks again before writing.
    fake.req("GET", &fake.repo_path("issues/17/comments"))
        .respond_with(fake.answer(Op::ListComments, 200, json!([])))
        .expect(2)
        .mount(&fake.server)
        .await;
    fake.req("POST", &fake.repo_path("issues/17/comments"))
        .respond_with(
            fake.error(Op::CreateComment, 403, "API rate limit exceeded for installation ID 4242.")
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header("x-ratelimit-reset", "1790000000"),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&fake.server)
        .await;
    fake.req("POST", &fake.repo_path("issues/17/comments"))
        .respond_with(fake.answer(Op::CreateComment, 201, fake.comment(9001, ME, 17, &full("p-1"))))
        .expect(1)
        .mount(&fake.server)
        .await;
    let outcome = fake.forge().upsert_plan_comment(17, KEY, "p-1", BODY, None).await.expect("retried");
    assert!(matches!(outcome, CommentOutcome::Created { id: 9001, .. }), "{outcome:?}");
    fake.next_run().await;
}

async fn apply_report_is_a_new_comment(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    let report = "## nixprox apply\n\n2 done, 0 failed\n";
    fake.req("POST", &fake.repo_path("issues/17/comments"))
        .and(body_json(json!({ "body": report })))
        .respond_with(fake.answer(Op::CreateComment, 201, fake.comment(9100, ME, 17, report)))
        .expect(1)
        .mount(&fake.server)
        .await;
    let outcome = fake.forge().post_comment(17, report).await.expect("posted");
    assert!(matches!(outcome, CommentOutcome::Created { id: 9100, .. }), "{outcome:?}");
    fake.next_run().await;

    fake.req("POST", &fake.repo_path("issues/17/comments"))
        .respond_with(fake.error(Op::CreateComment, 403, "Resource not accessible by integration"))
        .expect(1) // never retried: a retried create could post twice
        .mount(&fake.server)
        .await;
    let outcome = fake.forge().post_comment(17, report).await.expect("not an error");
    assert!(matches!(outcome, CommentOutcome::Forbidden { .. }), "{outcome:?}");
    fake.next_run().await;
}

#[tokio::test]
async fn forgejo_endpoint_that_ignores_paging_is_read_once() {
    // Older Forgejo/Gitea versions return every comment regardless of `page`/`limit` and send
    // no `X-Total-Count`: the second page repeats the first, and listing stops there.
    let fake = Fake::start(ForgeKind::Forgejo).await;
    fake.mount_user(ME).await;
    let mut all = filler(&fake, 1, 59, 5);
    all.push(fake.comment(9001, ME, 5, &full("p-1")));
    fake.req("GET", &fake.repo_path("issues/5/comments"))
        .respond_with(fake.answer(Op::ListComments, 200, Value::Array(all)))
        .expect(2)
        .mount(&fake.server)
        .await;
    fake.req("PATCH", &fake.repo_path("issues/comments/9001"))
        .respond_with(fake.answer(Op::EditComment, 200, fake.comment(9001, ME, 5, &full("p-2"))))
        .expect(1)
        .mount(&fake.server)
        .await;
    let outcome = fake.forge().upsert_plan_comment(5, KEY, "p-2", BODY, None).await.expect("upsert");
    assert!(matches!(outcome, CommentOutcome::Updated { id: 9001, .. }), "{outcome:?}");
    fake.next_run().await;
}
