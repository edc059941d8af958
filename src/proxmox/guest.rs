//! Reading a file inside a guest through the QEMU guest agent, over the (TLS-pinned) Proxmox
//! API: how nixprox learns a VM's SSH host key without trusting the network on first contact.
//!
//! `GET /nodes/{node}/qemu/{vmid}/agent/file-read?file=…` (qemu-server `API2/Qemu/Agent.pm`)
//! answers `{"content": …, "bytes-read": n}` with the content already decoded from the agent's
//! base64, plus `"truncated": 1` when the read stopped before the end (16 MiB at most). A
//! missing file is an error (`Agent error: failed to open file '…' …`), as are a stopped VM and
//! an agent that is not running yet. The token needs `VM.GuestAgent.FileRead` (or
//! `VM.GuestAgent.Unrestricted`) on the VM from qemu-server 9.0.3, `VM.Monitor` before.
//!
//! What a guest runs: `GET /nodes/{node}/qemu/{vmid}/agent/get-osinfo` (the same
//! `API2/Qemu/Agent.pm`, answered `{"result": {"id": "debian", "pretty-name": …, …}}`: the
//! agent's `guest-get-osinfo`, which on Linux reads `/etc/os-release`, so NixOS answers
//! `"id": "nixos"`). It needs `VM.GuestAgent.Audit` from qemu-server 9.0.3, `VM.Monitor`
//! before. The plan reads it for a VM it may adopt ([`read_guest_os`]), so that a VM that does
//! not run NixOS is planned as a conversion (a reinstall), never as a switch.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::property::value_bool;
use super::{Client, ProxmoxError};

/// Where NixOS's sshd keeps the public half of its ed25519 host key (generated on first boot).
pub const ED25519_HOST_KEY: &str = "/etc/ssh/ssh_host_ed25519_key.pub";

/// A file read from a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    pub content: String,
    /// The file is longer than what was read.
    pub truncated: bool,
}

/// Reads `path` in VM `vmid` on `node` through its guest agent.
pub async fn read_guest_file(
    client: &Client,
    node: &str,
    vmid: u32,
    path: &str,
) -> Result<GuestFile, ProxmoxError> {
    let api_path = format!("/nodes/{node}/qemu/{vmid}/agent/file-read");
    let data = client.get(&api_path, &[("file", path)]).await?;
    guest_file(&data).ok_or_else(|| ProxmoxError::Decode {
        method: reqwest::Method::GET,
        path: api_path,
        detail: "no `content` string".into(),
        body: data.to_string(),
    })
}

/// The VM's ed25519 SSH host key (the public line of [`ED25519_HOST_KEY`]) read through its
/// guest agent; `Ok(None)` when the file holds no such line.
pub async fn read_ed25519_host_key(
    client: &Client,
    node: &str,
    vmid: u32,
) -> Result<Option<String>, ProxmoxError> {
    let file = read_guest_file(client, node, vmid, ED25519_HOST_KEY).await?;
    Ok(ed25519_line(&file))
}

/// What the guest agent says a VM runs, as the plan saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum GuestOs {
    /// `get-osinfo` answered: `id` is os-release's `ID` (`nixos`, `debian`, `ubuntu`, …;
    /// `mswindows` for Windows), lower-cased; `pretty_name` is for people.
    Read { id: String, pretty_name: String },
    /// It could not be read: why, in a few words with the fix (never an error for the plan).
    Unknown { reason: String },
}

impl GuestOs {
    /// `Some(true)` when the agent reports NixOS, `Some(false)` another OS, `None` unknown.
    pub fn is_nixos(&self) -> Option<bool> {
        match self {
            GuestOs::Read { id, .. } => Some(id == "nixos"),
            GuestOs::Unknown { .. } => None,
        }
    }
}

/// What VM `vmid` runs, through its guest agent; a failure is an [`GuestOs::Unknown`] that
/// says why (the agent does not answer, the token lacks the privilege), never an error.
pub async fn read_guest_os(client: &Client, node: &str, vmid: u32) -> GuestOs {
    let path = format!("/nodes/{node}/qemu/{vmid}/agent/get-osinfo");
    match client.get(&path, &[]).await {
        Ok(data) => os_info(&data).unwrap_or_else(|| GuestOs::Unknown {
            reason: format!(
                "the guest agent's answer has no `id`: {}",
                crate::text::truncate(&data.to_string(), 200)
            ),
        }),
        Err(err) => GuestOs::Unknown { reason: unknown_reason(&err) },
    }
}

/// Why `get-osinfo` failed, in the words a plan shows.
fn unknown_reason(err: &ProxmoxError) -> String {
    match err {
        ProxmoxError::Http { status: 403, .. } => "the plan's API token may not ask the guest agent (it needs `VM.GuestAgent.Audit` on the VM, `VM.Monitor` before Proxmox VE 9)".to_string(),
        err if err.agent_not_ready() => {
            "the QEMU guest agent does not answer (not running in the VM, or still starting)".to_string()
        }
        other => crate::text::truncate(&other.to_string(), 300),
    }
}

/// `{"result": {...}}` (or the bare object) as a [`GuestOs::Read`].
fn os_info(data: &Value) -> Option<GuestOs> {
    let info = data.get("result").unwrap_or(data);
    let id = info.get("id")?.as_str()?.trim().to_ascii_lowercase();
    if id.is_empty() {
        return None;
    }
    let pretty_name = ["pretty-name", "name"]
        .iter()
        .find_map(|key| info.get(*key).and_then(Value::as_str))
        .unwrap_or(&id)
        .to_string();
    Some(GuestOs::Read { id, pretty_name })
}

fn ed25519_line(file: &GuestFile) -> Option<String> {
    let line = file.content.lines().map(str::trim).find(|line| !line.is_empty())?;
    (!file.truncated && line.starts_with("ssh-ed25519 ")).then(|| line.to_string())
}

fn guest_file(data: &Value) -> Option<GuestFile> {
    Some(GuestFile {
        content: data.get("content")?.as_str()?.to_string(),
        truncated: data.get("truncated").and_then(value_bool).unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn answers_of_every_release() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKey root@web\n";
        // qemu-server 9 (decoded content, `bytes-read`, no `truncated` when complete).
        assert_eq!(
            guest_file(&json!({"content": key, "bytes-read": key.len()})),
            Some(GuestFile { content: key.into(), truncated: false })
        );
        assert_eq!(
            guest_file(&json!({"content": "x", "bytes-read": 16777216, "truncated": 1})),
            Some(GuestFile { content: "x".into(), truncated: true })
        );
        assert_eq!(guest_file(&json!({"content": "", "truncated": false})).map(|f| f.truncated), Some(false));
        assert_eq!(guest_file(&json!({"bytes-read": 0})), None);
    }

    #[test]
    fn os_info_of_linux_windows_and_odd_answers() {
        // qemu-guest-agent's guest-get-osinfo on Debian 12 (qga/commands-posix.c, os-release).
        let debian = json!({"result": {"id": "debian", "name": "Debian GNU/Linux", "pretty-name": "Debian GNU/Linux 12 (bookworm)", "version-id": "12"}});
        assert_eq!(
            os_info(&debian),
            Some(GuestOs::Read { id: "debian".into(), pretty_name: "Debian GNU/Linux 12 (bookworm)".into() })
        );
        let nixos = json!({"result": {"id": "nixos", "name": "NixOS"}});
        assert_eq!(os_info(&nixos).and_then(|os| os.is_nixos()), Some(true));
        // qga/commands-win32.c answers `mswindows`.
        let windows = json!({"result": {"id": "mswindows", "pretty-name": "Windows Server 2022"}});
        assert_eq!(os_info(&windows).and_then(|os| os.is_nixos()), Some(false));
        assert_eq!(os_info(&json!({"result": {}})), None);
        assert_eq!(os_info(&json!({"result": {"id": " "}})), None);
        assert_eq!(GuestOs::Unknown { reason: "x".into() }.is_nixos(), None);
    }

    #[test]
    fn only_an_ed25519_public_key_line_is_a_host_key() {
        let file = |content: &str, truncated| GuestFile { content: content.into(), truncated };
        assert_eq!(
            ed25519_line(&file("\nssh-ed25519 AAAA root@web\n", false)).as_deref(),
            Some("ssh-ed25519 AAAA root@web")
        );
        assert_eq!(ed25519_line(&file("ssh-rsa AAAA\n", false)), None);
        assert_eq!(ed25519_line(&file("ssh-ed25519 AAAA", true)), None);
        assert_eq!(ed25519_line(&file("", false)), None);
    }
}
