//! `nixprox forget HOST`: let go of a host's VM now, without a plan. It removes the VM's
//! `nixprox` tag and metadata block and nothing else (the VM, its disks and the owner's notes
//! stay byte for byte). It needs no reviewed plan: an operator runs it by hand, it destroys
//! nothing, and it is undone by the next plan, which adopts the VM again (in place) while the
//! host is in the flake. The declarative, reviewed form is `nixprox.vm.keep = true`.

use std::collections::BTreeSet;

use anyhow::{Context, bail};

use crate::apply::ApplyOptions;
use crate::apply::release::{Released, release_vm};
use crate::cli::ForgetArgs;
use crate::proxmox::{LiveVm, ReadRequest, read_cluster};
use crate::spec::MANAGED_TAG;

use super::{Outcome, source};

pub async fn run(args: ForgetArgs) -> anyhow::Result<Outcome> {
    let settings = source::settings_of(&args.settings.flake, args.settings.config.as_deref())?;
    let client = source::proxmox_client(&settings)?;
    let request = ReadRequest {
        host_names: BTreeSet::from([args.host.clone()]),
        concurrency: settings.concurrency.api,
    };
    let live = read_cluster(&client, &request).await.context("failed to read the cluster")?;
    let Some(vm) = managed_vm(&live, &args.host, args.vmid)? else {
        println!("host `{}`: no VM is managed by nixprox for it; nothing to forget", args.host);
        return Ok(Outcome::Success);
    };
    let options = ApplyOptions::from_settings(&settings);
    let released = release_vm(&client, options.step_retry, options.task_timeout, vm.kind, &vm.node, vm.vmid)
        .await
        .with_context(|| format!("failed to forget host `{}`", args.host))?;
    match released {
        Released::Done { warnings } => {
            for warning in warnings {
                tracing::warn!("{warning}");
            }
            let (noun, option) = match vm.kind {
                crate::spec::GuestKind::Vm => ("VM", "vm"),
                crate::spec::GuestKind::Container => ("container", "container"),
            };
            println!(
                "nixprox no longer manages {noun} {} `{}` on node `{}` (host `{}`): its `nixprox` tag and metadata block are removed; the {noun}, its disks and the rest of its notes are as they were.\nWhile `{}` is in the flake, the next plan adopts the {noun} again: remove the host, or set `nixprox.{option}.keep = true` on it.",
                vm.vmid, vm.name, vm.node, args.host, args.host
            );
        }
        Released::AlreadyUnmanaged => {
            println!(
                "VM {} `{}`: nothing marks it as nixprox's any more; nothing to forget",
                vm.vmid, vm.name
            );
        }
    }
    Ok(Outcome::Success)
}

/// The VM nixprox manages for `host`: with `vmid`, that VM (when nixprox's block does not name
/// another host); else the one whose metadata block names the host, or the one tagged
/// `nixprox` with the host's name. Several: the caller must pick with `--vmid`.
fn managed_vm<'a>(live: &'a [LiveVm], host: &str, vmid: Option<u32>) -> anyhow::Result<Option<&'a LiveVm>> {
    let recorded = |vm: &LiveVm| vm.config.as_ref().and_then(|c| c.metadata.as_ref()).map(|m| m.host.clone());
    if let Some(vmid) = vmid {
        let Some(vm) = live.iter().find(|vm| vm.vmid == vmid && !vm.template) else {
            bail!("no VM {vmid} in the cluster (check `--vmid`)");
        };
        if let Some(other) = recorded(vm).filter(|h| h != host) {
            bail!(
                "VM {vmid}'s metadata block names host `{other}`, not `{host}` (run `nixprox forget {other} --vmid {vmid}`)"
            );
        }
        return Ok(Some(vm));
    }
    let mut found: Vec<&LiveVm> = live
        .iter()
        .filter(|vm| !vm.template)
        .filter(|vm| match recorded(vm) {
            Some(recorded) => recorded == host,
            None => vm.tags.contains(MANAGED_TAG) && vm.name == host,
        })
        .collect();
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => {
            let ids: Vec<String> = found.iter().map(|vm| vm.vmid.to_string()).collect();
            bail!("several VMs belong to host `{host}` (VMIDs {}): pick one with `--vmid`", ids.join(", "))
        }
    }
}
