//! Waiting for a guest's QEMU guest agent: the one place that decides what "not yet" means and
//! how long it lasts.
//!
//! While a guest boots its agent is not there, and Proxmox says so with an error, not an empty
//! answer: qemu-server's `assert_agent_available` (`PVE/QemuServer/Agent.pm`, PVE 8 and 9) dies
//! with "QEMU guest agent is not running" (HTTP 500) until the agent's `guest-ping` answers, and
//! an agent whose channel is open but that does not answer yet times out its command (`VM 101
//! qmp command 'guest-ping' failed - got timeout`). [`ProxmoxError::agent_not_ready`] decides
//! both; every agent wait (the address, the SSH host key of an image VM or of an adoption, and
//! any later one) goes through [`wait_for_agent`], polls at the same interval within the same
//! bound (`apply.address_timeout`)
//! and, when the bound runs out, says so naming the VM, its node and the bound
//! ([`AgentTimedOut`]).

use std::future::Future;
use std::time::{Duration, Instant};

use super::error::ProxmoxError;

/// How long a wait for the agent may last, and how often it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentBound {
    /// `apply.address_timeout`.
    pub timeout: Duration,
    pub interval: Duration,
}

/// What one question to the agent found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked<T> {
    /// The answer the wait is for.
    Ready(T),
    /// The agent answered, but what the wait is for is not there yet (no address yet, the host
    /// key not written yet): why, in the user's words.
    NotYet(String),
}

/// Why a wait for the agent ended without its answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentWaitError {
    #[error(transparent)]
    Proxmox(#[from] ProxmoxError),
    #[error("{0}")]
    TimedOut(AgentTimedOut),
}

/// The bound ran out: which VM, what was waited for, for how long, and the last "not yet".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTimedOut {
    pub vmid: u32,
    pub node: String,
    /// What the wait was for: "an address", "the SSH host key".
    pub what: String,
    pub secs: u64,
    /// The agent's last "not yet" when it answered at all; `None`: it never answered (Proxmox
    /// said "QEMU guest agent is not running" every time).
    pub answered: Option<String>,
}

impl AgentTimedOut {
    /// Whether the agent answered at least once.
    pub fn agent_answered(&self) -> bool {
        self.answered.is_some()
    }

    /// "within 120s (`apply.address_timeout`)": the bound, and the setting that raises it.
    pub fn bound(&self) -> String {
        format!("within {}s (`apply.address_timeout`)", self.secs)
    }

    /// Why nothing came: a silent agent, or the agent's last "not yet".
    pub fn why(&self) -> String {
        match &self.answered {
            None => {
                "the QEMU guest agent never answered (Proxmox: `QEMU guest agent is not running`)".to_string()
            }
            Some(why) => format!("the QEMU guest agent answered, but {why}"),
        }
    }
}

impl std::fmt::Display for AgentTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no {} from VM {} on node `{}` {}: {}",
            self.what,
            self.vmid,
            self.node,
            self.bound(),
            self.why()
        )
    }
}

/// Asks the agent of VM `vmid` through `ask` until it is [`Asked::Ready`] or `bound` runs out.
/// An agent that is not running yet ([`ProxmoxError::agent_not_ready`]) is "not yet", as is
/// [`Asked::NotYet`]; any other error ends the wait at once. An agent silent for a quarter of
/// the bound is said so in the log while waiting (an image without qemu-guest-agent never
/// answers, and waiting out the whole bound silently looks like a hang).
pub async fn wait_for_agent<T, F, Fut>(
    node: &str,
    vmid: u32,
    what: &str,
    bound: AgentBound,
    mut ask: F,
) -> Result<T, AgentWaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Asked<T>, ProxmoxError>>,
{
    let started = Instant::now();
    let warn_after = (bound.timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut answered = None;
    let mut warned = false;
    loop {
        match ask().await {
            Ok(Asked::Ready(value)) => return Ok(value),
            Ok(Asked::NotYet(why)) => answered = Some(why),
            Err(err) if err.agent_not_ready() => {
                if answered.is_none() && !warned && started.elapsed() >= warn_after {
                    warned = true;
                    tracing::warn!(
                        "VM {vmid} on node `{node}`: the QEMU guest agent has not answered for {}s; waiting up to {}s (`apply.address_timeout`) for {what}. An image without qemu-guest-agent never answers (docs/troubleshooting.md#the-guest-agent-does-not-answer)",
                        started.elapsed().as_secs(),
                        bound.timeout.as_secs()
                    );
                }
            }
            Err(err) => return Err(err.into()),
        }
        if started.elapsed() >= bound.timeout {
            return Err(AgentWaitError::TimedOut(AgentTimedOut {
                vmid,
                node: node.to_string(),
                what: what.to_string(),
                secs: bound.timeout.as_secs(),
                answered,
            }));
        }
        let left = bound.timeout.saturating_sub(started.elapsed());
        tokio::time::sleep(bound.interval.min(left).max(Duration::from_millis(10))).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn not_running() -> ProxmoxError {
        ProxmoxError::Http {
            method: reqwest::Method::GET,
            path: "/nodes/pve1/qemu/101/agent/network-get-interfaces".into(),
            status: 500,
            message: "QEMU guest agent is not running".into(),
            body: String::new(),
            hint: None,
        }
    }

    fn bound(ms: u64) -> AgentBound {
        AgentBound { timeout: Duration::from_millis(ms), interval: Duration::from_millis(1) }
    }

    #[tokio::test]
    async fn the_agent_starting_is_not_yet_until_it_answers() {
        let calls = AtomicU32::new(0);
        let found = wait_for_agent("pve1", 101, "an address", bound(5_000), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0..3 => Err(not_running()),
                3 => Ok(Asked::NotYet("no address yet".into())),
                _ => Ok(Asked::Ready("127.0.0.44")),
            }
        })
        .await;
        assert_eq!(found.ok(), Some("127.0.0.44"));
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn the_bound_running_out_names_the_vm_the_bound_and_why() {
        let silent = wait_for_agent::<(), _, _>("pve1", 101, "SSH host key", bound(30), || async {
            Err(not_running())
        })
        .await;
        assert_eq!(
            silent.err().map(|e| e.to_string()).as_deref(),
            Some(
                "no SSH host key from VM 101 on node `pve1` within 0s (`apply.address_timeout`): the QEMU guest agent never answered (Proxmox: `QEMU guest agent is not running`)"
            )
        );
        let answered = wait_for_agent::<(), _, _>("pve1", 101, "address", bound(30), || async {
            Ok(Asked::NotYet("reported no usable address".into()))
        })
        .await;
        match answered {
            Err(AgentWaitError::TimedOut(timed_out)) => assert!(timed_out.agent_answered()),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn other_errors_end_the_wait_at_once() {
        let forbidden = || ProxmoxError::Http {
            method: reqwest::Method::GET,
            path: "/nodes/pve1/qemu/101/agent/file-read".into(),
            status: 403,
            message: "Permission check failed (/vms/101, VM.GuestAgent.FileRead)".into(),
            body: String::new(),
            hint: None,
        };
        let calls = AtomicU32::new(0);
        let err = wait_for_agent::<(), _, _>("pve1", 101, "SSH host key", bound(5_000), || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(forbidden()) }
        })
        .await;
        assert!(matches!(err, Err(AgentWaitError::Proxmox(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
