//! `nixprox import`'s output: the `nixprox.vm` block (Nix) that declares an existing VM as it
//! is. It is written from the same [`VmSpec`] the planner compares with the flake, with every
//! compared value explicit, so pasting it into the host's module plans no change to the VM.

use std::fmt::Write;

use crate::spec::{DiskSpec, NetSpec, VmSpec, format_size};

/// Where the VM is and what it is.
#[derive(Debug, Clone, Copy)]
pub struct Imported<'a> {
    pub node: &'a str,
    pub vmid: u32,
    pub spec: &'a VmSpec,
    /// The SSH host key read through the guest agent, or why it could not be read.
    pub host_key: Result<&'a str, &'a str>,
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
    // The whole `cpu` line: `cpuType` may carry the flags (`host,flags=+aes`).
    line("cpuType", string(&crate::spec::hardware::format_cpu(&spec.cpu_type, &spec.hardware.cpu_flags)));
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
    fn strings_and_odd_sizes_stay_what_they_are() {
        assert_eq!(string(r#"a"b\c${d}"#), r#""a\"b\\c\${d}""#);
        assert_eq!(size(20 << 30), "20G");
        assert_eq!(size((1 << 20) + 1536), "1025K");
        assert_eq!(size(10_000_000_001), "9765625K");
    }
}
