//! The Forgejo (and Gitea) backend, through reqwest: octocrab speaks only GitHub. The API base
//! already ends in `/api/v1`; requests carry `Authorization: token …` (marked sensitive). Lists
//! are paged with `page`/`limit`; `X-Total-Count` says when to stop.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, USER_AGENT};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use url::Url;

use super::identity::IdentityCache;
use super::{Comment, ForgeError, Issue, IssueEdit, PullRequest, Repo, RetryPolicy, StatusState, User};

/// Page size: Forgejo's default `MAX_RESPONSE_ITEMS` is 50, larger limits are cut to it.
const PAGE_LIMIT: usize = 50;

/// Forgejo's system user behind the automatic Actions token (`models/user/user_system.go`:
/// `ActionsUserID = -2`, `ActionsUserName = "forgejo-actions"`). Forgejo answers `GET /user`
/// with it; only servers that refuse that call need this fallback.
pub const ACTIONS_USER: (i64, &str) = (-2, "forgejo-actions");

/// A Forgejo repository reached through one token.
pub struct Forgejo {
    http: reqwest::Client,
    base: String,
    pub(crate) repo: Repo,
    pub(crate) retry: RetryPolicy,
    pub(crate) me: IdentityCache,
    /// Kept only to redact it from error texts a server might echo.
    token: SecretString,
}

impl std::fmt::Debug for Forgejo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forgejo").field("base", &self.base).field("repo", &self.repo).finish_non_exhaustive()
    }
}

// The wire types read only the fields nixprox needs. Ids are `int64` in the swagger document
// and negative for system users (`Ghost` -1, `forgejo-actions` -2); every Go pointer or slice
// may be null; unknown fields are ignored. Shapes: fixtures/forge-api/forgejo-swagger-extract.json.

/// `User`.
#[derive(Deserialize)]
struct FjUser {
    id: i64,
    #[serde(default)]
    login: String,
}

fn author(user: Option<FjUser>) -> User {
    user.map(|u| User { id: u.id, login: u.login, app: None }).unwrap_or_else(User::unknown)
}

/// `Comment`.
#[derive(Deserialize)]
struct FjComment {
    id: i64,
    user: Option<FjUser>,
    body: Option<String>,
    html_url: Option<String>,
}

impl From<FjComment> for Comment {
    fn from(c: FjComment) -> Comment {
        Comment { id: c.id, author: author(c.user), body: c.body.unwrap_or_default(), url: c.html_url }
    }
}

/// `Issue`.
#[derive(Deserialize)]
struct FjIssue {
    number: u64,
    user: Option<FjUser>,
    title: Option<String>,
    body: Option<String>,
    state: Option<String>,
    html_url: Option<String>,
    pull_request: Option<serde_json::Value>,
}

impl From<FjIssue> for Issue {
    fn from(i: FjIssue) -> Issue {
        Issue {
            number: i.number,
            author: author(i.user),
            title: i.title.unwrap_or_default(),
            body: i.body.unwrap_or_default(),
            open: i.state.as_deref() == Some("open"),
            url: i.html_url,
        }
    }
}

/// `PullRequest` (`merge_commit_sha` is a `*string`).
#[derive(Deserialize)]
struct FjPull {
    number: u64,
    merged: Option<bool>,
    merge_commit_sha: Option<String>,
}

impl From<FjPull> for PullRequest {
    fn from(p: FjPull) -> PullRequest {
        PullRequest {
            number: p.number,
            merged: p.merged.unwrap_or(false),
            merge_commit_sha: p.merge_commit_sha,
        }
    }
}

/// `CommitStatus`: its `creator` is the token's account.
#[derive(Deserialize)]
struct FjStatus {
    creator: Option<FjUser>,
}

impl Forgejo {
    pub fn new(api_url: &Url, repo: Repo, token: SecretString) -> Result<Forgejo, ForgeError> {
        let mut auth = HeaderValue::from_str(&format!("token {}", token.expose_secret())).map_err(|_| {
            ForgeError::Env("the forge token contains characters not allowed in a header".into())
        })?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, auth);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(concat!("nixprox/", env!("CARGO_PKG_VERSION"))));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ForgeError::Env(format!("failed to build the Forgejo client: {e}")))?;
        Ok(Forgejo {
            http,
            base: api_url.as_str().trim_end_matches('/').to_string(),
            repo,
            retry: RetryPolicy::default(),
            me: IdentityCache::default(),
            token,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn repo_url(&self, rest: &str) -> String {
        self.url(&format!("/repos/{}/{}/{rest}", self.repo.owner, self.repo.name))
    }

    /// Sends one request and returns the response when its status is a success.
    async fn send(
        &self,
        op: &str,
        method: Method,
        url: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response, ForgeError> {
        let token = self.token.expose_secret();
        let mut req = self.http.request(method, url).query(query);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| ForgeError::Transport {
            op: op.to_string(),
            message: crate::text::redact(&e.without_url().to_string(), token),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        // Forgejo errors are `{"message": …, "url": …}`; show the message, else the raw body.
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_string))
            .unwrap_or(text);
        Err(ForgeError::http(op.to_string(), status.as_u16(), &message, token))
    }

    async fn json<T: DeserializeOwned>(&self, op: &str, resp: reqwest::Response) -> Result<T, ForgeError> {
        let bytes = resp.bytes().await.map_err(|e| ForgeError::Transport {
            op: op.to_string(),
            message: crate::text::redact(&e.without_url().to_string(), self.token.expose_secret()),
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ForgeError::Decode { op: op.to_string(), message: e.to_string() })
    }

    /// Every page of a list. Stops at `X-Total-Count`, at a short page, or (for servers that
    /// ignore paging on an endpoint) when a page repeats what was already seen.
    async fn all<T: DeserializeOwned, K: Eq + std::hash::Hash>(
        &self,
        op: &str,
        url: &str,
        query: &[(&str, String)],
        id: impl Fn(&T) -> K,
    ) -> Result<Vec<T>, ForgeError> {
        let mut out: Vec<T> = Vec::new();
        let mut seen = HashSet::new();
        for page in 1.. {
            let mut q = query.to_vec();
            q.push(("page", page.to_string()));
            q.push(("limit", PAGE_LIMIT.to_string()));
            let resp = self.send(op, Method::GET, url, &q, None).await?;
            let total = resp
                .headers()
                .get("x-total-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<usize>().ok());
            let items: Vec<T> = self.json(op, resp).await?;
            let count = items.len();
            let mut fresh = 0;
            for item in items {
                if seen.insert(id(&item)) {
                    out.push(item);
                    fresh += 1;
                }
            }
            let done = match total {
                Some(total) => out.len() >= total,
                None => count < PAGE_LIMIT,
            };
            if done || fresh == 0 || count == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// The token's account from `GET /user` (Forgejo answers it for the automatic Actions
    /// token too: `forgejo-actions`, id -2). A server that refuses the call is assumed to have
    /// given the Actions token.
    pub(crate) async fn whoami(&self) -> Result<Option<User>, ForgeError> {
        let op = "read the token's user (`GET /user`)";
        match self.send(op, Method::GET, &self.url("/user"), &[], None).await {
            Ok(resp) => Ok(Some(author(Some(self.json::<FjUser>(op, resp).await?)))),
            Err(e) if matches!(e.status(), Some(401 | 403)) => {
                let (id, login) = ACTIONS_USER;
                tracing::warn!(
                    "`GET /user` is not allowed for this token; assuming the Actions user `{login}` (set `--bot-login` if nixprox writes as another account)"
                );
                Ok(Some(User { id, login: login.into(), app: None }))
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn list_comments(&self, number: u64) -> Result<Vec<Comment>, ForgeError> {
        let op = format!("list the comments of `{}#{number}`", self.repo);
        let url = self.repo_url(&format!("issues/{number}/comments"));
        let comments: Vec<FjComment> = self.all(&op, &url, &[], |c: &FjComment| c.id).await?;
        Ok(comments.into_iter().map(Comment::from).collect())
    }

    pub(crate) async fn create_comment(&self, number: u64, body: &str) -> Result<Comment, ForgeError> {
        let op = format!("comment on `{}#{number}`", self.repo);
        let url = self.repo_url(&format!("issues/{number}/comments"));
        let resp = self.send(&op, Method::POST, &url, &[], Some(&json!({ "body": body }))).await?;
        Ok(self.json::<FjComment>(&op, resp).await?.into())
    }

    pub(crate) async fn update_comment(&self, id: i64, body: &str) -> Result<Comment, ForgeError> {
        let op = format!("edit comment `{id}` in `{}`", self.repo);
        let url = self.repo_url(&format!("issues/comments/{id}"));
        let resp = self.send(&op, Method::PATCH, &url, &[], Some(&json!({ "body": body }))).await?;
        Ok(self.json::<FjComment>(&op, resp).await?.into())
    }

    pub(crate) async fn list_issues(&self) -> Result<Vec<Issue>, ForgeError> {
        let op = format!("list the issues of `{}`", self.repo);
        let query = [("state", "all".to_string()), ("type", "issues".to_string())];
        let issues: Vec<FjIssue> =
            self.all(&op, &self.repo_url("issues"), &query, |i: &FjIssue| i.number).await?;
        Ok(issues.into_iter().filter(|i| i.pull_request.is_none()).map(Issue::from).collect())
    }

    pub(crate) async fn create_issue(&self, title: &str, body: &str) -> Result<Issue, ForgeError> {
        let op = format!("open an issue in `{}`", self.repo);
        let body = json!({ "title": title, "body": body });
        let resp = self.send(&op, Method::POST, &self.repo_url("issues"), &[], Some(&body)).await?;
        Ok(self.json::<FjIssue>(&op, resp).await?.into())
    }

    pub(crate) async fn edit_issue(&self, number: u64, edit: &IssueEdit<'_>) -> Result<Issue, ForgeError> {
        let op = format!("edit issue `{}#{number}`", self.repo);
        let mut patch = serde_json::Map::new();
        if let Some(title) = edit.title {
            patch.insert("title".into(), json!(title));
        }
        if let Some(body) = edit.body {
            patch.insert("body".into(), json!(body));
        }
        if let Some(open) = edit.open {
            patch.insert("state".into(), json!(if open { "open" } else { "closed" }));
        }
        let url = self.repo_url(&format!("issues/{number}"));
        let resp = self.send(&op, Method::PATCH, &url, &[], Some(&serde_json::Value::Object(patch))).await?;
        Ok(self.json::<FjIssue>(&op, resp).await?.into())
    }

    pub(crate) async fn pulls_for_commit(&self, sha: &str) -> Result<Vec<PullRequest>, ForgeError> {
        let op = format!("find the pull request of commit `{sha}` in `{}`", self.repo);
        let url = self.repo_url(&format!("commits/{sha}/pull"));
        match self.send(&op, Method::GET, &url, &[], None).await {
            Ok(resp) => Ok(vec![self.json::<FjPull>(&op, resp).await?.into()]),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND.as_u16()) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn set_status(
        &self,
        sha: &str,
        context: &str,
        state: StatusState,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<Option<User>, ForgeError> {
        let op = format!("set status `{context}` on commit `{sha}`");
        let body = super::status_body(state, context, description, target_url);
        let url = self.repo_url(&format!("statuses/{sha}"));
        let resp = self.send(&op, Method::POST, &url, &[], Some(&body)).await?;
        Ok(self.json::<FjStatus>(&op, resp).await?.creator.map(|c| author(Some(c))))
    }
}
