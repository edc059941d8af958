//! `nixprox plan`: plan (or plan one shard, or merge shards), render, write, report in CI, and
//! choose the exit code.

use std::path::Path;

use anyhow::{Context, bail};

use crate::cli::{Format, PlanArgs};
use crate::forge::{Forge, ForgeContext, StatusState};
use crate::plan::Plan;
use crate::render::{json, markdown, matrix, summary_line, text};

use super::changes;
use super::shard::{self, ShardSpec};
use super::source::Source;
use super::{Outcome, publish};

const STATUS: &str = "nixprox/plan";

pub async fn run(args: PlanArgs, color: bool) -> anyhow::Result<Outcome> {
    let mut source = Source::from_args(&args.source)?;
    if let Some(spec) = &args.shard {
        // A shard only reads the event for the pull request's base (it posts nothing).
        let context = publish::detect(&args.forge, false)?;
        let base = changes::base_spec(&args, context.as_ref());
        source.nixos_probes = base.is_some();
        return run_shard(&args, &source, ShardSpec::parse(spec)?, base.as_ref()).await;
    }
    let context = publish::detect(&args.forge, args.comment)?;
    let base = changes::base_spec(&args, context.as_ref());
    source.nixos_probes = base.is_some() && args.merge.is_empty();
    let forge = match (&context, args.comment) {
        (Some(context), true) => Some(publish::connect(context)?),
        (None, true) => anyhow::bail!(
            "--comment needs GitHub or Forgejo Actions, or `--forge`, `--repo`, `--api-url` and `--pr`"
        ),
        _ => None,
    };
    let sha = context.as_ref().and_then(|c| c.head_sha().map(str::to_string));
    let run_url = context.as_ref().and_then(|c| c.run_url.clone());
    if let Some(forge) = &forge {
        publish::status(forge, sha.as_deref(), STATUS, StatusState::Pending, "planning…", run_url.as_deref())
            .await;
    }
    let checked = async {
        let planned = if args.merge.is_empty() {
            changes::plan(&source, args.probe, base.as_ref()).await?
        } else {
            shard::merge(&source, &args.merge, base.is_some()).await?
        };
        super::privileges::check_read(&planned, args.probe, context.is_some()).await?;
        anyhow::Ok(planned)
    };
    let planned = match checked.await {
        Ok(planned) => planned,
        Err(err) => {
            if let Some(forge) = &forge {
                let text = format!("planning failed: {err:#}");
                publish::status(
                    forge,
                    sha.as_deref(),
                    STATUS,
                    StatusState::Failure,
                    &text,
                    run_url.as_deref(),
                )
                .await;
            }
            return Err(err);
        }
    };
    let plan = &planned.plan;

    let started = std::time::Instant::now();
    let md_context = publish::markdown_context(context.as_ref(), None);
    let rendered = match args.format {
        Format::Text => text::render(plan, text::TextOptions { color: color && args.out.is_none() }),
        Format::Markdown => markdown::render(plan, &md_context),
        Format::Json => json::render(plan),
        Format::Matrix => matrix::render(plan, args.shards),
    };
    let render_time = started.elapsed();
    write_out(args.out.as_deref(), &rendered)?;
    if let Some(path) = &args.timings {
        let timings = planned.timings.to_json(render_time);
        write_timings(path, timings, plan, &md_context, args.shards)?;
    }

    if context.is_some() {
        publish::write_ci_files(plan, &md_context)?;
    }
    if let (Some(forge), Some(context)) = (&forge, &context) {
        post_comment(&args, forge, context, plan, &md_context).await?;
        let state = StatusState::Success;
        publish::status(forge, sha.as_deref(), STATUS, state, &summary_line(plan), run_url.as_deref()).await;
    }
    Ok(if args.detailed_exitcode && plan.has_changes() { Outcome::Changes } else { Outcome::Success })
}

/// The sticky plan comment; failing to post it fails the run only with `--comment-required`.
async fn post_comment(
    args: &PlanArgs,
    forge: &Forge,
    context: &ForgeContext,
    plan: &Plan,
    md_context: &markdown::MarkdownContext,
) -> anyhow::Result<()> {
    let key = publish::marker_key(&args.source.flake, args.source.config.as_deref());
    let posted = match publish::plan_comment(forge, context, &key, plan, md_context).await {
        Ok(posted) => posted,
        Err(err) if !args.comment_required => {
            tracing::warn!("could not post the plan comment: {err:#}");
            false
        }
        Err(err) => return Err(err),
    };
    if !posted && args.comment_required {
        anyhow::bail!("the plan comment could not be posted and --comment-required is set");
    }
    Ok(())
}

/// `--timings FILE`: the phases' wall times, every rendering timed, the comment's size and the
/// peak memory, as JSON for the benchmark.
fn write_timings(
    path: &std::path::Path,
    mut timings: serde_json::Value,
    plan: &crate::plan::Plan,
    md_context: &markdown::MarkdownContext,
    shards: Option<usize>,
) -> anyhow::Result<()> {
    timings["render_formats_ms"] = render_every_format(plan, md_context, shards);
    let (comment, detail) = markdown::render_within(plan, md_context, markdown::COMMENT_LIMIT);
    timings["comment_chars"] = comment.chars().count().into();
    timings["comment_detail"] = format!("{detail:?}").into();
    if let Some(kib) = peak_rss_kib() {
        timings["peak_rss_kib"] = kib.into();
    }
    std::fs::write(path, format!("{timings:#}\n"))
        .with_context(|| format!("failed to write the timings to `{}`", path.display()))
}

/// `--shard I/N`: writes the shard file for `--merge` (always JSON) and the timings.
async fn run_shard(
    args: &PlanArgs,
    source: &Source,
    spec: ShardSpec,
    base: Option<&crate::flake::base::BaseSpec>,
) -> anyhow::Result<Outcome> {
    if args.format != Format::Json {
        bail!("`--shard` writes a shard file for `plan --merge`, which is JSON: add `--format json`");
    }
    let (file, timings) = shard::plan_shard(source, spec, base).await?;
    let started = std::time::Instant::now();
    let rendered = format!("{}\n", serde_json::to_string(&file).context("failed to serialise the shard")?);
    let render_time = started.elapsed();
    write_out(args.out.as_deref(), &rendered)?;
    if let Some(path) = &args.timings {
        let mut timings = timings.to_json(render_time);
        if let Some(kib) = peak_rss_kib() {
            timings["peak_rss_kib"] = kib.into();
        }
        std::fs::write(path, format!("{timings:#}\n"))
            .with_context(|| format!("failed to write the timings to `{}`", path.display()))?;
    }
    tracing::info!(
        "wrote shard {} of {}: {} hosts, the VMs of {} node(s)",
        spec.index,
        spec.count,
        file.hosts.len(),
        file.nodes.len()
    );
    Ok(Outcome::Success)
}

/// The rendering to `--out`, or stdout.
fn write_out(out: Option<&Path>, rendered: &str) -> anyhow::Result<()> {
    match out {
        Some(path) => std::fs::write(path, rendered)
            .with_context(|| format!("failed to write the plan to `{}`", path.display())),
        None => {
            print!("{rendered}");
            Ok(())
        }
    }
}

/// With `--timings`, every rendering is timed (the benchmark reports them all from one run);
/// the outputs are thrown away.
fn render_every_format(
    plan: &crate::plan::Plan,
    context: &markdown::MarkdownContext,
    shards: Option<usize>,
) -> serde_json::Value {
    let time = |render: &dyn Fn() -> String| {
        let started = std::time::Instant::now();
        let text = render();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        std::hint::black_box(text);
        serde_json::json!(ms)
    };
    serde_json::json!({
        "text": time(&|| text::render(plan, text::TextOptions { color: false })),
        "markdown": time(&|| markdown::render(plan, context)),
        "comment": time(&|| markdown::render_within(plan, context, markdown::COMMENT_LIMIT).0),
        "json": time(&|| json::render(plan)),
        "matrix": time(&|| matrix::render(plan, shards)),
    })
}

/// The process's peak resident set (`VmHWM`), on Linux; for `--timings`.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
