//! The VM vocabulary shared by both sides of a plan.
//!
//! The flake's declaration (after defaults are applied) and a live Proxmox config are both
//! reduced to a [`VmSpec`], so the planner compares like with like: sizes in bytes, tags as a
//! set, absent Proxmox keys replaced by Proxmox's own defaults.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub mod extra;
pub mod hardware;

pub use hardware::Hardware;
pub mod container;

/// The kind of guest a host is: the one seam between VMs and containers (docs/architecture.md,
/// "Two kinds of guest"). Declared by `nixprox.container.enable`, read from the resource
/// list's `type` (`qemu`, `lxc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    #[default]
    Vm,
    Container,
}

impl GuestKind {
    /// `vm` or `container`, as the plan's JSON writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestKind::Vm => "vm",
            GuestKind::Container => "container",
        }
    }

    /// Whether this is the VM kind (the default, left out of serialised plans).
    pub fn is_vm(&self) -> bool {
        *self == GuestKind::Vm
    }

    /// The path segment of the guest's API (`/nodes/{node}/qemu/…`, `/nodes/{node}/lxc/…`).
    pub fn api_segment(self) -> &'static str {
        match self {
            GuestKind::Vm => "qemu",
            GuestKind::Container => "lxc",
        }
    }

    /// What the plan calls one guest of this kind ("VM", "container").
    pub fn noun(self) -> &'static str {
        match self {
            GuestKind::Vm => "VM",
            GuestKind::Container => "container",
        }
    }
}

/// The tag every VM managed by nixprox carries; it is how orphans are recognised.
pub const MANAGED_TAG: &str = "nixprox";

/// Memory (MiB) nixos-anywhere's kexec installer needs. A VM with less gets this much for
/// its install (apply raises it before and restores it after; the plan says so).
pub const KEXEC_MIN_MEMORY_MIB: u64 = 1536;

/// Firmware of a VM. Proxmox cannot switch it in place, so a change is a replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Bios {
    #[default]
    Seabios,
    Ovmf,
}

impl Bios {
    /// The value Proxmox uses in `bios=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Bios::Seabios => "seabios",
            Bios::Ovmf => "ovmf",
        }
    }
}

/// Format of an image file, as `nixprox.bootstrap.image.format` names it and as Proxmox
/// imports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    #[default]
    Qcow2,
    Raw,
}

impl ImageFormat {
    /// The file extension, which is also the format name Proxmox uses.
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
        }
    }

    /// The format of an extension (`qcow2`, `raw`); `None` for anything else.
    pub fn from_extension(extension: &str) -> Option<ImageFormat> {
        match extension {
            "qcow2" => Some(ImageFormat::Qcow2),
            "raw" => Some(ImageFormat::Raw),
            _ => None,
        }
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.extension())
    }
}

/// One disk, keyed by its slot (`scsi0`, …) in [`VmSpec::disks`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub storage: String,
    pub size_bytes: u64,
    pub serial: Option<String>,
    pub discard: bool,
    pub ssd: bool,
    pub iothread: bool,
}

/// One network interface, keyed by its slot (`net0`, …) in [`VmSpec::networks`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    pub model: String,
    /// Upper-case `AA:BB:…`. On the desired side `None` means "whatever Proxmox picked".
    pub mac: Option<String>,
    pub bridge: String,
    pub vlan: Option<u16>,
    pub firewall: bool,
}

/// The comparable part of a VM: what the flake declares and what Proxmox reports.
///
/// On the desired side an `Option` that is `None` means "not declared: keep what Proxmox has"
/// (balloon, machine); on the live side it means the key is absent from the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    pub cores: u32,
    pub sockets: u32,
    pub cpu_type: String,
    pub memory_mib: u64,
    pub balloon_mib: Option<u64>,
    pub bios: Bios,
    pub machine: Option<String>,
    pub agent: bool,
    pub disks: BTreeMap<String, DiskSpec>,
    pub networks: BTreeMap<String, NetSpec>,
    /// User tags, lower-cased, without [`MANAGED_TAG`].
    pub tags: BTreeSet<String>,
    /// The user's notes, without nixprox's metadata block.
    pub description: String,
    pub on_boot: bool,
    pub protection: bool,
    pub pool: Option<String>,
    /// Hardware beyond the fields above (CPU flags, NUMA, serial console, display, startup
    /// order); left out of the JSON when empty, so plan ids of hosts without it stay the same.
    #[serde(default, skip_serializing_if = "Hardware::is_empty")]
    pub hardware: Hardware,
}

/// Parses a size as Proxmox writes it (`20G`, `512M`, `1.5T`, `4096K`, or plain bytes) into bytes.
///
/// `bare_unit` is the multiplier for a number without suffix: Proxmox property strings
/// mean bytes, while the NixOS module reads a bare number as GiB.
pub fn parse_size(text: &str, bare_unit: u64) -> Option<u64> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, ' '),
    };
    let multiplier: u64 = match unit {
        ' ' => bare_unit,
        'B' => 1,
        'K' => 1 << 10,
        'M' => 1 << 20,
        'G' => 1 << 30,
        'T' => 1 << 40,
        'P' => 1 << 50,
        _ => return None,
    };
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(multiplier);
    }
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    // Proxmox prints fractional sizes with up to two decimals; round to whole bytes.
    Some((value * multiplier as f64).round() as u64)
}

/// Formats bytes the way Proxmox accepts them in `size=` and `/resize`, with the largest exact unit.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, char); 4] = [(1 << 40, 'T'), (1 << 30, 'G'), (1 << 20, 'M'), (1 << 10, 'K')];
    for (unit, suffix) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// What nixprox asks a storage for: a declared size rounded up to whole 4 MiB. That is LVM's
/// default extent (LVM and LVM-thin round every volume up to it), a multiple of ZFS's 1 MiB
/// padding and of Ceph's whole MiB, so on those storages Proxmox's recorded size is what the
/// storage really allocated, and a later small grow never asks for less than the volume holds
/// (which Proxmox refuses as a shrink).
pub const ALLOCATION_UNIT: u64 = 4 << 20;

/// How much larger than declared a disk may read back and still be in sync: sizes rounded up to
/// whole 16 MiB, the largest block size a Proxmox ZFS storage allows (pve-storage
/// `verify_zfs_blocksize`). Every power-of-two allocation unit up to it (KiB, ZFS blocks, LVM's
/// default extents, Ceph's MiB) divides it, so whatever such a storage made of a declared size
/// (and `qm disk rescan`, a clone or a restore records) is within it.
pub const ROUNDING_TOLERANCE: u64 = 16 << 20;

/// The size nixprox allocates or grows a disk to for a declared size.
pub fn allocation_size(declared: u64) -> u64 {
    declared.div_ceil(ALLOCATION_UNIT).saturating_mul(ALLOCATION_UNIT)
}

/// A live disk size against a declared one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeCheck {
    /// Smaller than declared: grow it.
    Grow,
    /// The declared size, or what a storage rounded it up to.
    InSync,
    /// Larger than any storage's rounding explains: Proxmox cannot shrink it.
    Shrink,
}

/// Compares a live disk size with the declared one, allowing for the storage's rounding.
pub fn check_size(declared: u64, live: u64) -> SizeCheck {
    if live < declared {
        SizeCheck::Grow
    } else if live <= declared.div_ceil(ROUNDING_TOLERANCE).saturating_mul(ROUNDING_TOLERANCE) {
        SizeCheck::InSync
    } else {
        SizeCheck::Shrink
    }
}

/// Bytes as an exact decimal number of GiB (`10.30078125`): what qemu-server takes for a new
/// disk (`storage:<GiB>`). A byte count has a finite binary, hence decimal, fraction of a GiB.
pub fn exact_gib(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    let mut text = (bytes / GIB).to_string();
    let mut rest = bytes % GIB;
    if rest > 0 {
        text.push('.');
    }
    while rest > 0 {
        rest *= 10;
        text.push(char::from(b'0' + u8::try_from(rest / GIB).unwrap_or(0)));
        rest %= GIB;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_sizes_are_allocated_in_whole_4_mib() {
        const M: u64 = 1 << 20;
        assert_eq!(allocation_size(20 << 30), 20 << 30);
        assert_eq!(allocation_size(2049 * M), 2052 * M);
        let root = parse_size("10.3G", 1).expect("size");
        assert_eq!(allocation_size(root) % (4 * M), 0);
        assert!(allocation_size(root) - root < 4 * M);
    }

    #[test]
    fn read_back_sizes_within_a_storages_rounding_are_in_sync() {
        const M: u64 = 1 << 20;
        let root = parse_size("10.3G", 1).expect("size");
        assert_eq!(check_size(root, root), SizeCheck::InSync);
        assert_eq!(check_size(root, allocation_size(root)), SizeCheck::InSync);
        assert_eq!(check_size(root, root.next_multiple_of(16 * M)), SizeCheck::InSync);
        assert_eq!(check_size(root, root.next_multiple_of(16 * M) + 1), SizeCheck::Shrink);
        assert_eq!(check_size(root, root - 1), SizeCheck::Grow);
        assert_eq!(check_size(20 << 30, (20 << 30) + M), SizeCheck::Shrink, "a whole GiB needs no rounding");
        assert_eq!(check_size(2049 * M, 2052 * M), SizeCheck::InSync);
    }

    #[test]
    fn gib_decimals_are_exact() {
        assert_eq!(exact_gib(20 << 30), "20");
        assert_eq!(exact_gib(2052 << 20), "2.00390625");
        assert_eq!(exact_gib(1 << 29), "0.5");
        assert_eq!(exact_gib(1), "0.000000000931322574615478515625");
    }

    #[test]
    fn sizes_in_every_unit_proxmox_prints() {
        let g = 1u64 << 30;
        for (text, bytes) in [
            ("20G", 20 * g),
            ("32768M", 32 * g),
            ("1T", 1024 * g),
            ("1.5T", 1536 * g),
            ("4194304K", 4 * g),
            ("10737418240", 10 * g),
            ("0.5G", g / 2),
            ("20g", 20 * g),
        ] {
            assert_eq!(parse_size(text, 1), Some(bytes), "{text}");
        }
        assert_eq!(parse_size("20", g), Some(20 * g));
        assert_eq!(parse_size("20X", 1), None);
        assert_eq!(parse_size("", 1), None);
        assert_eq!(parse_size("-1G", 1), None);
    }

    #[test]
    fn sizes_format_with_the_largest_exact_unit() {
        assert_eq!(format_size(20 << 30), "20G");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(2 << 40), "2T");
        assert_eq!(format_size(1000), "1000");
    }
}
