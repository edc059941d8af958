//! Property-based round trips of Proxmox property strings: whatever disk, NIC, size or tag
//! list PVE (or a user) can write, parsing it and rendering it back loses nothing, and the
//! values nixprox writes read back as what it meant.

use proptest::prelude::*;

use super::*;
use crate::spec::{DiskSpec, NetSpec, format_size};

const UNITS: [(&str, u64); 5] = [("", 1), ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)];

/// A storage id as pve-storage allows it (`[a-z][a-z0-9\-\_\.]*[a-z0-9]`).
fn storage() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9._-]{0,10}[a-z0-9]"
}

fn disk() -> impl Strategy<Value = DiskSpec> {
    (storage(), 1u64..(1 << 44), proptest::option::of("[A-Za-z0-9_-]{1,20}"), any::<[bool; 3]>()).prop_map(
        |(storage, size_bytes, serial, [discard, ssd, iothread])| DiskSpec {
            storage,
            size_bytes,
            serial,
            discard,
            ssd,
            iothread,
        },
    )
}

fn mac() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<u8>(), 6)
        .prop_map(|bytes| bytes.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
}

fn net() -> impl Strategy<Value = NetSpec> {
    (
        proptest::sample::select(NET_MODELS.to_vec()),
        proptest::option::of(mac()),
        "vmbr[0-9]{1,3}",
        proptest::option::of(1u16..4095),
        any::<bool>(),
    )
        .prop_map(|(model, mac, bridge, vlan, firewall)| NetSpec {
            model: model.to_string(),
            mac,
            bridge,
            vlan,
            firewall,
        })
}

/// Keys PVE has on drives and NICs that nixprox does not manage, with values.
fn foreign_options() -> impl Strategy<Value = Vec<(String, String)>> {
    let keys = ["cache", "backup", "replicate", "aio", "mtu", "rate", "queues", "link_down"];
    proptest::sample::subsequence(keys.to_vec(), 0..=3)
        .prop_flat_map(|keys| {
            let n = keys.len();
            (Just(keys), proptest::collection::vec("[a-z0-9]{1,8}", n))
        })
        .prop_map(|(keys, values)| keys.into_iter().map(String::from).zip(values).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Items without `,` `=` or blanks render back exactly, keys and positional items in order.
    #[test]
    fn property_strings_round_trip(
        first in proptest::option::of("[A-Za-z0-9:/._-]{1,16}"),
        items in proptest::collection::vec(("[a-z][a-z0-9_-]{0,8}", "[A-Za-z0-9:;./+_-]{1,16}"), 0..6),
    ) {
        let mut text: Vec<String> = first.into_iter().collect();
        text.extend(items.iter().map(|(k, v)| format!("{k}={v}")));
        let text = text.join(",");
        let parsed = PropertyString::parse(&text);
        prop_assert_eq!(parsed.to_string(), text.clone());
        prop_assert_eq!(PropertyString::parse(&parsed.to_string()), parsed.clone());
        for (key, value) in &items {
            // The first item with a key wins, as PVE reads it.
            let first = items.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
            prop_assert_eq!(parsed.get(key), first, "{} in {}", key, value);
        }
    }

    /// Every size reads back as the bytes it was formatted from.
    #[test]
    fn sizes_round_trip(bytes in any::<u64>()) {
        prop_assert_eq!(crate::spec::parse_size(&format_size(bytes), 1), Some(bytes));
    }

    /// A whole number in any unit, upper or lower case, is that many bytes.
    #[test]
    fn sizes_in_every_unit(number in 0u64..(1 << 20), unit in 0..UNITS.len(), lower in any::<bool>()) {
        let (suffix, multiplier) = UNITS[unit];
        let suffix = if lower { suffix.to_lowercase() } else { suffix.to_string() };
        prop_assert_eq!(crate::spec::parse_size(&format!("{number}{suffix}"), 1), Some(number * multiplier));
    }

    /// A new disk's size (`storage:<GiB>`) is the allocation of the declared size, exactly.
    #[test]
    fn new_disk_sizes_are_exact(disk in disk()) {
        let text = format_new_disk(&disk);
        let props = PropertyString::parse(&text);
        let volume = props.positional().unwrap_or_default();
        let (storage, gib) = volume.split_once(':').unwrap_or_default();
        prop_assert_eq!(storage, disk.storage.as_str());
        prop_assert_eq!(crate::spec::parse_size(gib, 1 << 30), Some(crate::spec::allocation_size(disk.size_bytes)));
        prop_assert_eq!(props.get("discard") == Some("on"), disk.discard);
        prop_assert_eq!(props.flag("ssd").unwrap_or(false), disk.ssd);
        prop_assert_eq!(props.flag("iothread").unwrap_or(false), disk.iothread);
        prop_assert_eq!(props.get("serial"), disk.serial.as_deref());
    }

    /// A disk as Proxmox writes it (options in any order, keys nixprox does not manage) parses
    /// to the disk, and nixprox's update sets its options while keeping every other key.
    #[test]
    fn disks_round_trip(
        disk in disk(),
        vmid in 100u32..1_000_000,
        foreign in foreign_options(),
        order in any::<proptest::sample::Index>(),
    ) {
        let mut options: Vec<String> = vec![format!("size={}", format_size(disk.size_bytes))];
        if disk.discard { options.push("discard=on".into()); }
        if disk.ssd { options.push("ssd=1".into()); }
        if disk.iothread { options.push("iothread=1".into()); }
        if let Some(serial) = &disk.serial { options.push(format!("serial={serial}")); }
        options.extend(foreign.iter().map(|(k, v)| format!("{k}={v}")));
        let at = order.index(options.len());
        options.rotate_left(at);
        let text = format!("{}:vm-{vmid}-disk-0,{}", disk.storage, options.join(","));
        prop_assert_eq!(parse_drive(&text), Drive::Disk(disk.clone()));
        prop_assert_eq!(PropertyString::parse(&text).to_string(), text.clone());
        let plain = DiskSpec { serial: None, discard: false, ssd: false, iothread: false, ..disk.clone() };
        let updated = update_disk(&text, &plain);
        prop_assert_eq!(parse_drive(&updated), Drive::Disk(plain));
        let updated = update_disk(&updated, &disk);
        prop_assert_eq!(parse_drive(&updated), Drive::Disk(disk));
        let props = PropertyString::parse(&updated);
        for (key, value) in &foreign {
            prop_assert_eq!(props.get(key), Some(value.as_str()));
        }
    }

    /// A NIC nixprox writes reads back as declared; in Proxmox's long form or with a
    /// lower-case MAC it means the same; an update keeps keys nixprox does not manage.
    #[test]
    fn nics_round_trip(net in net(), foreign in foreign_options()) {
        let text = format_net(&net);
        prop_assert_eq!(parse_net(&text), Some(net.clone()));
        if let Some(mac) = &net.mac {
            let lower = text.replacen(mac.as_str(), &mac.to_lowercase(), 1);
            prop_assert_eq!(parse_net(&lower), Some(net.clone()));
            let mut long = format!("model={},macaddr={mac},bridge={}", net.model, net.bridge);
            if let Some(vlan) = net.vlan { long.push_str(&format!(",tag={vlan}")); }
            if net.firewall { long.push_str(",firewall=1"); }
            prop_assert_eq!(parse_net(&long), Some(net.clone()));
        }
        let mut existing = PropertyString::parse(&text);
        for (key, value) in &foreign {
            existing.set(key, value.clone());
        }
        let updated = update_net(&existing.to_string(), &net);
        prop_assert_eq!(parse_net(&updated), Some(net));
        let props = PropertyString::parse(&updated);
        for (key, value) in &foreign {
            prop_assert_eq!(props.get(key), Some(value.as_str()));
        }
    }

    /// Tags in any case, with any of the separators PVE, users and older tools write, read as
    /// the lower-cased set; PVE's canonical form reads back as the same set.
    #[test]
    fn tags_round_trip(
        tags in proptest::collection::btree_set("[A-Za-z0-9_][A-Za-z0-9_.+-]{0,12}", 0..8),
        separators in proptest::collection::vec(proptest::sample::select(vec![";", ",", " ", ";;", ", ", " ; "]), 8),
    ) {
        let mut text = String::new();
        for (index, tag) in tags.iter().enumerate() {
            if index > 0 {
                text.push_str(separators[index % separators.len()]);
            }
            text.push_str(tag);
        }
        let expected: BTreeSet<String> = tags.iter().map(|t| t.to_lowercase()).collect();
        let parsed = parse_tags(&text);
        prop_assert_eq!(&parsed, &expected);
        let canonical = format_tags(&parsed);
        prop_assert!(!canonical.contains([',', ' ']));
        prop_assert_eq!(parse_tags(&canonical), expected);
    }
}
