//! Where nixprox runs: detects GitHub Actions or Forgejo Actions from the environment, the API
//! URL, the repository, the run URL and the triggering event (from the payload file that
//! `GITHUB_EVENT_PATH` names), every value overridable by a flag ([`ForgeOverrides`]).
//!
//! The environment is passed as a closure so that tests never mutate the process environment.

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use url::Url;

use super::ForgeError;

/// Which forge's API to talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgeKind {
    GitHub,
    Forgejo,
}

impl ForgeKind {
    /// Parses the `--forge` value.
    pub fn parse(text: &str) -> Result<ForgeKind, ForgeError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "github" => Ok(ForgeKind::GitHub),
            "forgejo" | "gitea" => Ok(ForgeKind::Forgejo),
            other => Err(ForgeError::Env(format!(
                "unknown forge `{other}` given to `--forge` (expected `github` or `forgejo`)"
            ))),
        }
    }
}

impl fmt::Display for ForgeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ForgeKind::GitHub => "github",
            ForgeKind::Forgejo => "forgejo",
        })
    }
}

/// `owner/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    pub owner: String,
    pub name: String,
}

impl Repo {
    /// Parses `owner/name`; `source` names the variable or flag for the error message.
    pub fn parse(text: &str, source: &str) -> Result<Repo, ForgeError> {
        let bad = || {
            ForgeError::Env(format!(
                "malformed repository `{text}` in {source} (expected `owner/name`, e.g. `homelab/infra`)"
            ))
        };
        let (owner, name) = text.trim().split_once('/').ok_or_else(bad)?;
        let valid = |s: &str| {
            !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !valid(owner) || !valid(name) {
            return Err(bad());
        }
        Ok(Repo { owner: owner.to_string(), name: name.to_string() })
    }
}

impl fmt::Display for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// Values given on the command line; each one wins over what the environment says.
#[derive(Debug, Clone, Default)]
pub struct ForgeOverrides {
    /// `--forge github|forgejo`
    pub forge: Option<ForgeKind>,
    /// `--repo owner/name`
    pub repo: Option<String>,
    /// `--pr N`
    pub pr: Option<u64>,
    /// `--api-url URL` (Forgejo: ending in `/api/v1`)
    pub api_url: Option<String>,
    /// `--token-env NAME`: the variable holding the forge token. Always wins over the
    /// runner's own variables (the action passes its `token` input this way).
    pub token_env: Option<String>,
    /// `--bot-login LOGIN`: the account nixprox's comments and issues are written by, when
    /// the token cannot tell (a GitHub App's installation token).
    pub bot_login: Option<String>,
    /// `--sha SHA`: the commit to report statuses on (head of the PR, or the pushed commit).
    pub sha: Option<String>,
}

/// A pull request event (`opened`, `synchronize` on GitHub, `synchronized` on Forgejo, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestEvent {
    pub number: u64,
    /// The payload's `action`, as sent.
    pub action: Option<String>,
    /// The head commit: what the PR author pushed. (`GITHUB_SHA` is the test merge commit.)
    pub head_sha: Option<String>,
    pub base_sha: Option<String>,
    /// The head lives in another repository: its token is read-only.
    pub from_fork: bool,
}

/// What triggered the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    PullRequest(PullRequestEvent),
    /// A push: `sha` is the pushed (after a merge: the merged) commit.
    Push {
        sha: String,
        git_ref: Option<String>,
    },
    Schedule {
        sha: Option<String>,
    },
    WorkflowDispatch {
        sha: Option<String>,
        git_ref: Option<String>,
    },
    /// Any other event, or none (run by hand with overrides).
    Other {
        name: Option<String>,
        sha: Option<String>,
    },
}

/// Everything the forge layer needs to know about the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeContext {
    pub kind: ForgeKind,
    /// The REST API base (`https://api.github.com`, `https://forge.example/api/v1`).
    pub api_url: Url,
    pub repo: Repo,
    /// A link to this run; the comment points here for the full plan (job summary).
    pub run_url: Option<String>,
    pub event: Event,
    /// The variable that holds the token.
    pub token_env: String,
    /// `--bot-login`: whose comments and issues are ours (default: asked from the forge).
    pub bot_login: Option<String>,
}

impl ForgeContext {
    /// Detects the forge from `env` and applies `overrides`. `Ok(None)` means "not in CI and
    /// nothing given": forge features are simply off.
    pub fn detect(
        overrides: &ForgeOverrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<ForgeContext>, ForgeError> {
        let Some(kind) = detect_kind(overrides, env)? else { return Ok(None) };
        let vars = CiVars { env, kind };
        let api_url = api_url(overrides, &vars)?;
        let repo = match &overrides.repo {
            Some(repo) => Repo::parse(repo, "`--repo`")?,
            None => {
                let (name, value) = vars.get("REPOSITORY").ok_or_else(|| {
                    ForgeError::Env(format!(
                        "cannot tell the repository: `{}` is not set (pass `--repo owner/name`)",
                        vars.names("REPOSITORY").join("` or `")
                    ))
                })?;
                Repo::parse(&value, &format!("`{name}`"))?
            }
        };
        let event = event(overrides, &vars)?;
        let run_url = match (vars.get("SERVER_URL"), overrides.repo.is_none()) {
            (Some((_, server)), true) => {
                // GitHub's run page uses the run id; Forgejo's uses the run number (the index).
                let run = match kind {
                    ForgeKind::GitHub => vars.get("RUN_ID"),
                    ForgeKind::Forgejo => vars.get("RUN_NUMBER"),
                };
                run.map(|(_, id)| format!("{}/{repo}/actions/runs/{id}", server.trim_end_matches('/')))
            }
            _ => None,
        };
        let token_env = match &overrides.token_env {
            Some(name) => name.clone(),
            None => default_token_env(kind, &|name| vars.var(name)),
        };
        let bot_login = overrides.bot_login.clone().filter(|l| !l.trim().is_empty());
        Ok(Some(ForgeContext { kind, api_url, repo, run_url, event, token_env, bot_login }))
    }

    /// The pull request number, when the run is about one.
    pub fn pr_number(&self) -> Option<u64> {
        match &self.event {
            Event::PullRequest(pr) => Some(pr.number),
            _ => None,
        }
    }

    /// The commit that statuses belong on: the PR head (not the merge commit), or the pushed one.
    pub fn head_sha(&self) -> Option<&str> {
        match &self.event {
            Event::PullRequest(pr) => pr.head_sha.as_deref(),
            Event::Push { sha, .. } => Some(sha),
            Event::Schedule { sha } | Event::WorkflowDispatch { sha, .. } | Event::Other { sha, .. } => {
                sha.as_deref()
            }
        }
    }

    /// Reads the token from the variable named by `token_env`.
    pub fn token(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<secrecy::SecretString, ForgeError> {
        match env(&self.token_env).filter(|t| !t.trim().is_empty()) {
            Some(token) => Ok(secrecy::SecretString::from(token.trim().to_string())),
            None => Err(ForgeError::Env(format!(
                "no forge token: `{}` is not set (pass the token to the step, e.g. `env: {}: ${{{{ \
                 secrets.GITHUB_TOKEN }}}}`, or name another variable with `--token-env`)",
                self.token_env, self.token_env
            ))),
        }
    }
}

/// The CI variables of one forge. Forgejo runners set each `GITHUB_X` also as `FORGEJO_X`
/// (and a step's `env:` overrides only the name it sets), so there `FORGEJO_X` comes first; on
/// GitHub only `GITHUB_X` counts.
struct CiVars<'e> {
    env: &'e dyn Fn(&str) -> Option<String>,
    kind: ForgeKind,
}

impl CiVars<'_> {
    /// A variable's value, unless it is unset or blank.
    fn var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.trim().is_empty())
    }

    /// The first of `names` that is set, with its name (for messages).
    fn pick(&self, names: &[&'static str]) -> Option<(&'static str, String)> {
        names.iter().find_map(|n| self.var(n).map(|v| (*n, v)))
    }

    /// The names the variable `suffix` (`REPOSITORY`, `SHA`, …) goes by on this forge, in order.
    fn names(&self, suffix: &str) -> Vec<&'static str> {
        let both = match suffix {
            "REPOSITORY" => ["FORGEJO_REPOSITORY", "GITHUB_REPOSITORY"],
            "SERVER_URL" => ["FORGEJO_SERVER_URL", "GITHUB_SERVER_URL"],
            "EVENT_NAME" => ["FORGEJO_EVENT_NAME", "GITHUB_EVENT_NAME"],
            "EVENT_PATH" => ["FORGEJO_EVENT_PATH", "GITHUB_EVENT_PATH"],
            "SHA" => ["FORGEJO_SHA", "GITHUB_SHA"],
            "REF" => ["FORGEJO_REF", "GITHUB_REF"],
            "RUN_ID" => ["FORGEJO_RUN_ID", "GITHUB_RUN_ID"],
            _ => ["FORGEJO_RUN_NUMBER", "GITHUB_RUN_NUMBER"],
        };
        match self.kind {
            ForgeKind::Forgejo => both.to_vec(),
            ForgeKind::GitHub => vec![both[1]],
        }
    }

    /// The variable `suffix` on this forge, with the name it was found under.
    fn get(&self, suffix: &str) -> Option<(&'static str, String)> {
        self.pick(&self.names(suffix))
    }
}

/// The forge `--forge` names, else the one whose runner set the environment; `None` outside
/// CI (an error when other overrides were given: they need to know the forge).
fn detect_kind(
    overrides: &ForgeOverrides,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ForgeKind>, ForgeError> {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    let detected = if ["FORGEJO_ACTIONS", "GITEA_ACTIONS", "FORGEJO_API_URL", "FORGEJO_SERVER_URL"]
        .iter()
        .any(|n| set(n))
    {
        Some(ForgeKind::Forgejo)
    } else if env("GITHUB_ACTIONS").as_deref() == Some("true") {
        Some(ForgeKind::GitHub)
    } else {
        None
    };
    match (overrides.forge, detected) {
        (Some(kind), _) | (None, Some(kind)) => Ok(Some(kind)),
        (None, None) if overrides.repo.is_some() || overrides.pr.is_some() || overrides.api_url.is_some() => {
            Err(ForgeError::Env(
                "not running in GitHub or Forgejo Actions: pass `--forge github|forgejo` together with \
                 `--repo` and `--api-url`"
                    .into(),
            ))
        }
        (None, None) => Ok(None),
    }
}

/// `--api-url`, else the runner's API URL (Forgejo: `FORGEJO_API_URL`, or its server URL plus
/// `/api/v1`), else GitHub's public API.
fn api_url(overrides: &ForgeOverrides, vars: &CiVars<'_>) -> Result<Url, ForgeError> {
    if let Some(url) = &overrides.api_url {
        return parse_url(url, "`--api-url`");
    }
    match vars.kind {
        ForgeKind::GitHub => match vars.var("GITHUB_API_URL") {
            Some(url) => parse_url(&url, "`GITHUB_API_URL`"),
            None => parse_url("https://api.github.com", "the default"),
        },
        ForgeKind::Forgejo => {
            if let Some((name, url)) = vars.pick(&["FORGEJO_API_URL", "GITHUB_API_URL"]) {
                parse_url(&url, &format!("`{name}`"))
            } else if let Some((name, url)) = vars.get("SERVER_URL") {
                parse_url(&format!("{}/api/v1", url.trim_end_matches('/')), &format!("`{name}`"))
            } else {
                Err(ForgeError::Env(
                    "cannot tell the Forgejo API URL: `FORGEJO_API_URL` is not set \
                     (pass `--api-url https://forge.example/api/v1`)"
                        .into(),
                ))
            }
        }
    }
}

/// What triggered the run, from the event name and its payload file, with `--pr` and `--sha`
/// applied.
fn event(overrides: &ForgeOverrides, vars: &CiVars<'_>) -> Result<Event, ForgeError> {
    let event_name = vars.get("EVENT_NAME").map(|(_, v)| v);
    let env_sha = vars.get("SHA").map(|(_, v)| v);
    let git_ref = vars.get("REF").map(|(_, v)| v);
    let payload = |required: bool| -> Result<Option<Payload>, ForgeError> {
        match vars.get("EVENT_PATH") {
            Some((name, path)) => read_payload(Path::new(&path), name).map(Some),
            None if required => Err(ForgeError::Env(format!(
                "`{}` is not set, so the `{}` event cannot be read (run inside GitHub or Forgejo \
                 Actions, or pass `--pr` and `--sha`)",
                vars.names("EVENT_PATH").join("` or `"),
                event_name.as_deref().unwrap_or("?"),
            ))),
            None => Ok(None),
        }
    };
    let mut event =
        match event_name.as_deref() {
            Some("pull_request" | "pull_request_target") if overrides.pr.is_none() => {
                let (var_name, path) = vars.get("EVENT_PATH").unzip();
                let payload = payload(true)?.unwrap_or_default();
                Event::PullRequest(payload.pull_request_event(
                    var_name.unwrap_or("GITHUB_EVENT_PATH"),
                    path.as_deref().unwrap_or(""),
                )?)
            }
            Some("push") => {
                let payload = payload(false)?.unwrap_or_default();
                let sha = payload.after.filter(|s| !is_zero_sha(s)).or(env_sha.clone()).ok_or_else(|| {
                    ForgeError::Env(format!(
                        "the `push` event has no commit: neither the payload's `after` nor `{}` is set",
                        vars.names("SHA").join("` or `")
                    ))
                })?;
                Event::Push { sha, git_ref: payload.git_ref.or(git_ref) }
            }
            Some("schedule") => Event::Schedule { sha: env_sha.clone() },
            Some("workflow_dispatch") => Event::WorkflowDispatch { sha: env_sha.clone(), git_ref },
            name => Event::Other { name: name.map(str::to_string), sha: env_sha.clone() },
        };
    if let Some(number) = overrides.pr {
        // `--pr` given: use the payload's SHAs only when it describes that same PR.
        let from_payload = match event_name.as_deref() {
            Some("pull_request" | "pull_request_target") => payload(false)?
                .and_then(|p| p.pull_request_event("GITHUB_EVENT_PATH", "").ok())
                .filter(|pr| pr.number == number),
            _ => None,
        };
        event = Event::PullRequest(from_payload.unwrap_or(PullRequestEvent {
            number,
            action: None,
            head_sha: env_sha.clone(),
            base_sha: None,
            from_fork: false,
        }));
    }
    if let Some(sha) = &overrides.sha {
        match &mut event {
            Event::PullRequest(pr) => pr.head_sha = Some(sha.clone()),
            Event::Push { sha: s, .. } => *s = sha.clone(),
            Event::Schedule { sha: s }
            | Event::WorkflowDispatch { sha: s, .. }
            | Event::Other { sha: s, .. } => *s = Some(sha.clone()),
        }
    }
    Ok(event)
}

/// The runner's own token variable. Forgejo runners set the same token as `FORGEJO_TOKEN` and
/// `GITHUB_TOKEN`, and a step's `env:` overrides only the name it sets; when the two differ one
/// was set on purpose, but which one cannot be told: `FORGEJO_TOKEN` is used, with a warning
/// naming the fix.
fn default_token_env(kind: ForgeKind, var: &dyn Fn(&str) -> Option<String>) -> String {
    match kind {
        ForgeKind::Forgejo if var("FORGEJO_TOKEN").is_some() => {
            if var("GITHUB_TOKEN").is_some_and(|github| Some(github) != var("FORGEJO_TOKEN")) {
                tracing::warn!(
                    "`FORGEJO_TOKEN` and `GITHUB_TOKEN` hold different tokens; using `FORGEJO_TOKEN` (pass `--token-env GITHUB_TOKEN`, or the action's `token` input, to use the other)"
                );
            }
            "FORGEJO_TOKEN".into()
        }
        _ => "GITHUB_TOKEN".into(),
    }
}

fn parse_url(text: &str, source: &str) -> Result<Url, ForgeError> {
    let url = Url::parse(text.trim()).map_err(|e| {
        ForgeError::Env(format!("malformed API URL `{text}` in {source}: {e} (expected `https://host/…`)"))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ForgeError::Env(format!(
            "malformed API URL `{text}` in {source}: expected an http(s) URL with a host"
        )));
    }
    Ok(url)
}

fn is_zero_sha(sha: &str) -> bool {
    sha.chars().all(|c| c == '0')
}

/// The parts of an event payload nixprox reads. Unknown fields are ignored.
#[derive(Debug, Default, Deserialize)]
struct Payload {
    action: Option<String>,
    number: Option<u64>,
    pull_request: Option<PayloadPull>,
    after: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PayloadPull {
    number: Option<u64>,
    head: Option<PayloadBranch>,
    base: Option<PayloadBranch>,
}

#[derive(Debug, Deserialize)]
struct PayloadBranch {
    sha: Option<String>,
    repo: Option<PayloadRepo>,
}

#[derive(Debug, Deserialize)]
struct PayloadRepo {
    full_name: Option<String>,
}

impl Payload {
    fn pull_request_event(self, var: &str, path: &str) -> Result<PullRequestEvent, ForgeError> {
        let missing = |field: &str| {
            ForgeError::Env(format!(
                "malformed `pull_request` event payload `{path}` (from `{var}`): `{field}` is missing"
            ))
        };
        let pull = self.pull_request.ok_or_else(|| missing("pull_request"))?;
        let number = pull.number.or(self.number).ok_or_else(|| missing("pull_request.number"))?;
        let head = pull.head.ok_or_else(|| missing("pull_request.head"))?;
        let base = pull.base.ok_or_else(|| missing("pull_request.base"))?;
        let head_sha = head.sha.clone().ok_or_else(|| missing("pull_request.head.sha"))?;
        let full_name = |b: &PayloadBranch| b.repo.as_ref().and_then(|r| r.full_name.clone());
        // A deleted fork has no head repository: treat it as a fork.
        let from_fork = match (full_name(&head), full_name(&base)) {
            (Some(h), Some(b)) => !h.eq_ignore_ascii_case(&b),
            (None, _) => true,
            (Some(_), None) => false,
        };
        Ok(PullRequestEvent {
            number,
            action: self.action,
            head_sha: Some(head_sha),
            base_sha: base.sha,
            from_fork,
        })
    }
}

fn read_payload(path: &Path, var: &str) -> Result<Payload, ForgeError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ForgeError::Env(format!(
            "failed to read the event payload `{}` (from `{var}`): {e} (is the variable pointing at \
             the runner's event file?)",
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        ForgeError::Env(format!(
            "malformed event payload `{}` (from `{var}`): {e} (expected the JSON the runner writes)",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests;
