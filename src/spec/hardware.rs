//! The VM hardware beyond the core [`super::VmSpec`] fields: CPU flags and NUMA, the serial
//! console and display, the startup order. Kept in one sub-struct, [`Hardware`], so the core
//! vocabulary stays small and a spec without any of it serialises exactly as before (plan ids
//! of hosts that declare none of it do not change).
//!
//! Both sides are reduced to the same shape: the declared side's `None` means "not declared:
//! keep what Proxmox has"; the live side's `None` means the key is absent.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The CPU flags Proxmox lets a VM's own `cpu` line carry (qemu-server
/// `PVE/QemuServer/CPUFlags.pm`, `$supported_vm_specific_cpu_flags_by_arch`; any other flag
/// is refused with "VM-specific CPU flags must be a subset of: …"). The module checks the same
/// list at evaluation.
pub const VM_CPU_FLAGS: &[&str] = &[
    "nested-virt",
    "md-clear",
    "pcid",
    "spec-ctrl",
    "ssbd",
    "ibpb",
    "virt-ssbd",
    "amd-ssbd",
    "amd-no-ssb",
    "pdpe1gb",
    "hv-tlbflush",
    "hv-evmcs",
    "aes",
];

/// What a VM has beyond the core spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    /// CPU flags of the `cpu` line (`flags=+aes;-pcid`), each with its sign, as a set.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub cpu_flags: BTreeSet<String>,
    /// `numa`: declared or not; on the live side absent is `None` (Proxmox's default, off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa: Option<bool>,
    /// `serial0: socket`: declared or not; on the live side `Some(true)` for a socket,
    /// `Some(false)` for anything else there (a host device only `root@pam` may set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<bool>,
    /// The display type of `vga` (`std`, `serial0`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vga: Option<String>,
    /// `startup`, as Proxmox writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<Startup>,
    /// PCI devices through cluster resource mappings, by slot (`hostpci0`). On the live side
    /// only mapped ones: a raw `host=` device is root@pam's, never nixprox's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pci: BTreeMap<String, PciDevice>,
    /// USB devices through cluster resource mappings, by slot (`usb0`), mapped ones only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub usb: BTreeMap<String, UsbDevice>,
    /// Host directories shared through directory mappings, by slot (`virtiofs0`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub virtiofs: BTreeMap<String, VirtiofsShare>,
    /// `tpmstate0`: a TPM's version and storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<Tpm>,
    /// `pre-enrolled-keys` of the EFI disk (`efidisk0`): declared or not; on the live side
    /// `None` without an EFI disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efi_pre_enrolled_keys: Option<bool>,
    /// Declared: `nixprox.vm.extraConfig`. Live: every key that is neither always written by
    /// nixprox nor Proxmox's own (`spec::extra`), with its value: what a replace would lose
    /// unless the flake declares it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
    /// Live side only: `usb` is among the VM's `hotplug` features (a `tablet` change is then
    /// plugged at once).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub usb_hotplug_feature: bool,
    /// Live side only: whether a USB change reaches the running VM at once (qemu-server
    /// `vmconfig_hotplug_pending`: `usb` in `hotplug`, machine version 7.1 or later, `ostype`
    /// `l26`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub usb_hotplug: bool,
}

/// `tpmstate0: <storage>:<volume>,version=v2.0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tpm {
    /// `v1.2` or `v2.0` (qemu-server's default, when absent, is `v1.2`).
    pub version: String,
    pub storage: String,
}

impl Tpm {
    /// Parses a `tpmstate0` value.
    pub fn parse(text: &str) -> Option<Tpm> {
        let volume = text.split(',').next()?.trim();
        let (storage, _) = volume.split_once(':')?;
        let version = props(text).get("version").cloned().unwrap_or_else(|| "v1.2".into());
        Some(Tpm { version, storage: storage.to_string() })
    }

    /// The value that creates the TPM state volume (`<storage>:1,version=…`; Proxmox sizes it).
    pub fn create_value(&self) -> String {
        format!("{}:1,version={}", self.storage, self.version)
    }
}

/// The `efidisk0` value that creates a VM's EFI disk: Proxmox's 4 MiB layout, with Microsoft's
/// Secure Boot keys enrolled only when `efi.preEnrolledKeys` says so (off by default, so
/// lanzaboote or sbctl can enrol their own).
pub fn efi_disk(storage: &str, hardware: &Hardware) -> String {
    let keys = u8::from(hardware.efi_pre_enrolled_keys.unwrap_or(false));
    format!("{storage}:1,efitype=4m,pre-enrolled-keys={keys}")
}

/// `pre-enrolled-keys` of an `efidisk0` value (absent is off, qemu-server's default).
pub fn efi_pre_enrolled_keys(efidisk: &str) -> bool {
    props(efidisk).get("pre-enrolled-keys").is_some_and(|v| v == "1")
}

/// `hostpciN: mapping=<id>,pcie=1,rombar=0,x-vga=1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDevice {
    pub mapping: String,
    pub pcie: bool,
    pub rombar: bool,
    pub x_vga: bool,
}

impl PciDevice {
    /// Parses a `hostpciN` value; `None` for a raw device (`host=`) or anything unmapped.
    pub fn parse(text: &str) -> Option<PciDevice> {
        let props = props(text);
        let flag = |key: &str, default: bool| props.get(key).map_or(default, |v| v == "1");
        Some(PciDevice {
            mapping: props.get("mapping")?.clone(),
            pcie: flag("pcie", false),
            rombar: flag("rombar", true),
            x_vga: flag("x-vga", false),
        })
    }

    /// The value Proxmox takes, with only what differs from its defaults.
    pub fn format(&self) -> String {
        let mut text = format!("mapping={}", self.mapping);
        for (key, on, default) in
            [("pcie", self.pcie, false), ("rombar", self.rombar, true), ("x-vga", self.x_vga, false)]
        {
            if on != default {
                text.push_str(&format!(",{key}={}", if on { 1 } else { 0 }));
            }
        }
        text
    }
}

/// `usbN: mapping=<id>,usb3=1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsbDevice {
    pub mapping: String,
    pub usb3: bool,
}

impl UsbDevice {
    /// Parses a `usbN` value; `None` for a raw (`host=`) or SPICE device.
    pub fn parse(text: &str) -> Option<UsbDevice> {
        let props = props(text);
        Some(UsbDevice {
            mapping: props.get("mapping")?.clone(),
            usb3: props.get("usb3").is_some_and(|v| v == "1"),
        })
    }

    pub fn format(&self) -> String {
        if self.usb3 {
            format!("mapping={},usb3=1", self.mapping)
        } else {
            format!("mapping={}", self.mapping)
        }
    }
}

/// `virtiofsN: <dirid>,cache=auto,direct-io=1,expose-acl=1,expose-xattr=1` (qemu-server
/// `PVE/QemuServer/Virtiofs.pm`, PVE 8.4+: `dirid` is the default key; `cache` defaults to
/// `auto`, the flags to off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtiofsShare {
    pub mapping: String,
    pub cache: String,
    pub direct_io: bool,
    pub expose_acl: bool,
    pub expose_xattr: bool,
}

impl VirtiofsShare {
    pub fn parse(text: &str) -> Option<VirtiofsShare> {
        let props = props(text);
        let positional = text.split(',').next().filter(|p| !p.contains('=')).map(|p| p.trim().to_string());
        let flag = |key: &str| props.get(key).is_some_and(|v| v == "1");
        Some(VirtiofsShare {
            mapping: props.get("dirid").cloned().or(positional)?,
            cache: props.get("cache").cloned().unwrap_or_else(|| "auto".into()),
            direct_io: flag("direct-io"),
            expose_acl: flag("expose-acl"),
            expose_xattr: flag("expose-xattr"),
        })
    }

    pub fn format(&self) -> String {
        let mut text = format!("dirid={}", self.mapping);
        if self.cache != "auto" {
            text.push_str(&format!(",cache={}", self.cache));
        }
        for (key, on) in [
            ("direct-io", self.direct_io),
            ("expose-acl", self.expose_acl),
            ("expose-xattr", self.expose_xattr),
        ] {
            if on {
                text.push_str(&format!(",{key}=1"));
            }
        }
        text
    }
}

/// `key=value` pairs of a property string (positional parts dropped).
fn props(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|part| part.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

impl Hardware {
    /// Nothing declared or present: left out of serialised specs.
    pub fn is_empty(&self) -> bool {
        *self == Hardware::default()
    }
}

/// `startup: order=1,up=30,down=60`: the node's start and shutdown order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Startup {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<u32>,
    /// Seconds to wait after starting this VM before the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<u32>,
    /// Seconds a shutdown of this VM may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<u32>,
}

impl Startup {
    /// Parses `order=1,up=30,down=60` (any order, any subset); unknown or malformed parts are
    /// left out, so a hand-written value compares by what Proxmox honours.
    pub fn parse(text: &str) -> Startup {
        let mut startup = Startup::default();
        for part in text.split(',') {
            let Some((key, value)) = part.split_once('=') else { continue };
            let value = value.trim().parse().ok();
            match key.trim() {
                "order" => startup.order = value,
                "up" => startup.up = value,
                "down" => startup.down = value,
                _ => {}
            }
        }
        startup
    }

    /// The value Proxmox writes: `order=…,up=…,down=…`, the set parts in that order.
    pub fn format(&self) -> String {
        [("order", self.order), ("up", self.up), ("down", self.down)]
            .into_iter()
            .filter_map(|(key, value)| value.map(|v| format!("{key}={v}")))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A `cpu` value (`host`, `host,flags=+aes;-pcid`, `cputype=host,hidden=1`) split into its type
/// and its flags; the type defaults to qemu-server's `kvm64`.
pub fn parse_cpu(text: &str) -> (String, BTreeSet<String>) {
    let mut cpu_type = None;
    let mut flags = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            None => cpu_type = Some(part.to_string()),
            Some(("cputype", value)) => cpu_type = Some(value.to_string()),
            Some(("flags", value)) => flags.extend(parse_flags(value)),
            Some(_) => {}
        }
    }
    (cpu_type.unwrap_or_else(|| "kvm64".into()), flags)
}

/// `+aes;-pcid` as a set of signed flags; a flag without a sign is `+` (qemu-server's reading).
pub fn parse_flags(text: &str) -> BTreeSet<String> {
    text.split(';')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| if f.starts_with(['+', '-']) { f.to_string() } else { format!("+{f}") })
        .collect()
}

/// Flags as Proxmox writes them: `+aes;-pcid`.
pub fn format_flags(flags: &BTreeSet<String>) -> String {
    flags.iter().cloned().collect::<Vec<_>>().join(";")
}

/// The `cpu` value for a type and flags: `host`, `host,flags=+aes;-pcid`.
pub fn format_cpu(cpu_type: &str, flags: &BTreeSet<String>) -> String {
    if flags.is_empty() { cpu_type.to_string() } else { format!("{cpu_type},flags={}", format_flags(flags)) }
}

/// A flag a VM's `cpu` line may not carry (sign stripped), if any.
pub fn unsupported_flag(flags: &BTreeSet<String>) -> Option<&str> {
    flags.iter().map(|f| f.trim_start_matches(['+', '-'])).find(|name| !VM_CPU_FLAGS.contains(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cpu_lines_split_into_type_and_flags() {
        assert_eq!(parse_cpu("host"), ("host".into(), set(&[])));
        assert_eq!(parse_cpu("host,flags=+aes"), ("host".into(), set(&["+aes"])));
        assert_eq!(
            parse_cpu("cputype=x86-64-v2-AES,flags=-pcid;+aes"),
            ("x86-64-v2-AES".into(), set(&["+aes", "-pcid"]))
        );
        assert_eq!(parse_cpu("flags=aes,hidden=1"), ("kvm64".into(), set(&["+aes"])));
        assert_eq!(format_flags(&set(&["-pcid", "+aes"])), "+aes;-pcid");
        assert_eq!(format_cpu("host", &set(&["-pcid", "+aes"])), "host,flags=+aes;-pcid");
        assert_eq!(format_cpu("host", &set(&[])), "host");
    }

    #[test]
    fn only_the_vm_specific_flags_are_allowed() {
        assert_eq!(unsupported_flag(&set(&["+aes", "-pcid"])), None);
        assert_eq!(unsupported_flag(&set(&["+avx2"])), Some("avx2"));
    }

    #[test]
    fn startup_reads_any_order_and_writes_proxmoxs() {
        let startup = Startup::parse("up=30, order=2,down=60,bogus=1");
        assert_eq!(startup, Startup { order: Some(2), up: Some(30), down: Some(60) });
        assert_eq!(startup.format(), "order=2,up=30,down=60");
        assert_eq!(Startup::parse("order=x").format(), "");
    }

    #[test]
    fn mapped_devices_parse_and_format_with_proxmoxs_defaults() {
        let gpu = PciDevice::parse("mapping=gpu,pcie=1,x-vga=1").expect("mapped");
        assert_eq!(gpu, PciDevice { mapping: "gpu".into(), pcie: true, rombar: true, x_vga: true });
        assert_eq!(gpu.format(), "mapping=gpu,pcie=1,x-vga=1");
        assert_eq!(PciDevice::parse("host=0000:01:00.0,pcie=1"), None, "raw devices are root's");
        let stick = UsbDevice::parse("mapping=zigbee,usb3=1").expect("mapped");
        assert_eq!(stick.format(), "mapping=zigbee,usb3=1");
        assert_eq!(UsbDevice::parse("host=1a86:7523"), None);
        assert_eq!(UsbDevice::parse("spice"), None);
    }

    #[test]
    fn virtiofs_shares_read_with_the_default_key() {
        let share = VirtiofsShare::parse("media,cache=never,expose-acl=1").expect("share");
        assert_eq!(share.mapping, "media");
        assert_eq!(share.format(), "dirid=media,cache=never,expose-acl=1");
        assert_eq!(VirtiofsShare::parse("dirid=media").expect("share").format(), "dirid=media");
    }

    #[test]
    fn tpm_and_efi_keys_read_with_qemu_servers_defaults() {
        let tpm = Tpm::parse("local-lvm:vm-130-disk-3,size=4M,version=v2.0").expect("tpm");
        assert_eq!(tpm, Tpm { version: "v2.0".into(), storage: "local-lvm".into() });
        assert_eq!(Tpm::parse("ceph:vm-1-disk-2,size=4M").expect("tpm").version, "v1.2");
        assert_eq!(tpm.create_value(), "local-lvm:1,version=v2.0");
        assert!(efi_pre_enrolled_keys("local-lvm:vm-1-disk-1,efitype=4m,pre-enrolled-keys=1,size=4M"));
        assert!(!efi_pre_enrolled_keys("local-lvm:vm-1-disk-1,efitype=4m,size=4M"));
    }

    #[test]
    fn an_empty_hardware_serialises_to_nothing() {
        assert_eq!(serde_json::to_string(&Hardware::default()).expect("json"), "{}");
        assert!(Hardware::default().is_empty());
    }
}
