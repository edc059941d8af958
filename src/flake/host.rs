//! What the flake declares about one host: the raw `nixprox` options ([`HostDecl`], exactly as
//! `nix eval --json` prints them) and the resolved form the planner consumes ([`DesiredHost`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::container::ContainerSpec;
use crate::spec::{Bios, GuestKind, ImageFormat, VmSpec};

/// `config.nixprox` of one host as the evaluation prints it (camelCase, as in
/// `nix/module.nix`). Unknown fields are rejected so that module and binary cannot drift apart
/// silently. Serialised the same way into plan shards (`plan --shard`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostDecl {
    pub vm: VmDecl,
    pub bootstrap: BootstrapDecl,
    pub address: Option<String>,
    /// `nixprox.network`: the module derives `bootstrap.ipConfig` from it (and the host's
    /// NixOS networking may read it); accepted here, read by nothing else.
    #[serde(default)]
    pub network: StaticNetworkDecl,
    pub ssh: SshDecl,
    pub install: InstallDecl,
    pub deploy: DeployDecl,
    /// `nixprox.allow` (absent from modules older than it: nothing allowed).
    #[serde(default)]
    pub allow: AllowDecl,
    /// `nixprox.convert` (absent from modules older than it).
    #[serde(default)]
    pub convert: ConvertDecl,
    /// `nixprox.container` (nix/container.nix): with `enable`, the host is a container. Absent
    /// from modules older than it; left out of shards when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerDecl>,
}

/// `nixprox.allow`: this host's own opt-ins to destructive actions, beside the global
/// `policies` (either one opens the gate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowDecl {
    pub reinstall: bool,
    pub replace: bool,
    pub detach_disks: bool,
}

impl AllowDecl {
    /// Nothing allowed: left out of the plan id, so older plans keep their ids.
    pub fn is_none(&self) -> bool {
        *self == AllowDecl::default()
    }
}

/// `nixprox.convert`: what converting a VM that does not run NixOS needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConvertDecl {
    /// The public SSH host key the VM presents before its conversion.
    pub host_key: Option<String>,
}

impl ConvertDecl {
    pub fn is_none(&self) -> bool {
        self.host_key.is_none()
    }
}

impl HostDecl {
    /// The container declaration when the host is a container (`nixprox.container.enable`).
    pub fn enabled_container(&self) -> Option<&ContainerDecl> {
        self.container.as_ref().filter(|c| c.enable)
    }
}

/// `nixprox.container` as the evaluation prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerDecl {
    pub enable: bool,
    /// Resolved by the evaluation like `vm.name`.
    pub hostname: String,
    pub node: Option<String>,
    pub id: Option<u32>,
    pub template: Option<String>,
    pub ssh_keys: Vec<String>,
    pub cores: Option<u32>,
    pub memory: u64,
    pub swap: u64,
    pub rootfs: RootfsDecl,
    pub mount_points: BTreeMap<String, MountPointDecl>,
    pub networks: BTreeMap<String, CtNetworkDecl>,
    pub features: FeaturesDecl,
    pub unprivileged: bool,
    pub on_boot: bool,
    pub startup: Option<String>,
    pub tags: Vec<String>,
    pub description: String,
    pub protection: bool,
    pub pool: Option<String>,
    pub keep: bool,
    /// `nixprox.container.tarball` without `package` (its store paths are in
    /// [`SystemEval::tarball`]).
    #[serde(default)]
    pub tarball: TarballDecl,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TarballDecl {
    pub enable: bool,
    pub storage: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RootfsDecl {
    pub storage: Option<String>,
    pub size: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MountPointDecl {
    pub storage: Option<String>,
    pub size: String,
    pub path: String,
    pub backup: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CtNetworkDecl {
    pub name: String,
    pub bridge: Option<String>,
    pub vlan: Option<u16>,
    pub mac_address: Option<String>,
    pub firewall: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeaturesDecl {
    pub nesting: bool,
    pub keyctl: bool,
    pub fuse: bool,
}

/// A container host, resolved: its spec beyond the shared settings, its template and the keys
/// Proxmox authorises at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredContainer {
    pub spec: ContainerSpec,
    /// `ostemplate` of a create (`<storage>:vztmpl/<file>`) named by the user; `None`: none
    /// declared.
    pub template: Option<String>,
    /// The host's own template, built from the flake and uploaded (`tarball.enable`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tarball: Option<TemplateBuild>,
    /// `ssh-public-keys` of a create: never compared, never an update.
    pub ssh_keys: Vec<String>,
}

/// A container template built from the flake: its package and the storage it goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateBuild {
    pub package: ImageEval,
    pub storage: String,
}

/// `nixprox.network`: the prefix length and gateway that go with a static `nixprox.address`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticNetworkDecl {
    pub prefix_length: Option<u8>,
    pub gateway: Option<String>,
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
    /// `nixprox.vm.keep`: let go of the VM (absent from modules older than it: off).
    #[serde(default)]
    pub keep: bool,
    /// `nixprox.vm.cpuFlags`: `+aes`, `-pcid`, … added to the flags `cpuType` may carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_flags: Vec<String>,
    /// `nixprox.vm.numa`; `None` keeps what Proxmox has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa: Option<bool>,
    /// `nixprox.vm.serial`: `serial0: socket`; `None` keeps what Proxmox has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<bool>,
    /// `nixprox.vm.vga`: the display type; `None` keeps what Proxmox has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vga: Option<String>,
    /// `nixprox.vm.startup`; `None` keeps what Proxmox has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<StartupDecl>,
    /// `nixprox.vm.pci`: PCI devices through resource mappings, by slot.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pci: BTreeMap<String, PciDecl>,
    /// `nixprox.vm.usb`: USB devices through resource mappings, by slot.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub usb: BTreeMap<String, UsbDecl>,
    /// `nixprox.vm.virtiofs`: host directories through directory mappings, by slot.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub virtiofs: BTreeMap<String, VirtiofsDecl>,
    /// `nixprox.vm.tpm`; `None` keeps what Proxmox has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmDecl>,
    /// `nixprox.vm.efi`.
    #[serde(default, skip_serializing_if = "EfiDecl::is_default")]
    pub efi: EfiDecl,
    /// `nixprox.vm.extraConfig`: Proxmox keys nixprox has no option for, compared exactly.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_config: BTreeMap<String, String>,
}

/// `nixprox.vm.virtiofs.<virtiofsN>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtiofsDecl {
    pub mapping: String,
    pub cache: String,
    pub direct_io: bool,
    pub expose_acl: bool,
    pub expose_xattr: bool,
}

/// `nixprox.vm.tpm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TpmDecl {
    pub version: String,
    pub storage: Option<String>,
}

/// `nixprox.vm.efi`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EfiDecl {
    pub pre_enrolled_keys: Option<bool>,
}

impl EfiDecl {
    fn is_default(&self) -> bool {
        *self == EfiDecl::default()
    }
}

/// `nixprox.vm.pci.<hostpciN>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PciDecl {
    pub mapping: String,
    pub pcie: bool,
    pub rombar: bool,
    pub x_vga: bool,
}

/// `nixprox.vm.usb.<usbN>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsbDecl {
    pub mapping: String,
    pub usb3: bool,
}

/// `nixprox.vm.startup`: the node's start and shutdown order for the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartupDecl {
    pub order: Option<u32>,
    pub up: Option<u32>,
    pub down: Option<u32>,
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
    /// Absent from modules older than the image bootstrap: then off.
    #[serde(default)]
    pub image: ImageDecl,
}

/// `nixprox.bootstrap.image` without `package`, whose store path is evaluated with the system
/// (phase two: evaluating an image derivation can be as expensive as the system itself).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageDecl {
    pub enable: bool,
    pub format: ImageFormat,
    pub storage: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshDecl {
    pub user: String,
    pub port: u16,
    /// `nixprox.ssh.hostKey`: the host's SSH public key line, pinned without trusting the
    /// network. Absent from modules older than it, and left out of the plan id when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
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
    /// Neither a template nor an ISO is declared (nor `defaults.template`): fine for a host
    /// whose VM exists; a plan that would create or replace its VM blocks that instead.
    Undeclared,
    /// Created from scratch with its disks imported from the host's own images: it boots
    /// straight into its system (no installer).
    Image(ImageSource),
}

/// The image a host boots from, resolved: what the executor builds, names and uploads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSource {
    pub package: ImageEval,
    pub format: ImageFormat,
    /// The storage the images are uploaded to (`import` content).
    pub storage: String,
}

/// The evaluated system of a host: what `install`/`switch` put on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemEval {
    /// Out path of `system.build.toplevel`.
    pub toplevel: String,
    /// `sha256:<hex>` of the evaluated `disko.devices`; a change means a reinstall.
    pub disk_layout_hash: String,
    /// The image package of a host with `bootstrap.image.enable` (and a package): evaluated,
    /// never built. Left out of the JSON when absent, so other hosts' plan ids do not change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageEval>,
    /// The template package of a container host with `container.tarball.enable`; left out of
    /// the JSON when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tarball: Option<ImageEval>,
    /// An ISO or image host whose kernel parameters name `console=ttyS0`: its new VM gets a
    /// serial console when `nixprox.vm.serial` is null. Left out of the JSON when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub serial_console: bool,
}

/// The disk-layout hash of a host that declares no `disko.devices` (or an empty one): `eval.nix`
/// hashes `null`. Such a host's layout is not nixprox's to manage: it is never reinstalled for
/// its layout, and converting a VM needs a declared one.
pub const NO_DISK_LAYOUT: &str = "sha256:74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b";

impl SystemEval {
    /// Whether the host declares a disk layout (`disko.devices` with at least one device).
    pub fn manages_disks(&self) -> bool {
        self.disk_layout_hash != NO_DISK_LAYOUT
    }
}

/// Store paths of an image package (`nixprox.bootstrap.image.package`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageEval {
    /// The package's out path, whose hash names the files on the storage (`storePath` in the
    /// evaluation's JSON, where an `outPath` key would turn the object into a string).
    #[serde(alias = "storePath")]
    pub out_path: String,
    /// Its derivation (absent when the package is a plain store path).
    pub drv_path: Option<String>,
    /// Image file name (without extension) → size as declared, when the package is disko's
    /// default (`disko.devices.disk.<name>.imageSize`, by `imageName`): what planning can know
    /// about an image's size without building it. Empty for any other package.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub image_sizes: BTreeMap<String, String>,
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
    /// `nixprox.vm.keep`: nixprox lets go of the VM (`release`) and never creates, adopts or
    /// changes it. Left out of the plan id when off.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keep: bool,
    /// `nixprox.allow`: the host's own gates. Left out of the plan id when nothing is allowed.
    #[serde(skip_serializing_if = "AllowDecl::is_none")]
    pub allow: AllowDecl,
    /// `nixprox.convert`. Left out of the plan id when unset.
    #[serde(skip_serializing_if = "ConvertDecl::is_none")]
    pub convert: ConvertDecl,
    /// Set when the host is a container (the guest kind); its shared settings (name, tags,
    /// description, onboot, protection, pool) are in `spec`. Left out of the plan id for VMs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<DesiredContainer>,
}

impl DesiredHost {
    /// The host's guest kind.
    pub fn kind(&self) -> GuestKind {
        if self.container.is_some() { GuestKind::Container } else { GuestKind::Vm }
    }
}
