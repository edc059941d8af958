//! The plan's data: what nixprox will do, host by host, and why.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::spec::GuestKind;

/// The version of the JSON schema ([`Plan`] serialised); bumped on breaking changes.
pub const SCHEMA_VERSION: u32 = 1;

/// The kinds of action, named exactly as in the JSON schema and the docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    UploadImage,
    CreateVm,
    Adopt,
    UpdateVm,
    MigrateVm,
    DetachDisk,
    ResizeDisk,
    Install,
    Switch,
    Reinstall,
    ReplaceVm,
    DestroyVm,
    Release,
    Noop,
}

impl ActionKind {
    /// Every kind, in the order summaries list them.
    pub const ALL: [ActionKind; 14] = [
        ActionKind::UploadImage,
        ActionKind::CreateVm,
        ActionKind::Adopt,
        ActionKind::UpdateVm,
        ActionKind::MigrateVm,
        ActionKind::DetachDisk,
        ActionKind::ResizeDisk,
        ActionKind::Install,
        ActionKind::Switch,
        ActionKind::Reinstall,
        ActionKind::ReplaceVm,
        ActionKind::DestroyVm,
        ActionKind::Release,
        ActionKind::Noop,
    ];

    /// The snake_case name used in JSON, docs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::UploadImage => "upload_image",
            ActionKind::CreateVm => "create_vm",
            ActionKind::Adopt => "adopt",
            ActionKind::UpdateVm => "update_vm",
            ActionKind::MigrateVm => "migrate_vm",
            ActionKind::DetachDisk => "detach_disk",
            ActionKind::ResizeDisk => "resize_disk",
            ActionKind::Install => "install",
            ActionKind::Switch => "switch",
            ActionKind::Reinstall => "reinstall",
            ActionKind::ReplaceVm => "replace_vm",
            ActionKind::DestroyVm => "destroy_vm",
            ActionKind::Release => "release",
            ActionKind::Noop => "noop",
        }
    }

    /// Whether the action loses data or running state that cannot be recovered. Detaching a
    /// disk counts: the guest loses it (Proxmox keeps the volume as `unusedN`, but a system
    /// that boots or mounts from it breaks).
    pub fn is_destructive(self) -> bool {
        matches!(
            self,
            ActionKind::Reinstall | ActionKind::ReplaceVm | ActionKind::DestroyVm | ActionKind::DetachDisk
        )
    }

    /// The verb summaries use: "2 to create".
    pub fn summary_verb(self) -> &'static str {
        match self {
            ActionKind::UploadImage => "upload",
            ActionKind::CreateVm => "create",
            ActionKind::Adopt => "adopt",
            ActionKind::UpdateVm => "update",
            ActionKind::MigrateVm => "migrate",
            ActionKind::DetachDisk => "detach",
            ActionKind::ResizeDisk => "resize",
            ActionKind::Install => "install",
            ActionKind::Switch => "switch",
            ActionKind::Reinstall => "reinstall",
            ActionKind::ReplaceVm => "replace",
            ActionKind::DestroyVm => "destroy",
            ActionKind::Release => "release",
            ActionKind::Noop => "unchanged",
        }
    }
}

/// When a changed VM setting takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Written to the config and in effect at once, running or not (a container's
    /// `$LXC_FASTPLUG_OPTIONS`: description, onboot, startup, protection, hostname, cores, tags).
    Immediate,
    /// Applied to the running VM (or container) at once.
    Hotplug,
    /// Recorded as pending; takes effect at the next reboot.
    NeedsReboot,
}

/// One field's before and after. `None` means absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Dotted path: `cores`, `disks.scsi0.size`, `networks.net0.vlan`, `tags`, `system`.
    pub field: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// Only on `update_vm` changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<Effect>,
}

/// Why a destructive action will not run, and what would allow it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocked {
    pub reason: String,
    /// The setting that would allow it (`policies.allow_replace`), or `None` when nothing can
    /// (a protected VM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setting: Option<String>,
}

/// One step of a host's plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Action {
    pub kind: ActionKind,
    pub reason: String,
    pub changes: Vec<Change>,
    pub blocked: Option<Blocked>,
}

/// The VM a host plan acts on; `vmid` is `None` when Proxmox will allocate it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmRef {
    pub node: String,
    pub vmid: Option<u32>,
}

/// Everything planned for one host (or one orphan VM).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostPlan {
    /// The host's attribute name; for an orphan, the VM's name.
    pub host: String,
    pub vm: VmRef,
    /// The guest kind (`vm` or `container`): the one field that tells a container's plan from
    /// a VM's. Left out of the JSON (and the plan id) for VMs, so VM plans are as before.
    #[serde(skip_serializing_if = "GuestKind::is_vm")]
    pub kind: GuestKind,
    /// True when this entry is a `nixprox`-tagged VM that no host declares.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub orphan: bool,
    /// Set when `--probe` found a running system other than the recorded one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
    pub actions: Vec<Action>,
    /// The pool move a runnable `update_vm` makes, typed for the executor (its `pool` change
    /// shows it to the reviewer). Not serialised: the JSON and the plan id stay as they are.
    #[serde(skip)]
    pub pool_move: Option<PoolMove>,
    /// What changes inside NixOS between the pull request's base and head, for hosts whose
    /// system changes; set after planning (`run::changes`), never part of the plan id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nixos_changes: Option<crate::nixos_changes::NixosChanges>,
    /// Changes Proxmox holds as pending for the running VM (applied earlier without a reboot):
    /// a state the plan shows until the VM runs them, never an action (apply does not write
    /// them again). Volatile live data: never part of the plan id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_reboot: Option<PendingReboot>,
}

/// What waits for a VM's restart: in its config (so the plan compares the flake with it and
/// plans nothing), not yet in the running VM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PendingReboot {
    /// The Proxmox config keys with a pending value or removal (`memory`, `cores`, `net1`), as
    /// `/pending` lists them.
    pub keys: Vec<String>,
    /// Field by field, named like the module options: `before` what the VM runs, `after` what
    /// it takes at its next start. Empty when only keys nixprox does not model are pending.
    pub changes: Vec<Change>,
    /// How to make them take effect, in one sentence.
    pub how: String,
}

/// A VM moving between resource pools (`None`: no pool). Pool membership is not part of the
/// VM config, so apply writes it on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolMove {
    pub from: Option<String>,
    pub to: Option<String>,
}

/// What `plan --probe` read from one installed host over SSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Probe {
    /// `/run/current-system` points here.
    Running { system: String },
    /// The host could not be asked (unreachable, wrong key, timeout); never fatal.
    Unreachable { reason: String },
}

/// A host whose running system is not the one nixprox recorded: changed outside nixprox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub recorded: String,
    pub running: String,
}

/// A host `--probe` could not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreachable {
    pub host: String,
    pub reason: String,
}

/// What `--probe` found, over all hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct ProbeReport {
    /// Hosts that were asked.
    pub probed: usize,
    /// Hosts running a system other than the recorded one.
    pub changed: Vec<String>,
    pub unreachable: Vec<Unreachable>,
}

impl HostPlan {
    /// Whether anything (even blocked) is planned beyond `noop`.
    pub fn has_changes(&self) -> bool {
        self.actions.iter().any(|a| a.kind != ActionKind::Noop)
    }

    /// Whether the host is in sync in every way: nothing planned and nothing waiting for a
    /// reboot. Renderings list such hosts as unchanged.
    pub fn is_unchanged(&self) -> bool {
        !self.has_changes() && self.pending_reboot.is_none()
    }
}

/// Per-kind counts of runnable (not blocked) actions, plus the blocked ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Summary {
    /// Every kind, including zeros, so consumers need no defaults.
    #[serde(flatten)]
    pub counts: BTreeMap<&'static str, usize>,
    pub blocked: usize,
    pub orphans: usize,
    /// Hosts whose VM has changes waiting for a reboot ([`HostPlan::pending_reboot`]).
    pub pending_reboot: usize,
}

impl Summary {
    /// The count of runnable actions of one kind.
    pub fn count(&self, kind: ActionKind) -> usize {
        self.counts.get(kind.as_str()).copied().unwrap_or(0)
    }
}

/// The whole plan. Pure data: rendering and applying read it, nothing mutates it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub version: u32,
    pub plan_id: String,
    pub summary: Summary,
    pub hosts: Vec<HostPlan>,
    /// Present when the plan was made with `--probe`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeReport>,
    /// `nixprox-*` files on the image storages that no host of the flake refers to any more
    /// (`images:import/nixprox-….qcow2 (node pve1, 1.2 GiB)`): `nixprox gc-images --delete`
    /// removes them. Read after planning, so not part of the plan id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreferenced_images: Vec<String>,
}

impl Plan {
    /// Whether applying would do anything (blocked actions count: a reviewer must see them).
    pub fn has_changes(&self) -> bool {
        self.hosts.iter().any(HostPlan::has_changes)
    }

    /// Whether a VM has changes waiting for a reboot: `drift` keeps its issue open for them.
    pub fn has_pending(&self) -> bool {
        self.hosts.iter().any(|h| h.pending_reboot.is_some())
    }

    /// Whether any destructive action is planned or blocked: the renderings show a banner.
    pub fn has_destructive(&self) -> bool {
        self.hosts.iter().flat_map(|h| &h.actions).any(|a| a.kind.is_destructive())
    }
}
