//! The steps that take over a VM nixprox did not create, move one between nodes, or let go
//! of one: `adopt` (in place, after checking what runs on it), `migrate` and `release`.
//!
//! Adopting writes nothing until two preconditions hold, both checked here because the plan
//! cannot see them (see `plan::adopt`): the machine at the VM's address presents the pinned
//! host key (declared, or read through the guest agent over the TLS-pinned API), and it runs
//! NixOS. Then one compare-and-swap write tags the VM and records the running system, the
//! host key and the `adopted` marker, so a run stopped right after it resumes as an ordinary
//! switch, and never looks like a VM waiting for its first install.

use super::executor::HostRun;
use super::release::{Released, release_vm};
use super::step::{Done, StepError};
use crate::flake::DesiredHost;
use crate::metadata::{Adopted, Block, Metadata};
use crate::proxmox::agent::{AgentBound, Asked, wait_for_agent};
use crate::proxmox::container::{guest_path, read_guest_raw};
use crate::proxmox::guest::{ED25519_HOST_KEY, read_ed25519_host_key};
use crate::proxmox::migrate::migrate_check;
use crate::proxmox::post_and_wait;
use crate::proxmox::property::format_tags;
use crate::proxmox::qemu::{notes_of, power_state, tags_of, vm_path};
use crate::retry::Resend;
use crate::spec::{GuestKind, MANAGED_TAG};

/// What adopting found on the VM.
pub(super) struct AdoptedVm {
    pub address: String,
    /// The store path `/run/current-system` pointed to; `None` for a VM adopted to be
    /// converted (it runs no NixOS).
    pub system: Option<String>,
}

impl HostRun<'_> {
    /// Adopts a running NixOS VM in place; fails, having changed nothing, when it cannot
    /// verify the machine or the machine does not run NixOS.
    pub(super) async fn adopt(
        &self,
        host: &DesiredHost,
        node: &str,
        vmid: u32,
    ) -> Result<Done<AdoptedVm>, StepError> {
        let nothing = "nothing was changed";
        let deployer = self.req.deployer.ok_or_else(|| {
            StepError::other(format!("no SSH key configured to read what VM {vmid} runs; {nothing}"))
        })?;
        let kind = self.plan.kind;
        self.still_as_planned(
            kind,
            node,
            vmid,
            "nixprox adopts a VM in place only after reading the system it runs over SSH",
        )
        .await?;
        let (host_key, source) = match &host.ssh.host_key {
            Some(key) => (key.trim().to_string(), "the declared `nixprox.ssh.hostKey`"),
            None if kind == GuestKind::Container => {
                return Err(StepError::other(format!(
                    "container {vmid} has no guest agent to read its host key from: declare it in `nixprox.ssh.hostKey`; {nothing}"
                )));
            }
            None => (self.agent_host_key(node, vmid).await?, "the key read through the guest agent"),
        };
        let address = match kind {
            GuestKind::Vm => self.find_address(host, node, vmid).await?.value,
            GuestKind::Container => host.address.clone().ok_or_else(|| {
                StepError::other(format!(
                    "container {vmid} has no guest agent to ask for its address: set `nixprox.address`; {nothing}"
                ))
            })?,
        };
        let target = self.deploy_target(host, node, vmid, &address, None);
        let system = deployer
            .read_system(target, &host_key)
            .await
            .map_err(|err| StepError::other(format!("{err:#}")))?;
        let plan = self.req.reviewed_plan_id.to_string();
        let metadata = Metadata {
            host: host.host.clone(),
            system: Some(system.clone()),
            // The flake's layout now: a later change of it plans a gated reinstall. A host
            // without `disko.devices` records that nixprox does not manage its disks.
            disk_layout: Some(if host.system.manages_disks() {
                host.system.disk_layout_hash.clone()
            } else {
                crate::metadata::LAYOUT_NOT_MANAGED.to_string()
            }),
            host_key: Some(host_key),
            applying: Some(plan.clone()),
            adopted: Some(Adopted { vmid, plan }),
            ..Metadata::default()
        };
        let warnings = self.tag_adopted(host, node, vmid, "adopted it", &metadata).await?;
        Ok(Done::ok(AdoptedVm { address, system: Some(system.clone()) })
            .detail(format!("runs `{system}`; {source} matched"))
            .warnings(warnings))
    }

    /// Adopts a VM that does not run NixOS, for its conversion (the `reinstall` that follows):
    /// pins the SSH host key it presents now (`nixprox.convert.hostKey`, else read through the
    /// guest agent), checks the machine at its address against that key without logging in,
    /// and only then tags the VM and records the key with the `adopted` marker and no system.
    /// The install then verifies the machine against that key before nixos-anywhere runs. A
    /// machine presenting another key fails the host having changed nothing.
    pub(super) async fn adopt_for_conversion(
        &self,
        host: &DesiredHost,
        node: &str,
        vmid: u32,
    ) -> Result<Done<AdoptedVm>, StepError> {
        let nothing = "nothing was changed";
        let deployer = self.req.deployer.ok_or_else(|| {
            StepError::other(format!(
                "no SSH key configured to verify VM {vmid} before converting it; {nothing}"
            ))
        })?;
        self.still_as_planned(
            GuestKind::Vm,
            node,
            vmid,
            "nixprox converts a VM only after checking the SSH host key it presents",
        )
        .await?;
        let (host_key, source) = match &host.convert.host_key {
            Some(key) => (key.trim().to_string(), "the declared `nixprox.convert.hostKey`"),
            None => (self.agent_host_key(node, vmid).await?, "the key read through the guest agent"),
        };
        let address = self.find_address(host, node, vmid).await?.value;
        let target = self.deploy_target(host, node, vmid, &address, None);
        deployer
            .verify_host_key(target, &host_key)
            .await
            .map_err(|err| StepError::other(format!("{err:#}")))?;
        let plan = self.req.reviewed_plan_id.to_string();
        let metadata = Metadata {
            host: host.host.clone(),
            host_key: Some(host_key),
            applying: Some(plan.clone()),
            adopted: Some(Adopted { vmid, plan }),
            ..Metadata::default()
        };
        let warnings = self.tag_adopted(host, node, vmid, "adopted it for its conversion", &metadata).await?;
        Ok(Done::ok(AdoptedVm { address, system: None })
            .detail(format!("{source} matched the machine (no login); tagged for its conversion"))
            .warnings(warnings))
    }

    /// Before an adoption writes anything: the guest is still untagged, without a metadata
    /// block, and running, as the plan saw it (`why` says what needs it running).
    async fn still_as_planned(
        &self,
        kind: GuestKind,
        node: &str,
        vmid: u32,
        why: &str,
    ) -> Result<(), StepError> {
        let client = self.req.client;
        let nothing = "nothing was changed";
        let raw = read_guest_raw(client, kind, node, vmid).await?.ok_or_else(|| {
            StepError::other(format!("VM {vmid} on node `{node}` is gone (re-run the plan)"))
        })?;
        let notes = notes_of(&raw);
        if tags_of(&raw).contains(MANAGED_TAG) || notes.block != Block::Absent {
            return Err(StepError::other(format!(
                "VM {vmid} was tagged `nixprox` or given a metadata block since the plan was made; {nothing} (re-run the plan)"
            )));
        }
        let running = match kind {
            GuestKind::Vm => power_state(client, node, vmid).await?.is_running(),
            GuestKind::Container => {
                let status =
                    client.get(&format!("{}/status/current", guest_path(kind, node, vmid)), &[]).await?;
                status.get("status").and_then(serde_json::Value::as_str) == Some("running")
            }
        };
        if !running {
            return Err(StepError::other(format!(
                "VM {vmid} is not running: {why}; start it and run apply again ({nothing})"
            )));
        }
        Ok(())
    }

    /// The adoption's one write: the `nixprox` tag and the first metadata block, the owner's
    /// notes kept above it. Returns the write's warnings.
    async fn tag_adopted(
        &self,
        host: &DesiredHost,
        node: &str,
        vmid: u32,
        doing: &str,
        metadata: &Metadata,
    ) -> Result<Vec<String>, StepError> {
        let written = self
            .cas_write(node, vmid, doing, |raw| {
                let mut tags = tags_of(raw);
                tags.insert(MANAGED_TAG.into());
                let current = crate::proxmox::qemu::config_text(raw, "description").unwrap_or_default();
                let description = super::params::notes(host, &current, metadata);
                Ok(Some(vec![("tags".into(), format_tags(&tags)), ("description".into(), description)]))
            })
            .await?;
        Ok(written.map(|w| w.warnings).unwrap_or_default())
    }

    /// The VM's ed25519 host key, read through its guest agent over the TLS-pinned API. The VM
    /// runs, but its agent may still be starting (a VM just booted): that is waited out within
    /// `apply.address_timeout`, as every agent wait is; any other answer counts at once.
    async fn agent_host_key(&self, node: &str, vmid: u32) -> Result<String, StepError> {
        let both = "declare the key in `nixprox.ssh.hostKey`, or make sure qemu-guest-agent runs in the VM; nothing was changed";
        let options = self.req.options;
        let bound = AgentBound { timeout: options.address_timeout, interval: options.poll_interval };
        let client = self.req.client;
        let read = wait_for_agent(node, vmid, "SSH host key", bound, || async {
            read_ed25519_host_key(client, node, vmid).await.map(Asked::Ready)
        })
        .await;
        match read {
            Ok(Some(key)) => Ok(key),
            Ok(None) => Err(StepError::other(format!(
                "the guest agent of VM {vmid} answered no ed25519 public key for `{ED25519_HOST_KEY}`; {both}"
            ))),
            Err(err) => Err(StepError::other(format!(
                "could not read the SSH host key of VM {vmid} (`{ED25519_HOST_KEY}`) through the QEMU guest agent: {err}; {both}"
            ))),
        }
    }

    /// Marks the guest's block `applying` with this plan (a no-op when it already is), before a
    /// step after which a stopped run must resume on the guest as this plan's work (a move).
    pub(super) async fn mark_applying(
        &self,
        host: &DesiredHost,
        node: &str,
        vmid: u32,
    ) -> Result<(), StepError> {
        self.cas_write(node, vmid, "marked it as being applied", |raw| {
            let metadata = self.metadata_for(host, vmid, raw, true)?;
            let current = crate::proxmox::qemu::config_text(raw, "description").unwrap_or_default();
            let description = super::params::notes(host, &current, &metadata);
            Ok((description != current).then(|| vec![("description".into(), description)]))
        })
        .await?;
        Ok(())
    }

    /// Moves the VM to `target` (live while it runs, its local disks with it) after asking
    /// Proxmox what could stop it. Marks the block `applying` first, so a run that stops after
    /// the move resumes on the new node as this plan's work.
    pub(super) async fn migrate(
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
        let check = migrate_check(client, node, vmid, target).await?;
        if let Some(blocker) = check.blocker(vmid, target) {
            return Err(StepError::other(blocker));
        }
        let form = check.form(target);
        let path = format!("{}/migrate", vm_path(node, vmid));
        let timeout = self.req.options.task_timeout;
        // A second migrate of a VM that already moved fails on the old node: never re-sent blind.
        let warnings = self
            .req
            .options
            .step_retry
            .run("migrate", Resend::OnlyIfNotExecuted, || post_and_wait(client, &path, &form, timeout))
            .await?;
        let how = if check.running { "live" } else { "offline" };
        let disks = if check.local_disks.is_empty() {
            String::new()
        } else {
            format!(", with its local disks {}", check.local_disks.join(", "))
        };
        Ok(Done::ok(()).detail(format!("{node} → {target}, {how}{disks}")).warnings(warnings))
    }

    /// Lets go of the VM (`nixprox.vm.keep`): see [`super::release`].
    pub(super) async fn release(&self, node: &str, vmid: u32) -> Result<Done<()>, StepError> {
        let options = self.req.options;
        let kind = self.plan.kind;
        let released =
            release_vm(self.req.client, options.step_retry, options.task_timeout, kind, node, vmid)
                .await
                .map_err(|err| StepError::other(err.to_string()))?;
        Ok(match released {
            Released::Done { warnings } => Done::ok(())
                .detail(format!("{} {vmid}: `nixprox` tag and metadata block removed", kind.noun()))
                .warnings(warnings),
            Released::AlreadyUnmanaged => Done::already(()),
        })
    }
}
