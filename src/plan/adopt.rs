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
//! **Converting.** A VM to adopt whose QEMU guest agent reports another OS than NixOS
//! (`get-osinfo`, read by the plan with its own token: [`crate::proxmox::guest`]) is planned as
//! `adopt` + `reinstall`, never a switch: apply pins the SSH host key the machine presents now
//! (`nixprox.convert.hostKey`, a public key, or read through the guest agent), checks the
//! machine against it without logging in, tags the VM and records that key, then nixos-anywhere
//! installs the flake's system (wiping the disks) and the host gets a new key. Only the OS's
//! os-release `ID` enters the plan (`os: debian → nixos`), so the plan id stays the same while
//! the guest updates; an OS apply reads differently (or not at all) makes apply's plan differ,
//! and apply refuses it as a changed plan, naming the host. The plan cannot read the OS (agent
//! off, not answering, or the plan token lacks `VM.GuestAgent.Audit`): it plans the in-place
//! adoption, and apply checks over SSH that the VM runs NixOS.
//!
//! **Letting go.** A host declaring `nixprox.vm.keep = true` gets `release` for a VM nixprox
//! manages (its tag and metadata block are removed, the VM is left as it is), and nothing
//! otherwise: a kept host's VM is never created, adopted or changed.

use serde_json::json;

use crate::config::Policies;
use crate::flake::DesiredHost;
use crate::flake::host::DeployStrategy;
use crate::proxmox::guest::GuestOs;
use crate::proxmox::{LiveConfig, LiveVm};
use crate::spec::KEXEC_MIN_MEMORY_MIB;

use super::model::{Action, ActionKind, Blocked, Change};

/// The os-release `ID` of a VM to adopt whose guest agent reports another OS than NixOS.
pub(super) fn other_os(config: &LiveConfig) -> Option<&str> {
    match &config.guest_os {
        Some(GuestOs::Read { id, .. }) if id != "nixos" => Some(id),
        _ => None,
    }
}

/// The setting that opens one host's conversion (the reason names the global one too).
const CONVERT_SETTING: &str = "nixprox.allow.reinstall";

/// `adopt` and `reinstall` of a VM that runs `os`, not NixOS. `policies` are the host's own
/// ([`super::gates::for_host`]). Both are blocked together: nothing changes on a VM whose
/// conversion cannot run.
pub(super) fn convert_actions(
    host: &DesiredHost,
    live: &LiveVm,
    config: &LiveConfig,
    os: &str,
    policies: Policies,
) -> (Action, Action) {
    let vmid = live.vmid;
    let source = if host.convert.host_key.is_some() {
        "the declared `nixprox.convert.hostKey`"
    } else {
        "read through its QEMU guest agent from /etc/ssh/ssh_host_ed25519_key.pub, over the Proxmox API"
    };
    let adopt = Action {
        kind: ActionKind::Adopt,
        reason: format!(
            "VM {vmid} is named like this host but not tagged `nixprox`, and its guest agent reports `{os}`, not NixOS: nixprox converts it; apply first pins the SSH host key it presents now ({source}) and checks the machine against it without logging in, and changes nothing otherwise"
        ),
        changes: vec![
            Change {
                field: "managed".into(),
                before: Some(json!(false)),
                after: Some(json!(true)),
                effect: None,
            },
            Change { field: "os".into(), before: Some(json!(os)), after: Some(json!("nixos")), effect: None },
        ],
        blocked: None,
    };
    let memory = if host.spec.memory_mib < KEXEC_MIN_MEMORY_MIB {
        format!(" (memory raised to {KEXEC_MIN_MEMORY_MIB} MiB for kexec, restored after)")
    } else {
        String::new()
    };
    let reinstall = Action {
        kind: ActionKind::Reinstall,
        reason: format!(
            "VM {vmid} runs `{os}`, not NixOS: nixos-anywhere installs the flake's system on it, which wipes its disks (laid out as `disko.devices` says), only once the machine presented the pinned key; the install gives the host a new SSH host key{memory}"
        ),
        changes: vec![
            Change {
                field: "system".into(),
                before: None,
                after: Some(json!(host.system.toplevel)),
                effect: None,
            },
            Change {
                field: "diskLayout".into(),
                before: None,
                after: Some(json!(host.system.disk_layout_hash)),
                effect: None,
            },
        ],
        blocked: None,
    };
    let addressable = host.address.is_some() || config.spec.agent;
    let blocked = if config.spec.protection {
        Some(Blocked {
            reason: "the VM is protected in Proxmox; nixprox never reinstalls a protected VM".into(),
            setting: None,
        })
    } else if !host.system.manages_disks() {
        Some(Blocked {
            reason: "the host declares no `disko.devices`: nixos-anywhere lays out the disks with it, so converting needs one (declare the layout the new system gets)".into(),
            setting: None,
        })
    } else if host.ssh.host_key.is_some() && host.install.host_key_file.is_none() {
        Some(Blocked {
            reason: "the host declares `nixprox.ssh.hostKey`, the key its new system must present, so the install must put that key in place: set `nixprox.install.hostKeyFile` to its private half on the runner, or unset `nixprox.ssh.hostKey` (the key it presents now goes in `nixprox.convert.hostKey`)".into(),
            setting: None,
        })
    } else if !addressable {
        Some(Blocked {
            reason:
                "nixprox cannot find its address: set `nixprox.address`, or enable the VM's QEMU guest agent"
                    .into(),
            setting: None,
        })
    } else if !policies.allow_reinstall {
        Some(Blocked {
            reason: "converting wipes the VM's disks; the host's own option allows it for this host alone (`policies.allow_reinstall` would allow every host's)".into(),
            setting: Some(CONVERT_SETTING.into()),
        })
    } else {
        None
    };
    match blocked {
        None => (adopt, reinstall),
        Some(blocked) => {
            let waits = Blocked {
                reason: format!(
                    "nixprox adopts VM {vmid} only together with its conversion, which is blocked: {}",
                    blocked.reason
                ),
                setting: blocked.setting.clone(),
            };
            (Action { blocked: Some(waits), ..adopt }, Action { blocked: Some(blocked), ..reinstall })
        }
    }
}

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
