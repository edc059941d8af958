//! The steps that change an existing VM: configure (compare-and-swap config writes), pool,
//! resize, memory for kexec, start, address, pending changes, reboot, finish, destroy. Each
//! reads live state first and writes only what is missing; each write goes through the
//! [`retry`](crate::retry) rule with how it behaves when sent twice.

use std::time::Duration;

use serde_json::Value;

use super::executor::HostRun;
use super::params::{self, Scope, config_write};
use super::step::{Done, StepError};
use crate::deploy::Deployed;
use crate::flake::DesiredHost;
use crate::metadata::{Block, Metadata};
use crate::plan::PoolMove;
use crate::proxmox::container::{guest_path, guest_running, read_guest_raw, write_guest_config};
use crate::proxmox::property::{Drive, PropertyString, format_tags, parse_drive, value_bool, value_text};
use crate::proxmox::qemu::{
    AddressWait, Form, RawConfig, config_text, digest_of, notes_of, power_state, read_raw, tags_of, vm_path,
    wait_for_address,
};
use crate::proxmox::read::pending_keys;
use crate::proxmox::{Client, ProxmoxError, post_and_wait};
use crate::retry::{Resend, RetryPolicy};
use crate::spec::{GuestKind, MANAGED_TAG, allocation_size, format_size};

/// Config writes retried after a digest conflict (someone else changed the VM in between).
const CAS_ATTEMPTS: usize = 4;

/// A compare-and-swap write that went through.
pub(super) struct Written {
    pub warnings: Vec<String>,
    /// Digest conflicts on the way: someone else changed the VM meanwhile.
    pub conflicts: u32,
}

/// Writes the form `next` computes from the config just read, with that config's digest
/// (compare-and-swap). When someone else wrote in between, PVE refuses ("checksum
/// mismatch"), and the config is read and the form computed again, up to [`CAS_ATTEMPTS`]
/// times. `Ok(None)`: `next` found nothing to write. `doing` completes "while nixprox …".
#[allow(clippy::too_many_arguments)]
pub(super) async fn cas_write(
    client: &Client,
    retry: RetryPolicy,
    timeout: Duration,
    kind: GuestKind,
    node: &str,
    vmid: u32,
    doing: &str,
    mut next: impl FnMut(&RawConfig) -> Result<Option<Form>, StepError>,
) -> Result<Option<Written>, StepError> {
    let path = format!("{}/config", guest_path(kind, node, vmid));
    let mut conflicts = 0;
    for _ in 0..CAS_ATTEMPTS {
        let raw = read_guest_raw(client, kind, node, vmid).await?.ok_or_else(|| {
            StepError::other(format!("VM {vmid} on node `{node}` disappeared while nixprox {doing}"))
        })?;
        let Some(mut form) = next(&raw)? else { return Ok(None) };
        let digest = digest_of(&raw);
        if !digest.is_empty() {
            form.push(("digest".into(), digest));
        }
        let result = retry
            .run(&format!("config of VM {vmid}"), Resend::Idempotent, || {
                write_guest_config(client, kind, node, vmid, &form, timeout)
            })
            .await;
        match result {
            Ok(warnings) => return Ok(Some(Written { warnings, conflicts })),
            Err(err) if err.is_digest_conflict() => {
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

impl HostRun<'_> {
    /// [`cas_write`] with this run's client, retry policy and task timeout.
    pub(super) async fn cas_write(
        &self,
        node: &str,
        vmid: u32,
        doing: &str,
        next: impl FnMut(&RawConfig) -> Result<Option<Form>, StepError>,
    ) -> Result<Option<Written>, StepError> {
        let options = self.req.options;
        let kind = self.plan.kind;
        cas_write(self.req.client, options.step_retry, options.task_timeout, kind, node, vmid, doing, next)
            .await
    }

    /// Whether the plan holds a `detach_disk` back: the disks the flake adds wait with it.
    pub(super) fn detach_held(&self) -> bool {
        self.plan.actions.iter().any(|a| a.kind == crate::plan::ActionKind::DetachDisk && a.blocked.is_some())
    }

    /// The disk slots the plan's runnable `detach_disk` takes away (`disks.scsi1`, before set,
    /// after unset): exactly what the reviewer saw, never what the VM has at write time.
    pub(super) fn detach_slots(&self) -> Vec<String> {
        self.plan
            .actions
            .iter()
            .filter(|a| a.kind == crate::plan::ActionKind::DetachDisk && a.blocked.is_none())
            .flat_map(|a| &a.changes)
            .filter(|c| c.before.is_some() && c.after.is_none())
            .filter_map(|c| c.field.strip_prefix("disks."))
            .filter(|slot| !slot.contains('.'))
            .map(str::to_string)
            .collect()
    }

    /// The metadata block to write: the one in the notes (or a new one), naming the host,
    /// with `applying` set or cleared. An unreadable block is never overwritten.
    pub(super) fn metadata_for(
        &self,
        host: &DesiredHost,
        vmid: u32,
        raw: &RawConfig,
        applying: bool,
    ) -> Result<Metadata, StepError> {
        let mut metadata = match notes_of(raw).block {
            Block::Current(metadata) => *metadata,
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

    /// The metadata block the VM's notes hold now, for the deployer.
    pub(super) async fn recorded_metadata(
        &self,
        host: &DesiredHost,
        node: &str,
        vmid: u32,
    ) -> Result<Option<Metadata>, StepError> {
        let raw = read_guest_raw(self.req.client, self.plan.kind, node, vmid).await?.ok_or_else(|| {
            StepError::other(format!("the VM of host `{}` ({node}/{vmid}) is gone", host.host))
        })?;
        let notes = notes_of(&raw);
        if let Some(reason) = notes.unreadable() {
            return Err(StepError::other(format!(
                "the nixprox block in the notes of VM {vmid} cannot be read: {reason}"
            )));
        }
        Ok(notes.metadata().cloned())
    }

    /// Brings the config to the declaration with `POST …/config` (compare-and-swap, see
    /// [`Self::cas_write`]). Every write carries the `nixprox` tag and the metadata block
    /// with `applying`.
    pub(super) async fn configure(
        &self,
        host: &DesiredHost,
        node: &str,
        vmid: u32,
        scope: Scope<'_>,
    ) -> Result<Done<()>, StepError> {
        let mut keys = String::new();
        let written = self
            .cas_write(node, vmid, "configured it", |raw| {
                let metadata = self.metadata_for(host, vmid, raw, true)?;
                let write = config_write(host, raw, &metadata, scope);
                keys = write.keys().join(", ");
                Ok((!write.is_empty()).then(|| write.form("")))
            })
            .await?;
        let Some(Written { warnings, conflicts }) = written else { return Ok(Done::already(())) };
        let detail = if conflicts > 0 {
            format!("{keys}; after {conflicts} digest conflict(s): the VM changed meanwhile")
        } else {
            keys
        };
        Ok(Done::ok(()).detail(detail).warnings(warnings))
    }

    /// Moves an existing VM into the declared pool, or out of its pool (pool membership is
    /// not part of the VM config: `PUT /pools` with `allow-move`, or `delete`).
    pub(super) async fn pool(&self, vmid: u32, change: &PoolMove) -> Result<Done<()>, StepError> {
        let client = self.req.client;
        let vms = vmid.to_string();
        let retry = self.req.options.step_retry;
        match (&change.to, &change.from) {
            (want, have) if want == have => Ok(Done::already(())),
            (Some(want), _) => {
                let form = [("poolid", want.as_str()), ("vms", vms.as_str()), ("allow-move", "1")];
                retry.run("pool", Resend::Idempotent, || client.put("/pools", &form)).await?;
                Ok(Done::ok(()).detail(format!("into pool {want}")))
            }
            (None, Some(have)) => {
                let form = [("poolid", have.as_str()), ("vms", vms.as_str()), ("delete", "1")];
                retry.run("pool", Resend::Idempotent, || client.put("/pools", &form)).await?;
                Ok(Done::ok(()).detail(format!("out of pool {have}")))
            }
            (None, None) => Ok(Done::already(())),
        }
    }

    /// Grows every declared disk that is smaller than declared to its allocation (whole 4 MiB,
    /// see [`allocation_size`]), with an absolute size (so a repeated request is a no-op).
    /// Never shrinks.
    pub(super) async fn resize(
        &self,
        host: &DesiredHost,
        node: &str,
        vmid: u32,
    ) -> Result<Done<()>, StepError> {
        let client = self.req.client;
        let gone = || {
            StepError::other(format!("VM {vmid} on node `{node}` disappeared before its disks were resized"))
        };
        let recorded = |raw: &RawConfig, slot: &str| match config_text(raw, slot).map(|v| parse_drive(&v)) {
            Some(Drive::Disk(live)) => Some(live.size_bytes),
            _ => None,
        };
        let raw = read_raw(client, node, vmid).await?.ok_or_else(gone)?;
        let mut asked = Vec::new();
        let mut warnings = Vec::new();
        let path = format!("{}/resize", vm_path(node, vmid));
        for (slot, disk) in &host.spec.disks {
            let Some(live) = recorded(&raw, slot) else {
                if self.detach_held() {
                    // Not added: it waits for the blocked `detach_disk` (see `plan::detach`).
                    continue;
                }
                return Err(StepError::other(format!(
                    "disk `{slot}` of VM {vmid} is missing after configure"
                )));
            };
            if disk.size_bytes <= live {
                continue;
            }
            let size = format_size(allocation_size(disk.size_bytes));
            let timeout = self.req.options.task_timeout;
            let result = self
                .req
                .options
                .step_retry
                .run("resize", Resend::Idempotent, || async {
                    let data = client.put(&path, &[("disk", slot.as_str()), ("size", size.as_str())]).await?;
                    crate::proxmox::wait_answer(client, &data, timeout).await
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
            return Ok(Done::already(()));
        }
        // qemu-server keeps the recorded size when the volume already holds what was asked for
        // (a storage rounded an earlier size up): only a rescan on the node records the truth.
        let raw = read_raw(client, node, vmid).await?.ok_or_else(gone)?;
        let mut grown = Vec::new();
        for (slot, declared, before, size) in asked {
            match recorded(&raw, slot) {
                Some(now) if now >= declared => {
                    grown.push(format!("{slot} {}→{}", format_size(before), format_size(now)));
                }
                _ => warnings.push(format!(
                    "Proxmox kept the recorded size {} of disk `{slot}` of VM {vmid}: its volume already holds at least {size} (the storage rounded an earlier size up); `qm disk rescan --vmid {vmid}` on node `{node}` records it",
                    format_size(before)
                )),
            }
        }
        let done = Done::ok(()).warnings(warnings);
        Ok(if grown.is_empty() { done } else { done.detail(grown.join(", ")) })
    }

    /// Sets the VM's `memory` alone (compare-and-swap). The value says whether the VM keeps
    /// running with another amount until its next restart: a running VM takes a memory change
    /// as pending. `restore` only changes the wording of the warning.
    pub(super) async fn set_memory(
        &self,
        node: &str,
        vmid: u32,
        mib: u64,
        restore: bool,
    ) -> Result<Done<bool>, StepError> {
        let (current, pending) = self.memory_state(node, vmid).await?;
        // What the VM gets at its next start.
        if pending.unwrap_or(current) == mib {
            let waits = current != mib;
            let detail = if waits { format!("{mib} MiB at the next restart") } else { format!("{mib} MiB") };
            return Ok(Done::already(waits).detail(detail));
        }
        // Writing the current value also drops another pending value (PVE's cleanup_pending).
        let form = || Ok(Some(vec![("memory".to_string(), mib.to_string())]));
        let written = self.cas_write(node, vmid, "set its memory", |_| form()).await?;
        let mut warnings = written.map(|w| w.warnings).unwrap_or_default();
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
        Ok(Done::ok(waits).detail(detail).warnings(warnings))
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

    pub(super) async fn start(&self, node: &str, vmid: u32) -> Result<Done<()>, StepError> {
        let client = self.req.client;
        if power_state(client, node, vmid).await?.is_running() {
            return Ok(Done::already(()));
        }
        let path = format!("{}/status/start", vm_path(node, vmid));
        let timeout = self.req.options.task_timeout;
        // Idempotent: PVE refuses to start a running VM, which is checked below.
        let warnings = self
            .req
            .options
            .step_retry
            .run("start", Resend::Idempotent, || post_and_wait(client, &path, &[], timeout))
            .await;
        match warnings {
            Ok(warnings) => {
                let wait = self.req.options.task_timeout;
                let poll = self.req.options.poll_interval;
                if let PowerWait::TimedOut =
                    wait_power(client, GuestKind::Vm, node, vmid, true, wait, poll).await?
                {
                    return Err(StepError::other(format!(
                        "VM {vmid} on node `{node}` is an HA resource: its start was handed to the HA manager (requested state `started`), but it did not run within {}s; see `ha-manager status` on the node",
                        wait.as_secs()
                    )));
                }
                Ok(Done::ok(()).warnings(warnings))
            }
            // A start whose answer was lost and that is now running has done its work.
            Err(err)
                if !err.not_executed()
                    && power_state(client, node, vmid).await.is_ok_and(|s| s.is_running()) =>
            {
                Ok(Done::ok(()))
            }
            Err(err) => Err(err.into()),
        }
    }

    pub(super) async fn find_address(
        &self,
        host: &DesiredHost,
        node: &str,
        vmid: u32,
    ) -> Result<Done<String>, StepError> {
        if let Some(address) = &host.address {
            return Ok(Done::ok(address.clone()).detail(format!("{address}, static")));
        }
        if !host.spec.agent {
            return Err(StepError::other(format!(
                "host `{}` has no static address and its QEMU guest agent is off (set `nixprox.address` or `nixprox.vm.agent = true`)",
                host.host
            )));
        }
        let options = self.req.options;
        let client = self.req.client;
        let found =
            wait_for_address(client, node, vmid, options.address_timeout, options.poll_interval).await?;
        let address = match found {
            AddressWait::Found(address) => address,
            AddressWait::TimedOut { agent_answered } => {
                let why = if agent_answered {
                    "the QEMU guest agent answered but reported no usable address (did the VM get a DHCP lease?)"
                } else {
                    "the QEMU guest agent never answered (is qemu-guest-agent installed and running in the VM's image?)"
                };
                return Err(StepError::other(format!(
                    "no address for VM {vmid} on node `{node}` within {}s: {why}; set `nixprox.address` for a static address, or raise `apply.address_timeout` (docs/troubleshooting.md#the-guest-agent-does-not-answer)",
                    options.address_timeout.as_secs()
                )));
            }
        };
        Ok(Done::ok(address.clone()).detail(format!("{address}, from the guest agent")))
    }

    pub(super) async fn pending(&self, node: &str, vmid: u32) -> Result<Done<Vec<String>>, StepError> {
        let client = self.req.client;
        if !power_state(client, node, vmid).await?.is_running() {
            return Ok(Done::already(Vec::new()).detail("VM stopped: changes apply at its next start"));
        }
        let path = format!("{}/pending", vm_path(node, vmid));
        let data = client.get(&path, &[]).await?;
        let keys = pending_keys(&data).map_err(|err| err.at(reqwest::Method::GET, &path, &data))?;
        let keys: Vec<String> = keys.into_iter().collect();
        let detail = if keys.is_empty() { "none".to_string() } else { keys.join(", ") };
        Ok(Done::ok(keys).detail(detail))
    }

    pub(super) async fn reboot(&self, node: &str, vmid: u32, why: &[String]) -> Result<Done<()>, StepError> {
        let client = self.req.client;
        let path = format!("{}/status/reboot", vm_path(node, vmid));
        let form = vec![("timeout".to_string(), self.req.options.shutdown_timeout.as_secs().to_string())];
        let timeout = self.req.options.task_timeout;
        // A second reboot would restart the guest twice.
        let warnings = self
            .req
            .options
            .step_retry
            .run("reboot", Resend::OnlyIfNotExecuted, || post_and_wait(client, &path, &form, timeout))
            .await?;
        let detail = format!("rebooted for {} (deploy.allowReboot)", why.join(", "));
        Ok(Done::ok(()).detail(detail).warnings(warnings))
    }

    /// Once everything of the host is done: records what was deployed and clears `applying`.
    pub(super) async fn finish(
        &self,
        host: &DesiredHost,
        node: &str,
        vmid: u32,
        deployed: Option<&Deployed>,
    ) -> Result<Done<()>, StepError> {
        let written = self
            .cas_write(node, vmid, "recorded its metadata", |raw| {
                let mut metadata = self.metadata_for(host, vmid, raw, false)?;
                if let Some(deployed) = deployed {
                    record(&mut metadata, deployed, self.req.git_rev);
                }
                if metadata.system.is_some() {
                    // Installed: from now on only a gated reinstall may wipe it.
                    metadata.created = None;
                }
                if deployed.is_some_and(|d| d.disk_layout.is_some()) {
                    // nixprox partitioned the disks itself: they are no longer someone else's.
                    metadata.adopted = None;
                }
                let current = config_text(raw, "description").unwrap_or_default();
                let description = params::notes(host, &current, &metadata);
                let tags = tags_of(raw);
                if current == description && tags.contains(MANAGED_TAG) {
                    return Ok(None);
                }
                let mut all_tags = tags;
                all_tags.insert(MANAGED_TAG.into());
                Ok(Some(vec![("description".into(), description), ("tags".into(), format_tags(&all_tags))]))
            })
            .await?;
        Ok(match written {
            Some(written) => Done::ok(()).detail("metadata block updated").warnings(written.warnings),
            None => Done::already(()),
        })
    }

    /// Shutdown (bounded), stop, then `DELETE …?purge=1&destroy-unreferenced-disks=1`; only
    /// the VM the plan named, only while it still carries the `nixprox` tag, never a protected one.
    pub(super) async fn destroy(&self, node: &str, vmid: u32) -> Result<Done<()>, StepError> {
        let client = self.req.client;
        let kind = self.plan.kind;
        let Some(raw) = read_guest_raw(client, kind, node, vmid).await? else {
            return Ok(Done::already(()).detail(format!("VM {vmid} is already gone")));
        };
        let name = self.check_destroyable(&raw, node, vmid)?;
        let mut warnings = self.stop(node, vmid).await?;
        let options = self.req.options;
        let path = guest_path(kind, node, vmid);
        let result = options
            .step_retry
            .run("destroy", Resend::Idempotent, || async {
                let data =
                    client.delete(&path, &[("purge", "1"), ("destroy-unreferenced-disks", "1")]).await?;
                crate::proxmox::wait_answer(client, &data, options.task_timeout).await
            })
            .await;
        match result {
            Ok(more) => warnings.extend(more),
            Err(err) if read_guest_raw(client, kind, node, vmid).await.is_ok_and(|r| r.is_none()) => {
                tracing::warn!("destroy of VM {vmid} reported `{err}`, but the VM is gone");
            }
            Err(err) => return Err(err.into()),
        }
        Ok(Done::ok(()).detail(format!("VM {vmid} `{name}`")).warnings(warnings))
    }

    /// The VM's name when it is still the one the plan named: `nixprox`-tagged, the same
    /// host (by name for an orphan, by the metadata block otherwise), not protected.
    fn check_destroyable(&self, raw: &RawConfig, node: &str, vmid: u32) -> Result<String, StepError> {
        let host_name = self.plan.host.as_str();
        // A container's name is its `hostname`.
        let name = config_text(raw, "name").or_else(|| config_text(raw, "hostname")).unwrap_or_default();
        let notes = notes_of(raw);
        if let Some(reason) = notes.unreadable() {
            return Err(StepError::other(format!(
                "refusing to destroy VM {vmid} on node `{node}`: the nixprox block in its notes cannot be read ({reason})"
            )));
        }
        let recorded = notes.metadata().map(|m| m.host.clone());
        let same_vm = tags_of(raw).contains(MANAGED_TAG)
            && if self.plan.orphan {
                name == host_name
            } else {
                recorded.as_deref().is_none_or(|h| h == host_name)
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
        Ok(name)
    }

    /// Shuts a running VM down within `shutdown_timeout`, stops it if it is still running;
    /// returns the warnings for the report.
    async fn stop(&self, node: &str, vmid: u32) -> Result<Vec<String>, StepError> {
        let client = self.req.client;
        let options = self.req.options;
        let mut warnings = Vec::new();
        let kind = self.plan.kind;
        if !guest_running(client, kind, node, vmid).await? {
            return Ok(warnings);
        }
        let shutdown = vec![("timeout".to_string(), options.shutdown_timeout.as_secs().to_string())];
        let path = format!("{}/status/shutdown", guest_path(kind, node, vmid));
        let wait = options.shutdown_timeout + std::time::Duration::from_secs(60);
        let poll = options.poll_interval;
        match post_and_wait(client, &path, &shutdown, wait).await {
            // An HA resource's shutdown only asks the HA manager, whose task ends at once.
            Ok(_) => {
                if let PowerWait::TimedOut = wait_power(client, kind, node, vmid, false, wait, poll).await? {
                    warnings.push(format!(
                        "the HA manager did not shut VM {vmid} down within {}s; it was stopped",
                        wait.as_secs()
                    ));
                }
            }
            Err(err) => {
                tracing::warn!("VM {vmid} did not shut down cleanly ({err}); stopping it");
                warnings.push(format!(
                    "shutdown did not finish, the VM was stopped: {}",
                    err.to_string().lines().next().unwrap_or_default()
                ));
            }
        }
        if guest_running(client, kind, node, vmid).await? {
            let path = format!("{}/status/stop", guest_path(kind, node, vmid));
            options
                .step_retry
                .run("stop", Resend::Idempotent, || post_and_wait(client, &path, &[], options.task_timeout))
                .await?;
            if let PowerWait::TimedOut =
                wait_power(client, kind, node, vmid, false, options.task_timeout, poll).await?
            {
                return Err(StepError::other(format!(
                    "VM {vmid} on node `{node}` is an HA resource and still runs {}s after its stop was handed to the HA manager; see `ha-manager status`, and re-run apply once it is stopped",
                    options.task_timeout.as_secs()
                )));
            }
        }
        Ok(warnings)
    }
}

/// How a wait for a guest's power state ended.
enum PowerWait {
    /// The guest is as wanted.
    Reached,
    /// Not an HA resource: the task that ended has done all it will (nothing to wait for).
    NotHa,
    /// An HA resource that is not there yet.
    TimedOut,
}

/// Waits, for an HA resource, until the guest runs (`running`) or has stopped. qemu-server's
/// `vm_start`, `vm_stop` and `vm_shutdown` (and pve-container's) hand an HA-managed guest to
/// the HA manager (`ha-manager set vm:<id> --state started`, `ha-manager crm-command stop`):
/// their task ("Requesting HA start…") ends before the guest has changed, and the HA manager
/// acts within its next rounds. `vm_reboot` is not handed over (qemu-server restarts the guest
/// itself, and HA's requested state stays `started`). Which guests: `status/current`'s
/// `ha.managed`.
async fn wait_power(
    client: &Client,
    kind: GuestKind,
    node: &str,
    vmid: u32,
    running: bool,
    timeout: Duration,
    poll: Duration,
) -> Result<PowerWait, ProxmoxError> {
    let path = format!("{}/status/current", guest_path(kind, node, vmid));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = client.get(&path, &[]).await?;
        if (status.get("status").and_then(Value::as_str) == Some("running")) == running {
            return Ok(PowerWait::Reached);
        }
        let managed = status.get("ha").and_then(|ha| ha.get("managed")).and_then(value_bool).unwrap_or(false);
        if !managed {
            return Ok(PowerWait::NotHa);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(PowerWait::TimedOut);
        }
        tokio::time::sleep(poll).await;
    }
}

/// Merges what a deploy step reports into the metadata block, with the git revision.
fn record(metadata: &mut Metadata, deployed: &Deployed, git_rev: Option<&str>) {
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
    if let Some(rev) = git_rev {
        metadata.git_rev = Some(rev.to_string());
    }
}
