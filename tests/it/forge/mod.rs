//! Integration tests of the forge layer against local wiremock servers standing in for the
//! GitHub and Forgejo REST APIs. Every test runs for both forges; the [`Fake`] knows each one's
//! paths, auth scheme and paging, asserts the exact requests, and answers with bodies built
//! from the published API descriptions and validated against them ([`spec`]).

mod action;
mod api;
mod cli;
mod env;
mod examples;
mod identity;
mod probe_key;
mod reviewed;
mod schema;
pub mod spec;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nixprox::forge::{Event, Forge, ForgeContext, ForgeKind, Repo, RetryPolicy};
use secrecy::SecretString;
use serde_json::{Value, json};
use spec::{Op, Spec};
use wiremock::matchers::{any, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The token every test uses: it must never show up in a body, a log line or an error.
pub const CANARY: &str = "ghp_CANARY0secret0value0do0not0leak";

/// Our bot and someone else.
pub const ME: (&str, i64) = ("nixprox-bot", 41);
pub const MALLORY: (&str, i64) = ("mallory", 666);
/// Forgejo's system users (`models/user/user_system.go`): the automatic Actions token's user,
/// and what a deleted account shows as.
pub const FORGEJO_ACTIONS: (&str, i64) = ("forgejo-actions", -2);
pub const GHOST: (&str, i64) = ("Ghost", -1);
/// GitHub's Actions bot (`GITHUB_TOKEN`) and a GitHub App's bot account.
pub const GITHUB_ACTIONS: (&str, i64) = ("github-actions[bot]", 41898282);
pub const APP_BOT: (&str, i64) = ("nixprox-lab[bot]", 170000001);

/// Captured tracing output of one test.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A wiremock server speaking one forge's dialect, plus the captured logs.
pub struct Fake {
    pub kind: ForgeKind,
    pub server: MockServer,
    pub logs: Logs,
    _log_guard: tracing::subscriber::DefaultGuard,
}

impl Fake {
    pub async fn start(kind: ForgeKind) -> Fake {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        let server = MockServer::start().await;
        let fake = Fake { kind, server, logs, _log_guard: guard };
        fake.mount_catch_all().await;
        fake
    }

    /// Any request no test expects fails the test (instead of silently answering 404).
    async fn mount_catch_all(&self) {
        Mock::given(any())
            .respond_with(ResponseTemplate::new(418))
            .with_priority(u8::MAX)
            .expect(0)
            .named("unexpected request")
            .mount(&self.server)
            .await;
    }

    /// Checks the expectations of this run and forgets its mocks and requests (the next run).
    pub async fn next_run(&self) {
        self.assert_no_leak().await;
        self.server.verify().await;
        self.server.reset().await;
        self.mount_catch_all().await;
    }

    pub fn forge(&self) -> Forge {
        let ctx = ForgeContext {
            kind: self.kind,
            api_url: url::Url::parse(&format!("{}{}", self.server.uri(), self.prefix())).expect("url"),
            repo: Repo { owner: "home".into(), name: "lab".into() },
            run_url: None,
            event: Event::Other { name: None, sha: None },
            token_env: "GITHUB_TOKEN".into(),
            bot_login: None,
        };
        Forge::from_context(&ctx, SecretString::from(CANARY))
            .expect("client")
            .with_retry(RetryPolicy { attempts: 3, base_delay: Duration::from_millis(5) })
    }

    pub fn prefix(&self) -> &'static str {
        match self.kind {
            ForgeKind::GitHub => "",
            ForgeKind::Forgejo => "/api/v1",
        }
    }

    pub fn repo_path(&self, rest: &str) -> String {
        format!("{}/repos/home/lab/{rest}", self.prefix())
    }

    pub fn auth(&self) -> String {
        match self.kind {
            ForgeKind::GitHub => format!("Bearer {CANARY}"),
            ForgeKind::Forgejo => format!("token {CANARY}"),
        }
    }

    /// A request matcher for `verb path` carrying our exact `Authorization` header.
    pub fn req(&self, verb: &str, p: &str) -> wiremock::MockBuilder {
        Mock::given(method(verb))
            .and(path(p.to_string()))
            .and(wiremock::matchers::header("authorization", self.auth().as_str()))
    }

    pub fn spec(&self) -> &'static Spec {
        Spec::of(self.kind)
    }

    /// An answer of `op`: the body is checked against the operation's published schema first.
    pub fn answer(&self, op: Op, status: u16, body: Value) -> ResponseTemplate {
        self.spec().assert_valid(op, status, &body);
        ResponseTemplate::new(status).set_body_json(body)
    }

    /// `PATCH` of an issue answers 200 on GitHub and 201 on Forgejo (its swagger, and
    /// `routers/api/v1/repo/issue.go`, say `StatusCreated`).
    pub fn edit_issue_status(&self) -> u16 {
        match self.kind {
            ForgeKind::GitHub => 200,
            ForgeKind::Forgejo => 201,
        }
    }

    /// An error answer in the forge's own shape (GitHub `basic-error`/`validation-error`,
    /// Forgejo `APIError`).
    pub fn error(&self, op: Op, status: u16, message: &str) -> ResponseTemplate {
        self.answer(op, status, self.error_body(status, message))
    }

    pub fn error_body(&self, status: u16, message: &str) -> Value {
        match self.kind {
            ForgeKind::GitHub => json!({
                "message": message,
                "documentation_url": "https://docs.github.com/rest",
                "status": status.to_string()
            }),
            ForgeKind::Forgejo => json!({ "message": message, "url": "https://forge.example/api/swagger" }),
        }
    }

    /// An account as it appears inside other answers (GitHub `simple-user`, Forgejo `User`).
    pub fn user(&self, (login, id): (&str, i64)) -> Value {
        match self.kind {
            ForgeKind::GitHub => {
                let kind = if login.ends_with("[bot]") { "Bot" } else { "User" };
                self.spec().example(
                    "simple-user",
                    json!({
                        "login": login, "id": id, "node_id": format!("MDQ6VXNlcj{id}"), "type": kind,
                        "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
                        "url": format!("https://api.github.com/users/{login}"),
                        "html_url": format!("https://github.com/{login}"), "gravatar_id": "",
                        "user_view_type": "public"
                    }),
                )
            }
            // Forgejo's `User.MarshalJSON` adds `username`, which the swagger does not list: an
            // extra field nixprox must ignore.
            ForgeKind::Forgejo => self.spec().example(
                "User",
                json!({
                    "id": id, "login": login, "username": login,
                    "email": if id == GHOST.1 { String::new() } else { format!("{login}@noreply.forge.example") },
                    "avatar_url": format!("https://forge.example/avatars/{id}"),
                    "html_url": format!("https://forge.example/{login}"),
                    "active": id != GHOST.1, "visibility": "public"
                }),
            ),
        }
    }

    /// The answer of `GET /user` (GitHub: `public-user`, the `oneOf` branch without private
    /// fields).
    pub fn whoami(&self, who: (&str, i64)) -> Value {
        match self.kind {
            ForgeKind::GitHub => {
                let mut user = self.user(who);
                for (key, value) in [
                    ("name", json!(null)),
                    ("company", json!(null)),
                    ("blog", json!("")),
                    ("location", json!(null)),
                    ("email", json!(null)),
                    ("hireable", json!(null)),
                    ("bio", json!(null)),
                    ("public_repos", json!(2)),
                    ("public_gists", json!(0)),
                    ("followers", json!(0)),
                    ("following", json!(0)),
                    ("created_at", json!("2020-01-01T00:00:00Z")),
                    ("updated_at", json!("2026-11-01T00:00:00Z")),
                ] {
                    user[key] = value;
                }
                user
            }
            ForgeKind::Forgejo => self.user(who),
        }
    }

    /// The GitHub App a `<slug>[bot]` account acts for (`performed_via_github_app`).
    fn app(&self, login: &str) -> Value {
        match login.strip_suffix("[bot]") {
            Some(slug) if self.kind == ForgeKind::GitHub => self.spec().example(
                "integration",
                json!({
                    "id": 15368, "slug": slug, "node_id": "MDM6QXBwMTUzNjg=", "name": slug,
                    "owner": self.user(("home", 1)), "description": null,
                    "external_url": format!("https://github.com/apps/{slug}"),
                    "html_url": format!("https://github.com/apps/{slug}"),
                    "permissions": { "issues": "write", "pull_requests": "write", "statuses": "write" },
                    "events": []
                }),
            ),
            _ => Value::Null,
        }
    }

    /// A comment by `author`; `None` is an author the API answers as null (GitHub) or as the
    /// `Ghost` user (Forgejo).
    pub fn comment(&self, id: i64, author: (&str, i64), pr: u64, body: &str) -> Value {
        let user =
            if author == GHOST && self.kind == ForgeKind::GitHub { Value::Null } else { self.user(author) };
        match self.kind {
            ForgeKind::GitHub => self.spec().example(
                "issue-comment",
                json!({
                    "url": format!("https://api.github.com/repos/home/lab/issues/comments/{id}"),
                    "html_url": format!("https://github.com/home/lab/pull/{pr}#issuecomment-{id}"),
                    "issue_url": format!("https://api.github.com/repos/home/lab/issues/{pr}"),
                    "id": id, "node_id": format!("IC_kwDO{id}"), "user": user,
                    "author_association": if author == ME { "MEMBER" } else { "NONE" }, "body": body,
                    "performed_via_github_app": self.app(author.0)
                }),
            ),
            ForgeKind::Forgejo => self.spec().example(
                "Comment",
                json!({
                    "id": id, "html_url": format!("https://forge.example/home/lab/pulls/{pr}#issuecomment-{id}"),
                    "pull_request_url": format!("https://forge.example/home/lab/pulls/{pr}"), "issue_url": "",
                    "user": user, "body": body, "assets": []
                }),
            ),
        }
    }

    pub fn issue(&self, number: u64, author: (&str, i64), title: &str, body: &str, open: bool) -> Value {
        let user = self.user(author);
        let state = if open { "open" } else { "closed" };
        match self.kind {
            ForgeKind::GitHub => self.spec().example(
                "issue",
                json!({
                    "url": format!("https://api.github.com/repos/home/lab/issues/{number}"),
                    "html_url": format!("https://github.com/home/lab/issues/{number}"),
                    "id": 7000 + number, "node_id": "I_kwDO", "number": number, "title": title, "user": user,
                    "state": state, "body": body, "author_association": "NONE",
                    "performed_via_github_app": self.app(author.0)
                }),
            ),
            ForgeKind::Forgejo => self.spec().example(
                "Issue",
                json!({
                    "id": 7000 + number, "url": format!("https://forge.example/api/v1/repos/home/lab/issues/{number}"),
                    "html_url": format!("https://forge.example/home/lab/issues/{number}"), "number": number,
                    "user": user, "title": title, "body": body, "labels": [], "state": state,
                    "repository": { "id": 11, "name": "lab", "owner": "home", "full_name": "home/lab" }
                }),
            ),
        }
    }

    /// A pull request (GitHub `pull-request-simple`, Forgejo `PullRequest`).
    pub fn pull(&self, number: u64, merge_commit_sha: &str, head_sha: &str) -> Value {
        match self.kind {
            ForgeKind::GitHub => self.spec().example(
                "pull-request-simple",
                json!({
                    "number": number, "state": "closed", "title": "Grow the media VM",
                    "merged_at": "2026-11-20T11:00:00Z", "merge_commit_sha": merge_commit_sha,
                    "user": self.user(MALLORY), "author_association": "CONTRIBUTOR",
                    "head": { "ref": "media-cores", "sha": head_sha, "label": "home:media-cores" },
                    "base": { "ref": "main", "sha": "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d", "label": "home:main" }
                }),
            ),
            ForgeKind::Forgejo => self.spec().example(
                "PullRequest",
                json!({
                    "number": number, "state": "closed", "title": "Grow the media VM", "merged": true,
                    "merged_at": "2026-11-20T11:00:00Z", "merge_commit_sha": merge_commit_sha,
                    "user": self.user(MALLORY), "merged_by": self.user(ME),
                    "head": { "ref": "media-cores", "sha": head_sha, "label": "media-cores", "repo_id": 11 },
                    "base": { "ref": "main", "sha": "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d", "label": "main", "repo_id": 11 }
                }),
            ),
        }
    }

    /// A commit status as the forge answers its creation; `creator` is the token's account.
    pub fn status(&self, state: &str, context: &str, creator: (&str, i64)) -> Value {
        match self.kind {
            ForgeKind::GitHub => self.spec().example(
                "status",
                json!({ "id": 1, "state": state, "context": context, "creator": self.user(creator),
                        "url": "https://api.github.com/repos/home/lab/statuses/1" }),
            ),
            ForgeKind::Forgejo => self.spec().example(
                "CommitStatus",
                json!({ "id": 1, "status": state, "context": context, "creator": self.user(creator) }),
            ),
        }
    }

    /// `GET /user` answering `who`.
    pub async fn mount_user(&self, who: (&str, i64)) {
        Mock::given(method("GET"))
            .and(path(format!("{}/user", self.prefix())))
            .and(wiremock::matchers::header("authorization", self.auth().as_str()))
            .respond_with(self.answer(Op::User, 200, self.whoami(who)))
            .named("GET /user")
            .mount(&self.server)
            .await;
    }

    /// `GET /user` refused, as GitHub refuses it to an installation token.
    pub async fn mount_user_refused(&self) {
        self.req("GET", &format!("{}/user", self.prefix()))
            .respond_with(self.error(Op::User, 403, "Resource not accessible by integration"))
            .named("GET /user (403)")
            .mount(&self.server)
            .await;
    }

    /// The pull request of a merge commit: GitHub lists the commit's pull requests, Forgejo
    /// answers the one (`404` when there is none).
    pub async fn mount_commit_pull(&self, sha: &str, pull: Option<Value>) {
        match self.kind {
            ForgeKind::GitHub => {
                let p = self.repo_path(&format!("commits/{sha}/pulls"));
                self.mount_list(Op::CommitPulls, &p, &[], pull.into_iter().collect()).await
            }
            ForgeKind::Forgejo => {
                let answer = match pull {
                    Some(pull) => self.answer(Op::CommitPulls, 200, pull),
                    None => self.error(Op::CommitPulls, 404, "pull request does not exist"),
                };
                self.req("GET", &self.repo_path(&format!("commits/{sha}/pull")))
                    .respond_with(answer)
                    .expect(1..)
                    .mount(&self.server)
                    .await
            }
        }
    }

    /// Serves `items` at `p` in this forge's paging: GitHub 100 per page with a `Link` header,
    /// Forgejo `page`/`limit=50` with `X-Total-Count`. Each page is expected exactly once.
    pub async fn mount_list(&self, op: Op, p: &str, extra_query: &[(&str, &str)], items: Vec<Value>) {
        let per_page = match self.kind {
            ForgeKind::GitHub => 100,
            ForgeKind::Forgejo => 50,
        };
        let pages: Vec<&[Value]> =
            if items.is_empty() { vec![&items[..]] } else { items.chunks(per_page).collect() };
        let last = pages.len();
        for (i, chunk) in pages.into_iter().enumerate() {
            let page = i + 1;
            let mut mock = self.req("GET", p);
            for (k, v) in extra_query {
                mock = mock.and(query_param(*k, *v));
            }
            let mut resp = self.answer(op, 200, Value::Array(chunk.to_vec()));
            match self.kind {
                ForgeKind::GitHub => {
                    mock = mock.and(query_param("per_page", "100"));
                    mock = if page == 1 {
                        mock.and(query_param_is_missing("page"))
                    } else {
                        mock.and(query_param("page", page.to_string()))
                    };
                    let link = |n: usize| {
                        let mut q: Vec<String> =
                            extra_query.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        q.push("per_page=100".into());
                        q.push(format!("page={n}"));
                        format!("{}{p}?{}", self.server.uri(), q.join("&"))
                    };
                    if page < last {
                        resp = resp.insert_header(
                            "link",
                            format!("<{}>; rel=\"next\", <{}>; rel=\"last\"", link(page + 1), link(last)),
                        );
                    }
                }
                ForgeKind::Forgejo => {
                    mock = mock.and(query_param("page", page.to_string())).and(query_param("limit", "50"));
                    resp = resp.insert_header("x-total-count", items.len().to_string());
                }
            }
            mock.respond_with(resp).expect(1).named(format!("GET {p} page {page}")).mount(&self.server).await;
        }
    }

    pub async fn mount_comments(&self, pr: u64, comments: Vec<Value>) {
        self.mount_list(Op::ListComments, &self.repo_path(&format!("issues/{pr}/comments")), &[], comments)
            .await;
    }

    pub async fn mount_issues(&self, issues: Vec<Value>) {
        let query: &[(&str, &str)] = match self.kind {
            ForgeKind::GitHub => &[("state", "all")],
            ForgeKind::Forgejo => &[("state", "all"), ("type", "issues")],
        };
        self.mount_list(Op::ListIssues, &self.repo_path("issues"), query, issues).await;
    }

    /// Every request carried our token in the right scheme, and the token appeared nowhere
    /// else: not in a URL, another header, a body, or the logs.
    pub async fn assert_no_leak(&self) {
        let requests = self.server.received_requests().await.expect("recording is on");
        for r in &requests {
            let what = format!("{} {}", r.method, r.url);
            assert!(!r.url.as_str().contains(CANARY), "token in URL of {what}");
            assert!(!String::from_utf8_lossy(&r.body).contains(CANARY), "token in body of {what}");
            for (name, value) in r.headers.iter() {
                let value = value.to_str().unwrap_or("");
                if name.as_str() == "authorization" {
                    assert_eq!(value, self.auth(), "auth scheme of {what}");
                } else {
                    assert!(!value.contains(CANARY), "token in header {name} of {what}");
                }
            }
        }
        let logs = self.logs.text();
        assert!(!logs.contains(CANARY), "token in the logs:\n{logs}");
    }
}

/// Runs an async test body once per forge.
macro_rules! both_forges {
    ($($name:ident),* $(,)?) => {
        mod github {
            $(#[tokio::test]
            async fn $name() {
                super::$name(nixprox::forge::ForgeKind::GitHub).await
            })*
        }
        mod forgejo {
            $(#[tokio::test]
            async fn $name() {
                super::$name(nixprox::forge::ForgeKind::Forgejo).await
            })*
        }
    };
}
pub(crate) use both_forges;
