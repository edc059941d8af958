//! A container's config (`GET /nodes/{node}/lxc/{vmid}/config`) as the planner compares it: the
//! shared settings in [`crate::spec::VmSpec`], the rest in [`ContainerSpec`], with
//! pve-container's defaults for absent keys (`src/PVE/LXC/Config.pm`, `$confdesc`: memory and
//! swap 512, cores unlimited, a mount point without `backup` not backed up, `unprivileged` off
//! when absent). The notes are `description`, as for a VM, so the metadata block is read the
//! same way.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::property::{PropertyString, is_net_key, parse_tags, value_bool, value_text, value_u64};
use super::vm::LiveConfig;
use crate::spec::container::{
    ContainerSpec, CtNetSpec, Features, MountSpec, VolumeSpec, address_of, shared_spec,
};
use crate::spec::{MANAGED_TAG, parse_size};

/// pve-container's default memory and swap (MiB) when the config has none.
const DEFAULT_MIB: u64 = 512;

/// A container config as [`LiveConfig`] (its `container` set, `boot_disks` empty).
pub fn live_config(config: &Map<String, Value>, pending: BTreeSet<String>) -> LiveConfig {
    let text = |key: &str| config.get(key).and_then(value_text);
    let flag = |key: &str| config.get(key).and_then(value_bool).unwrap_or(false);
    let notes = super::qemu::notes_of(config);
    let mut tags = text("tags").map(|t| parse_tags(&t)).unwrap_or_default();
    tags.remove(MANAGED_TAG);
    let spec = shared_spec(
        text("hostname").unwrap_or_default(),
        tags,
        notes.user_text.clone(),
        flag("onboot"),
        flag("protection"),
        None,
    );
    LiveConfig {
        digest: text("digest").unwrap_or_default(),
        spec,
        metadata: notes.metadata().cloned(),
        unreadable_block: notes.unreadable().map(str::to_string),
        pending,
        boot_disks: Vec::new(),
        container: Some(container_spec(config)),
        ostype: text("ostype"),
    }
}

/// The container part of a config.
pub fn container_spec(config: &Map<String, Value>) -> ContainerSpec {
    let text = |key: &str| config.get(key).and_then(value_text);
    let number = |key: &str| config.get(key).and_then(value_u64);
    let mut mounts = BTreeMap::new();
    let mut networks = BTreeMap::new();
    for (key, value) in config {
        let Some(value) = value_text(value) else { continue };
        if is_mount_key(key) {
            if let Some(mount) = parse_mount(&value) {
                mounts.insert(key.clone(), mount);
            }
        } else if is_net_key(key)
            && let Some(net) = parse_ct_net(&value)
        {
            networks.insert(key.clone(), net);
        }
    }
    let features = text("features").map(|f| PropertyString::parse(&f)).unwrap_or_default();
    ContainerSpec {
        cores: number("cores").and_then(|n| u32::try_from(n).ok()),
        memory_mib: number("memory").unwrap_or(DEFAULT_MIB),
        swap_mib: number("swap").unwrap_or(DEFAULT_MIB),
        rootfs: text("rootfs")
            .and_then(|r| parse_volume(&PropertyString::parse(&r)))
            .unwrap_or(VolumeSpec { storage: String::new(), size_bytes: 0 }),
        mounts,
        networks,
        features: Features {
            nesting: features.flag("nesting").unwrap_or(false),
            keyctl: features.flag("keyctl").unwrap_or(false),
            fuse: features.flag("fuse").unwrap_or(false),
        },
        unprivileged: config.get("unprivileged").and_then(value_bool).unwrap_or(false),
        startup: text("startup"),
    }
}

/// `mp0` … `mp255`.
pub fn is_mount_key(key: &str) -> bool {
    key.strip_prefix("mp").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The storage and size of a volume (`local-lvm:vm-201-disk-0,size=8G`). A host path (a bind
/// mount) has no storage: its `storage` is the path, which never equals a declared storage.
fn parse_volume(prop: &PropertyString) -> Option<VolumeSpec> {
    let volume = prop.value_or_positional("volume")?;
    let storage = match volume.split_once(':') {
        Some((storage, _)) if !volume.starts_with('/') => storage.to_string(),
        _ => volume.to_string(),
    };
    let size_bytes = prop.get("size").and_then(|s| parse_size(s, 1)).unwrap_or(0);
    Some(VolumeSpec { storage, size_bytes })
}

/// `mpN`: `local-lvm:vm-201-disk-1,mp=/var/lib/x,size=2G,backup=1`.
pub fn parse_mount(text: &str) -> Option<MountSpec> {
    let prop = PropertyString::parse(text);
    Some(MountSpec {
        volume: parse_volume(&prop)?,
        path: prop.get("mp")?.to_string(),
        backup: prop.flag("backup").unwrap_or(false),
    })
}

/// `netN`: `name=eth0,bridge=vmbr0,hwaddr=BC:24:11:…,ip=dhcp,tag=20,firewall=1,type=veth`.
pub fn parse_ct_net(text: &str) -> Option<CtNetSpec> {
    let prop = PropertyString::parse(text);
    let pairs: Vec<(String, String)> =
        prop.items().filter_map(|(k, v)| k.map(|k| (k.to_string(), v.to_string()))).collect();
    Some(CtNetSpec {
        name: prop.get("name")?.to_string(),
        bridge: prop.get("bridge").unwrap_or_default().to_string(),
        mac: prop.get("hwaddr").map(str::to_ascii_uppercase),
        vlan: prop.get("tag").and_then(|t| t.parse().ok()),
        firewall: prop.flag("firewall").unwrap_or(false),
        address: address_of(&pairs),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_container_config_with_pve_containers_defaults() {
        let config = json!({
            "hostname": "proxy", "ostype": "nixos", "arch": "amd64", "unprivileged": 1,
            "rootfs": "local-lvm:vm-201-disk-0,size=8G",
            "mp0": "local-lvm:vm-201-disk-1,mp=/var/lib/data,size=2G,backup=1",
            "net0": "name=eth0,bridge=vmbr0,gw=10.0.0.1,hwaddr=bc:24:11:00:02:01,ip=10.0.0.5/24,tag=20,type=veth",
            "features": "nesting=1", "tags": "nixprox;Edge", "onboot": 1, "digest": "abc",
            "description": "Edge proxy.\n"
        });
        let live = live_config(config.as_object().expect("object"), BTreeSet::new());
        assert_eq!(live.spec.name, "proxy");
        assert_eq!(live.spec.tags, BTreeSet::from(["edge".to_string()]));
        assert!(live.spec.on_boot && !live.spec.protection);
        assert_eq!(live.ostype.as_deref(), Some("nixos"));
        let ct = live.container.expect("container");
        assert_eq!((ct.cores, ct.memory_mib, ct.swap_mib), (None, 512, 512));
        assert_eq!(ct.rootfs, VolumeSpec { storage: "local-lvm".into(), size_bytes: 8 << 30 });
        assert_eq!(ct.mounts["mp0"].path, "/var/lib/data");
        assert!(ct.mounts["mp0"].backup);
        let net = &ct.networks["net0"];
        assert_eq!(net.mac.as_deref(), Some("BC:24:11:00:02:01"));
        assert_eq!(net.address.as_deref(), Some("ip=10.0.0.5/24,gw=10.0.0.1"));
        assert_eq!(net.vlan, Some(20));
        assert_eq!(ct.features, Features { nesting: true, keyctl: false, fuse: false });
        assert!(ct.unprivileged);
    }

    #[test]
    fn a_bind_mount_keeps_its_path_as_storage() {
        let mount = parse_mount("/srv/media,mp=/media").expect("mount");
        assert_eq!(mount.volume.storage, "/srv/media");
        assert!(!is_mount_key("mp") && is_mount_key("mp12") && !is_mount_key("mpx"));
    }
}
