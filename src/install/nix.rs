//! The `nix` commands the install/switch layer runs: `nix build --json` for a toplevel and
//! `nix copy --to ssh-ng://…` for a closure. Only forms Nix 2.8 already has.

use std::path::PathBuf;

use super::run::CommandSpec;

const FEATURES: [&str; 2] = ["--extra-experimental-features", "nix-command flakes"];

/// `nix build --json --no-link <installable>`; the store path is read from the JSON
/// (`--print-out-paths` does not exist in 2.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixBuild {
    pub installable: String,
    /// `--option <name> <value>` pairs.
    pub options: Vec<(String, String)>,
    /// `--override-input <name> <ref>` pairs, as given to `nixprox --override-input`, so the
    /// build is the system nixprox evaluated.
    pub override_inputs: Vec<(String, String)>,
}

impl NixBuild {
    /// Builds `nixosConfigurations.<host>.config.system.build.toplevel` of `flake`.
    pub fn toplevel(flake: &str, host: &str) -> NixBuild {
        NixBuild {
            installable: format!("{flake}#nixosConfigurations.\"{host}\".config.system.build.toplevel"),
            options: Vec::new(),
            override_inputs: Vec::new(),
        }
    }

    pub fn argv(&self) -> Vec<String> {
        let mut argv: Vec<String> = vec!["nix".into()];
        argv.extend(FEATURES.map(String::from));
        argv.extend(["build", "--json", "--no-link"].map(String::from));
        for (name, value) in &self.options {
            argv.extend(["--option".into(), name.clone(), value.clone()]);
        }
        for (name, flake_ref) in &self.override_inputs {
            argv.extend(["--override-input".into(), name.clone(), flake_ref.clone()]);
        }
        argv.push(self.installable.clone());
        argv
    }
}

/// Runs a [`NixBuild`] and returns the built `out` path. The error carries the last lines of
/// nix's stderr (the build log), bounded by `timeout` (nix is killed after it).
pub async fn run_build(build: &NixBuild, timeout: std::time::Duration) -> Result<String, String> {
    let argv = build.argv();
    let mut command = tokio::process::Command::new(&argv[0]);
    command.args(&argv[1..]).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let output = match tokio::time::timeout(timeout, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(err)) => return Err(format!("could not start `nix`: {err}")),
        Err(_) => return Err(format!("timed out after {}s", timeout.as_secs())),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(super::TAIL_LINES)..].join("\n");
        let code =
            output.status.code().map_or("killed by a signal".to_string(), |c| format!("exit code {c}"));
        return Err(format!("{code}; last lines of its output:\n{tail}"));
    }
    parse_build_json(&String::from_utf8_lossy(&output.stdout))
}

/// The `out` path of the first result of `nix build --json`.
pub fn parse_build_json(stdout: &str) -> Result<String, String> {
    let value: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|err| format!("invalid `nix build --json` output: {err}"))?;
    value
        .get(0)
        .and_then(|first| first.get("outputs"))
        .and_then(|outputs| outputs.get("out"))
        .and_then(|out| out.as_str())
        .map(String::from)
        .ok_or_else(|| format!("`nix build --json` output has no `outputs.out`: {}", stdout.trim()))
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

    pub fn argv(&self) -> Vec<String> {
        let mut argv: Vec<String> = vec!["nix".into()];
        argv.extend(FEATURES.map(String::from));
        argv.extend(["copy".into(), "--to".into(), self.store_uri()]);
        if !self.check_sigs {
            argv.push("--no-check-sigs".into());
        }
        argv.extend(self.paths.iter().cloned());
        argv
    }

    /// `NIX_SSHOPTS` (nix splits it on spaces, so the paths must have none: they are
    /// temporary files nixprox creates).
    pub fn env(&self) -> Vec<(String, String)> {
        let options = format!(
            "-p {} -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes",
            self.port,
            self.identity.display(),
            self.known_hosts.display()
        );
        vec![("NIX_SSHOPTS".into(), options)]
    }

    pub fn spec(&self) -> CommandSpec {
        CommandSpec { argv: self.argv(), env: self.env() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_argv_and_json() {
        let mut build = NixBuild::toplevel("path:/src/lab", "web");
        build.options.push(("sandbox".into(), "false".into()));
        assert_eq!(
            build.argv().join(" "),
            "nix --extra-experimental-features nix-command flakes build --json --no-link --option sandbox false path:/src/lab#nixosConfigurations.\"web\".config.system.build.toplevel"
        );
        let json = r#"[{"drvPath":"/nix/store/a.drv","outputs":{"out":"/nix/store/b-nixos-system-web"}}]"#;
        assert_eq!(parse_build_json(json).as_deref(), Ok("/nix/store/b-nixos-system-web"));
        assert!(parse_build_json("[]").is_err());
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
        assert_eq!(
            copy.argv().join(" "),
            "nix --extra-experimental-features nix-command flakes copy --to ssh-ng://root@10.0.0.5 --no-check-sigs /nix/store/b-sys"
        );
        assert_eq!(
            copy.env(),
            vec![(
                "NIX_SSHOPTS".to_string(),
                "-p 2222 -i /tmp/key -o IdentitiesOnly=yes -o UserKnownHostsFile=/tmp/kh -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes".to_string()
            )]
        );
        assert!(
            !NixCopy { check_sigs: true, ..copy.clone() }.argv().contains(&"--no-check-sigs".to_string())
        );
        let as_deploy = NixCopy { user: "deploy".into(), sudo: true, ..copy };
        assert_eq!(as_deploy.store_uri(), "ssh-ng://deploy@10.0.0.5?remote-program=sudo%20-n%20nix-daemon");
    }
}
