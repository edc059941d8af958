//! Desired hosts for executor tests, as plain data (no nix evaluation): a small NixOS-like
//! host cloned from the scenario's template, which each test bends into its case.

use std::collections::{BTreeMap, BTreeSet};

use nixprox::flake::DesiredHost;
use nixprox::flake::host::{
    Bootstrap, BuildOn, DeployDecl, DeployStrategy, InstallDecl, SshDecl, SystemEval, TemplateRef,
};
use nixprox::spec::{Bios, DiskSpec, NetSpec, VmSpec};
use serde_json::{Value, json};

/// The template every test cluster has.
pub const TEMPLATE_ID: u32 = 9000;
pub const TEMPLATE_NAME: &str = "nixos-bootstrap";
/// The test SSH key; its `+`, `/` and `=` exercise the encoding of `sshkeys`.
pub const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI+test/key= ci@nixprox";

/// The template as a fakepve guest: 20G disk, cloud-init drive, agent on.
pub fn template() -> Value {
    json!({
        "vmid": TEMPLATE_ID, "name": TEMPLATE_NAME, "node": "pve1", "status": "stopped", "template": true,
        "config": {
            "memory": "1024", "cores": 1, "agent": "1", "ostype": "l26", "scsihw": "virtio-scsi-single",
            "scsi0": "local-lvm:base-9000-disk-0,size=20G", "ide2": "local-lvm:vm-9000-cloudinit,media=cdrom",
            "net0": "virtio=BC:24:11:00:90:00,bridge=vmbr0", "boot": "order=scsi0", "template": 1
        }
    })
}

/// A host named `name`: 2 cores, 2 GiB, a 20G disk (the template's size), one NIC, agent on.
pub fn host(name: &str) -> DesiredHost {
    DesiredHost {
        host: name.into(),
        node: "pve1".into(),
        vmid: None,
        spec: VmSpec {
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
                    discard: true,
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
            tags: BTreeSet::from(["lab".to_string()]),
            description: format!("{name}, managed by nixprox tests"),
            on_boot: true,
            protection: false,
            pool: None,
            hardware: Default::default(),
        },
        bootstrap: Bootstrap::Template {
            template: TemplateRef::Name(TEMPLATE_NAME.into()),
            user: "root".into(),
            ssh_keys: vec![SSH_KEY.into()],
            ip_config: "ip=dhcp".into(),
        },
        address: None,
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
            toplevel: format!("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-{name}"),
            disk_layout_hash: "sha256:1111".into(),
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

/// What `GET …/agent/get-osinfo` answers (under `result`) for a NixOS guest: qemu-guest-agent's
/// `guest-get-osinfo` (QEMU `qga/commands-posix.c`) reads `/etc/os-release` (`ID`, `NAME`,
/// `PRETTY_NAME`, `VERSION`, `VERSION_ID`) and `uname`; NixOS writes `ID=nixos`
/// (nixpkgs `nixos/modules/misc/version.nix`). fakepve answers a VM's `os` as it is, and a
/// Debian 13 when a VM's agent has none.
pub fn nixos_os() -> Value {
    json!({"id": "nixos", "name": "NixOS", "pretty-name": "NixOS 24.11 (Vicuna)", "version": "24.11 (Vicuna)",
           "version-id": "24.11", "kernel-release": "6.6.63", "kernel-version": "#1-NixOS SMP", "machine": "x86_64"})
}

/// The same for Debian 12 (its `/etc/os-release`: `ID=debian`).
pub fn debian_os() -> Value {
    json!({"id": "debian", "name": "Debian GNU/Linux", "pretty-name": "Debian GNU/Linux 12 (bookworm)",
           "version": "12 (bookworm)", "version-id": "12", "kernel-release": "6.1.0-28-amd64",
           "kernel-version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1", "machine": "x86_64"})
}

/// Guest-agent answers of a NixOS guest with a loopback address on `eth0` (tests never dial
/// anything else).
pub fn agent_with(address: &str) -> Value {
    json!({"os": nixos_os(), "interfaces": [
        {"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}]},
        {"name": "eth0", "hardware-address": "bc:24:11:00:00:01",
         "ip-addresses": [{"ip-address": address, "ip-address-type": "ipv4", "prefix": 8}]}
    ]})
}
