//! The read path: the live cluster as [`LiveVm`]s, with the config of every VM that matters.
//!
//! One `GET /cluster/resources?type=vm` lists every guest the token may see: QEMU VMs and
//! containers, each with its [`GuestKind`] (the guest-kind seam, docs/architecture.md);
//! templates are kept and flagged, since hosts clone from them. Configs are read only for VMs that matter to a plan: those tagged
//! `nixprox`, and those named like a declared host (so a name clash with an unmanaged VM is
//! seen, never silently adopted). Those reads run concurrently within a bound, and the result
//! is sorted by VMID, so the order PVE answers in never shows in a plan.
//!
//! Pending changes: `/pending` costs one more request per VM, and only a running VM can have
//! pending changes (PVE applies changes to a stopped VM at once). So `/pending` is read for
//! running VMs only; for stopped ones [`LiveConfig::pending`] is empty.

use std::collections::BTreeSet;

use futures::{StreamExt, TryStreamExt, stream};
use reqwest::Method;
use serde_json::{Map, Value};

use super::client::Client;
use super::error::{ProxmoxError, UnexpectedAnswer};
use super::property::{
    Drive, PropertyString, agent_enabled, is_drive_key, is_net_key, parse_drive, parse_net, parse_tags,
    value_bool, value_text, value_u64,
};
use super::vm::{LiveConfig, LiveVm};
use crate::spec::{Bios, GuestKind, MANAGED_TAG, VmSpec};

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// Names of the hosts the flake declares: VMs with these names get their config read even
    /// when they are not tagged.
    pub host_names: BTreeSet<String>,
    /// Config reads in flight at once (`concurrency.api` in nixprox.yaml); 0 counts as 1.
    pub concurrency: usize,
}

/// Reads the cluster: every QEMU VM, with the config of those that matter, sorted by VMID.
pub async fn read_cluster(client: &Client, request: &ReadRequest) -> Result<Vec<LiveVm>, ProxmoxError> {
    let prefetched = prefetch_cluster(client, request.concurrency).await?;
    finish_read(client, prefetched, request).await
}

/// The part of the read that needs no host names: the resource list and the configs of the
/// VMs tagged `nixprox`. `plan` runs it while nix evaluates the flake, so the API's round trips
/// overlap the evaluation; [`finish_read`] then reads what only the host names select.
#[derive(Debug)]
pub struct Prefetched {
    listed: Vec<(LiveVm, Option<String>)>,
    /// Configs read so far, by index into `listed`.
    configs: Vec<(usize, LiveConfig)>,
    /// Indices whose config another reader owns (a plan shard reads only its nodes' VMs):
    /// [`finish_read`] leaves them alone.
    settled: BTreeSet<usize>,
}

impl Prefetched {
    /// The resource list: every QEMU VM with its pool, sorted by VMID.
    pub fn listing(&self) -> impl Iterator<Item = (&LiveVm, Option<&str>)> {
        self.listed.iter().map(|(vm, pool)| (vm, pool.as_deref()))
    }
}

/// Lists the VMs and reads the configs of the managed ones, `concurrency` at a time.
pub async fn prefetch_cluster(client: &Client, concurrency: usize) -> Result<Prefetched, ProxmoxError> {
    let listed = list_cluster(client).await?;
    read_managed(client, listed, concurrency, |_| true).await
}

/// The resource list alone (no config read yet).
pub async fn list_cluster(client: &Client) -> Result<Prefetched, ProxmoxError> {
    Ok(Prefetched { listed: fetch_resources(client).await?, configs: Vec::new(), settled: BTreeSet::new() })
}

/// Reads the configs of the managed VMs that `owned` keeps; the other managed VMs are
/// settled (someone else reads them, and [`finish_read`] will not).
pub async fn read_managed(
    client: &Client,
    prefetched: Prefetched,
    concurrency: usize,
    owned: impl Fn(&LiveVm) -> bool,
) -> Result<Prefetched, ProxmoxError> {
    let Prefetched { listed, mut configs, mut settled } = prefetched;
    let wanted = select(&listed, |vm| vm.is_managed() && owned(vm));
    settled.extend(select(&listed, |vm| vm.is_managed() && !owned(vm)).into_iter().map(|w| w.0));
    configs.extend(read_configs(client, wanted, concurrency).await?);
    Ok(Prefetched { listed, configs, settled })
}

/// Reads the configs of the VMs named like a declared host that the prefetch did not read
/// (untagged ones: a name clash or an adoption), and assembles the VMs.
pub async fn finish_read(
    client: &Client,
    prefetched: Prefetched,
    request: &ReadRequest,
) -> Result<Vec<LiveVm>, ProxmoxError> {
    let Prefetched { listed, mut configs, settled } = prefetched;
    let done: BTreeSet<usize> = configs.iter().map(|(index, _)| *index).chain(settled).collect();
    let wanted: Vec<Wanted> = select(&listed, |vm| request.host_names.contains(&vm.name))
        .into_iter()
        .filter(|w| !done.contains(&w.0))
        .collect();
    tracing::debug!(vms = listed.len(), configs = configs.len() + wanted.len(), "reading VM configs");
    configs.extend(read_configs(client, wanted, request.concurrency).await?);
    let mut vms: Vec<LiveVm> = listed.into_iter().map(|(vm, _)| vm).collect();
    for (index, config) in configs {
        vms[index].config = Some(config);
    }
    read_guest_oses(client, &mut vms, request.concurrency).await;
    Ok(vms)
}

/// Whether the plan asks a VM's guest agent what it runs: a VM nixprox may adopt (named like a
/// host, untagged, no metadata block) whose agent is enabled and which runs.
fn may_adopt(vm: &LiveVm) -> bool {
    let Some(config) = &vm.config else { return false };
    vm.kind == GuestKind::Vm
        && !vm.template
        && !vm.is_managed()
        && config.metadata.is_none()
        && config.unreadable_block.is_none()
        && config.spec.agent
        && vm.status == "running"
}

/// Reads `get-osinfo` of every VM nixprox may adopt, `concurrency` at a time. The answer
/// enters the plan only as "not NixOS" (its os-release `ID`), so the same VM gives the same
/// plan whoever reads it with the privilege; a failure is recorded as unknown, never an error.
async fn read_guest_oses(client: &Client, vms: &mut [LiveVm], concurrency: usize) {
    let wanted: Vec<(usize, String, u32)> = vms
        .iter()
        .enumerate()
        .filter(|(_, vm)| may_adopt(vm))
        .map(|(index, vm)| (index, vm.node.clone(), vm.vmid))
        .collect();
    let read: Vec<(usize, super::guest::GuestOs)> =
        stream::iter(wanted)
            .map(|(index, node, vmid)| async move {
                (index, super::guest::read_guest_os(client, &node, vmid).await)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    for (index, os) in read {
        if let super::guest::GuestOs::Unknown { reason } = &os {
            // Not an error: the plan adopts it in place, and apply checks over SSH that it runs
            // NixOS. Said here, since the plan's reason is the same either way (its id too).
            tracing::warn!(
                "could not read what VM {} `{}` runs through its guest agent: {reason}; if it does not run NixOS, apply will refuse to adopt it (the plan can convert it only once it reads its OS)",
                vms[index].vmid,
                vms[index].name
            );
        }
        if let Some(config) = vms[index].config.as_mut() {
            config.guest_os = Some(os);
        }
    }
}

/// A config to read: index into the listing, node, VMID, kind, running, pool.
type Wanted = (usize, String, u32, GuestKind, bool, Option<String>);

/// The non-template VMs of the listing that `matters`.
fn select(listed: &[(LiveVm, Option<String>)], matters: impl Fn(&LiveVm) -> bool) -> Vec<Wanted> {
    listed
        .iter()
        .enumerate()
        .filter(|(_, (vm, _))| !vm.template && matters(vm))
        .map(|(index, (vm, pool))| {
            (index, vm.node.clone(), vm.vmid, vm.kind, vm.status == "running", pool.clone())
        })
        .collect()
}

async fn read_configs(
    client: &Client,
    wanted: Vec<Wanted>,
    concurrency: usize,
) -> Result<Vec<(usize, LiveConfig)>, ProxmoxError> {
    stream::iter(wanted)
        .map(|(index, node, vmid, kind, running, pool)| async move {
            read_config(client, &node, vmid, kind, running, pool).await.map(|config| (index, config))
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
}

/// `GET /cluster/resources?type=vm`: every guest, QEMU VMs and containers, without configs
/// (`nixprox import` picks one by VMID or name; a lost create answer is looked for there).
pub async fn list_guests(client: &Client) -> Result<Vec<LiveVm>, ProxmoxError> {
    Ok(fetch_resources(client).await?.into_iter().map(|(vm, _)| vm).collect())
}

/// `GET /cluster/resources?type=vm`: QEMU VMs only (no containers), without configs, sorted by
/// VMID.
pub async fn list_vms(client: &Client) -> Result<Vec<LiveVm>, ProxmoxError> {
    Ok(fetch_resources(client)
        .await?
        .into_iter()
        .map(|(vm, _)| vm)
        .filter(|vm| vm.kind == GuestKind::Vm)
        .collect())
}

async fn fetch_resources(client: &Client) -> Result<Vec<(LiveVm, Option<String>)>, ProxmoxError> {
    const PATH: &str = "/cluster/resources";
    let data = client.get(PATH, &[("type", "vm")]).await?;
    parse_resources(&data).map_err(|err| err.at(Method::GET, PATH, &data))
}

/// The resource list, reduced to guests (QEMU VMs and containers; nodes, storages and the rest
/// dropped), each with its pool: the config does not name the pool, only the resource list does.
pub fn parse_resources(data: &Value) -> Result<Vec<(LiveVm, Option<String>)>, UnexpectedAnswer> {
    let unexpected = |detail: String| UnexpectedAnswer(detail);
    let items = data.as_array().ok_or_else(|| unexpected("expected a list of resources".into()))?;
    let mut vms = Vec::new();
    for item in items {
        let kind = match item.get("type").and_then(Value::as_str) {
            Some("qemu") => GuestKind::Vm,
            Some("lxc") => GuestKind::Container,
            _ => continue,
        };
        let vmid =
            item.get("vmid").and_then(value_u64).and_then(|v| u32::try_from(v).ok()).ok_or_else(|| {
                unexpected(format!("a {} resource has no valid `vmid`: {item}", kind.api_segment()))
            })?;
        let text = |key: &str| item.get(key).and_then(value_text);
        let vm = LiveVm {
            vmid,
            kind,
            node: text("node").ok_or_else(|| unexpected(format!("VM {vmid} has no `node`")))?,
            name: text("name").unwrap_or_default(),
            status: text("status").unwrap_or_else(|| "unknown".into()),
            template: item.get("template").and_then(value_bool).unwrap_or(false),
            lock: text("lock").filter(|l| !l.is_empty()),
            tags: text("tags").map(|t| parse_tags(&t)).unwrap_or_default(),
            config: None,
            ha_state: text("hastate").filter(|s| !s.is_empty()),
        };
        vms.push((vm, text("pool").filter(|p| !p.is_empty())));
    }
    vms.sort_by_key(|(vm, _)| vm.vmid);
    Ok(vms)
}

/// `GET /nodes/{node}/{qemu|lxc}/{vmid}/config` (and `/pending` when `running`; pve-container
/// answers `/pending` in qemu-server's form), converted for the guest's kind.
pub async fn read_config(
    client: &Client,
    node: &str,
    vmid: u32,
    kind: GuestKind,
    running: bool,
    pool: Option<String>,
) -> Result<LiveConfig, ProxmoxError> {
    let segment = kind.api_segment();
    let path = format!("/nodes/{node}/{segment}/{vmid}/config");
    let pending_path = format!("/nodes/{node}/{segment}/{vmid}/pending");
    let (config, pending) = if running {
        let (config, pending) = tokio::try_join!(client.get(&path, &[]), client.get(&pending_path, &[]))?;
        (config, Some(pending))
    } else {
        (client.get(&path, &[]).await?, None)
    };
    let mut map = config
        .as_object()
        .ok_or_else(|| UnexpectedAnswer("expected an object".into()).at(Method::GET, &path, &config))?
        .clone();
    let mut running = None;
    let pending = match &pending {
        Some(data) => {
            let keys = pending_keys(data).map_err(|err| err.at(Method::GET, &pending_path, data))?;
            if !keys.is_empty() {
                let mut current = map.clone();
                current_values(&mut current, data);
                let notes = super::qemu::notes_of(&current);
                running = Some(VmSpec { pool: pool.clone(), ..spec_from_config(&current, &notes.user_text) });
            }
            overlay_pending(&mut map, data);
            keys
        }
        None => BTreeSet::new(),
    };
    let mut live = match kind {
        GuestKind::Vm => live_config(&map, pending),
        GuestKind::Container => super::container::live_config(&map, pending),
    };
    live.spec.pool = pool;
    live.running = running;
    Ok(live)
}

/// The config as the VM runs it now: every key with a pending change at its current value
/// (`value` of its `/pending` entry), a pending addition removed. Whatever `GET …/config`
/// answered by default (Proxmox: the pending values, qemu-server `API2/Qemu.pm` `vm_config`
/// without `current`), `/pending` holds both sides.
pub fn current_values(config: &mut Map<String, Value>, data: &Value) {
    for item in data.as_array().into_iter().flatten() {
        let Some(key) = item.get("key").and_then(Value::as_str) else { continue };
        let changed =
            item.get("pending").is_some() || item.get("delete").and_then(value_bool).unwrap_or(false);
        if !changed {
            continue;
        }
        match item.get("value") {
            Some(value) => {
                config.insert(key.to_string(), value.clone());
            }
            None => {
                config.remove(key);
            }
        }
    }
}

/// The config as it will be after the next reboot: pending values replace current ones and
/// pending deletions remove keys. The planner compares the flake with this, so a change that
/// apply already scheduled is not planned again on every run (the plan says it waits for a
/// reboot instead).
pub fn overlay_pending(config: &mut Map<String, Value>, data: &Value) {
    for item in data.as_array().into_iter().flatten() {
        let Some(key) = item.get("key").and_then(Value::as_str) else { continue };
        if item.get("delete").and_then(value_bool).unwrap_or(false) {
            config.remove(key);
        } else if let Some(value) = item.get("pending") {
            config.insert(key.to_string(), value.clone());
        }
    }
}

/// Keys of `/pending` with a change waiting: a new value (`pending`) or a removal (`delete`).
pub fn pending_keys(data: &Value) -> Result<BTreeSet<String>, UnexpectedAnswer> {
    let items =
        data.as_array().ok_or_else(|| UnexpectedAnswer("expected a list of pending entries".into()))?;
    Ok(items
        .iter()
        .filter(|item| {
            item.get("pending").is_some() || item.get("delete").and_then(value_bool).unwrap_or(false)
        })
        .filter_map(|item| item.get("key").and_then(Value::as_str).map(str::to_string))
        .collect())
}

/// A VM config as [`LiveConfig`]: Proxmox's defaults for absent keys, the notes split into
/// the user's text and nixprox's metadata block.
pub fn live_config(config: &Map<String, Value>, pending: BTreeSet<String>) -> LiveConfig {
    let text = |key: &str| config.get(key).and_then(value_text);
    let notes = super::qemu::notes_of(config);
    let spec = spec_from_config(config, &notes.user_text);
    LiveConfig {
        digest: text("digest").unwrap_or_default(),
        spec,
        metadata: notes.metadata().cloned(),
        unreadable_block: notes.unreadable().map(str::to_string),
        pending,
        running: None,
        boot_disks: boot_disks(config),
        guest_os: None,
        container: None,
        ostype: None,
    }
}

/// The disk slots a VM boots from, as qemu-server decides (`PVE/QemuServer/Drive.pm`,
/// `get_bootdisks`, and `PVE/QemuServer.pm`, `get_default_bootdevices`): the drives of
/// `boot: order=…`; with the legacy form (`boot: cdn`) or no `boot` at all, `bootdisk` when
/// set, else the first disk that is not a CD-ROM in the order ide, scsi, virtio, sata (what
/// the firmware then boots). Only real disks are listed (no CD-ROM, cloud-init or NIC).
pub fn boot_disks(config: &Map<String, Value>) -> Vec<String> {
    let text = |key: &str| config.get(key).and_then(value_text);
    let is_disk = |slot: &str| {
        is_drive_key(slot) && text(slot).is_some_and(|v| matches!(parse_drive(&v), Drive::Disk(_)))
    };
    let boot = text("boot").map(|b| PropertyString::parse(&b));
    if let Some(order) = boot.as_ref().and_then(|b| b.get("order").map(str::to_string)) {
        return order.split(';').map(str::trim).filter(|slot| is_disk(slot)).map(str::to_string).collect();
    }
    if let Some(disk) = text("bootdisk").filter(|d| is_disk(d)) {
        return vec![disk];
    }
    let index = |slot: &str, bus: &str| slot.strip_prefix(bus).and_then(|n| n.parse::<u32>().ok());
    ["ide", "scsi", "virtio", "sata"]
        .iter()
        .find_map(|bus| {
            config.keys().filter(|k| is_disk(k)).filter_map(|k| index(k, bus).map(|i| (i, k))).min()
        })
        .map(|(_, slot)| vec![slot.clone()])
        .unwrap_or_default()
}

/// The comparable part of a config. Defaults are qemu-server's for an absent key.
fn spec_from_config(config: &Map<String, Value>, description: &str) -> VmSpec {
    let text = |key: &str| config.get(key).and_then(value_text);
    let number = |key: &str| config.get(key).and_then(value_u64);
    let flag = |key: &str| config.get(key).and_then(value_bool).unwrap_or(false);
    // `memory` is a property string since PVE 8.1 (`current=2048`), a number before.
    let memory = text("memory")
        .and_then(|m| PropertyString::parse(&m).value_or_positional("current").and_then(|v| v.parse().ok()))
        .unwrap_or(512);
    let (cpu_type, hardware) = hardware::hardware_of(config);
    let machine = text("machine")
        .and_then(|m| PropertyString::parse(&m).value_or_positional("type").map(str::to_string));
    let mut disks = std::collections::BTreeMap::new();
    let mut networks = std::collections::BTreeMap::new();
    for (key, value) in config {
        let Some(value) = value_text(value) else { continue };
        if is_drive_key(key) {
            if let Drive::Disk(disk) = parse_drive(&value) {
                disks.insert(key.clone(), disk);
            }
        } else if is_net_key(key)
            && let Some(net) = parse_net(&value)
        {
            networks.insert(key.clone(), net);
        }
    }
    let mut tags = text("tags").map(|t| parse_tags(&t)).unwrap_or_default();
    tags.remove(MANAGED_TAG);
    VmSpec {
        name: text("name").unwrap_or_default(),
        cores: number("cores").and_then(|n| u32::try_from(n).ok()).unwrap_or(1),
        sockets: number("sockets").and_then(|n| u32::try_from(n).ok()).unwrap_or(1),
        cpu_type,
        memory_mib: memory,
        balloon_mib: number("balloon"),
        bios: if text("bios").as_deref() == Some("ovmf") { Bios::Ovmf } else { Bios::Seabios },
        machine,
        agent: text("agent").is_some_and(|a| agent_enabled(&a)),
        disks,
        networks,
        tags,
        description: description.to_string(),
        on_boot: flag("onboot"),
        protection: flag("protection"),
        pool: None,
        hardware,
    }
}

/// A template that cannot be used as a clone source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "template `{wanted}` not found (templates in the cluster: {}; set `nixprox.proxmox.template` or `defaults.template` to one of them, by name or VMID)",
        list_or_none(available)
    )]
    NotFound { wanted: String, available: Vec<String> },
    #[error(
        "VM {vmid} (`{name}`) is not a template (convert it with `qm template {vmid}`, or name a template)"
    )]
    NotATemplate { vmid: u32, name: String },
    #[error(
        "template name `{wanted}` is ambiguous: VMs {} carry it (name the template by VMID)",
        join_ids(vmids)
    )]
    Ambiguous { wanted: String, vmids: Vec<u32> },
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() { "none".into() } else { items.join(", ") }
}

fn join_ids(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// Finds the clone source named `wanted` (a VMID or a name). With several templates of that
/// name (one per node is common with local storage), the one on `node` wins.
pub fn find_template<'a>(
    vms: &'a [LiveVm],
    wanted: &str,
    node: Option<&str>,
) -> Result<&'a LiveVm, TemplateError> {
    let wanted = wanted.trim();
    // Clone sources are QEMU templates: a container of the same name or id is no match.
    let vms: Vec<&'a LiveVm> = vms.iter().filter(|vm| vm.kind == GuestKind::Vm).collect();
    if let Ok(vmid) = wanted.parse::<u32>()
        && let Some(vm) = vms.iter().copied().find(|vm| vm.vmid == vmid)
    {
        return if vm.template {
            Ok(vm)
        } else {
            Err(TemplateError::NotATemplate { vmid, name: vm.name.clone() })
        };
    }
    let named: Vec<&LiveVm> = vms.iter().copied().filter(|vm| vm.template && vm.name == wanted).collect();
    match named.as_slice() {
        [one] => Ok(one),
        [] => {
            if let Some(vm) = vms.iter().find(|vm| vm.name == wanted) {
                return Err(TemplateError::NotATemplate { vmid: vm.vmid, name: vm.name.clone() });
            }
            let available = vms
                .iter()
                .filter(|vm| vm.template)
                .map(|vm| format!("`{}` ({})", vm.name, vm.vmid))
                .collect();
            Err(TemplateError::NotFound { wanted: wanted.to_string(), available })
        }
        many => {
            let on_node: Vec<&&LiveVm> = many.iter().filter(|vm| Some(vm.node.as_str()) == node).collect();
            match on_node.as_slice() {
                [one] => Ok(one),
                _ => Err(TemplateError::Ambiguous {
                    wanted: wanted.to_string(),
                    vmids: many.iter().map(|vm| vm.vmid).collect(),
                }),
            }
        }
    }
}

mod hardware;

#[cfg(test)]
mod tests;
