//! `nixprox apply`: carries out an approved plan on Proxmox, host by host.
//!
//! [`approval`] decides whether the recomputed plan is the reviewed one; [`executor`] runs
//! the hosts concurrently (a global and a per-node bound) and each host's actions as ordered
//! steps: `create` makes a VM exactly once, `steps` changes an existing one, [`params`]
//! computes the config writes, and the Proxmox calls themselves live in
//! [`crate::proxmox::qemu`]. Transient failures are retried by [`crate::retry`]'s rule;
//! [`report`] and [`progress`] tell the user what happened; [`cancel`] stops a run at step
//! boundaries when asked (SIGINT/SIGTERM, wired by `run`).
//!
//! Resumable by construction: every step reads live state first and does only what is
//! missing; the first write that creates a VM already carries the metadata block naming the
//! host and `applying = <reviewed plan id>`, so a re-run finds its half-done VM, and the
//! approval accepts the changed plan as that run's unfinished work.

pub mod approval;
pub mod cancel;
mod container;
mod create;
pub mod executor;
mod image;
pub mod params;
pub mod progress;
pub mod release;
pub mod report;
mod step;
mod steps;
mod takeover;

use std::collections::BTreeSet;
use std::time::Duration;

use crate::config::Settings;
use crate::deploy::NixosDeployer;
use crate::flake::DesiredHost;
use crate::image::ImageBuild;
use crate::plan::{Plan, PlanInput};
use crate::proxmox::{Client, LiveVm, ProxmoxError, ReadRequest, read_cluster};
use crate::retry::RetryPolicy;

pub use approval::{Approval, Reviewed, ReviewedPlan, ReviewedPlanError, StalePlan};
pub use cancel::{Cancel, Signal};
pub use executor::apply;
pub use progress::{Progress, ProgressMode};
pub use report::{ApplyReport, HostOutcome, HostReport, StepReport, StepStatus};

/// Bounds and timeouts of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Hosts applied at once.
    pub hosts: usize,
    /// Hosts applied at once on one Proxmox node.
    pub per_node: usize,
    /// How long a new VM may take to report its address.
    pub address_timeout: Duration,
    /// How long a guest gets to shut down before it is stopped.
    pub shutdown_timeout: Duration,
    /// How long one Proxmox task (clone, start, …) may run.
    pub task_timeout: Duration,
    /// Step-level retries of transient task failures (locks, backups).
    pub step_retry: RetryPolicy,
    /// Interval between guest-agent polls.
    pub poll_interval: Duration,
    /// Image uploads at once, over all hosts.
    pub uploads: usize,
    /// How long building one image package may take.
    pub build_timeout: Duration,
}

impl ApplyOptions {
    pub fn from_settings(settings: &Settings) -> ApplyOptions {
        ApplyOptions {
            hosts: settings.concurrency.hosts.max(1),
            per_node: settings.concurrency.per_node.max(1),
            address_timeout: Duration::from_secs(settings.apply.address_timeout),
            shutdown_timeout: Duration::from_secs(settings.apply.shutdown_timeout),
            task_timeout: Duration::from_secs(1800),
            step_retry: RetryPolicy {
                retries: 6,
                base_delay: Duration::from_secs(2),
                max_delay: Duration::from_secs(30),
            },
            poll_interval: Duration::from_secs(2),
            uploads: settings.concurrency.uploads.max(1),
            build_timeout: Duration::from_secs(settings.install.timeout.max(1)),
        }
    }
}

/// Everything one executor run needs. The plan must already be approved.
#[derive(Debug, Clone, Copy)]
pub struct ApplyRequest<'a> {
    pub plan: &'a Plan,
    pub desired: &'a [DesiredHost],
    /// The cluster the plan was computed from (templates included).
    pub live: &'a [LiveVm],
    pub client: &'a Client,
    pub options: ApplyOptions,
    /// Recorded as `applying` in the metadata block while a host's steps run.
    pub reviewed_plan_id: &'a str,
    pub git_rev: Option<&'a str>,
    /// `None`: install, switch and reinstall steps are reported as skipped.
    pub deployer: Option<&'a dyn NixosDeployer>,
    /// How image hosts' packages are built (the flake, its inputs; the host is filled in per
    /// build). `None`: an image host's build step fails, naming the fix.
    pub image_build: Option<&'a ImageBuild>,
    pub progress: &'a Progress,
    /// Asked to stop (SIGINT, SIGTERM): no step starts after that (see [`cancel`]).
    pub cancel: &'a Cancel,
}

/// What stops a run before any host is touched.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Stale(#[from] StalePlan),
    #[error("failed to read the cluster before applying: {0}")]
    Read(#[source] ProxmoxError),
    /// The token lacks a privilege the plan's steps need (checked before any of them).
    #[error(transparent)]
    Privileges(#[from] crate::proxmox::permissions::MissingPrivileges),
    /// The cluster has lost quorum: every write would fail (checked before any of them).
    #[error(
        "the Proxmox cluster `{cluster}` has no quorum, so its configuration (/etc/pve) is read-only: every write would fail, and a destroy could free disks yet keep the VM; nothing was applied (check `pvecm status` on a node, bring enough nodes back online, then run apply again)"
    )]
    NoQuorum { cluster: String },
    /// What the reviewer was shown is not the plan apply would run (see [`ShownCheck`]).
    #[error("{0}")]
    NotShown(String),
    /// Containers are planned (the guest-kind seam) but not applied yet: refused before any
    /// step, so no host is half done.
    #[error(
        "{what} {hosts}: this nixprox applies a container's create, adoption, move to another node, settings, resize, switch, replacement, destroy and release, but not yet detaching a volume, so nothing was applied (apply the other hosts with `--hosts`, or leave those changes out of this pull request)"
    )]
    Containers { what: &'static str, hosts: String },
}

/// A check of what the reviewer was shown, beyond the plan's identity: the CLI passes one that
/// compares the sticky comment's visible text with the rendering of the plan apply is about to
/// run (`run::shown`), so a comment edited after the plan (its record kept) is refused. Made
/// after the approval and before any step; skipped with `--allow-new-plan`.
pub trait ShownCheck: std::fmt::Debug + Sync {
    /// `Err` with the difference, in words.
    fn check(&self, plan: &Plan, reviewed: &Reviewed) -> Result<(), String>;
}

/// The refusal of a plan whose containers have runnable actions, if it has any (see [`ApplyError::Containers`]).
fn container_refusal(plan: &Plan) -> Option<ApplyError> {
    let hosts: Vec<String> = plan
        .hosts
        .iter()
        .filter(|h| h.kind == crate::spec::GuestKind::Container)
        // Created (from a named template or its own), adopted, moved, configured, resized, switched and released
        // through the guest-kind seam (apply/container.rs); not yet detaching a volume.
        .filter(|h| {
            h.actions.iter().any(|a| {
                use crate::plan::ActionKind as K;
                a.blocked.is_none() && a.kind == K::DetachDisk
            })
        })
        .map(|h| format!("`{}`", h.host))
        .collect();
    let what = match hosts.len() {
        0 => return None,
        1 => "the container host with such changes is",
        _ => "the container hosts with such changes are",
    };
    Some(ApplyError::Containers { what, hosts: hosts.join(", ") })
}

/// The inputs of `nixprox apply` once the flake is evaluated: the CLI's thin entry point.
#[derive(Debug, Clone, Copy)]
pub struct RunRequest<'a> {
    pub client: &'a Client,
    pub settings: &'a Settings,
    pub desired: &'a [DesiredHost],
    /// `--hosts`.
    pub only: Option<&'a BTreeSet<String>>,
    /// `--plan-id` / the sticky comment's id, or `--reviewed-plan FILE`'s body.
    pub reviewed: &'a Reviewed,
    /// `--allow-new-plan`.
    pub allow_new_plan: bool,
    pub git_rev: Option<&'a str>,
    pub deployer: Option<&'a dyn NixosDeployer>,
    /// See [`ApplyRequest::image_build`].
    pub image_build: Option<&'a ImageBuild>,
    pub progress: &'a Progress,
    /// Usually [`ApplyOptions::from_settings`].
    pub options: ApplyOptions,
    /// Set by the caller when the run must stop (the CLI: on SIGINT/SIGTERM).
    pub cancel: &'a Cancel,
    /// What the reviewer was shown, when it can be checked (the sticky comment).
    pub shown: Option<&'a dyn ShownCheck>,
}

/// What a run did: the recomputed plan, why it was accepted, and the report.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub plan: Plan,
    pub approval: Approval,
    pub report: ApplyReport,
}

/// Reads the cluster, recomputes the plan, checks it against the reviewed one, and applies it.
pub async fn run(request: RunRequest<'_>) -> Result<RunOutcome, ApplyError> {
    let read = ReadRequest {
        host_names: request.desired.iter().map(|h| h.spec.name.clone()).collect(),
        concurrency: request.settings.concurrency.api,
    };
    let live = read_cluster(request.client, &read).await.map_err(ApplyError::Read)?;
    let input = PlanInput {
        desired: request.desired,
        live: &live,
        policies: request.settings.policies,
        only: request.only,
        probes: None,
    };
    let plan = plan_with_image_stores(request.client, input).await.map_err(ApplyError::Read)?;
    let approval = approval::check(request.reviewed, &plan, &live, request.allow_new_plan)?;
    for note in &approval.notes {
        tracing::warn!("{note}");
    }
    if let Some(refusal) = container_refusal(&plan) {
        return Err(refusal);
    }
    if let (Some(shown), false) = (request.shown, request.allow_new_plan) {
        shown.check(&plan, request.reviewed).map_err(ApplyError::NotShown)?;
    }
    check_quorum(request.client).await?;
    check_privileges(&request, &plan, &live).await?;
    let report = apply(ApplyRequest {
        plan: &plan,
        desired: request.desired,
        live: &live,
        client: request.client,
        options: request.options,
        reviewed_plan_id: &approval.reviewed_id,
        git_rev: request.git_rev,
        deployer: request.deployer,
        image_build: request.image_build,
        progress: request.progress,
        cancel: request.cancel,
    })
    .await?;
    Ok(RunOutcome { plan, approval, report })
}

/// Before any step: the cluster has quorum, or the run stops. When the status cannot be read
/// (no `Sys.Audit` on `/`, a standalone node, an error) the run goes on: without quorum, every
/// write fails at once with PVE's message (it is not retried).
async fn check_quorum(client: &Client) -> Result<(), ApplyError> {
    use crate::proxmox::cluster::{self, Quorum};
    match cluster::quorum(client).await {
        Ok(Quorum::Lost { cluster }) => Err(ApplyError::NoQuorum { cluster }),
        Ok(Quorum::Quorate | Quorum::Unknown) => Ok(()),
        Err(err) => {
            tracing::warn!("could not read the cluster's quorum ({err}); applying anyway");
            Ok(())
        }
    }
}

/// The plan, with what the image storages hold and allow when it (re)creates image hosts:
/// the planner is pure, so a first plan names the storages, they are read, and the plan is
/// made again with them. Plans without image hosts cost nothing more.
///
/// Hosts that pass devices through resource mappings get them checked too: the mappings are
/// read and a create or update whose mapping has no device on the VM's node is blocked.
pub async fn plan_with_image_stores(client: &Client, input: PlanInput<'_>) -> Result<Plan, ProxmoxError> {
    let first = crate::plan::plan(input);
    let stores = crate::plan::image_stores_to_read(&first, input.desired);
    let mut plan = if stores.is_empty() {
        first
    } else {
        let facts = crate::proxmox::import::read_image_stores(client, &stores).await?;
        crate::plan::plan_with_images(input, &facts)
    };
    let kinds = crate::plan::hardware::mappings_to_read(input.desired);
    if !kinds.is_empty() {
        let mappings = crate::proxmox::mapping::read_mappings(client, &kinds).await?;
        crate::plan::hardware::check_mappings(
            &mut plan,
            input.desired,
            input.live,
            input.policies,
            &mappings,
        );
    }
    Ok(plan)
}

/// Before any step: the token holds every privilege the runnable actions need, or the run
/// stops naming what is missing. An unanswered check is only logged (Proxmox still refuses
/// what the token may not do, step by step).
async fn check_privileges(request: &RunRequest<'_>, plan: &Plan, live: &[LiveVm]) -> Result<(), ApplyError> {
    use crate::proxmox::permissions::{self, MissingPrivileges};
    let granted = match permissions::fetch(request.client).await {
        Ok(granted) => granted,
        Err(err) => {
            tracing::warn!("could not check the token's privileges ({err}); applying anyway");
            return Ok(());
        }
    };
    let needs =
        crate::plan::privileges::needs_to_apply(plan, request.desired, live, request.deployer.is_some());
    let missing = permissions::missing(&granted, needs);
    if missing.is_empty() {
        return Ok(());
    }
    let token = request.client.token_id().to_string();
    let pve_major = if missing.iter().any(|n| n.is_agent()) {
        permissions::cluster_major(request.client).await
    } else {
        None
    };
    Err(MissingPrivileges { token, role: permissions::APPLY_ROLE, missing, pve_major }.into())
}
