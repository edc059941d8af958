//! The plan's NixOS changes: which base to compare with (`--base`, else the pull request's base
//! commit in CI), the base's probes, and the comparison with the head's probes (which rode
//! along with the plan's own evaluation), attached to every host whose system changes. Never
//! an error: whatever cannot be compared says why in one line.
//!
//! The base is resolved and fetched while the head is evaluated; it is evaluated afterwards,
//! with the same workers and `eval.max_memory` (one after the other, so the bound holds), and
//! only for the hosts whose system changes (docs/performance.md).

use std::collections::BTreeMap;

use crate::cli::PlanArgs;
use crate::flake::Hosts;
use crate::flake::base::{self, Base, BaseSpec};
use crate::flake::probes::{BaseProbed, Probed, evaluate_base};
use crate::flake::{EvalRequest, Nix, OverrideInput};
use crate::forge::{Event, ForgeContext};
use crate::nixos_changes::{BaseProbes, HeadProbes, NixosChanges, changes_for};
use crate::plan::{ActionKind, HostPlan, Plan};

use super::source::{self, Planned, Source};

/// Plans (`source::plan`) and, with a base, compares every host whose system changes with it:
/// the base is resolved and fetched while the head is evaluated, and evaluated after planning.
pub async fn plan(source: &Source, probe: bool, base: Option<&BaseSpec>) -> anyhow::Result<Planned> {
    let Some(spec) = base else { return source::plan(source, probe).await };
    let prepared = prepare(spec, &source.flake, &source.override_inputs);
    let (mut planned, prepared, _) = source::overlap(source::plan(source, probe), prepared).await?;
    let started = std::time::Instant::now();
    let at_base = match prepared {
        Ok(base) => {
            let like = source.eval_request(&planned.settings, Hosts::All);
            let hosts = changed_hosts(&planned.plan);
            Ok(evaluate_at_base(&like, &base, &hosts, &planned.head_probes).await)
        }
        Err(reason) => Err(reason),
    };
    attach(&mut planned.plan, &planned.head_probes, &at_base);
    planned.timings.nixos_changes = Some(started.elapsed());
    Ok(planned)
}

/// The base to compare with, if any: `--no-base` turns it off, `--base` wins over the event.
pub fn base_spec(args: &PlanArgs, context: Option<&ForgeContext>) -> Option<BaseSpec> {
    if args.no_base {
        return None;
    }
    if let Some(text) = &args.base {
        return Some(BaseSpec::parse(text));
    }
    match &context?.event {
        Event::PullRequest(pr) => pr.base_sha.as_deref().map(|sha| BaseSpec::Revision(sha.to_string())),
        _ => None,
    }
}

/// Resolves the base and fetches it (`nix flake metadata`, which copies and locks it), so its
/// evaluation does not pay for the fetch: meant to run beside the head's evaluation. The error
/// is the one line every compared host shows.
pub async fn prepare(
    spec: &BaseSpec,
    flake: &str,
    override_inputs: &[OverrideInput],
) -> Result<Base, String> {
    let local = base::local_flake_dir(flake);
    let base = base::resolve(spec, local.as_deref()).await?;
    let fetched = Nix::default()
        .flake_metadata(base.flake_ref.clone())
        .override_inputs(override_inputs)
        .run_json::<serde_json::Value>()
        .await;
    if let Err(err) = fetched {
        let message = err.nix_message().map_or_else(|| err.to_string(), str::to_string);
        return Err(format!("the base `{}` could not be fetched: {message}", base.label));
    }
    Ok(base)
}

/// Whether the host's NixOS system changes: the hosts worth comparing with the base.
pub fn system_changes(host: &HostPlan) -> bool {
    !host.orphan
        && host
            .actions
            .iter()
            .any(|a| matches!(a.kind, ActionKind::Switch | ActionKind::Install | ActionKind::Reinstall))
}

/// The base's probes of the hosts a comparison needs.
#[derive(Debug, Clone)]
pub struct AtBase {
    /// How summaries name the base.
    pub label: String,
    pub probes: BTreeMap<String, BaseProbed>,
}

/// Evaluates the probes of `hosts` at `base` (only those whose head probes evaluated: the
/// others have nothing to compare with), as `like` evaluates the head.
pub async fn evaluate_at_base(
    like: &EvalRequest,
    base: &Base,
    hosts: &[String],
    head: &BTreeMap<String, Probed>,
) -> AtBase {
    let evaluated: Vec<String> =
        hosts.iter().filter(|h| matches!(head.get(*h), Some(Probed::Evaluated(_)))).cloned().collect();
    let probes = evaluate_base(like, &base.flake_ref, &evaluated).await;
    AtBase { label: base.label.clone(), probes }
}

/// The hosts of `plan` whose system changes.
pub fn changed_hosts(plan: &Plan) -> Vec<String> {
    plan.hosts.iter().filter(|h| system_changes(h)).map(|h| h.host.clone()).collect()
}

/// Attaches the comparison to every host of `plan` whose system changes: against `base`, or
/// the one-line reason it is unavailable.
pub fn attach(plan: &mut Plan, head: &BTreeMap<String, Probed>, base: &Result<AtBase, String>) {
    let mut compared = 0;
    for host in plan.hosts.iter_mut().filter(|h| system_changes(h)) {
        host.nixos_changes = Some(match base {
            Ok(base) => compare(head, base, &host.host),
            Err(reason) => NixosChanges::Unavailable { reason: reason.clone() },
        });
        compared += 1;
    }
    match base {
        Ok(base) if compared > 0 => {
            tracing::info!(
                hosts = compared,
                "compared the NixOS configurations with the base `{}`",
                base.label
            );
        }
        Err(reason) if compared > 0 => {
            tracing::warn!("not comparing NixOS configurations with the base: {reason}");
        }
        _ => {}
    }
}

fn compare(head: &BTreeMap<String, Probed>, at_base: &AtBase, host: &str) -> NixosChanges {
    let failed;
    let base = match at_base.probes.get(host) {
        Some(BaseProbed::Evaluated(value)) => BaseProbes::Evaluated(value),
        Some(BaseProbed::NotInBase) => BaseProbes::NotInBase,
        Some(BaseProbed::Failed(message)) => {
            failed = format!("the base `{}` could not be evaluated: {message}", at_base.label);
            BaseProbes::Unavailable(&failed)
        }
        None => BaseProbes::Unavailable("the base was not evaluated for this host"),
    };
    match head.get(host) {
        Some(Probed::Evaluated(value)) => changes_for(HeadProbes::Evaluated(value), base),
        Some(Probed::Failed(message)) => changes_for(HeadProbes::Failed(message), base),
        None => NixosChanges::Unavailable { reason: "the head's probes were not evaluated".into() },
    }
}
