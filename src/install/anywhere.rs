//! The nixos-anywhere command line. Flag names follow nixos-anywhere's `docs/cli.md`; the
//! list is kept in [`CLI_FLAGS`] and the tests check that every flag we emit is in it (the
//! test installer on `PATH` rejects anything else, too).

use std::path::PathBuf;

use crate::flake::host::BuildOn;

/// Every option nixos-anywhere's `docs/cli.md` documents (as of its 1.x releases).
pub const CLI_FLAGS: &[&str] = &[
    "-f",
    "--flake",
    "--target-host",
    "-i",
    "-p",
    "--ssh-port",
    "--ssh-option",
    "-L",
    "--print-build-logs",
    "--env-password",
    "-s",
    "--store-paths",
    "--kexec",
    "--kexec-extra-flags",
    "--ssh-store-setting",
    "--post-kexec-ssh-port",
    "--copy-host-keys",
    "--extra-files",
    "--chown",
    "--disk-encryption-keys",
    "--no-substitute-on-destination",
    "--no-use-machine-substituters",
    "--debug",
    "--show-trace",
    "--option",
    "--from",
    "--build-on-remote",
    "--vm-test",
    "--generate-hardware-config",
    "--phases",
    "--disko-mode",
    "--no-disko-deps",
    "--build-on",
];

/// One nixos-anywhere invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixosAnywhere {
    /// Command prefix: `["nixos-anywhere"]`, or `["nix", "run", "github:…", "--"]`.
    pub command: Vec<String>,
    pub flake: String,
    /// Attribute name under `nixosConfigurations`.
    pub host: String,
    pub user: String,
    pub address: String,
    pub port: u16,
    /// Private key file (`-i`).
    pub identity: PathBuf,
    /// Directory copied to the new system's root (`--extra-files`).
    pub extra_files: PathBuf,
    pub build_on: BuildOn,
    /// Kexec tarball path or URL (`--kexec`), for VMs without internet.
    pub kexec: Option<String>,
    /// `(path on the target, local file)` for `--disk-encryption-keys`.
    pub disk_encryption_keys: Vec<(String, PathBuf)>,
    /// `--ssh-option` values (`ProxyCommand=…` of [`super::pin_proxy`]).
    pub ssh_options: Vec<String>,
}

impl NixosAnywhere {
    pub fn argv(&self) -> Vec<String> {
        let mut argv = self.command.clone();
        let build_on = match self.build_on {
            BuildOn::Auto => "auto",
            BuildOn::Local => "local",
            BuildOn::Remote => "remote",
        };
        argv.extend([
            "--flake".into(),
            format!("{}#{}", self.flake, self.host),
            "--target-host".into(),
            format!("{}@{}", self.user, self.address),
            "-p".into(),
            self.port.to_string(),
            "-i".into(),
            self.identity.display().to_string(),
            "--extra-files".into(),
            self.extra_files.display().to_string(),
            "--build-on".into(),
            build_on.into(),
        ]);
        for option in &self.ssh_options {
            argv.extend(["--ssh-option".into(), option.clone()]);
        }
        if let Some(kexec) = &self.kexec {
            argv.extend(["--kexec".into(), kexec.clone()]);
        }
        for (remote, local) in &self.disk_encryption_keys {
            argv.extend(["--disk-encryption-keys".into(), remote.clone(), local.display().to_string()]);
        }
        argv
    }
}

/// The default command: `nixos-anywhere` when it is on `PATH`, else run it from its flake.
pub fn default_command() -> Vec<String> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join("nixos-anywhere").is_file()))
        .unwrap_or(false);
    if on_path {
        vec!["nixos-anywhere".into()]
    } else {
        [
            "nix",
            "--extra-experimental-features",
            "nix-command flakes",
            "run",
            "github:nix-community/nixos-anywhere",
            "--",
        ]
        .map(String::from)
        .to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> NixosAnywhere {
        NixosAnywhere {
            command: vec!["nixos-anywhere".into()],
            flake: "/src/lab".into(),
            host: "web".into(),
            user: "root".into(),
            address: "10.0.0.5".into(),
            port: 2222,
            identity: "/tmp/key".into(),
            extra_files: "/tmp/extra".into(),
            build_on: BuildOn::Remote,
            kexec: Some("/srv/kexec.tar.gz".into()),
            disk_encryption_keys: vec![("/tmp/disk.key".into(), "/run/keys/disk".into())],
            ssh_options: vec!["ProxyCommand=/tmp/pin/proxy".into()],
        }
    }

    #[test]
    fn argv_is_exact() {
        assert_eq!(
            full().argv().join(" "),
            "nixos-anywhere --flake /src/lab#web --target-host root@10.0.0.5 -p 2222 -i /tmp/key \
             --extra-files /tmp/extra --build-on remote --ssh-option ProxyCommand=/tmp/pin/proxy \
             --kexec /srv/kexec.tar.gz \
             --disk-encryption-keys /tmp/disk.key /run/keys/disk"
        );
        let minimal = NixosAnywhere {
            kexec: None,
            disk_encryption_keys: vec![],
            ssh_options: vec![],
            build_on: BuildOn::Auto,
            ..full()
        };
        assert!(minimal.argv().ends_with(&["--build-on".into(), "auto".into()]));
    }

    #[test]
    fn every_flag_emitted_exists_in_the_real_cli() {
        for arg in full().argv().iter().filter(|a| a.starts_with('-')) {
            assert!(CLI_FLAGS.contains(&arg.as_str()), "`{arg}` is not a nixos-anywhere flag");
        }
    }
}
