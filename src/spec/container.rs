//! The container kind's vocabulary: what a Proxmox container (LXC) holds beyond the settings
//! every guest shares (name, tags, description, onboot, protection, pool, which stay in
//! [`super::VmSpec`]). Both sides of a plan are reduced to it: the flake's
//! `nixprox.container.*` after defaults, and `GET /nodes/{node}/lxc/{vmid}/config`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A storage volume: the root file system, or a mount point (with `path`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub storage: String,
    pub size_bytes: u64,
}

/// A mount point (`mpN`): a volume mounted at `path` inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub volume: VolumeSpec,
    pub path: String,
    pub backup: bool,
}

/// A container network interface (`netN`). Unlike a VM's NIC it carries its address
/// (`ip=`, `gw=`, `ip6=`, `gw6=`): Proxmox writes it into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtNetSpec {
    /// The interface name inside the container (`name=`).
    pub name: String,
    pub bridge: String,
    /// Upper-case; on the desired side `None` means "whatever Proxmox picked".
    pub mac: Option<String>,
    pub vlan: Option<u16>,
    pub firewall: bool,
    /// `ip=…,gw=…,ip6=…,gw6=…` in that order, the keys present; on the desired side `None`
    /// means "not declared: keep".
    pub address: Option<String>,
}

/// `features:` flags nixprox knows. Others set by hand are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Features {
    pub nesting: bool,
    pub keyctl: bool,
    pub fuse: bool,
}

impl Features {
    /// The flags that are on, as Proxmox writes them (`nesting=1,keyctl=1`); empty when none.
    pub fn property(self) -> String {
        [("nesting", self.nesting), ("keyctl", self.keyctl), ("fuse", self.fuse)]
            .iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| format!("{name}=1"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The comparable part of a container beyond the shared settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// `None`: not limited (all of the node's cores).
    pub cores: Option<u32>,
    pub memory_mib: u64,
    pub swap_mib: u64,
    pub rootfs: VolumeSpec,
    pub mounts: BTreeMap<String, MountSpec>,
    pub networks: BTreeMap<String, CtNetSpec>,
    pub features: Features,
    pub unprivileged: bool,
    pub startup: Option<String>,
}

/// The shared settings of a container as a [`super::VmSpec`]: name, tags, description, onboot,
/// protection and pool are compared, matched and written like a VM's (one planner); the VM-only
/// fields hold fixed values nothing reads for a container. The one place a container's
/// `VmSpec` is built, so a new VM field needs one line here.
pub fn shared_spec(
    name: String,
    tags: std::collections::BTreeSet<String>,
    description: String,
    on_boot: bool,
    protection: bool,
    pool: Option<String>,
) -> super::VmSpec {
    super::VmSpec {
        name,
        cores: 0,
        sockets: 0,
        cpu_type: String::new(),
        memory_mib: 0,
        balloon_mib: None,
        bios: super::Bios::default(),
        machine: None,
        agent: false,
        disks: BTreeMap::new(),
        networks: BTreeMap::new(),
        tags,
        description,
        on_boot,
        protection,
        pool,
        hardware: Default::default(),
    }
}

/// The address keys of a container NIC, in the order [`CtNetSpec::address`] keeps them.
pub const ADDRESS_KEYS: [&str; 4] = ["ip", "gw", "ip6", "gw6"];

/// The address part of a `netN` value (or of cloud-init's `ipconfig0`, which writes the same
/// keys): `ip=…,gw=…` in [`ADDRESS_KEYS`] order; `None` when it has none.
pub fn address_of(pairs: &[(String, String)]) -> Option<String> {
    let parts: Vec<String> = ADDRESS_KEYS
        .iter()
        .filter_map(|key| pairs.iter().find(|(k, _)| k == key).map(|(k, v)| format!("{k}={v}")))
        .collect();
    (!parts.is_empty()).then(|| parts.join(","))
}
