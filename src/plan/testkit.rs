//! Builders for planner tests: a desired host and its matching live VM, in sync, which each
//! test then bends into the case it covers.

use std::collections::{BTreeMap, BTreeSet};

use crate::flake::host::{
    Bootstrap, BuildOn, DeployDecl, DeployStrategy, DesiredHost, InstallDecl, SshDecl, SystemEval,
    TemplateRef,
};
use crate::metadata::Metadata;
use crate::proxmox::{LiveConfig, LiveVm};
use crate::spec::{Bios, DiskSpec, MANAGED_TAG, NetSpec, VmSpec};

pub const SYSTEM: &str = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system";
pub const LAYOUT: &str = "sha256:1111";

pub fn spec(name: &str) -> VmSpec {
    VmSpec {
        name: name.into(),
        cores: 2,
        sockets: 1,
        cpu_type: "x86-64-v2-AES".into(),
        memory_mib: 2048,
        balloon_mib: None,
        bios: Bios::Seabios,
        machine: None,
        agent: true,
        disks: BTreeMap::from([(
            "scsi0".to_string(),
            DiskSpec {
                storage: "local-lvm".into(),
                size_bytes: 20 << 30,
                serial: None,
                discard: false,
                ssd: false,
                iothread: false,
            },
        )]),
        networks: BTreeMap::from([(
            "net0".to_string(),
            NetSpec {
                model: "virtio".into(),
                mac: None,
                bridge: "vmbr0".into(),
                vlan: None,
                firewall: false,
            },
        )]),
        tags: BTreeSet::new(),
        description: String::new(),
        on_boot: true,
        protection: false,
        pool: None,
        hardware: Default::default(),
    }
}

pub fn host(name: &str) -> DesiredHost {
    DesiredHost {
        host: name.into(),
        node: "pve1".into(),
        vmid: None,
        spec: spec(name),
        bootstrap: Bootstrap::Template {
            template: TemplateRef::Name("nixos-bootstrap".into()),
            user: "root".into(),
            ssh_keys: Vec::new(),
            ip_config: "ip=dhcp".into(),
        },
        address: Some("127.0.0.10".into()),
        ssh: SshDecl { user: "root".into(), port: 22, host_key: None },
        install: InstallDecl {
            build_on: BuildOn::Auto,
            extra_files: None,
            kexec_image: None,
            disk_encryption_keys: BTreeMap::new(),
            host_key_file: None,
        },
        deploy: DeployDecl {
            strategy: DeployStrategy::Switch,
            rollback: true,
            confirm_timeout: 60,
            allow_failed_units: false,
            allow_reboot: false,
        },
        system: SystemEval {
            toplevel: format!("{SYSTEM}-{name}"),
            disk_layout_hash: LAYOUT.into(),
            image: None,
            serial_console: false,
            tarball: None,
        },
        keep: false,
        allow: Default::default(),
        convert: Default::default(),
        container: None,
    }
}

/// The live VM of `host(name)`, managed and installed, in sync.
pub fn live(name: &str, vmid: u32) -> LiveVm {
    let mut live_spec = spec(name);
    live_spec.networks.values_mut().for_each(|n| n.mac = Some("BC:24:11:00:00:01".into()));
    LiveVm {
        vmid,
        kind: Default::default(),
        node: "pve1".into(),
        name: name.into(),
        status: "running".into(),
        template: false,
        lock: None,
        tags: BTreeSet::from([MANAGED_TAG.to_string()]),
        config: Some(LiveConfig {
            digest: "d1".into(),
            spec: live_spec,
            metadata: Some(Metadata {
                host: name.into(),
                system: Some(format!("{SYSTEM}-{name}")),
                disk_layout: Some(LAYOUT.into()),
                ..Metadata::default()
            }),
            unreadable_block: None,
            pending: BTreeSet::new(),
            running: None,
            boot_disks: vec!["scsi0".into()],
            guest_os: None,
            container: None,
            ostype: None,
        }),
        ha_state: None,
    }
}

pub fn config(vm: &mut LiveVm) -> &mut LiveConfig {
    vm.config.as_mut().expect("testkit VMs have a config")
}
