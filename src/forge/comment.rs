//! The sticky plan comment, the drift issue and the reviewed plan after merge, written once on
//! top of the backends' primitives.
//!
//! A hidden marker `<!-- nixprox:plan key=<key> plan_id=<id> -->` heads the plan comment: `key`
//! tells flake/settings files apart when one repository has several, `plan_id` lets apply find
//! the plan that was reviewed. A second hidden block at the end,
//! `<!-- nixprox:reviewed {…} -->`, carries the reviewed-plan record (per-host digests, see
//! `apply::approval::record`) that lets apply resume and fan out host by host. Only comments
//! and issues written by the token's own account are ever edited or trusted (see
//! [`super::identity`]): anyone can paste a marker into a comment.

use super::identity::ours;
use super::{Comment, Forge, ForgeError, Issue, IssueEdit, MAX_BODY_CHARS};

const PLAN_MARKER: &str = "nixprox:plan";
const DRIFT_MARKER: &str = "nixprox:drift";
const RECORD_MARKER: &str = "<!-- nixprox:reviewed ";

/// What happened to a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommentOutcome {
    Created {
        id: i64,
        url: Option<String>,
    },
    Updated {
        id: i64,
        url: Option<String>,
    },
    /// The token may not comment (fork PRs get a read-only token). The caller warns and relies on
    /// the job summary; the exit status depends on it only with `--comment-required`.
    Forbidden {
        message: String,
    },
}

/// What happened to the drift issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueOutcome {
    Created {
        number: u64,
        url: Option<String>,
    },
    Updated {
        number: u64,
        url: Option<String>,
    },
    /// Found closed (drift came back) and opened again: still one issue.
    Reopened {
        number: u64,
        url: Option<String>,
    },
}

/// The plan that was shown on the pull request that brought a commit in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewedPlan {
    pub pr: u64,
    pub plan_id: String,
    /// The JSON of the reviewed-plan record, when the comment has one for this plan id.
    pub record: Option<String>,
    /// The whole comment, as the forge returned it (apply compares its visible text with the
    /// plan it runs).
    pub body: String,
    pub comment_url: Option<String>,
}

/// Makes a marker key out of anything (a flake reference, a settings path): no whitespace and
/// no `>`, so it can never end the HTML comment early.
pub fn marker_key(text: &str) -> String {
    let key: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._/:@+#,=-".contains(c) { c } else { '_' })
        .collect();
    if key.is_empty() { "default".into() } else { key }
}

/// The hidden first line of the plan comment.
pub fn plan_marker(key: &str, plan_id: &str) -> String {
    format!("<!-- {PLAN_MARKER} key={} plan_id={} -->", marker_key(key), marker_key(plan_id))
}

fn drift_marker(key: &str) -> String {
    format!("<!-- {DRIFT_MARKER} key={} -->", marker_key(key))
}

/// The hidden last line carrying the reviewed-plan record (JSON). `>` is written as `\u003e`
/// (valid in JSON strings, the only place it can occur), so no host name can end the HTML
/// comment early.
pub fn record_block(record_json: &str) -> String {
    format!("{RECORD_MARKER}{} -->", record_json.replace('>', "\\u003e"))
}

/// The record's JSON in `body`, if it has one.
pub fn parse_record_block(body: &str) -> Option<&str> {
    let start = body.rfind(RECORD_MARKER)? + RECORD_MARKER.len();
    let len = body[start..].find(" -->")?;
    Some(&body[start..start + len])
}

/// The rendered plan of a plan comment `body`: what the forge shows, between the marker line
/// (which must be the first line) and the record line (which, when there is one, must be the
/// last). `Err` says what is out of place: text before the marker or after the record is
/// nothing nixprox wrote.
pub fn visible_text(body: &str) -> Result<&str, String> {
    let (first, rest) = body.split_once('\n').unwrap_or((body, ""));
    if !(first.starts_with(&format!("<!-- {PLAN_MARKER} ")) && first.ends_with(" -->")) {
        return Err("its first line is not nixprox's plan marker".into());
    }
    match rest.rfind(RECORD_MARKER) {
        None => Ok(rest),
        Some(start) => {
            let record = &rest[start..];
            let end = record.find(" -->").map(|i| i + " -->".len()).unwrap_or(record.len());
            if !record[end..].trim().is_empty() {
                return Err("text follows the reviewed-plan record".into());
            }
            if start > 0 && !rest[..start].ends_with('\n') {
                return Err("the reviewed-plan record does not start a line".into());
            }
            Ok(&rest[..start])
        }
    }
}

/// The characters left for the rendered plan once the marker line (and the record's line) are
/// added: the renderer's budget.
pub fn plan_body_budget(key: &str, plan_id: &str, record_json: Option<&str>) -> usize {
    let record = record_json.map_or(0, |r| record_block(r).chars().count() + 1);
    MAX_BODY_CHARS.saturating_sub(plan_marker(key, plan_id).chars().count() + 1 + record)
}

fn plan_comment_text(key: &str, plan_id: &str, body: &str, record_json: Option<&str>) -> String {
    let mut full = format!("{}\n{body}", plan_marker(key, plan_id));
    if let Some(record) = record_json {
        if !full.ends_with('\n') {
            full.push('\n');
        }
        full.push_str(&record_block(record));
    }
    full
}

/// The characters left for the drift issue body once its marker line is added.
pub fn drift_body_budget(key: &str) -> usize {
    MAX_BODY_CHARS - drift_marker(key).chars().count() - 1
}

/// Reads the fields of the first `kind` marker in `body`.
fn parse_marker<'a>(body: &'a str, kind: &str) -> Option<Vec<(&'a str, &'a str)>> {
    let start = body.find("<!--")?;
    let rest = body[start + 4..].trim_start();
    let rest = rest.strip_prefix(kind)?;
    let end = rest.find("-->")?;
    Some(rest[..end].split_whitespace().filter_map(|field| field.split_once('=')).collect())
}

/// The `plan_id` of a plan comment for `key`, if `body` is one.
pub fn parse_plan_marker(body: &str, key: &str) -> Option<String> {
    let fields = parse_marker(body, PLAN_MARKER)?;
    let key = marker_key(key);
    fields.iter().any(|(k, v)| *k == "key" && *v == key).then_some(())?;
    fields.iter().find(|(k, _)| *k == "plan_id").map(|(_, v)| v.to_string())
}

fn is_drift_issue(body: &str, key: &str) -> bool {
    let key = marker_key(key);
    parse_marker(body, DRIFT_MARKER).is_some_and(|f| f.iter().any(|(k, v)| *k == "key" && *v == key))
}

fn forbidden_or(err: ForgeError) -> Result<CommentOutcome, ForgeError> {
    if err.is_forbidden() {
        tracing::warn!("cannot comment: {err}; the plan is in the job summary instead");
        Ok(CommentOutcome::Forbidden { message: err.to_string() })
    } else {
        Err(err)
    }
}

impl Forge {
    /// Creates the one plan comment of pull request `pr` for `key`, or edits it in place.
    ///
    /// Searches every page of comments for our marker, written by the token's own user; edits
    /// the newest one; creates one when there is none or when it was deleted meanwhile (404).
    /// 403 becomes [`CommentOutcome::Forbidden`]. 422/5xx retry the whole operation boundedly.
    pub async fn upsert_plan_comment(
        &self,
        pr: u64,
        key: &str,
        plan_id: &str,
        body: &str,
        record_json: Option<&str>,
    ) -> Result<CommentOutcome, ForgeError> {
        let full = plan_comment_text(key, plan_id, body, record_json);
        let result = self
            .retry()
            .run(&format!("update the plan comment on #{pr}"), || self.upsert_once(pr, key, &full))
            .await;
        result.or_else(forbidden_or)
    }

    async fn upsert_once(&self, pr: u64, key: &str, full: &str) -> Result<CommentOutcome, ForgeError> {
        let me = self.me().await?;
        let comments = self.list_comments(pr).await?;
        let marked: Vec<Comment> =
            comments.into_iter().filter(|c| parse_plan_marker(&c.body, key).is_some()).collect();
        let ours = ours(&me, &marked, |c| &c.author, "plan comment")?;
        if let Some(existing) = ours.last() {
            match self.update_comment(existing.id, full).await {
                Ok(c) => {
                    tracing::info!("updated the plan comment on #{pr} (comment {})", c.id);
                    return Ok(CommentOutcome::Updated { id: c.id, url: c.url });
                }
                Err(e) if e.status() == Some(404) => {
                    tracing::info!(
                        "the plan comment {} on #{pr} was deleted; writing a new one",
                        existing.id
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let c = self.create_comment(pr, full).await?;
        tracing::info!("created the plan comment on #{pr} (comment {})", c.id);
        Ok(CommentOutcome::Created { id: c.id, url: c.url })
    }

    /// Posts a new comment (apply's report). 403 becomes [`CommentOutcome::Forbidden`]. Not
    /// retried: a retried create could post twice.
    pub async fn post_comment(&self, pr: u64, body: &str) -> Result<CommentOutcome, ForgeError> {
        match self.create_comment(pr, body).await {
            Ok(Comment { id, url, .. }) => Ok(CommentOutcome::Created { id, url }),
            Err(e) => forbidden_or(e),
        }
    }

    /// The plan id shown on the pull request that brought `sha` in (for apply after a merge):
    /// finds the PR through the commit, then our plan comment for `key` on it.
    pub async fn find_reviewed_plan_id(
        &self,
        sha: &str,
        key: &str,
    ) -> Result<Option<ReviewedPlan>, ForgeError> {
        let retry = self.retry();
        let pulls = retry.run("find the merged pull request", || self.pulls_for_commit(sha)).await?;
        // Prefer the PR merged as exactly this commit, then any merged one.
        let pr = pulls
            .iter()
            .find(|p| p.merged && p.merge_commit_sha.as_deref() == Some(sha))
            .or_else(|| pulls.iter().find(|p| p.merged))
            .or_else(|| pulls.first());
        let Some(pr) = pr else {
            tracing::info!("commit `{sha}` belongs to no pull request");
            return Ok(None);
        };
        let me = retry.run("read the token's user", || self.me()).await?;
        let comments = retry.run("list the plan comments", || self.list_comments(pr.number)).await?;
        let marked: Vec<Comment> =
            comments.into_iter().filter(|c| parse_plan_marker(&c.body, key).is_some()).collect();
        let found = ours(&me, &marked, |c| &c.author, "plan comment")?.last().map(|c| {
            let plan_id = parse_plan_marker(&c.body, key).unwrap_or_default();
            ReviewedPlan {
                pr: pr.number,
                record: parse_record_block(&c.body).map(str::to_string),
                body: c.body.clone(),
                plan_id,
                comment_url: c.url.clone(),
            }
        });
        if found.is_none() {
            tracing::info!("pull request #{} has no nixprox plan comment for `{key}`", pr.number);
        }
        Ok(found)
    }

    /// Opens the one drift issue for `key`, or updates (and if closed, reopens) the one opened
    /// before: never a new issue per run.
    pub async fn upsert_drift_issue(
        &self,
        key: &str,
        title: &str,
        body: &str,
    ) -> Result<IssueOutcome, ForgeError> {
        let full = format!("{}\n{body}", drift_marker(key));
        self.retry()
            .run("update the drift issue", || async {
                let me = self.me().await?;
                let issues = self.list_issues().await?;
                let marked: Vec<Issue> =
                    issues.into_iter().filter(|i| is_drift_issue(&i.body, key)).collect();
                let ours = ours(&me, &marked, |i| &i.author, "drift issue")?
                    .into_iter()
                    .max_by_key(|i| (i.open, i.number));
                match ours {
                    Some(issue) => {
                        let edit = IssueEdit { title: Some(title), body: Some(&full), open: Some(true) };
                        let updated = self.edit_issue(issue.number, &edit).await?;
                        tracing::info!("updated drift issue #{}", updated.number);
                        Ok(if issue.open {
                            IssueOutcome::Updated { number: updated.number, url: updated.url }
                        } else {
                            IssueOutcome::Reopened { number: updated.number, url: updated.url }
                        })
                    }
                    None => {
                        let created = self.create_issue(title, &full).await?;
                        tracing::info!("opened drift issue #{}", created.number);
                        Ok(IssueOutcome::Created { number: created.number, url: created.url })
                    }
                }
            })
            .await
    }

    /// Closes the open drift issue for `key`, if any. Returns the number it closed.
    pub async fn close_drift_issue(&self, key: &str) -> Result<Option<u64>, ForgeError> {
        self.retry()
            .run("close the drift issue", || async {
                let me = self.me().await?;
                let issues = self.list_issues().await?;
                let marked: Vec<Issue> =
                    issues.into_iter().filter(|i| i.open && is_drift_issue(&i.body, key)).collect();
                let open = ours(&me, &marked, |i| &i.author, "drift issue")?.into_iter().next();
                match open {
                    Some(issue) => {
                        let edit = IssueEdit { open: Some(false), ..IssueEdit::default() };
                        self.edit_issue(issue.number, &edit).await?;
                        tracing::info!("closed drift issue #{}: no drift any more", issue.number);
                        Ok(Some(issue.number))
                    }
                    None => Ok(None),
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trip() {
        let marker = plan_marker("flake=.# settings=nixprox.yaml", "p-1f2e");
        assert_eq!(marker, "<!-- nixprox:plan key=flake=.#_settings=nixprox.yaml plan_id=p-1f2e -->");
        let body = format!("{marker}\n## plan\n");
        assert_eq!(parse_plan_marker(&body, "flake=.# settings=nixprox.yaml").as_deref(), Some("p-1f2e"));
        assert_eq!(parse_plan_marker(&body, "other"), None);
        assert_eq!(parse_plan_marker("<!-- something else -->", "k"), None);
    }

    #[test]
    fn the_visible_text_is_between_the_marker_and_the_record() {
        let body = plan_comment_text("k", "id", "## plan\n", Some(r#"{"v":2}"#));
        assert_eq!(visible_text(&body), Ok("## plan\n"));
        assert_eq!(visible_text(&plan_comment_text("k", "id", "## plan\n", None)), Ok("## plan\n"));
        let before = format!("hello\n{body}");
        assert_eq!(visible_text(&before), Err("its first line is not nixprox's plan marker".into()));
        let after = format!("{body}\nmore");
        assert_eq!(visible_text(&after), Err("text follows the reviewed-plan record".into()));
    }

    #[test]
    fn keys_cannot_close_the_comment() {
        assert_eq!(marker_key("a --> b"), "a_--__b");
        assert_eq!(marker_key(""), "default");
    }

    #[test]
    fn drift_marker_is_recognised() {
        let body = format!("{}\ntext", drift_marker("main"));
        assert!(is_drift_issue(&body, "main"));
        assert!(!is_drift_issue(&body, "other"));
        assert!(!is_drift_issue(&plan_marker("main", "x"), "main"));
    }

    #[test]
    fn budgets_leave_room_for_the_marker_and_the_record() {
        let budget = plan_body_budget("k", "id", None);
        assert_eq!(budget + plan_marker("k", "id").len() + 1, MAX_BODY_CHARS);
        let record = r#"{"v":1}"#;
        let with_record = plan_body_budget("k", "id", Some(record));
        assert_eq!(with_record + record_block(record).len() + 1, budget);
        let full = plan_comment_text("k", "id", &"x".repeat(with_record), Some(record));
        assert_eq!(full.chars().count(), MAX_BODY_CHARS);
        assert!(drift_body_budget("k") < MAX_BODY_CHARS);
    }

    #[test]
    fn the_record_round_trips_and_cannot_close_the_comment() {
        let record = r#"{"v":1,"hosts":{"a-->b":"x"}}"#;
        let body = plan_comment_text("k", "id", "## plan\n", Some(record));
        assert!(body.ends_with(r#"{"v":1,"hosts":{"a--\u003eb":"x"}} -->"#), "{body}");
        let parsed: serde_json::Value =
            serde_json::from_str(parse_record_block(&body).expect("record")).expect("json");
        assert_eq!(parsed["hosts"]["a-->b"], "x");
        assert_eq!(parse_record_block("<!-- nixprox:plan key=k plan_id=id -->\nbody"), None);
    }
}
