//! The forge layer: where nixprox talks back to the code host (GitHub or Forgejo).
//!
//! [`Forge`] is a closed enum over the two backends ([`github::GitHub`] through octocrab,
//! [`forgejo::Forgejo`] through reqwest, because octocrab cannot talk to Forgejo). Each backend
//! converts its wire payloads into the shared types below with `From`, and offers the same few
//! primitives (who am I, list/create/edit comments, statuses, issues). The behaviour that matters
//! to users (one sticky comment, the drift issue, the reviewed plan after merge) is written once,
//! on top of those primitives, in [`comment`]. CI detection lives in [`env`]; the job summary and
//! step outputs in [`summary`].

pub mod comment;
pub mod env;
pub mod forgejo;
pub mod github;
pub mod identity;
pub mod summary;

use std::future::Future;
use std::time::Duration;

use secrecy::SecretString;
use thiserror::Error;

pub use comment::{CommentOutcome, IssueOutcome, ReviewedPlan};
pub use env::{Event, ForgeContext, ForgeKind, ForgeOverrides, PullRequestEvent, Repo};
pub use identity::{Me, User};

/// The most characters GitHub and Forgejo accept in a comment or issue body.
pub const MAX_BODY_CHARS: usize = 65_536;

/// Errors of the forge layer. Callers branch on [`ForgeError::is_forbidden`] (fork PRs) and the
/// retry logic on [`ForgeError::is_retryable`].
#[derive(Debug, Error)]
pub enum ForgeError {
    /// A CI environment variable or flag is missing or malformed.
    #[error("{0}")]
    Env(String),
    /// The API answered with an error status.
    #[error("failed to {op}: HTTP {status}: {body}{hint}")]
    Http { op: String, status: u16, body: String, hint: String },
    /// The request never got an answer (connection refused, timeout, TLS).
    #[error("failed to {op}: {message} (is the forge API reachable from this runner?)")]
    Transport { op: String, message: String },
    /// The answer could not be decoded.
    #[error("failed to {op}: unexpected response: {message}")]
    Decode { op: String, message: String },
    /// A body over the forge's size limit; the renderer's budget should have prevented it.
    #[error(
        "refusing to {op}: the body has {chars} characters, more than the forge's limit of {max} \
         (this is a bug in the Markdown size budget; please report it)"
    )]
    TooLarge { op: String, chars: usize, max: usize },
}

impl ForgeError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ForgeError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A read-only token (fork pull requests) gets 403: the caller falls back to the job summary.
    pub fn is_forbidden(&self) -> bool {
        self.status() == Some(403)
    }

    /// Worth another attempt: server errors, rate limiting, transient validation failures (GitHub
    /// answers 422 when a write races another one) and transport failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            ForgeError::Http { status, .. } => matches!(status, 422 | 429 | 500..=599),
            ForgeError::Transport { .. } => true,
            _ => false,
        }
    }

    /// Builds an HTTP error with a fix for the statuses users actually hit.
    pub(crate) fn http(op: String, status: u16, body: &str, token: &str) -> ForgeError {
        let hint = match status {
            401 => " (the token was rejected: check that the token input holds a valid token)",
            403 => {
                " (the token may not write here: fork pull requests get a read-only token; give the \
                 workflow `pull-requests: write`, `issues: write` and `statuses: write`)"
            }
            404 => " (check the repository name and that the token can see it)",
            _ => "",
        };
        ForgeError::Http { op, status, body: crate::text::redact(body.trim(), token), hint: hint.to_string() }
    }
}

/// Bounded retries with exponential backoff. Writes are retried at the level of the whole
/// find-then-write operation, so a retried create first looks again for the comment a failed
/// attempt may already have written: there is never a second comment.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Total attempts, including the first one.
    pub attempts: u32,
    /// Delay before the second attempt; doubled for each later one.
    pub base_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 3, base_delay: Duration::from_secs(2) }
    }
}

impl RetryPolicy {
    /// Runs `f` until it succeeds, fails with a non-retryable error, or attempts run out
    /// ([`crate::retry`]'s loop; every forge operation looks before it writes, so it is
    /// idempotent as a whole).
    pub async fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T, ForgeError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ForgeError>>,
    {
        let retries = self.attempts.max(1) - 1;
        let max_delay = self.base_delay.saturating_mul(1 << retries.min(16));
        let policy = crate::retry::RetryPolicy { retries, base_delay: self.base_delay, max_delay };
        policy.run(what, crate::retry::Resend::Idempotent, f).await
    }
}

impl crate::retry::Retryable for ForgeError {
    fn is_transient(&self) -> bool {
        self.is_retryable()
    }

    /// Only [`Resend::Idempotent`](crate::retry::Resend::Idempotent) operations are retried
    /// here, so this is never asked; no forge error proves a write did not happen.
    fn not_executed(&self) -> bool {
        false
    }
}

/// A comment on an issue or pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    pub id: i64,
    pub author: User,
    pub body: String,
    pub url: Option<String>,
}

/// An issue (never a pull request: backends filter those out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub number: u64,
    pub author: User,
    pub title: String,
    pub body: String,
    pub open: bool,
    pub url: Option<String>,
}

/// A pull request that contains a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub number: u64,
    pub merged: bool,
    pub merge_commit_sha: Option<String>,
}

/// The JSON both forges take for a commit status (`POST /repos/{o}/{r}/statuses/{sha}`).
fn status_body(
    state: StatusState,
    context: &str,
    description: &str,
    target_url: Option<&str>,
) -> serde_json::Value {
    let mut body =
        serde_json::json!({ "state": state.as_str(), "context": context, "description": description });
    if let Some(url) = target_url {
        body["target_url"] = serde_json::json!(url);
    }
    body
}

/// The state of a commit status (`nixprox/plan`, `nixprox/apply`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusState {
    Pending,
    Success,
    Failure,
    Error,
}

impl StatusState {
    /// The wire name, the same on both forges.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusState::Pending => "pending",
            StatusState::Success => "success",
            StatusState::Failure => "failure",
            StatusState::Error => "error",
        }
    }
}

/// Fields of a new or edited issue.
#[derive(Debug, Clone, Default)]
pub struct IssueEdit<'a> {
    pub title: Option<&'a str>,
    pub body: Option<&'a str>,
    pub open: Option<bool>,
}

/// The forge this run reports to: a closed set, so every backend handles every operation.
#[derive(Debug)]
pub enum Forge {
    GitHub(github::GitHub),
    Forgejo(forgejo::Forgejo),
}

macro_rules! dispatch {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            Forge::GitHub($b) => $call.await,
            Forge::Forgejo($b) => $call.await,
        }
    };
}

impl Forge {
    /// Builds the client for the detected (or overridden) forge. The token is used only in the
    /// `Authorization` header (marked sensitive) and redacted from every error.
    pub fn from_context(ctx: &ForgeContext, token: SecretString) -> Result<Forge, ForgeError> {
        let forge = match ctx.kind {
            ForgeKind::GitHub => Forge::GitHub(github::GitHub::new(&ctx.api_url, ctx.repo.clone(), token)?),
            ForgeKind::Forgejo => {
                Forge::Forgejo(forgejo::Forgejo::new(&ctx.api_url, ctx.repo.clone(), token)?)
            }
        };
        Ok(match &ctx.bot_login {
            Some(login) => forge.with_login(login.clone()),
            None => forge,
        })
    }

    /// Replaces the retry policy (tests use millisecond delays).
    pub fn with_retry(mut self, policy: RetryPolicy) -> Forge {
        match &mut self {
            Forge::GitHub(b) => b.retry = policy,
            Forge::Forgejo(b) => b.retry = policy,
        }
        self
    }

    /// Names the account whose comments and issues count as ours (`--bot-login`): needed
    /// only when the token cannot tell (see [`identity`]).
    pub fn with_login(self, login: impl Into<String>) -> Forge {
        self.identity().set(Me::Known { id: None, login: login.into() });
        self
    }

    pub fn kind(&self) -> ForgeKind {
        match self {
            Forge::GitHub(_) => ForgeKind::GitHub,
            Forge::Forgejo(_) => ForgeKind::Forgejo,
        }
    }

    pub fn repo(&self) -> &Repo {
        match self {
            Forge::GitHub(b) => &b.repo,
            Forge::Forgejo(b) => &b.repo,
        }
    }

    fn identity(&self) -> &identity::IdentityCache {
        match self {
            Forge::GitHub(b) => &b.me,
            Forge::Forgejo(b) => &b.me,
        }
    }

    pub(crate) fn retry(&self) -> RetryPolicy {
        match self {
            Forge::GitHub(b) => b.retry,
            Forge::Forgejo(b) => b.retry,
        }
    }

    /// Who the token writes as: only that account's comments and issues are ever edited or
    /// trusted. Asked once per run (`GET /user`), unless `--bot-login` named it.
    pub async fn me(&self) -> Result<Me, ForgeError> {
        if let Some(me) = self.identity().get() {
            return Ok(me);
        }
        let me = match dispatch!(self, b => b.whoami())? {
            Some(user) => Me::Known { id: Some(user.id), login: user.login },
            None => Me::SomeApp,
        };
        tracing::debug!("the forge token writes as {}", me.describe());
        self.identity().set(me.clone());
        Ok(me)
    }

    /// Every comment of an issue or pull request, all pages.
    pub async fn list_comments(&self, number: u64) -> Result<Vec<Comment>, ForgeError> {
        dispatch!(self, b => b.list_comments(number))
    }

    /// Posts a comment; its author tells an installation token who it is.
    pub async fn create_comment(&self, number: u64, body: &str) -> Result<Comment, ForgeError> {
        check_size("create a comment", body)?;
        let comment = dispatch!(self, b => b.create_comment(number, body))?;
        self.identity().learn(&comment.author);
        Ok(comment)
    }

    pub async fn update_comment(&self, id: i64, body: &str) -> Result<Comment, ForgeError> {
        check_size("edit a comment", body)?;
        dispatch!(self, b => b.update_comment(id, body))
    }

    /// Every issue (not pull request) of the repository, open and closed, all pages.
    pub async fn list_issues(&self) -> Result<Vec<Issue>, ForgeError> {
        dispatch!(self, b => b.list_issues())
    }

    pub async fn create_issue(&self, title: &str, body: &str) -> Result<Issue, ForgeError> {
        check_size("open an issue", body)?;
        let issue = dispatch!(self, b => b.create_issue(title, body))?;
        self.identity().learn(&issue.author);
        Ok(issue)
    }

    pub async fn edit_issue(&self, number: u64, edit: &IssueEdit<'_>) -> Result<Issue, ForgeError> {
        if let Some(body) = edit.body {
            check_size("edit an issue", body)?;
        }
        dispatch!(self, b => b.edit_issue(number, edit))
    }

    /// The pull requests that contain `sha` (after a merge: the merged one).
    pub async fn pulls_for_commit(&self, sha: &str) -> Result<Vec<PullRequest>, ForgeError> {
        dispatch!(self, b => b.pulls_for_commit(sha))
    }

    /// Sets a commit status such as `nixprox/plan` on `sha`. The description is cut to the
    /// 140 characters GitHub accepts. The answer's `creator` is the token's account: an
    /// installation token learns its identity here.
    pub async fn set_status(
        &self,
        sha: &str,
        context: &str,
        state: StatusState,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<(), ForgeError> {
        let description = crate::text::truncate(description, 140);
        let retry = self.retry();
        let creator = retry
            .run("set the commit status", || async {
                dispatch!(self, b => b.set_status(sha, context, state, &description, target_url))
            })
            .await?;
        if let Some(creator) = creator {
            self.identity().learn(&creator);
        }
        Ok(())
    }
}

fn check_size(op: &str, body: &str) -> Result<(), ForgeError> {
    let chars = body.chars().count();
    if chars > MAX_BODY_CHARS {
        return Err(ForgeError::TooLarge { op: op.to_string(), chars, max: MAX_BODY_CHARS });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statuses() {
        let e = |s| ForgeError::http("x".into(), s, "", "");
        assert!(e(403).is_forbidden());
        assert!(e(502).is_retryable() && e(422).is_retryable() && e(429).is_retryable());
        assert!(!e(404).is_retryable() && !e(403).is_retryable());
    }

    #[test]
    fn refuses_oversized_bodies() {
        assert!(check_size("x", &"a".repeat(MAX_BODY_CHARS)).is_ok());
        let err = check_size("create a comment", &"a".repeat(MAX_BODY_CHARS + 1)).expect_err("too big");
        assert!(err.to_string().starts_with("refusing to create a comment: the body has 65537"));
    }
}
