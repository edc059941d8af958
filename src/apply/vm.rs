//! The Proxmox calls of apply's steps, one function per operation: allocate a VMID, clone or
//! create, write config (compare-and-swap), resize, start, find the address, reboot, destroy.
//! Each one waits for the task it starts and returns the task's warnings. None of them decides
//! *whether* to run: the executor checks live state first.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::proxmox::property::value_text;
use crate::proxmox::tasks::TaskOutcome;
use crate::proxmox::{Client, ProxmoxError, Upid, wait_task};

/// What a failed step reports.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Boxed: the Proxmox error is large and steps return `Result`s on every path.
    #[error(transparent)]
    Proxmox(Box<ProxmoxError>),
    #[error("{0}")]
    Other(String),
}

impl From<ProxmoxError> for StepError {
    fn from(err: ProxmoxError) -> StepError {
        StepError::Proxmox(Box::new(err))
    }
}

impl StepError {
    pub fn other(message: impl Into<String>) -> StepError {
        StepError::Other(message.into())
    }
}

/// `/nodes/{node}/qemu/{vmid}`.
pub fn vm_path(node: &str, vmid: u32) -> String {
    format!("/nodes/{node}/qemu/{vmid}")
}

/// Waits for the task a write answered with; `null` (a synchronous answer) is done at once.
/// Returns the warnings of a `WARNINGS: n` ending.
pub async fn wait(client: &Client, data: &Value, timeout: Duration) -> Result<Vec<String>, ProxmoxError> {
    if data.is_null() {
        return Ok(Vec::new());
    }
    let upid = Upid::from_data(data).map_err(|err| ProxmoxError::Decode {
        method: reqwest::Method::POST,
        path: "(task id)".into(),
        detail: err.to_string(),
        body: data.to_string(),
    })?;
    match wait_task(client, &upid, timeout).await? {
        TaskOutcome::Ok => Ok(Vec::new()),
        TaskOutcome::Warnings(warnings) => Ok(warnings),
    }
}

/// `GET /cluster/nextid`: the lowest free VMID. Not a reservation: a concurrent create can
/// take it before our clone does (the caller retries with the next).
pub async fn next_id(client: &Client) -> Result<u32, StepError> {
    let data = client.get("/cluster/nextid", &[]).await?;
    value_text(&data)
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| StepError::other(format!("`/cluster/nextid` answered `{data}`, not a VMID")))
}

/// `GET …/config` as a map (with `digest`); `None` when the VM does not exist.
pub async fn read_raw(
    client: &Client,
    node: &str,
    vmid: u32,
) -> Result<Option<Map<String, Value>>, ProxmoxError> {
    match client.get(&format!("{}/config", vm_path(node, vmid)), &[]).await {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(other) => Err(ProxmoxError::Decode {
            method: reqwest::Method::GET,
            path: format!("{}/config", vm_path(node, vmid)),
            detail: "expected an object".into(),
            body: other.to_string(),
        }),
        Err(err) if is_missing(&err) => Ok(None),
        Err(err) => Err(err),
    }
}

/// PVE's answer for a VM that is not (or no longer) there.
pub fn is_missing(err: &ProxmoxError) -> bool {
    matches!(err, ProxmoxError::Http { status: 500, message, .. } if message.contains("does not exist"))
}

/// `status` of `…/status/current` (`running`, `stopped`).
pub async fn power_state(client: &Client, node: &str, vmid: u32) -> Result<String, ProxmoxError> {
    let data = client.get(&format!("{}/status/current", vm_path(node, vmid)), &[]).await?;
    Ok(data.get("status").and_then(Value::as_str).unwrap_or("unknown").to_string())
}

/// `POST path` with owned form pairs, then waits for the task.
pub async fn post_and_wait(
    client: &Client,
    path: &str,
    form: &[(String, String)],
    timeout: Duration,
) -> Result<Vec<String>, ProxmoxError> {
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let data = client.post(path, &pairs).await?;
    wait(client, &data, timeout).await
}

/// The guest agent's view of the VM's addresses; `Ok(None)` while the agent is not up yet.
pub async fn agent_address(client: &Client, node: &str, vmid: u32) -> Result<Option<String>, ProxmoxError> {
    Ok(match agent_answer(client, node, vmid).await? {
        AgentAnswer::Address(address) => Some(address),
        AgentAnswer::NotRunning | AgentAnswer::NoAddress => None,
    })
}

/// What one `network-get-interfaces` told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAnswer {
    /// The agent does not answer (the guest boots, or its image has no qemu-guest-agent).
    NotRunning,
    /// The agent answers, but no interface has a usable address yet.
    NoAddress,
    Address(String),
}

/// Asks the guest agent once.
pub async fn agent_answer(client: &Client, node: &str, vmid: u32) -> Result<AgentAnswer, ProxmoxError> {
    let path = format!("{}/agent/network-get-interfaces", vm_path(node, vmid));
    match client.get(&path, &[]).await {
        Ok(data) => Ok(pick_address(data.get("result").unwrap_or(&data))
            .map_or(AgentAnswer::NoAddress, AgentAnswer::Address)),
        Err(err) if agent_not_ready(&err) => Ok(AgentAnswer::NotRunning),
        Err(err) => Err(err),
    }
}

/// "QEMU guest agent is not running" (the guest is still booting) and an agent that does not
/// answer yet (`guest-ping … got timeout`) both mean: ask again later.
pub fn agent_not_ready(err: &ProxmoxError) -> bool {
    match err {
        ProxmoxError::Http { status: 500, message, .. } => {
            message.contains("guest agent is not running")
                || message.contains("got timeout")
                || message.contains("not running")
        }
        _ => false,
    }
}

/// The first usable address of `network-get-interfaces`: not on `lo`, not link-local,
/// multicast or unspecified; IPv4 before IPv6. (Only test setups give a non-`lo` interface a
/// 127/8 address; it is accepted so tests never dial anything but loopback.)
pub fn pick_address(interfaces: &Value) -> Option<String> {
    let mut v4 = None;
    let mut v6 = None;
    for interface in interfaces.as_array()? {
        if interface.get("name").and_then(Value::as_str) == Some("lo") {
            continue;
        }
        let addresses = interface.get("ip-addresses").and_then(Value::as_array);
        for address in addresses.into_iter().flatten() {
            let Some(ip) =
                address.get("ip-address").and_then(Value::as_str).and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            match ip {
                IpAddr::V4(ip) if !ip.is_link_local() && !ip.is_unspecified() && !ip.is_multicast() => {
                    v4.get_or_insert(ip.to_string());
                }
                IpAddr::V6(ip)
                    if !ip.is_unspecified()
                        && !ip.is_multicast()
                        && !ip.is_loopback()
                        && (ip.segments()[0] & 0xffc0) != 0xfe80 =>
                {
                    v6.get_or_insert(ip.to_string());
                }
                _ => {}
            }
        }
    }
    v4.or(v6)
}

/// Polls the agent until it reports an address or `timeout` passes. An agent that has not
/// answered for a while is said so in the log at once (a bootstrap image without
/// qemu-guest-agent never answers, and waiting out the whole timeout silently looks like a
/// hang), and the final error tells a silent agent from one without an address.
pub async fn wait_for_address(
    client: &Client,
    node: &str,
    vmid: u32,
    timeout: Duration,
    interval: Duration,
) -> Result<String, StepError> {
    let started = Instant::now();
    let warn_after = (timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut ever_answered = false;
    let mut warned = false;
    loop {
        match agent_answer(client, node, vmid).await? {
            AgentAnswer::Address(address) => return Ok(address),
            AgentAnswer::NoAddress => ever_answered = true,
            AgentAnswer::NotRunning if !ever_answered && !warned && started.elapsed() >= warn_after => {
                warned = true;
                tracing::warn!(
                    "VM {vmid} on node `{node}`: the QEMU guest agent has not answered for {}s; waiting up to {}s (`apply.address_timeout`). A bootstrap image without qemu-guest-agent never answers: install it in the template, or declare `nixprox.address` (docs/troubleshooting.md#the-guest-agent-does-not-answer)",
                    started.elapsed().as_secs(),
                    timeout.as_secs()
                );
            }
            AgentAnswer::NotRunning => {}
        }
        if started.elapsed() >= timeout {
            let why = if ever_answered {
                "the QEMU guest agent answered but reported no usable address (did the VM get a DHCP lease?)"
            } else {
                "the QEMU guest agent never answered (is qemu-guest-agent installed and running in the VM's image?)"
            };
            return Err(StepError::other(format!(
                "no address for VM {vmid} on node `{node}` within {}s: {why}; set `nixprox.address` for a static address, or raise `apply.address_timeout` (docs/troubleshooting.md#the-guest-agent-does-not-answer)",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(
            interval.min(timeout.saturating_sub(started.elapsed())).max(Duration::from_millis(10)),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn address_from_the_agent() {
        let answer = json!([
            {"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4"}]},
            {"name": "eth0", "ip-addresses": [
                {"ip-address": "fe80::1", "ip-address-type": "ipv6"},
                {"ip-address": "2001:db8::5", "ip-address-type": "ipv6"},
                {"ip-address": "169.254.3.3", "ip-address-type": "ipv4"},
                {"ip-address": "127.0.0.31", "ip-address-type": "ipv4"}
            ]}
        ]);
        assert_eq!(pick_address(&answer).as_deref(), Some("127.0.0.31"));
        let only_v6 = json!([{"name": "ens18", "ip-addresses": [{"ip-address": "fe80::2"}, {"ip-address": "2001:db8::7"}]}]);
        assert_eq!(pick_address(&only_v6).as_deref(), Some("2001:db8::7"));
        assert_eq!(
            pick_address(&json!([{"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1"}]}])),
            None
        );
        assert_eq!(pick_address(&json!({})), None);
    }

    #[test]
    fn agent_states() {
        let http = |message: &str| ProxmoxError::Http {
            method: reqwest::Method::GET,
            path: "/x".into(),
            status: 500,
            message: message.into(),
            body: String::new(),
            hint: None,
        };
        assert!(agent_not_ready(&http("QEMU guest agent is not running")));
        assert!(agent_not_ready(&http("VM 101 qmp command 'guest-ping' failed - got timeout")));
        assert!(!agent_not_ready(&http("Permission check failed (/vms/101, VM.GuestAgent.Audit)")));
        assert!(is_missing(&http("Configuration file 'nodes/pve1/qemu-server/101.conf' does not exist")));
    }
}
