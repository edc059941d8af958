//! Closing nixos-anywhere's unchecked window on a machine whose host key is pinned.
//!
//! nixos-anywhere connects with `-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no`
//! before any `--ssh-option` (nixos-anywhere `src/nixos-anywhere.sh`, `sshArgs`), and ssh keeps
//! the first value of an option, so checking cannot be turned back on. It sets no
//! `ProxyCommand`, though, so one given with `--ssh-option` is the one ssh uses. nixprox gives
//! it this script: an `ssh -W` that reaches the machine's own sshd through a connection that
//! requires the pinned key (`StrictHostKeyChecking=yes`, a known_hosts file holding only that
//! key). nixos-anywhere's unchecked connection then runs inside a tunnel that ends at the
//! verified machine, so another machine at the address can take part in none of it. The
//! kexec installer keeps the running system's host keys (nixos-images `kexec-run.sh` copies
//! `/etc/ssh/ssh_host_*` into its initrd, restored at boot), so the tunnel is verified before
//! and after the kexec alike. nixos-anywhere hands its ssh options to `nix copy` through
//! `NIX_SSHOPTS`, which nix splits at white space: the option is `ProxyCommand=<script>`, one
//! word, and the script's path must hold no white space.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::ssh::known_hosts_line;

/// The proxy script and its known_hosts file, in a private temporary directory removed on drop.
#[derive(Debug)]
pub struct PinProxy {
    _dir: tempfile::TempDir,
    script: PathBuf,
}

impl PinProxy {
    /// The `--ssh-option` value for nixos-anywhere.
    pub fn ssh_option(&self) -> String {
        format!("ProxyCommand={}", self.script.display())
    }

    pub fn script(&self) -> &Path {
        &self.script
    }
}

/// Where to tunnel to and how to verify it.
#[derive(Debug, Clone)]
pub struct PinProxyRequest<'a> {
    pub address: &'a str,
    pub port: u16,
    pub user: &'a str,
    /// The client key file (the one nixos-anywhere gets with `-i`).
    pub identity: &'a Path,
    /// The pinned public key line.
    pub pinned: &'a str,
}

/// Writes the proxy for `request`; fails when a path or value cannot be written safely.
pub fn pin_proxy(request: &PinProxyRequest<'_>) -> Result<PinProxy, String> {
    // Not secret (a known_hosts line and a script naming the key file), but kept beside the
    // secrets it serves, in a private directory removed with the install.
    let dir = crate::ssh::private_dir("nixprox-pin-")
        .map_err(|err| format!("failed to create a temporary directory: {err}"))?;
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!("{}\n", known_hosts_line(request.address, request.port, request.pinned)),
    )
    .map_err(|err| format!("failed to write `{}`: {err}", known_hosts.display()))?;
    let script = dir.path().join("proxy");
    std::fs::write(&script, script_text(request, &known_hosts)?)
        .map_err(|err| format!("failed to write `{}`: {err}", script.display()))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700))
        .map_err(|err| format!("failed to make `{}` executable: {err}", script.display()))?;
    if script.display().to_string().chars().any(char::is_whitespace) {
        return Err(format!(
            "the temporary directory `{}` has white space in its path, which nix's NIX_SSHOPTS cannot carry (set TMPDIR to a path without spaces)",
            dir.path().display()
        ));
    }
    Ok(PinProxy { _dir: dir, script })
}

/// The script: one `exec ssh … -W address:port address` with every value single-quoted.
fn script_text(request: &PinProxyRequest<'_>, known_hosts: &Path) -> Result<String, String> {
    let quote = |what: &str, value: &str| {
        if value.contains('\'') || value.contains('\n') {
            Err(format!("{what} `{value}` cannot be quoted for the SSH proxy"))
        } else {
            Ok(format!("'{value}'"))
        }
    };
    let forward = if request.address.contains(':') {
        format!("[{}]:{}", request.address, request.port)
    } else {
        format!("{}:{}", request.address, request.port)
    };
    Ok(format!(
        "#!/bin/sh\n# nixprox: reaches {address} only through a connection that verifies its pinned host key.\nexec ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={kh} -o GlobalKnownHostsFile=/dev/null -o CheckHostIP=no -o ConnectTimeout=10 -o LogLevel=ERROR -i {identity} -p {port} -l {user} -W {forward} {address}\n",
        address = quote("address", request.address)?,
        kh = quote("known_hosts path", &known_hosts.display().to_string())?,
        identity = quote("key path", &request.identity.display().to_string())?,
        port = request.port,
        user = quote("user", request.user)?,
        forward = quote("forward", &forward)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_verifies_the_pinned_key_and_tunnels_to_the_machine_itself() {
        let request = PinProxyRequest {
            address: "10.0.0.5",
            port: 2222,
            user: "root",
            identity: Path::new("/tmp/key"),
            pinned: "ssh-ed25519 AAAA root@web",
        };
        let proxy = pin_proxy(&request).expect("proxy");
        let option = proxy.ssh_option();
        assert!(option.starts_with("ProxyCommand=/") && !option.contains(' '), "{option}");
        let text = std::fs::read_to_string(proxy.script()).expect("script");
        for part in [
            "-o StrictHostKeyChecking=yes",
            "-o GlobalKnownHostsFile=/dev/null",
            "-i '/tmp/key' -p 2222 -l 'root' -W '10.0.0.5:2222' '10.0.0.5'",
        ] {
            assert!(text.contains(part), "`{part}` in {text}");
        }
        let known =
            std::fs::read_to_string(proxy.script().with_file_name("known_hosts")).expect("known_hosts");
        assert_eq!(known, "[10.0.0.5]:2222 ssh-ed25519 AAAA root@web\n");
        let six = PinProxyRequest { address: "fd00::5", port: 22, ..request.clone() };
        assert!(script_text(&six, Path::new("/k")).expect("text").contains("-W '[fd00::5]:22' 'fd00::5'"));
        let odd = PinProxyRequest { user: "a'b", ..request };
        assert!(script_text(&odd, Path::new("/k")).is_err());
    }
}
