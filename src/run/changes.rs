//! The plan's NixOS changes: which base to compare with (`--base`, else the pull request's base
//! commit in CI), the base's probes for the hosts whose system changes, and the comparison with
//! the head's probes, attached to each of those hosts' plan. Never an error: whatever cannot be
//! compared says why in one line.

use std::collections::BTreeMap;

use crate::cli::PlanArgs;
use crate::flake::base::{self, BaseSpec};
use crate::flake::probes::{BaseProbed, BaseRequest, Probed, evaluate_base};
use crate::forge::{Event, ForgeContext};
use crate::nixos_changes::{BaseProbes, HeadProbes, NixosChanges, changes_for};
use crate::plan::{ActionKind, HostPlan};

use super::source::{Planned, eval_request};

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

/// Whether the host's NixOS system changes: the hosts worth comparing with the base.
fn system_changes(host: &HostPlan) -> bool {
    !host.orphan
        && host
            .actions
            .iter()
            .any(|a| matches!(a.kind, ActionKind::Switch | ActionKind::Install | ActionKind::Reinstall))
}

/// Compares the changed hosts of `planned` with the base and attaches the result to them.
pub async fn attach(planned: &mut Planned, spec: &BaseSpec, args: &PlanArgs) -> anyhow::Result<()> {
    let hosts: Vec<String> =
        planned.plan.hosts.iter().filter(|h| system_changes(h)).map(|h| h.host.clone()).collect();
    if hosts.is_empty() {
        return Ok(());
    }
    let local = base::local_flake_dir(&args.source.flake);
    let base = match base::resolve(spec, local.as_deref()).await {
        Ok(base) => base,
        Err(reason) => {
            tracing::warn!("not comparing NixOS configurations with the base: {reason}");
            for host in planned.plan.hosts.iter_mut().filter(|h| system_changes(h)) {
                host.nixos_changes = Some(NixosChanges::Unavailable { reason: reason.clone() });
            }
            return Ok(());
        }
    };
    // A host whose probes failed at the head has nothing to compare the base with.
    let evaluated: Vec<String> = hosts
        .iter()
        .filter(|h| matches!(planned.head_probes.get(*h), Some(Probed::Evaluated(_))))
        .cloned()
        .collect();
    let request = eval_request(&args.source, &planned.settings)?;
    let base_request = BaseRequest {
        nix: request.nix.clone(),
        flake: base.flake_ref.clone(),
        override_inputs: request.override_inputs.clone(),
        jobs: request.jobs(),
        batch: request.batch_size(evaluated.len()),
    };
    let at_base = evaluate_base(&base_request, &evaluated).await;
    for host in planned.plan.hosts.iter_mut().filter(|h| system_changes(h)) {
        host.nixos_changes = Some(compare(&planned.head_probes, &at_base, &host.host, &base.label));
    }
    tracing::info!(hosts = hosts.len(), "compared the NixOS configurations with the base `{}`", base.label);
    Ok(())
}

fn compare(
    head: &BTreeMap<String, Probed>,
    at_base: &BTreeMap<String, BaseProbed>,
    host: &str,
    label: &str,
) -> NixosChanges {
    let failed;
    let base = match at_base.get(host) {
        Some(BaseProbed::Evaluated(value)) => BaseProbes::Evaluated(value),
        Some(BaseProbed::NotInBase) => BaseProbes::NotInBase,
        Some(BaseProbed::Failed(message)) => {
            failed = format!("the base `{label}` could not be evaluated: {message}");
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
