//! VMIDs for new VMs: `/cluster/nextid`.

use super::client::Client;
use super::error::ProxmoxError;
use super::property::value_text;

/// `GET /cluster/nextid`: the lowest free VMID. Not a reservation: a concurrent create can
/// take it before our clone does (the caller retries with the next).
pub async fn next_id(client: &Client) -> Result<u32, ProxmoxError> {
    let data = client.get("/cluster/nextid", &[]).await?;
    value_text(&data).and_then(|t| t.trim().parse().ok()).ok_or_else(|| ProxmoxError::Decode {
        method: reqwest::Method::GET,
        path: "/cluster/nextid".into(),
        detail: "not a VMID".into(),
        body: data.to_string(),
    })
}
