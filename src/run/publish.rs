//! Reporting in CI: the forge context, the sticky comment, commit statuses, the job summary
//! and step outputs. Failures to report are warnings unless the user asked for them to count.

use std::collections::BTreeMap;

use anyhow::Context;
use secrecy::SecretString;

use crate::apply::approval::record::Record;
use crate::cli::ForgeArgs;
use crate::forge::{
    CommentOutcome, Forge, ForgeContext, ForgeKind, ForgeOverrides, StatusState,
    summary::{self, CiFiles, PlanOutputs},
};
use crate::plan::Plan;
use crate::render::{markdown, summary_line};

/// Reads one environment variable; the single place forge code sees the process environment.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The forge overrides from the command line.
pub fn overrides(args: &ForgeArgs) -> anyhow::Result<ForgeOverrides> {
    let forge = args.forge.as_deref().map(ForgeKind::parse).transpose()?;
    Ok(ForgeOverrides {
        forge,
        repo: args.repo.clone(),
        pr: args.pr,
        api_url: args.api_url.clone(),
        token_env: args.token_env.clone(),
        bot_login: args.bot_login.clone(),
        sha: args.sha.clone(),
    })
}

/// Detects where nixprox runs. A broken CI environment is an error when forge features were
/// asked for, and a warning otherwise.
pub fn detect(args: &ForgeArgs, required: bool) -> anyhow::Result<Option<ForgeContext>> {
    match ForgeContext::detect(&overrides(args)?, &env) {
        Ok(context) => Ok(context),
        Err(err) if required => Err(err.into()),
        Err(err) => {
            tracing::warn!("ignoring the CI environment: {err}");
            Ok(None)
        }
    }
}

/// A forge client for the detected context, with the token from its variable.
pub fn connect(context: &ForgeContext) -> anyhow::Result<Forge> {
    let token: SecretString = context.token(&env)?;
    Ok(Forge::from_context(context, token)?)
}

/// The key that tells this flake's comment and issue apart from other flakes' in the same
/// repository.
pub fn marker_key(flake: &str, config: Option<&std::path::Path>) -> String {
    let config =
        config.map(|p| p.display().to_string()).unwrap_or_else(|| crate::config::FILE_NAME.to_string());
    format!("{flake},{config}")
}

/// `2026-11-25 18:00 UTC`, for "planned at …" lines.
pub fn now_text() -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::now_utc().format(&format).unwrap_or_default()
}

/// The Markdown context for a plan planned now in this CI context. A trimmed comment points
/// to where the full plan is: GitHub shows the job summary on the run's page; Forgejo shows
/// job summaries only in the job log, so there it points to the run.
pub fn markdown_context(context: Option<&ForgeContext>, title: Option<String>) -> markdown::MarkdownContext {
    let full_plan = context.and_then(|c| {
        let url = c.run_url.as_deref()?;
        Some(match c.kind {
            ForgeKind::GitHub => format!("the [job summary]({url})"),
            ForgeKind::Forgejo => format!("the log of [the run]({url})"),
        })
    });
    markdown::MarkdownContext {
        title,
        commit: context.and_then(|c| c.head_sha().map(str::to_string)),
        // Only in CI: a plan printed locally stays byte-for-byte reproducible.
        planned_at: context.map(|_| now_text()),
        full_plan,
    }
}

/// Appends the plan to the job summary, as detailed as fits the step's 1 MiB (degraded level
/// by level like the comment, saying what it left out; the job log has the full text plan),
/// and writes the step outputs, when the runner provides the files.
pub fn write_ci_files(plan: &Plan, md: &markdown::MarkdownContext) -> anyhow::Result<()> {
    let files = CiFiles::from_env(&env);
    if let Some(path) = &files.step_summary {
        write_plan_summary(path, plan, md)?;
    }
    if let Some(path) = &files.output {
        let counts: BTreeMap<String, usize> =
            plan.summary.counts.iter().map(|(kind, count)| (kind.to_string(), *count)).collect();
        let outputs = PlanOutputs {
            plan_id: plan.plan_id.clone(),
            has_changes: plan.has_changes(),
            counts,
            summary: summary_line(plan),
        };
        summary::write_outputs(path, &outputs)
            .with_context(|| format!("failed to write the step outputs `{}`", path.display()))?;
    }
    Ok(())
}

/// Appends the plan to the job summary file within [`summary::STEP_SUMMARY_LIMIT`] (counting
/// what the step already wrote there).
fn write_plan_summary(
    path: &std::path::Path,
    plan: &Plan,
    md: &markdown::MarkdownContext,
) -> anyhow::Result<()> {
    let used = std::fs::metadata(path).map(|m| m.len() as usize).unwrap_or(0);
    let context = markdown::MarkdownContext {
        full_plan: Some("the job log (the text plan nixprox printed)".into()),
        ..md.clone()
    };
    // One byte for the newline the append may add.
    let room = summary::STEP_SUMMARY_LIMIT.saturating_sub(used + 1);
    let (body, level) = markdown::render_within_bytes(plan, &context, room);
    if level != markdown::Detail::Full {
        tracing::warn!(
            "the full plan does not fit the job summary's {} bytes: left out {}",
            summary::STEP_SUMMARY_LIMIT,
            level.left_out()
        );
    }
    summary::append_step_summary(path, &body)
        .with_context(|| format!("failed to write the job summary `{}`", path.display()))
}

/// Appends Markdown (the apply report) to the job summary, when the runner provides the file,
/// within [`summary::STEP_SUMMARY_LIMIT`] counting what the step already wrote: GitHub drops a
/// summary over it whole, so a report too long for it is cut at a line, saying so.
pub fn append_summary(body: &str) -> anyhow::Result<()> {
    if let Some(path) = CiFiles::from_env(&env).step_summary {
        let used = std::fs::metadata(&path).map(|m| m.len() as usize).unwrap_or(0);
        // One byte for the newline the append may add.
        let room = summary::STEP_SUMMARY_LIMIT.saturating_sub(used + 1);
        summary::append_step_summary(&path, &fit_lines(body, room))
            .with_context(|| format!("failed to write the job summary `{}`", path.display()))?;
    }
    Ok(())
}

/// `body` if it has at most `room` bytes, else its first whole lines and a note, within `room`.
fn fit_lines(body: &str, room: usize) -> std::borrow::Cow<'_, str> {
    const CUT: &str = "\n*… cut to fit the job summary's 1 MiB: the job log has the whole report.*\n";
    if body.len() <= room {
        return body.into();
    }
    let mut kept = 0;
    for line in body.split_inclusive('\n') {
        if kept + line.len() + CUT.len() > room {
            break;
        }
        kept += line.len();
    }
    format!("{}{CUT}", &body[..kept]).into()
}

/// Sets a commit status; a token that may not (fork pull requests) only warns.
pub async fn status(
    forge: &Forge,
    sha: Option<&str>,
    context: &str,
    state: StatusState,
    text: &str,
    url: Option<&str>,
) {
    let Some(sha) = sha else {
        tracing::warn!("no commit to set the `{context}` status on (pass --sha)");
        return;
    };
    if let Err(err) = forge.set_status(sha, context, state, text, url).await {
        tracing::warn!("could not set the `{context}` status: {err}");
    }
}

/// What to do when the forge refused the comment (403): the token of this run cannot write
/// to the pull request. On GitHub that is a fork's read-only `GITHUB_TOKEN` (or a workflow
/// without `pull-requests: write`); Forgejo ignores `permissions:` and may give every
/// `pull_request` run a read-only automatic token, so the fix there is a bot token.
fn read_only_fix(kind: crate::forge::ForgeKind) -> &'static str {
    match kind {
        crate::forge::ForgeKind::GitHub => {
            "the token cannot write to the pull request (a pull request from a fork gets a read-only `GITHUB_TOKEN`; otherwise give the job `pull-requests: write`); the plan is in the job summary"
        }
        crate::forge::ForgeKind::Forgejo => {
            "the token cannot write to the pull request (Forgejo may give `pull_request` runs a read-only automatic token, and always does for forks): give the plan job a bot account's token with the `write:issue` and `write:repository` scopes, as the action's `token` (the examples read the secret `NIXPROX_BOT_TOKEN`; docs/ci.md#forgejo); the plan is in the job log"
        }
    }
}

/// Posts or edits the sticky plan comment. Returns whether it was posted.
pub async fn plan_comment(
    forge: &Forge,
    context: &ForgeContext,
    key: &str,
    plan: &Plan,
    md: &markdown::MarkdownContext,
) -> anyhow::Result<bool> {
    let pr = context
        .pr_number()
        .context("--comment needs a pull request: run on a `pull_request` event or pass `--pr`")?;
    let record = match Record::from_plan(plan).to_json() {
        Ok(json) => Some(json),
        Err(reason) => {
            tracing::warn!(
                "{reason}: the comment records only the plan id, so apply after the merge cannot resume a partial run or apply in shards without --reviewed-plan FILE"
            );
            None
        }
    };
    let budget = crate::forge::comment::plan_body_budget(key, &plan.plan_id, record.as_deref());
    let (body, level) = markdown::render_within(plan, md, budget);
    tracing::debug!(?level, chars = body.chars().count(), "rendered the plan comment");
    match forge.upsert_plan_comment(pr, key, &plan.plan_id, &body, record.as_deref()).await? {
        CommentOutcome::Created { url, .. } | CommentOutcome::Updated { url, .. } => {
            tracing::info!("plan comment on #{pr}: {}", url.unwrap_or_default());
            Ok(true)
        }
        CommentOutcome::Forbidden { message } => {
            tracing::warn!("cannot comment on #{pr} ({message}): {}", read_only_fix(forge.kind()));
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_too_long_for_the_summary_is_cut_at_a_line_saying_so() {
        assert_eq!(fit_lines("a\nb\n", 10), "a\nb\n");
        let body = "line one\n".repeat(1000);
        let fitted = fit_lines(&body, 500);
        assert!(fitted.len() <= 500, "{}", fitted.len());
        assert!(fitted.starts_with("line one\nline one\n"));
        assert!(fitted.ends_with("the job log has the whole report.*\n"), "{fitted}");
        assert!(!fitted.contains("line one\n*"), "whole lines only, then a blank line");
    }
    use crate::config::Policies;
    use crate::plan::{PlanInput, testkit};

    /// A plan whose full Markdown is well over 1 MiB: 4,000 hosts to update.
    fn huge_plan() -> Plan {
        let desired: Vec<_> = (0..4000).map(|i| testkit::host(&format!("host-{i:04}"))).collect();
        let mut live: Vec<_> = (0..4000).map(|i| testkit::live(&format!("host-{i:04}"), 1000 + i)).collect();
        for vm in &mut live {
            let config = testkit::config(vm);
            config.spec.cores = 1;
            config.spec.memory_mib = 512;
        }
        crate::plan::plan(PlanInput {
            desired: &desired,
            live: &live,
            policies: Policies::default(),
            only: None,
            probes: None,
        })
    }

    #[test]
    fn the_job_summary_stays_within_its_limit_and_says_what_it_left_out() {
        let plan = huge_plan();
        let md = markdown::MarkdownContext::default();
        assert!(
            markdown::render(&plan, &md).len() > summary::STEP_SUMMARY_LIMIT,
            "the test plan is big enough"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("summary.md");
        // The step already wrote something there.
        std::fs::write(&path, "x".repeat(100_000)).expect("write");
        write_plan_summary(&path, &plan, &md).expect("summary");
        let written = std::fs::read_to_string(&path).expect("read");
        assert!(written.len() <= summary::STEP_SUMMARY_LIMIT, "{} bytes", written.len());
        assert!(
            written.contains("_Details trimmed to fit the size limit (left out: "),
            "says what it left out"
        );
        assert!(written.contains("the full plan is in the job log"), "and where the rest is");
    }

    #[test]
    fn a_trimmed_comment_points_to_the_summary_on_github_and_to_the_run_on_forgejo() {
        let mut context = ForgeContext::detect(
            &ForgeOverrides {
                forge: Some(ForgeKind::GitHub),
                repo: Some("home/lab".into()),
                api_url: Some("http://127.0.0.1:9/".into()),
                ..ForgeOverrides::default()
            },
            &|_| None,
        )
        .expect("context")
        .expect("some");
        context.run_url = Some("https://forge.example/home/lab/actions/runs/7".into());
        let github = markdown_context(Some(&context), None).full_plan;
        assert_eq!(
            github.as_deref(),
            Some("the [job summary](https://forge.example/home/lab/actions/runs/7)")
        );
        context.kind = ForgeKind::Forgejo;
        let forgejo = markdown_context(Some(&context), None).full_plan;
        assert_eq!(
            forgejo.as_deref(),
            Some("the log of [the run](https://forge.example/home/lab/actions/runs/7)")
        );
    }
}
