//! The stand-ins answer as the published API descriptions say: every payload the [`Fake`]
//! builds is valid against the response schema of its operation (and every answer a test
//! mounts is checked again when it is mounted, see [`Fake::answer`]); payloads that break
//! the schemas are caught. If a stand-in drifts from the real API, these tests fail.

use nixprox::forge::ForgeKind;
use serde_json::{Value, json};

use super::spec::{Op, Spec, to_json_schema};
use super::{APP_BOT, FORGEJO_ACTIONS, Fake, GHOST, GITHUB_ACTIONS, MALLORY, ME};

/// Everything the stand-ins answer with, per operation: system users, null fields, app bots,
/// extra fields and a long page.
fn every_answer(fake: &Fake) -> Vec<(Op, u16, Value)> {
    let authors = [ME, MALLORY, GHOST, FORGEJO_ACTIONS, GITHUB_ACTIONS, APP_BOT];
    let comments: Vec<Value> = (0..230)
        .map(|i| fake.comment(1000 + i, authors[i as usize % authors.len()], 17, "looks good"))
        .collect();
    let issues: Vec<Value> = authors
        .iter()
        .enumerate()
        .map(|(i, a)| fake.issue(i as u64 + 1, *a, "drift", "<!-- nixprox:drift key=k -->", i % 2 == 0))
        .collect();
    let mut answers = vec![
        (Op::User, 200, fake.whoami(ME)),
        (Op::ListComments, 200, Value::Array(comments)),
        (Op::ListComments, 200, json!([])),
        (Op::CreateComment, 201, fake.comment(9001, ME, 17, "plan")),
        (Op::EditComment, 200, fake.comment(9001, APP_BOT, 17, "plan")),
        (Op::ListIssues, 200, Value::Array(issues)),
        (Op::CreateIssue, 201, fake.issue(12, ME, "drift", "body", true)),
        (Op::EditIssue, fake.edit_issue_status(), fake.issue(12, ME, "drift", "body", false)),
        (Op::CreateStatus, 201, fake.status("pending", "nixprox/plan", APP_BOT)),
    ];
    let pull = fake.pull(17, &"5a".repeat(20), &"1f".repeat(20));
    match fake.kind {
        ForgeKind::GitHub => answers.push((Op::CommitPulls, 200, json!([pull]))),
        ForgeKind::Forgejo => {
            answers.push((Op::CommitPulls, 200, pull));
            answers.push((Op::User, 200, fake.whoami(FORGEJO_ACTIONS)));
        }
    }
    answers
}

async fn every_stand_in_answer_matches_its_published_schema(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    let spec = Spec::of(kind);
    let answers = every_answer(&fake);
    for (op, status, body) in &answers {
        spec.check(*op, *status, body).unwrap_or_else(|e| panic!("{e}"));
    }
    // Every operation nixprox calls is covered.
    for op in Op::ALL {
        assert!(answers.iter().any(|(o, ..)| *o == op), "{op:?} has no stand-in answer");
    }
    // The error bodies too.
    for (op, status) in [(Op::CreateComment, 403), (Op::EditComment, 404), (Op::User, 403)] {
        let body = fake.error_body(status, "Resource not accessible by integration");
        spec.check(op, status, &body).unwrap_or_else(|e| panic!("{e}"));
    }
}

async fn drifted_answers_are_caught(kind: ForgeKind) {
    let fake = Fake::start(kind).await;
    let spec = Spec::of(kind);
    let comment = fake.comment(9001, ME, 17, "plan");

    let mut id_as_text = comment.clone();
    id_as_text["id"] = json!("9001");
    let mut null_body = comment.clone();
    null_body["body"] = Value::Null;
    let mut user_as_login = comment.clone();
    user_as_login["user"] = json!("nixprox-bot");
    for (what, body) in
        [("id as text", id_as_text), ("null body", null_body), ("user as a string", user_as_login)]
    {
        let err = spec.check(Op::CreateComment, 201, &body).expect_err(what);
        assert!(err.contains("/"), "{what}: {err}");
    }
    if kind == ForgeKind::GitHub {
        // GitHub's schemas list required fields; the stand-ins must send them.
        let mut missing = comment.clone();
        missing.as_object_mut().expect("object").remove("html_url");
        let err = spec.check(Op::CreateComment, 201, &missing).expect_err("required");
        assert!(err.contains("html_url"), "{err}");
        // `GET /user` is a `oneOf` of two closed shapes: an extra field fits neither.
        let mut extra = fake.whoami(ME);
        extra["surprise"] = json!(1);
        assert!(spec.check(Op::User, 200, &extra).is_err());
    } else {
        // A null where Forgejo's Go field is no pointer (`Comment.body` is a `string`).
        let mut status = fake.status("pending", "nixprox/plan", ME);
        status["status"] = Value::Null;
        assert!(spec.check(Op::CreateStatus, 201, &status).is_err());
    }
}

#[test]
fn nullable_becomes_an_explicit_null() {
    assert_eq!(
        to_json_schema(&json!({ "type": "string", "nullable": true, "enum": ["a"] })),
        json!({ "type": ["string", "null"], "enum": ["a", null] })
    );
    assert_eq!(
        to_json_schema(&json!({ "$ref": "#/definitions/User", "x-nullable": true })),
        json!({ "anyOf": [{ "$ref": "#/definitions/User" }, { "type": "null" }] })
    );
    assert_eq!(
        to_json_schema(&json!({ "properties": { "nullable": { "type": "boolean" } } })),
        json!({ "properties": { "nullable": { "type": "boolean" } } }),
        "a property named `nullable` is not the keyword"
    );
}

#[test]
fn the_extracts_name_their_source() {
    for kind in [ForgeKind::GitHub, ForgeKind::Forgejo] {
        let source = Spec::of(kind).source();
        for field in ["repository", "path", "extracted", "generated_by"] {
            assert!(
                source[field].as_str().is_some_and(|s| !s.is_empty()),
                "{kind:?} source lacks {field}: {source}"
            );
        }
    }
    assert_eq!(Spec::of(ForgeKind::Forgejo).source()["commit"].as_str().map(str::len), Some(40));
}

super::both_forges!(every_stand_in_answer_matches_its_published_schema, drifted_answers_are_caught);
