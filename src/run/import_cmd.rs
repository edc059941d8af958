//! `nixprox import VM`: write the host module that declares an existing VM as it is (see
//! `render::nix`), ready to import, so nobody transcribes a VM's settings by hand: to stdout,
//! or with `--out FILE` to a new file. Read-only on the cluster: it changes nothing. The SSH
//! host key, the address and the OS are read through the guest agent when the VM runs one. A
//! container (no guest agent) is declared from its config, its key from its notes.

use std::collections::BTreeSet;

use anyhow::{Context, bail};

use crate::cli::ImportArgs;
use crate::proxmox::guest::{ED25519_HOST_KEY, GuestOs, read_ed25519_host_key, read_guest_os};
use crate::proxmox::qemu::agent_address;
use crate::proxmox::{Client, LiveVm, ReadRequest, list_guests, read_cluster};
use crate::render::nix::{
    Imported, ImportedContainer, ImportedHost, ImportedOs, container_module, host_module,
};

use super::{Outcome, source};

pub async fn run(args: ImportArgs) -> anyhow::Result<Outcome> {
    let settings = source::settings_of(&args.settings.flake, args.settings.config.as_deref())?;
    let client = source::proxmox_client(&settings)?;
    let listed = list_guests(&client).await.context("failed to read the cluster")?;
    let name = pick(&listed, &args.vm)?.name.clone();
    let request = ReadRequest { host_names: BTreeSet::from([name]), concurrency: settings.concurrency.api };
    let live = read_cluster(&client, &request).await.context("failed to read the cluster")?;
    let vm = pick(&live, &args.vm)?;
    let config = vm.config.as_ref().with_context(|| format!("the config of VM {} was not read", vm.vmid))?;
    if let Some(container) = &config.container {
        // The container kind: no guest agent; the key is the one nixprox recorded, if any.
        let host_key = config.metadata.as_ref().and_then(|m| m.host_key.as_deref());
        let text = container_module(ImportedContainer {
            node: &vm.node,
            vmid: vm.vmid,
            spec: &config.spec,
            container,
            host_key,
        });
        match &args.out {
            None => print!("{text}"),
            Some(path) => write_new(path, &text)?,
        }
        return Ok(Outcome::Success);
    }
    let key = host_key(&client, vm, config.spec.agent).await.map_err(|err| err.to_string());
    let address = address(&client, vm, config.spec.agent).await.map_err(|err| err.to_string());
    // A VM nixprox manages, or one named like no host, had its OS read by nobody: ask now.
    let os = match (&config.guest_os, config.metadata.is_some() || vm.is_managed()) {
        (_, true) => None,
        (Some(os), false) => Some(os.clone()),
        (None, false) if vm.status == "running" && config.spec.agent => {
            Some(read_guest_os(&client, &vm.node, vm.vmid).await)
        }
        (None, false) => Some(GuestOs::Unknown {
            reason: "the VM is not running with its QEMU guest agent enabled".into(),
        }),
    };
    let imported_os = match &os {
        None => ImportedOs::NixOs,
        Some(GuestOs::Read { id, .. }) if id == "nixos" => ImportedOs::NixOs,
        Some(GuestOs::Read { id, pretty_name }) => ImportedOs::Other { id, pretty: pretty_name },
        Some(GuestOs::Unknown { reason }) => ImportedOs::Unknown(reason),
    };
    let text = host_module(ImportedHost {
        vm: Imported {
            node: &vm.node,
            vmid: vm.vmid,
            spec: &config.spec,
            host_key: key.as_deref().map_err(String::as_str),
        },
        address: address.as_deref().map_err(String::as_str),
        os: imported_os,
    });
    match &args.out {
        None => print!("{text}"),
        Some(path) => write_new(path, &text)?,
    }
    Ok(Outcome::Success)
}

/// Writes the module to a file that does not exist yet (an existing host module is never
/// overwritten), creating its directory.
fn write_new(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create the directory `{}` for --out", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|err| {
        if err.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "`{}` exists already: nixprox import never overwrites a host module (remove it, or write to another path)",
                path.display()
            )
        } else {
            anyhow::anyhow!("failed to create `{}` for --out: {err}", path.display())
        }
    })?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .with_context(|| format!("failed to write `{}`", path.display()))
}

/// The address the VM's guest agent reports, or why it was not read.
async fn address(client: &Client, vm: &LiveVm, agent: bool) -> anyhow::Result<String> {
    if vm.status != "running" || !agent {
        bail!("the VM is not running with its QEMU guest agent enabled");
    }
    agent_address(client, &vm.node, vm.vmid).await?.context("the guest agent reported no address")
}

/// The VM `wanted` names: a VMID, or a name no other VM carries. Templates are no hosts.
fn pick<'a>(vms: &'a [LiveVm], wanted: &str) -> anyhow::Result<&'a LiveVm> {
    let vms: Vec<&LiveVm> = vms.iter().filter(|vm| !vm.template).collect();
    if let Ok(vmid) = wanted.parse::<u32>()
        && let Some(vm) = vms.iter().find(|vm| vm.vmid == vmid)
    {
        return Ok(vm);
    }
    let named: Vec<&&LiveVm> = vms.iter().filter(|vm| vm.name == wanted).collect();
    match named.as_slice() {
        [vm] => Ok(vm),
        [] => bail!("no VM `{wanted}` in the cluster (give its VMID or its name)"),
        many => {
            let ids: Vec<String> = many.iter().map(|vm| vm.vmid.to_string()).collect();
            bail!("several VMs are named `{wanted}` (VMIDs {}): give the VMID", ids.join(", "))
        }
    }
}

/// The VM's ed25519 host key through its guest agent, or why it was not read.
async fn host_key(client: &Client, vm: &LiveVm, agent: bool) -> anyhow::Result<String> {
    if vm.status != "running" || !agent {
        bail!("the VM is not running with its QEMU guest agent enabled");
    }
    read_ed25519_host_key(client, &vm.node, vm.vmid)
        .await?
        .with_context(|| format!("the guest agent answered no ed25519 key for `{ED25519_HOST_KEY}`"))
}
