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

/// The Markdown context for a plan planned now in this CI context.
pub fn markdown_context(context: Option<&ForgeContext>, title: Option<String>) -> markdown::MarkdownContext {
    markdown::MarkdownContext {
        title,
        commit: context.and_then(|c| c.head_sha().map(str::to_string)),
        // Only in CI: a plan printed locally stays byte-for-byte reproducible.
        planned_at: context.map(|_| now_text()),
        details_url: context.and_then(|c| c.run_url.clone()),
    }
}

/// Appends the full plan to the job summary and writes the step outputs, when the runner
/// provides the files.
pub fn write_ci_files(plan: &Plan, body: &str) -> anyhow::Result<()> {
    let files = CiFiles::from_env(&env);
    if let Some(path) = &files.step_summary {
        summary::append_step_summary(path, body)
            .with_context(|| format!("failed to write the job summary `{}`", path.display()))?;
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

/// Appends Markdown to the job summary, when the runner provides the file.
pub fn append_summary(body: &str) -> anyhow::Result<()> {
    if let Some(path) = CiFiles::from_env(&env).step_summary {
        summary::append_step_summary(&path, body)
            .with_context(|| format!("failed to write the job summary `{}`", path.display()))?;
    }
    Ok(())
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
            tracing::warn!(
                "cannot comment on #{pr} ({message}): the token is read-only (a pull request from a fork?); the plan is in the job summary"
            );
            Ok(false)
        }
    }
}
