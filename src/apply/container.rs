//! The container kind in the executor (docs/architecture.md, "Two kinds of guest"): a new
//! container is created from its template with `POST /nodes/{node}/lxc` (notes naming the host
//! and the plan, as a VM's first write), started, its SSH host key pinned by the fingerprints
//! Proxmox printed in the create task's log (the whole key then recorded in the notes), and
//! switched to the host's system through the same [`crate::deploy::NixosDeployer`] as a VM;
//! an existing one gets its settings through pve-container's `PUT …/config` (Proxmox itself
//! applies them at once, on the running container, or at the next start), grows its volumes
//! with `PUT …/resize`, and is switched. The metadata block is written by the same
//! compare-and-swap steps as a VM's.
//!
//! An unmanaged NixOS container is adopted in place by the same step as a VM (its key declared,
//! its address static). A host's own template is built and uploaded once per run and package
//! (`upload_image`). Destroying (an orphan, or a replaced container before it is created anew)
//! is the VM's step, by kind. A container on another node than declared is moved there first
//! (`migrate`: restart mode while it runs, as pve-container allows, offline otherwise).

use std::collections::BTreeSet;

use super::executor::{HostRun, Runnable, State};
use super::params;
use super::report::StepStatus;
use super::step::{Done, Failure, Log, StepError};
use crate::flake::DesiredHost;
use crate::flake::host::DesiredContainer;
use crate::plan::ActionKind;
use crate::proxmox::container::{
    self as ct, GeneratedKey, NewContainer, create_form, format_ct_net, guest_path, read_guest_raw,
};
use crate::proxmox::property::{PropertyString, format_tags};
use crate::proxmox::qemu::{RawConfig, config_text, tags_of};
use crate::proxmox::wait_answer;
use crate::retry::Resend;
use crate::spec::{GuestKind, MANAGED_TAG, allocation_size, format_size, parse_size};

/// What a container run found along the way.
#[derive(Default)]
pub(super) struct CtState {
    /// The host keys Proxmox generated in a container this run created.
    pub generated: Option<Vec<GeneratedKey>>,
}

impl HostRun<'_> {
    /// The container's steps: create (and start), configure, resize, pin the key, switch,
    /// finish. `node`/`vmid` come from the plan, or from the create.
    pub(super) async fn execute_container(
        &self,
        host: &DesiredHost,
        runnable: &Runnable,
        log: &mut Log<'_>,
        state: &mut State,
    ) -> Result<(), Failure> {
        let State { node: placed, vmid, address, pending_reboot, .. } = state;
        let Some(container) = host.container.as_ref() else {
            return Err(Failure::new(
                "plan",
                format!("host `{}` is no container (re-run the plan)", host.host),
            ));
        };
        let mut found = CtState::default();
        let mut template = container.template.clone();
        if runnable.has(ActionKind::UploadImage) {
            template = Some(log.step("template", self.upload_own_template(host, container)).await?);
        }
        // A replaced container was destroyed by the run (as a VM is): it is created anew.
        let creating = runnable.has(ActionKind::CreateVm) || runnable.has(ActionKind::ReplaceVm);
        if creating {
            *placed = host.node.clone();
            let template = template.as_deref().unwrap_or_default();
            let (id, keys) = log.step("create", self.create_container(host, container, template)).await?;
            *vmid = Some(id);
            // `None`: the create's answer was lost and the container found; its keys are read
            // from its create task's log below, as after an interrupted run.
            found.generated = keys;
        }
        let id = vmid.ok_or_else(|| {
            Failure::new(
                "plan",
                format!("the plan names no container for host `{}` (re-run the plan)", host.host),
            )
        })?;
        let mut node = placed.clone();
        // Adopting in place: the declared key checked, the running system read, nothing
        // written otherwise (the same step as a VM's, through the seam).
        let mut running = None;
        if runnable.has(ActionKind::Adopt) {
            let adopted = log.step("adopt", self.adopt(host, &node, id)).await?;
            *address = Some(adopted.address);
            running = adopted.system;
        }
        if runnable.has(ActionKind::MigrateVm) {
            log.step("migrate", self.migrate_container(host, &node, id, &host.node)).await?;
            node = host.node.clone();
            *placed = node.clone();
        }
        if runnable.has(ActionKind::UpdateVm) {
            log.step("configure", self.configure_container(host, container, &node, id)).await?;
            // What a running container takes only at its next start (pve-container keeps it in
            // `/pending`): reported, as for a VM; nixprox does not restart containers.
            let pending = log.step("pending", self.container_pending(&node, id)).await?;
            pending_reboot.extend(pending);
        }
        if runnable.has(ActionKind::ResizeDisk) {
            log.step("resize", self.resize_container(container, &node, id)).await?;
        }
        if creating || runnable.has(ActionKind::Switch) {
            // A new container, or one an earlier run created and did not get to start.
            log.step("start", self.start_container(&node, id)).await?;
        }
        let Some(deployer) = self.req.deployer else {
            if runnable.has(ActionKind::Switch) {
                log.record("switch", StepStatus::Skipped, "no deployer configured");
                return Ok(());
            }
            return log.step("finish", self.finish(host, &node, id, None)).await;
        };
        if !runnable.has(ActionKind::Switch) {
            return log.step("finish", self.finish(host, &node, id, None)).await;
        }
        let at = host.address.clone().ok_or_else(|| {
            Failure::new(
                "address",
                format!(
                    "host `{}` is a container, which has no guest agent to ask for its address: set `nixprox.address`",
                    host.host
                ),
            )
        })?;
        *address = Some(at.clone());
        if found.generated.is_none() {
            // A container nixprox created and never pinned (an earlier run lost the create's
            // answer, or stopped): the keys Proxmox printed are still in its create task's log.
            let recorded = self
                .recorded_metadata(host, &node, id)
                .await
                .map_err(|e| Failure::new("host key", e.to_string()))?;
            let ours = recorded
                .as_ref()
                .is_some_and(|m| m.host_key.is_none() && m.created.as_ref().is_some_and(|c| c.vmid == id));
            if ours {
                let keys = ct::create_task_keys(self.req.client, &node, id)
                    .await
                    .map_err(|e| Failure::new("host key", e.to_string()))?;
                found.generated = Some(keys);
            }
        }
        if let Some(generated) = &found.generated {
            log.interruptible("host key", self.pin_container_key(host, deployer, &node, id, &at, generated))
                .await?;
        }
        if running.as_deref() == Some(host.system.toplevel.as_str()) {
            let already = Done::already(()).detail("the adopted container already runs the flake's system");
            log.step("switch", async { Ok(already) }).await?;
            return log.step("finish", self.finish(host, &node, id, None)).await;
        }
        let deployed = log
            .interruptible("switch", async {
                let recorded = self.recorded_metadata(host, &node, id).await?;
                if recorded.as_ref().and_then(|m| m.host_key.as_ref()).is_none() && host.ssh.host_key.is_none() {
                    return Err(StepError::other(format!(
                        "no host key is pinned for container {id} (its create task's log named none: does its template have /etc/ssh?), and nixprox never trusts a key on first use: declare it in `nixprox.ssh.hostKey`"
                    )));
                }
                let target = self.deploy_target(host, &node, id, &at, recorded.as_ref());
                deployer.switch(target).await.map(Done::ok).map_err(|err| StepError::other(format!("{err:#}")))
            })
            .await?;
        log.step("finish", self.finish(host, &node, id, Some(&deployed))).await
    }

    /// `POST /nodes/{node}/lxc` from the host's template, with notes naming the host and the
    /// plan; the VMID declared or allocated. Returns it with the keys Proxmox generated, or
    /// `None` when the create's answer was lost and the container was found with our notes
    /// (its keys are then read from its create task's log). Created exactly once the way a
    /// VM is ([`HostRun::create_guest_once`]): a VMID another tool took between `nextid` and
    /// the create is replaced by another, a lost answer is looked for before anything is sent
    /// again.
    async fn create_container(
        &self,
        host: &DesiredHost,
        container: &DesiredContainer,
        template: &str,
    ) -> Result<Done<(u32, Option<Vec<GeneratedKey>>)>, StepError> {
        if template.is_empty() {
            return Err(StepError::other(format!(
                "host `{}` names no container template (`nixprox.container.template`; re-run the plan)",
                host.host
            )));
        }
        let client = self.req.client;
        let timeout = self.req.options.task_timeout;
        let what = format!("failed to create the container of host `{}`", host.host);
        let sent = self
            .create_guest_once(host, &what, |vmid| {
                let notes = self.first_notes_of(host, vmid);
                let form = create_form(NewContainer {
                    vmid,
                    shared: &host.spec,
                    spec: &container.spec,
                    template,
                    ssh_keys: &container.ssh_keys,
                    description: &notes,
                });
                async move {
                    self.req
                        .options
                        .step_retry
                        .run("create", Resend::OnlyIfNotExecuted, || {
                            ct::create(client, &host.node, &form, timeout)
                        })
                        .await
                }
            })
            .await?;
        let found = sent.found_detail("create");
        let vmid = sent.vmid;
        Ok(match sent.answer {
            Some(keys) => {
                let detail = format!(
                    "vmid {vmid} from `{template}`, {} host key fingerprint(s) in the task log",
                    keys.len()
                );
                Done::ok((vmid, Some(keys))).detail(detail)
            }
            None => Done::ok((vmid, None)).detail(found),
        })
    }

    /// The host's own template: its package built (once per run), its `tarball/*.tar.xz` uploaded
    /// as `nixprox-<hash>.tar.xz` to the storage (once per run, and not when a file of that
    /// name is there: the name is the package's store hash). Returns the volume.
    async fn upload_own_template(
        &self,
        host: &DesiredHost,
        container: &DesiredContainer,
    ) -> Result<Done<String>, StepError> {
        let Some(build) = &container.tarball else {
            return Err(StepError::other(format!(
                "host `{}` builds no template of its own (re-run the plan)",
                host.host
            )));
        };
        let Some(builder) = self.req.image_build else {
            return Err(StepError::other(format!(
                "host `{}` has its own container template, but this apply was started without an image builder",
                host.host
            )));
        };
        let planned = &build.package.out_path;
        let timeout = self.req.options.build_timeout;
        let (built, _) = self
            .images
            .builds
            .run(planned, || async {
                crate::image::build::build_image(&builder.for_template(&host.host), planned, timeout)
                    .await
                    .map_err(|err| err.to_string())
            })
            .await;
        let out = built.map_err(StepError::other)?;
        let file = crate::image::template_file_name(&out).map_err(|e| StepError::other(e.to_string()))?;
        let volume = format!("{}:vztmpl/{file}", build.storage);
        let client = self.req.client;
        let (node, storage) = (host.node.clone(), build.storage.clone());
        let (sent, _) = self
            .images
            .templates
            .run(&volume, || async {
                let present = crate::proxmox::import::list_content_files(client, &node, &storage, "vztmpl")
                    .await
                    .map_err(|err| err.to_string())?
                    .iter()
                    .any(|f| f.name == file);
                if present {
                    return Ok(false);
                }
                let dir = std::path::Path::new(&out).join("tarball");
                let path = std::fs::read_dir(&dir)
                    .map_err(|err| format!("failed to read `{}`: {err}", dir.display()))?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .find(|p| p.to_string_lossy().ends_with(".tar.xz"))
                    .ok_or_else(|| format!("`{}` holds no `.tar.xz` template", dir.display()))?;
                ct::upload_template(client, &node, &storage, &file, &path, self.req.options.task_timeout)
                    .await
                    .map(|_| true)
                    .map_err(|err| err.to_string())
            })
            .await;
        let detail = format!("`{volume}` from `{out}`");
        Ok(match sent.map_err(StepError::other)? {
            true => Done::ok(volume).detail(detail),
            false => Done::already(volume).detail(detail),
        })
    }

    /// The keys of `GET …/pending` with a change waiting for the container's next start.
    async fn container_pending(&self, node: &str, vmid: u32) -> Result<Done<Vec<String>>, StepError> {
        let path = format!("{}/pending", guest_path(GuestKind::Container, node, vmid));
        let data = self.req.client.get(&path, &[]).await?;
        let keys: Vec<String> = crate::proxmox::read::pending_keys(&data)
            .map_err(|err| StepError::other(format!("unexpected answer of `{path}`: {err}")))?
            .into_iter()
            .collect();
        Ok(if keys.is_empty() {
            Done::already(keys)
        } else {
            let detail = format!("{} at the next start", keys.join(", "));
            Done::ok(keys).detail(detail)
        })
    }

    /// Moves the container to `target` as pve-container allows: in restart mode while it runs
    /// (shut down, moved, started again: containers cannot migrate live), offline otherwise;
    /// volumes on local storages are copied to the same storage on the target. Marks the block
    /// `applying` first, so a run that stops after the move resumes on the new node as this
    /// plan's work.
    async fn migrate_container(
        &self,
        host: &DesiredHost,
        node: &str,
        vmid: u32,
        target: &str,
    ) -> Result<Done<()>, StepError> {
        let client = self.req.client;
        if node == target {
            return Ok(Done::already(()).detail(format!("on `{target}`")));
        }
        self.mark_applying(host, node, vmid).await?;
        let running = ct::guest_running(client, GuestKind::Container, node, vmid).await?;
        let form = crate::proxmox::migrate::container_form(running, target);
        let path = format!("{}/migrate", guest_path(GuestKind::Container, node, vmid));
        let timeout = self.req.options.task_timeout;
        // A second migrate of a container that already moved fails on the old node: never
        // re-sent blind.
        let warnings = self
            .req
            .options
            .step_retry
            .run("migrate", Resend::OnlyIfNotExecuted, || {
                crate::proxmox::post_and_wait(client, &path, &form, timeout)
            })
            .await?;
        let how = if running { "restarted (containers cannot migrate live)" } else { "offline" };
        Ok(Done::ok(()).detail(format!("{node} → {target}, {how}")).warnings(warnings))
    }

    /// `POST …/status/start`, unless it runs.
    async fn start_container(&self, node: &str, vmid: u32) -> Result<Done<()>, StepError> {
        let client = self.req.client;
        let base = guest_path(GuestKind::Container, node, vmid);
        let status = client.get(&format!("{base}/status/current"), &[]).await?;
        if status.get("status").and_then(serde_json::Value::as_str) == Some("running") {
            return Ok(Done::already(()));
        }
        let data = client.post(&format!("{base}/status/start"), &[]).await?;
        let warnings = wait_answer(client, &data, self.req.options.task_timeout).await?;
        Ok(Done::ok(()).warnings(warnings))
    }

    /// Connects once with the generated keys' fingerprints pinned, and records the whole key
    /// the container presented in its notes.
    async fn pin_container_key(
        &self,
        host: &DesiredHost,
        deployer: &dyn crate::deploy::NixosDeployer,
        node: &str,
        vmid: u32,
        address: &str,
        generated: &[GeneratedKey],
    ) -> Result<Done<()>, StepError> {
        if generated.is_empty() {
            return Ok(Done::already(()).detail("the create task's log names no host key"));
        }
        let fingerprints: Vec<String> = generated.iter().map(|k| k.fingerprint.clone()).collect();
        let recorded = self.recorded_metadata(host, node, vmid).await?;
        let target = self.deploy_target(host, node, vmid, address, recorded.as_ref());
        let key = deployer
            .pin_fingerprints(target, &fingerprints)
            .await
            .map_err(|err| StepError::other(format!("{err:#}")))?;
        self.cas_write(node, vmid, "pinned its host key", |raw| {
            let mut metadata = self.metadata_for(host, vmid, raw, true)?;
            metadata.host_key = Some(key.clone());
            let current = config_text(raw, "description").unwrap_or_default();
            Ok(Some(vec![("description".into(), params::notes(host, &current, &metadata))]))
        })
        .await?;
        let shown: String = key.chars().take(32).collect();
        Ok(Done::ok(())
            .detail(format!("{shown}…, matched {} from the create task's log", fingerprints.join(", "))))
    }

    /// The declared settings pve-container takes by `PUT …/config`, where they differ.
    async fn configure_container(
        &self,
        host: &DesiredHost,
        container: &DesiredContainer,
        node: &str,
        vmid: u32,
    ) -> Result<Done<()>, StepError> {
        let written = self
            .cas_write(node, vmid, "configured it", |raw| {
                let metadata = self.metadata_for(host, vmid, raw, true)?;
                let mut form = container_form(host, container, raw);
                let current = config_text(raw, "description").unwrap_or_default();
                let notes = params::notes(host, &current, &metadata);
                if notes != current {
                    form.push(("description".into(), notes));
                }
                Ok((!form.is_empty()).then_some(form))
            })
            .await?;
        Ok(match written {
            Some(written) => Done::ok(()).warnings(written.warnings),
            None => Done::already(()),
        })
    }

    /// `PUT …/resize` of each volume that is smaller than declared (a task).
    async fn resize_container(
        &self,
        container: &DesiredContainer,
        node: &str,
        vmid: u32,
    ) -> Result<Done<()>, StepError> {
        let client = self.req.client;
        let raw = read_guest_raw(client, GuestKind::Container, node, vmid)
            .await?
            .ok_or_else(|| StepError::other(format!("container {vmid} on node `{node}` is gone")))?;
        let spec = &container.spec;
        let volumes = std::iter::once(("rootfs".to_string(), &spec.rootfs))
            .chain(spec.mounts.iter().map(|(slot, m)| (slot.clone(), &m.volume)));
        let path = format!("{}/resize", guest_path(GuestKind::Container, node, vmid));
        let mut grown = Vec::new();
        let mut warnings = Vec::new();
        for (slot, volume) in volumes {
            let live = config_text(&raw, &slot)
                .and_then(|v| PropertyString::parse(&v).get("size").and_then(|s| parse_size(s, 1)))
                .unwrap_or(0);
            if volume.size_bytes <= live {
                continue;
            }
            let size = format_size(allocation_size(volume.size_bytes));
            let data = client.put(&path, &[("disk", slot.as_str()), ("size", size.as_str())]).await?;
            warnings.extend(wait_answer(client, &data, self.req.options.task_timeout).await?);
            grown.push(format!("{slot} to {size}"));
        }
        Ok(if grown.is_empty() {
            Done::already(())
        } else {
            Done::ok(()).detail(grown.join(", ")).warnings(warnings)
        })
    }

    /// The first notes of a new container: the block naming the host, the plan, and that
    /// nixprox created it (as a VM's, without an image).
    fn first_notes_of(&self, host: &DesiredHost, vmid: u32) -> String {
        self.first_notes(host, vmid, None)
    }
}

/// The keys of a container's config that differ from the declaration, as pve-container's
/// `PUT …/config` takes them. Existing volumes are left to `resize`; a new mount point is
/// allocated on its storage; the managed tag is always among the tags.
fn container_form(
    host: &DesiredHost,
    container: &DesiredContainer,
    raw: &RawConfig,
) -> Vec<(String, String)> {
    let spec = &container.spec;
    let mut form = Vec::new();
    let mut set = |key: &str, want: String| {
        if config_text(raw, key).as_deref() != Some(want.as_str()) {
            form.push((key.to_string(), want));
        }
    };
    set("hostname", host.spec.name.clone());
    if let Some(cores) = spec.cores {
        set("cores", cores.to_string());
    }
    set("memory", spec.memory_mib.to_string());
    set("swap", spec.swap_mib.to_string());
    set("onboot", u8::from(host.spec.on_boot).to_string());
    set("protection", u8::from(host.spec.protection).to_string());
    if let Some(startup) = &spec.startup {
        set("startup", startup.clone());
    }
    if ct::container_spec(raw).features != spec.features {
        // No flag on: the key goes (pve-container takes no empty `features`).
        match spec.features.property() {
            none if none.is_empty() => form.push(("delete".into(), "features".into())),
            features => form.push(("features".into(), features)),
        }
    }
    for (slot, net) in &spec.networks {
        let mut net = net.clone();
        if net.mac.is_none() {
            // Keep the MAC Proxmox picked.
            net.mac = config_text(raw, slot)
                .and_then(|v| PropertyString::parse(&v).get("hwaddr").map(str::to_string));
        }
        if net.address.is_none() {
            let live = config_text(raw, slot).and_then(|v| ct::parse_ct_net(&v)).and_then(|n| n.address);
            net.address = live;
        }
        let want = format_ct_net(&net);
        let same = config_text(raw, slot).and_then(|v| ct::parse_ct_net(&v)) == ct::parse_ct_net(&want);
        if !same {
            form.push((slot.clone(), want));
        }
    }
    for (slot, mount) in &spec.mounts {
        if config_text(raw, slot).is_none() {
            let backup = if mount.backup { ",backup=1" } else { "" };
            let gib = crate::spec::exact_gib(allocation_size(mount.volume.size_bytes));
            form.push((slot.clone(), format!("{}:{gib},mp={}{backup}", mount.volume.storage, mount.path)));
        }
    }
    let mut tags: BTreeSet<String> = host.spec.tags.clone();
    tags.insert(MANAGED_TAG.to_string());
    if tags_of(raw) != tags {
        form.push(("tags".into(), format_tags(&tags)));
    }
    form
}
