//! Resolving a container host (`nixprox.container.enable`): the settings' defaults applied,
//! sizes in bytes, `net0`'s address from `nixprox.address`/`nixprox.network`, and the rules
//! the module's types cannot express: what only `root@pam` may set through the Proxmox API
//! (pve-container `src/PVE/LXC.pm`, `check_ct_modify_config_perm`; API tokens are always
//! refused) and what a container cannot do (`deploy.strategy = boot`).

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Defaults;
use crate::flake::host::{
    Bootstrap, ContainerDecl, DeployStrategy, DesiredContainer, DesiredHost, HostDecl, SystemEval,
    TemplateBuild,
};
use crate::spec::container::{CtNetSpec, Features, MountSpec, VolumeSpec, address_of, shared_spec};
use crate::spec::{MANAGED_TAG, parse_size};

use super::{GIB, ResolveError, missing_default};

/// Resolves a host whose declaration enables the container kind.
pub(super) fn resolve_container(
    attr: &str,
    decl: &HostDecl,
    ct: &ContainerDecl,
    system: &SystemEval,
    defaults: &Defaults,
) -> Result<DesiredHost, ResolveError> {
    let host = attr.to_string();
    if decl.deploy.strategy == DeployStrategy::Boot {
        return Err(ResolveError::ContainerBootStrategy { host });
    }
    if decl.bootstrap.image.enable {
        return Err(ResolveError::ContainerWithImage { host });
    }
    let features =
        Features { nesting: ct.features.nesting, keyctl: ct.features.keyctl, fuse: ct.features.fuse };
    if !ct.unprivileged && features != Features::default() {
        return Err(ResolveError::PrivilegedFeatures { host, features: features.property() });
    }
    let tarball = if ct.tarball.enable {
        if ct.template.is_some() {
            return Err(ResolveError::TarballAndTemplate { host });
        }
        let package =
            system.tarball.clone().ok_or_else(|| ResolveError::NoTarballPackage { host: host.clone() })?;
        let storage = ct
            .tarball
            .storage
            .clone()
            .or_else(|| defaults.image_storage.clone())
            .ok_or_else(|| missing_default(&host, "container.tarball.storage".into(), "image_storage"))?;
        Some(TemplateBuild { package, storage })
    } else {
        None
    };
    let node = ct
        .node
        .clone()
        .or_else(|| defaults.node.clone())
        .ok_or_else(|| missing_default(&host, "container.node".into(), "node"))?;
    let rootfs = volume(&host, "rootfs", ct.rootfs.storage.as_deref(), &ct.rootfs.size, defaults)?;
    let mut mounts = BTreeMap::new();
    for (slot, mp) in &ct.mount_points {
        let option = format!("mountPoints.{slot}");
        mounts.insert(
            slot.clone(),
            MountSpec {
                volume: volume(&host, &option, mp.storage.as_deref(), &mp.size, defaults)?,
                path: mp.path.clone(),
                backup: mp.backup,
            },
        );
    }
    let mut networks = BTreeMap::new();
    for (slot, net) in &ct.networks {
        let bridge =
            net.bridge.clone().or_else(|| defaults.bridge.clone()).ok_or_else(|| {
                missing_default(&host, format!("container.networks.{slot}.bridge"), "bridge")
            })?;
        // `bootstrap.ipConfig` is derived from `nixprox.address` and `nixprox.network` and has
        // exactly the keys a container NIC takes (`ip=…,gw=…`, `ip6=…,gw6=…`, `ip=dhcp`).
        let address = (slot == "net0").then(|| net0_address(&decl.bootstrap.ip_config)).flatten();
        networks.insert(
            slot.clone(),
            CtNetSpec {
                name: net.name.clone(),
                bridge,
                mac: net.mac_address.as_ref().map(|m| m.to_ascii_uppercase()),
                vlan: net.vlan,
                firewall: net.firewall,
                address,
            },
        );
    }
    let tags: BTreeSet<String> =
        ct.tags.iter().map(|t| t.to_ascii_lowercase()).filter(|t| t != MANAGED_TAG).collect();
    let spec = shared_spec(
        ct.hostname.clone(),
        tags,
        ct.description.trim_end().to_string(),
        ct.on_boot,
        ct.protection,
        ct.pool.clone(),
    );
    let container = crate::spec::container::ContainerSpec {
        cores: ct.cores,
        memory_mib: ct.memory,
        swap_mib: ct.swap,
        rootfs,
        mounts,
        networks,
        features,
        unprivileged: ct.unprivileged,
        startup: ct.startup.clone(),
    };
    Ok(DesiredHost {
        host,
        node,
        vmid: ct.id,
        spec,
        // A container is made from its template, never bootstrapped like a VM.
        bootstrap: Bootstrap::Undeclared,
        address: decl.address.clone(),
        ssh: decl.ssh.clone(),
        install: decl.install.clone(),
        deploy: decl.deploy.clone(),
        // The host's own gates (a gated replace of its root volume); never a conversion: a
        // container that does not run NixOS is only ever replaced.
        allow: decl.allow,
        convert: Default::default(),
        system: system.clone(),
        keep: ct.keep,
        container: Some(DesiredContainer {
            spec: container,
            template: ct.template.clone(),
            tarball,
            ssh_keys: ct.ssh_keys.clone(),
        }),
    })
}

/// A volume with its storage resolved and its size in bytes. A host path as storage would be a
/// bind mount, which only `root@pam` may set.
fn volume(
    host: &str,
    option: &str,
    storage: Option<&str>,
    size: &str,
    defaults: &Defaults,
) -> Result<VolumeSpec, ResolveError> {
    let storage = storage
        .map(str::to_string)
        .or_else(|| defaults.storage.clone())
        .ok_or_else(|| missing_default(host, format!("container.{option}.storage"), "storage"))?;
    if storage.starts_with('/') {
        return Err(ResolveError::BindMount {
            host: host.to_string(),
            option: option.to_string(),
            path: storage,
        });
    }
    let size_bytes = parse_size(size, GIB).ok_or_else(|| ResolveError::InvalidContainerSize {
        host: host.to_string(),
        option: option.to_string(),
        size: size.to_string(),
    })?;
    if size_bytes == 0 {
        return Err(ResolveError::InvalidContainerSize {
            host: host.to_string(),
            option: option.to_string(),
            size: size.to_string(),
        });
    }
    Ok(VolumeSpec { storage, size_bytes })
}

/// `net0`'s address from the derived `bootstrap.ipConfig`.
fn net0_address(ip_config: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = ip_config
        .split(',')
        .filter_map(|part| part.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    address_of(&pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net0_takes_the_derived_address() {
        assert_eq!(net0_address("ip=dhcp").as_deref(), Some("ip=dhcp"));
        assert_eq!(net0_address("gw=10.0.0.1,ip=10.0.0.5/24").as_deref(), Some("ip=10.0.0.5/24,gw=10.0.0.1"));
        assert_eq!(net0_address("ip6=fd00::5/64,gw6=fd00::1").as_deref(), Some("ip6=fd00::5/64,gw6=fd00::1"));
        assert_eq!(net0_address(""), None);
    }
}
