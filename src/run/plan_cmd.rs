//! `nixprox plan`: plan, render, write, and choose the exit code.

use anyhow::Context;

use crate::cli::{Format, PlanArgs};
use crate::render::{json, markdown, text};

use super::Outcome;

pub async fn run(args: PlanArgs, color: bool) -> anyhow::Result<Outcome> {
    let planned = super::source::plan(&args.source).await?;
    let plan = &planned.plan;
    let started = std::time::Instant::now();
    let rendered = match args.format {
        Format::Text => text::render(plan, text::TextOptions { color: color && args.out.is_none() }),
        Format::Markdown => markdown::render(plan, &markdown::MarkdownContext::default()),
        Format::Json => json::render(plan),
    };
    tracing::debug!(us = started.elapsed().as_micros() as u64, "rendered the plan");
    match &args.out {
        Some(path) => std::fs::write(path, &rendered)
            .with_context(|| format!("failed to write the plan to `{}`", path.display()))?,
        None => print!("{rendered}"),
    }
    Ok(if args.detailed_exitcode && plan.has_changes() { Outcome::Changes } else { Outcome::Success })
}
