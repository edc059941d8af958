//! Proxmox config keys outside nixprox's vocabulary: which ones `nixprox.vm.extraConfig` may
//! set (and with which privilege, and when they take effect), and which a VM carries that a
//! `replace_vm` would lose. From qemu-server's own tables: `PVE/API2/Qemu.pm`
//! (`$cpuoptions`, `$memoryoptions`, `$hwtypeoptions`, `$generaloptions`, `$vmpoweroptions`,
//! `$diskoptions`; `$check_vm_modify_config_perm` refuses every other key to API tokens:
//! "only root can set '…' config") and `PVE/QemuServer.pm` (`$fast_plug_option`,
//! `vmconfig_hotplug_pending`).

/// Keys qemu-server lets a token set, by the privilege it checks.
const TABLES: &[(&str, &[&str])] = &[
    ("VM.Config.CPU", &["cores", "cpu", "cpulimit", "cpuunits", "numa", "sockets", "vcpus"]),
    ("VM.Config.Memory", &["memory", "balloon", "shares", "allow-ksm"]),
    (
        "VM.Config.HWType",
        &[
            "acpi", "hotplug", "kvm", "machine", "scsihw", "smbios1", "tablet", "vga", "watchdog", "audio0",
            "rng0",
        ],
    ),
    (
        "VM.Config.Options",
        &[
            "agent",
            "autostart",
            "bios",
            "description",
            "keyboard",
            "localtime",
            "migrate_downtime",
            "migrate_speed",
            "name",
            "onboot",
            "ostype",
            "protection",
            "reboot",
            "startdate",
            "startup",
            "tdf",
        ],
    ),
    ("VM.PowerMgmt", &["freeze"]),
    ("VM.Config.Disk", &["boot", "bootdisk", "vmstatestorage"]),
];

/// Keys nixprox itself writes (an option of its own, cloud-init, boot order, the controller
/// it creates VMs with) or Proxmox writes on its own: never `extraConfig`.
const OWNED: &[&str] = &[
    "name",
    "cores",
    "sockets",
    "cpu",
    "memory",
    "balloon",
    "bios",
    "machine",
    "agent",
    "tags",
    "description",
    "onboot",
    "protection",
    "numa",
    "vga",
    "startup",
    "tpmstate0",
    "efidisk0",
    "boot",
    "bootdisk",
    "ostype",
    "scsihw",
    "ciuser",
    "cipassword",
    "citype",
    "cicustom",
    "ciupgrade",
    "sshkeys",
    "nameserver",
    "searchdomain",
    "digest",
    "meta",
    "vmgenid",
    "smbios1",
    "lock",
    "template",
];

/// Owned key families (`net0`, `scsi1`, `hostpci0`, …).
const OWNED_PREFIXES: &[&str] =
    &["net", "scsi", "virtio", "sata", "ide", "ipconfig", "hostpci", "usb", "unused", "virtiofs"];

/// Keys Proxmox writes itself, volatile state, or nothing a recreated VM would miss.
const PROXMOX_WRITTEN: &[&str] = &[
    "digest",
    "meta",
    "vmgenid",
    "smbios1",
    "lock",
    "template",
    "parent",
    "snaptime",
    "vmstate",
    "runningmachine",
    "runningcpu",
];

fn numbered(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether nixprox owns `key` (an option of its own covers it).
pub fn is_owned(key: &str) -> bool {
    OWNED.contains(&key) || OWNED_PREFIXES.iter().any(|p| numbered(key, p)) || key == "serial0"
}

/// Keys every VM nixprox creates gets (the core options, cloud-init, the create form's
/// controller, OS type and boot order, disks and NICs): never lost by a replace.
pub fn is_always_written(key: &str) -> bool {
    matches!(
        key,
        "name"
            | "cores"
            | "sockets"
            | "cpu"
            | "memory"
            | "bios"
            | "agent"
            | "tags"
            | "description"
            | "onboot"
            | "protection"
            | "ostype"
            | "scsihw"
            | "boot"
            | "bootdisk"
            | "efidisk0"
            | "ciuser"
            | "cipassword"
            | "citype"
            | "cicustom"
            | "ciupgrade"
            | "sshkeys"
            | "nameserver"
            | "searchdomain"
    ) || ["net", "scsi", "virtio", "sata", "ide", "ipconfig"].iter().any(|p| numbered(key, p))
}

/// Whether Proxmox writes `key` itself (never listed as something a replace loses).
pub fn is_proxmox_written(key: &str) -> bool {
    PROXMOX_WRITTEN.contains(&key)
}

/// Why `extraConfig` may not set `key` (with the fix), or the privilege it needs.
pub fn extra_key(key: &str) -> Result<&'static str, String> {
    if is_owned(key) {
        return Err("nixprox manages this key: use its own option (docs/configuration.md)".into());
    }
    if numbered(key, "numa") || numbered(key, "serial") {
        // `numaN` is a CPU option; `serialN` a socket needs VM.Config.HWType (anything else is
        // root@pam's, which the value check below refuses).
        return Ok(if key.starts_with("numa") { "VM.Config.CPU" } else { "VM.Config.HWType" });
    }
    TABLES.iter().find(|(_, keys)| keys.contains(&key)).map(|(privilege, _)| *privilege).ok_or_else(|| {
        "only root@pam may set it, never an API token (qemu-server `check_vm_modify_config_perm`); set it by hand as root, or leave it out".into()
    })
}

/// Why `extraConfig` may not set `key` to `value`, beyond the key itself.
pub fn extra_value(key: &str, value: &str) -> Option<String> {
    (numbered(key, "serial") && value != "socket")
        .then(|| "only `socket` (a host device is root@pam's: `$check_vm_create_serial_perm`)".into())
}

/// When a change of `key` reaches a running VM: `$fast_plug_option` keys at once, `cpuunits` and
/// `cpulimit` through the cgroup at once, `tablet` when USB hot-plug is on, the rest at the next
/// start (`vmconfig_hotplug_pending`).
pub fn applies_at_once(key: &str, usb_hotplug_feature: bool) -> bool {
    matches!(
        key,
        "migrate_downtime" | "migrate_speed" | "shares" | "vmstatestorage" | "cpuunits" | "cpulimit"
    ) || (key == "tablet" && usb_hotplug_feature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_keys_follow_qemu_servers_tables() {
        assert_eq!(extra_key("tablet"), Ok("VM.Config.HWType"));
        assert_eq!(extra_key("cpuunits"), Ok("VM.Config.CPU"));
        assert_eq!(extra_key("numa0"), Ok("VM.Config.CPU"));
        assert_eq!(extra_key("serial1"), Ok("VM.Config.HWType"));
        for root in ["args", "affinity", "hugepages", "keephugepages", "hookscript"] {
            assert!(extra_key(root).is_err_and(|e| e.starts_with("only root@pam")), "{root}");
        }
        for owned in ["cores", "net0", "scsi1", "hostpci0", "usb2", "startup", "serial0", "boot"] {
            assert!(extra_key(owned).is_err_and(|e| e.starts_with("nixprox manages")), "{owned}");
        }
        assert!(extra_value("serial1", "/dev/ttyS1").is_some());
        assert_eq!(extra_value("serial1", "socket"), None);
    }

    #[test]
    fn fast_plug_and_cgroup_keys_apply_at_once() {
        assert!(applies_at_once("cpuunits", false));
        assert!(applies_at_once("tablet", true));
        assert!(!applies_at_once("tablet", false));
        assert!(!applies_at_once("watchdog", true));
    }
}
