//! What changes inside NixOS, host by host: the probes of the pull request's base against its
//! head, from evaluation alone (`src/flake/nix/probes.nix` reads them, nothing is built).
//!
//! [`probes`] decodes what nix printed, [`diff`] compares two systems' probes. Pure: no I/O,
//! so every probe kind is unit-tested here. The result, [`NixosChanges`], rides on the plan's
//! `HostPlan` and is shown by every rendering; it never enters the plan id.

pub mod diff;
pub mod probes;

use serde::Serialize;
use serde_json::Value;

pub use diff::{BaseProbes, HeadProbes, changes_for};
pub use probes::{Entry, Probe, ProbeSet};

/// The kinds of probe, in the order summaries list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// `system.nixos.release` (entry `nixos`) and `system.nixos.revision` (entry `nixpkgs`).
    Release,
    /// `boot.kernelPackages.kernel`: entries `version`, `build` (its store path) and `initrd`
    /// (`system.build.initialRamdisk`).
    Kernel,
    /// `boot.kernelParams`, one entry per parameter.
    KernelParams,
    /// `environment.systemPackages` by name; the value lists the versions.
    Packages,
    /// Enabled `systemd.services` by name; the value is the unit's store path.
    Services,
    /// Open ports (`22/tcp`, `60000-61000/udp`, `3000/tcp (wg0)`), trusted interfaces
    /// (`trusted wg0`) and `enabled`.
    Firewall,
    /// Users that can log in or hold an admin group; the value lists their admin groups.
    Users,
    /// `fileSystems` by mount point; the value is `device (fsType)`.
    FileSystems,
    /// `nix.settings.substituters` and `extra-substituters`.
    Substituters,
    /// The user's own probes, `nixprox.summary.extra`.
    Extra,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 10] = [
        ProbeKind::Release,
        ProbeKind::Kernel,
        ProbeKind::KernelParams,
        ProbeKind::Packages,
        ProbeKind::Services,
        ProbeKind::Firewall,
        ProbeKind::Users,
        ProbeKind::FileSystems,
        ProbeKind::Substituters,
        ProbeKind::Extra,
    ];

    /// The name probes.nix prints, and JSON uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Release => "release",
            ProbeKind::Kernel => "kernel",
            ProbeKind::KernelParams => "kernel_params",
            ProbeKind::Packages => "packages",
            ProbeKind::Services => "services",
            ProbeKind::Firewall => "firewall",
            ProbeKind::Users => "users",
            ProbeKind::FileSystems => "file_systems",
            ProbeKind::Substituters => "substituters",
            ProbeKind::Extra => "extra",
        }
    }

    /// Whether a change of this kind only takes effect after a reboot.
    pub fn needs_reboot(self) -> bool {
        matches!(self, ProbeKind::Kernel | ProbeKind::KernelParams)
    }
}

/// One entry that differs between the base and the head. `None` means absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeChange {
    pub probe: ProbeKind,
    /// The entry: a package, service, port, user, mount point, `version`, …
    pub name: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// Which side of the comparison a probe failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Base,
    Head,
}

/// A probe (or one entry of it) that threw: it is left out of the comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedProbe {
    pub probe: ProbeKind,
    /// The entry, when only one entry failed (`extra`, `services`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub side: Side,
}

/// A host's NixOS changes between the base and the head (`hosts[].nixos_changes` in JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NixosChanges {
    /// Both sides evaluated: what differs. Empty when no probed option changed.
    Compared {
        /// A kernel, kernel-parameter or initrd change: the new system runs only after a reboot.
        reboot_needed: bool,
        changes: Vec<ProbeChange>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        failed: Vec<FailedProbe>,
    },
    /// The base has no configuration of this name.
    NewHost,
    /// Nothing to compare (the base could not be fetched or evaluated, …); `reason` is one line.
    Unavailable { reason: String },
}
