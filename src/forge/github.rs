//! The GitHub backend, through octocrab (`base_uri` set to the detected API URL, which also
//! covers GitHub Enterprise Server and the tests' local server). Paging follows the `Link`
//! header through octocrab's [`Page`].

use octocrab::{Octocrab, Page};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::identity::IdentityCache;
use super::{Comment, ForgeError, Issue, IssueEdit, PullRequest, Repo, RetryPolicy, StatusState, User};

/// A GitHub repository reached through one token.
pub struct GitHub {
    client: Octocrab,
    pub(crate) repo: Repo,
    pub(crate) retry: RetryPolicy,
    pub(crate) me: IdentityCache,
    /// Kept only to redact it from error texts a server might echo.
    token: SecretString,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHub").field("repo", &self.repo).finish_non_exhaustive()
    }
}

// The wire types read only the fields nixprox needs, each optional or defaulted where the
// OpenAPI description allows null or absence (`nullable-simple-user`, `body`, `merged_at`…);
// unknown fields are ignored. Shapes: fixtures/forge-api/github-openapi-extract.json.

/// `simple-user` (and the `oneOf` of `GET /user`).
#[derive(Deserialize)]
struct GhUser {
    id: i64,
    #[serde(default)]
    login: String,
}

/// The `slug` of `nullable-integration` (`performed_via_github_app`).
#[derive(Deserialize)]
struct GhApp {
    slug: Option<String>,
}

fn author(user: Option<GhUser>, app: Option<GhApp>) -> User {
    match user {
        Some(u) => User::github(u.id, u.login, app.as_ref().and_then(|a| a.slug.as_deref())),
        None => User::unknown(),
    }
}

/// `issue-comment`.
#[derive(Deserialize)]
struct GhComment {
    id: i64,
    user: Option<GhUser>,
    body: Option<String>,
    html_url: Option<String>,
    performed_via_github_app: Option<GhApp>,
}

impl From<GhComment> for Comment {
    fn from(c: GhComment) -> Comment {
        Comment {
            id: c.id,
            author: author(c.user, c.performed_via_github_app),
            body: c.body.unwrap_or_default(),
            url: c.html_url,
        }
    }
}

/// `issue`.
#[derive(Deserialize)]
struct GhIssue {
    number: u64,
    user: Option<GhUser>,
    title: Option<String>,
    body: Option<String>,
    state: Option<String>,
    html_url: Option<String>,
    /// Present when the "issue" is a pull request.
    pull_request: Option<serde_json::Value>,
    performed_via_github_app: Option<GhApp>,
}

impl From<GhIssue> for Issue {
    fn from(i: GhIssue) -> Issue {
        Issue {
            number: i.number,
            author: author(i.user, i.performed_via_github_app),
            title: i.title.unwrap_or_default(),
            body: i.body.unwrap_or_default(),
            open: i.state.as_deref() == Some("open"),
            url: i.html_url,
        }
    }
}

/// `pull-request-simple`.
#[derive(Deserialize)]
struct GhPull {
    number: u64,
    merged_at: Option<String>,
    merge_commit_sha: Option<String>,
}

impl From<GhPull> for PullRequest {
    fn from(p: GhPull) -> PullRequest {
        PullRequest { number: p.number, merged: p.merged_at.is_some(), merge_commit_sha: p.merge_commit_sha }
    }
}

/// `status`: its `creator` is the token's account.
#[derive(Deserialize)]
struct GhStatus {
    creator: Option<GhUser>,
}

impl GitHub {
    pub fn new(api_url: &Url, repo: Repo, token: SecretString) -> Result<GitHub, ForgeError> {
        let client = Octocrab::builder()
            .base_uri(api_url.as_str())
            .map_err(|e| ForgeError::Env(format!("malformed GitHub API URL `{api_url}`: {e}")))?
            .personal_token(token.expose_secret().to_string())
            .set_connect_timeout(Some(std::time::Duration::from_secs(10)))
            .set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .build()
            .map_err(|e| ForgeError::Env(format!("failed to build the GitHub client: {e}")))?;
        Ok(GitHub { client, repo, retry: RetryPolicy::default(), me: IdentityCache::default(), token })
    }

    fn route(&self, rest: &str) -> String {
        format!("/repos/{}/{}/{rest}", self.repo.owner, self.repo.name)
    }

    fn err(&self, op: String, e: octocrab::Error) -> ForgeError {
        let token = self.token.expose_secret();
        match e {
            octocrab::Error::GitHub { source, .. } => {
                let mut body = source.message.clone();
                if let Some(errors) = &source.errors {
                    body.push_str(&format!(" {}", serde_json::Value::Array(errors.clone())));
                }
                let mut status = source.status_code.as_u16();
                // GitHub answers an exhausted (or secondary) rate limit with 403: that is a
                // reason to wait and retry, not a read-only token.
                let limited = source
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("x-ratelimit-remaining"))
                    .is_some_and(|v| v.as_bytes() == b"0");
                if status == 403 && (limited || source.message.to_ascii_lowercase().contains("rate limit")) {
                    status = 429;
                }
                ForgeError::http(op, status, &body, token)
            }
            octocrab::Error::Serde { source, .. } => {
                ForgeError::Decode { op, message: crate::text::redact(&source.to_string(), token) }
            }
            octocrab::Error::Json { source, .. } => {
                ForgeError::Decode { op, message: crate::text::redact(&source.to_string(), token) }
            }
            other => ForgeError::Transport { op, message: crate::text::redact(&other.to_string(), token) },
        }
    }

    async fn all<T: serde::de::DeserializeOwned>(
        &self,
        op: &str,
        route: String,
    ) -> Result<Vec<T>, ForgeError> {
        let first: Page<T> = self
            .client
            .get(route, Some(&[("per_page", "100")]))
            .await
            .map_err(|e| self.err(op.to_string(), e))?;
        self.client.all_pages(first).await.map_err(|e| self.err(op.to_string(), e))
    }

    /// The token's account from `GET /user`; `None` for an installation token (the Actions
    /// `GITHUB_TOKEN` or a GitHub App's), which GitHub answers with 403 ("Resource not
    /// accessible by integration").
    pub(crate) async fn whoami(&self) -> Result<Option<User>, ForgeError> {
        match self.client.get::<GhUser, _, ()>("/user", None).await {
            Ok(user) => Ok(Some(author(Some(user), None))),
            Err(octocrab::Error::GitHub { source, .. }) if source.status_code.as_u16() == 403 => {
                tracing::debug!("`GET /user` is not allowed for this token: an installation token");
                Ok(None)
            }
            Err(e) => Err(self.err("read the token's user (`GET /user`)".into(), e)),
        }
    }

    pub(crate) async fn list_comments(&self, number: u64) -> Result<Vec<Comment>, ForgeError> {
        let op = format!("list the comments of `{}#{number}`", self.repo);
        let comments: Vec<GhComment> =
            self.all(&op, self.route(&format!("issues/{number}/comments"))).await?;
        Ok(comments.into_iter().map(Comment::from).collect())
    }

    pub(crate) async fn create_comment(&self, number: u64, body: &str) -> Result<Comment, ForgeError> {
        let route = self.route(&format!("issues/{number}/comments"));
        let c: GhComment = self
            .client
            .post(route, Some(&json!({ "body": body })))
            .await
            .map_err(|e| self.err(format!("comment on `{}#{number}`", self.repo), e))?;
        Ok(c.into())
    }

    pub(crate) async fn update_comment(&self, id: i64, body: &str) -> Result<Comment, ForgeError> {
        let route = self.route(&format!("issues/comments/{id}"));
        let c: GhComment = self
            .client
            .patch(route, Some(&json!({ "body": body })))
            .await
            .map_err(|e| self.err(format!("edit comment `{id}` in `{}`", self.repo), e))?;
        Ok(c.into())
    }

    pub(crate) async fn list_issues(&self) -> Result<Vec<Issue>, ForgeError> {
        let op = format!("list the issues of `{}`", self.repo);
        let first: Page<GhIssue> = self
            .client
            .get(self.route("issues"), Some(&[("state", "all"), ("per_page", "100")]))
            .await
            .map_err(|e| self.err(op.clone(), e))?;
        let issues = self.client.all_pages(first).await.map_err(|e| self.err(op, e))?;
        Ok(issues.into_iter().filter(|i| i.pull_request.is_none()).map(Issue::from).collect())
    }

    pub(crate) async fn create_issue(&self, title: &str, body: &str) -> Result<Issue, ForgeError> {
        let i: GhIssue = self
            .client
            .post(self.route("issues"), Some(&json!({ "title": title, "body": body })))
            .await
            .map_err(|e| self.err(format!("open an issue in `{}`", self.repo), e))?;
        Ok(i.into())
    }

    pub(crate) async fn edit_issue(&self, number: u64, edit: &IssueEdit<'_>) -> Result<Issue, ForgeError> {
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
        let i: GhIssue = self
            .client
            .patch(self.route(&format!("issues/{number}")), Some(&patch))
            .await
            .map_err(|e| self.err(format!("edit issue `{}#{number}`", self.repo), e))?;
        Ok(i.into())
    }

    pub(crate) async fn pulls_for_commit(&self, sha: &str) -> Result<Vec<PullRequest>, ForgeError> {
        let op = format!("find the pull request of commit `{sha}` in `{}`", self.repo);
        let pulls: Vec<GhPull> = self.all(&op, self.route(&format!("commits/{sha}/pulls"))).await?;
        Ok(pulls.into_iter().map(PullRequest::from).collect())
    }

    pub(crate) async fn set_status(
        &self,
        sha: &str,
        context: &str,
        state: StatusState,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<Option<User>, ForgeError> {
        let body = super::status_body(state, context, description, target_url);
        let status: GhStatus = self
            .client
            .post(self.route(&format!("statuses/{sha}")), Some(&body))
            .await
            .map_err(|e| self.err(format!("set status `{context}` on commit `{sha}`"), e))?;
        Ok(status.creator.map(|c| author(Some(c), None)))
    }
}
