//! Operations on one QEMU VM (`/nodes/{node}/qemu/{vmid}/…`) and the forms that make one:
//! read its raw config, its power state, its guest agent's address; clone a template, create
//! a VM from scratch. Apply's steps and `plan --probe` call these; none of them decides
//! *whether* to act, which is the caller's business.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Map, Value};

use super::agent::{AgentBound, AgentWaitError, Asked, wait_for_agent};
use super::client::Client;
use super::error::ProxmoxError;
use super::import::format_import_disk;
use super::property::{format_net, format_new_disk, format_tags, parse_tags, value_text};
use crate::metadata::Notes;
use crate::spec::{Bios, MANAGED_TAG, VmSpec};

/// A VM's config as `GET …/config` answers it: loosely typed values, with `digest`.
pub type RawConfig = Map<String, Value>;

/// Form parameters of a write, in the order they are sent.
pub type Form = Vec<(String, String)>;

/// `/nodes/{node}/qemu/{vmid}`.
pub fn vm_path(node: &str, vmid: u32) -> String {
    format!("/nodes/{node}/qemu/{vmid}")
}

/// The text of one config key (numbers as text), when present.
pub fn config_text(raw: &RawConfig, key: &str) -> Option<String> {
    raw.get(key).and_then(value_text)
}

/// The config's `digest`, passed back on writes as a compare-and-swap ("" when absent).
pub fn digest_of(raw: &RawConfig) -> String {
    config_text(raw, "digest").unwrap_or_default()
}

/// The VM's tags, lower-cased, whatever separator wrote them.
pub fn tags_of(raw: &RawConfig) -> BTreeSet<String> {
    config_text(raw, "tags").map(|t| parse_tags(&t)).unwrap_or_default()
}

/// The VM's notes, split into the user's text and nixprox's metadata block.
pub fn notes_of(raw: &RawConfig) -> Notes {
    Notes::parse(&config_text(raw, "description").unwrap_or_default())
}

/// `GET …/config`; `None` when the VM does not exist.
pub async fn read_raw(client: &Client, node: &str, vmid: u32) -> Result<Option<RawConfig>, ProxmoxError> {
    let path = format!("{}/config", vm_path(node, vmid));
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

/// Whether a VM runs, from `status` of `…/status/current`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerState {
    Running,
    Stopped,
    /// Anything else PVE may answer, kept for messages.
    Other(String),
}

impl PowerState {
    fn parse(status: &str) -> PowerState {
        match status {
            "running" => PowerState::Running,
            "stopped" => PowerState::Stopped,
            other => PowerState::Other(other.to_string()),
        }
    }

    pub fn is_running(&self) -> bool {
        *self == PowerState::Running
    }
}

/// `GET …/status/current`.
pub async fn power_state(client: &Client, node: &str, vmid: u32) -> Result<PowerState, ProxmoxError> {
    let data = client.get(&format!("{}/status/current", vm_path(node, vmid)), &[]).await?;
    Ok(PowerState::parse(data.get("status").and_then(Value::as_str).unwrap_or("unknown")))
}

/// The guest agent's view of the VM's addresses; `Ok(None)` while the agent is not up yet.
pub async fn agent_address(client: &Client, node: &str, vmid: u32) -> Result<Option<String>, ProxmoxError> {
    Ok(match agent_answer(client, node, vmid).await? {
        AgentAnswer::Address(address) => Some(address),
        AgentAnswer::NotRunning | AgentAnswer::NoAddress => None,
    })
}

/// What one `network-get-interfaces` told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAnswer {
    /// The agent does not answer (the guest boots, or its image has no qemu-guest-agent).
    NotRunning,
    /// The agent answers, but no interface has a usable address yet.
    NoAddress,
    Address(String),
}

/// Asks the guest agent once.
pub async fn agent_answer(client: &Client, node: &str, vmid: u32) -> Result<AgentAnswer, ProxmoxError> {
    let path = format!("{}/agent/network-get-interfaces", vm_path(node, vmid));
    match client.get(&path, &[]).await {
        Ok(data) => Ok(pick_address(data.get("result").unwrap_or(&data))
            .map_or(AgentAnswer::NoAddress, AgentAnswer::Address)),
        Err(err) if err.agent_not_ready() => Ok(AgentAnswer::NotRunning),
        Err(err) => Err(err),
    }
}

/// How waiting for a guest's address ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressWait {
    Found(String),
    /// `timeout` passed; `agent_answered` tells a silent agent from one without an address.
    TimedOut {
        agent_answered: bool,
    },
}

/// Polls the agent until it reports an address or `timeout` passes, through the one agent
/// wait ([`super::agent::wait_for_agent`]: an agent still starting is "not yet", a silent one
/// is said so in the log while waiting).
pub async fn wait_for_address(
    client: &Client,
    node: &str,
    vmid: u32,
    timeout: Duration,
    interval: Duration,
) -> Result<AddressWait, ProxmoxError> {
    let path = format!("{}/agent/network-get-interfaces", vm_path(node, vmid));
    let bound = AgentBound { timeout, interval };
    let found = wait_for_agent(node, vmid, "address", bound, || async {
        let data = client.get(&path, &[]).await?;
        Ok(match pick_address(data.get("result").unwrap_or(&data)) {
            Some(address) => Asked::Ready(address),
            None => Asked::NotYet("it reported no usable address".into()),
        })
    })
    .await;
    match found {
        Ok(address) => Ok(AddressWait::Found(address)),
        Err(AgentWaitError::TimedOut(timed_out)) => {
            Ok(AddressWait::TimedOut { agent_answered: timed_out.agent_answered() })
        }
        Err(AgentWaitError::Proxmox(err)) => Err(err),
    }
}

/// The first usable address of `network-get-interfaces`: not on `lo`, not link-local,
/// multicast or unspecified; IPv4 before IPv6. (Only test setups give a non-`lo` interface a
/// 127/8 address; it is accepted so tests never dial anything but loopback.)
pub fn pick_address(interfaces: &Value) -> Option<String> {
    let mut v4 = None;
    let mut v6 = None;
    for interface in interfaces.as_array()? {
        if interface.get("name").and_then(Value::as_str) == Some("lo") {
            continue;
        }
        let addresses = interface.get("ip-addresses").and_then(Value::as_array);
        for address in addresses.into_iter().flatten() {
            let Some(ip) =
                address.get("ip-address").and_then(Value::as_str).and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            match ip {
                IpAddr::V4(ip) if !ip.is_link_local() && !ip.is_unspecified() && !ip.is_multicast() => {
                    v4.get_or_insert(ip.to_string());
                }
                IpAddr::V6(ip)
                    if !ip.is_unspecified()
                        && !ip.is_multicast()
                        && !ip.is_loopback()
                        && (ip.segments()[0] & 0xffc0) != 0xfe80 =>
                {
                    v6.get_or_insert(ip.to_string());
                }
                _ => {}
            }
        }
    }
    v4.or(v6)
}

/// `POST /nodes/{source node}/qemu/{template}/clone`: a full clone whose `description`
/// already carries the notes (the journal entry a re-run resumes from).
#[derive(Debug, Clone)]
pub struct CloneForm<'a> {
    pub newid: u32,
    pub name: &'a str,
    /// Where the new disks go.
    pub storage: &'a str,
    pub description: &'a str,
    /// The node the VM moves to when it is not the template's.
    pub target: Option<&'a str>,
    pub pool: Option<&'a str>,
}

impl CloneForm<'_> {
    pub fn form(&self) -> Form {
        let mut form: Form = vec![
            ("newid".into(), self.newid.to_string()),
            ("name".into(), self.name.into()),
            ("full".into(), "1".into()),
            ("storage".into(), self.storage.into()),
            ("description".into(), self.description.into()),
        ];
        if let Some(target) = self.target {
            form.push(("target".into(), target.into()));
        }
        if let Some(pool) = self.pool {
            form.push(("pool".into(), pool.into()));
        }
        form
    }
}

/// `POST /nodes/{node}/qemu`: a VM from scratch that boots an installer ISO, with its tags
/// and notes set at creation.
#[derive(Debug, Clone)]
pub struct CreateForm<'a> {
    pub vmid: u32,
    pub spec: &'a VmSpec,
    pub description: &'a str,
    /// `storage:iso/file.iso`, attached as `ide2`.
    pub iso: &'a str,
    /// Where the EFI vars disk goes (OVMF only).
    pub efi_storage: &'a str,
}

impl CreateForm<'_> {
    pub fn form(&self) -> Form {
        let spec = self.spec;
        let disks = spec.disks.iter().map(|(slot, disk)| (slot.clone(), format_new_disk(disk))).collect();
        let cdrom = ("ide2".to_string(), format!("{},media=cdrom", self.iso));
        let boot: Vec<String> =
            spec.disks.keys().next().cloned().into_iter().chain(["ide2".into()]).collect();
        new_vm_form(self.vmid, spec, self.description, self.efi_storage, Some(cdrom), disks, &boot)
    }
}

/// `POST /nodes/{node}/qemu`: a VM from scratch whose disks are imported from image files
/// (`<disk storage>:0,import-from=<volume>`: each new disk gets its image's size, apply grows it
/// afterwards), booting from the first disk; tags and notes set at creation.
#[derive(Debug, Clone)]
pub struct ImageCreateForm<'a> {
    pub vmid: u32,
    pub spec: &'a VmSpec,
    pub description: &'a str,
    /// Disk slot → the import volume its disk is created from (`local:import/nixprox-….qcow2`).
    pub imports: &'a BTreeMap<String, String>,
    /// Where the EFI vars disk goes (OVMF only): a new, empty one.
    pub efi_storage: &'a str,
}

impl ImageCreateForm<'_> {
    /// The form, or the declared disk that has no image.
    pub fn form(&self) -> Result<Form, NoImage> {
        let spec = self.spec;
        let mut disks = Vec::new();
        for (slot, disk) in &spec.disks {
            let source = self.imports.get(slot).ok_or_else(|| NoImage { slot: slot.clone() })?;
            disks.push((slot.clone(), format_import_disk(disk, source)));
        }
        let boot: Vec<String> = spec.disks.keys().next().cloned().into_iter().collect();
        Ok(new_vm_form(self.vmid, spec, self.description, self.efi_storage, None, disks, &boot))
    }
}

/// A declared disk without an image to import ([`ImageCreateForm::form`]); the caller names
/// the host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("disk `{slot}` has no image file")]
pub struct NoImage {
    pub slot: String,
}

/// The create form both ways share: identity, notes and tags, hardware, firmware (an EFI disk
/// with Proxmox's 4 MiB layout and no pre-enrolled keys for OVMF), the given drives, NICs, boot
/// order and pool.
fn new_vm_form(
    vmid: u32,
    spec: &VmSpec,
    description: &str,
    efi_storage: &str,
    cdrom: Option<(String, String)>,
    disks: Vec<(String, String)>,
    boot: &[String],
) -> Form {
    let flag = |on: bool| if on { "1" } else { "0" }.to_string();
    let mut tags: BTreeSet<String> = spec.tags.iter().map(|t| t.to_lowercase()).collect();
    tags.insert(MANAGED_TAG.into());
    let mut form: Form = vec![
        ("vmid".into(), vmid.to_string()),
        ("name".into(), spec.name.clone()),
        ("description".into(), description.into()),
        ("tags".into(), format_tags(&tags)),
        ("ostype".into(), "l26".into()),
        ("scsihw".into(), "virtio-scsi-single".into()),
        ("cores".into(), spec.cores.to_string()),
        ("sockets".into(), spec.sockets.to_string()),
        ("cpu".into(), crate::spec::hardware::format_cpu(&spec.cpu_type, &spec.hardware.cpu_flags)),
        ("memory".into(), spec.memory_mib.to_string()),
        ("bios".into(), spec.bios.as_str().into()),
        ("agent".into(), flag(spec.agent)),
        ("onboot".into(), flag(spec.on_boot)),
        ("protection".into(), flag(spec.protection)),
    ];
    form.extend(cdrom);
    if let Some(balloon) = spec.balloon_mib {
        form.push(("balloon".into(), balloon.to_string()));
    }
    if let Some(machine) = &spec.machine {
        form.push(("machine".into(), machine.clone()));
    }
    if spec.bios == Bios::Ovmf {
        form.push(("efidisk0".into(), crate::spec::hardware::efi_disk(efi_storage, &spec.hardware)));
    }
    form.extend(disks);
    for (slot, net) in &spec.networks {
        form.push((slot.clone(), format_net(net)));
    }
    form.push(("boot".into(), format!("order={}", boot.join(";"))));
    if let Some(pool) = &spec.pool {
        form.push(("pool".into(), pool.clone()));
    }
    form
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn address_from_the_agent() {
        let answer = json!([
            {"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4"}]},
            {"name": "eth0", "ip-addresses": [
                {"ip-address": "fe80::1", "ip-address-type": "ipv6"},
                {"ip-address": "2001:db8::5", "ip-address-type": "ipv6"},
                {"ip-address": "169.254.3.3", "ip-address-type": "ipv4"},
                {"ip-address": "127.0.0.31", "ip-address-type": "ipv4"}
            ]}
        ]);
        assert_eq!(pick_address(&answer).as_deref(), Some("127.0.0.31"));
        let only_v6 = json!([{"name": "ens18", "ip-addresses": [{"ip-address": "fe80::2"}, {"ip-address": "2001:db8::7"}]}]);
        assert_eq!(pick_address(&only_v6).as_deref(), Some("2001:db8::7"));
        assert_eq!(
            pick_address(&json!([{"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1"}]}])),
            None
        );
        assert_eq!(pick_address(&json!({})), None);
    }

    #[test]
    fn power_states() {
        assert!(PowerState::parse("running").is_running());
        assert_eq!(PowerState::parse("stopped"), PowerState::Stopped);
        assert_eq!(PowerState::parse("paused"), PowerState::Other("paused".into()));
    }

    #[test]
    fn raw_config_helpers() {
        let raw = json!({"tags": "Lab, nixprox", "digest": "d1", "cores": 2,
                         "description": "hand-made\n\n<!-- nixprox:v1 {\"host\":\"web\"} -->"});
        let raw = raw.as_object().expect("object");
        assert_eq!(tags_of(raw), ["lab".to_string(), "nixprox".to_string()].into());
        assert_eq!(digest_of(raw), "d1");
        assert_eq!(config_text(raw, "cores").as_deref(), Some("2"));
        let notes = notes_of(raw);
        assert_eq!(notes.user_text, "hand-made");
        assert_eq!(notes.metadata().map(|m| m.host.as_str()), Some("web"));
    }

    #[test]
    fn a_vm_from_images_imports_every_disk_and_boots_the_first() {
        use crate::spec::{DiskSpec, VmSpec};
        let disk = |serial: &str| DiskSpec {
            storage: "local-lvm".into(),
            size_bytes: 20 << 30,
            serial: Some(serial.into()),
            discard: true,
            ssd: false,
            iothread: false,
        };
        let spec = VmSpec {
            name: "web".into(),
            cores: 2,
            sockets: 1,
            cpu_type: "host".into(),
            memory_mib: 2048,
            balloon_mib: None,
            bios: Bios::Ovmf,
            machine: None,
            agent: true,
            disks: [("scsi0".to_string(), disk("root")), ("scsi1".to_string(), disk("data"))].into(),
            networks: Default::default(),
            tags: Default::default(),
            description: String::new(),
            on_boot: true,
            protection: false,
            pool: None,
            hardware: Default::default(),
        };
        let imports = BTreeMap::from([
            ("scsi0".to_string(), "images:import/nixprox-h-scsi0.raw".to_string()),
            ("scsi1".to_string(), "images:import/nixprox-h-scsi1.raw".to_string()),
        ]);
        let form = ImageCreateForm {
            vmid: 120,
            spec: &spec,
            description: "n",
            imports: &imports,
            efi_storage: "local-lvm",
        }
        .form()
        .expect("every disk has an image");
        let value = |key: &str| form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(
            value("scsi0"),
            Some("local-lvm:0,import-from=images:import/nixprox-h-scsi0.raw,discard=on,serial=root")
        );
        assert_eq!(value("efidisk0"), Some("local-lvm:1,efitype=4m,pre-enrolled-keys=0"));
        assert_eq!(value("boot"), Some("order=scsi0"));
        assert_eq!(value("ide2"), None, "no installer");
        let one = BTreeMap::from([("scsi0".to_string(), "images:import/x.raw".to_string())]);
        let missing =
            ImageCreateForm { imports: &one, vmid: 120, spec: &spec, description: "n", efi_storage: "s" };
        assert_eq!(missing.form(), Err(NoImage { slot: "scsi1".to_string() }));
    }

    #[test]
    fn clone_form_names_the_target_and_pool_only_when_set() {
        let form = CloneForm {
            newid: 101,
            name: "web",
            storage: "local-lvm",
            description: "notes",
            target: Some("pve2"),
            pool: None,
        }
        .form();
        let keys: Vec<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["newid", "name", "full", "storage", "description", "target"]);
    }
}
