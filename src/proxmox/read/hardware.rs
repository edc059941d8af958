//! The [`Hardware`] part of a live config: the whole `cpu` line (type and flags), `numa`,
//! `serial0`, `vga` and `startup`, each reduced as the declared side is.

use serde_json::{Map, Value};

use crate::proxmox::property::{PropertyString, value_bool, value_text};
use crate::spec::Hardware;
use crate::spec::extra::{is_always_written, is_proxmox_written};
use crate::spec::hardware::{
    PciDevice, Startup, Tpm, UsbDevice, VirtiofsShare, efi_pre_enrolled_keys, parse_cpu,
};

/// The CPU type (qemu-server's default `kvm64` when `cpu` is absent) and the hardware.
pub fn hardware_of(config: &Map<String, Value>) -> (String, Hardware) {
    let text = |key: &str| config.get(key).and_then(value_text);
    let (cpu_type, cpu_flags) = parse_cpu(&text("cpu").unwrap_or_default());
    let hardware = Hardware {
        cpu_flags,
        numa: config.get("numa").and_then(value_bool),
        serial: text("serial0").map(|s| s == "socket"),
        // `vga: serial0` or `vga: type=std,memory=32`.
        vga: text("vga")
            .and_then(|v| PropertyString::parse(&v).value_or_positional("type").map(str::to_string)),
        startup: text("startup").map(|s| Startup::parse(&s)),
        pci: devices(config, "hostpci", PciDevice::parse),
        usb: devices(config, "usb", UsbDevice::parse),
        virtiofs: devices(config, "virtiofs", VirtiofsShare::parse),
        usb_hotplug: usb_hotplug(config),
        extra: config
            .iter()
            .filter(|(key, _)| !is_always_written(key) && !is_proxmox_written(key))
            .filter_map(|(key, value)| Some((key.clone(), value_text(value)?)))
            .collect(),
        usb_hotplug_feature: usb_feature(config),
        tpm: text("tpmstate0").and_then(|t| Tpm::parse(&t)),
        efi_pre_enrolled_keys: text("efidisk0").map(|e| efi_pre_enrolled_keys(&e)),
    };
    (cpu_type, hardware)
}

/// The mapped devices of `<prefix>N` keys (raw and SPICE ones are left out).
fn devices<T>(
    config: &Map<String, Value>,
    prefix: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> std::collections::BTreeMap<String, T> {
    config
        .iter()
        .filter(|(key, _)| {
            key.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|(key, value)| Some((key.clone(), parse(&value_text(value)?)?)))
        .collect()
}

/// Whether qemu-server hot-plugs a USB change into the running VM (`PVE/QemuServer.pm`,
/// `vmconfig_hotplug_pending`, `$is_usb_hotplug_supported`): `usb` among the `hotplug`
/// features (absent or `1` means `network,disk,usb`), a machine version of 7.1 or later (an
/// unversioned machine runs the node's QEMU, 8.0 or later on every Proxmox VE nixprox
/// supports), and a Linux `ostype` (`l26`; Windows later than 7 too, which no NixOS host is).
fn usb_hotplug(config: &Map<String, Value>) -> bool {
    let text = |key: &str| config.get(key).and_then(value_text);
    let usb = usb_feature(config);
    let machine = text("machine")
        .and_then(|m| PropertyString::parse(&m).value_or_positional("type").map(str::to_string))
        .unwrap_or_default();
    usb && text("ostype").as_deref() == Some("l26") && machine_at_least(&machine, (7, 1))
}

/// `usb` among the `hotplug` features (`parse_hotplug_features`: absent or `1` is
/// `network,disk,usb`, `0` none).
fn usb_feature(config: &Map<String, Value>) -> bool {
    match config.get("hotplug").and_then(value_text).as_deref().unwrap_or("1") {
        "1" => true,
        "0" => false,
        features => features.split(',').any(|f| f.trim() == "usb"),
    }
}

/// A versioned machine type (`pc-q35-6.2`, `pc-i440fx-8.1+pve0`) at least `min`; unversioned
/// ones (`q35`, `pc`, none) always are.
fn machine_at_least(machine: &str, min: (u32, u32)) -> bool {
    let Some(version) = machine.rsplit('-').next().filter(|_| machine.starts_with("pc-")) else {
        return true;
    };
    let version = version.split('+').next().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= min,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(value: serde_json::Value) -> Map<String, Value> {
        value.as_object().expect("object").clone()
    }

    #[test]
    fn usb_hot_plugs_only_where_qemu_server_does() {
        let linux = config(serde_json::json!({"ostype": "l26"}));
        assert!(usb_hotplug(&linux));
        assert!(!usb_hotplug(&config(serde_json::json!({}))), "no ostype: not known to be Linux");
        assert!(!usb_hotplug(&config(serde_json::json!({"ostype": "l26", "hotplug": "network,disk"}))));
        assert!(!usb_hotplug(&config(serde_json::json!({"ostype": "l26", "hotplug": "0"}))));
        assert!(!usb_hotplug(&config(serde_json::json!({"ostype": "l26", "machine": "pc-q35-6.2"}))));
        assert!(usb_hotplug(&config(serde_json::json!({"ostype": "l26", "machine": "pc-i440fx-8.1+pve0"}))));
        assert!(usb_hotplug(&config(serde_json::json!({"ostype": "l26", "machine": "q35"}))));
    }

    #[test]
    fn only_mapped_devices_are_read() {
        let (_, hardware) = hardware_of(&config(serde_json::json!({
            "hostpci0": "mapping=gpu,pcie=1", "hostpci1": "host=0000:02:00.0", "usb0": "mapping=zigbee",
            "usb1": "spice", "usbfoo": "mapping=x"
        })));
        assert_eq!(hardware.pci.keys().collect::<Vec<_>>(), ["hostpci0"]);
        assert_eq!(hardware.usb.keys().collect::<Vec<_>>(), ["usb0"]);
    }
}
