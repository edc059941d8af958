//! Cluster resource mappings (`/cluster/mapping/{pci,usb}`): which nodes each mapping has a
//! device on. VMs pass host devices through them (`hostpci0: mapping=gpu`), the only way an API
//! token may (qemu-server `API2/Qemu.pm`, `check_hostpci_perm`, `check_usb_perm`).

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::Value;

use super::client::Client;
use super::error::{ProxmoxError, UnexpectedAnswer};

/// The kinds of mapping a VM can name (`dir`: virtiofs, PVE 8.4+).
pub const KINDS: [&str; 3] = ["pci", "usb", "dir"];

/// The first Proxmox VE release with directory mappings and virtiofs (its 8.4 release notes;
/// qemu-server `PVE/QemuServer/Virtiofs.pm`, pve-manager `API2/Cluster/Mapping/Dir.pm`).
pub const VIRTIOFS_SINCE: (u32, u32) = (8, 4);

/// The mappings the token can see, by kind (`pci`, `usb`), then id, with the nodes their
/// entries name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mappings {
    pub by_kind: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// PCI mappings marked `live-migration-capable`: a running VM with them may migrate live
    /// (qemu-server `QemuMigrate/Helpers.pm`, `check_local_resources`).
    pub live_migratable: BTreeSet<String>,
    /// The cluster's version (`GET /version`) when it is older than Proxmox VE 8.4, which
    /// brought directory mappings and virtiofs: `dir` mappings are then not read (the path
    /// does not exist) and a declared share is blocked naming the version.
    pub dir_unsupported: Option<String>,
}

impl Mappings {
    /// The nodes mapping `id` of `kind` has a device on; `None` when the token sees no such
    /// mapping (it does not exist, or the token holds none of `Mapping.Audit`, `Mapping.Use`
    /// and `Mapping.Modify` on it: pve-manager `API2/Cluster/Mapping/PCI.pm` `index`).
    pub fn nodes(&self, kind: &str, id: &str) -> Option<&BTreeSet<String>> {
        self.by_kind.get(kind)?.get(id)
    }
}

/// `GET /cluster/mapping/<kind>` for each of `kinds`.
pub async fn read_mappings(client: &Client, kinds: &BTreeSet<&str>) -> Result<Mappings, ProxmoxError> {
    let mut mappings = Mappings::default();
    let mut kinds = kinds.clone();
    if kinds.contains("dir") {
        // Every user may read it (pve-manager `API2/Version.pm`: `user => 'all'`).
        let data = client.get("/version", &[]).await?;
        if let Some(version) = super::import::PveVersion::from_data(&data)
            && (version.major, version.minor) < VIRTIOFS_SINCE
        {
            kinds.remove("dir");
            mappings.dir_unsupported = Some(version.raw);
        }
    }
    for kind in &kinds {
        let path = format!("/cluster/mapping/{kind}");
        let data = client.get(&path, &[]).await?;
        let entries = parse_index(&data).map_err(|err| err.at(Method::GET, &path, &data))?;
        mappings.by_kind.insert((*kind).to_string(), entries);
        if *kind == "pci" {
            mappings.live_migratable = live_migratable(&data);
        }
    }
    Ok(mappings)
}

/// The ids of entries with `live-migration-capable` set.
pub fn live_migratable(data: &Value) -> BTreeSet<String> {
    data.as_array()
        .into_iter()
        .flatten()
        .filter(|item| {
            item.get("live-migration-capable").is_some_and(|v| {
                v.as_u64() == Some(1) || v.as_bool() == Some(true) || v.as_str() == Some("1")
            })
        })
        .filter_map(|item| item.get("id").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// The index's entries: `{"id": "gpu", "map": ["node=pve1,path=0000:01:00.0,…", …]}`.
pub fn parse_index(data: &Value) -> Result<BTreeMap<String, BTreeSet<String>>, UnexpectedAnswer> {
    let items = data.as_array().ok_or_else(|| UnexpectedAnswer("expected a list of mappings".into()))?;
    let mut out = BTreeMap::new();
    for item in items {
        let id = item
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| UnexpectedAnswer(format!("a mapping has no `id`: {item}")))?;
        let nodes = item
            .get("map")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter_map(|entry| entry.split(',').find_map(|p| p.trim().strip_prefix("node=")))
            .map(str::to_string)
            .collect();
        out.insert(id.to_string(), nodes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_their_nodes() {
        let data = serde_json::json!([
            {"id": "gpu", "map": ["id=10de:2204,node=pve1,path=0000:01:00.0", "node=pve2,path=0000:02:00.0"]},
            {"id": "empty", "map": []}
        ]);
        let parsed = parse_index(&data).expect("index");
        assert_eq!(parsed["gpu"], BTreeSet::from(["pve1".to_string(), "pve2".to_string()]));
        assert!(parsed["empty"].is_empty());
        assert!(parse_index(&serde_json::json!({})).is_err());
    }
}
