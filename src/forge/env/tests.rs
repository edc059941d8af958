use super::*;
use std::collections::HashMap;

fn detect(vars: &[(&str, &str)], overrides: &ForgeOverrides) -> Result<Option<ForgeContext>, ForgeError> {
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    ForgeContext::detect(overrides, &|k| map.get(k).cloned())
}

#[test]
fn nothing_outside_ci() {
    assert_eq!(detect(&[], &ForgeOverrides::default()).expect("no error"), None);
}

#[test]
fn overrides_alone_need_a_forge() {
    let o = ForgeOverrides { repo: Some("a/b".into()), ..Default::default() };
    let err = detect(&[], &o).expect_err("forge unknown");
    assert!(err.to_string().contains("--forge github|forgejo"), "{err}");
}

#[test]
fn overrides_outside_ci() {
    let o = ForgeOverrides {
        forge: Some(ForgeKind::Forgejo),
        repo: Some("home/lab".into()),
        pr: Some(7),
        api_url: Some("http://127.0.0.1:3000/api/v1".into()),
        token_env: Some("MY_TOKEN".into()),
        bot_login: Some("nixprox[bot]".into()),
        sha: Some("abc".into()),
    };
    let ctx = detect(&[], &o).expect("ok").expect("some");
    assert_eq!(ctx.bot_login.as_deref(), Some("nixprox[bot]"));
    assert_eq!(ctx.kind, ForgeKind::Forgejo);
    assert_eq!(ctx.repo.to_string(), "home/lab");
    assert_eq!(ctx.pr_number(), Some(7));
    assert_eq!(ctx.head_sha(), Some("abc"));
    assert_eq!(ctx.token_env, "MY_TOKEN");
    assert_eq!(ctx.api_url.as_str(), "http://127.0.0.1:3000/api/v1");
}

#[test]
fn github_defaults() {
    let ctx = detect(
        &[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REPOSITORY", "home/lab"),
            ("GITHUB_EVENT_NAME", "schedule"),
            ("GITHUB_SHA", "deadbeef"),
            ("GITHUB_SERVER_URL", "https://github.com"),
            ("GITHUB_RUN_ID", "42"),
        ],
        &ForgeOverrides::default(),
    )
    .expect("ok")
    .expect("some");
    assert_eq!(ctx.kind, ForgeKind::GitHub);
    assert_eq!(ctx.api_url.as_str(), "https://api.github.com/");
    assert_eq!(ctx.event, Event::Schedule { sha: Some("deadbeef".into()) });
    assert_eq!(ctx.run_url.as_deref(), Some("https://github.com/home/lab/actions/runs/42"));
    assert_eq!(ctx.token_env, "GITHUB_TOKEN");
}

#[test]
fn forgejo_token_wins_unless_a_variable_is_named() {
    // Forgejo runners set both names; a step's `env:` may have overridden either.
    let vars = [
        ("FORGEJO_ACTIONS", "true"),
        ("FORGEJO_API_URL", "https://forge.example/api/v1"),
        ("FORGEJO_REPOSITORY", "home/lab"),
        ("FORGEJO_TOKEN", "automatic"),
        ("GITHUB_TOKEN", "set-by-the-step"),
    ];
    assert_eq!(detect(&vars, &Default::default()).expect("ok").expect("some").token_env, "FORGEJO_TOKEN");
    let named = ForgeOverrides { token_env: Some("GITHUB_TOKEN".into()), ..Default::default() };
    assert_eq!(detect(&vars, &named).expect("ok").expect("some").token_env, "GITHUB_TOKEN");
}

#[test]
fn missing_payload_names_the_variable() {
    let err = detect(
        &[("GITHUB_ACTIONS", "true"), ("GITHUB_REPOSITORY", "a/b"), ("GITHUB_EVENT_NAME", "pull_request")],
        &ForgeOverrides::default(),
    )
    .expect_err("no payload");
    assert!(err.to_string().contains("`GITHUB_EVENT_PATH` is not set"), "{err}");
}

#[test]
fn malformed_values_name_their_source() {
    let err = detect(&[("GITHUB_ACTIONS", "true"), ("GITHUB_REPOSITORY", "nope")], &Default::default())
        .expect_err("bad repo");
    assert!(err.to_string().contains("`GITHUB_REPOSITORY`"), "{err}");
    let err = detect(
        &[("GITHUB_ACTIONS", "true"), ("GITHUB_REPOSITORY", "a/b"), ("GITHUB_API_URL", "not a url")],
        &Default::default(),
    )
    .expect_err("bad url");
    assert!(err.to_string().contains("`GITHUB_API_URL`"), "{err}");
    assert!(ForgeKind::parse("gitlab").is_err());
}

#[test]
fn token_comes_from_the_named_variable() {
    let ctx = detect(&[("GITHUB_ACTIONS", "true"), ("GITHUB_REPOSITORY", "a/b")], &Default::default())
        .expect("ok")
        .expect("some");
    let err = ctx.token(&|_| None).expect_err("unset");
    assert!(err.to_string().contains("`GITHUB_TOKEN` is not set"), "{err}");
    let token = ctx.token(&|k| (k == "GITHUB_TOKEN").then(|| "t0k".to_string())).expect("set");
    assert_eq!(secrecy::ExposeSecret::expose_secret(&token), "t0k");
}
