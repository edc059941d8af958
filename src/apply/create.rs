//! Creating a host's VM: a full clone of a template or a VM from scratch that boots an
//! installer ISO. Both take a VMID (declared, or `/cluster/nextid`), and both carry the
//! metadata block naming the host in their first write, the journal entry a re-run resumes
//! from and the proof that a VM is ours when an answer was lost.

use std::future::Future;

use super::executor::HostRun;
use super::params;
use super::step::{Done, StepError};
use crate::flake::DesiredHost;
use crate::flake::host::TemplateRef;
use crate::metadata::Metadata;
use crate::proxmox::qemu::{CloneForm, CreateForm, notes_of, read_raw, vm_path};
use crate::proxmox::vmid::next_id;
use crate::proxmox::{ProxmoxError, find_template, post_and_wait};
use crate::retry::Resend;

/// Creates retried with a fresh `/cluster/nextid` when the id was taken meanwhile.
const NEXTID_ATTEMPTS: usize = 5;

/// A create request that went through.
struct Sent {
    vmid: u32,
    warnings: Vec<String>,
    /// The answer was lost, and the VM was found with our notes: nothing was sent twice.
    found: bool,
}

impl HostRun<'_> {
    /// VMID (declared, or `/cluster/nextid` retried on the race), then a full clone whose
    /// `description` already names the host.
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
        let notes = self.first_notes(host);
        let path = format!("{}/clone", vm_path(&source.node, source.vmid));
        let what = format!("failed to clone template `{wanted}` for host `{}`", host.host);
        let sent = self
            .with_fresh_vmid(host, &what, |vmid| {
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
        let vmid = sent.vmid;
        if sent.found {
            return Ok(
                Done::ok(vmid).detail(format!("vmid {vmid} (the clone's answer was lost; the VM is there)"))
            );
        }
        let detail = format!("vmid {vmid} from template {} (`{}`)", source.vmid, source.name);
        Ok(Done::ok(vmid).detail(detail).warnings(sent.warnings))
    }

    /// A VM from scratch that boots the installer ISO; tags and notes are set at creation.
    pub(super) async fn create_vm(&self, host: &DesiredHost, iso: &str) -> Result<Done<u32>, StepError> {
        let notes = self.first_notes(host);
        let efi_storage = params::first_storage(host);
        let path = format!("/nodes/{}/qemu", host.node);
        let what = format!("failed to create the VM of host `{}`", host.host);
        let sent = self
            .with_fresh_vmid(host, &what, |vmid| {
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
        let vmid = sent.vmid;
        if sent.found {
            return Ok(
                Done::ok(vmid).detail(format!("vmid {vmid} (the create's answer was lost; the VM is there)"))
            );
        }
        Ok(Done::ok(vmid).detail(format!("vmid {vmid}, booting `{iso}`")).warnings(sent.warnings))
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

    /// Runs `send` with the declared VMID, or with `/cluster/nextid`'s answer: when another
    /// create took that id first, with the next one (up to [`NEXTID_ATTEMPTS`]). A failure
    /// that may have executed is checked against the cluster: a VM with our notes under that
    /// id is ours, and the next steps resume it.
    async fn with_fresh_vmid<F, Fut>(
        &self,
        host: &DesiredHost,
        what: &str,
        mut send: F,
    ) -> Result<Sent, StepError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<Vec<String>, ProxmoxError>>,
    {
        let client = self.req.client;
        let mut taken = Vec::new();
        for _ in 0..NEXTID_ATTEMPTS {
            let vmid = match host.vmid {
                Some(vmid) => vmid,
                None => next_id(client).await?,
            };
            match send(vmid).await {
                Ok(warnings) => return Ok(Sent { vmid, warnings, found: false }),
                Err(err) if err.is_vmid_taken() && host.vmid.is_none() => {
                    tracing::warn!(
                        "VMID {vmid} was taken before the VM of `{}` was created; trying the next free one",
                        host.host
                    );
                    taken.push(vmid);
                }
                Err(err) => {
                    if !err.not_executed()
                        && let Ok(Some(raw)) = read_raw(client, &host.node, vmid).await
                        && notes_of(&raw).metadata().is_some_and(|m| m.host == host.host)
                    {
                        return Ok(Sent { vmid, warnings: Vec::new(), found: true });
                    }
                    return Err(err.into());
                }
            }
        }
        let ids: Vec<String> = taken.iter().map(u32::to_string).collect();
        Err(StepError::other(format!(
            "{what}: VMIDs {} were taken by other creates meanwhile (set `nixprox.vm.id`, or re-run)",
            ids.join(", ")
        )))
    }

    /// The notes of a VM being created: the user's description and a block that names the
    /// host and the plan being applied.
    fn first_notes(&self, host: &DesiredHost) -> String {
        let metadata = Metadata {
            host: host.host.clone(),
            applying: Some(self.req.reviewed_plan_id.to_string()),
            ..Metadata::default()
        };
        params::notes(host, &metadata)
    }
}
