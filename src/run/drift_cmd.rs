//! `nixprox drift`: a scheduled plan that keeps one issue open while the cluster differs from
//! the flake (a change waiting for a VM's reboot included), and closes it when they agree again.

use crate::cli::DriftArgs;
use crate::forge::IssueOutcome;
use crate::render::{markdown, summary_line, text};

use super::{Outcome, publish};

pub async fn run(args: DriftArgs, color: bool) -> anyhow::Result<Outcome> {
    let context = publish::detect(&args.forge, args.issue)?;
    let forge = match (&context, args.issue) {
        (Some(context), true) => Some(publish::connect(context)?),
        (None, true) => {
            anyhow::bail!("--issue needs GitHub or Forgejo Actions, or `--forge`, `--repo` and `--api-url`")
        }
        _ => None,
    };
    let source = super::source::Source::from_args(&args.source)?;
    let planned = super::source::plan(&source, args.probe).await?;
    super::privileges::check_read(&planned, args.probe, context.is_some()).await?;
    let plan = &planned.plan;
    print!("{}", text::render(plan, text::TextOptions { color }));
    let md_context = publish::markdown_context(context.as_ref(), Some("drift".into()));
    if context.is_some() {
        publish::write_ci_files(plan, &md_context)?;
    }
    if let Some(forge) = &forge {
        let key = publish::marker_key(&args.source.flake, args.source.config.as_deref());
        // A change waiting for a reboot keeps the issue open: the VM does not run the flake yet.
        if plan.has_changes() || plan.has_pending() {
            let budget = crate::forge::comment::drift_body_budget(&key);
            let (body, _) = markdown::render_within(plan, &md_context, budget);
            let title = format!("nixprox: the cluster drifted from the flake ({})", summary_line(plan));
            match forge.upsert_drift_issue(&key, &title, &body).await? {
                IssueOutcome::Created { number, .. } => tracing::info!("opened drift issue #{number}"),
                IssueOutcome::Updated { number, .. } => tracing::info!("updated drift issue #{number}"),
                IssueOutcome::Reopened { number, .. } => tracing::info!("reopened drift issue #{number}"),
            }
        } else if let Some(number) = forge.close_drift_issue(&key).await? {
            tracing::info!("closed drift issue #{number}: the cluster matches the flake");
        }
    }
    let differs = plan.has_changes() || plan.has_pending();
    Ok(if args.detailed_exitcode && differs { Outcome::Changes } else { Outcome::Success })
}
