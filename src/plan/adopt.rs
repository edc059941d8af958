//! Taking over and letting go.
//!
//! **Adopting in place.** A VM named like a host (or with its `nixprox.vm.id`) that nixprox
//! does not manage yet is adopted without a reinstall: `adopt`, then `switch` to the flake's
//! system. Whether the VM runs NixOS, and which system, is read over SSH when applying, not
//! when planning: the plan job of a pull request usually has no SSH key, and plan and apply
//! must compute the same plan for the same cluster and flake. So the plan depends only on
//! what both can see (the flake and the VM's config), and apply checks the rest as
//! preconditions before it writes anything: the machine presents the pinned host key, and it
//! runs NixOS. A VM that does not is left untouched and its host fails, naming the way to a
//! gated `reinstall`. The switch is a no-op when the VM already runs the flake's system.
//!
//! The host key is pinned without trusting the network: declared (`nixprox.ssh.hostKey`) or
//! read through the QEMU guest agent over the TLS-pinned Proxmox API. With neither possible
//! the adoption is blocked and says which to set; nixprox never trusts a key on first use.
//!
//! **Letting go.** A host declaring `nixprox.vm.keep = true` gets `release` for a VM nixprox
//! manages (its tag and metadata block are removed, the VM is left as it is), and nothing
//! otherwise: a kept host's VM is never created, adopted or changed.

use serde_json::json;

use crate::flake::DesiredHost;
use crate::flake::host::DeployStrategy;
use crate::proxmox::{LiveConfig, LiveVm};

use super::model::{Action, ActionKind, Blocked, Change};

/// Where apply gets the host key of a VM it adopts.
fn key_source(host: &DesiredHost, config: &LiveConfig) -> Option<&'static str> {
    if host.ssh.host_key.is_some() {
        Some("the declared `nixprox.ssh.hostKey`")
    } else if config.spec.agent {
        Some("the ed25519 host key its QEMU guest agent reads from it (over the Proxmox API)")
    } else {
        None
    }
}

/// The `adopt` action of an unmanaged VM: runnable when apply can pin its host key and find
/// its address without trusting the network, blocked (saying what to set) otherwise.
pub(super) fn adopt_action(host: &DesiredHost, live: &LiveVm, config: &LiveConfig) -> Action {
    let managed = Change {
        field: "managed".into(),
        before: Some(json!(false)),
        after: Some(json!(true)),
        effect: None,
    };
    let vmid = live.vmid;
    let addressable = host.address.is_some() || config.spec.agent;
    let (reason, blocked) = match key_source(host, config) {
        Some(source) if addressable => (
            format!(
                "VM {vmid} is named like this host but not tagged `nixprox`: nixprox adopts it in place, without a reinstall; apply first checks over SSH that it runs NixOS and presents {source}, and changes nothing otherwise"
            ),
            None,
        ),
        found => {
            let why = if found.is_none() {
                "nixprox cannot verify its SSH host key, and never trusts a key on first use: declare the key in `nixprox.ssh.hostKey` (the line of /etc/ssh/ssh_host_ed25519_key.pub on the VM), or enable the VM's QEMU guest agent (`agent: 1` in Proxmox and qemu-guest-agent running in the VM) so nixprox reads it through the Proxmox API"
            } else {
                "nixprox cannot find its address: set `nixprox.address`, or enable the VM's QEMU guest agent (`agent: 1` in Proxmox and qemu-guest-agent running in the VM)"
            };
            (
                format!("VM {vmid} is named like this host but not tagged `nixprox`"),
                Some(Blocked { reason: format!("before adopting VM {vmid}, {why}"), setting: None }),
            )
        }
    };
    Action { kind: ActionKind::Adopt, reason, changes: vec![managed], blocked }
}

/// The `switch` of a VM adopted in place: to the flake's system, unless apply finds the VM
/// already running it (`deploy.strategy = "none"`: nothing).
pub(super) fn adopted_switch(host: &DesiredHost) -> Option<Action> {
    let strategy = match host.deploy.strategy {
        DeployStrategy::None => return None,
        DeployStrategy::Switch => "switch",
        DeployStrategy::Boot => "boot",
    };
    Some(Action {
        kind: ActionKind::Switch,
        reason: format!(
            "adopted in place: apply reads the system the VM runs (`/run/current-system`, over SSH) and switches it to the flake's system, or does nothing when it already runs it (deploy.strategy = {strategy})"
        ),
        changes: vec![Change {
            field: "system".into(),
            before: None,
            after: Some(json!(host.system.toplevel)),
            effect: None,
        }],
        blocked: None,
    })
}

/// The actions of a host with `nixprox.vm.keep`: `release` of the VM nixprox manages for it
/// (`managed` is the match: a tagged VM, or one whose metadata block names the host), else
/// none. `unreadable` is why the VM's block cannot be read, if it cannot.
pub(super) fn plan_keep(vm: Option<&LiveVm>, unreadable: Option<&str>) -> Vec<Action> {
    let Some(vm) = vm else { return Vec::new() };
    let release = Action {
        kind: ActionKind::Release,
        reason: match vm.kind {
            crate::spec::GuestKind::Vm => format!(
                "`nixprox.vm.keep`: nixprox lets go of VM {}: it removes the `nixprox` tag and its metadata block, and leaves the VM, its disks and the rest of its notes as they are",
                vm.vmid
            ),
            crate::spec::GuestKind::Container => format!(
                "`nixprox.container.keep`: nixprox lets go of container {}: it removes the `nixprox` tag and its metadata block, and leaves the container, its volumes and the rest of its notes as they are",
                vm.vmid
            ),
        },
        changes: vec![Change {
            field: "managed".into(),
            before: Some(json!(true)),
            after: Some(json!(false)),
            effect: None,
        }],
        blocked: unreadable.map(|why| Blocked {
            reason: format!(
                "the nixprox block in the notes of VM {} cannot be read: {why}; nixprox does not rewrite a block it cannot read",
                vm.vmid
            ),
            setting: None,
        }),
    };
    vec![release]
}

/// The `noop` reason of a kept host with nothing to release.
pub(super) fn kept_reason(vm: Option<&LiveVm>) -> String {
    match vm {
        Some(vm) => format!(
            "kept (`nixprox.vm.keep`): VM {} is not managed by nixprox, which leaves it alone",
            vm.vmid
        ),
        None => "kept (`nixprox.vm.keep`): no VM is managed for this host, and nixprox creates none".into(),
    }
}
