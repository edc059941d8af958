//! `nixprox.yaml`: where the cluster is, defaults for what hosts leave open, policies for
//! destructive actions and concurrency bounds. Credentials never live here: they come from
//! the environment (`PROXMOX_API_TOKEN`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file name looked up at the flake root when `--config` is not given.
pub const FILE_NAME: &str = "nixprox.yaml";

/// The whole settings file. Every section is optional; unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub proxmox: ProxmoxSettings,
    pub defaults: Defaults,
    pub policies: Policies,
    pub concurrency: Concurrency,
    pub ssh: SshSettings,
    pub install: InstallSettings,
    pub apply: ApplySettings,
    pub eval: EvalSettings,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxmoxSettings {
    /// `https://pve.example:8006`; `PROXMOX_URL` overrides it.
    pub url: Option<String>,
    /// PEM file of the CA (or self-signed certificate) the API's certificate must chain to.
    pub ca_cert: Option<PathBuf>,
    /// Skip TLS verification entirely. Only for throwaway labs.
    pub insecure: bool,
    /// Seconds before one API request is abandoned.
    pub timeout: u64,
    /// Attempts for a request that failed transiently (5xx, reset, lock timeout).
    pub retries: u32,
}

impl Default for ProxmoxSettings {
    fn default() -> Self {
        ProxmoxSettings { url: None, ca_cert: None, insecure: false, timeout: 30, retries: 4 }
    }
}

/// Values used where a host leaves a `null`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    pub node: Option<String>,
    pub storage: Option<String>,
    pub bridge: Option<String>,
    /// Template name or VMID.
    pub template: Option<String>,
    /// File-based storage with the `import` content type for image hosts' uploads.
    pub image_storage: Option<String>,
}

/// Destructive actions: all off unless the settings file turns them on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policies {
    /// Destroy `nixprox`-tagged VMs that no host declares any more.
    pub prune_orphans: bool,
    /// Wipe and reinstall a host whose disk layout changed.
    pub allow_reinstall: bool,
    /// Destroy and recreate a VM for changes Proxmox cannot make in place.
    pub allow_replace: bool,
    /// Detach disks the flake does not declare from existing VMs (never the boot disk).
    /// Left out of the serialised form while off, so plan ids computed before it existed stay.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_detach_disks: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Concurrency {
    /// Hosts applied at once.
    pub hosts: usize,
    /// Hosts applied at once on one Proxmox node.
    pub per_node: usize,
    /// Concurrent Proxmox API reads while planning. 32 reads the configs of 500 VMs in about
    /// 16 round trips (under 1.5 s at 50 ms latency, docs/performance.md); only GETs, which a
    /// PVE node answers without taking any lock.
    pub api: usize,
    /// Concurrent `nix eval` processes; 0 = number of CPUs.
    pub eval_jobs: usize,
    /// Image uploads at once (image hosts): each one streams a whole disk image to a node.
    pub uploads: usize,
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency { hosts: 16, per_node: 8, api: 32, eval_jobs: 0, uploads: 2 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshSettings {
    /// Overrides every host's `nixprox.ssh.user` when set.
    pub user: Option<String>,
    /// Private key file used for SSH and nixos-anywhere.
    pub key: Option<PathBuf>,
    /// Environment variable holding the private key's text (CI secrets).
    pub key_env: Option<String>,
    /// Seconds to wait for SSH to answer after a boot or reboot.
    pub connect_timeout: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstallSettings {
    /// nixos-anywhere command line prefix; default `nixos-anywhere` on PATH, else
    /// `nix run github:nix-community/nixos-anywhere --`.
    pub command: Option<Vec<String>>,
    /// Seconds one install may take.
    pub timeout: u64,
}

impl Default for InstallSettings {
    fn default() -> Self {
        InstallSettings { command: None, timeout: 1800 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApplySettings {
    /// Seconds to wait for a new VM's address (static answer, or the guest agent).
    pub address_timeout: u64,
    /// Seconds a guest gets to shut down cleanly before it is stopped.
    pub shutdown_timeout: u64,
    /// After applying, remove the `nixprox-*` image files no host of the flake refers to any
    /// more (what `nixprox gc-images --delete` does). Off: the files stay until asked.
    pub gc_images: bool,
}

impl Default for ApplySettings {
    fn default() -> Self {
        ApplySettings { address_timeout: 300, shutdown_timeout: 120, gc_images: false }
    }
}

/// How the flake is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSettings {
    /// Resident memory of all `nix eval` processes of one run together; a process that would
    /// grow past its share is replaced (like nix-eval-jobs' `--max-memory-size`).
    pub max_memory: MemorySize,
}

/// `eval.max_memory` when the settings do not say: room for a few NixOS evaluations at once
/// on a 7 GiB CI runner (GitHub's standard Linux runner for private repositories), leaving the
/// rest to nixprox, the runner and the page cache.
pub const DEFAULT_MAX_MEMORY: u64 = 4 << 30;

/// An amount of memory written like a disk size (`4G`, `1536M`); a bare number is MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySize(pub u64);

impl MemorySize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl Default for MemorySize {
    fn default() -> Self {
        MemorySize(DEFAULT_MAX_MEMORY)
    }
}

impl Serialize for MemorySize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        const GIB: u64 = 1 << 30;
        if self.0.is_multiple_of(GIB) {
            serializer.serialize_str(&format!("{}G", self.0 / GIB))
        } else {
            serializer.serialize_str(&format!("{}M", self.0 >> 20))
        }
    }
}

impl<'de> Deserialize<'de> for MemorySize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor rather than an untagged enum, so an error keeps its line and column.
        struct Visitor;
        const EXPECTED: &str = "a memory size of at least 64M, like `4G` or `1536M` (a bare number is MiB)";
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MemorySize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_u64<E: serde::de::Error>(self, mib: u64) -> Result<MemorySize, E> {
                checked(mib.checked_mul(1 << 20))
            }
            fn visit_i64<E: serde::de::Error>(self, mib: i64) -> Result<MemorySize, E> {
                checked(u64::try_from(mib).ok().and_then(|m| m.checked_mul(1 << 20)))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<MemorySize, E> {
                checked(crate::spec::parse_size(text, 1 << 20))
            }
        }
        fn checked<E: serde::de::Error>(bytes: Option<u64>) -> Result<MemorySize, E> {
            match bytes {
                Some(bytes) if bytes >= 64 << 20 => Ok(MemorySize(bytes)),
                _ => Err(E::custom(format!("expected {EXPECTED}"))),
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A settings file that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read settings file `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid settings file `{path}`{location}: {message}")]
    Parse { path: PathBuf, location: String, message: String },
}

impl Settings {
    /// Loads `path`; a missing file at the default location means all defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<Settings, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Settings::parse(&text, path),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Settings::default()),
            Err(source) => Err(ConfigError::Read { path: path.to_path_buf(), source }),
        }
    }

    /// Parses settings text; errors carry line and column.
    pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Settings::default());
        }
        yaml_serde::from_str(text).map_err(|err| {
            let location = err
                .location()
                .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
                .unwrap_or_default();
            // yaml_serde appends its own "at line …" to the message; keep ours only.
            let message = err.to_string();
            let message = message.split(" at line ").next().unwrap_or(&message).to_string();
            ConfigError::Parse { path: path.to_path_buf(), location, message }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Settings::parse("", Path::new("x")).ok(), Some(Settings::default()));
    }

    #[test]
    fn full_file() {
        let text = "proxmox:\n  url: https://pve:8006\n  insecure: true\ndefaults:\n  node: pve1\n  storage: local-lvm\npolicies:\n  prune_orphans: true\nconcurrency:\n  hosts: 3\n";
        let settings = Settings::parse(text, Path::new("nixprox.yaml")).expect("valid");
        assert_eq!(settings.proxmox.url.as_deref(), Some("https://pve:8006"));
        assert!(settings.proxmox.insecure);
        assert_eq!(settings.defaults.node.as_deref(), Some("pve1"));
        assert!(settings.policies.prune_orphans);
        assert!(!settings.policies.allow_replace);
        assert_eq!(settings.concurrency.hosts, 3);
        assert_eq!(settings.concurrency.per_node, 8);
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let err = Settings::parse("policies:\n  prune_orphan: true\n", Path::new("nixprox.yaml"))
            .expect_err("unknown key");
        assert_eq!(
            err.to_string(),
            "invalid settings file `nixprox.yaml` at line 2, column 3: policies: unknown field `prune_orphan`, expected one of `prune_orphans`, `allow_reinstall`, `allow_replace`, `allow_detach_disks`"
        );
    }

    #[test]
    fn wrong_type_names_line_and_column() {
        let err =
            Settings::parse("concurrency:\n  hosts: many\n", Path::new("n.yaml")).expect_err("wrong type");
        assert!(err.to_string().starts_with("invalid settings file `n.yaml` at line 2, column 10:"), "{err}");
    }

    #[test]
    fn eval_memory_is_a_size_and_round_trips() {
        assert_eq!(Settings::default().eval.max_memory, MemorySize(4 << 30));
        let parse = |text: &str| Settings::parse(text, Path::new("n.yaml")).map(|s| s.eval.max_memory);
        assert_eq!(parse("eval:\n  max_memory: 1536M\n").ok(), Some(MemorySize(1536 << 20)));
        assert_eq!(parse("eval:\n  max_memory: 2G\n").ok(), Some(MemorySize(2 << 30)));
        assert_eq!(parse("eval:\n  max_memory: 512\n").ok(), Some(MemorySize(512 << 20)));
        let err = parse("eval:\n  max_memory: lots\n").expect_err("not a size");
        assert_eq!(
            err.to_string(),
            "invalid settings file `n.yaml` at line 2, column 15: eval.max_memory: expected a memory size of at least 64M, like `4G` or `1536M` (a bare number is MiB)"
        );
        assert!(parse("eval:\n  max_memory: 1M\n").is_err());
        let yaml = yaml_serde::to_string(&Settings::default()).expect("serialise");
        assert_eq!(Settings::parse(&yaml, Path::new("x")).expect("round trip"), Settings::default());
    }
}
