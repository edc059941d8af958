//! `nixprox apply`: find the reviewed plan, evaluate, apply through the executor with the SSH
//! deployer, and report (stdout, `--report`, the job summary, the merged pull request, the
//! `nixprox/apply` status).

use anyhow::{Context, bail};

use crate::apply::{
    self, ApplyOptions, NixosDeployer, Progress, ProgressMode, Reviewed, ReviewedPlan, RunRequest,
};
use crate::cli::ApplyArgs;
use crate::forge::{Forge, ForgeContext, StatusState};
use crate::install::SshDeployer;

use super::{Outcome, publish, source};

const STATUS: &str = "nixprox/apply";

pub async fn run(args: ApplyArgs) -> anyhow::Result<Outcome> {
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
    let (reviewed, pr) = reviewed_plan(&args, forge.as_ref(), sha.as_deref(), &key).await?;

    let settings = source::load_settings(&source)?;
    let client = source::proxmox_client(&settings)?;
    let evaluated = source::evaluate(&source, &settings).await?;
    let only = source.only();
    let deployer = match SshDeployer::client_key(&settings, &publish::env) {
        Some(key) => Some(
            SshDeployer::new(client.clone(), flake_for_install(&args.source.flake), key, &settings)
                .with_override_inputs(source.override_inputs.clone()),
        ),
        None => {
            tracing::warn!(
                "no SSH key configured (ssh.key, ssh.key_env or {}): install and switch steps will be skipped",
                crate::install::DEFAULT_KEY_ENV
            );
            None
        }
    };
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
        progress: &progress,
        options: ApplyOptions::from_settings(&settings),
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
    if let Some(path) = &args.report {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("failed to write the report to `{}`", path.display()))?;
    }
    if context.is_some() {
        publish::append_summary(&report.render_markdown())?;
    }
    if let Some(forge) = &forge {
        let state = if report.has_failures() { StatusState::Failure } else { StatusState::Success };
        publish::status(forge, sha.as_deref(), STATUS, state, &report.summary_line(), run_url(&context))
            .await;
        if let (true, Some(pr)) = (args.comment, pr)
            && let Err(err) = forge.post_comment(pr, &report.render_markdown()).await
        {
            tracing::warn!("could not post the apply report on #{pr}: {err}");
        }
    }
    Ok(if report.has_failures() { Outcome::HostsFailed } else { Outcome::Success })
}

fn run_url(context: &Option<ForgeContext>) -> Option<&str> {
    context.as_ref().and_then(|c| c.run_url.as_deref())
}

/// The reviewed plan: `--reviewed-plan`, `--plan-id`, or the plan comment of the pull request
/// that was merged into the pushed commit. Also returns that pull request's number.
async fn reviewed_plan(
    args: &ApplyArgs,
    forge: Option<&Forge>,
    sha: Option<&str>,
    key: &str,
) -> anyhow::Result<(Reviewed, Option<u64>)> {
    if let Some(path) = &args.reviewed_plan {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read the reviewed plan `{}`", path.display()))?;
        let plan = ReviewedPlan::parse(&text)
            .map_err(|err| anyhow::anyhow!("invalid reviewed plan `{}`: {err}", path.display()))?;
        return Ok((Reviewed::Plan(plan), None));
    }
    if let Some(id) = &args.plan_id {
        return Ok((Reviewed::Id(id.clone()), None));
    }
    let (Some(forge), Some(sha)) = (forge, sha) else {
        bail!(
            "apply needs the reviewed plan: pass --plan-id or --reviewed-plan, or run in CI on the push of a merged pull request that has nixprox's plan comment"
        );
    };
    match forge.find_reviewed_plan_id(sha, key).await? {
        Some(found) => {
            tracing::info!("applying plan {} reviewed on #{}", found.plan_id, found.pr);
            Ok((Reviewed::Id(found.plan_id), Some(found.pr)))
        }
        None => bail!(
            "no reviewed plan for commit `{sha}`: no merged pull request with a nixprox plan comment for `{key}` (pass --plan-id, or --allow-new-plan with --plan-id of the new plan)"
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
