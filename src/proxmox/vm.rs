//! A VM as the cluster reports it, reduced to what planning and applying need.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::metadata::Metadata;
use crate::spec::container::ContainerSpec;
use crate::spec::{GuestKind, VmSpec};

/// One QEMU VM from `/cluster/resources`, with its config when it was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveVm {
    pub vmid: u32,
    /// QEMU VM or container (`type` in the resource list).
    #[serde(default)]
    pub kind: GuestKind,
    pub node: String,
    pub name: String,
    /// `running`, `stopped`, … (volatile: never part of a plan id unless an action depends on it).
    pub status: String,
    pub template: bool,
    /// Proxmox's config lock (`backup`, `clone`, `migrate`, …), if any.
    pub lock: Option<String>,
    /// All tags, lower-cased, including [`crate::spec::MANAGED_TAG`].
    pub tags: BTreeSet<String>,
    /// Read only for VMs that matter to the plan (managed, or named like a host).
    pub config: Option<LiveConfig>,
    /// The requested state when the VM is an HA resource (`hastate` of `/cluster/resources`:
    /// `started`, `stopped`, …); `None` when HA does not manage it. HA decides its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha_state: Option<String>,
}

impl LiveVm {
    /// Whether the VM carries the `nixprox` tag.
    pub fn is_managed(&self) -> bool {
        self.tags.contains(crate::spec::MANAGED_TAG)
    }
}

/// `/nodes/{node}/qemu/{vmid}/config`, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveConfig {
    /// The config digest, passed back on writes as a compare-and-swap.
    pub digest: String,
    pub spec: VmSpec,
    /// nixprox's metadata block from the notes, when present and readable.
    pub metadata: Option<Metadata>,
    /// Why the notes' metadata block cannot be read (a newer version, a damaged payload), with
    /// the fix. Such a VM is never planned as if it had no block: it is left untouched.
    pub unreadable_block: Option<String>,
    /// Keys that differ in the pending config (changes waiting for a reboot).
    pub pending: BTreeSet<String>,
    /// The VM as it runs now, when changes are pending: the config with every pending key at
    /// its current value (`spec` is the config as the next start will take it). `None` when
    /// nothing is pending.
    #[serde(default)]
    pub running: Option<VmSpec>,
    /// The disk slots the VM boots from ([`super::read::boot_disks`]): never detached.
    pub boot_disks: Vec<String>,
    /// What its guest agent says it runs, read only for a VM nixprox may adopt (untagged, no
    /// metadata block, agent enabled, running; [`super::read::finish_read`]); `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_os: Option<super::guest::GuestOs>,
    /// A container's settings beyond the shared ones in `spec` (`None` for a VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerSpec>,
    /// A container's `ostype`, which Proxmox detects from its root file system (`nixos` when it
    /// holds `/nix/store`); `None` for a VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ostype: Option<String>,
}
