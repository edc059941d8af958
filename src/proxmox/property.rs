//! Proxmox property strings and the loosely typed values of VM configs.
//!
//! PVE packs structured settings into one string: `local-lvm:vm-101-disk-0,size=20G,ssd=1` (a
//! disk), `virtio=BC:24:11:00:00:01,bridge=vmbr0,tag=20` (a NIC), `enabled=1,fstrim_cloned_disks=1`
//! (the agent). The first item may omit its key (the property's "default key"). Numbers arrive
//! as JSON numbers or as strings, booleans as `0`/`1` (or `on`/`yes`/`true`), and tags are
//! separated by `;`, `,` or spaces depending on who wrote them. Everything here is pure.
//!
//! About 600 lines, half of them tests: the parse and format of each kind (drives, NICs, tags,
//! values) stay side by side, because they must round-trip.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::Value;

use crate::spec::{DiskSpec, NetSpec, allocation_size, exact_gib, parse_size};

/// A parsed property string. Items keep their order, so formatting a parsed string and
/// changing one key leaves the rest exactly as Proxmox wrote it (no spurious diffs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PropertyString {
    /// `(None, value)` is an item without `key=` (the default key).
    items: Vec<(Option<String>, String)>,
}

impl PropertyString {
    /// Parses `a,b=c,d=e`. Empty items (`a,,b`) are dropped, as PVE does.
    pub fn parse(text: &str) -> PropertyString {
        let items = text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| match item.split_once('=') {
                Some((key, value)) => (Some(key.trim().to_string()), value.trim().to_string()),
                None => (None, item.to_string()),
            })
            .collect();
        PropertyString { items }
    }

    /// The value of `key`, also found when it was written without its key as the first item
    /// and `key` is the property's `default_key` (e.g. `file` for disks).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.items.iter().find(|(k, _)| k.as_deref() == Some(key)).map(|(_, v)| v.as_str())
    }

    /// The first item when it has no key (`local-lvm:vm-101-disk-0` in a disk string).
    pub fn positional(&self) -> Option<&str> {
        match self.items.first() {
            Some((None, value)) => Some(value),
            _ => None,
        }
    }

    /// The value of `default_key`, written with or without its key.
    pub fn value_or_positional(&self, default_key: &str) -> Option<&str> {
        self.positional().or_else(|| self.get(default_key))
    }

    /// `key` as a boolean; `None` when absent or not a boolean.
    pub fn flag(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(parse_bool)
    }

    /// Sets `key`, in place when present (order-stable), else appended.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.items.iter_mut().find(|(k, _)| k.as_deref() == Some(key)) {
            Some(item) => item.1 = value,
            None => self.items.push((Some(key.to_string()), value)),
        }
    }

    /// Removes `key`; returns whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        let before = self.items.len();
        self.items.retain(|(k, _)| k.as_deref() != Some(key));
        before != self.items.len()
    }

    /// All items in order, `None` keys for positional ones.
    pub fn items(&self) -> impl Iterator<Item = (Option<&str>, &str)> {
        self.items.iter().map(|(k, v)| (k.as_deref(), v.as_str()))
    }
}

impl fmt::Display for PropertyString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (key, value)) in self.items.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            match key {
                Some(key) => write!(f, "{key}={value}")?,
                None => f.write_str(value)?,
            }
        }
        Ok(())
    }
}

/// A boolean as PVE accepts it: `1`/`0`, `on`/`off`, `yes`/`no`, `true`/`false`.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Some(true),
        "0" | "off" | "no" | "false" => Some(false),
        _ => None,
    }
}

/// A config value as text: strings as they are, numbers and booleans printed. PVE sends the
/// same key as a number on one endpoint and a string on another (`memory`, `cores`).
pub fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(if *flag { "1" } else { "0" }.to_string()),
        _ => None,
    }
}

/// A whole number sent as a number or a string (`2`, `"2"`, `2.0`).
pub fn value_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(number) => number
            .as_u64()
            .or_else(|| number.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0).map(|f| f as u64)),
        Value::String(text) => {
            let text = text.trim();
            text.parse().ok().or_else(|| {
                text.parse::<f64>().ok().filter(|f| *f >= 0.0 && f.fract() == 0.0).map(|f| f as u64)
            })
        }
        Value::Bool(flag) => Some(u64::from(*flag)),
        _ => None,
    }
}

/// A boolean sent as `0`/`1` (number or string), `true`/`false`, or `on`/`off`.
pub fn value_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(flag) => Some(*flag),
        Value::Number(number) => number.as_f64().map(|f| f != 0.0),
        Value::String(text) => parse_bool(text),
        _ => None,
    }
}

/// Tags as PVE stores them (`a;b`), or as users and older tools wrote them (`a,b`, `a b`);
/// lower-cased, since PVE compares tags case-insensitively by default.
pub fn parse_tags(text: &str) -> BTreeSet<String> {
    text.split([';', ',', ' ']).map(str::trim).filter(|t| !t.is_empty()).map(str::to_lowercase).collect()
}

/// Tags in PVE's canonical form: `;`-separated, sorted.
pub fn format_tags<'a>(tags: impl IntoIterator<Item = &'a String>) -> String {
    let sorted: BTreeSet<&String> = tags.into_iter().collect();
    sorted.into_iter().map(String::as_str).collect::<Vec<_>>().join(";")
}

/// Bus prefixes of drive keys that can hold a VM's disks.
const DISK_BUSES: [&str; 4] = ["scsi", "virtio", "sata", "ide"];

/// `scsi0`, `virtio3`, `sata1`, `ide2`: a drive slot (disk or CD-ROM). Not `efidisk0`,
/// `tpmstate0` or `unused0`, which are never part of a VM's declared disks.
pub fn is_drive_key(key: &str) -> bool {
    DISK_BUSES.iter().any(|bus| key.strip_prefix(bus).is_some_and(is_index))
}

/// `net0` … `net31`.
pub fn is_net_key(key: &str) -> bool {
    key.strip_prefix("net").is_some_and(is_index)
}

fn is_index(text: &str) -> bool {
    !text.is_empty() && text.len() <= 2 && text.bytes().all(|b| b.is_ascii_digit())
}

/// What a drive slot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drive {
    /// A real disk on a storage (or a passed-through device path).
    Disk(DiskSpec),
    /// `media=cdrom`, including the empty drive `none,media=cdrom`.
    Cdrom,
    /// The cloud-init drive (`local-lvm:vm-101-cloudinit,media=cdrom` or without `media`).
    CloudInit,
    /// `none` without media: an empty slot.
    Empty,
}

/// Parses a drive value (`local-lvm:vm-101-disk-0,size=20G,discard=on,ssd=1,iothread=1,serial=root`).
pub fn parse_drive(text: &str) -> Drive {
    let props = PropertyString::parse(text);
    let volume = props.value_or_positional("file").unwrap_or_default();
    // Cloud-init volumes are named `vm-<id>-cloudinit` whatever the storage or format.
    let volume_name = volume.rsplit([':', '/']).next().unwrap_or(volume);
    if volume_name.contains("-cloudinit") {
        return Drive::CloudInit;
    }
    if props.get("media") == Some("cdrom") || volume.ends_with(".iso") || volume == "cdrom" {
        return Drive::Cdrom;
    }
    if volume == "none" || volume.is_empty() {
        return Drive::Empty;
    }
    let storage = match volume.split_once(':') {
        Some((storage, _)) => storage.to_string(),
        // A passed-through device (`/dev/disk/by-id/…`): the path is its own "storage".
        None => volume.to_string(),
    };
    Drive::Disk(DiskSpec {
        storage,
        size_bytes: props.get("size").and_then(|s| parse_size(s, 1)).unwrap_or(0),
        serial: props.get("serial").map(str::to_string),
        discard: props.get("discard") == Some("on"),
        ssd: props.flag("ssd").unwrap_or(false),
        iothread: props.flag("iothread").unwrap_or(false),
    })
}

/// The value for a new disk in a create or `POST …/config` request: `storage:<GiB>` allocates
/// a fresh volume of that size. The size is nixprox's allocation of the declared one (whole
/// 4 MiB, see [`allocation_size`]) as an exact decimal, so Proxmox (which converts it to KiB,
/// rounding up) creates exactly that, never a little less or more.
pub fn format_new_disk(disk: &DiskSpec) -> String {
    let size = exact_gib(allocation_size(disk.size_bytes));
    let mut props = PropertyString::parse(&format!("{}:{size}", disk.storage));
    disk_options(&mut props, disk);
    props.to_string()
}

/// Sets the options nixprox manages on an existing drive string, keeping every other key.
pub fn update_disk(existing: &str, disk: &DiskSpec) -> String {
    let mut props = PropertyString::parse(existing);
    disk_options(&mut props, disk);
    props.to_string()
}

fn disk_options(props: &mut PropertyString, disk: &DiskSpec) {
    set_or_remove(props, "discard", disk.discard.then_some("on"));
    set_or_remove(props, "ssd", disk.ssd.then_some("1"));
    set_or_remove(props, "iothread", disk.iothread.then_some("1"));
    set_or_remove(props, "serial", disk.serial.as_deref());
}

fn set_or_remove(props: &mut PropertyString, key: &str, value: Option<&str>) {
    match value {
        Some(value) => props.set(key, value),
        None => {
            props.remove(key);
        }
    }
}

/// NIC models PVE knows; in `virtio=MAC,…` the model is the key.
const NET_MODELS: [&str; 14] = [
    "e1000",
    "e1000-82540em",
    "e1000-82544gc",
    "e1000-82545em",
    "e1000e",
    "i82551",
    "i82557b",
    "i82559er",
    "ne2k_isa",
    "ne2k_pci",
    "pcnet",
    "rtl8139",
    "virtio",
    "vmxnet3",
];

/// Parses `virtio=BC:24:11:00:00:01,bridge=vmbr0,tag=20,firewall=1` (also the long form
/// `model=virtio,macaddr=…`). `None` when no model can be found.
pub fn parse_net(text: &str) -> Option<NetSpec> {
    let props = PropertyString::parse(text);
    let (model, mac) = match props.get("model") {
        Some(model) => (model.to_string(), props.get("macaddr").map(str::to_string)),
        None => {
            // `virtio=MAC` names the model as the key; a bare `virtio` (no MAC yet) as an item.
            props.items().find_map(|(key, value)| match key {
                Some(key) if NET_MODELS.contains(&key) => Some((key.to_string(), Some(value.to_string()))),
                None if NET_MODELS.contains(&value) => Some((value.to_string(), None)),
                _ => None,
            })?
        }
    };
    Some(NetSpec {
        model,
        mac: mac.filter(|m| !m.is_empty()).map(|m| m.to_ascii_uppercase()),
        bridge: props.get("bridge").unwrap_or_default().to_string(),
        vlan: props.get("tag").and_then(|t| t.parse().ok()),
        firewall: props.flag("firewall").unwrap_or(false),
    })
}

/// The `netN` value for a NIC. Without a MAC, PVE generates one (`virtio,bridge=vmbr0`).
pub fn format_net(net: &NetSpec) -> String {
    let mut text = match &net.mac {
        Some(mac) => format!("{}={mac}", net.model),
        None => net.model.clone(),
    };
    if !net.bridge.is_empty() {
        text.push_str(&format!(",bridge={}", net.bridge));
    }
    if let Some(vlan) = net.vlan {
        text.push_str(&format!(",tag={vlan}"));
    }
    if net.firewall {
        text.push_str(",firewall=1");
    }
    text
}

/// Updates model, MAC, bridge, VLAN and firewall of an existing `netN` value, keeping other
/// keys (`mtu`, `rate`, `queues`, `link_down`) as they were.
pub fn update_net(existing: &str, net: &NetSpec) -> String {
    let old = PropertyString::parse(existing);
    let mut props = PropertyString::parse(&format_net(net));
    for (key, value) in old.items() {
        let Some(key) = key else { continue };
        let managed =
            NET_MODELS.contains(&key) || matches!(key, "model" | "macaddr" | "bridge" | "tag" | "firewall");
        if !managed {
            props.set(key, value);
        }
    }
    // Keep the MAC Proxmox picked when the declaration leaves it open.
    if net.mac.is_none()
        && let Some(mac) = parse_net(existing).and_then(|n| n.mac)
    {
        let mut keep = PropertyString::parse(&format!("{}={mac}", net.model));
        for (key, value) in props.items().skip(1) {
            if let Some(key) = key {
                keep.set(key, value);
            }
        }
        return keep.to_string();
    }
    props.to_string()
}

/// Whether the `agent` option turns the guest agent on: `1`, `enabled=1,fstrim_cloned_disks=1`.
pub fn agent_enabled(text: &str) -> bool {
    let props = PropertyString::parse(text);
    props.value_or_positional("enabled").and_then(parse_bool).unwrap_or(false)
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    #[test]
    fn property_strings_round_trip_and_keep_order() {
        for text in [
            "local-lvm:vm-101-disk-0,size=20G,discard=on,ssd=1,iothread=1,serial=root",
            "virtio=BC:24:11:00:00:01,bridge=vmbr0,tag=20,firewall=1",
            "enabled=1,fstrim_cloned_disks=1",
            "x86-64-v2-AES,flags=+aes",
            "order=scsi0;ide2;net0",
        ] {
            assert_eq!(PropertyString::parse(text).to_string(), text);
        }
        let mut props = PropertyString::parse("local-lvm:vm-1-disk-0,size=8G,ssd=1");
        props.set("size", "10G");
        props.set("discard", "on");
        assert!(props.remove("ssd"));
        assert!(!props.remove("ssd"));
        assert_eq!(props.to_string(), "local-lvm:vm-1-disk-0,size=10G,discard=on");
        assert_eq!(props.positional(), Some("local-lvm:vm-1-disk-0"));
        assert_eq!(PropertyString::parse("a,,b=1,").to_string(), "a,b=1");
    }

    #[test]
    fn default_key_with_or_without_its_name() {
        assert_eq!(
            PropertyString::parse("file=local:vm-1-disk-0,size=1G").value_or_positional("file"),
            Some("local:vm-1-disk-0")
        );
        assert_eq!(
            PropertyString::parse("local:vm-1-disk-0").value_or_positional("file"),
            Some("local:vm-1-disk-0")
        );
        assert_eq!(PropertyString::parse("size=1G").value_or_positional("file"), None);
    }

    #[test]
    fn booleans_and_numbers_in_every_form() {
        use serde_json::json;
        for (value, expected) in [
            (json!(1), Some(true)),
            (json!(0), Some(false)),
            (json!("1"), Some(true)),
            (json!("0"), Some(false)),
            (json!("on"), Some(true)),
            (json!("off"), Some(false)),
            (json!(true), Some(true)),
            (json!("yes"), Some(true)),
            (json!("maybe"), None),
            (json!(null), None),
        ] {
            assert_eq!(value_bool(&value), expected, "{value}");
        }
        for (value, expected) in [
            (json!(2048), Some(2048)),
            (json!("2048"), Some(2048)),
            (json!(4.0), Some(4)),
            (json!("4.0"), Some(4)),
            (json!(1.5), None),
            (json!(-1), None),
            (json!("many"), None),
            (json!([1]), None),
        ] {
            assert_eq!(value_u64(&value), expected, "{value}");
        }
        assert_eq!(value_text(&json!(2)), Some("2".into()));
        assert_eq!(value_text(&json!("x")), Some("x".into()));
    }

    #[test]
    fn tags_split_on_any_separator_and_lowercase() {
        let expected: BTreeSet<String> = ["nixprox", "web", "prod"].map(String::from).into();
        for text in [
            "nixprox;web;prod",
            "nixprox,web,prod",
            "nixprox web prod",
            "NixProx; Web ;prod;",
            "prod;web;nixprox",
        ] {
            assert_eq!(parse_tags(text), expected, "{text}");
        }
        assert!(parse_tags("").is_empty());
        assert_eq!(format_tags(&expected), "nixprox;prod;web");
    }

    #[test]
    fn drive_keys() {
        for key in ["scsi0", "scsi30", "virtio15", "sata5", "ide2"] {
            assert!(is_drive_key(key), "{key}");
        }
        for key in ["efidisk0", "tpmstate0", "unused0", "scsihw", "scsi", "net0", "scsi100"] {
            assert!(!is_drive_key(key), "{key}");
        }
        assert!(is_net_key("net0") && is_net_key("net31") && !is_net_key("netx") && !is_net_key("net"));
    }

    /// Drive values as Proxmox VE 8/9 writes them.
    #[test]
    fn drives_from_real_configs() {
        let disk = |storage: &str, size_bytes, serial: Option<&str>, discard, ssd, iothread| {
            Drive::Disk(DiskSpec {
                storage: storage.into(),
                size_bytes,
                serial: serial.map(String::from),
                discard,
                ssd,
                iothread,
            })
        };
        let table = [
            (
                "local-lvm:vm-101-disk-0,size=20G,discard=on,ssd=1,iothread=1,serial=root",
                disk("local-lvm", 20 * G, Some("root"), true, true, true),
            ),
            ("local-lvm:vm-101-disk-1,size=32768M", disk("local-lvm", 32 * G, None, false, false, false)),
            (
                "ceph-pool:vm-101-disk-0,cache=writeback,size=1T",
                disk("ceph-pool", 1024 * G, None, false, false, false),
            ),
            (
                "local:101/vm-101-disk-0.qcow2,format=qcow2,size=4194304K",
                disk("local", 4 * G, None, false, false, false),
            ),
            (
                "file=local-zfs:vm-102-disk-0,size=1.5T,ssd=0",
                disk("local-zfs", 1536 * G, None, false, false, false),
            ),
            (
                "local-lvm:base-9000-disk-0/vm-101-disk-0,size=8G",
                disk("local-lvm", 8 * G, None, false, false, false),
            ),
            (
                "/dev/disk/by-id/ata-X,size=100G",
                disk("/dev/disk/by-id/ata-X", 100 * G, None, false, false, false),
            ),
            ("local-lvm:vm-101-disk-0,discard=ignore", disk("local-lvm", 0, None, false, false, false)),
            ("none,media=cdrom", Drive::Cdrom),
            ("local:iso/nixos-minimal.iso,media=cdrom,size=1100M", Drive::Cdrom),
            ("cdrom,media=cdrom", Drive::Cdrom),
            ("local-lvm:vm-101-cloudinit,media=cdrom,size=4M", Drive::CloudInit),
            ("local:101/vm-101-cloudinit.qcow2,media=cdrom", Drive::CloudInit),
            ("none", Drive::Empty),
        ];
        for (text, expected) in table {
            assert_eq!(parse_drive(text), expected, "{text}");
        }
    }

    #[test]
    fn new_and_updated_disks() {
        let disk = DiskSpec {
            storage: "local-lvm".into(),
            size_bytes: 20 * G,
            serial: Some("root".into()),
            discard: true,
            ssd: true,
            iothread: true,
        };
        assert_eq!(format_new_disk(&disk), "local-lvm:20,discard=on,ssd=1,iothread=1,serial=root");
        let half = DiskSpec {
            size_bytes: G / 2,
            serial: None,
            discard: false,
            ssd: false,
            iothread: false,
            ..disk.clone()
        };
        assert_eq!(format_new_disk(&half), "local-lvm:0.5");
        let odd = DiskSpec { size_bytes: 2049 << 20, ..half.clone() };
        assert_eq!(format_new_disk(&odd), "local-lvm:2.00390625", "2049M allocated as 2052M");
        assert_eq!(
            update_disk("local-lvm:vm-101-disk-0,cache=none,size=20G,ssd=1", &half),
            "local-lvm:vm-101-disk-0,cache=none,size=20G"
        );
        assert_eq!(
            update_disk("local-lvm:vm-101-disk-0,size=20G", &disk),
            "local-lvm:vm-101-disk-0,size=20G,discard=on,ssd=1,iothread=1,serial=root"
        );
    }

    /// NIC values as Proxmox VE writes them.
    #[test]
    fn nets_from_real_configs() {
        let net = |model: &str, mac: Option<&str>, bridge: &str, vlan, firewall| NetSpec {
            model: model.into(),
            mac: mac.map(String::from),
            bridge: bridge.into(),
            vlan,
            firewall,
        };
        let table = [
            (
                "virtio=BC:24:11:00:00:01,bridge=vmbr0,tag=20,firewall=1",
                net("virtio", Some("BC:24:11:00:00:01"), "vmbr0", Some(20), true),
            ),
            (
                "virtio=bc:24:11:aa:bb:cc,bridge=vmbr1",
                net("virtio", Some("BC:24:11:AA:BB:CC"), "vmbr1", None, false),
            ),
            (
                "e1000=52:54:00:12:34:56,bridge=vmbr0,firewall=0,link_down=1,mtu=1500",
                net("e1000", Some("52:54:00:12:34:56"), "vmbr0", None, false),
            ),
            (
                "model=vmxnet3,macaddr=AA:BB:CC:DD:EE:FF,bridge=vmbr2,tag=4094",
                net("vmxnet3", Some("AA:BB:CC:DD:EE:FF"), "vmbr2", Some(4094), false),
            ),
            ("virtio,bridge=vmbr0", net("virtio", None, "vmbr0", None, false)),
            ("virtio=BC:24:11:00:00:02", net("virtio", Some("BC:24:11:00:00:02"), "", None, false)),
        ];
        for (text, expected) in table {
            assert_eq!(parse_net(text), Some(expected), "{text}");
        }
        assert_eq!(parse_net("bridge=vmbr0"), None);
    }

    #[test]
    fn nets_format_and_update_keeping_unmanaged_keys() {
        let net = NetSpec {
            model: "virtio".into(),
            mac: Some("BC:24:11:00:00:01".into()),
            bridge: "vmbr0".into(),
            vlan: Some(20),
            firewall: true,
        };
        assert_eq!(format_net(&net), "virtio=BC:24:11:00:00:01,bridge=vmbr0,tag=20,firewall=1");
        let open = NetSpec { mac: None, vlan: None, firewall: false, ..net.clone() };
        assert_eq!(format_net(&open), "virtio,bridge=vmbr0");
        assert_eq!(
            update_net("virtio=BC:24:11:00:00:09,bridge=vmbr1,mtu=9000,tag=5", &open),
            "virtio=BC:24:11:00:00:09,bridge=vmbr0,mtu=9000"
        );
        assert_eq!(
            update_net("e1000=BC:24:11:00:00:09,bridge=vmbr1,queues=4", &net),
            "virtio=BC:24:11:00:00:01,bridge=vmbr0,tag=20,firewall=1,queues=4"
        );
    }

    #[test]
    fn agent_forms() {
        for (text, on) in [
            ("1", true),
            ("0", false),
            ("enabled=1", true),
            ("enabled=0,fstrim_cloned_disks=1", false),
            ("1,fstrim_cloned_disks=1,type=virtio", true),
            ("", false),
        ] {
            assert_eq!(agent_enabled(text), on, "{text}");
        }
    }
}
