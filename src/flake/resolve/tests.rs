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
        image: None,
        serial_console: false,
        tarball: None,
    }
}

fn defaults() -> Defaults {
    Defaults {
        node: Some("pve1".into()),
        storage: Some("local-lvm".into()),
        bridge: Some("vmbr0".into()),
        template: Some("nixos-bootstrap".into()),
        image_storage: Some("local".into()),
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
    // Neither is needed to plan a host whose VM exists: the planner asks for one only
    // when it would create the VM.
    let no_template = Defaults { template: None, ..defaults() };
    let host = resolve("web", &decl(), &system(), &no_template).expect("valid");
    assert_eq!(host.bootstrap, Bootstrap::Undeclared);
}

#[test]
fn image_hosts_resolve_their_image_and_storage() {
    use crate::flake::host::ImageEval;
    use crate::spec::ImageFormat;

    let package = ImageEval {
        out_path: "/nix/store/0c8y-web-images".into(),
        drv_path: Some("/nix/store/1d-x.drv".into()),
        image_sizes: BTreeMap::new(),
    };
    let with_image = SystemEval { image: Some(package.clone()), ..system() };
    let mut d = decl();
    assert_eq!(resolve_image("web", &d, &with_image, &defaults()), Ok(None), "off by default");
    d.bootstrap.image.enable = true;
    let source = resolve_image("web", &d, &with_image, &defaults()).expect("valid").expect("enabled");
    assert_eq!(
        source,
        ImageSource { package: package.clone(), format: ImageFormat::Qcow2, storage: "local".into() }
    );
    d.bootstrap.image.storage = Some("images".into());
    d.bootstrap.image.format = ImageFormat::Raw;
    let source = resolve_image("web", &d, &with_image, &defaults()).expect("valid").expect("enabled");
    assert_eq!((source.storage.as_str(), source.format), ("images", ImageFormat::Raw));

    // The host boots from its image; `defaults.template` is not used for it.
    let host = resolve("web", &d, &with_image, &defaults()).expect("an image host");
    assert_eq!(host.bootstrap, Bootstrap::Image(source));
}

#[test]
fn an_image_that_planning_knows_is_too_large_is_refused() {
    use crate::flake::host::ImageEval;

    let sized = |sizes: &[(&str, &str)]| SystemEval {
        image: Some(ImageEval {
            out_path: "/nix/store/0c8y-web-disko-images".into(),
            drv_path: None,
            image_sizes: sizes.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect(),
        }),
        ..system()
    };
    let mut d = decl();
    d.bootstrap.image.enable = true;
    // The only image serves the only disk (20G) whatever its name.
    assert!(resolve("web", &d, &sized(&[("main", "20G")]), &defaults()).is_ok());
    assert_eq!(
        resolve("web", &d, &sized(&[("main", "32G")]), &defaults()).expect_err("too large").to_string(),
        "host `web`: disko's image `main` for disk `scsi0` is 32G (`disko.devices.disk.*.imageSize`) but `nixprox.vm.disks.scsi0.size` is 20G (raise the disk's size, or lower the image's: an imported disk can only grow)"
    );
    // With several disks, images map by name; others are checked once built.
    d.vm.disks.insert("scsi1".into(), d.vm.disks["scsi0"].clone());
    assert!(resolve("web", &d, &sized(&[("main", "32G"), ("data", "64G")]), &defaults()).is_ok());
    let err = resolve("web", &d, &sized(&[("scsi1", "21G")]), &defaults()).expect_err("too large");
    assert!(matches!(err, ResolveError::ImageLargerThanDisk { ref slot, .. } if slot == "scsi1"), "{err}");
    assert!(
        resolve("web", &d, &sized(&[("scsi1", "lots")]), &defaults()).is_ok(),
        "unreadable: apply checks"
    );
}

#[test]
fn image_hosts_need_a_package_a_storage_and_nothing_else() {
    let with_image = SystemEval {
        image: Some(crate::flake::host::ImageEval {
            out_path: "/nix/store/0c8y-x".into(),
            drv_path: None,
            image_sizes: BTreeMap::new(),
        }),
        ..system()
    };
    let mut d = decl();
    d.bootstrap.image.enable = true;
    let image_err = |d: &HostDecl, system: &SystemEval, defaults: &Defaults| {
        resolve("web", d, system, defaults).expect_err("invalid").to_string()
    };
    assert_eq!(
        image_err(&d, &system(), &defaults()),
        "host `web`: `nixprox.bootstrap.image.enable` is set but `nixprox.bootstrap.image.package` is null (import disko's NixOS module, whose `system.build.diskoImages` is the default, or set the package)"
    );
    assert_eq!(
        image_err(&d, &with_image, &Defaults { image_storage: None, ..defaults() }),
        "host `web`: `nixprox.bootstrap.image.storage` is not set and nixprox.yaml has no `defaults.image_storage` (set one of them)"
    );
    d.bootstrap.iso = Some("local:iso/nixos.iso".into());
    assert_eq!(
        image_err(&d, &with_image, &defaults()),
        "host `web`: `nixprox.bootstrap.image.enable` is set together with `nixprox.bootstrap.iso` (keep one: a VM boots either from its image or from a template or ISO)"
    );
    d.bootstrap.template = Some(TemplateRef::Id(9000));
    assert!(image_err(&d, &with_image, &defaults()).contains("together with `nixprox.bootstrap.template`"));
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
    EvaluatedHost { attr: attr.into(), decl: d, system: system(), extra: None, extra_error: None }
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

/// The module's defaults for `{ nixprox.container.enable = true; }` (nix/container.nix).
fn container_decl() -> HostDecl {
    let mut decl = decl();
    decl.container = Some(
        serde_json::from_value(serde_json::json!({
            "enable": true, "hostname": "proxy", "node": null, "id": null, "template": null, "sshKeys": [],
            "cores": null, "memory": 1024, "swap": 512,
            "rootfs": {"storage": null, "size": "8G"},
            "mountPoints": {},
            "networks": {"net0": {"name": "eth0", "bridge": null, "vlan": null, "macAddress": null, "firewall": false}},
            "features": {"nesting": true, "keyctl": false, "fuse": false},
            "unprivileged": true, "onBoot": true, "startup": null, "tags": ["Edge"], "description": "",
            "protection": false, "pool": null, "keep": false
        }))
        .expect("container defaults deserialize"),
    );
    decl
}

#[test]
fn a_container_resolves_to_the_container_kind_with_its_defaults() {
    let mut decl = container_decl();
    decl.bootstrap.ip_config = "ip=10.0.0.5/24,gw=10.0.0.1".into();
    let host = resolve("proxy", &decl, &system(), &defaults()).expect("resolves");
    assert_eq!(host.kind(), crate::spec::GuestKind::Container);
    assert_eq!(host.spec.name, "proxy");
    assert_eq!(host.spec.tags, BTreeSet::from(["edge".to_string()]));
    let ct = host.container.expect("container");
    assert_eq!(ct.spec.rootfs.storage, "local-lvm");
    assert_eq!(ct.spec.rootfs.size_bytes, 8 << 30);
    assert_eq!(ct.spec.networks["net0"].bridge, "vmbr0");
    assert_eq!(ct.spec.networks["net0"].address.as_deref(), Some("ip=10.0.0.5/24,gw=10.0.0.1"));
    assert!(ct.spec.features.nesting && ct.spec.unprivileged);
    assert_eq!(host.bootstrap, Bootstrap::Undeclared, "a container has no VM bootstrap");
}

#[test]
fn a_disabled_container_declaration_leaves_a_vm() {
    let mut decl = container_decl();
    if let Some(ct) = decl.container.as_mut() {
        ct.enable = false;
    }
    let host = resolve("web", &decl, &system(), &defaults()).expect("resolves");
    assert_eq!(host.kind(), crate::spec::GuestKind::Vm);
    assert!(host.container.is_none());
}

#[test]
fn what_only_root_may_set_is_refused_when_resolving() {
    let mut privileged = container_decl();
    if let Some(ct) = privileged.container.as_mut() {
        ct.unprivileged = false;
    }
    assert_eq!(
        resolve("proxy", &privileged, &system(), &defaults())
            .expect_err("privileged with features")
            .to_string(),
        "host `proxy`: `nixprox.container.unprivileged` is false and features `nesting=1` are on, but only `root@pam` may set features of a privileged container and API tokens are always refused (pve-container `check_ct_modify_config_perm`); keep the container unprivileged, or turn `nixprox.container.features.*` off"
    );
    if let Some(ct) = privileged.container.as_mut() {
        ct.features.nesting = false;
    }
    assert!(resolve("proxy", &privileged, &system(), &defaults()).is_ok(), "privileged without features");

    let mut bind = container_decl();
    if let Some(ct) = bind.container.as_mut() {
        ct.mount_points.insert(
            "mp0".into(),
            crate::flake::host::MountPointDecl {
                storage: Some("/srv/media".into()),
                size: "1G".into(),
                path: "/media".into(),
                backup: false,
            },
        );
    }
    assert_eq!(
        resolve("proxy", &bind, &system(), &defaults()).expect_err("bind mount").to_string(),
        "host `proxy`: `nixprox.container.mountPoints.mp0.storage` is the host path `/srv/media`, a bind mount, which only `root@pam` may set and API tokens never can (pve-container `check_ct_modify_config_perm`); use a Proxmox storage, or add the bind mount by hand with `pct set`"
    );
}

#[test]
fn a_container_refuses_the_boot_strategy_with_the_reason() {
    let mut decl = container_decl();
    decl.deploy.strategy = DeployStrategy::Boot;
    let err = resolve("proxy", &decl, &system(), &defaults()).expect_err("boot refused");
    assert_eq!(
        err.to_string(),
        "host `proxy`: `nixprox.deploy.strategy` is `boot`, which nixprox refuses for a container: `switch-to-configuration boot` is unreliable in LXC, where the next start does not boot through a boot loader (nixpkgs issues 228764, 529888); use `switch`, or `none`"
    );
    let mut zero = container_decl();
    if let Some(ct) = zero.container.as_mut() {
        ct.rootfs.size = "0".into();
    }
    assert_eq!(
        resolve("proxy", &zero, &system(), &defaults()).expect_err("empty rootfs").to_string(),
        "host `proxy`: `nixprox.container.rootfs.size` is `0`, which is not a valid size (use a positive number with K, M, G or T, e.g. `8G`)"
    );
}
