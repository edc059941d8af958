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

use super::{Comment, ForgeError, Issue, IssueEdit, PullRequest, Repo, RetryPolicy, StatusState, User};

/// Page size: Forgejo's default `MAX_RESPONSE_ITEMS` is 50, larger limits are cut to it.
const PAGE_LIMIT: usize = 50;

/// The login Forgejo shows for the automatic Actions token, which has no `GET /user`.
pub const ACTIONS_BOT_LOGIN: &str = "forgejo-actions";

/// A Forgejo repository reached through one token.
pub struct Forgejo {
    http: reqwest::Client,
    base: String,
    pub(crate) repo: Repo,
    pub(crate) retry: RetryPolicy,
    pub(crate) login_override: Option<String>,
    /// Kept only to redact it from error texts a server might echo.
    token: SecretString,
}

impl std::fmt::Debug for Forgejo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forgejo").field("base", &self.base).field("repo", &self.repo).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct FjUser {
    id: u64,
    login: String,
}

impl From<FjUser> for User {
    fn from(u: FjUser) -> User {
        User { id: u.id, login: u.login }
    }
}

fn ghost() -> User {
    User { id: 0, login: "Ghost".into() }
}

#[derive(Deserialize)]
struct FjComment {
    id: u64,
    user: Option<FjUser>,
    #[serde(default)]
    body: String,
    html_url: Option<String>,
}

impl From<FjComment> for Comment {
    fn from(c: FjComment) -> Comment {
        Comment {
            id: c.id,
            author: c.user.map(User::from).unwrap_or_else(ghost),
            body: c.body,
            url: c.html_url,
        }
    }
}

#[derive(Deserialize)]
struct FjIssue {
    number: u64,
    user: Option<FjUser>,
    title: String,
    #[serde(default)]
    body: String,
    state: String,
    html_url: Option<String>,
    pull_request: Option<serde_json::Value>,
}

impl From<FjIssue> for Issue {
    fn from(i: FjIssue) -> Issue {
        Issue {
            number: i.number,
            author: i.user.map(User::from).unwrap_or_else(ghost),
            title: i.title,
            body: i.body,
            open: i.state == "open",
            url: i.html_url,
        }
    }
}

#[derive(Deserialize)]
struct FjPull {
    number: u64,
    #[serde(default)]
    merged: bool,
    merge_commit_sha: Option<String>,
}

impl From<FjPull> for PullRequest {
    fn from(p: FjPull) -> PullRequest {
        PullRequest { number: p.number, merged: p.merged, merge_commit_sha: p.merge_commit_sha }
    }
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
            login_override: None,
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
    async fn all<T: DeserializeOwned>(
        &self,
        op: &str,
        url: &str,
        query: &[(&str, String)],
        id: impl Fn(&T) -> u64,
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

    pub(crate) async fn current_login(&self) -> Result<String, ForgeError> {
        if let Some(login) = &self.login_override {
            return Ok(login.clone());
        }
        let op = "read the token's user (`GET /user`)";
        match self.send(op, Method::GET, &self.url("/user"), &[], None).await {
            Ok(resp) => Ok(self.json::<FjUser>(op, resp).await?.login),
            Err(e) if matches!(e.status(), Some(401 | 403)) => {
                tracing::debug!("`GET /user` is not allowed for this token; assuming `{ACTIONS_BOT_LOGIN}`");
                Ok(ACTIONS_BOT_LOGIN.to_string())
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

    pub(crate) async fn update_comment(&self, id: u64, body: &str) -> Result<Comment, ForgeError> {
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
    ) -> Result<(), ForgeError> {
        let op = format!("set status `{context}` on commit `{sha}`");
        let body = super::status_body(state, context, description, target_url);
        self.send(&op, Method::POST, &self.repo_url(&format!("statuses/{sha}")), &[], Some(&body)).await?;
        Ok(())
    }
}
