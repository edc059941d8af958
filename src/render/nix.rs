//! `nixprox import`'s output: a host module (Nix) that declares an existing VM as it is, ready
//! to import (`hosts/<name>/nixprox.nix`): the `nixprox.vm` block, written from the same
//! [`VmSpec`] the planner compares with the flake with every compared value explicit (so it
//! plans no change to the VM), the address and the SSH host key the guest agent reads, and,
//! for a VM whose agent reports another OS than NixOS, that it needs a reinstall. A container
//! gets the `nixprox.container` block instead ([`container_module`]): no guest agent, so its
//! address comes from `net0` and its key from the notes nixprox wrote, when it manages it.

use std::fmt::Write;

use crate::spec::container::ContainerSpec;
use crate::spec::{DiskSpec, Hardware, NetSpec, VmSpec, format_size};

/// Where the VM is and what it is.
#[derive(Debug, Clone, Copy)]
pub struct Imported<'a> {
    pub node: &'a str,
    pub vmid: u32,
    pub spec: &'a VmSpec,
    /// The SSH host key read through the guest agent, or why it could not be read.
    pub host_key: Result<&'a str, &'a str>,
}

/// What the guest agent says the VM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportedOs<'a> {
    /// NixOS (or a VM nixprox manages).
    NixOs,
    /// Another OS: its os-release `ID` and its pretty name.
    Other { id: &'a str, pretty: &'a str },
    /// Not read, and why.
    Unknown(&'a str),
}

/// Everything `nixprox import` writes for one VM.
#[derive(Debug, Clone, Copy)]
pub struct ImportedHost<'a> {
    pub vm: Imported<'a>,
    /// The address the guest agent reports, or why it was not read.
    pub address: Result<&'a str, &'a str>,
    pub os: ImportedOs<'a>,
}

/// The host module: `{ ... }: { nixprox.enable = true; nixprox.vm = …; nixprox.address = …;
/// <host key>; }`, with comments saying where each value came from.
pub fn host_module(host: ImportedHost<'_>) -> String {
    let vm = host.vm;
    let mut body = String::from("nixprox.enable = true;\n");
    let declaration = vm_declaration(Imported { host_key: Err(""), ..vm });
    // The block without its header and without the key lines (written below, per OS).
    for line in declaration.lines().skip(1).take_while(|l| !l.starts_with("# nixprox.ssh.hostKey")) {
        body.push_str(line);
        body.push('\n');
    }
    match host.address {
        Ok(address) => {
            body.push_str("# The address its QEMU guest agent reports: nixprox connects here (a DHCP lease may change: a static address is safer).\n");
            let _ = writeln!(body, "nixprox.address = {};", string(address));
        }
        Err(why) => {
            let _ = writeln!(
                body,
                "# nixprox.address: not read ({}); set it, or let nixprox ask the guest agent when it needs it.",
                one_line(why)
            );
        }
    }
    match host.os {
        ImportedOs::Other { id, pretty } => {
            let _ = writeln!(
                body,
                "# Reinstall needed: its guest agent reports `{id}` ({}), not NixOS.",
                one_line(pretty)
            );
            body.push_str("# nixprox converts it with a gated `reinstall` that wipes its disks: declare the layout the\n# new system gets (`disko.devices`) and set `nixprox.allow.reinstall = true` in the pull\n# request that converts it (docs/migrate.md).\n");
            match vm.host_key {
                Ok(key) => {
                    body.push_str("# The SSH host key it presents now, read through its QEMU guest agent (check it on the\n# VM's console): pinned before anything runs on it; the install gives the host a new one.\n");
                    let _ = writeln!(body, "nixprox.convert.hostKey = {};", string(key.trim()));
                }
                Err(why) => {
                    let _ = writeln!(
                        body,
                        "# nixprox.convert.hostKey: not read ({}); declare the key it presents now, or let apply read it through the guest agent.",
                        one_line(why)
                    );
                }
            }
        }
        os => {
            if let ImportedOs::Unknown(why) = os {
                let _ = writeln!(
                    body,
                    "# Its OS was not read ({}): a VM that does not run NixOS needs a reinstall (docs/migrate.md).",
                    one_line(why)
                );
            }
            let tail = vm_declaration(vm);
            for line in tail.lines().skip_while(|l| {
                !l.starts_with("# The VM's SSH host key") && !l.starts_with("# nixprox.ssh.hostKey")
            }) {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# VM {} `{}` on node `{}`, as `nixprox import` read it from Proxmox: a host module, ready to\n# import (e.g. as hosts/<name>/nixprox.nix). It declares the VM as it is: change values later,\n# in their own pull request.",
        vm.vmid, vm.spec.name, vm.node
    );
    out.push_str("{ ... }:\n\n{\n");
    for line in body.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "  {line}");
        }
    }
    out.push_str("}\n");
    out
}

/// A reason on one line (a Nix comment ends at the line's end).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The declaration as module definitions (`nixprox.vm = { … };`), with a comment header.
pub fn vm_declaration(vm: Imported<'_>) -> String {
    let spec = vm.spec;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# VM {} `{}` on node `{}`, as `nixprox import` read it from Proxmox.",
        vm.vmid, spec.name, vm.node
    );
    out.push_str("nixprox.vm = {\n");
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "  {key} = {value};");
    };
    line("name", string(&spec.name));
    line("node", string(vm.node));
    line("id", vm.vmid.to_string());
    line("cores", spec.cores.to_string());
    line("sockets", spec.sockets.to_string());
    line("cpuType", string(&spec.cpu_type));
    line("memory", spec.memory_mib.to_string());
    if let Some(balloon) = spec.balloon_mib {
        line("balloon", balloon.to_string());
    }
    line("bios", string(spec.bios.as_str()));
    if let Some(machine) = &spec.machine {
        line("machine", string(machine));
    }
    line("agent", spec.agent.to_string());
    line("onBoot", spec.on_boot.to_string());
    line("protection", spec.protection.to_string());
    if let Some(pool) = &spec.pool {
        line("pool", string(pool));
    }
    let tags: Vec<String> = spec.tags.iter().map(|t| string(t)).collect();
    line("tags", format!("[ {} ]", tags.join(" ")).replace("[  ]", "[ ]"));
    hardware_lines(&spec.hardware, &mut out);
    out.push_str("  # The notes are left as they are (`description` is not declared).\n");
    out.push_str("  disks = {\n");
    for (slot, disk) in &spec.disks {
        let _ = writeln!(out, "    {slot} = {{ {} }};", disk_fields(disk));
    }
    out.push_str("  };\n  networks = {\n");
    for (slot, net) in &spec.networks {
        let _ = writeln!(out, "    {slot} = {{ {} }};", net_fields(net));
    }
    out.push_str("  };\n};\n");
    match vm.host_key {
        Ok(key) => {
            out.push_str(
                "# The VM's SSH host key, read through its QEMU guest agent: check it on the VM's console.\n",
            );
            let _ = writeln!(out, "nixprox.ssh.hostKey = {};", string(key.trim()));
        }
        Err(why) => {
            // A comment ends at the line's end: the reason stays on one line.
            let why = why.split_whitespace().collect::<Vec<_>>().join(" ");
            let _ = writeln!(
                out,
                "# nixprox.ssh.hostKey: not read ({why}); declare it (the line of /etc/ssh/ssh_host_ed25519_key.pub), or let apply read it through the guest agent."
            );
        }
    }
    out
}

/// The hardware options the VM has, each as Proxmox has it (so the plan compares them equal),
/// and a comment naming what nixprox does not manage there: raw devices and keys only
/// `root@pam` may set (they stay as they are; a `replace_vm` would lose them).
fn hardware_lines(hardware: &Hardware, out: &mut String) {
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "  {key} = {value};");
    };
    if !hardware.cpu_flags.is_empty() {
        let flags: Vec<String> = hardware.cpu_flags.iter().map(|f| string(f)).collect();
        line("cpuFlags", format!("[ {} ]", flags.join(" ")));
    }
    if let Some(numa) = hardware.numa {
        line("numa", numa.to_string());
    }
    if hardware.serial == Some(true) {
        line("serial", "true".into());
    }
    if let Some(vga) = &hardware.vga {
        line("vga", string(vga));
    }
    if let Some(startup) = &hardware.startup {
        let parts: Vec<String> = [("order", startup.order), ("up", startup.up), ("down", startup.down)]
            .into_iter()
            .filter_map(|(key, value)| value.map(|v| format!("{key} = {v};")))
            .collect();
        if !parts.is_empty() {
            line("startup", format!("{{ {} }}", parts.join(" ")));
        }
    }
    if let Some(tpm) = &hardware.tpm {
        line("tpm", format!("{{ version = {}; storage = {}; }}", string(&tpm.version), string(&tpm.storage)));
    }
    if let Some(keys) = hardware.efi_pre_enrolled_keys {
        line("efi.preEnrolledKeys", keys.to_string());
    }
    let block = |entries: Vec<(&String, String)>| -> Option<String> {
        (!entries.is_empty()).then(|| {
            let mut text = String::from("{\n");
            for (slot, fields) in entries {
                text.push_str(&format!("    {slot} = {{ {fields} }};\n"));
            }
            text.push_str("  }");
            text
        })
    };
    let pci = hardware
        .pci
        .iter()
        .map(|(slot, d)| {
            let mut fields = vec![format!("mapping = {};", string(&d.mapping))];
            for (name, on, default) in
                [("pcie", d.pcie, false), ("rombar", d.rombar, true), ("xVga", d.x_vga, false)]
            {
                if on != default {
                    fields.push(format!("{name} = {on};"));
                }
            }
            (slot, fields.join(" "))
        })
        .collect();
    if let Some(text) = block(pci) {
        line("pci", text);
    }
    let usb = hardware
        .usb
        .iter()
        .map(|(slot, d)| {
            let usb3 = if d.usb3 { " usb3 = true;" } else { "" };
            (slot, format!("mapping = {};{usb3}", string(&d.mapping)))
        })
        .collect();
    if let Some(text) = block(usb) {
        line("usb", text);
    }
    let virtiofs = hardware
        .virtiofs
        .iter()
        .map(|(slot, share)| {
            let mut fields = vec![format!("mapping = {};", string(&share.mapping))];
            if share.cache != "auto" {
                fields.push(format!("cache = {};", string(&share.cache)));
            }
            for (name, on) in [
                ("directIo", share.direct_io),
                ("exposeAcl", share.expose_acl),
                ("exposeXattr", share.expose_xattr),
            ] {
                if on {
                    fields.push(format!("{name} = true;"));
                }
            }
            (slot, fields.join(" "))
        })
        .collect();
    if let Some(text) = block(virtiofs) {
        line("virtiofs", text);
    }
    let unmanaged = unmanaged(hardware);
    if !unmanaged.is_empty() {
        let _ = writeln!(
            out,
            "  # Not managed by nixprox (only root@pam may set them; left as they are, lost by a replace): {}.",
            unmanaged.join(", ")
        );
    }
}

/// What the VM has that nixprox never manages: raw PCI and USB devices (`host=`, named with
/// their device), a serial port on a host device, and the other keys only `root@pam` may set
/// (named, not shown: a value like `args` may carry anything).
fn unmanaged(hardware: &Hardware) -> Vec<String> {
    let numbered = |key: &str, prefix: &str| {
        key.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    hardware
        .extra
        .iter()
        .filter_map(|(key, value)| {
            // `host` is the default key of both (`hostpci0: 01:00.0`); a SPICE port is no device.
            let spice = value.split(',').next().is_some_and(|v| v.trim() == "spice");
            let raw = (numbered(key, "hostpci") && !hardware.pci.contains_key(key))
                || (numbered(key, "usb") && !hardware.usb.contains_key(key) && !spice)
                || (key == "serial0" && value != "socket");
            if raw {
                Some(format!("`{key}: {}`", one_line(value)))
            } else if crate::spec::extra::is_owned(key) {
                None
            } else {
                crate::spec::extra::extra_key(key).is_err().then(|| format!("`{key}`"))
            }
        })
        .collect()
}

/// An existing container, as `nixprox import` read it: its shared settings and its
/// container part (the planner's vocabulary, so the module plans no change to it).
#[derive(Debug, Clone, Copy)]
pub struct ImportedContainer<'a> {
    pub node: &'a str,
    pub vmid: u32,
    pub spec: &'a VmSpec,
    pub container: &'a ContainerSpec,
    /// The key nixprox recorded in the container's notes, when it manages it: containers have
    /// no guest agent, so nothing else can read it.
    pub host_key: Option<&'a str>,
}

/// The host module of a container: `nixprox.container` with every compared value explicit,
/// `nixprox.address` and `nixprox.network` from `net0`'s static address, and the host key.
pub fn container_module(ct: ImportedContainer<'_>) -> String {
    let (spec, c) = (ct.spec, ct.container);
    let mut body = String::from("nixprox.enable = true;\nnixprox.container = {\n");
    let mut line = |key: &str, value: String| {
        let _ = writeln!(body, "  {key} = {value};");
    };
    line("enable", "true".into());
    line("hostname", string(&spec.name));
    line("node", string(ct.node));
    line("id", ct.vmid.to_string());
    line("cores", c.cores.map_or("null".into(), |n| n.to_string()));
    line("memory", c.memory_mib.to_string());
    line("swap", c.swap_mib.to_string());
    line(
        "rootfs",
        format!(
            "{{ storage = {}; size = {}; }}",
            string(&c.rootfs.storage),
            string(&size(c.rootfs.size_bytes))
        ),
    );
    let features = &c.features;
    line(
        "features",
        format!(
            "{{ nesting = {}; keyctl = {}; fuse = {}; }}",
            features.nesting, features.keyctl, features.fuse
        ),
    );
    line("unprivileged", c.unprivileged.to_string());
    line("onBoot", spec.on_boot.to_string());
    line("startup", c.startup.as_deref().map_or("null".into(), string));
    line("protection", spec.protection.to_string());
    line("pool", spec.pool.as_deref().map_or("null".into(), string));
    let tags: Vec<String> = spec.tags.iter().map(|t| string(t)).collect();
    line("tags", format!("[ {} ]", tags.join(" ")).replace("[  ]", "[ ]"));
    body.push_str("  # The notes are left as they are (`description` is not declared); a template is needed\n  # only to create a container (`template` or `tarball`), not for this one.\n");
    body.push_str("  mountPoints = {\n");
    for (slot, mount) in &c.mounts {
        let _ = writeln!(
            body,
            "    {slot} = {{ storage = {}; size = {}; path = {}; backup = {}; }};",
            string(&mount.volume.storage),
            string(&size(mount.volume.size_bytes)),
            string(&mount.path),
            mount.backup
        );
    }
    body.push_str("  };\n  networks = {\n");
    for (slot, net) in &c.networks {
        let mut fields =
            vec![format!("name = {};", string(&net.name)), format!("bridge = {};", string(&net.bridge))];
        if let Some(mac) = &net.mac {
            fields.push(format!("macAddress = {};", string(mac)));
        }
        if let Some(vlan) = net.vlan {
            fields.push(format!("vlan = {vlan};"));
        }
        if net.firewall {
            fields.push("firewall = true;".into());
        }
        let _ = writeln!(body, "    {slot} = {{ {} }};", fields.join(" "));
    }
    body.push_str("  };\n};\n");
    let net0 = c.networks.get("net0").and_then(|n| n.address.as_deref());
    match net0.and_then(static_address) {
        Some((address, prefix, gateway)) => {
            body.push_str("# net0's static address: nixprox connects here, and it stays net0's address.\n");
            let _ = writeln!(body, "nixprox.address = {};", string(&address));
            let _ = writeln!(body, "nixprox.network.prefixLength = {prefix};");
            if let Some(gateway) = gateway {
                let _ = writeln!(body, "nixprox.network.gateway = {};", string(&gateway));
            }
        }
        None => {
            let _ = writeln!(
                body,
                "# nixprox.address: net0 has no single static address ({}); set it (containers have no guest agent to ask).",
                net0.unwrap_or("none")
            );
        }
    }
    match ct.host_key {
        Some(key) => {
            body.push_str("# The SSH host key nixprox recorded in the container's notes.\n");
            let _ = writeln!(body, "nixprox.ssh.hostKey = {};", string(key.trim()));
        }
        None => {
            let _ = writeln!(
                body,
                "# nixprox.ssh.hostKey: containers have no guest agent to read it; declare it (on node `{}`: `pct exec {} -- cat /etc/ssh/ssh_host_ed25519_key.pub`): nixprox adopts a container only with its key declared.",
                ct.node, ct.vmid
            );
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Container {} `{}` on node `{}`, as `nixprox import` read it from Proxmox: a host module,\n# ready to import (e.g. as hosts/<name>/nixprox.nix). It declares the container as it is:\n# change values later, in their own pull request.",
        ct.vmid, spec.name, ct.node
    );
    out.push_str("{ ... }:\n\n{\n");
    for line in body.lines() {
        let _ = writeln!(out, "  {line}");
    }
    out.push_str("}\n");
    out
}

/// `ip=10.0.0.5/24[,gw=10.0.0.1]` (or the `ip6`/`gw6` pair alone) as address, prefix length
/// and gateway: what `nixprox.address` and `nixprox.network` derive `net0`'s address from.
fn static_address(text: &str) -> Option<(String, u8, Option<String>)> {
    let pairs: Vec<(&str, &str)> = text.split(',').filter_map(|p| p.split_once('=')).collect();
    let get = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| (*v).to_string());
    let (ip, gw) = match (get("ip"), get("ip6")) {
        (Some(ip), None) => (ip, get("gw")),
        (None, Some(ip6)) => (ip6, get("gw6")),
        _ => return None,
    };
    let (address, prefix) = ip.split_once('/')?;
    Some((address.to_string(), prefix.parse().ok()?, gw))
}

fn disk_fields(disk: &DiskSpec) -> String {
    let mut fields = vec![
        format!("storage = {};", string(&disk.storage)),
        format!("size = {};", string(&size(disk.size_bytes))),
    ];
    if let Some(serial) = &disk.serial {
        fields.push(format!("serial = {};", string(serial)));
    }
    for (name, on) in [("discard", disk.discard), ("ssd", disk.ssd), ("iothread", disk.iothread)] {
        if on {
            fields.push(format!("{name} = true;"));
        }
    }
    fields.join(" ")
}

fn net_fields(net: &NetSpec) -> String {
    let mut fields =
        vec![format!("bridge = {};", string(&net.bridge)), format!("model = {};", string(&net.model))];
    if let Some(mac) = &net.mac {
        fields.push(format!("macAddress = {};", string(mac)));
    }
    if let Some(vlan) = net.vlan {
        fields.push(format!("vlan = {vlan};"));
    }
    if net.firewall {
        fields.push("firewall = true;".into());
    }
    fields.join(" ")
}

/// A disk size as the module reads it. A bare number means GiB there, so a size that is not
/// a whole KiB is written as the whole KiB below it: within the size nixprox counts as in sync
/// (a disk may be a little larger than declared), never a grow.
fn size(bytes: u64) -> String {
    let text = format_size(bytes);
    if text.ends_with(['K', 'M', 'G', 'T']) { text } else { format!("{}K", bytes / 1024) }
}

/// A Nix string literal: `"`, `\` and `${` escaped.
fn string(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"").replace("${", "\\${");
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::spec::Bios;

    #[test]
    fn every_compared_value_is_declared() {
        let spec = VmSpec {
            name: "web".into(),
            cores: 4,
            sockets: 1,
            cpu_type: "host".into(),
            memory_mib: 8192,
            balloon_mib: Some(2048),
            bios: Bios::Ovmf,
            machine: Some("q35".into()),
            agent: true,
            disks: BTreeMap::from([(
                "virtio0".to_string(),
                DiskSpec {
                    storage: "local-lvm".into(),
                    size_bytes: 32 << 30,
                    serial: Some("root".into()),
                    discard: true,
                    ssd: false,
                    iothread: true,
                },
            )]),
            networks: BTreeMap::from([(
                "net0".to_string(),
                NetSpec {
                    model: "virtio".into(),
                    mac: Some("BC:24:11:00:00:01".into()),
                    bridge: "vmbr0".into(),
                    vlan: Some(20),
                    firewall: true,
                },
            )]),
            tags: BTreeSet::from(["prod".to_string(), "web".to_string()]),
            description: "mine".into(),
            on_boot: true,
            protection: false,
            pool: Some("lab".into()),
            hardware: Default::default(),
        };
        let text = vm_declaration(Imported {
            node: "pve1",
            vmid: 120,
            spec: &spec,
            host_key: Ok("ssh-ed25519 AAAA root@web\n"),
        });
        let expected = r#"# VM 120 `web` on node `pve1`, as `nixprox import` read it from Proxmox.
nixprox.vm = {
  name = "web";
  node = "pve1";
  id = 120;
  cores = 4;
  sockets = 1;
  cpuType = "host";
  memory = 8192;
  balloon = 2048;
  bios = "ovmf";
  machine = "q35";
  agent = true;
  onBoot = true;
  protection = false;
  pool = "lab";
  tags = [ "prod" "web" ];
  # The notes are left as they are (`description` is not declared).
  disks = {
    virtio0 = { storage = "local-lvm"; size = "32G"; serial = "root"; discard = true; iothread = true; };
  };
  networks = {
    net0 = { bridge = "vmbr0"; model = "virtio"; macAddress = "BC:24:11:00:00:01"; vlan = 20; firewall = true; };
  };
};
# The VM's SSH host key, read through its QEMU guest agent: check it on the VM's console.
nixprox.ssh.hostKey = "ssh-ed25519 AAAA root@web";
"#;
        assert_eq!(text, expected);
    }

    #[test]
    fn the_hardware_the_vm_has_is_declared_and_raw_devices_named() {
        use crate::spec::hardware::{PciDevice, Startup, Tpm, UsbDevice, VirtiofsShare};
        let hardware = Hardware {
            cpu_flags: BTreeSet::from(["+aes".to_string(), "-pcid".to_string()]),
            numa: Some(false),
            serial: Some(false),
            vga: Some("std".into()),
            startup: Some(Startup { order: Some(1), up: None, down: Some(60) }),
            pci: BTreeMap::from([(
                "hostpci0".to_string(),
                PciDevice { mapping: "gpu".into(), pcie: false, rombar: false, x_vga: false },
            )]),
            usb: BTreeMap::from([("usb0".to_string(), UsbDevice { mapping: "zigbee".into(), usb3: false })]),
            virtiofs: BTreeMap::from([(
                "virtiofs1".to_string(),
                VirtiofsShare {
                    mapping: "media".into(),
                    cache: "auto".into(),
                    direct_io: true,
                    expose_acl: false,
                    expose_xattr: true,
                },
            )]),
            tpm: Some(Tpm { version: "v1.2".into(), storage: "ceph".into() }),
            efi_pre_enrolled_keys: Some(false),
            extra: BTreeMap::from([
                ("hostpci0".to_string(), "mapping=gpu,rombar=0".to_string()),
                ("usb1".to_string(), "host=1a86:7523".to_string()),
                ("usb2".to_string(), "spice".to_string()),
                ("serial0".to_string(), "/dev/ttyS0".to_string()),
                ("hookscript".to_string(), "local:snippets/secret.sh".to_string()),
                ("cpuunits".to_string(), "200".to_string()),
            ]),
            usb_hotplug_feature: true,
            usb_hotplug: true,
        };
        let mut out = String::new();
        hardware_lines(&hardware, &mut out);
        let expected = r#"  cpuFlags = [ "+aes" "-pcid" ];
  numa = false;
  vga = "std";
  startup = { order = 1; down = 60; };
  tpm = { version = "v1.2"; storage = "ceph"; };
  efi.preEnrolledKeys = false;
  pci = {
    hostpci0 = { mapping = "gpu"; rombar = false; };
  };
  usb = {
    usb0 = { mapping = "zigbee"; };
  };
  virtiofs = {
    virtiofs1 = { mapping = "media"; directIo = true; exposeXattr = true; };
  };
  # Not managed by nixprox (only root@pam may set them; left as they are, lost by a replace): `hookscript`, `serial0: /dev/ttyS0`, `usb1: host=1a86:7523`.
"#;
        assert_eq!(out, expected);
    }

    #[test]
    fn a_host_module_ready_to_import_for_nixos_and_for_a_vm_to_convert() {
        let spec = VmSpec {
            name: "media".into(),
            cores: 2,
            sockets: 1,
            cpu_type: "x86-64-v2-AES".into(),
            memory_mib: 2048,
            balloon_mib: None,
            bios: Bios::Seabios,
            machine: None,
            agent: true,
            disks: BTreeMap::new(),
            networks: BTreeMap::new(),
            tags: BTreeSet::new(),
            description: String::new(),
            on_boot: true,
            protection: false,
            pool: None,
            hardware: Default::default(),
        };
        let vm =
            Imported { node: "pve1", vmid: 130, spec: &spec, host_key: Ok("ssh-ed25519 AAAA root@media") };
        let nixos = host_module(ImportedHost { vm, address: Ok("10.0.20.12"), os: ImportedOs::NixOs });
        insta::assert_snapshot!("import_host_module_nixos", nixos);
        let debian = host_module(ImportedHost {
            vm,
            address: Err("the guest agent reported no address"),
            os: ImportedOs::Other { id: "debian", pretty: "Debian GNU/Linux 12 (bookworm)" },
        });
        insta::assert_snapshot!("import_host_module_debian", debian);
        let unknown = host_module(ImportedHost {
            vm: Imported { host_key: Err("no agent"), ..vm },
            address: Ok("10.0.20.12"),
            os: ImportedOs::Unknown("the QEMU guest agent does not answer"),
        });
        assert!(
            unknown.contains("  # Its OS was not read (the QEMU guest agent does not answer)"),
            "{unknown}"
        );
        assert!(unknown.contains("  # nixprox.ssh.hostKey: not read (no agent)"), "{unknown}");
    }

    #[test]
    fn a_static_net0_address_becomes_address_prefix_and_gateway() {
        let got = static_address("ip=10.0.0.5/24,gw=10.0.0.1");
        assert_eq!(got, Some(("10.0.0.5".into(), 24, Some("10.0.0.1".into()))));
        assert_eq!(static_address("ip6=fd00::5/64"), Some(("fd00::5".into(), 64, None)));
        // DHCP, none, or both families: not one static address, left to the user.
        for text in ["ip=dhcp", "", "ip=10.0.0.5/24,ip6=fd00::5/64"] {
            assert_eq!(static_address(text), None, "{text}");
        }
    }

    #[test]
    fn strings_and_odd_sizes_stay_what_they_are() {
        assert_eq!(string(r#"a"b\c${d}"#), r#""a\"b\\c\${d}""#);
        assert_eq!(size(20 << 30), "20G");
        assert_eq!(size((1 << 20) + 1536), "1025K");
        assert_eq!(size(10_000_000_001), "9765625K");
    }
}
