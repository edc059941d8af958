//! `nixprox import VM`: print the `nixprox.vm` block that declares an existing VM as it is
//! (see `render::nix`), so nobody transcribes a VM's settings by hand. Read-only: it changes
//! nothing. The SSH host key is read through the guest agent when the VM runs one.

use std::collections::BTreeSet;

use anyhow::{Context, bail};

use crate::cli::ImportArgs;
use crate::proxmox::guest::{ED25519_HOST_KEY, read_ed25519_host_key};
use crate::proxmox::{Client, LiveVm, ReadRequest, list_vms, read_cluster};
use crate::render::nix::{Imported, vm_declaration};

use super::{Outcome, source};

pub async fn run(args: ImportArgs) -> anyhow::Result<Outcome> {
    let settings = source::settings_of(&args.settings.flake, args.settings.config.as_deref())?;
    let client = source::proxmox_client(&settings)?;
    let listed = list_vms(&client).await.context("failed to read the cluster")?;
    let name = pick(&listed, &args.vm)?.name.clone();
    let request = ReadRequest { host_names: BTreeSet::from([name]), concurrency: settings.concurrency.api };
    let live = read_cluster(&client, &request).await.context("failed to read the cluster")?;
    let vm = pick(&live, &args.vm)?;
    let config = vm.config.as_ref().with_context(|| format!("the config of VM {} was not read", vm.vmid))?;
    let key = host_key(&client, vm, config.spec.agent).await.map_err(|err| err.to_string());
    print!(
        "{}",
        vm_declaration(Imported {
            node: &vm.node,
            vmid: vm.vmid,
            spec: &config.spec,
            host_key: key.as_deref().map_err(String::as_str),
        })
    );
    Ok(Outcome::Success)
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
