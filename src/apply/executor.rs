//! Scheduling and the per-host step sequence.
//!
//! Hosts run concurrently within two bounds (settings `concurrency.hosts` and
//! `concurrency.per_node`, as semaphores), so ten hosts take about as long as the slowest
//! one. A host's actions run in order as steps; each step reads live state first and does only
//! what is missing, so a re-run after any failure converges without repeating work.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::params::{self, Scope, config_write};
use super::report::{ApplyReport, HostOutcome, HostReport, REPORT_VERSION, StepReport, StepStatus, millis};
use super::retry::{is_digest_conflict, is_vmid_taken, with_retries};
use super::vm::{self, StepError, vm_path};
use super::{ApplyError, ApplyRequest, DeployTarget, Deployed};
use crate::flake::DesiredHost;
use crate::flake::host::{Bootstrap, TemplateRef};
use crate::install::KEXEC_MIN_MEMORY_MIB;
use crate::metadata::{Block, Created, Metadata, Notes};
use crate::plan::{ActionKind, HostPlan};
use crate::proxmox::property::{
    Drive, PropertyString, format_net, format_new_disk, format_tags, parse_drive, parse_tags, value_bool,
    value_text,
};
use crate::proxmox::read::pending_keys;
use crate::proxmox::{ProxmoxError, find_template};
use crate::spec::{Bios, MANAGED_TAG, allocation_size, format_size};

/// Config writes retried after a digest conflict (someone else changed the VM in between).
const CAS_ATTEMPTS: usize = 4;
/// Clones retried with a fresh `/cluster/nextid` when the id was taken meanwhile.
const NEXTID_ATTEMPTS: usize = 5;

/// Carries out the plan's runnable actions and reports per host. Blocked actions never run.
pub async fn apply(request: ApplyRequest<'_>) -> Result<ApplyReport, ApplyError> {
    let started = Instant::now();
    let global = Arc::new(Semaphore::new(request.options.hosts.max(1)));
    let nodes: BTreeMap<&str, Arc<Semaphore>> = request
        .plan
        .hosts
        .iter()
        .map(|h| (h.vm.node.as_str(), Arc::new(Semaphore::new(request.options.per_node.max(1)))))
        .collect();
    let runs = request.plan.hosts.iter().map(|plan| {
        let global = Arc::clone(&global);
        let node = nodes.get(plan.vm.node.as_str()).cloned();
        async move {
            let _global = global.acquire_owned().await;
            let _node = match node {
                Some(node) => Some(node.acquire_owned().await),
                None => None,
            };
            let report = HostRun::new(request, plan).run().await;
            request.progress.host_finished(&report);
            report
        }
    });
    let hosts = futures::future::join_all(runs).await;
    Ok(ApplyReport {
        version: REPORT_VERSION,
        plan_id: request.plan.plan_id.clone(),
        reviewed_plan_id: (request.reviewed_plan_id != request.plan.plan_id)
            .then(|| request.reviewed_plan_id.to_string()),
        git_rev: request.git_rev.map(str::to_string),
        duration_ms: millis(started.elapsed()),
        hosts,
    })
}

/// How a step went, when it did not fail.
struct Done<T> {
    value: T,
    status: StepStatus,
    detail: Option<String>,
    warnings: Vec<String>,
}

fn done<T>(value: T, detail: impl Into<Option<String>>) -> Done<T> {
    Done { value, status: StepStatus::Ok, detail: detail.into(), warnings: Vec::new() }
}

fn already<T>(value: T, detail: impl Into<Option<String>>) -> Done<T> {
    Done { value, status: StepStatus::AlreadyDone, detail: detail.into(), warnings: Vec::new() }
}

/// A step that failed: where, and why.
struct Failure {
    step: String,
    error: String,
}

/// The steps of one host as they finish.
struct Log<'r> {
    progress: &'r super::Progress,
    host: &'r str,
    steps: Vec<StepReport>,
}

impl Log<'_> {
    /// Runs `body` as the step `name`: times it, reports progress, records the result.
    async fn step<T, F>(&mut self, name: &str, body: F) -> Result<T, Failure>
    where
        F: Future<Output = Result<Done<T>, StepError>>,
    {
        self.progress.step_started(self.host, name);
        let started = Instant::now();
        let result = body.await;
        let duration_ms = millis(started.elapsed());
        let (report, out) = match result {
            Ok(done) => (
                StepReport {
                    step: name.into(),
                    status: done.status,
                    duration_ms,
                    detail: done.detail,
                    warnings: done.warnings,
                },
                Ok(done.value),
            ),
            Err(err) => (
                StepReport {
                    step: name.into(),
                    status: StepStatus::Failed,
                    duration_ms,
                    detail: None,
                    warnings: Vec::new(),
                },
                Err(Failure { step: name.into(), error: err.to_string() }),
            ),
        };
        self.progress.step_finished(self.host, &report);
        self.steps.push(report);
        out
    }

    fn record(&mut self, name: &str, status: StepStatus, reason: &str) {
        let report = StepReport {
            step: name.into(),
            status,
            duration_ms: 0,
            detail: Some(reason.into()),
            warnings: Vec::new(),
        };
        self.progress.step_finished(self.host, &report);
        self.steps.push(report);
    }
}

/// What a host's run found out along the way.
#[derive(Default)]
struct State {
    node: String,
    vmid: Option<u32>,
    address: Option<String>,
    /// Keys waiting for a reboot nixprox was not allowed to do.
    pending_reboot: Vec<String>,
}

/// One host's run: the read-only context the steps share.
struct HostRun<'r> {
    req: ApplyRequest<'r>,
    plan: &'r HostPlan,
    desired: Option<&'r DesiredHost>,
}

impl<'r> HostRun<'r> {
    fn new(req: ApplyRequest<'r>, plan: &'r HostPlan) -> HostRun<'r> {
        let desired = if plan.orphan { None } else { req.desired.iter().find(|d| d.host == plan.host) };
        HostRun { req, plan, desired }
    }

    async fn run(self) -> HostReport {
        let started = Instant::now();
        let mut log = Log { progress: self.req.progress, host: &self.plan.host, steps: Vec::new() };
        let mut state =
            State { node: self.plan.vm.node.clone(), vmid: self.plan.vm.vmid, ..State::default() };
        let runnable: BTreeSet<ActionKind> = self
            .plan
            .actions
            .iter()
            .filter(|a| a.blocked.is_none() && a.kind != ActionKind::Noop)
            .map(|a| a.kind)
            .collect();
        let mut blocked_reasons = Vec::new();
        for action in &self.plan.actions {
            if let Some(blocked) = &action.blocked {
                blocked_reasons.push(format!("{} blocked: {}", action.kind.as_str(), blocked.reason));
                log.record(action.kind.as_str(), StepStatus::Blocked, &blocked.reason);
            }
        }
        let outcome = if runnable.is_empty() {
            if blocked_reasons.is_empty() {
                HostOutcome::Ok
            } else {
                HostOutcome::Skipped { reason: blocked_reasons.join("; ") }
            }
        } else {
            match self.execute(&runnable, &mut log, &mut state).await {
                Err(failure) => HostOutcome::Failed { step: failure.step, error: failure.error },
                Ok(()) if !state.pending_reboot.is_empty() => {
                    HostOutcome::PendingReboot { keys: std::mem::take(&mut state.pending_reboot) }
                }
                Ok(()) => {
                    // A host with any step left out (no deployer, a blocked action) is not
                    // "ok": the report must not claim more than was done.
                    let any_skipped = log
                        .steps
                        .iter()
                        .any(|s| matches!(s.status, StepStatus::Skipped | StepStatus::Blocked));
                    if any_skipped {
                        let reasons: BTreeSet<String> = log
                            .steps
                            .iter()
                            .filter(|s| matches!(s.status, StepStatus::Skipped | StepStatus::Blocked))
                            .filter_map(|s| s.detail.clone())
                            .collect();
                        HostOutcome::Skipped { reason: reasons.into_iter().collect::<Vec<_>>().join("; ") }
                    } else {
                        HostOutcome::Ok
                    }
                }
            }
        };
        HostReport {
            host: self.plan.host.clone(),
            node: state.node,
            vmid: state.vmid,
            outcome,
            address: state.address,
            duration_ms: millis(started.elapsed()),
            steps: log.steps,
        }
    }

    async fn execute(
        &self,
        runnable: &BTreeSet<ActionKind>,
        log: &mut Log<'_>,
        state: &mut State,
    ) -> Result<(), Failure> {
        let has = |kind: ActionKind| runnable.contains(&kind);
        let mut replaced = false;
        if has(ActionKind::DestroyVm) || has(ActionKind::ReplaceVm) {
            let vmid = state.vmid.ok_or_else(|| Failure {
                step: "destroy".into(),
                error: format!("the plan names no VM to destroy for `{}`", self.plan.host),
            })?;
            let node = state.node.clone();
            log.step("destroy", self.destroy(&node, vmid)).await?;
            if has(ActionKind::DestroyVm) {
                return Ok(());
            }
            replaced = true;
        }
        let Some(host) = self.desired else {
            return Err(Failure {
                step: "plan".into(),
                error: format!(
                    "host `{}` is not among the evaluated hosts (re-run the plan)",
                    self.plan.host
                ),
            });
        };
        let live =
            state.vmid.and_then(|vmid| self.req.live.iter().find(|vm| vm.vmid == vmid)).filter(|_| !replaced);
        // A VM this apply created but did not finish (crash, cancel, failure): the notes say
        // a plan was applying and nothing is installed yet. It gets the create's remaining
        // steps, cloud-init and start included.
        let resuming_create = live
            .and_then(|vm| vm.config.as_ref())
            .and_then(|c| c.metadata.as_ref())
            .is_some_and(|m| m.host == host.host && m.applying.is_some() && m.system.is_none());
        let creating = has(ActionKind::CreateVm) || has(ActionKind::ReplaceVm) || resuming_create;
        // The VM to create does not exist yet (a declared VMID is in the plan before it exists).
        if creating && live.is_none() {
            state.node = host.node.clone();
            let vmid = match &host.bootstrap {
                Bootstrap::Template { template, .. } => {
                    log.step("clone", self.clone_vm(host, template)).await?
                }
                Bootstrap::Iso { iso } => log.step("create", self.create_vm(host, iso)).await?,
            };
            state.vmid = Some(vmid);
        }
        let vmid = state.vmid.ok_or_else(|| Failure {
            step: "plan".into(),
            error: format!("the plan names no VM for host `{}` (re-run the plan)", host.host),
        })?;
        let node = state.node.clone();
        // nixos-anywhere's kexec image needs ~1.5 GiB: a smaller VM gets that much until the
        // install is done (configure keeps it), then its declared memory back.
        let kexec_memory = (has(ActionKind::Install) || has(ActionKind::Reinstall))
            && self.req.deployer.is_some()
            && host.spec.memory_mib < KEXEC_MIN_MEMORY_MIB;
        let mut configured = std::borrow::Cow::Borrowed(host);
        if kexec_memory {
            configured.to_mut().spec.memory_mib = KEXEC_MIN_MEMORY_MIB;
            let step = "raise memory for kexec";
            let waits = log.step(step, self.set_memory(&node, vmid, KEXEC_MIN_MEMORY_MIB, false)).await?;
            if waits && host.deploy.allow_reboot {
                log.step("reboot", self.reboot(&node, vmid)).await?;
            }
        }
        if creating || has(ActionKind::Adopt) || has(ActionKind::UpdateVm) {
            let scope = Scope { cloud_init: creating, firmware: creating };
            log.step("configure", self.configure(&configured, &node, vmid, scope)).await?;
        }
        if let Some(current) = self.planned_pool_change() {
            log.step("pool", self.pool(host, vmid, current)).await?;
        }
        if creating || has(ActionKind::ResizeDisk) {
            log.step("resize", self.resize(host, &node, vmid)).await?;
        }
        if creating {
            log.step("start", self.start(&node, vmid)).await?;
            state.address = Some(log.step("address", self.find_address(host, &node, vmid)).await?);
        } else if has(ActionKind::UpdateVm) {
            let pending = log.step("pending", self.pending(&node, vmid)).await?;
            if !pending.is_empty() {
                if host.deploy.allow_reboot {
                    log.step("reboot", self.reboot(&node, vmid)).await?;
                } else {
                    state.pending_reboot = pending;
                }
            }
        }
        let mut unfinished = false;
        let mut deployed: Option<Deployed> = None;
        for (kind, name) in [
            (ActionKind::Install, "install"),
            (ActionKind::Reinstall, "reinstall"),
            (ActionKind::Switch, "switch"),
        ] {
            if !has(kind) {
                continue;
            }
            let Some(deployer) = self.req.deployer else {
                unfinished = true;
                log.record(name, StepStatus::Skipped, "no deployer configured");
                continue;
            };
            if state.address.is_none() {
                state.address = Some(log.step("address", self.find_address(host, &node, vmid)).await?);
            }
            let address = state.address.clone().unwrap_or_default();
            let target = DeployTarget {
                host,
                node: &node,
                vmid,
                address: &address,
                plan_id: self.req.reviewed_plan_id,
            };
            let outcome = log
                .step(name, async {
                    let outcome = match kind {
                        ActionKind::Switch => deployer.switch(target).await,
                        _ => deployer.install(target).await,
                    };
                    outcome.map(|d| done(d, None)).map_err(|err| StepError::other(format!("{err:#}")))
                })
                .await?;
            deployed = Some(outcome);
        }
        if kexec_memory {
            let waits =
                log.step("restore memory", self.set_memory(&node, vmid, host.spec.memory_mib, true)).await?;
            if waits {
                if host.deploy.allow_reboot {
                    log.step("reboot", self.reboot(&node, vmid)).await?;
                } else if !state.pending_reboot.iter().any(|k| k == "memory") {
                    state.pending_reboot.push("memory".into());
                }
            }
        }
        // `applying` stays while install or switch is still owed, so the next run resumes.
        if !unfinished {
            log.step("finish", self.finish(host, &node, vmid, deployed.as_ref())).await?;
        }
        Ok(())
    }

    fn metadata_for(
        &self,
        host: &DesiredHost,
        vmid: u32,
        raw: &Map<String, Value>,
        applying: bool,
    ) -> Result<Metadata, StepError> {
        let notes = Notes::parse(&raw.get("description").and_then(value_text).unwrap_or_default());
        let mut metadata = match notes.block {
            Block::Current(metadata) => metadata,
            Block::Absent => Metadata::default(),
            Block::Unreadable { reason, .. } => {
                return Err(StepError::other(format!(
                    "the nixprox block in the notes of VM {vmid} cannot be read, so nixprox does not overwrite it: {reason}"
                )));
            }
        };
        metadata.host = host.host.clone();
        metadata.applying = applying.then(|| self.req.reviewed_plan_id.to_string());
        Ok(metadata)
    }

    /// The notes of a VM nixprox creates as `vmid`: the block names the host, the plan being
    /// applied, and that nixprox created this VM (the only ungated install the planner allows).
    fn first_notes(&self, host: &DesiredHost, vmid: u32) -> String {
        let plan = self.req.reviewed_plan_id.to_string();
        let metadata = Metadata {
            host: host.host.clone(),
            applying: Some(plan.clone()),
            created: Some(Created { vmid, plan }),
            ..Metadata::default()
        };
        params::notes(host, "", &metadata)
    }

    /// VMID (declared, or `/cluster/nextid` retried on the race), then a full clone whose
    /// `description` already names the host: the journal entry a re-run resumes from.
    async fn clone_vm(&self, host: &DesiredHost, template: &TemplateRef) -> Result<Done<u32>, StepError> {
        let client = self.req.client;
        let wanted = match template {
            TemplateRef::Id(id) => id.to_string(),
            TemplateRef::Name(name) => name.clone(),
        };
        let source = find_template(self.req.live, &wanted, Some(&host.node))
            .map_err(|e| StepError::other(e.to_string()))?;
        let storage = params::first_storage(host);
        let mut taken = Vec::new();
        for _ in 0..NEXTID_ATTEMPTS {
            let vmid = match host.vmid {
                Some(vmid) => vmid,
                None => vm::next_id(client).await?,
            };
            let mut form: Vec<(String, String)> = vec![
                ("newid".into(), vmid.to_string()),
                ("name".into(), host.spec.name.clone()),
                ("full".into(), "1".into()),
                ("storage".into(), storage.clone()),
                ("description".into(), self.first_notes(host, vmid)),
            ];
            if source.node != host.node {
                form.push(("target".into(), host.node.clone()));
            }
            if let Some(pool) = &host.spec.pool {
                form.push(("pool".into(), pool.clone()));
            }
            let path = format!("{}/clone", vm_path(&source.node, source.vmid));
            let result = with_retries(self.req.options.step_retry, "clone", || {
                vm::post_and_wait(client, &path, &form, self.req.options.task_timeout)
            })
            .await;
            match result {
                Ok(warnings) => {
                    let detail = format!("vmid {vmid} from template {} (`{}`)", source.vmid, source.name);
                    return Ok(Done { value: vmid, status: StepStatus::Ok, detail: Some(detail), warnings });
                }
                Err(err) if is_vmid_taken(&err) && host.vmid.is_none() => {
                    tracing::warn!(
                        "VMID {vmid} was taken before the clone of `{}` started; trying the next free one",
                        host.host
                    );
                    taken.push(vmid);
                }
                Err(err) => {
                    // A clone whose answer was lost may still have created the VM: a VM with
                    // our notes under that id is ours, and the next steps resume it.
                    if !err.not_executed()
                        && let Ok(Some(raw)) = vm::read_raw(client, &host.node, vmid).await
                        && Notes::parse(&raw.get("description").and_then(value_text).unwrap_or_default())
                            .metadata()
                            .is_some_and(|m| m.host == host.host)
                    {
                        return Ok(done(
                            vmid,
                            format!("vmid {vmid} (the clone's answer was lost; the VM is there)"),
                        ));
                    }
                    return Err(err.into());
                }
            }
        }
        Err(StepError::other(format!(
            "failed to clone template `{wanted}` for host `{}`: VMIDs {} were taken by other creates meanwhile (set `nixprox.vm.id`, or re-run)",
            host.host,
            taken.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        )))
    }

    /// A VM from scratch that boots the installer ISO; tags and notes are set at creation.
    async fn create_vm(&self, host: &DesiredHost, iso: &str) -> Result<Done<u32>, StepError> {
        let client = self.req.client;
        let spec = &host.spec;
        let mut taken = Vec::new();
        for _ in 0..NEXTID_ATTEMPTS {
            let vmid = match host.vmid {
                Some(vmid) => vmid,
                None => vm::next_id(client).await?,
            };
            let mut tags: BTreeSet<String> = spec.tags.iter().map(|t| t.to_lowercase()).collect();
            tags.insert(MANAGED_TAG.into());
            let mut form: Vec<(String, String)> = vec![
                ("vmid".into(), vmid.to_string()),
                ("name".into(), spec.name.clone()),
                ("description".into(), self.first_notes(host, vmid)),
                ("tags".into(), format_tags(&tags)),
                ("ostype".into(), "l26".into()),
                ("scsihw".into(), "virtio-scsi-single".into()),
                ("cores".into(), spec.cores.to_string()),
                ("sockets".into(), spec.sockets.to_string()),
                ("cpu".into(), spec.cpu_type.clone()),
                ("memory".into(), spec.memory_mib.to_string()),
                ("bios".into(), spec.bios.as_str().into()),
                ("agent".into(), if spec.agent { "1" } else { "0" }.into()),
                ("onboot".into(), if spec.on_boot { "1" } else { "0" }.into()),
                ("protection".into(), if spec.protection { "1" } else { "0" }.into()),
                ("ide2".into(), format!("{iso},media=cdrom")),
            ];
            if let Some(balloon) = spec.balloon_mib {
                form.push(("balloon".into(), balloon.to_string()));
            }
            if let Some(machine) = &spec.machine {
                form.push(("machine".into(), machine.clone()));
            }
            if spec.bios == Bios::Ovmf {
                form.push((
                    "efidisk0".into(),
                    format!("{}:1,efitype=4m,pre-enrolled-keys=0", params::first_storage(host)),
                ));
            }
            for (slot, disk) in &spec.disks {
                form.push((slot.clone(), format_new_disk(disk)));
            }
            for (slot, net) in &spec.networks {
                form.push((slot.clone(), format_net(net)));
            }
            let first_disk = spec.disks.keys().next().cloned();
            let boot: Vec<String> = first_disk.into_iter().chain(["ide2".to_string()]).collect();
            form.push(("boot".into(), format!("order={}", boot.join(";"))));
            if let Some(pool) = &spec.pool {
                form.push(("pool".into(), pool.clone()));
            }
            let path = format!("/nodes/{}/qemu", host.node);
            let result = with_retries(self.req.options.step_retry, "create", || {
                vm::post_and_wait(client, &path, &form, self.req.options.task_timeout)
            })
            .await;
            match result {
                Ok(warnings) => {
                    return Ok(Done {
                        value: vmid,
                        status: StepStatus::Ok,
                        detail: Some(format!("vmid {vmid}, booting `{iso}`")),
                        warnings,
                    });
                }
                Err(err) if is_vmid_taken(&err) && host.vmid.is_none() => taken.push(vmid),
                Err(err) => return Err(err.into()),
            }
        }
        Err(StepError::other(format!(
            "failed to create the VM of host `{}`: VMIDs {} were taken by other creates meanwhile (set `nixprox.vm.id`, or re-run)",
            host.host,
            taken.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        )))
    }

    /// Brings the config to the declaration with `POST …/config` and the digest just read
    /// (compare-and-swap); a conflict re-reads and recomputes. Every write carries the
    /// `nixprox` tag and the metadata block with `applying`.
    /// The VM's current pool when the plan's `update_vm` moves it (the `pool` change's
    /// `before`): the planner already read it, so no step lists the cluster again.
    fn planned_pool_change(&self) -> Option<Option<String>> {
        let change = self
            .plan
            .actions
            .iter()
            .filter(|a| a.kind == ActionKind::UpdateVm && a.blocked.is_none())
            .flat_map(|a| &a.changes)
            .find(|c| c.field == "pool")?;
        Some(change.before.as_ref().and_then(Value::as_str).map(str::to_string))
    }

    /// Moves an existing VM into the declared pool, or out of its pool (pool membership is
    /// not part of the VM config: `PUT /pools` with `allow-move`, or `delete`).
    async fn pool(
        &self,
        host: &DesiredHost,
        vmid: u32,
        current: Option<String>,
    ) -> Result<Done<()>, StepError> {
        let client = self.req.client;
        let vms = vmid.to_string();
        match (&host.spec.pool, &current) {
            (want, have) if want == have => Ok(already((), None)),
            (Some(want), _) => {
                let form = [("poolid", want.as_str()), ("vms", vms.as_str()), ("allow-move", "1")];
                with_retries(self.req.options.step_retry, "pool", || client.put("/pools", &form)).await?;
                Ok(done((), format!("into pool {want}")))
            }
            (None, Some(have)) => {
                let form = [("poolid", have.as_str()), ("vms", vms.as_str()), ("delete", "1")];
                with_retries(self.req.options.step_retry, "pool", || client.put("/pools", &form)).await?;
                Ok(done((), format!("out of pool {have}")))
            }
            (None, None) => Ok(already((), None)),
        }
    }

    async fn configure(
        &self,
        host: &DesiredHost,
        node: &str,
        vmid: u32,
        scope: Scope,
    ) -> Result<Done<()>, StepError> {
        let client = self.req.client;
        let path = format!("{}/config", vm_path(node, vmid));
        let mut conflicts = 0;
        for _ in 0..CAS_ATTEMPTS {
            let raw = vm::read_raw(client, node, vmid).await?.ok_or_else(|| {
                StepError::other(format!(
                    "VM {vmid} on node `{node}` disappeared while nixprox configured it"
                ))
            })?;
            let digest = raw.get("digest").and_then(value_text).unwrap_or_default();
            let metadata = self.metadata_for(host, vmid, &raw, true)?;
            let write = config_write(host, &raw, &metadata, scope);
            if write.is_empty() {
                return Ok(already((), None));
            }
            let form = write.form(&digest);
            let keys = write.keys().join(", ");
            let result = with_retries(self.req.options.step_retry, "configure", || {
                vm::post_and_wait(client, &path, &form, self.req.options.task_timeout)
            })
            .await;
            match result {
                Ok(warnings) => {
                    let detail = if conflicts > 0 {
                        format!("{keys}; after {conflicts} digest conflict(s): the VM changed meanwhile")
                    } else {
                        keys
                    };
                    return Ok(Done { value: (), status: StepStatus::Ok, detail: Some(detail), warnings });
                }
                Err(err) if is_digest_conflict(&err) => {
                    conflicts += 1;
                    tracing::warn!("the config of VM {vmid} changed since it was read; reading it again");
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(StepError::other(format!(
            "failed to update `{path}`: the config changed under nixprox {CAS_ATTEMPTS} times in a row (digest conflicts; is another tool editing VM {vmid}?)"
        )))
    }

    /// Grows every declared disk that is smaller than declared to its allocation (whole 4 MiB,
    /// see [`allocation_size`]), with an absolute size (so a repeated request is a no-op).
    /// Never shrinks.
    async fn resize(&self, host: &DesiredHost, node: &str, vmid: u32) -> Result<Done<()>, StepError> {
        let client = self.req.client;
        let gone = || {
            StepError::other(format!("VM {vmid} on node `{node}` disappeared before its disks were resized"))
        };
        let raw = vm::read_raw(client, node, vmid).await?.ok_or_else(gone)?;
        let recorded = |raw: &Map<String, Value>, slot: &str| match raw
            .get(slot)
            .and_then(value_text)
            .map(|v| parse_drive(&v))
        {
            Some(Drive::Disk(live)) => Some(live.size_bytes),
            _ => None,
        };
        let mut asked = Vec::new();
        let mut warnings = Vec::new();
        let path = format!("{}/resize", vm_path(node, vmid));
        for (slot, disk) in &host.spec.disks {
            let live = recorded(&raw, slot).ok_or_else(|| {
                StepError::other(format!("disk `{slot}` of VM {vmid} is missing after configure"))
            })?;
            if disk.size_bytes <= live {
                continue;
            }
            let size = format_size(allocation_size(disk.size_bytes));
            let result = with_retries(self.req.options.step_retry, "resize", || async {
                let data = client.put(&path, &[("disk", slot.as_str()), ("size", size.as_str())]).await?;
                vm::wait(client, &data, self.req.options.task_timeout).await
            })
            .await;
            match result {
                Ok(more) => warnings.extend(more),
                // qemu-server compares with the volume's real size: it holds more than that.
                Err(ProxmoxError::TaskFailed(failure))
                    if failure.exitstatus.contains("shrinking disks is not supported") => {}
                Err(err) => return Err(err.into()),
            }
            asked.push((slot, disk.size_bytes, live, size));
        }
        if asked.is_empty() {
            return Ok(already((), None));
        }
        // qemu-server keeps the recorded size when the volume already holds what was asked for
        // (a storage rounded an earlier size up): only a rescan on the node records the truth.
        let raw = vm::read_raw(client, node, vmid).await?.ok_or_else(gone)?;
        let mut grown = Vec::new();
        for (slot, declared, before, size) in asked {
            match recorded(&raw, slot) {
                Some(now) if now >= declared => grown.push(format!("{slot} {}→{}", format_size(before), format_size(now))),
                _ => warnings.push(format!(
                    "Proxmox kept the recorded size {} of disk `{slot}` of VM {vmid}: its volume already holds at least {size} (the storage rounded an earlier size up); `qm disk rescan --vmid {vmid}` on node `{node}` records it",
                    format_size(before)
                )),
            }
        }
        Ok(Done {
            value: (),
            status: StepStatus::Ok,
            detail: Some(grown.join(", ")).filter(|d| !d.is_empty()),
            warnings,
        })
    }

    /// Sets the VM's `memory` alone (compare-and-swap on the digest). The value says whether
    /// the VM keeps running with another amount until its next restart: a running VM takes a
    /// memory change as pending. `restore` only changes the wording of the warning.
    async fn set_memory(
        &self,
        node: &str,
        vmid: u32,
        mib: u64,
        restore: bool,
    ) -> Result<Done<bool>, StepError> {
        let client = self.req.client;
        let path = format!("{}/config", vm_path(node, vmid));
        for _ in 0..CAS_ATTEMPTS {
            let (current, pending) = self.memory_state(node, vmid).await?;
            // What the VM gets at its next start.
            if pending.unwrap_or(current) == mib {
                let waits = current != mib;
                let detail =
                    if waits { format!("{mib} MiB at the next restart") } else { format!("{mib} MiB") };
                return Ok(already(waits, detail));
            }
            let raw = vm::read_raw(client, node, vmid).await?.ok_or_else(|| {
                StepError::other(format!("VM {vmid} on node `{node}` disappeared before its memory was set"))
            })?;
            let digest = raw.get("digest").and_then(value_text).unwrap_or_default();
            // Writing the current value also drops another pending value (PVE's cleanup_pending).
            let form = vec![("memory".to_string(), mib.to_string()), ("digest".to_string(), digest)];
            let result = with_retries(self.req.options.step_retry, "memory", || {
                vm::post_and_wait(client, &path, &form, self.req.options.task_timeout)
            })
            .await;
            match result {
                Ok(mut warnings) => {
                    let waits = self.memory_state(node, vmid).await?.0 != mib;
                    let mut detail = format!("{} → {mib} MiB", pending.unwrap_or(current));
                    if waits {
                        detail.push_str(", at the next restart of the VM");
                        if !restore {
                            warnings.push(format!(
                                "VM {vmid} is running: the kexec installer gets {mib} MiB only after a restart (set `nixprox.deploy.allowReboot`, or restart it)"
                            ));
                        }
                    }
                    return Ok(Done { value: waits, status: StepStatus::Ok, detail: Some(detail), warnings });
                }
                Err(err) if is_digest_conflict(&err) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(StepError::other(format!(
            "failed to update `{path}`: the config kept changing (digest conflicts)"
        )))
    }

    /// The VM's memory now and the amount waiting for its next start, if any, from
    /// `…/pending` (which shows both, whatever `GET …/config` answers by default).
    async fn memory_state(&self, node: &str, vmid: u32) -> Result<(u64, Option<u64>), StepError> {
        let data = self.req.client.get(&format!("{}/pending", vm_path(node, vmid)), &[]).await?;
        let item = data.as_array().and_then(|items| items.iter().find(|i| i["key"] == "memory"));
        let mib = |value: &Value| {
            value_text(value).and_then(|text| {
                PropertyString::parse(&text)
                    .value_or_positional("current")
                    .and_then(|n| n.parse::<u64>().ok())
            })
        };
        // 512 MiB is qemu-server's default for an absent `memory`.
        let current = item.and_then(|i| i.get("value")).and_then(mib).unwrap_or(512);
        let pending = item.and_then(|i| i.get("pending")).and_then(mib);
        Ok((current, pending))
    }

    async fn start(&self, node: &str, vmid: u32) -> Result<Done<()>, StepError> {
        let client = self.req.client;
        if vm::power_state(client, node, vmid).await? == "running" {
            return Ok(already((), None));
        }
        let path = format!("{}/status/start", vm_path(node, vmid));
        let warnings = with_retries(self.req.options.step_retry, "start", || {
            vm::post_and_wait(client, &path, &[], self.req.options.task_timeout)
        })
        .await;
        match warnings {
            Ok(warnings) => Ok(Done { value: (), status: StepStatus::Ok, detail: None, warnings }),
            // A start whose answer was lost and that is now running has done its work.
            Err(err)
                if vm::power_state(client, node, vmid).await.is_ok_and(|s| s == "running")
                    && !err.not_executed() =>
            {
                Ok(done((), None))
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn find_address(
        &self,
        host: &DesiredHost,
        node: &str,
        vmid: u32,
    ) -> Result<Done<String>, StepError> {
        if let Some(address) = &host.address {
            return Ok(done(address.clone(), format!("{address}, static")));
        }
        if !host.spec.agent {
            return Err(StepError::other(format!(
                "host `{}` has no static address and its QEMU guest agent is off (set `nixprox.address` or `nixprox.vm.agent = true`)",
                host.host
            )));
        }
        let options = self.req.options;
        let address =
            vm::wait_for_address(self.req.client, node, vmid, options.address_timeout, options.poll_interval)
                .await?;
        Ok(done(address.clone(), format!("{address}, from the guest agent")))
    }

    async fn pending(&self, node: &str, vmid: u32) -> Result<Done<Vec<String>>, StepError> {
        let client = self.req.client;
        if vm::power_state(client, node, vmid).await? != "running" {
            return Ok(already(Vec::new(), Some("VM stopped: changes apply at its next start".to_string())));
        }
        let data = client.get(&format!("{}/pending", vm_path(node, vmid)), &[]).await?;
        let keys: Vec<String> = pending_keys(&data).map_err(StepError::other)?.into_iter().collect();
        let detail = if keys.is_empty() { "none".to_string() } else { keys.join(", ") };
        Ok(done(keys, detail))
    }

    async fn reboot(&self, node: &str, vmid: u32) -> Result<Done<()>, StepError> {
        let client = self.req.client;
        let timeout = self.req.options.shutdown_timeout.as_secs().to_string();
        let path = format!("{}/status/reboot", vm_path(node, vmid));
        let form = vec![("timeout".to_string(), timeout)];
        let warnings = with_retries(self.req.options.step_retry, "reboot", || {
            vm::post_and_wait(client, &path, &form, self.req.options.task_timeout)
        })
        .await?;
        Ok(Done {
            value: (),
            status: StepStatus::Ok,
            detail: Some("pending changes applied (deploy.allowReboot)".into()),
            warnings,
        })
    }

    /// Once everything of the host is done: records what was deployed and clears `applying`.
    async fn finish(
        &self,
        host: &DesiredHost,
        node: &str,
        vmid: u32,
        deployed: Option<&Deployed>,
    ) -> Result<Done<()>, StepError> {
        let client = self.req.client;
        let path = format!("{}/config", vm_path(node, vmid));
        for _ in 0..CAS_ATTEMPTS {
            let raw = vm::read_raw(client, node, vmid)
                .await?
                .ok_or_else(|| StepError::other(format!("VM {vmid} on node `{node}` disappeared")))?;
            let mut metadata = self.metadata_for(host, vmid, &raw, false)?;
            if let Some(deployed) = deployed {
                let fields = [
                    (&mut metadata.system, &deployed.system),
                    (&mut metadata.disk_layout, &deployed.disk_layout),
                    (&mut metadata.host_key, &deployed.host_key),
                    (&mut metadata.time, &deployed.time),
                ];
                for (field, value) in fields {
                    if value.is_some() {
                        field.clone_from(value);
                    }
                }
                if let Some(rev) = self.req.git_rev {
                    metadata.git_rev = Some(rev.to_string());
                }
            }
            if metadata.system.is_some() {
                // Installed: from now on only a gated reinstall may wipe it.
                metadata.created = None;
            }
            let current = raw.get("description").and_then(value_text).unwrap_or_default();
            let description = params::notes(host, &current, &metadata);
            let tags = raw.get("tags").and_then(value_text).map(|t| parse_tags(&t)).unwrap_or_default();
            if current == description && tags.contains(MANAGED_TAG) {
                return Ok(already((), None));
            }
            let mut all_tags = tags;
            all_tags.insert(MANAGED_TAG.into());
            let digest = raw.get("digest").and_then(value_text).unwrap_or_default();
            let form = vec![
                ("description".to_string(), description),
                ("tags".to_string(), format_tags(&all_tags)),
                ("digest".to_string(), digest),
            ];
            match vm::post_and_wait(client, &path, &form, self.req.options.task_timeout).await {
                Ok(warnings) => {
                    return Ok(Done {
                        value: (),
                        status: StepStatus::Ok,
                        detail: Some("metadata block updated".into()),
                        warnings,
                    });
                }
                Err(err) if is_digest_conflict(&err) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(StepError::other(format!(
            "failed to update `{path}`: the config kept changing (digest conflicts)"
        )))
    }

    /// Shutdown (bounded), stop, then `DELETE …?purge=1&destroy-unreferenced-disks=1`; only
    /// the VM the plan named, only while it still carries the `nixprox` tag, never a protected one.
    async fn destroy(&self, node: &str, vmid: u32) -> Result<Done<()>, StepError> {
        let expected_name = if self.plan.orphan { Some(self.plan.host.clone()) } else { None };
        let host_name = self.plan.host.as_str();
        {
            let client = self.req.client;
            let Some(raw) = vm::read_raw(client, node, vmid).await? else {
                return Ok(already((), Some(format!("VM {vmid} is already gone"))));
            };
            let tags = raw.get("tags").and_then(value_text).map(|t| parse_tags(&t)).unwrap_or_default();
            let name = raw.get("name").and_then(value_text).unwrap_or_default();
            let notes = Notes::parse(&raw.get("description").and_then(value_text).unwrap_or_default());
            if let Some(reason) = notes.unreadable() {
                return Err(StepError::other(format!(
                    "refusing to destroy VM {vmid} on node `{node}`: the nixprox block in its notes cannot be read ({reason})"
                )));
            }
            let recorded = notes.metadata().map(|m| m.host.clone());
            let same_vm = tags.contains(MANAGED_TAG)
                && match &expected_name {
                    Some(expected) => &name == expected,
                    None => recorded.as_deref().is_none_or(|h| h == host_name),
                };
            if !same_vm {
                return Err(StepError::other(format!(
                    "refusing to destroy VM {vmid} on node `{node}`: it is no longer the `nixprox`-tagged VM `{host_name}` the plan named (re-run the plan)"
                )));
            }
            if raw.get("protection").and_then(value_bool).unwrap_or(false) {
                return Err(StepError::other(format!(
                    "refusing to destroy VM {vmid} (`{name}`) on node `{node}`: it is protected (turn off its protection in Proxmox first)"
                )));
            }
            let mut warnings = Vec::new();
            let options = self.req.options;
            if vm::power_state(client, node, vmid).await? == "running" {
                let shutdown = vec![("timeout".to_string(), options.shutdown_timeout.as_secs().to_string())];
                let path = format!("{}/status/shutdown", vm_path(node, vmid));
                let wait = options.shutdown_timeout + std::time::Duration::from_secs(60);
                if let Err(err) = vm::post_and_wait(client, &path, &shutdown, wait).await {
                    tracing::warn!("VM {vmid} did not shut down cleanly ({err}); stopping it");
                    warnings.push(format!(
                        "shutdown did not finish, the VM was stopped: {}",
                        err.to_string().lines().next().unwrap_or_default()
                    ));
                }
                if vm::power_state(client, node, vmid).await? == "running" {
                    let path = format!("{}/status/stop", vm_path(node, vmid));
                    with_retries(options.step_retry, "stop", || {
                        vm::post_and_wait(client, &path, &[], options.task_timeout)
                    })
                    .await?;
                }
            }
            let path = vm_path(node, vmid);
            let result = with_retries(options.step_retry, "destroy", || async {
                let data =
                    client.delete(&path, &[("purge", "1"), ("destroy-unreferenced-disks", "1")]).await?;
                vm::wait(client, &data, options.task_timeout).await
            })
            .await;
            match result {
                Ok(more) => warnings.extend(more),
                Err(err) if vm::read_raw(client, node, vmid).await.is_ok_and(|r| r.is_none()) => {
                    tracing::warn!("destroy of VM {vmid} reported `{err}`, but the VM is gone");
                }
                Err(err) => return Err(err.into()),
            }
            Ok(Done {
                value: (),
                status: StepStatus::Ok,
                detail: Some(format!("VM {vmid} `{name}`")),
                warnings,
            })
        }
    }
}
