//! The `import` content type: whether the cluster and a storage can take disk-image uploads,
//! which import files a storage holds, and the disk string that creates a VM disk from one.
//!
//! Facts from Proxmox's source: qcow2/raw/vmdk uploads with `content=import` exist from PVE 8.4
//! (pve-storage `API2/Storage/Status.pm`); only storages with a path (file-based) hold them, and
//! `import` is off by default, also on `local`; the content listing reports a file's size on
//! disk (`Plugin.pm`, `get_subdir_files`); a disk is created from an import with
//! `<storage>:0,import-from=<volume>` and gets the image's virtual size (qemu-server
//! `API2/Qemu.pm`, `create_disks`). Node and storage names go into paths as they are: PVE's
//! formats for both (`pve-node`, `pve-storage-id`) allow no character that needs escaping.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::property::{update_disk, value_bool, value_text, value_u64};
use super::{Client, ProxmoxError};
use crate::spec::DiskSpec;

/// The first release whose upload API takes `content=import` for disk images.
pub const IMPORT_UPLOAD_SINCE: (u32, u32) = (8, 4);

/// Storage types that cannot hold files (PVE's plugins without a path), so never `import`.
const BLOCK_STORAGES: [&str; 8] = ["lvm", "lvmthin", "zfspool", "rbd", "iscsi", "iscsidirect", "zfs", "pbs"];

/// Why images cannot go to a storage. Messages name the storage, the node and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(
        "cannot upload disk images to Proxmox VE {version} at `{url}` (importing qcow2/raw images needs Proxmox VE {}.{} or later: upgrade the cluster, or bootstrap these hosts with `nixprox.bootstrap.template` or `nixprox.bootstrap.iso`)",
        IMPORT_UPLOAD_SINCE.0,
        IMPORT_UPLOAD_SINCE.1
    )]
    TooOld { version: String, url: String },
    #[error(
        "storage `{storage}` does not exist on node `{node}` (check `nixprox.bootstrap.image.storage` or `defaults.image_storage`)"
    )]
    NoSuchStorage { storage: String, node: String },
    #[error(
        "storage `{storage}` is disabled or not available on node `{node}` (enable it for the node: Datacenter → Storage → `{storage}` → Nodes)"
    )]
    Disabled { storage: String, node: String },
    #[error(
        "storage `{storage}` is not active on node `{node}` (is it mounted and reachable? see `pvesm status` on the node)"
    )]
    Inactive { storage: String, node: String },
    #[error(
        "storage `{storage}` on node `{node}` is of type `{kind}`, which cannot hold image files (use a file-based storage, e.g. `dir`, `nfs`, `cifs` or `cephfs`, with the `import` content type)"
    )]
    NotFileBased { storage: String, node: String, kind: String },
    #[error(
        "storage `{storage}` on node `{node}` does not allow `import` content (allow it with `pvesm set {storage} --content {}`, or in the UI: Datacenter → Storage → `{storage}` → Content → Import)",
        with_import(content)
    )]
    NoImportContent { storage: String, node: String, content: BTreeSet<String> },
    /// Boxed: the other variants are small, and this error is returned from cheap checks.
    #[error(transparent)]
    Api(Box<ProxmoxError>),
}

impl From<ProxmoxError> for ImportError {
    fn from(err: ProxmoxError) -> ImportError {
        ImportError::Api(Box::new(err))
    }
}

/// The content list `pvesm set --content` needs: what the storage has now, plus `import`.
fn with_import(content: &BTreeSet<String>) -> String {
    let mut all: Vec<&str> = content.iter().map(String::as_str).filter(|c| *c != "none").collect();
    all.push("import");
    all.join(",")
}

/// `GET /version`: `{"version": "8.4.1", "release": "8.4", …}` (PVE 7 said `"version": "7.4-3"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PveVersion {
    pub major: u32,
    pub minor: u32,
    /// `version` as the API sent it.
    pub raw: String,
}

impl PveVersion {
    /// Reads `release` (major.minor), else the start of `version`.
    pub fn from_data(data: &Value) -> Option<PveVersion> {
        let raw = data.get("version").and_then(Value::as_str).unwrap_or_default().to_string();
        let text = data.get("release").and_then(Value::as_str).filter(|r| !r.is_empty()).unwrap_or(&raw);
        let mut parts = text.split(['.', '-']).map(|p| p.trim().parse::<u32>().ok());
        let (major, minor) = (parts.next()??, parts.next().flatten().unwrap_or(0));
        Some(PveVersion { major, minor, raw: if raw.is_empty() { text.to_string() } else { raw } })
    }

    pub fn supports_import_upload(&self) -> bool {
        (self.major, self.minor) >= IMPORT_UPLOAD_SINCE
    }
}

/// The cluster's version, or an error naming the fix when it cannot import images.
pub async fn check_import_version(client: &Client) -> Result<PveVersion, ImportError> {
    let data = client.get("/version", &[]).await?;
    let version = PveVersion::from_data(&data).ok_or_else(|| ProxmoxError::Decode {
        method: reqwest::Method::GET,
        path: "/version".into(),
        detail: "no `release` or `version`".into(),
        body: data.to_string(),
    })?;
    if !version.supports_import_upload() {
        return Err(ImportError::TooOld { version: version.raw, url: client.url().to_string() });
    }
    Ok(version)
}

/// `GET /nodes/{node}/storage/{storage}/status`, the part that says whether images fit there.
/// (This endpoint needs `Datastore.Audit` or `Datastore.AllocateSpace`; `GET /storage/{s}`
/// would need `Datastore.Allocate`, more than a plan token should hold.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageStatus {
    pub storage: String,
    pub node: String,
    /// Plugin type: `dir`, `nfs`, `lvmthin`, …
    pub kind: String,
    pub content: BTreeSet<String>,
    pub enabled: bool,
    pub active: bool,
    /// Shared by the nodes (NFS, CIFS, CephFS): one upload serves every node that has it.
    pub shared: bool,
    /// Free bytes, when the storage reports them.
    pub avail: Option<u64>,
}

impl StorageStatus {
    pub fn from_data(node: &str, storage: &str, data: &Value) -> StorageStatus {
        let flag = |key: &str| data.get(key).and_then(value_bool);
        StorageStatus {
            storage: storage.to_string(),
            node: node.to_string(),
            kind: data.get("type").and_then(value_text).unwrap_or_default(),
            content: data
                .get("content")
                .and_then(value_text)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect(),
            // PVE leaves the flags out when they are false.
            enabled: flag("enabled").unwrap_or(false),
            active: flag("active").unwrap_or(false),
            shared: flag("shared").unwrap_or(false),
            avail: data.get("avail").and_then(value_u64),
        }
    }

    /// Whether image files can be uploaded here, with the fix when not.
    pub fn check_import(&self) -> Result<(), ImportError> {
        let (storage, node) = (self.storage.clone(), self.node.clone());
        if !self.enabled {
            return Err(ImportError::Disabled { storage, node });
        }
        if BLOCK_STORAGES.contains(&self.kind.as_str()) {
            return Err(ImportError::NotFileBased { storage, node, kind: self.kind.clone() });
        }
        if !self.content.contains("import") {
            return Err(ImportError::NoImportContent { storage, node, content: self.content.clone() });
        }
        if !self.active {
            return Err(ImportError::Inactive { storage, node });
        }
        Ok(())
    }
}

/// Reads a storage's status on a node and checks it can hold image uploads.
pub async fn check_import_storage(
    client: &Client,
    node: &str,
    storage: &str,
) -> Result<StorageStatus, ImportError> {
    let status = storage_status(client, node, storage).await?;
    status.check_import()?;
    Ok(status)
}

/// Reads a storage's status on a node (`GET /nodes/{node}/storage/{storage}/status`), whatever
/// it can hold.
pub async fn storage_status(
    client: &Client,
    node: &str,
    storage: &str,
) -> Result<StorageStatus, ImportError> {
    let path = format!("/nodes/{node}/storage/{storage}/status");
    let data = match client.get(&path, &[]).await {
        Ok(data) => data,
        // PVE answers an unknown storage with a parameter error on `storage`.
        Err(err) if err.status() == Some(400) && err.to_string().contains("No such storage") => {
            return Err(ImportError::NoSuchStorage { storage: storage.to_string(), node: node.to_string() });
        }
        Err(err) => return Err(err.into()),
    };
    Ok(StorageStatus::from_data(node, storage, &data))
}

/// One file of a storage's `import` content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportFile {
    /// `local:import/nixprox-…-scsi0.qcow2`
    pub volid: String,
    /// The file name after `import/`.
    pub name: String,
    /// Bytes on disk.
    pub size: u64,
    /// `qcow2`, `raw`, `vmdk`, `ova`, `ovf`.
    pub format: String,
}

/// `GET /nodes/{node}/storage/{storage}/content?content=import` (needs `Datastore.Audit` or
/// `Datastore.AllocateSpace` on the storage), sorted by name.
pub async fn list_import_files(
    client: &Client,
    node: &str,
    storage: &str,
) -> Result<Vec<ImportFile>, ProxmoxError> {
    list_content_files(client, node, storage, "import").await
}

/// [`list_import_files`] for any file content type (`import`, `vztmpl`, `iso`), sorted by name.
pub async fn list_content_files(
    client: &Client,
    node: &str,
    storage: &str,
    content: &str,
) -> Result<Vec<ImportFile>, ProxmoxError> {
    let path = format!("/nodes/{node}/storage/{storage}/content");
    let data = client.get(&path, &[("content", content)]).await?;
    let marker = format!(":{content}/");
    let mut files: Vec<ImportFile> = data
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|item| item.get("content").and_then(Value::as_str).is_none_or(|c| c == content))
        .filter_map(|item| {
            let volid = item.get("volid").and_then(Value::as_str)?.to_string();
            let name = volid.split_once(marker.as_str())?.1.to_string();
            Some(ImportFile {
                name,
                size: item.get("size").and_then(value_u64).unwrap_or(0),
                format: item.get("format").and_then(value_text).unwrap_or_default(),
                volid,
            })
        })
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Whether an image is already on the storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportPresence {
    /// A file of that name and size: it holds these bytes (names come from the store hash).
    Complete,
    /// A file of that name but another size: an interrupted copy; uploading overwrites it.
    Partial {
        size: u64,
    },
    Absent,
}

/// Looks `name` (of `size` bytes) up in a storage's import files.
pub fn find_import(files: &[ImportFile], name: &str, size: u64) -> ImportPresence {
    match files.iter().find(|f| f.name == name) {
        Some(file) if file.size == size => ImportPresence::Complete,
        Some(file) => ImportPresence::Partial { size: file.size },
        None => ImportPresence::Absent,
    }
}

/// `<storage>:import/<name>`.
pub fn import_volid(storage: &str, name: &str) -> String {
    format!("{storage}:import/{name}")
}

/// The value of a disk created from an import file: a new volume on the disk's storage (`:0`
/// lets the import size it) with the options nixprox manages (serial, discard, ssd, iothread).
/// The disk then has the image's virtual size; apply grows it to the declared size.
pub fn format_import_disk(disk: &DiskSpec, source_volid: &str) -> String {
    update_disk(&format!("{}:0,import-from={source_volid}", disk.storage), disk)
}

/// What planning knows about the storages image hosts upload to: read once per plan by
/// [`read_image_stores`], consumed by the (pure) planner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageStores {
    /// Why this cluster cannot take image uploads at all (its version, with the fix).
    pub refused: Option<String>,
    /// Per `(node, storage)`: what the storage holds, or why it cannot take images (with the fix).
    pub stores: BTreeMap<(String, String), Result<ImageStore, String>>,
}

/// One storage that can take image uploads, as seen from one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageStore {
    /// One upload serves every node that has the storage.
    pub shared: bool,
    pub files: Vec<ImportFile>,
}

impl ImageStores {
    /// Whether the storage (from the node) holds a file of that name.
    pub fn has_file(&self, node: &str, storage: &str, name: &str) -> bool {
        self.store(node, storage).is_some_and(|s| s.files.iter().any(|f| f.name == name))
    }

    /// The storage as read from the node, when it can take images.
    pub fn store(&self, node: &str, storage: &str) -> Option<&ImageStore> {
        self.stores.get(&(node.to_string(), storage.to_string())).and_then(|s| s.as_ref().ok())
    }

    /// Why images cannot go to the storage from the node, when they cannot.
    pub fn refusal(&self, node: &str, storage: &str) -> Option<&str> {
        if let Some(refused) = &self.refused {
            return Some(refused);
        }
        match self.stores.get(&(node.to_string(), storage.to_string())) {
            Some(Err(reason)) => Some(reason),
            _ => None,
        }
    }
}

/// Reads the cluster's version and, for each `(node, storage)`, the storage's status and
/// import files. A cluster or storage that cannot take images is a fact for the plan (the
/// host's upload is blocked with the fix); a failed request is an error.
pub async fn read_image_stores(
    client: &Client,
    pairs: &BTreeSet<(String, String)>,
) -> Result<ImageStores, ProxmoxError> {
    let mut facts = ImageStores::default();
    if pairs.is_empty() {
        return Ok(facts);
    }
    match check_import_version(client).await {
        Ok(_) => {}
        Err(ImportError::Api(err)) => return Err(*err),
        Err(refused) => {
            facts.refused = Some(refused.to_string());
            return Ok(facts);
        }
    }
    for (node, storage) in pairs {
        let fact = match check_import_storage(client, node, storage).await {
            Ok(status) => match list_import_files(client, node, storage).await {
                Ok(files) => Ok(ImageStore { shared: status.shared, files }),
                Err(err) => Err(forbidden(err)?),
            },
            Err(ImportError::Api(err)) => Err(forbidden(*err)?),
            Err(refused) => Err(refused.to_string()),
        };
        facts.stores.insert((node.clone(), storage.clone()), fact);
    }
    Ok(facts)
}

/// A storage the token may not read is a fact about the plan (its upload is blocked, and the
/// privilege preflight names the fix), not a failed read.
fn forbidden(err: ProxmoxError) -> Result<String, ProxmoxError> {
    if err.status() == Some(403) { Ok(err.to_string()) } else { Err(err) }
}

/// `DELETE /nodes/{node}/storage/{storage}/content/{volid}` and its `imgdel` task (needs
/// `Datastore.Allocate` on the storage: pve-storage `API2/Storage/Content.pm`, `delete`).
pub async fn delete_import_file(
    client: &Client,
    node: &str,
    volid: &str,
    timeout: std::time::Duration,
) -> Result<(), ProxmoxError> {
    let (storage, _) = volid.split_once(':').unwrap_or((volid, ""));
    let path = format!("/nodes/{node}/storage/{storage}/content/{volid}");
    let data = client.delete(&path, &[]).await?;
    super::wait_answer(client, &data, timeout).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn versions_as_each_release_reports_them() {
        for (data, major, minor, supported) in [
            (json!({"version": "8.4.1", "release": "8.4", "repoid": "2a5fa54a8503f96d"}), 8, 4, true),
            (json!({"version": "9.0.10", "release": "9.0", "repoid": "x"}), 9, 0, true),
            (json!({"version": "8.3.5", "release": "8.3"}), 8, 3, false),
            (json!({"version": "7.4-3", "release": "7.4"}), 7, 4, false),
            (json!({"version": "7.4-3"}), 7, 4, false),
            (json!({"version": "10.1"}), 10, 1, true),
        ] {
            let version = PveVersion::from_data(&data).expect("parses");
            assert_eq!(
                (version.major, version.minor, version.supports_import_upload()),
                (major, minor, supported),
                "{data}"
            );
        }
        assert_eq!(PveVersion::from_data(&json!({"version": "7.4-3"})).map(|v| v.raw), Some("7.4-3".into()));
        assert_eq!(PveVersion::from_data(&json!({})), None);
        assert_eq!(PveVersion::from_data(&json!({"version": "unknown"})), None);
    }

    fn status(kind: &str, content: &str) -> StorageStatus {
        StorageStatus::from_data(
            "pve1",
            "local",
            &json!({"type": kind, "content": content, "enabled": 1, "active": 1, "shared": 0, "avail": 1000}),
        )
    }

    #[test]
    fn storages_that_take_images_and_the_fix_for_those_that_do_not() {
        assert!(status("dir", "iso,import,vztmpl").check_import().is_ok());
        assert!(status("nfs", "import").check_import().is_ok());
        assert_eq!(status("dir", "import").avail, Some(1000));
        assert_eq!(
            status("dir", "vztmpl,iso,backup").check_import().expect_err("no import").to_string(),
            "storage `local` on node `pve1` does not allow `import` content (allow it with `pvesm set local --content backup,iso,vztmpl,import`, or in the UI: Datacenter → Storage → `local` → Content → Import)"
        );
        assert!(
            status("dir", "none").check_import().expect_err("none").to_string().contains("--content import`")
        );
        assert_eq!(
            status("lvmthin", "images,rootdir").check_import().expect_err("block").to_string(),
            "storage `local` on node `pve1` is of type `lvmthin`, which cannot hold image files (use a file-based storage, e.g. `dir`, `nfs`, `cifs` or `cephfs`, with the `import` content type)"
        );
        let off = StorageStatus::from_data("pve1", "nas", &json!({"type": "nfs", "content": "import"}));
        assert!(matches!(off.check_import(), Err(ImportError::Disabled { .. })));
        let inactive = StorageStatus::from_data(
            "pve1",
            "nas",
            &json!({"type": "nfs", "content": "import", "enabled": 1}),
        );
        assert!(matches!(inactive.check_import(), Err(ImportError::Inactive { .. })));
    }

    #[test]
    fn presence_compares_name_and_size() {
        let files = [ImportFile {
            volid: "local:import/a.qcow2".into(),
            name: "a.qcow2".into(),
            size: 100,
            format: "qcow2".into(),
        }];
        assert_eq!(find_import(&files, "a.qcow2", 100), ImportPresence::Complete);
        assert_eq!(find_import(&files, "a.qcow2", 200), ImportPresence::Partial { size: 100 });
        assert_eq!(find_import(&files, "b.qcow2", 100), ImportPresence::Absent);
    }

    #[test]
    fn import_disks() {
        let disk = DiskSpec {
            storage: "local-lvm".into(),
            size_bytes: 20 << 30,
            serial: Some("root".into()),
            discard: true,
            ssd: true,
            iothread: false,
        };
        let volid = import_volid("local", "nixprox-0c8y-scsi0.qcow2");
        assert_eq!(volid, "local:import/nixprox-0c8y-scsi0.qcow2");
        assert_eq!(
            format_import_disk(&disk, &volid),
            "local-lvm:0,import-from=local:import/nixprox-0c8y-scsi0.qcow2,discard=on,ssd=1,serial=root"
        );
    }

    #[test]
    fn the_too_old_message_names_version_and_way_out() {
        let err = ImportError::TooOld { version: "8.3.5".into(), url: "https://pve:8006".into() };
        assert_eq!(
            err.to_string(),
            "cannot upload disk images to Proxmox VE 8.3.5 at `https://pve:8006` (importing qcow2/raw images needs Proxmox VE 8.4 or later: upgrade the cluster, or bootstrap these hosts with `nixprox.bootstrap.template` or `nixprox.bootstrap.iso`)"
        );
    }
}
