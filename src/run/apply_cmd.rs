//! `nixprox apply`: find the reviewed plan, evaluate, apply through the executor with the SSH
//! deployer, and report (stdout, `--report`, the job summary, the merged pull request, the
//! `nixprox/apply` status).

use anyhow::{Context, bail};

use crate::apply::approval::record::Record;
use crate::apply::{
    self, ApplyOptions, ApplyReport, Cancel, Progress, ProgressMode, Reviewed, ReviewedPlan, RunRequest,
};
use crate::cli::ApplyArgs;
use crate::deploy::NixosDeployer;
use crate::flake::Nix;
use crate::forge::{Forge, ForgeContext, StatusState};
use crate::image::ImageBuild;
use crate::install::SshDeployer;

use super::shown::ShownComment;
use super::{Outcome, publish, source};

const STATUS: &str = "nixprox/apply";

pub async fn run(args: ApplyArgs) -> anyhow::Result<Outcome> {
    let cancel = Cancel::new();
    super::signals::forward(&cancel).context("failed to listen for SIGINT and SIGTERM")?;
    let source = source::Source::from_args(&args.source)?;
    let context = publish::detect(&args.forge, args.comment)?;
    let forge = match &context {
        Some(context) if args.comment || (args.plan_id.is_none() && args.reviewed_plan.is_none()) => {
            Some(publish::connect(context)?)
        }
        _ => None,
    };
    let sha = context.as_ref().and_then(|c| c.head_sha().map(str::to_string));
    let key = publish::marker_key(&args.source.flake, args.source.config.as_deref());
    let (reviewed, pr, shown) = reviewed_plan(&args, forge.as_ref(), sha.as_deref(), &key).await?;

    let settings = source::load_settings(&source)?;
    let client = source::proxmox_client(&settings)?;
    // Evaluating changes nothing: a signal meanwhile ends the run at once.
    let evaluated = tokio::select! {
        biased;
        signal = cancel.wait_requested() => {
            tracing::warn!("cancelled by {} while evaluating the flake: nothing was applied", signal.name());
            return Ok(Outcome::Cancelled(signal));
        }
        evaluated = source::evaluate(&source, &settings) => match (evaluated, cancel.requested()) {
            (Err(_), Some(signal)) => return Ok(Outcome::Cancelled(signal)),
            (evaluated, _) => evaluated?,
        },
    };
    let only = source.only();
    let deployer = deployer(&source, &settings);
    let image_build = image_build(&source);
    let git_rev = sha.clone().or_else(|| git_revision(&args.source.flake));
    let progress = Progress::new(ProgressMode::detect());
    let outcome = apply::run(RunRequest {
        client: &client,
        settings: &settings,
        desired: &evaluated.desired,
        only: only.as_ref(),
        reviewed: &reviewed,
        allow_new_plan: args.allow_new_plan,
        git_rev: git_rev.as_deref(),
        deployer: deployer.as_ref().map(|d| d as &dyn NixosDeployer),
        image_build: Some(&image_build),
        progress: &progress,
        options: ApplyOptions::from_settings(&settings),
        cancel: &cancel,
        shown: shown.as_ref().map(|s| s as &dyn apply::ShownCheck),
    })
    .await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(err) => {
            if let Some(forge) = &forge {
                let text = format!("not applied: {err}");
                publish::status(
                    forge,
                    sha.as_deref(),
                    STATUS,
                    StatusState::Failure,
                    &text,
                    run_url(&context),
                )
                .await;
            }
            return Err(err.into());
        }
    };
    let report = &outcome.report;
    print!("{}", report.render_text());
    if settings.apply.gc_images {
        super::gc_cmd::after_apply(&client, &settings, &evaluated.desired).await;
    }
    publish_report(report, &args, forge.as_ref(), sha.as_deref(), pr, &context).await?;
    Ok(match cancel.requested() {
        Some(signal) => Outcome::Cancelled(signal),
        None if report.has_failures() => Outcome::HostsFailed,
        None => Outcome::Success,
    })
}

/// The report to `--report`, the job summary, the `nixprox/apply` status and (`--comment`)
/// the merged pull request.
async fn publish_report(
    report: &ApplyReport,
    args: &ApplyArgs,
    forge: Option<&Forge>,
    sha: Option<&str>,
    pr: Option<u64>,
    context: &Option<ForgeContext>,
) -> anyhow::Result<()> {
    if let Some(path) = &args.report {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("failed to write the report to `{}`", path.display()))?;
    }
    if context.is_some() {
        publish::append_summary(&report.render_markdown())?;
    }
    if let Some(forge) = forge {
        let state = if report.has_failures() || report.cancelled_by.is_some() {
            StatusState::Failure
        } else {
            StatusState::Success
        };
        publish::status(forge, sha, STATUS, state, &report.summary_line(), run_url(context)).await;
        if let (true, Some(pr)) = (args.comment, pr)
            && let Err(err) = forge.post_comment(pr, &report.render_markdown()).await
        {
            tracing::warn!("could not post the apply report on #{pr}: {err}");
        }
    }
    Ok(())
}

/// The SSH deployer, or `None` (installs and switches skipped) when no SSH key is configured.
fn deployer(source: &source::Source, settings: &crate::config::Settings) -> Option<SshDeployer> {
    let Some(key) = SshDeployer::client_key(settings, &publish::env) else {
        tracing::warn!(
            "no SSH key configured (ssh.key, ssh.key_env, NIXPROX_SSH_KEY_FILE or {}): install and switch steps will be skipped",
            crate::install::DEFAULT_KEY_ENV
        );
        return None;
    };
    Some(
        SshDeployer::new(flake_for_install(&source.flake), key, settings)
            .with_override_inputs(source.override_inputs.clone()),
    )
}

/// How image hosts' packages are built: the flake and the `--override-input`s it was
/// evaluated with, so the build is the package the plan evaluated.
fn image_build(source: &source::Source) -> ImageBuild {
    let mut build = ImageBuild::new(Nix::default(), flake_for_install(&source.flake), "");
    build.override_inputs = source.override_inputs.clone();
    build
}

fn run_url(context: &Option<ForgeContext>) -> Option<&str> {
    context.as_ref().and_then(|c| c.run_url.as_deref())
}

/// The reviewed plan: `--reviewed-plan`, `--plan-id`, or the plan comment of the pull request
/// that was merged into the pushed commit. Also returns that pull request's number and, from
/// a comment, what it shows (checked against the plan apply runs, see `run::shown`).
async fn reviewed_plan(
    args: &ApplyArgs,
    forge: Option<&Forge>,
    sha: Option<&str>,
    key: &str,
) -> anyhow::Result<(Reviewed, Option<u64>, Option<ShownComment>)> {
    if let Some(path) = &args.reviewed_plan {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read the reviewed plan `{}`", path.display()))?;
        let plan = ReviewedPlan::parse(&text)
            .with_context(|| format!("invalid reviewed plan `{}`", path.display()))?;
        return Ok((Reviewed::Plan(plan), None, None));
    }
    if let Some(id) = &args.plan_id {
        return Ok((Reviewed::Id(id.clone()), None, None));
    }
    let (Some(forge), Some(sha)) = (forge, sha) else {
        bail!(
            "apply needs the reviewed plan: pass --plan-id or --reviewed-plan, or run in CI on the push of a merged pull request that has nixprox's plan comment"
        );
    };
    // The pending status tells the PR what is happening, and its answer's `creator` tells an
    // installation token which account it writes as (see forge::identity).
    forge
        .set_status(sha, STATUS, StatusState::Pending, "checking the reviewed plan…", None)
        .await
        .unwrap_or_else(|err| tracing::warn!("could not set the `{STATUS}` status: {err}"));
    match forge.find_reviewed_plan_id(sha, key).await? {
        Some(found) => {
            tracing::info!("applying plan {} reviewed on #{}", found.plan_id, found.pr);
            let reviewed = match found.record.as_deref().map(|json| Record::parse(json, &found.plan_id)) {
                Some(Ok(record)) => Reviewed::Record(record),
                Some(Err(reason)) => {
                    tracing::warn!(
                        "ignoring the reviewed-plan record of the plan comment on #{}: {reason}; comparing plan ids only",
                        found.pr
                    );
                    Reviewed::Id(found.plan_id)
                }
                None => Reviewed::Id(found.plan_id),
            };
            let shown = ShownComment { pr: found.pr, body: found.body, url: found.comment_url };
            Ok((reviewed, Some(found.pr), Some(shown)))
        }
        None => bail!(
            "no reviewed plan for commit `{sha}`: no merged pull request with a nixprox plan comment for `{key}` (a commit pushed straight to the branch has none); changes reach apply through a pull request, whose plan comment is the review: open one for this change and merge it, or review a plan yourself on the runner and apply it with `--reviewed-plan FILE` (docs/troubleshooting.md#no-reviewed-plan)"
        ),
    }
}

/// nixos-anywhere takes a flake reference plus `#host`; strip any attribute the user gave.
fn flake_for_install(flake: &str) -> String {
    flake.split('#').next().unwrap_or(flake).to_string()
}

/// The checked-out commit of a local flake, for the metadata block.
fn git_revision(flake: &str) -> Option<String> {
    let dir = flake.strip_prefix("path:").unwrap_or(flake);
    let dir = dir.split(['#', '?']).next().unwrap_or(dir);
    let output = std::process::Command::new("git").args(["-C", dir, "rev-parse", "HEAD"]).output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}
