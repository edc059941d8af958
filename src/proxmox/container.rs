//! A container's config (`GET /nodes/{node}/lxc/{vmid}/config`) as the planner compares it: the
//! shared settings in [`crate::spec::VmSpec`], the rest in [`ContainerSpec`], with
//! pve-container's defaults for absent keys (`src/PVE/LXC/Config.pm`, `$confdesc`: memory and
//! swap 512, cores unlimited, a mount point without `backup` not backed up, `unprivileged` off
//! when absent). The notes are `description`, as for a VM, so the metadata block is read the
//! same way.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use std::time::Duration;

use super::client::Client;
use super::error::ProxmoxError;
use super::property::{
    PropertyString, format_tags, is_net_key, parse_tags, value_bool, value_text, value_u64,
};
use super::tasks::{Upid, read_log, wait_task};
use super::vm::LiveConfig;
use crate::spec::container::{
    ContainerSpec, CtNetSpec, Features, MountSpec, VolumeSpec, address_of, shared_spec,
};
use crate::spec::{GuestKind, MANAGED_TAG, VmSpec, allocation_size, exact_gib, parse_size};

/// `/nodes/{node}/qemu/{vmid}` or `/nodes/{node}/lxc/{vmid}`: where a guest of `kind` lives in
/// the API (both kinds answer `config`, `pending`, `status/*`, `resize` under it).
pub fn guest_path(kind: GuestKind, node: &str, vmid: u32) -> String {
    format!("/nodes/{node}/{}/{vmid}", kind.api_segment())
}

/// The guest with this id wherever it is in the cluster, of either kind
/// (`/cluster/resources`, then its config on its node): after a create whose answer was lost,
/// a VM may be on the template's node still or already on the target, and another tool may
/// have put a guest of the other kind under the id. `None`: no such guest.
pub async fn find_guest(
    client: &Client,
    vmid: u32,
) -> Result<Option<(GuestKind, String, Map<String, Value>)>, ProxmoxError> {
    let listed = super::read::list_guests(client).await?;
    let Some(guest) = listed.into_iter().find(|g| g.vmid == vmid) else { return Ok(None) };
    Ok(read_guest_raw(client, guest.kind, &guest.node, vmid).await?.map(|raw| (guest.kind, guest.node, raw)))
}

/// `GET …/config` of a guest of either kind; `None` when it does not exist.
pub async fn read_guest_raw(
    client: &Client,
    kind: GuestKind,
    node: &str,
    vmid: u32,
) -> Result<Option<Map<String, Value>>, ProxmoxError> {
    match kind {
        GuestKind::Vm => super::qemu::read_raw(client, node, vmid).await,
        GuestKind::Container => {
            let path = format!("{}/config", guest_path(kind, node, vmid));
            match client.get(&path, &[]).await {
                Ok(Value::Object(map)) => Ok(Some(map)),
                Ok(other) => Err(ProxmoxError::Decode {
                    method: reqwest::Method::GET,
                    path,
                    detail: "expected an object".into(),
                    body: other.to_string(),
                }),
                Err(err) if err.is_missing() => Ok(None),
                Err(err) => Err(err),
            }
        }
    }
}

/// Whether a guest of either kind runs (`…/status/current`).
pub async fn guest_running(
    client: &Client,
    kind: GuestKind,
    node: &str,
    vmid: u32,
) -> Result<bool, ProxmoxError> {
    let status = client.get(&format!("{}/status/current", guest_path(kind, node, vmid)), &[]).await?;
    Ok(status.get("status").and_then(Value::as_str) == Some("running"))
}

/// Writes a guest's config and waits for it: qemu-server takes `POST …/config` (a task),
/// pve-container `PUT …/config` (done when it answers). Returns the task's warnings.
pub async fn write_guest_config(
    client: &Client,
    kind: GuestKind,
    node: &str,
    vmid: u32,
    form: &[(String, String)],
    timeout: Duration,
) -> Result<Vec<String>, ProxmoxError> {
    let path = format!("{}/config", guest_path(kind, node, vmid));
    match kind {
        GuestKind::Vm => super::tasks::post_and_wait(client, &path, form, timeout).await,
        GuestKind::Container => {
            let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let data = client.put(&path, &pairs).await?;
            super::tasks::wait_answer(client, &data, timeout).await
        }
    }
}

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
        guest_os: None,
        running: None,
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

/// A host key Proxmox generated in a new container and printed in the create task's log
/// (pve-container `src/PVE/LXC/Setup.pm`, `rewrite_ssh_host_keys` with `generate_ssh_key`:
/// `Creating SSH host key 'ssh_host_ed25519_key' - this may take some time ...`, then
/// `done: SHA256:<base64> root@<hostname>`, the `ssh-keygen -E sha256` line). Only when the
/// template has `/etc/ssh`: nixpkgs' `proxmox-lxc` tarball has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    /// The key file's base name (`ssh_host_ed25519_key`).
    pub file: String,
    /// `SHA256:<base64>`.
    pub fingerprint: String,
}

/// The generated host keys a create task's log names, in log order.
pub fn generated_keys(log: &[String]) -> Vec<GeneratedKey> {
    let mut keys = Vec::new();
    let mut file: Option<String> = None;
    for line in log {
        if let Some(rest) = line.strip_prefix("Creating SSH host key '") {
            file = rest.split_once('\'').map(|(name, _)| name.to_string());
        } else if let Some(rest) = line.strip_prefix("done: ")
            && let Some(name) = file.take()
            && let Some(fingerprint) = rest.split_whitespace().next().filter(|f| f.starts_with("SHA256:"))
        {
            keys.push(GeneratedKey { file: name, fingerprint: fingerprint.to_string() });
        }
    }
    keys
}

/// What a new container is created with.
#[derive(Debug, Clone, Copy)]
pub struct NewContainer<'a> {
    pub vmid: u32,
    /// The shared settings (hostname is `name`).
    pub shared: &'a VmSpec,
    pub spec: &'a ContainerSpec,
    /// `<storage>:vztmpl/<file>`.
    pub template: &'a str,
    /// `ssh-public-keys`: create-only in Proxmox.
    pub ssh_keys: &'a [String],
    /// The whole notes (the user's text and nixprox's block).
    pub description: &'a str,
}

/// The form of `POST /nodes/{node}/lxc` (pve-container `src/PVE/API2/LXC.pm`, `create_vm`):
/// new volumes as `<storage>:<GiB>` (the declared size rounded up to whole 4 MiB, as VM disks
/// are), the managed tag with the user's tags.
pub fn create_form(new: NewContainer<'_>) -> Vec<(String, String)> {
    let NewContainer { vmid, shared, spec, template, ssh_keys, description } = new;
    let volume = |v: &VolumeSpec| format!("{}:{}", v.storage, exact_gib(allocation_size(v.size_bytes)));
    let mut form: Vec<(String, String)> = vec![
        ("vmid".into(), vmid.to_string()),
        ("ostemplate".into(), template.into()),
        ("hostname".into(), shared.name.clone()),
        ("memory".into(), spec.memory_mib.to_string()),
        ("swap".into(), spec.swap_mib.to_string()),
        ("rootfs".into(), volume(&spec.rootfs)),
        ("unprivileged".into(), u8::from(spec.unprivileged).to_string()),
        ("onboot".into(), u8::from(shared.on_boot).to_string()),
    ];
    if let Some(cores) = spec.cores {
        form.push(("cores".into(), cores.to_string()));
    }
    for (slot, mount) in &spec.mounts {
        let backup = if mount.backup { ",backup=1" } else { "" };
        form.push((slot.clone(), format!("{},mp={}{backup}", volume(&mount.volume), mount.path)));
    }
    for (slot, net) in &spec.networks {
        form.push((slot.clone(), format_ct_net(net)));
    }
    let features = spec.features.property();
    if !features.is_empty() {
        form.push(("features".into(), features));
    }
    if let Some(startup) = &spec.startup {
        form.push(("startup".into(), startup.clone()));
    }
    let mut tags: BTreeSet<String> = shared.tags.clone();
    tags.insert(MANAGED_TAG.to_string());
    form.push(("tags".into(), format_tags(&tags)));
    if !description.is_empty() {
        form.push(("description".into(), description.to_string()));
    }
    if shared.protection {
        form.push(("protection".into(), "1".into()));
    }
    if let Some(pool) = &shared.pool {
        form.push(("pool".into(), pool.clone()));
    }
    if !ssh_keys.is_empty() {
        form.push(("ssh-public-keys".into(), ssh_keys.join("\n")));
    }
    form
}

/// A container interface as pve-container writes it (`name=eth0,bridge=vmbr0,…`).
pub fn format_ct_net(net: &CtNetSpec) -> String {
    let mut text = format!("name={},bridge={}", net.name, net.bridge);
    if let Some(mac) = &net.mac {
        text.push_str(&format!(",hwaddr={mac}"));
    }
    if let Some(address) = &net.address {
        text.push_str(&format!(",{address}"));
    }
    if let Some(vlan) = net.vlan {
        text.push_str(&format!(",tag={vlan}"));
    }
    if net.firewall {
        text.push_str(",firewall=1");
    }
    text
}

/// Creates the container and waits for the create task; returns the host keys Proxmox
/// generated in it, read from the task's log (readable by the task's owner: the token that
/// created it). Empty when the template has no `/etc/ssh`: then nothing can pin the key.
pub async fn create(
    client: &Client,
    node: &str,
    form: &[(String, String)],
    timeout: Duration,
) -> Result<Vec<GeneratedKey>, ProxmoxError> {
    let path = format!("/nodes/{node}/lxc");
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let data = client.post(&path, &pairs).await?;
    let upid = Upid::from_data(&data).map_err(|err| ProxmoxError::Decode {
        method: reqwest::Method::POST,
        path: path.clone(),
        detail: err.to_string(),
        body: data.to_string(),
    })?;
    wait_task(client, &upid, timeout).await?;
    Ok(generated_keys(&read_log(client, &upid).await?))
}

/// The host keys of container `vmid` from its latest create task's log on `node` (`GET
/// /nodes/{node}/tasks?vmid=…`, type `vzcreate`; the token sees the tasks it started): how a run
/// that lost the create's answer, or stopped before pinning, still pins the key without trusting
/// the network. Empty when no such task is listed.
pub async fn create_task_keys(
    client: &Client,
    node: &str,
    vmid: u32,
) -> Result<Vec<GeneratedKey>, ProxmoxError> {
    let path = format!("/nodes/{node}/tasks");
    let vmid_text = vmid.to_string();
    let data = client
        .get(&path, &[("vmid", vmid_text.as_str()), ("typefilter", "vzcreate"), ("limit", "50")])
        .await?;
    let latest = data
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("vzcreate"))
        .max_by_key(|t| t.get("starttime").and_then(value_u64).unwrap_or(0))
        .and_then(|t| t.get("upid").and_then(Value::as_str))
        .and_then(|upid| Upid::parse(upid).ok());
    match latest {
        Some(upid) => Ok(generated_keys(&read_log(client, &upid).await?)),
        None => Ok(Vec::new()),
    }
}

/// The file name endings Proxmox takes for a container template (pve-storage
/// `src/PVE/Storage.pm`, `$VZTMPL_EXT_RE_1`).
pub const TEMPLATE_EXTENSIONS: [&str; 4] = [".tar.gz", ".tar.xz", ".tar.zst", ".tar.bz2"];

/// Uploads a container template (`content=vztmpl`, pve-storage `src/PVE/API2/Storage/Status.pm`
/// `upload`) from `path` as `file_name` and waits until Proxmox stored it; returns the volume
/// id (`<storage>:vztmpl/<file_name>`). The checksum lets Proxmox refuse a damaged upload.
pub async fn upload_template(
    client: &Client,
    node: &str,
    storage: &str,
    file_name: &str,
    path: &std::path::Path,
    timeout: Duration,
) -> Result<String, ProxmoxError> {
    use reqwest::multipart::{Form, Part};
    let config = |message: String| ProxmoxError::Config { message };
    if !TEMPLATE_EXTENSIONS.iter().any(|ext| file_name.ends_with(ext)) {
        return Err(config(format!(
            "container template `{file_name}` must end in one of {} for Proxmox to take it",
            TEMPLATE_EXTENSIONS.join(", ")
        )));
    }
    let read = |err: std::io::Error| config(format!("failed to read `{}`: {err}", path.display()));
    let sha256 = super::upload::sha256_file(path).await.map_err(|err| config(err.to_string()))?;
    let file = tokio::fs::File::open(path).await.map_err(read)?;
    let total = file.metadata().await.map_err(read)?.len();
    let body =
        reqwest::Body::wrap_stream(super::upload::file_stream(file, total, std::sync::Arc::new(|_| {})));
    let part = Part::stream_with_length(body, total)
        .file_name(file_name.to_string())
        .mime_str("application/octet-stream")
        .map_err(|err| config(err.to_string()))?;
    // The order PVE's server reads: content, checksum-algorithm, checksum, file.
    let form = Form::new()
        .text("content", "vztmpl")
        .text("checksum-algorithm", "sha256")
        .text("checksum", sha256)
        .part("filename", part);
    let api = format!("/nodes/{node}/storage/{storage}/upload");
    let data = client.post_multipart(&api, form, timeout).await?;
    let upid = Upid::from_data(&data).map_err(|err| ProxmoxError::Decode {
        method: reqwest::Method::POST,
        path: api,
        detail: err.to_string(),
        body: data.to_string(),
    })?;
    wait_task(client, &upid, timeout).await?;
    Ok(format!("{storage}:vztmpl/{file_name}"))
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

    #[test]
    fn the_create_task_log_names_the_generated_keys() {
        let log: Vec<String> = [
            "extracting archive '/var/lib/vz/template/cache/nixos.tar.xz'",
            "Creating SSH host key 'ssh_host_ed25519_key' - this may take some time ...",
            "done: SHA256:8Bi2S5Y2X4uCwSAgOsYt2Yx0b1oe8qbb9dZBdvUBYYo root@dns",
            "Creating SSH host key 'ssh_host_rsa_key' - this may take some time ...",
            "done: SHA256:Yk6y6Hg0W7q0oTtHgkCE9J0cAVB2B3sLC+o/3w9aKkA root@dns",
            "TASK OK",
        ]
        .iter()
        .map(|l| l.to_string())
        .collect();
        let keys = generated_keys(&log);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].file, "ssh_host_ed25519_key");
        assert_eq!(keys[0].fingerprint, "SHA256:8Bi2S5Y2X4uCwSAgOsYt2Yx0b1oe8qbb9dZBdvUBYYo");
        assert!(generated_keys(&["done: SHA256:x root@a".to_string()]).is_empty(), "no key without its line");
    }
}
