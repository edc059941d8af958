//! From a host's raw declaration to the [`DesiredHost`] the planner compares: the settings'
//! defaults applied, sizes in bytes, tags lower-cased, MACs upper-cased, and the checks the
//! module's types cannot express (they need nixprox.yaml, or span several hosts).
//!
//! Pure: no I/O, so every rule is unit-tested here.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Defaults;
use crate::spec::{DiskSpec, MANAGED_TAG, NetSpec, VmSpec, parse_size};

use super::host::{Bootstrap, DesiredHost, HostDecl, SystemEval, TemplateRef};
use super::inventory::EvaluatedHost;

/// A bare number in `disks.<slot>.size` means GiB (see the module).
const GIB: u64 = 1 << 30;

/// A declaration that cannot become a VM. Messages name the host, the option and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "host `{host}`: `nixprox.{option}` is not set and nixprox.yaml has no `defaults.{setting}` (set one of them)"
    )]
    MissingDefault { host: String, option: String, setting: &'static str },
    #[error(
        "host `{host}`: `nixprox.bootstrap.template` and `nixprox.bootstrap.iso` are both set (keep one: a VM is either cloned from a template or booted from an ISO)"
    )]
    TemplateAndIso { host: String },
    #[error(
        "host `{host}`: neither `nixprox.bootstrap.template` nor `nixprox.bootstrap.iso` is set and nixprox.yaml has no `defaults.template` (set one of them)"
    )]
    NoBootstrap { host: String },
    #[error(
        "host `{host}`: `nixprox.vm.disks.{slot}.size` is `{size}`, which is not a valid size (use a number with K, M, G or T, e.g. `32G`)"
    )]
    InvalidSize { host: String, slot: String, size: String },
    #[error("host `{host}`: `nixprox.vm.disks.{slot}.size` is zero (give the disk a size, e.g. `32G`)")]
    EmptyDisk { host: String, slot: String },
    #[error("host `{host}`: `nixprox.vm.disks` is empty (declare at least one disk to install NixOS on)")]
    NoDisks { host: String },
    #[error(
        "hosts `{first}` and `{second}` both use the VM name `{name}` (set `nixprox.vm.name` on one of them)"
    )]
    DuplicateName { name: String, first: String, second: String },
    #[error("hosts `{first}` and `{second}` both use VMID {id} (change `nixprox.vm.id` on one of them)")]
    DuplicateId { id: u32, first: String, second: String },
}

/// Resolves one host.
pub fn resolve(
    attr: &str,
    decl: &HostDecl,
    system: &SystemEval,
    defaults: &Defaults,
) -> Result<DesiredHost, ResolveError> {
    let host = attr.to_string();
    let missing = |option: String, setting: &'static str| ResolveError::MissingDefault {
        host: host.clone(),
        option,
        setting,
    };
    let vm = &decl.vm;

    let node =
        vm.node.clone().or_else(|| defaults.node.clone()).ok_or_else(|| missing("vm.node".into(), "node"))?;

    if vm.disks.is_empty() {
        return Err(ResolveError::NoDisks { host });
    }
    let mut disks = BTreeMap::new();
    for (slot, disk) in &vm.disks {
        let storage = disk
            .storage
            .clone()
            .or_else(|| defaults.storage.clone())
            .ok_or_else(|| missing(format!("vm.disks.{slot}.storage"), "storage"))?;
        let size_bytes = parse_size(&disk.size, GIB).ok_or_else(|| ResolveError::InvalidSize {
            host: host.clone(),
            slot: slot.clone(),
            size: disk.size.clone(),
        })?;
        if size_bytes == 0 {
            return Err(ResolveError::EmptyDisk { host, slot: slot.clone() });
        }
        disks.insert(
            slot.clone(),
            DiskSpec {
                storage,
                size_bytes,
                serial: disk.serial.clone(),
                discard: disk.discard,
                ssd: disk.ssd,
                iothread: disk.iothread,
            },
        );
    }

    let mut networks = BTreeMap::new();
    for (slot, net) in &vm.networks {
        let bridge = net
            .bridge
            .clone()
            .or_else(|| defaults.bridge.clone())
            .ok_or_else(|| missing(format!("vm.networks.{slot}.bridge"), "bridge"))?;
        networks.insert(
            slot.clone(),
            NetSpec {
                model: net.model.clone(),
                mac: net.mac_address.as_ref().map(|mac| mac.to_ascii_uppercase()),
                bridge,
                vlan: net.vlan,
                firewall: net.firewall,
            },
        );
    }

    let bootstrap_decl = &decl.bootstrap;
    let bootstrap = match (&bootstrap_decl.template, &bootstrap_decl.iso) {
        (Some(_), Some(_)) => return Err(ResolveError::TemplateAndIso { host }),
        (None, Some(iso)) => Bootstrap::Iso { iso: iso.clone() },
        (template, None) => {
            let template = template
                .clone()
                .or_else(|| defaults.template.as_deref().map(template_ref))
                .ok_or_else(|| ResolveError::NoBootstrap { host: host.clone() })?;
            Bootstrap::Template {
                template,
                user: bootstrap_decl.user.clone(),
                ssh_keys: bootstrap_decl.ssh_keys.clone(),
                ip_config: bootstrap_decl.ip_config.clone(),
            }
        }
    };

    let tags: BTreeSet<String> =
        vm.tags.iter().map(|t| t.to_ascii_lowercase()).filter(|t| t != MANAGED_TAG).collect();

    let spec = VmSpec {
        name: vm.name.clone(),
        cores: vm.cores,
        sockets: vm.sockets,
        cpu_type: vm.cpu_type.clone(),
        memory_mib: vm.memory,
        balloon_mib: vm.balloon,
        bios: vm.bios,
        machine: vm.machine.clone(),
        agent: vm.agent,
        disks,
        networks,
        tags,
        // Proxmox keeps notes without trailing blank lines once the metadata block is split off.
        description: vm.description.trim_end().to_string(),
        on_boot: vm.on_boot,
        protection: vm.protection,
        pool: vm.pool.clone(),
    };

    Ok(DesiredHost {
        host,
        node,
        vmid: vm.id,
        spec,
        bootstrap,
        address: decl.address.clone(),
        ssh: decl.ssh.clone(),
        install: decl.install.clone(),
        deploy: decl.deploy.clone(),
        system: system.clone(),
    })
}

/// Resolves every host and checks that no two share a VM name (compared case-insensitively,
/// as DNS names) or a VMID. Errors come in host order; the first one is returned.
pub fn resolve_all(hosts: &[EvaluatedHost], defaults: &Defaults) -> Result<Vec<DesiredHost>, ResolveError> {
    let resolved = hosts
        .iter()
        .map(|h| resolve(&h.attr, &h.decl, &h.system, defaults))
        .collect::<Result<Vec<_>, _>>()?;
    let mut names: BTreeMap<String, &str> = BTreeMap::new();
    let mut ids: BTreeMap<u32, &str> = BTreeMap::new();
    for host in &resolved {
        if let Some(first) = names.insert(host.spec.name.to_ascii_lowercase(), &host.host) {
            return Err(ResolveError::DuplicateName {
                name: host.spec.name.clone(),
                first: first.to_string(),
                second: host.host.clone(),
            });
        }
        if let Some(id) = host.vmid
            && let Some(first) = ids.insert(id, &host.host)
        {
            return Err(ResolveError::DuplicateId {
                id,
                first: first.to_string(),
                second: host.host.clone(),
            });
        }
    }
    Ok(resolved)
}

/// `defaults.template` is a string in YAML; digits mean a VMID, like the module's int-or-string.
fn template_ref(text: &str) -> TemplateRef {
    match text.parse::<u32>() {
        Ok(id) => TemplateRef::Id(id),
        Err(_) => TemplateRef::Name(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flake::host::{DeployStrategy, DiskDecl, NetworkDecl};
    use crate::spec::Bios;

    /// The module's defaults, as `nix eval` prints them for `{ nixprox.enable = true; }`.
    fn decl() -> HostDecl {
        serde_json::from_value(serde_json::json!({
            "address": null,
            "bootstrap": {"ipConfig": "ip=dhcp", "iso": null, "sshKeys": [], "template": null, "user": "root"},
            "deploy": {"allowFailedUnits": false, "allowReboot": false, "confirmTimeout": 60, "rollback": true, "strategy": "switch"},
            "install": {"buildOn": "auto", "diskEncryptionKeys": {}, "extraFiles": null, "hostKeyFile": null, "kexecImage": null},
            "ssh": {"port": 22, "user": "root"},
            "vm": {
                "agent": true, "balloon": null, "bios": "seabios", "cores": 2, "cpuType": "x86-64-v2-AES",
                "description": "", "id": null, "machine": null, "memory": 2048, "name": "web",
                "disks": {"scsi0": {"discard": false, "iothread": false, "serial": null, "size": "20G", "ssd": false, "storage": null}},
                "networks": {"net0": {"bridge": null, "firewall": false, "macAddress": null, "model": "virtio", "vlan": null}},
                "node": null, "onBoot": true, "pool": null, "protection": false, "sockets": 1, "tags": []
            }
        }))
        .expect("module defaults deserialize")
    }

    fn system() -> SystemEval {
        SystemEval {
            toplevel: "/nix/store/abc-nixos-system-web".into(),
            disk_layout_hash: "sha256:00".into(),
        }
    }

    fn defaults() -> Defaults {
        Defaults {
            node: Some("pve1".into()),
            storage: Some("local-lvm".into()),
            bridge: Some("vmbr0".into()),
            template: Some("nixos-bootstrap".into()),
        }
    }

    fn err(decl: &HostDecl, defaults: &Defaults) -> String {
        resolve("web", decl, &system(), defaults).expect_err("invalid").to_string()
    }

    #[test]
    fn defaults_fill_what_the_host_leaves_open() {
        let host = resolve("web", &decl(), &system(), &defaults()).expect("valid");
        assert_eq!(host.host, "web");
        assert_eq!(host.node, "pve1");
        assert_eq!(host.vmid, None);
        assert_eq!(host.spec.name, "web");
        assert_eq!(host.spec.bios, Bios::Seabios);
        assert_eq!(host.spec.disks["scsi0"].storage, "local-lvm");
        assert_eq!(host.spec.disks["scsi0"].size_bytes, 20 << 30);
        assert_eq!(host.spec.networks["net0"].bridge, "vmbr0");
        assert_eq!(host.spec.networks["net0"].mac, None);
        assert_eq!(
            host.bootstrap,
            Bootstrap::Template {
                template: TemplateRef::Name("nixos-bootstrap".into()),
                user: "root".into(),
                ssh_keys: vec![],
                ip_config: "ip=dhcp".into()
            }
        );
        assert_eq!(host.deploy.strategy, DeployStrategy::Switch);
        assert_eq!(host.system, system());
    }

    #[test]
    fn host_values_win_over_defaults_and_are_normalised() {
        let mut d = decl();
        d.vm.node = Some("pve2".into());
        d.vm.id = Some(120);
        d.vm.tags = vec!["Web".into(), "PROD".into(), "nixprox".into(), "web".into()];
        d.vm.description = "Reverse proxy.\n\n".into();
        d.vm.disks.insert(
            "virtio1".into(),
            DiskDecl {
                storage: Some("tank".into()),
                size: "64".into(),
                serial: Some("data".into()),
                discard: true,
                ssd: false,
                iothread: true,
            },
        );
        d.vm.networks.insert(
            "net1".into(),
            NetworkDecl {
                bridge: Some("vmbr1".into()),
                vlan: Some(20),
                model: "e1000".into(),
                mac_address: Some("bc:24:11:0a:0b:0c".into()),
                firewall: true,
            },
        );
        d.bootstrap.template = Some(TemplateRef::Id(9000));
        let host = resolve("web", &d, &system(), &defaults()).expect("valid");
        assert_eq!(host.node, "pve2");
        assert_eq!(host.vmid, Some(120));
        assert_eq!(host.spec.tags, BTreeSet::from(["prod".to_string(), "web".to_string()]));
        assert_eq!(host.spec.description, "Reverse proxy.");
        assert_eq!(
            host.spec.disks["virtio1"],
            DiskSpec {
                storage: "tank".into(),
                size_bytes: 64 << 30,
                serial: Some("data".into()),
                discard: true,
                ssd: false,
                iothread: true
            }
        );
        assert_eq!(host.spec.networks["net1"].mac.as_deref(), Some("BC:24:11:0A:0B:0C"));
        assert_eq!(host.spec.networks["net1"].vlan, Some(20));
        assert!(matches!(host.bootstrap, Bootstrap::Template { template: TemplateRef::Id(9000), .. }));
    }

    #[test]
    fn numeric_default_template_is_a_vmid() {
        let defaults = Defaults { template: Some("9000".into()), ..defaults() };
        let host = resolve("web", &decl(), &system(), &defaults).expect("valid");
        assert!(matches!(host.bootstrap, Bootstrap::Template { template: TemplateRef::Id(9000), .. }));
    }

    #[test]
    fn iso_bootstrap_needs_no_template() {
        let mut d = decl();
        d.bootstrap.iso = Some("local:iso/nixos.iso".into());
        let defaults = Defaults { template: None, ..defaults() };
        let host = resolve("web", &d, &system(), &defaults).expect("valid");
        assert_eq!(host.bootstrap, Bootstrap::Iso { iso: "local:iso/nixos.iso".into() });
    }

    #[test]
    fn missing_node_storage_and_bridge_name_option_and_setting() {
        let none = Defaults::default();
        let mut d = decl();
        d.bootstrap.iso = Some("local:iso/nixos.iso".into());
        assert_eq!(
            err(&d, &none),
            "host `web`: `nixprox.vm.node` is not set and nixprox.yaml has no `defaults.node` (set one of them)"
        );
        d.vm.node = Some("pve1".into());
        assert_eq!(
            err(&d, &none),
            "host `web`: `nixprox.vm.disks.scsi0.storage` is not set and nixprox.yaml has no `defaults.storage` (set one of them)"
        );
        d.vm.disks.get_mut("scsi0").expect("scsi0").storage = Some("local-lvm".into());
        assert_eq!(
            err(&d, &none),
            "host `web`: `nixprox.vm.networks.net0.bridge` is not set and nixprox.yaml has no `defaults.bridge` (set one of them)"
        );
        d.vm.networks.get_mut("net0").expect("net0").bridge = Some("vmbr0".into());
        assert!(resolve("web", &d, &system(), &none).is_ok());
    }

    #[test]
    fn bootstrap_must_be_exactly_one_of_template_and_iso() {
        let mut d = decl();
        d.bootstrap.template = Some(TemplateRef::Name("t".into()));
        d.bootstrap.iso = Some("local:iso/x.iso".into());
        assert_eq!(
            err(&d, &defaults()),
            "host `web`: `nixprox.bootstrap.template` and `nixprox.bootstrap.iso` are both set (keep one: a VM is either cloned from a template or booted from an ISO)"
        );
        let no_template = Defaults { template: None, ..defaults() };
        assert_eq!(
            err(&decl(), &no_template),
            "host `web`: neither `nixprox.bootstrap.template` nor `nixprox.bootstrap.iso` is set and nixprox.yaml has no `defaults.template` (set one of them)"
        );
    }

    #[test]
    fn disk_sizes_are_checked() {
        let mut d = decl();
        d.vm.disks.get_mut("scsi0").expect("scsi0").size = "20X".into();
        assert_eq!(
            err(&d, &defaults()),
            "host `web`: `nixprox.vm.disks.scsi0.size` is `20X`, which is not a valid size (use a number with K, M, G or T, e.g. `32G`)"
        );
        d.vm.disks.get_mut("scsi0").expect("scsi0").size = "0G".into();
        assert_eq!(
            err(&d, &defaults()),
            "host `web`: `nixprox.vm.disks.scsi0.size` is zero (give the disk a size, e.g. `32G`)"
        );
        d.vm.disks.get_mut("scsi0").expect("scsi0").size = "1.5T".into();
        let host = resolve("web", &d, &system(), &defaults()).expect("valid");
        assert_eq!(host.spec.disks["scsi0"].size_bytes, 1536 << 30);
        d.vm.disks.clear();
        assert_eq!(
            err(&d, &defaults()),
            "host `web`: `nixprox.vm.disks` is empty (declare at least one disk to install NixOS on)"
        );
    }

    fn evaluated(attr: &str, name: &str, id: Option<u32>) -> EvaluatedHost {
        let mut d = decl();
        d.vm.name = name.into();
        d.vm.id = id;
        EvaluatedHost { attr: attr.into(), decl: d, system: system(), extra: None }
    }

    #[test]
    fn names_and_ids_are_unique_across_hosts() {
        let ok = resolve_all(&[evaluated("a", "a", Some(101)), evaluated("b", "b", None)], &defaults())
            .expect("unique");
        assert_eq!(ok.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let dup = resolve_all(&[evaluated("a", "web", None), evaluated("b", "Web", None)], &defaults())
            .expect_err("same name");
        assert_eq!(
            dup.to_string(),
            "hosts `a` and `b` both use the VM name `Web` (set `nixprox.vm.name` on one of them)"
        );
        let dup = resolve_all(&[evaluated("a", "a", Some(101)), evaluated("b", "b", Some(101))], &defaults())
            .expect_err("same id");
        assert_eq!(
            dup.to_string(),
            "hosts `a` and `b` both use VMID 101 (change `nixprox.vm.id` on one of them)"
        );
    }
}
