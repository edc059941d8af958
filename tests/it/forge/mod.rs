//! Integration tests of the forge layer against local wiremock servers standing in for the
//! GitHub and Forgejo REST APIs. Every test runs for both forges; the [`Fake`] knows each one's
//! paths, auth scheme, paging and payload shapes, and asserts the exact requests.

mod action;
mod api;
mod cli;
mod env;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nixprox::forge::{Event, Forge, ForgeContext, ForgeKind, Repo, RetryPolicy};
use secrecy::SecretString;
use serde_json::{Value, json};
use wiremock::matchers::{any, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The token every test uses: it must never show up in a body, a log line or an error.
pub const CANARY: &str = "ghp_CANARY0secret0value0do0not0leak";

/// Our bot and someone else.
pub const ME: (&str, i64) = ("nixprox-bot", 41);
pub const MALLORY: (&str, i64) = ("mallory", 666);

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

    pub fn user(&self, (login, id): (&str, i64)) -> Value {
        match self.kind {
            ForgeKind::GitHub => json!({
                "login": login, "id": id, "node_id": format!("MDQ6VXNlcj{id}"),
                "avatar_url": format!("https://avatars.githubusercontent.com/u/{id}?v=4"),
                "gravatar_id": "", "url": format!("https://api.github.com/users/{login}"),
                "html_url": format!("https://github.com/{login}"), "type": "User", "site_admin": false
            }),
            ForgeKind::Forgejo => json!({
                "id": id, "login": login, "login_name": "", "full_name": "", "email": format!("{login}@noreply.forge.example"),
                "avatar_url": format!("https://forge.example/avatars/{id}"), "html_url": format!("https://forge.example/{login}"),
                "language": "", "is_admin": false, "restricted": false, "active": false, "prohibit_login": false,
                "visibility": "public", "username": login
            }),
        }
    }

    pub fn comment(&self, id: i64, author: (&str, i64), pr: u64, body: &str) -> Value {
        let user = self.user(author);
        match self.kind {
            ForgeKind::GitHub => json!({
                "url": format!("https://api.github.com/repos/home/lab/issues/comments/{id}"),
                "html_url": format!("https://github.com/home/lab/pull/{pr}#issuecomment-{id}"),
                "issue_url": format!("https://api.github.com/repos/home/lab/issues/{pr}"),
                "id": id, "node_id": format!("IC_kwDO{id}"), "user": user,
                "created_at": "2026-11-20T10:00:00Z", "updated_at": "2026-11-20T10:00:00Z",
                "author_association": "NONE", "body": body,
                "reactions": { "url": "", "total_count": 0, "+1": 0, "-1": 0 }
            }),
            ForgeKind::Forgejo => json!({
                "id": id, "html_url": format!("https://forge.example/home/lab/pulls/{pr}#issuecomment-{id}"),
                "pull_request_url": format!("https://forge.example/home/lab/pulls/{pr}"), "issue_url": "",
                "user": user, "original_author": "", "original_author_id": 0, "body": body, "assets": [],
                "created_at": "2026-11-20T10:00:00Z", "updated_at": "2026-11-20T10:00:00Z"
            }),
        }
    }

    pub fn issue(&self, number: u64, author: (&str, i64), title: &str, body: &str, open: bool) -> Value {
        let user = self.user(author);
        let state = if open { "open" } else { "closed" };
        match self.kind {
            ForgeKind::GitHub => json!({
                "url": format!("https://api.github.com/repos/home/lab/issues/{number}"),
                "html_url": format!("https://github.com/home/lab/issues/{number}"),
                "id": 7000 + number, "node_id": "I_kwDO", "number": number, "title": title, "user": user,
                "labels": [], "state": state, "locked": false, "assignee": null, "assignees": [],
                "comments": 0, "created_at": "2026-11-01T04:17:00Z", "updated_at": "2026-11-01T04:17:00Z",
                "closed_at": null, "author_association": "NONE", "body": body
            }),
            ForgeKind::Forgejo => json!({
                "id": 7000 + number, "url": format!("https://forge.example/api/v1/repos/home/lab/issues/{number}"),
                "html_url": format!("https://forge.example/home/lab/issues/{number}"), "number": number,
                "user": user, "original_author": "", "title": title, "body": body, "ref": "", "assets": [],
                "labels": [], "milestone": null, "assignee": null, "assignees": null, "state": state,
                "is_locked": false, "comments": 0, "created_at": "2026-11-01T04:17:00Z",
                "updated_at": "2026-11-01T04:17:00Z", "closed_at": null, "due_date": null,
                "pull_request": null, "repository": { "id": 11, "name": "lab", "owner": "home", "full_name": "home/lab" },
                "pin_order": 0
            }),
        }
    }

    /// `GET /user` answering `who`.
    pub async fn mount_user(&self, who: (&str, i64)) {
        Mock::given(method("GET"))
            .and(path(format!("{}/user", self.prefix())))
            .and(wiremock::matchers::header("authorization", self.auth().as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(self.user(who)))
            .named("GET /user")
            .mount(&self.server)
            .await;
    }

    /// Serves `items` at `p` in this forge's paging: GitHub 100 per page with a `Link` header,
    /// Forgejo `page`/`limit=50` with `X-Total-Count`. Each page is expected exactly once.
    pub async fn mount_list(&self, p: &str, extra_query: &[(&str, &str)], items: Vec<Value>) {
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
            let mut resp = ResponseTemplate::new(200).set_body_json(Value::Array(chunk.to_vec()));
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
        self.mount_list(&self.repo_path(&format!("issues/{pr}/comments")), &[], comments).await;
    }

    pub async fn mount_issues(&self, issues: Vec<Value>) {
        let query: &[(&str, &str)] = match self.kind {
            ForgeKind::GitHub => &[("state", "all")],
            ForgeKind::Forgejo => &[("state", "all"), ("type", "issues")],
        };
        self.mount_list(&self.repo_path("issues"), query, issues).await;
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
