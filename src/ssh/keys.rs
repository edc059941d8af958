//! Key material: the client key nixprox logs in with, the ed25519 host keys it generates and
//! pins, and the policy a connection checks the server's key against.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::{LineEnding, PrivateKey, PublicKey};
use secrecy::{ExposeSecret, SecretString};

use super::SshError;

/// Where the private key nixprox authenticates with comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKey {
    /// A key file on the runner.
    File(PathBuf),
    /// The name of an environment variable holding the key's text (a CI secret).
    Env(String),
}

impl ClientKey {
    /// Makes the key available as a file, as ssh, `nix copy` and nixos-anywhere need one: a
    /// file key is used in place; an environment key is written to a 0600 temporary file that
    /// is removed when the returned [`KeyFile`] is dropped.
    pub fn materialize(&self) -> Result<KeyFile, SshError> {
        match self {
            ClientKey::File(path) => Ok(KeyFile { path: path.clone(), _temp: None }),
            ClientKey::Env(var) => {
                let text = std::env::var(var).ok().filter(|t| !t.trim().is_empty());
                let text = text.ok_or_else(|| SshError::KeyEnv { var: var.clone() })?;
                KeyFile::from_text(&SecretString::from(text))
            }
        }
    }
}

/// A private key as a file path; a temporary one is deleted on drop, with its directory.
#[derive(Debug)]
pub struct KeyFile {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

/// The variable CI runners set to a per-job temporary directory (GitHub Actions, Forgejo
/// Actions), emptied by the runner after the job: secrets go there rather than to `/tmp`.
pub const RUNNER_TEMP: &str = "RUNNER_TEMP";

/// A new private directory (0700, only the user nixprox runs as can list or enter it) for
/// secrets written to disk: under `$RUNNER_TEMP` when it is set and exists, else the system's
/// temporary directory. Removed, with everything in it, when dropped: on success, on every
/// error, and when a signal stops the step that owns it (apply drops the step). A SIGKILL
/// leaves it; under `RUNNER_TEMP` the runner empties it after the job.
pub fn private_dir(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    let base = std::env::var_os(RUNNER_TEMP)
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(base)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

impl KeyFile {
    /// Writes key text to a new 0600 file in a new private directory ([`private_dir`]).
    pub fn from_text(text: &SecretString) -> Result<KeyFile, SshError> {
        let mut body = text.expose_secret().trim_end().to_string();
        // OpenSSH refuses a key file without the final newline.
        body.push('\n');
        Self::write("nixprox-key-", "key", body.as_bytes())
    }

    /// Writes `bytes` exactly as they are (no trimming, no added newline) to a new 0600 file
    /// in a new private directory: for secrets whose every byte counts, such as disk keys.
    pub fn from_exact_bytes(bytes: &[u8]) -> Result<KeyFile, SshError> {
        Self::write("nixprox-secret-", "secret", bytes)
    }

    fn write(prefix: &str, name: &str, bytes: &[u8]) -> Result<KeyFile, SshError> {
        let dir = private_dir(prefix).map_err(SshError::TempFile)?;
        let path = dir.path().join(name);
        let mut options = std::fs::OpenOptions::new();
        // Created 0600 from the start: never readable by others, not even briefly.
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.write(true).create_new(true).open(&path).map_err(SshError::TempFile)?;
        file.write_all(bytes).map_err(SshError::TempFile)?;
        file.flush().map_err(SshError::TempFile)?;
        Ok(KeyFile { path, _temp: Some(dir) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Parses the key for russh.
    pub fn load(&self) -> Result<Arc<PrivateKey>, SshError> {
        russh::keys::load_secret_key(&self.path, None)
            .map(Arc::new)
            .map_err(|err| SshError::Key { path: self.path.display().to_string(), reason: err.to_string() })
    }
}

/// An ed25519 host key: the private half goes to the host (`--extra-files`), the public half
/// into the VM's metadata block, where it pins the host from then on.
#[derive(Clone)]
pub struct GeneratedHostKey {
    /// OpenSSH PEM (`-----BEGIN OPENSSH PRIVATE KEY-----`).
    pub private_openssh: SecretString,
    /// `ssh-ed25519 AAAA… comment`.
    pub public: String,
}

impl std::fmt::Debug for GeneratedHostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GeneratedHostKey({}, private=<redacted>)", self.public)
    }
}

impl GeneratedHostKey {
    /// Takes a host key the user provides (sops-nix/agenix setups) instead of generating one.
    pub fn from_private_openssh(text: &str) -> Result<GeneratedHostKey, SshError> {
        let key = PrivateKey::from_openssh(text.trim())
            .map_err(|err| SshError::Key { path: "<host key>".into(), reason: err.to_string() })?;
        to_host_key(&key)
    }
}

/// Generates a fresh ed25519 host key; `comment` ends up after the public key (e.g. the
/// host name).
pub fn generate_host_key(comment: &str) -> Result<GeneratedHostKey, SshError> {
    let mut seed = [0u8; 32];
    // The OS random source; reading it directly avoids one more crate for 32 bytes.
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|err| SshError::Generate(format!("failed to read `/dev/urandom`: {err}")))?;
    let pair = Ed25519Keypair::from_seed(&seed);
    seed.fill(0);
    let key = PrivateKey::new(KeypairData::from(pair), comment)
        .map_err(|err| SshError::Generate(err.to_string()))?;
    to_host_key(&key)
}

fn to_host_key(key: &PrivateKey) -> Result<GeneratedHostKey, SshError> {
    let private = key.to_openssh(LineEnding::LF).map_err(|err| SshError::Generate(err.to_string()))?;
    let public = key.public_key().to_openssh().map_err(|err| SshError::Generate(err.to_string()))?;
    Ok(GeneratedHostKey { private_openssh: SecretString::from(private.to_string()), public })
}

/// The keys a server may present. Built only from keys the caller pins: there is no
/// constructor that accepts any key.
#[derive(Debug, Clone)]
pub struct HostKeyPolicy {
    keys: Vec<PublicKey>,
    /// `SHA256:…` fingerprints a key may match instead: what Proxmox prints in a container's
    /// create task log for the host keys it generated (pve-container `Setup.pm`
    /// `rewrite_ssh_host_keys`), before anyone has the keys themselves.
    fingerprints: Vec<String>,
}

impl HostKeyPolicy {
    /// One pinned key, as an OpenSSH public key line (`ssh-ed25519 AAAA… [comment]`).
    pub fn pinned(line: &str) -> Result<HostKeyPolicy, SshError> {
        Ok(HostKeyPolicy { keys: vec![parse_public(line)?], fingerprints: Vec::new() })
    }

    /// Keys pinned by their SHA-256 fingerprints (`SHA256:<base64>`, as `ssh-keygen -l -E
    /// sha256` prints them); at least one, each of that form.
    pub fn fingerprints(fingerprints: &[String]) -> Result<HostKeyPolicy, SshError> {
        let valid = |f: &String| f.strip_prefix("SHA256:").is_some_and(|b| b.len() == 43);
        if fingerprints.is_empty() || !fingerprints.iter().all(valid) {
            return Err(SshError::PinnedKey {
                key: fingerprints.join(" "),
                reason: "expected SHA256 fingerprints (`SHA256:` and 43 base64 characters)".into(),
            });
        }
        Ok(HostKeyPolicy { keys: Vec::new(), fingerprints: fingerprints.to_vec() })
    }

    /// Several keys, one per line, in `authorized_keys` or `known_hosts` form (a leading host
    /// pattern is skipped); blank lines and `#` comments are ignored.
    pub fn from_lines(text: &str) -> Result<HostKeyPolicy, SshError> {
        let mut keys = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let key_part = if line.starts_with("ssh-") || line.starts_with("ecdsa-") {
                line
            } else {
                line.split_once(char::is_whitespace).map(|(_, rest)| rest.trim()).unwrap_or(line)
            };
            keys.push(parse_public(key_part)?);
        }
        if keys.is_empty() {
            return Err(SshError::PinnedKey { key: text.into(), reason: "no key found".into() });
        }
        Ok(HostKeyPolicy { keys, fingerprints: Vec::new() })
    }

    /// Whether the server's key is one of the pinned ones (comments do not matter), or has
    /// one of the pinned fingerprints.
    pub fn accepts(&self, key: &PublicKey) -> bool {
        self.keys.iter().any(|k| k.key_data() == key.key_data())
            || self
                .fingerprints
                .iter()
                .any(|f| *f == key.fingerprint(russh::keys::ssh_key::HashAlg::Sha256).to_string())
    }

    /// The pinned keys as OpenSSH lines without comments, and the pinned fingerprints, for
    /// messages and known_hosts.
    pub fn lines(&self) -> Vec<String> {
        self.keys.iter().map(public_line).chain(self.fingerprints.iter().cloned()).collect()
    }
}

/// `ssh-ed25519 AAAA…` without the comment.
pub(crate) fn public_line(key: &PublicKey) -> String {
    let mut key = key.clone();
    key.set_comment("");
    key.to_openssh().map(|l| l.trim().to_string()).unwrap_or_else(|_| key.algorithm().to_string())
}

fn parse_public(line: &str) -> Result<PublicKey, SshError> {
    PublicKey::from_openssh(line.trim())
        .map_err(|err| SshError::PinnedKey { key: line.trim().into(), reason: err.to_string() })
}

/// A known_hosts line for `address:port` (OpenSSH writes `[addr]:port` for ports other than
/// 22), used for `nix copy`'s `UserKnownHostsFile`.
pub fn known_hosts_line(address: &str, port: u16, public_line: &str) -> String {
    let host = if port == 22 { address.to_string() } else { format!("[{address}]:{port}") };
    format!("{host} {}", public_line.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips_and_is_pinned() {
        let key = generate_host_key("web").expect("generate");
        assert!(key.public.starts_with("ssh-ed25519 AAAA"), "{}", key.public);
        assert!(key.public.ends_with(" web"));
        assert!(key.private_openssh.expose_secret().starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert!(!format!("{key:?}").contains("PRIVATE"));
        let again =
            GeneratedHostKey::from_private_openssh(key.private_openssh.expose_secret()).expect("parse");
        assert_eq!(again.public, key.public);
        let policy = HostKeyPolicy::pinned(&key.public).expect("pin");
        let parsed = PublicKey::from_openssh(&key.public).expect("public");
        assert!(policy.accepts(&parsed));
        let other = generate_host_key("other").expect("generate");
        assert!(!policy.accepts(&PublicKey::from_openssh(&other.public).expect("public")));
        assert_ne!(other.public, key.public);
    }

    #[test]
    fn policy_reads_known_hosts_and_authorized_keys_lines() {
        let a = generate_host_key("a").expect("generate");
        let b = generate_host_key("b").expect("generate");
        let text = format!("# pinned\n[10.0.0.5]:22 {}\n\n{}\n", a.public, b.public);
        let policy = HostKeyPolicy::from_lines(&text).expect("parse");
        assert_eq!(policy.lines().len(), 2);
        assert!(policy.lines()[0].starts_with("ssh-ed25519 AAAA"));
        assert!(!policy.lines()[0].ends_with(" a"));
        assert!(matches!(HostKeyPolicy::from_lines("# only a comment\n"), Err(SshError::PinnedKey { .. })));
        assert!(matches!(HostKeyPolicy::pinned("ssh-ed25519 notbase64"), Err(SshError::PinnedKey { .. })));
    }

    #[test]
    fn known_hosts_line_brackets_other_ports() {
        assert_eq!(
            known_hosts_line("127.0.0.2", 2222, "ssh-ed25519 AAAA"),
            "[127.0.0.2]:2222 ssh-ed25519 AAAA"
        );
        assert_eq!(known_hosts_line("10.0.0.5", 22, "ssh-ed25519 AAAA "), "10.0.0.5 ssh-ed25519 AAAA");
    }

    #[test]
    fn env_key_goes_to_a_private_temp_file_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let key = generate_host_key("client").expect("generate");
        let file = KeyFile::from_text(&key.private_openssh).expect("write");
        let path = file.path().to_path_buf();
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            public_line(file.load().expect("load").public_key()),
            HostKeyPolicy::pinned(&key.public).expect("pin").lines()[0]
        );
        drop(file);
        assert!(!path.exists());
        let missing = ClientKey::Env("NIXPROX_TEST_SURELY_UNSET_KEY".into()).materialize();
        assert_eq!(
            missing.expect_err("unset").to_string(),
            "environment variable `NIXPROX_TEST_SURELY_UNSET_KEY` for the ssh key is not set or empty (set the CI secret, or use `ssh.key` with a file path)"
        );
    }
}
