//! The `nix` commands the install/switch layer runs, built with the one command builder
//! ([`crate::flake::NixCommand`]): `nix build --json` of a host's toplevel and `nix copy --to
//! ssh-ng://…` of a closure. This module only adds what is particular to them: the toplevel's
//! installable and the pinned-key ssh options of a copy ([`NixCommand::run_build`] runs the
//! build).

use std::path::PathBuf;

use super::run::CommandSpec;
use crate::flake::{Nix, NixCommand, OverrideInput};

/// `nix build` of `nixosConfigurations.<host>.config.system.build.toplevel` of `flake`, with
/// the `--override-input`s the flake was evaluated with, so the build is the system nixprox
/// evaluated.
pub fn build_toplevel(nix: &Nix, flake: &str, host: &str, override_inputs: &[OverrideInput]) -> NixCommand {
    nix.build(format!(
        "{flake}#nixosConfigurations.{}.config.system.build.toplevel",
        crate::flake::nix_string(host)
    ))
    .override_inputs(override_inputs)
}

/// `nix copy --to ssh-ng://user@address <paths>`, with ssh pinned to the host's key through
/// `NIX_SSHOPTS` (a known_hosts file, strict checking), as deploy-rs does without signature
/// checks by default (the closure was built by this runner, not substituted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixCopy {
    pub user: String,
    pub address: String,
    pub port: u16,
    pub identity: PathBuf,
    /// A known_hosts file holding the pinned host key only.
    pub known_hosts: PathBuf,
    pub check_sigs: bool,
    pub paths: Vec<String>,
    /// The login user is not root: the remote store is opened as root by `sudo -n nix-daemon
    /// --stdio` (`?remote-program=`), so the user needs no place in nix's `trusted-users` to
    /// add the unsigned closure, only passwordless sudo.
    pub sudo: bool,
}

impl NixCopy {
    pub fn store_uri(&self) -> String {
        let remote_program = if self.sudo { "?remote-program=sudo%20-n%20nix-daemon" } else { "" };
        format!("ssh-ng://{}@{}{remote_program}", self.user, self.address)
    }

    /// `NIX_SSHOPTS` (nix splits it on spaces, so the paths must have none: they are
    /// temporary files nixprox creates).
    pub fn ssh_options(&self) -> String {
        format!(
            "-p {} -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes",
            self.port,
            self.identity.display(),
            self.known_hosts.display()
        )
    }

    pub fn command(&self, nix: &Nix) -> NixCommand {
        nix.copy_to(self.store_uri(), self.paths.clone())
            .check_sigs(self.check_sigs)
            .env_var("NIX_SSHOPTS", self.ssh_options())
    }

    /// The command for [`super::run_streaming`].
    pub fn spec(&self, nix: &Nix) -> CommandSpec {
        let command = self.command(nix);
        let text = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
        CommandSpec {
            argv: command.argv(),
            env: command.env().iter().map(|(k, v)| (text(k), text(v))).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_toplevel_build_quotes_the_host_and_keeps_the_overrides() {
        let build = build_toplevel(
            &Nix::default(),
            "path:/src/lab",
            "web",
            &[OverrideInput::new("nixpkgs-lib", "path:/l")],
        )
        .option("sandbox", "false");
        assert_eq!(
            build.argv().join(" "),
            "nix --extra-experimental-features nix-command flakes --option allow-import-from-derivation false --option sandbox false build --json --no-link path:/src/lab#nixosConfigurations.\"web\".config.system.build.toplevel --override-input nixpkgs-lib path:/l --no-write-lock-file"
        );
    }

    #[test]
    fn copy_pins_the_host_key() {
        let copy = NixCopy {
            user: "root".into(),
            address: "10.0.0.5".into(),
            port: 2222,
            identity: "/tmp/key".into(),
            known_hosts: "/tmp/kh".into(),
            check_sigs: false,
            paths: vec!["/nix/store/b-sys".into()],
            sudo: false,
        };
        let spec = copy.spec(&Nix::default());
        assert_eq!(
            spec.argv.join(" "),
            "nix --extra-experimental-features nix-command flakes copy --to ssh-ng://root@10.0.0.5 --no-check-sigs /nix/store/b-sys"
        );
        assert_eq!(
            spec.env,
            vec![(
                "NIX_SSHOPTS".to_string(),
                "-p 2222 -i /tmp/key -o IdentitiesOnly=yes -o UserKnownHostsFile=/tmp/kh -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes".to_string()
            )]
        );
        let checked = NixCopy { check_sigs: true, ..copy.clone() }.spec(&Nix::default());
        assert!(!checked.argv.contains(&"--no-check-sigs".to_string()));
        let as_deploy = NixCopy { user: "deploy".into(), sudo: true, ..copy };
        assert_eq!(as_deploy.store_uri(), "ssh-ng://deploy@10.0.0.5?remote-program=sudo%20-n%20nix-daemon");
    }
}
