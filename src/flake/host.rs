//! What the flake declares about one host: the raw `nixprox` options ([`HostDecl`], exactly as
//! `nix eval --json` prints them) and the resolved form the planner consumes ([`DesiredHost`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::{Bios, VmSpec};

/// `config.nixprox` of one host as the evaluation prints it (camelCase, as in
/// `nix/module.nix`). Unknown fields are rejected so that module and binary cannot drift apart
/// silently. Serialised the same way into plan shards (`plan --shard`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostDecl {
    pub vm: VmDecl,
    pub bootstrap: BootstrapDecl,
    pub address: Option<String>,
    pub ssh: SshDecl,
    pub install: InstallDecl,
    pub deploy: DeployDecl,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmDecl {
    /// Already resolved by the evaluation (`eval.nix`): `vm.name`, else an explicitly set
    /// `networking.hostName`, else the attribute name.
    pub name: String,
    pub node: Option<String>,
    pub id: Option<u32>,
    pub cores: u32,
    pub sockets: u32,
    pub cpu_type: String,
    pub memory: u64,
    pub balloon: Option<u64>,
    pub bios: Bios,
    pub machine: Option<String>,
    pub agent: bool,
    pub disks: BTreeMap<String, DiskDecl>,
    pub networks: BTreeMap<String, NetworkDecl>,
    pub tags: Vec<String>,
    pub description: String,
    pub on_boot: bool,
    pub protection: bool,
    pub pool: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskDecl {
    pub storage: Option<String>,
    pub size: String,
    pub serial: Option<String>,
    pub discard: bool,
    pub ssd: bool,
    pub iothread: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkDecl {
    pub bridge: Option<String>,
    pub vlan: Option<u16>,
    pub model: String,
    pub mac_address: Option<String>,
    pub firewall: bool,
}

/// A template is named either by VM name or by VMID (the module accepts both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TemplateRef {
    Id(u32),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapDecl {
    pub template: Option<TemplateRef>,
    pub iso: Option<String>,
    pub user: String,
    pub ssh_keys: Vec<String>,
    pub ip_config: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshDecl {
    pub user: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildOn {
    Auto,
    Local,
    Remote,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstallDecl {
    pub build_on: BuildOn,
    pub extra_files: Option<String>,
    pub kexec_image: Option<String>,
    /// Target path → `file:/path` or `env:VAR`.
    pub disk_encryption_keys: BTreeMap<String, String>,
    pub host_key_file: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployStrategy {
    Switch,
    Boot,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeployDecl {
    pub strategy: DeployStrategy,
    pub rollback: bool,
    pub confirm_timeout: u64,
    pub allow_failed_units: bool,
    pub allow_reboot: bool,
}

/// How a new VM first boots, resolved against the settings' defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Bootstrap {
    /// Full clone of a cloud-init template.
    Template { template: TemplateRef, user: String, ssh_keys: Vec<String>, ip_config: String },
    /// Created from scratch, booting an installer ISO.
    Iso { iso: String },
}

/// The evaluated system of a host: what `install`/`switch` put on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemEval {
    /// Out path of `system.build.toplevel`.
    pub toplevel: String,
    /// `sha256:<hex>` of the evaluated `disko.devices`; a change means a reinstall.
    pub disk_layout_hash: String,
}

/// One host as the planner sees it: the flake's declaration with every default resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredHost {
    /// Attribute name under `nixosConfigurations`.
    pub host: String,
    pub node: String,
    pub vmid: Option<u32>,
    pub spec: VmSpec,
    pub bootstrap: Bootstrap,
    pub address: Option<String>,
    pub ssh: SshDecl,
    pub install: InstallDecl,
    pub deploy: DeployDecl,
    pub system: SystemEval,
}
