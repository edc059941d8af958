//! The config write that makes a VM's raw Proxmox config match a host's declaration: which keys
//! to set (as PVE expects them in `POST …/config`) and which to delete. Pure, so a re-run after
//! any interruption computes exactly the keys still missing and nothing else: an empty write
//! means the step is already done.

use std::collections::BTreeSet;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Map, Value};

use crate::flake::host::{Bootstrap, DesiredHost};
use crate::metadata::{Metadata, Notes};
use crate::proxmox::property::{
    Drive, PropertyString, agent_enabled, format_net, format_new_disk, format_tags, is_drive_key, is_net_key,
    parse_drive, parse_tags, update_disk, update_net, value_bool, value_text,
};
use crate::proxmox::read::boot_disks;
use crate::spec::{Bios, MANAGED_TAG};

mod hardware;

/// Keys to set and keys to delete in one `POST …/config`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigWrite {
    /// `(key, value)` in a stable order.
    pub set: Vec<(String, String)>,
    pub delete: Vec<String>,
}

impl ConfigWrite {
    /// Nothing to write: the config already matches.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.delete.is_empty()
    }

    /// The form parameters, with `digest` for compare-and-swap.
    pub fn form(&self, digest: &str) -> Vec<(String, String)> {
        let mut form = self.set.clone();
        if !self.delete.is_empty() {
            form.push(("delete".into(), self.delete.join(",")));
        }
        if !digest.is_empty() {
            form.push(("digest".into(), digest.to_string()));
        }
        form
    }

    /// The keys written, for progress lines and reports.
    pub fn keys(&self) -> Vec<&str> {
        self.set.iter().map(|(k, _)| k.as_str()).chain(self.delete.iter().map(String::as_str)).collect()
    }

    fn put(&mut self, key: &str, value: impl Into<String>) {
        self.set.push((key.to_string(), value.into()));
    }
}

/// Which disks the flake does not declare a write detaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detach<'a> {
    /// None: an existing VM without a runnable `detach_disk`.
    Nothing,
    /// Every one: a VM being created drops its template's extra disks.
    Undeclared,
    /// Exactly these slots, the ones the reviewed `detach_disk` names: never a disk attached
    /// since the plan read the config (the write reads it again, and again after a digest
    /// conflict), and never one the VM boots from.
    Slots(&'a [String]),
}

/// What the write covers beyond the VM's hardware and options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope<'a> {
    /// Cloud-init settings (`ciuser`, `sshkeys`, `ipconfig0`, `ciupgrade`) and the cloud-init
    /// drive: only while a VM is being created; an installed NixOS ignores them, and rewriting
    /// them on every update would regenerate the cloud-init image for nothing.
    pub cloud_init: bool,
    /// Firmware: only for a VM being created (an existing VM's change is a replacement).
    pub firmware: bool,
    /// Disks the flake does not declare that are detached (see [`Detach`]).
    pub detach: Detach<'a>,
    /// Declared disks the VM lacks are added: not while the plan holds a `detach_disk` back
    /// (the VM's own disks are not declared yet, see `plan::detach`).
    pub add_disks: bool,
}

impl Scope<'static> {
    /// A VM being created: everything.
    pub const CREATE: Scope<'static> =
        Scope { cloud_init: true, firmware: true, detach: Detach::Undeclared, add_disks: true };
    /// An existing VM: its hardware and options, new disks, no detaching.
    pub const UPDATE: Scope<'static> =
        Scope { cloud_init: false, firmware: false, detach: Detach::Nothing, add_disks: true };
}

/// Characters kept as they are in `sshkeys`: what JavaScript's `encodeURIComponent` keeps,
/// which is what the Proxmox UI sends and what PVE's `urlencoded` format accepts.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// The `sshkeys` value: the newline-joined keys, percent-encoded (`+` and `=` of the base64
/// too, since PVE decodes with `uri_unescape`, which does not turn `+` into a space). The form
/// encoding of the request body then encodes the `%` signs once more, as PVE expects.
pub fn encode_ssh_keys(keys: &[String]) -> String {
    let joined: Vec<&str> = keys.iter().map(|k| k.trim()).filter(|k| !k.is_empty()).collect();
    utf8_percent_encode(&joined.join("\n"), URI_COMPONENT).to_string()
}

/// The notes nixprox writes over `current` (the VM's notes now): the metadata block after the
/// owner's text, kept byte for byte, unless the flake declares a description that says
/// something else (an empty `nixprox.vm.description` never replaces anything).
pub fn notes(host: &DesiredHost, current: &str, metadata: &Metadata) -> String {
    let kept = Notes::parse(current).user_text;
    let declared = &host.spec.description;
    let text = if declared.is_empty() || Notes::same_text(declared, &kept) { &kept } else { declared };
    Notes::render(text, metadata)
}

/// The write that brings `raw` (a `GET …/config` answer) to `host`'s declaration, with the
/// metadata block `metadata` in the notes. Disk sizes are left to `/resize`.
pub fn config_write(
    host: &DesiredHost,
    raw: &Map<String, Value>,
    metadata: &Metadata,
    scope: Scope<'_>,
) -> ConfigWrite {
    let text = |key: &str| raw.get(key).and_then(value_text);
    let flag = |key: &str| raw.get(key).and_then(value_bool).unwrap_or(false);
    let spec = &host.spec;
    let mut out = ConfigWrite::default();
    let set_if = |out: &mut ConfigWrite, key: &str, want: String, differs: bool| {
        if differs {
            out.put(key, want);
        }
    };
    set_if(&mut out, "name", spec.name.clone(), text("name").as_deref() != Some(spec.name.as_str()));
    let number = |key: &str, default: u64| {
        text(key)
            .and_then(|v| {
                PropertyString::parse(&v).value_or_positional("current").and_then(|n| n.parse::<u64>().ok())
            })
            .unwrap_or(default)
    };
    set_if(&mut out, "cores", spec.cores.to_string(), number("cores", 1) != u64::from(spec.cores));
    set_if(&mut out, "sockets", spec.sockets.to_string(), number("sockets", 1) != u64::from(spec.sockets));
    // The whole `cpu` line (type and flags), NUMA, serial console, display, startup order.
    hardware::write(host, raw, &mut out);
    set_if(&mut out, "memory", spec.memory_mib.to_string(), number("memory", 512) != spec.memory_mib);
    if let Some(balloon) = spec.balloon_mib {
        set_if(
            &mut out,
            "balloon",
            balloon.to_string(),
            text("balloon").and_then(|b| b.parse().ok()) != Some(balloon),
        );
    }
    if let Some(machine) = &spec.machine {
        let live = text("machine")
            .and_then(|m| PropertyString::parse(&m).value_or_positional("type").map(str::to_string));
        set_if(&mut out, "machine", machine.clone(), live.as_deref() != Some(machine.as_str()));
    }
    let agent_on = text("agent").is_some_and(|a| agent_enabled(&a));
    set_if(&mut out, "agent", if spec.agent { "1" } else { "0" }.into(), agent_on != spec.agent);
    if scope.firmware {
        let live_bios = if text("bios").as_deref() == Some("ovmf") { Bios::Ovmf } else { Bios::Seabios };
        set_if(&mut out, "bios", spec.bios.as_str().into(), live_bios != spec.bios);
        if spec.bios == Bios::Ovmf && !raw.contains_key("efidisk0") {
            let storage = first_storage(host);
            out.put("efidisk0", crate::spec::hardware::efi_disk(&storage, &spec.hardware));
        }
    }
    disks(host, raw, scope, &mut out);
    networks(host, raw, &mut out);
    let mut tags: BTreeSet<String> = spec.tags.iter().map(|t| t.to_lowercase()).collect();
    tags.insert(MANAGED_TAG.to_string());
    let live_tags = text("tags").map(|t| parse_tags(&t)).unwrap_or_default();
    set_if(&mut out, "tags", format_tags(&tags), live_tags != tags);
    let current = text("description").unwrap_or_default();
    let description = notes(host, &current, metadata);
    set_if(&mut out, "description", description.clone(), current != description);
    set_if(&mut out, "onboot", bool_text(spec.on_boot), flag("onboot") != spec.on_boot);
    set_if(&mut out, "protection", bool_text(spec.protection), flag("protection") != spec.protection);
    if scope.cloud_init
        && let Bootstrap::Template { user, ssh_keys, ip_config, .. } = &host.bootstrap
    {
        cloud_init(host, raw, user, ssh_keys, ip_config, &mut out);
    }
    out
}

fn bool_text(flag: bool) -> String {
    if flag { "1" } else { "0" }.into()
}

/// The storage new volumes (EFI vars, cloud-init drive) go to: the first declared disk's.
pub fn first_storage(host: &DesiredHost) -> String {
    host.spec.disks.values().next().map(|d| d.storage.clone()).unwrap_or_else(|| "local-lvm".into())
}

fn disks(host: &DesiredHost, raw: &Map<String, Value>, scope: Scope<'_>, out: &mut ConfigWrite) {
    for (slot, disk) in &host.spec.disks {
        match raw.get(slot).and_then(value_text) {
            Some(existing) if matches!(parse_drive(&existing), Drive::Disk(_)) => {
                let updated = update_disk(&existing, disk);
                if PropertyString::parse(&updated) != PropertyString::parse(&existing) {
                    out.put(slot, updated);
                }
            }
            _ if scope.add_disks => out.put(slot, format_new_disk(disk)),
            _ => {}
        }
    }
    if scope.detach == Detach::Nothing {
        return;
    }
    // An existing VM keeps the disks it boots from whatever the plan said: the boot order may
    // have changed since. A VM being created (cloud-init is written only then) drops its
    // template's extra disks, boot disk or not.
    let booting = if scope.cloud_init { Vec::new() } else { boot_disks(raw) };
    let mut undeclared: Vec<&String> = raw
        .iter()
        .filter(|(key, value)| {
            is_drive_key(key)
                && !host.spec.disks.contains_key(*key)
                && !booting.contains(key)
                && match scope.detach {
                    Detach::Slots(slots) => slots.iter().any(|s| s == *key),
                    _ => true,
                }
                && value_text(value).is_some_and(|v| matches!(parse_drive(&v), Drive::Disk(_)))
        })
        .map(|(key, _)| key)
        .collect();
    undeclared.sort();
    // Proxmox detaches a deleted disk as `unusedN`: its data stays on the storage.
    out.delete.extend(undeclared.into_iter().cloned());
}

fn networks(host: &DesiredHost, raw: &Map<String, Value>, out: &mut ConfigWrite) {
    for (slot, net) in &host.spec.networks {
        match raw.get(slot).and_then(value_text) {
            Some(existing) => {
                let updated = update_net(&existing, net);
                if PropertyString::parse(&updated) != PropertyString::parse(&existing) {
                    out.put(slot, updated);
                }
            }
            None => out.put(slot, format_net(net)),
        }
    }
    let mut undeclared: Vec<&String> =
        raw.keys().filter(|key| is_net_key(key) && !host.spec.networks.contains_key(*key)).collect();
    undeclared.sort();
    out.delete.extend(undeclared.into_iter().cloned());
}

fn cloud_init(
    host: &DesiredHost,
    raw: &Map<String, Value>,
    user: &str,
    ssh_keys: &[String],
    ip_config: &str,
    out: &mut ConfigWrite,
) {
    let text = |key: &str| raw.get(key).and_then(value_text);
    let has_drive = raw.iter().any(|(key, value)| {
        is_drive_key(key) && value_text(value).is_some_and(|v| parse_drive(&v) == Drive::CloudInit)
    });
    if !has_drive {
        // A template prepared for cloud-init has its drive already; add one only when missing,
        // in the first free IDE slot (PVE attaches cloud-init drives as CD-ROMs).
        if let Some(slot) = (0..4).map(|i| format!("ide{i}")).find(|s| !raw.contains_key(s)) {
            out.put(&slot, format!("{}:cloudinit", first_storage(host)));
        }
    }
    if text("ciuser").as_deref() != Some(user) {
        out.put("ciuser", user);
    }
    let keys = encode_ssh_keys(ssh_keys);
    if !keys.is_empty() && text("sshkeys").as_deref() != Some(keys.as_str()) {
        out.put("sshkeys", keys);
    }
    if text("ipconfig0").as_deref() != Some(ip_config) {
        out.put("ipconfig0", ip_config);
    }
    if raw.get("ciupgrade").and_then(value_bool) != Some(false) {
        out.put("ciupgrade", "0");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testkit;
    use serde_json::json;

    fn raw(value: Value) -> Map<String, Value> {
        value.as_object().expect("object").clone()
    }

    fn metadata(host: &str) -> Metadata {
        Metadata { host: host.into(), applying: Some("abc".into()), ..Metadata::default() }
    }

    const SCOPE_UPDATE: Scope<'static> = Scope::UPDATE;

    #[test]
    fn ssh_keys_are_encoded_like_encode_uri_component() {
        let keys = vec![
            "ssh-ed25519 AAAAC3Nz+a/b= ana@lab".to_string(),
            " ssh-rsa AAAAB3 ci ".to_string(),
            String::new(),
        ];
        assert_eq!(
            encode_ssh_keys(&keys),
            "ssh-ed25519%20AAAAC3Nz%2Ba%2Fb%3D%20ana%40lab%0Assh-rsa%20AAAAB3%20ci"
        );
        assert_eq!(encode_ssh_keys(&[]), "");
    }

    #[test]
    fn fresh_clone_gets_everything_but_sizes() {
        let mut host = testkit::host("web");
        host.spec.tags = ["Prod".to_string()].into();
        host.spec.description = "Reverse proxy.".into();
        host.bootstrap = Bootstrap::Template {
            template: crate::flake::host::TemplateRef::Id(9000),
            user: "root".into(),
            ssh_keys: vec!["ssh-ed25519 AAAA+x ana".into()],
            ip_config: "ip=127.0.0.20/8,gw=127.0.0.1".into(),
        };
        let template = raw(json!({
            "name": "web", "memory": "1024", "cores": 1, "agent": "0",
            "scsi0": "local-lvm:vm-101-disk-0,size=2G", "net0": "virtio=BC:24:11:AA:BB:CC,bridge=vmbr1",
            "net1": "virtio=BC:24:11:AA:BB:CD,bridge=vmbr0", "ide2": "local-lvm:vm-101-cloudinit,media=cdrom",
            "scsihw": "virtio-scsi-single"
        }));
        let write = config_write(&host, &template, &metadata("web"), Scope::CREATE);
        let set: Vec<(&str, &str)> = write.set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            set,
            vec![
                ("cores", "2"),
                ("cpu", "x86-64-v2-AES"),
                ("memory", "2048"),
                ("agent", "1"),
                ("net0", "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0"),
                ("tags", "nixprox;prod"),
                (
                    "description",
                    "Reverse proxy.\n\n<!-- nixprox:v1 {\"host\":\"web\",\"applying\":\"abc\"} -->"
                ),
                ("onboot", "1"),
                ("ciuser", "root"),
                ("sshkeys", "ssh-ed25519%20AAAA%2Bx%20ana"),
                ("ipconfig0", "ip=127.0.0.20/8,gw=127.0.0.1"),
                ("ciupgrade", "0"),
            ]
        );
        assert_eq!(write.delete, vec!["net1".to_string()]);
        assert_eq!(write.form("d1").last().cloned(), Some(("digest".to_string(), "d1".to_string())));
    }

    #[test]
    fn a_matching_config_needs_no_write() {
        let mut host = testkit::host("web");
        // The whole `cpu` line counts: the flags are declared too.
        host.spec.hardware.cpu_flags.insert("+aes".into());
        let meta = metadata("web");
        let live = raw(json!({
            "name": "web", "memory": "2048", "cores": 2, "sockets": 1, "cpu": "x86-64-v2-AES,flags=+aes",
            "agent": "enabled=1,fstrim_cloned_disks=1", "scsi0": "local-lvm:vm-101-disk-0,size=20G",
            "net0": "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0", "tags": "nixprox", "onboot": 1,
            "description": notes(&host, "", &meta), "digest": "x"
        }));
        assert_eq!(config_write(&host, &live, &meta, SCOPE_UPDATE), ConfigWrite::default());
        let cleared = Metadata { applying: None, ..meta };
        let write = config_write(&host, &live, &cleared, SCOPE_UPDATE);
        assert_eq!(write.keys(), vec!["description"]);
        // Without the flag declared, the line loses it.
        host.spec.hardware.cpu_flags.clear();
        let write = config_write(&host, &live, &cleared, SCOPE_UPDATE);
        assert_eq!(write.set[0], ("cpu".to_string(), "x86-64-v2-AES".to_string()));
    }

    #[test]
    fn the_owners_notes_are_kept_unless_a_description_is_declared() {
        let mut host = testkit::host("web");
        let meta = metadata("web");
        let owner = "Owner: alice.\r\nBackups nightly; do not delete.\n\n";
        // Nothing declared: the owner's bytes, block or no block before.
        for current in [owner.to_string(), Notes::render(owner, &Metadata::default())] {
            let written = notes(&host, &current, &meta);
            assert_eq!(Notes::parse(&written).user_text, owner);
            assert_eq!(Notes::parse(&written).metadata(), Some(&meta));
        }
        // The same text but for trailing white space: still the owner's bytes (no rewrite).
        host.spec.description = "Owner: alice.\r\nBackups nightly; do not delete.".into();
        assert_eq!(Notes::parse(&notes(&host, owner, &meta)).user_text, owner);
        // Another text declared: it replaces the notes.
        host.spec.description = "Reverse proxy.\n".into();
        assert_eq!(Notes::parse(&notes(&host, owner, &meta)).user_text, "Reverse proxy.\n");
    }

    #[test]
    fn undeclared_disks_are_detached_only_in_scope_and_never_the_boot_disk() {
        let host = testkit::host("web");
        let live = raw(json!({
            "virtio0": "local-lvm:vm-101-disk-0,size=20G", "scsi1": "local-lvm:vm-101-disk-1,size=8G",
            "boot": "order=virtio0", "ide2": "none,media=cdrom"
        }));
        let meta = metadata("web");
        let write = config_write(&host, &live, &meta, SCOPE_UPDATE);
        assert!(write.delete.is_empty(), "{write:?}");
        assert!(write.set.iter().any(|(k, _)| k == "scsi0"), "the declared disk is added: {write:?}");
        // Allowed: the undeclared data disk goes, the boot disk never (the boot order may have
        // changed since the plan).
        let slots = ["scsi1".to_string(), "virtio0".to_string()];
        let detach = Scope { detach: Detach::Slots(&slots), ..Scope::UPDATE };
        assert_eq!(config_write(&host, &live, &meta, detach).delete, ["scsi1"]);
        // Only the reviewed slots: a disk attached since the plan stays.
        let mut later = live.clone();
        later.insert("scsi2".into(), json!("local-lvm:vm-101-disk-2,size=4G"));
        assert_eq!(config_write(&host, &later, &meta, detach).delete, ["scsi1"]);
        let none = Scope { detach: Detach::Slots(&[]), ..Scope::UPDATE };
        assert!(config_write(&host, &later, &meta, none).delete.is_empty());
        // A blocked detach holds the additions back.
        let held = Scope { add_disks: false, ..Scope::UPDATE };
        assert!(!config_write(&host, &live, &meta, held).set.iter().any(|(k, _)| k == "scsi0"));
        // A VM being created drops its template's extra disks, whatever they are.
        let created = config_write(&host, &live, &meta, Scope::CREATE);
        assert_eq!(created.delete, ["scsi1", "virtio0"]);
    }

    #[test]
    fn new_disks_missing_cloud_init_drive_and_efi() {
        let mut host = testkit::host("db");
        host.spec.bios = Bios::Ovmf;
        host.spec.disks.insert(
            "scsi1".into(),
            crate::spec::DiskSpec {
                storage: "local-lvm".into(),
                size_bytes: 100 << 30,
                serial: Some("data".into()),
                discard: true,
                ssd: false,
                iothread: false,
            },
        );
        let live = raw(json!({"scsi0": "local-lvm:vm-9-disk-0,size=20G", "ide2": "none,media=cdrom"}));
        let write = config_write(&host, &live, &metadata("db"), Scope::CREATE);
        let get = |key: &str| write.set.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        assert_eq!(get("bios"), Some("ovmf"));
        assert_eq!(get("efidisk0"), Some("local-lvm:1,efitype=4m,pre-enrolled-keys=0"));
        assert_eq!(get("scsi1"), Some("local-lvm:100,discard=on,serial=data"));
        assert_eq!(get("scsi0"), None);
        assert_eq!(get("ide0"), Some("local-lvm:cloudinit"));
        assert_eq!(get("net0"), Some("virtio,bridge=vmbr0"));
    }
}
