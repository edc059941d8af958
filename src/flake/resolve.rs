//! From a host's raw declaration to the [`DesiredHost`] the planner compares: the settings'
//! defaults applied, sizes in bytes, tags lower-cased, MACs upper-cased, and the checks the
//! module's types cannot express (they need nixprox.yaml, or span several hosts).
//!
//! Pure: no I/O, so every rule is unit-tested here.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Defaults;
use crate::spec::hardware::{
    PciDevice, Startup, Tpm, UsbDevice, VM_CPU_FLAGS, VirtiofsShare, parse_cpu, parse_flags, unsupported_flag,
};
use crate::spec::{DiskSpec, Hardware, MANAGED_TAG, NetSpec, VmSpec, format_size, parse_size};

use super::host::{Bootstrap, DesiredHost, HostDecl, ImageSource, SystemEval, TemplateRef, VmDecl};
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
        "host `{host}`: `nixprox.bootstrap.image.enable` is set together with `nixprox.bootstrap.{other}` (keep one: a VM boots either from its image or from a template or ISO)"
    )]
    ImageAndOther { host: String, other: &'static str },
    #[error(
        "host `{host}`: `nixprox.bootstrap.image.enable` is set but `nixprox.bootstrap.image.package` is null (import disko's NixOS module, whose `system.build.diskoImages` is the default, or set the package)"
    )]
    NoImagePackage { host: String },
    #[error(
        "host `{host}`: disko's image `{image}` for disk `{slot}` is {image_size} (`disko.devices.disk.*.imageSize`) but `nixprox.vm.disks.{slot}.size` is {disk_size} (raise the disk's size, or lower the image's: an imported disk can only grow)"
    )]
    ImageLargerThanDisk { host: String, slot: String, image: String, image_size: String, disk_size: String },
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
    #[error(
        "host `{host}`: CPU flag `{flag}` (in `nixprox.vm.cpuType` or `nixprox.vm.cpuFlags`) is not one Proxmox allows on a VM (allowed: {allowed}); define a custom CPU model in Proxmox for it and name it in `cpuType`"
    )]
    UnsupportedCpuFlag { host: String, flag: String, allowed: String },
    #[error("host `{host}`: `nixprox.vm.extraConfig.{key}` cannot be set: {why}")]
    ExtraConfig { host: String, key: String, why: String },
    // The container kind (resolve/container.rs).
    #[error(
        "host `{host}`: `nixprox.deploy.strategy` is `boot`, which nixprox refuses for a container: `switch-to-configuration boot` is unreliable in LXC, where the next start does not boot through a boot loader (nixpkgs issues 228764, 529888); use `switch`, or `none`"
    )]
    ContainerBootStrategy { host: String },
    #[error(
        "host `{host}`: `nixprox.bootstrap.image.enable` is set on a container (a container is made from its template: remove the image bootstrap, or turn off `nixprox.container.enable`)"
    )]
    ContainerWithImage { host: String },
    #[error(
        "host `{host}`: `nixprox.container.unprivileged` is false and features `{features}` are on, but only `root@pam` may set features of a privileged container and API tokens are always refused (pve-container `check_ct_modify_config_perm`); keep the container unprivileged, or turn `nixprox.container.features.*` off"
    )]
    PrivilegedFeatures { host: String, features: String },
    #[error(
        "host `{host}`: `nixprox.container.{option}.storage` is the host path `{path}`, a bind mount, which only `root@pam` may set and API tokens never can (pve-container `check_ct_modify_config_perm`); use a Proxmox storage, or add the bind mount by hand with `pct set`"
    )]
    BindMount { host: String, option: String, path: String },
    #[error(
        "host `{host}`: `nixprox.container.{option}.size` is `{size}`, which is not a valid size (use a positive number with K, M, G or T, e.g. `8G`)"
    )]
    InvalidContainerSize { host: String, option: String, size: String },
    #[error(
        "host `{host}`: `nixprox.container.tarball.enable` is set together with `nixprox.container.template` (keep one: a container is made either from its own template, built from the flake, or from a prebuilt one)"
    )]
    TarballAndTemplate { host: String },
    #[error(
        "host `{host}`: `nixprox.container.tarball.enable` is set but `nixprox.container.tarball.package` is null (import nixpkgs' `proxmox-lxc` module, whose `system.build.tarball` is the default, or set the package)"
    )]
    NoTarballPackage { host: String },
}

/// The CPU type and the hardware of the declaration: `cpuType`'s own flags
/// (`host,flags=+aes`) join `cpuFlags`, so the type compares alone with Proxmox's and the flags
/// as a set.
fn resolve_hardware(host: &str, vm: &VmDecl) -> Result<(String, Hardware), ResolveError> {
    let (cpu_type, mut cpu_flags) = parse_cpu(&vm.cpu_type);
    cpu_flags.extend(parse_flags(&vm.cpu_flags.join(";")));
    if let Some(flag) = unsupported_flag(&cpu_flags) {
        return Err(ResolveError::UnsupportedCpuFlag {
            host: host.to_string(),
            flag: flag.to_string(),
            allowed: VM_CPU_FLAGS.join(", "),
        });
    }
    for (key, value) in &vm.extra_config {
        let refused =
            crate::spec::extra::extra_key(key).err().or_else(|| crate::spec::extra::extra_value(key, value));
        if let Some(why) = refused {
            return Err(ResolveError::ExtraConfig { host: host.to_string(), key: key.clone(), why });
        }
    }
    let hardware = Hardware {
        extra: vm.extra_config.clone(),
        cpu_flags,
        numa: vm.numa,
        serial: vm.serial,
        vga: vm.vga.clone(),
        startup: vm.startup.as_ref().map(|s| Startup { order: s.order, up: s.up, down: s.down }),
        pci: vm
            .pci
            .iter()
            .map(|(slot, d)| {
                let device =
                    PciDevice { mapping: d.mapping.clone(), pcie: d.pcie, rombar: d.rombar, x_vga: d.x_vga };
                (slot.clone(), device)
            })
            .collect(),
        usb: vm
            .usb
            .iter()
            .map(|(slot, d)| (slot.clone(), UsbDevice { mapping: d.mapping.clone(), usb3: d.usb3 }))
            .collect(),
        virtiofs: vm
            .virtiofs
            .iter()
            .map(|(slot, d)| {
                let share = VirtiofsShare {
                    mapping: d.mapping.clone(),
                    cache: d.cache.clone(),
                    direct_io: d.direct_io,
                    expose_acl: d.expose_acl,
                    expose_xattr: d.expose_xattr,
                };
                (slot.clone(), share)
            })
            .collect(),
        usb_hotplug: false,
        usb_hotplug_feature: false,
        tpm: None,
        efi_pre_enrolled_keys: vm.efi.pre_enrolled_keys,
    };
    Ok((cpu_type, hardware))
}

/// Resolves one host: its disks, networks and bootstrap with the settings' defaults, then the
/// VM it declares.
pub fn resolve(
    attr: &str,
    decl: &HostDecl,
    system: &SystemEval,
    defaults: &Defaults,
) -> Result<DesiredHost, ResolveError> {
    if let Some(container) = decl.enabled_container() {
        return container::resolve_container(attr, decl, container, system, defaults);
    }
    let host = attr.to_string();
    let vm = &decl.vm;
    let node = vm
        .node
        .clone()
        .or_else(|| defaults.node.clone())
        .ok_or_else(|| missing_default(&host, "vm.node".into(), "node"))?;
    let disks = resolve_disks(&host, vm, defaults)?;
    let networks = resolve_networks(&host, vm, defaults)?;
    let bootstrap = resolve_bootstrap(attr, decl, system, defaults, &disks)?;
    let tags: BTreeSet<String> =
        vm.tags.iter().map(|t| t.to_ascii_lowercase()).filter(|t| t != MANAGED_TAG).collect();

    let (cpu_type, mut hardware) = resolve_hardware(&host, vm)?;
    // An ISO or image host whose system logs to ttyS0 expects a serial port there.
    if hardware.serial.is_none()
        && system.serial_console
        && matches!(bootstrap, Bootstrap::Iso { .. } | Bootstrap::Image(_))
    {
        hardware.serial = Some(true);
    }
    // The TPM state goes to the first disk's storage unless it names its own.
    hardware.tpm = vm.tpm.as_ref().map(|t| Tpm {
        version: t.version.clone(),
        storage: t
            .storage
            .clone()
            .or_else(|| disks.values().next().map(|d| d.storage.clone()))
            .unwrap_or_else(|| "local-lvm".into()),
    });
    let spec = VmSpec {
        name: vm.name.clone(),
        cores: vm.cores,
        sockets: vm.sockets,
        cpu_type,
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
        hardware,
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
        keep: vm.keep,
        allow: decl.allow,
        convert: decl.convert.clone(),
        container: None,
    })
}

fn missing_default(host: &str, option: String, setting: &'static str) -> ResolveError {
    ResolveError::MissingDefault { host: host.to_string(), option, setting }
}

/// The declared disks with the default storage and sizes in bytes; at least one, none empty.
fn resolve_disks(
    host: &str,
    vm: &VmDecl,
    defaults: &Defaults,
) -> Result<BTreeMap<String, DiskSpec>, ResolveError> {
    if vm.disks.is_empty() {
        return Err(ResolveError::NoDisks { host: host.to_string() });
    }
    let mut disks = BTreeMap::new();
    for (slot, disk) in &vm.disks {
        let storage = disk
            .storage
            .clone()
            .or_else(|| defaults.storage.clone())
            .ok_or_else(|| missing_default(host, format!("vm.disks.{slot}.storage"), "storage"))?;
        let size_bytes = parse_size(&disk.size, GIB).ok_or_else(|| ResolveError::InvalidSize {
            host: host.to_string(),
            slot: slot.clone(),
            size: disk.size.clone(),
        })?;
        if size_bytes == 0 {
            return Err(ResolveError::EmptyDisk { host: host.to_string(), slot: slot.clone() });
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
    Ok(disks)
}

/// The declared network devices with the default bridge and upper-case MACs.
fn resolve_networks(
    host: &str,
    vm: &VmDecl,
    defaults: &Defaults,
) -> Result<BTreeMap<String, NetSpec>, ResolveError> {
    let mut networks = BTreeMap::new();
    for (slot, net) in &vm.networks {
        let bridge = net
            .bridge
            .clone()
            .or_else(|| defaults.bridge.clone())
            .ok_or_else(|| missing_default(host, format!("vm.networks.{slot}.bridge"), "bridge"))?;
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
    Ok(networks)
}

/// How the VM comes to be: its image (checked against its disks), an ISO, or a template (the
/// declared one, else `defaults.template`), else [`Bootstrap::Undeclared`].
fn resolve_bootstrap(
    attr: &str,
    decl: &HostDecl,
    system: &SystemEval,
    defaults: &Defaults,
    disks: &BTreeMap<String, DiskSpec>,
) -> Result<Bootstrap, ResolveError> {
    let host = attr.to_string();
    let bootstrap_decl = &decl.bootstrap;
    let image = resolve_image(attr, decl, system, defaults)?;
    if let Some(image) = &image {
        check_image_sizes(&host, image, disks)?;
    }
    Ok(match (&bootstrap_decl.template, &bootstrap_decl.iso) {
        _ if let Some(image) = image => Bootstrap::Image(image),
        (Some(_), Some(_)) => return Err(ResolveError::TemplateAndIso { host }),
        (None, Some(iso)) => Bootstrap::Iso { iso: iso.clone() },
        (template, None) => {
            // Only a VM to create needs one: the planner blocks that create (or replacement)
            // and says what to set; a host whose VM exists plans without it.
            match template.clone().or_else(|| defaults.template.as_deref().map(template_ref)) {
                Some(template) => Bootstrap::Template {
                    template,
                    user: bootstrap_decl.user.clone(),
                    ssh_keys: bootstrap_decl.ssh_keys.clone(),
                    ip_config: bootstrap_decl.ip_config.clone(),
                },
                None => Bootstrap::Undeclared,
            }
        }
    })
}

/// The image a host boots from, with the storage resolved; `None` when
/// `nixprox.bootstrap.image.enable` is off. Refuses an image host that also names a template
/// or ISO (the settings' `defaults.template` is simply not used for it), has no package, or has
/// no storage.
pub fn resolve_image(
    attr: &str,
    decl: &HostDecl,
    system: &SystemEval,
    defaults: &Defaults,
) -> Result<Option<ImageSource>, ResolveError> {
    let image = &decl.bootstrap.image;
    if !image.enable {
        return Ok(None);
    }
    let host = attr.to_string();
    if decl.bootstrap.template.is_some() {
        return Err(ResolveError::ImageAndOther { host, other: "template" });
    }
    if decl.bootstrap.iso.is_some() {
        return Err(ResolveError::ImageAndOther { host, other: "iso" });
    }
    let package = system.image.clone().ok_or_else(|| ResolveError::NoImagePackage { host: host.clone() })?;
    let storage = image.storage.clone().or_else(|| defaults.image_storage.clone()).ok_or(
        ResolveError::MissingDefault {
            host,
            option: "bootstrap.image.storage".into(),
            setting: "image_storage",
        },
    )?;
    Ok(Some(ImageSource { package, format: image.format, storage }))
}

/// Refuses an image that planning knows to be larger than its disk (disko's declared
/// `imageSize`): Proxmox sizes an imported disk by its image, and nixprox only grows disks.
/// An image maps to the disk of its name, or a single image to a single disk, as apply finds
/// them in the built package; sizes of other packages are checked once built.
fn check_image_sizes(
    host: &str,
    image: &ImageSource,
    disks: &BTreeMap<String, DiskSpec>,
) -> Result<(), ResolveError> {
    let sizes = &image.package.image_sizes;
    let only = disks.keys().next().filter(|_| disks.len() == 1 && sizes.len() == 1);
    for (name, size) in sizes {
        let Some(slot) = disks.get_key_value(name).map(|(slot, _)| slot).or(only) else { continue };
        // A size disko's builder takes (`truncate -s`): a bare number is bytes.
        let Some(bytes) = parse_size(size, 1) else { continue };
        let disk = disks[slot].size_bytes;
        if bytes > disk {
            return Err(ResolveError::ImageLargerThanDisk {
                host: host.to_string(),
                slot: slot.clone(),
                image: name.clone(),
                image_size: format_size(bytes),
                disk_size: format_size(disk),
            });
        }
    }
    Ok(())
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

mod container;

#[cfg(test)]
mod tests;
