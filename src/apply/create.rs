//! Creating a host's guest exactly once: a full clone of a template, a VM from scratch that
//! boots an installer ISO or imports its image, or a container from its template
//! ([`HostRun::create_guest_once`], shared with `apply::container`). All take a VMID (declared, or from the run's
//! [`VmidAllocator`](crate::proxmox::vmid::VmidAllocator)) and carry the metadata block naming
//! the host in their first write: the journal entry a re-run resumes from, and the proof that
//! a VM is ours.
//!
//! A create `POST` is never sent again blind. When its outcome is unknown (the answer was
//! lost, its task could not be followed), nixprox looks for the VM under that id first: it
//! waits while a clone or create still holds the VM's lock, carries on with a VM whose notes
//! name the host, sends the same request again (same id) only when no VM is there, and moves
//! to another id only for a VM that is not ours. "Already exists" after such a loss is
//! checked the same way: it is success when the VM is ours.

use std::future::Future;
use std::time::Instant;

use super::executor::HostRun;
use super::params;
use super::step::{Done, StepError};
use crate::flake::DesiredHost;
use crate::flake::host::{ImageSource, TemplateRef};
use crate::metadata::{self, Metadata};
use crate::proxmox::container::find_guest;
use crate::proxmox::qemu::{CloneForm, CreateForm, ImageCreateForm, NoImage, config_text, notes_of, vm_path};
use crate::proxmox::{ProxmoxError, find_template, post_and_wait};
use crate::retry::Resend;

/// VMIDs tried when other tools' creates keep taking the one this run was given.
const NEXTID_ATTEMPTS: u32 = 8;
/// Sends of one create request with the same id whose outcome stayed unknown and after
/// which no VM was found.
const UNKNOWN_OUTCOME_SENDS: usize = 3;

/// What one create request for one VMID came to.
enum Created<T> {
    /// Proxmox created it; what the request answered (a VM's task warnings, a container's
    /// generated host keys).
    New(T),
    /// The outcome was unknown, and the VM is there with our notes.
    Found,
    /// Another VM holds the id: PVE's refusal, or (`None`) a VM found that is not ours.
    Taken(Option<ProxmoxError>),
}

/// What is under a VMID after a create whose outcome is unknown.
enum Look {
    Ours,
    Other,
    Absent,
}

/// A create request that went through.
pub(super) struct Sent<T> {
    pub(super) vmid: u32,
    /// What the request answered; `None` when its answer was lost and the guest was found with
    /// our notes: nothing was sent twice.
    pub(super) answer: Option<T>,
}

impl<T> Sent<T> {
    /// How a found guest is reported: the request's answer was lost, the guest is there.
    pub(super) fn found_detail(&self, request: &str) -> String {
        format!("vmid {} (the {request}'s answer was lost; the VM is there)", self.vmid)
    }
}

impl Sent<Vec<String>> {
    /// The step's outcome: `created` describes a VM Proxmox just made for this request.
    fn done(self, request: &str, created: String) -> Done<u32> {
        let found = self.found_detail(request);
        match self.answer {
            Some(warnings) => Done::ok(self.vmid).detail(created).warnings(warnings),
            None => Done::ok(self.vmid).detail(found),
        }
    }
}

impl HostRun<'_> {
    /// A full clone of the host's template under a VMID (declared, or the run's allocator's)
    /// whose `description` already names the host.
    pub(super) async fn clone_vm(
        &self,
        host: &DesiredHost,
        template: &TemplateRef,
    ) -> Result<Done<u32>, StepError> {
        let wanted = match template {
            TemplateRef::Id(id) => id.to_string(),
            TemplateRef::Name(name) => name.clone(),
        };
        let source = find_template(self.req.live, &wanted, Some(&host.node))
            .map_err(|e| StepError::other(e.to_string()))?;
        let storage = params::first_storage(host);
        let path = format!("{}/clone", vm_path(&source.node, source.vmid));
        let what = format!("failed to clone template `{wanted}` for host `{}`", host.host);
        let sent = self
            .create_guest_once(host, &what, |vmid| {
                let notes = self.first_notes(host, vmid, None);
                let form = CloneForm {
                    newid: vmid,
                    name: &host.spec.name,
                    storage: &storage,
                    description: &notes,
                    target: (source.node != host.node).then_some(host.node.as_str()),
                    pool: host.spec.pool.as_deref(),
                }
                .form();
                let path = &path;
                async move { self.send_create("clone", path, &form).await }
            })
            .await?;
        let detail = format!("vmid {} from template {} (`{}`)", sent.vmid, source.vmid, source.name);
        Ok(sent.done("clone", detail))
    }

    /// A VM from scratch that boots the installer ISO; tags and notes are set at creation.
    pub(super) async fn create_vm(&self, host: &DesiredHost, iso: &str) -> Result<Done<u32>, StepError> {
        let efi_storage = params::first_storage(host);
        let path = format!("/nodes/{}/qemu", host.node);
        let what = format!("failed to create the VM of host `{}`", host.host);
        let sent = self
            .create_guest_once(host, &what, |vmid| {
                let notes = self.first_notes(host, vmid, None);
                let form = CreateForm {
                    vmid,
                    spec: &host.spec,
                    description: &notes,
                    iso,
                    efi_storage: &efi_storage,
                }
                .form();
                let path = &path;
                async move { self.send_create("create", path, &form).await }
            })
            .await?;
        let detail = format!("vmid {}, booting `{iso}`", sent.vmid);
        Ok(sent.done("create", detail))
    }

    /// A VM from scratch whose disks are imported from the host's image files (uploaded by the
    /// run's `upload` step); tags and notes are set at creation.
    pub(super) async fn create_from_image(
        &self,
        host: &DesiredHost,
        source: &ImageSource,
        imports: Option<&super::image::Imports>,
    ) -> Result<Done<u32>, StepError> {
        let imports = imports.ok_or_else(|| {
            StepError::other(format!(
                "the image files of host `{}` were not uploaded in this run (re-run the plan: it plans `upload_image` before `create_vm`)",
                host.host
            ))
        })?;
        let efi_storage = params::first_storage(host);
        let path = format!("/nodes/{}/qemu", host.node);
        let what = format!("failed to create the VM of host `{}` from its image", host.host);
        let sent = self
            .create_guest_once(host, &what, |vmid| {
                let notes = self.first_notes(host, vmid, Some(&source.package.out_path));
                let form = ImageCreateForm {
                    vmid,
                    spec: &host.spec,
                    description: &notes,
                    imports,
                    efi_storage: &efi_storage,
                }
                .form();
                let path = &path;
                async move {
                    let form = form.map_err(|NoImage { slot }| ProxmoxError::Config {
                        message: format!("disk `{slot}` of host `{}` has no image file", host.host),
                    })?;
                    self.send_create("create", path, &form).await
                }
            })
            .await?;
        let files: Vec<&str> = imports.values().map(String::as_str).collect();
        let detail = format!("vmid {}, disks from {}", sent.vmid, files.join(", "));
        Ok(sent.done("create", detail))
    }

    /// The create `POST` and its task. Not sent again unless the failure shows it did not run.
    async fn send_create(
        &self,
        what: &str,
        path: &str,
        form: &[(String, String)],
    ) -> Result<Vec<String>, ProxmoxError> {
        let client = self.req.client;
        let timeout = self.req.options.task_timeout;
        self.req
            .options
            .step_retry
            .run(what, Resend::OnlyIfNotExecuted, || post_and_wait(client, path, form, timeout))
            .await
    }

    /// Runs `send` with the declared VMID, or with one from the run's allocator; when
    /// another tool's create took that id first, with a new one after a jittered wait (up
    /// to [`NEXTID_ATTEMPTS`]). A create whose outcome is unknown is looked for before it is
    /// sent again ([`Self::create_once`]). The one way every guest of either kind is created.
    pub(super) async fn create_guest_once<T, F, Fut>(
        &self,
        host: &DesiredHost,
        what: &str,
        mut send: F,
    ) -> Result<Sent<T>, StepError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, ProxmoxError>>,
    {
        let client = self.req.client;
        let mut taken = Vec::new();
        for attempt in 0..NEXTID_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(self.req.options.step_retry.delay(attempt - 1)).await;
            }
            let vmid = match host.vmid {
                Some(vmid) => vmid,
                None => self.vmids.next(client).await?,
            };
            match self.create_once(host, what, vmid, &mut send).await? {
                Created::New(answer) => return Ok(Sent { vmid, answer: Some(answer) }),
                Created::Found => return Ok(Sent { vmid, answer: None }),
                Created::Taken(err) if host.vmid.is_some() => {
                    return Err(match err {
                        Some(err) => err.into(),
                        None => StepError::other(format!(
                            "{what}: VMID {vmid} is used by a VM that is not host `{}`'s (choose another `nixprox.vm.id`)",
                            host.host
                        )),
                    });
                }
                Created::Taken(_) => {
                    tracing::warn!(
                        "VMID {vmid} was taken before the VM of `{}` was created; trying another",
                        host.host
                    );
                    taken.push(vmid);
                }
            }
        }
        let ids: Vec<String> = taken.iter().map(u32::to_string).collect();
        Err(StepError::other(format!(
            "{what}: VMIDs {} were taken by other creates meanwhile (set `nixprox.vm.id`, or re-run)",
            ids.join(", ")
        )))
    }

    /// Sends the create for one VMID so that it takes effect at most once (see the module
    /// header): a failure with an unknown outcome, and "already exists" after one, are
    /// answered by looking at the cluster, never by sending blind.
    async fn create_once<T, F, Fut>(
        &self,
        host: &DesiredHost,
        what: &str,
        vmid: u32,
        send: &mut F,
    ) -> Result<Created<T>, StepError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, ProxmoxError>>,
    {
        let mut maybe_ran = false;
        for _ in 0..UNKNOWN_OUTCOME_SENDS {
            let err = match send(vmid).await {
                Ok(warnings) => return Ok(Created::New(warnings)),
                Err(err) if err.is_vmid_taken() && !maybe_ran => return Ok(Created::Taken(Some(err))),
                Err(err) if err.is_vmid_taken() || err.outcome_unknown() => err,
                Err(err) => return Err(err.into()),
            };
            tracing::warn!("{what}: {err}; looking for VM {vmid} before anything is sent again");
            maybe_ran = true;
            match self.look_for(host, vmid).await? {
                Look::Ours => return Ok(Created::Found),
                Look::Other => return Ok(Created::Taken(None)),
                Look::Absent => {}
            }
        }
        Err(StepError::other(format!(
            "{what}: the answer to creating VM {vmid} was lost {UNKNOWN_OUTCOME_SENDS} times and no VM appeared (check the node's task list, then re-run)"
        )))
    }

    /// What is under `vmid` after a create whose outcome is unknown. A guest that a clone or
    /// create still holds (its `lock`) is waited for, bounded by the task timeout: until then
    /// its notes may not be written yet (qemu-server writes a clone's config after copying its
    /// first disk; pve-container holds `lock: create` while it unpacks the template). A guest
    /// of the other kind under that id is not ours, whatever its notes say.
    async fn look_for(&self, host: &DesiredHost, vmid: u32) -> Result<Look, StepError> {
        let client = self.req.client;
        let options = self.req.options;
        let started = Instant::now();
        loop {
            let Some((kind, node, raw)) = find_guest(client, vmid).await? else { return Ok(Look::Absent) };
            let lock = config_text(&raw, "lock").filter(|lock| lock == "clone" || lock == "create");
            if let Some(lock) = lock {
                if started.elapsed() >= options.task_timeout {
                    return Err(StepError::other(format!(
                        "VM {vmid} on node `{node}` is still locked by a {lock} after {}s; whether it is host `{}`'s is unknown (check the node's task list, then re-run)",
                        options.task_timeout.as_secs(),
                        host.host
                    )));
                }
                tokio::time::sleep(options.poll_interval).await;
                continue;
            }
            let ours = kind == host.kind() && notes_of(&raw).metadata().is_some_and(|m| m.host == host.host);
            return Ok(if ours { Look::Ours } else { Look::Other });
        }
    }

    /// The notes of a VM nixprox creates as `vmid`: the user's description and a block that
    /// names the host, the plan being applied, and that nixprox created this VM (the only VM
    /// the planner allows an ungated install on), and the image package its disks come from
    /// when they are imported (how the VM is finished after an interruption).
    pub(super) fn first_notes(&self, host: &DesiredHost, vmid: u32, image: Option<&str>) -> String {
        let plan = self.req.reviewed_plan_id.to_string();
        let image = image.map(str::to_string);
        let metadata = Metadata {
            host: host.host.clone(),
            applying: Some(plan.clone()),
            created: Some(metadata::Created { vmid, plan, image }),
            ..Metadata::default()
        };
        params::notes(host, "", &metadata)
    }
}
