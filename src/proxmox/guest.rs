//! Reading a file inside a guest through the QEMU guest agent, over the (TLS-pinned) Proxmox
//! API: how nixprox learns a VM's SSH host key without trusting the network on first contact.
//!
//! `GET /nodes/{node}/qemu/{vmid}/agent/file-read?file=…` (qemu-server `API2/Qemu/Agent.pm`)
//! answers `{"content": …, "bytes-read": n}` with the content already decoded from the agent's
//! base64, plus `"truncated": 1` when the read stopped before the end (16 MiB at most). A
//! missing file is an error (`Agent error: failed to open file '…' …`), as are a stopped VM and
//! an agent that is not running yet. The token needs `VM.GuestAgent.FileRead` (or
//! `VM.GuestAgent.Unrestricted`) on the VM from qemu-server 9.0.3, `VM.Monitor` before.

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
