//! Scheduling and the per-host step sequence.
//!
//! Hosts run concurrently within two bounds (settings `concurrency.hosts` and
//! `concurrency.per_node`, as semaphores), so ten hosts take about as long as the slowest
//! one. A host's runnable actions become steps in three phases: destroy (an orphan, or the VM
//! a replacement removes), provision (create or adopt, configure, pool, resize, then start or
//! a reboot for pending changes) and deploy (install, reinstall or switch through the
//! [`NixosDeployer`](crate::deploy::NixosDeployer), then `finish` records the metadata
//! block). Each step reads live state first and does only what is missing, so a re-run after
//! any failure converges without repeating work. The steps themselves are in
//! [`super::steps`] and [`super::create`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use super::image::{ImageWork, Imports};
use super::params::{Detach, Scope};
use super::report::{ApplyReport, HostOutcome, HostReport, REPORT_VERSION, StepStatus, millis};
use super::step::{Done, Failure, Log, StepError};
use super::{ApplyError, ApplyRequest};
use crate::deploy::{DeployTarget, Deployed};
use crate::flake::DesiredHost;
use crate::flake::host::Bootstrap;
use crate::plan::{ActionKind, HostPlan};
use crate::proxmox::vmid::VmidAllocator;
use crate::spec::KEXEC_MIN_MEMORY_MIB;

/// Carries out the plan's runnable actions and reports per host. Blocked actions never run.
pub async fn apply(request: ApplyRequest<'_>) -> Result<ApplyReport, ApplyError> {
    let started = Instant::now();
    let vmids = VmidAllocator::new();
    let images = ImageWork::new(request.options.uploads);
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
        let (vmids, images) = (&vmids, &images);
        async move {
            let _global = global.acquire_owned().await;
            let _node = match node {
                Some(node) => Some(node.acquire_owned().await),
                None => None,
            };
            let report = HostRun::new(request, plan, vmids, images).run().await;
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
        cancelled_by: request.cancel.requested().map(|signal| signal.name().to_string()),
        hosts,
    })
}

/// The kinds of the host's actions that will run (neither blocked nor `noop`).
pub(super) struct Runnable(BTreeSet<ActionKind>);

impl Runnable {
    fn of(plan: &HostPlan) -> Runnable {
        Runnable(
            plan.actions
                .iter()
                .filter(|a| a.blocked.is_none() && a.kind != ActionKind::Noop)
                .map(|a| a.kind)
                .collect(),
        )
    }

    pub(super) fn has(&self, kind: ActionKind) -> bool {
        self.0.contains(&kind)
    }
}

/// What a host's run found out along the way.
#[derive(Default)]
pub(super) struct State {
    pub(super) node: String,
    pub(super) vmid: Option<u32>,
    pub(super) address: Option<String>,
    /// Keys waiting for a reboot nixprox was not allowed to do.
    pub(super) pending_reboot: Vec<String>,
    /// Pending changes whose allowed reboot waits for the switch, so that a switch that
    /// needs one too reboots the VM once.
    deferred_reboot: Vec<String>,
    /// The system an adopted VM was found running (its switch is a no-op when it is the
    /// flake's).
    running: Option<String>,
    /// An image host's import volumes, by disk, once uploaded.
    imports: Option<Imports>,
}

/// The VM the provision phase left for the deploy phase.
struct Provisioned {
    node: String,
    vmid: u32,
    /// The memory was raised for nixos-anywhere's kexec image and must be restored.
    kexec_memory: bool,
    /// An image host's VM that booted from its image and was not checked yet.
    image_boot: bool,
}

/// One host's run: the read-only context the steps share.
pub(super) struct HostRun<'r> {
    pub req: ApplyRequest<'r>,
    pub plan: &'r HostPlan,
    /// The run's VMIDs for new VMs, shared by all hosts.
    pub vmids: &'r VmidAllocator,
    /// The run's image builds and uploads, shared by all hosts.
    pub images: &'r ImageWork,
    desired: Option<&'r DesiredHost>,
}

impl<'r> HostRun<'r> {
    /// What the deployer gets for one step on the VM: `recorded` is its notes' block as read
    /// just before the step (`None`: no readable block).
    pub(super) fn deploy_target<'a>(
        &'a self,
        host: &'a DesiredHost,
        node: &'a str,
        vmid: u32,
        address: &'a str,
        recorded: Option<&'a crate::metadata::Metadata>,
    ) -> DeployTarget<'a> {
        DeployTarget { host, node, vmid, address, plan_id: self.req.reviewed_plan_id, recorded }
    }

    fn new(
        req: ApplyRequest<'r>,
        plan: &'r HostPlan,
        vmids: &'r VmidAllocator,
        images: &'r ImageWork,
    ) -> HostRun<'r> {
        let desired = if plan.orphan { None } else { req.desired.iter().find(|d| d.host == plan.host) };
        HostRun { req, plan, vmids, images, desired }
    }

    async fn run(self) -> HostReport {
        let started = Instant::now();
        let mut log = Log {
            progress: self.req.progress,
            cancel: self.req.cancel,
            host: &self.plan.host,
            steps: Vec::new(),
        };
        let mut state =
            State { node: self.plan.vm.node.clone(), vmid: self.plan.vm.vmid, ..State::default() };
        let runnable = Runnable::of(self.plan);
        let mut blocked_reasons = Vec::new();
        for action in &self.plan.actions {
            if let Some(blocked) = &action.blocked {
                blocked_reasons.push(format!("{} blocked: {}", action.kind.as_str(), blocked.reason));
                log.record(action.kind.as_str(), StepStatus::Blocked, &blocked.reason);
            }
        }
        let outcome = if runnable.0.is_empty() {
            if blocked_reasons.is_empty() {
                HostOutcome::Ok
            } else {
                HostOutcome::Skipped { reason: blocked_reasons.join("; ") }
            }
        } else {
            match self.execute(&runnable, &mut log, &mut state).await {
                Err(failure) if failure.cancelled => {
                    // What the plan still owed and never reached: shown, so nobody mistakes
                    // a cancelled host for a finished one.
                    for kind in [ActionKind::Install, ActionKind::Reinstall, ActionKind::Switch] {
                        if runnable.has(kind) && !log.steps.iter().any(|s| s.step == kind.as_str()) {
                            log.record(
                                kind.as_str(),
                                StepStatus::Cancelled,
                                "not started: apply was cancelled",
                            );
                        }
                    }
                    HostOutcome::Cancelled { step: failure.step, reason: failure.error }
                }
                Err(failure) => HostOutcome::Failed { step: failure.step, error: failure.error },
                Ok(()) if !state.pending_reboot.is_empty() => {
                    HostOutcome::PendingReboot { keys: std::mem::take(&mut state.pending_reboot) }
                }
                // A host with any step left out (no deployer, a blocked action) is not "ok":
                // the report must not claim more than was done.
                Ok(()) => match log.left_out() {
                    Some(reason) => HostOutcome::Skipped { reason },
                    None => HostOutcome::Ok,
                },
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
        runnable: &Runnable,
        log: &mut Log<'_>,
        state: &mut State,
    ) -> Result<(), Failure> {
        if runnable.has(ActionKind::Release) {
            let vmid = state.vmid.ok_or_else(|| {
                Failure::new("release", format!("the plan names no VM to release for `{}`", self.plan.host))
            })?;
            let node = state.node.clone();
            log.step("release", self.release(&node, vmid)).await?;
            return Ok(());
        }
        let mut replaced = false;
        // An image is built and uploaded before anything is destroyed or created.
        if runnable.has(ActionKind::UploadImage)
            && let Some(host) = self.desired
            && let Bootstrap::Image(source) = &host.bootstrap
        {
            let built = log.step("build", self.build(host, source)).await?;
            state.imports = Some(log.step("upload", self.upload(host, source, &built)).await?);
        }
        if runnable.has(ActionKind::DestroyVm) || runnable.has(ActionKind::ReplaceVm) {
            let vmid = state.vmid.ok_or_else(|| {
                Failure::new("destroy", format!("the plan names no VM to destroy for `{}`", self.plan.host))
            })?;
            let node = state.node.clone();
            log.step("destroy", self.destroy(&node, vmid)).await?;
            if runnable.has(ActionKind::DestroyVm) {
                return Ok(());
            }
            replaced = true;
        }
        let Some(host) = self.desired else {
            let error =
                format!("host `{}` is not among the evaluated hosts (re-run the plan)", self.plan.host);
            return Err(Failure::new("plan", error));
        };
        if self.plan.kind == crate::spec::GuestKind::Container {
            // The guest-kind seam: a container's steps (apply/container.rs).
            return self.execute_container(host, runnable, log, state).await;
        }
        if runnable.has(ActionKind::Adopt) && !replaced && self.req.deployer.is_none() {
            // Adopting in place starts by reading what the VM runs over SSH: without a key,
            // nothing of the host is done (not even its tag), and the next run adopts it.
            log.record(
                "adopt",
                StepStatus::Skipped,
                "no SSH key configured: nixprox adopts a VM in place only after reading the system it runs over SSH",
            );
            return Ok(());
        }
        let vm = self.provision(host, runnable, replaced, log, state).await?;
        self.deploy(host, runnable, &vm, log, state).await
    }

    /// Before anything else changes an existing VM: its adoption (which checks what runs on
    /// it and writes nothing otherwise), then its move to the declared node.
    async fn take_over(
        &self,
        host: &DesiredHost,
        runnable: &Runnable,
        vmid: u32,
        log: &mut Log<'_>,
        state: &mut State,
    ) -> Result<(), Failure> {
        if runnable.has(ActionKind::Adopt) {
            let node = state.node.clone();
            // Adopted with a reinstall: a VM that does not run NixOS, converted.
            let adopted = if runnable.has(ActionKind::Reinstall) {
                log.step("adopt", self.adopt_for_conversion(host, &node, vmid)).await?
            } else {
                log.step("adopt", self.adopt(host, &node, vmid)).await?
            };
            state.address = Some(adopted.address);
            state.running = adopted.system;
        }
        if runnable.has(ActionKind::MigrateVm) {
            let node = state.node.clone();
            log.step("migrate", self.migrate(host, &node, vmid, &host.node)).await?;
            state.node = host.node.clone();
        }
        Ok(())
    }

    /// Creates the VM when it is missing, then brings its settings, pool and disks to the
    /// declaration, and starts it (a new VM) or applies its pending changes (an updated one).
    async fn provision(
        &self,
        host: &DesiredHost,
        runnable: &Runnable,
        replaced: bool,
        log: &mut Log<'_>,
        state: &mut State,
    ) -> Result<Provisioned, Failure> {
        let live =
            state.vmid.and_then(|vmid| self.req.live.iter().find(|vm| vm.vmid == vmid)).filter(|_| !replaced);
        // A VM this apply created but did not finish (crash, cancel, failure): the notes say
        // a plan was applying and nothing is installed yet. It gets the create's remaining
        // steps, cloud-init and start included.
        let resuming_create = live
            .and_then(|vm| vm.config.as_ref())
            .and_then(|c| c.metadata.as_ref())
            .is_some_and(|m| m.host == host.host && m.applying.is_some() && m.system.is_none());
        let creating =
            runnable.has(ActionKind::CreateVm) || runnable.has(ActionKind::ReplaceVm) || resuming_create;
        // A VM created from the image, now or by a run that did not check it (its notes say
        // so, whatever the host's bootstrap is now): nothing installs it, and no cloud-init is
        // written for it; its key is pinned through the agent and its system checked. A VM
        // cloned from a template by an earlier run is installed, even when the host boots from
        // an image now.
        let from_image = live.is_some_and(|vm| {
            let metadata = vm.config.as_ref().and_then(|c| c.metadata.as_ref());
            metadata.is_some_and(|m| m.created_from_image_unchecked(vm.vmid))
        });
        let image_boot =
            from_image || (creating && live.is_none() && matches!(host.bootstrap, Bootstrap::Image(_)));
        // The VM to create does not exist yet (a declared VMID is in the plan before it exists).
        if creating && live.is_none() {
            self.create(host, log, state).await?;
        }
        let vmid = state.vmid.ok_or_else(|| {
            Failure::new("plan", format!("the plan names no VM for host `{}` (re-run the plan)", host.host))
        })?;
        if !creating {
            self.take_over(host, runnable, vmid, log, state).await?;
        }
        let node = state.node.clone();
        // nixos-anywhere's kexec image needs ~1.5 GiB: a smaller VM gets that much until the
        // install is done (configure keeps it), then its declared memory back.
        let kexec_memory = (runnable.has(ActionKind::Install) || runnable.has(ActionKind::Reinstall))
            && self.req.deployer.is_some()
            && host.spec.memory_mib < KEXEC_MIN_MEMORY_MIB;
        let mut configured = std::borrow::Cow::Borrowed(host);
        if kexec_memory {
            configured.to_mut().spec.memory_mib = KEXEC_MIN_MEMORY_MIB;
            let step = "raise memory for kexec";
            let waits = log.step(step, self.set_memory(&node, vmid, KEXEC_MIN_MEMORY_MIB, false)).await?;
            if waits && host.deploy.allow_reboot {
                log.step("reboot", self.reboot(&node, vmid, &["memory".into()])).await?;
            }
        }
        let detaching = runnable.has(ActionKind::DetachDisk);
        // The slots the reviewed `detach_disk` names, and only those (see `params::Detach`).
        let detach_slots = self.detach_slots();
        if creating || detaching || runnable.has(ActionKind::Adopt) || runnable.has(ActionKind::UpdateVm) {
            let scope = if creating {
                Scope { cloud_init: !image_boot, ..Scope::CREATE }
            } else {
                let detach = if detaching { Detach::Slots(&detach_slots) } else { Detach::Nothing };
                Scope { detach, add_disks: !self.detach_held(), ..Scope::UPDATE }
            };
            log.step("configure", self.configure(&configured, &node, vmid, scope)).await?;
        }
        if let Some(pool_move) = &self.plan.pool_move {
            log.step("pool", self.pool(vmid, pool_move)).await?;
        }
        if creating || runnable.has(ActionKind::ResizeDisk) {
            log.step("resize", self.resize(host, &node, vmid)).await?;
        }
        if creating {
            log.step("start", self.start(&node, vmid)).await?;
            state.address = Some(log.interruptible("address", self.find_address(host, &node, vmid)).await?);
        } else if runnable.has(ActionKind::UpdateVm) || detaching {
            self.apply_pending(host, runnable, &node, vmid, log, state).await?;
        }
        Ok(Provisioned { node, vmid, kexec_memory, image_boot })
    }

    /// Creates the host's VM on its node the way it declares (clone, ISO or image) and notes
    /// its VMID.
    async fn create(&self, host: &DesiredHost, log: &mut Log<'_>, state: &mut State) -> Result<(), Failure> {
        state.node = host.node.clone();
        let vmid = match &host.bootstrap {
            Bootstrap::Template { template, .. } => log.step("clone", self.clone_vm(host, template)).await?,
            Bootstrap::Iso { iso } => log.step("create", self.create_vm(host, iso)).await?,
            Bootstrap::Undeclared => {
                let error = format!(
                    "host `{}` declares no template, ISO or image to create its VM from (re-run the plan)",
                    host.host
                );
                return Err(Failure::new("create", error));
            }
            Bootstrap::Image(source) => {
                log.step("create", self.create_from_image(host, source, state.imports.as_ref())).await?
            }
        };
        state.vmid = Some(vmid);
        Ok(())
    }

    /// Changes of an updated VM that wait for its restart: rebooted into with
    /// `deploy.allowReboot` (after the switch when one follows, see [`HostRun::deploy`]),
    /// else reported as pending.
    async fn apply_pending(
        &self,
        host: &DesiredHost,
        runnable: &Runnable,
        node: &str,
        vmid: u32,
        log: &mut Log<'_>,
        state: &mut State,
    ) -> Result<(), Failure> {
        let pending = log.step("pending", self.pending(node, vmid)).await?;
        if !pending.is_empty() {
            if !host.deploy.allow_reboot {
                state.pending_reboot = pending;
            } else if runnable.has(ActionKind::Switch) && self.req.deployer.is_some() {
                state.deferred_reboot = pending;
            } else {
                log.step("reboot", self.reboot(node, vmid, &pending)).await?;
            }
        }
        Ok(())
    }

    /// Installs, reinstalls or switches NixOS, gives back the memory raised for kexec, reboots
    /// once for what waits for a reboot (or reports it pending), and records the outcome in the
    /// metadata block. `applying` stays while a deploy step is still owed (no deployer), so the
    /// next run resumes.
    async fn deploy(
        &self,
        host: &DesiredHost,
        runnable: &Runnable,
        vm: &Provisioned,
        log: &mut Log<'_>,
        state: &mut State,
    ) -> Result<(), Failure> {
        let (node, vmid) = (vm.node.as_str(), vm.vmid);
        if vm.image_boot {
            return self.check_image_boot(host, vm, log, state).await;
        }
        let (deployed, unfinished) = match self.install_or_switch(host, runnable, vm, log, state).await {
            Ok(done) => done,
            Err(failure) => {
                // The pending changes were allowed their reboot before the switch existed to
                // share it: a failed switch does not hold them back (a cancel does).
                if !failure.cancelled && !state.deferred_reboot.is_empty() {
                    let pending = std::mem::take(&mut state.deferred_reboot);
                    log.step("reboot", self.reboot(node, vmid, &pending)).await?;
                }
                return Err(failure);
            }
        };
        let mut reboot_for = std::mem::take(&mut state.deferred_reboot);
        if vm.kexec_memory {
            let restore = self.set_memory(node, vmid, host.spec.memory_mib, true);
            if log.step("restore memory", restore).await? {
                reboot_for.push("memory".into());
            }
        }
        let kernel = deployed.as_ref().is_some_and(|d| !d.reboot_needed.is_empty());
        if kernel {
            reboot_for.push("kernel".into());
        }
        if !reboot_for.is_empty() && host.deploy.allow_reboot {
            log.step("reboot", self.reboot(node, vmid, &reboot_for)).await?;
            if kernel {
                self.check_rebooted(host, node, vmid, deployed.as_ref(), log, state).await?;
            }
        } else {
            for key in reboot_for {
                if !state.pending_reboot.contains(&key) {
                    state.pending_reboot.push(key);
                }
            }
        }
        if !unfinished {
            log.step("finish", self.finish(host, node, vmid, deployed.as_ref())).await?;
        }
        Ok(())
    }

    /// After a reboot for a new kernel: the deployer waits for the host to answer with its
    /// pinned key, running and booted from the switched system.
    async fn check_rebooted(
        &self,
        host: &DesiredHost,
        node: &str,
        vmid: u32,
        deployed: Option<&Deployed>,
        log: &mut Log<'_>,
        state: &State,
    ) -> Result<(), Failure> {
        let (Some(deployer), Some(system)) = (self.req.deployer, deployed.and_then(|d| d.system.as_deref()))
        else {
            return Ok(());
        };
        let address = state.address.clone().unwrap_or_default();
        log.interruptible("rebooted", async {
            let recorded = self.recorded_metadata(host, node, vmid).await?;
            let target = self.deploy_target(host, node, vmid, &address, recorded.as_ref());
            deployer
                .check_rebooted(target, system)
                .await
                .map_err(|err| StepError::other(format!("{err:#}")))?;
            Ok(Done::ok(()).detail(format!("runs and booted `{system}`")))
        })
        .await
    }

    /// The install, reinstall or switch steps: what was deployed, and whether a step was left
    /// out (no deployer).
    async fn install_or_switch(
        &self,
        host: &DesiredHost,
        runnable: &Runnable,
        vm: &Provisioned,
        log: &mut Log<'_>,
        state: &mut State,
    ) -> Result<(Option<Deployed>, bool), Failure> {
        let (node, vmid) = (vm.node.as_str(), vm.vmid);
        let mut unfinished = false;
        let mut deployed: Option<Deployed> = None;
        for (kind, name) in [
            (ActionKind::Install, "install"),
            (ActionKind::Reinstall, "reinstall"),
            (ActionKind::Switch, "switch"),
        ] {
            if !runnable.has(kind) {
                continue;
            }
            let Some(deployer) = self.req.deployer else {
                unfinished = true;
                log.record(name, StepStatus::Skipped, "no deployer configured");
                continue;
            };
            if kind == ActionKind::Switch && state.running.as_deref() == Some(host.system.toplevel.as_str()) {
                let already = Done::already(()).detail("the adopted VM already runs the flake's system");
                log.step(name, async { Ok(already) }).await?;
                continue;
            }
            if state.address.is_none() {
                let address = log.interruptible("address", self.find_address(host, node, vmid)).await?;
                state.address = Some(address);
            }
            let address = state.address.clone().unwrap_or_default();
            let outcome = log
                .interruptible(name, async {
                    let recorded = self.recorded_metadata(host, node, vmid).await?;
                    let target = self.deploy_target(host, node, vmid, &address, recorded.as_ref());
                    let outcome = match kind {
                        ActionKind::Switch => deployer.switch(target).await,
                        _ => deployer.install(target).await,
                    };
                    outcome.map(Done::ok).map_err(|err| StepError::other(format!("{err:#}")))
                })
                .await?;
            deployed = Some(outcome);
        }
        Ok((deployed, unfinished))
    }

    /// A VM booted from the host's image: its host key pinned from the guest agent, then the
    /// deployer checks over SSH what it runs (switching to the host's system when the image
    /// held another), and the result is recorded as an install's. Without a deployer the check
    /// is skipped and `applying` stays, so the next run resumes it.
    async fn check_image_boot(
        &self,
        host: &DesiredHost,
        vm: &Provisioned,
        log: &mut Log<'_>,
        state: &mut State,
    ) -> Result<(), Failure> {
        let (node, vmid) = (vm.node.as_str(), vm.vmid);
        if state.address.is_none() {
            state.address = Some(log.interruptible("address", self.find_address(host, node, vmid)).await?);
        }
        log.step("host key", self.pin_host_key(host, node, vmid)).await?;
        let Some(deployer) = self.req.deployer else {
            log.record("verify", StepStatus::Skipped, "no deployer configured");
            return Ok(());
        };
        let address = state.address.clone().unwrap_or_default();
        // Only SSH (and maybe a switch): stopped at once on a cancel, like an install.
        let deployed = log
            .interruptible("verify", async {
                let recorded = self.recorded_metadata(host, node, vmid).await?;
                let target = self.deploy_target(host, node, vmid, &address, recorded.as_ref());
                let deployed = deployer
                    .verify_image_boot(target)
                    .await
                    .map_err(|err| StepError::other(format!("{err:#}")))?;
                let detail = format!("runs `{}`", deployed.system.as_deref().unwrap_or_default());
                Ok(Done::ok(deployed).detail(detail))
            })
            .await?;
        log.step("finish", self.finish(host, node, vmid, Some(&deployed))).await
    }
}
