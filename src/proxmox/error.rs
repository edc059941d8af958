//! Errors of the Proxmox API client: what went wrong, the fix for it, and whether trying again
//! can help. Callers (planner, executor) branch on the variants and on [`ProxmoxError::is_transient`].
//!
//! Every text here is built from what PVE answered, with the token secret removed (see
//! [`crate::text::redact`]): PVE never echoes it today, but a proxy in front of it, or a future error page,
//! might, and these messages end up in CI logs and PR comments.

use std::time::Duration;

use reqwest::Method;

/// Everything that can go wrong talking to the Proxmox API.
#[derive(Debug, thiserror::Error)]
pub enum ProxmoxError {
    /// The API answered with an HTTP error.
    #[error("failed to {} `{path}`: {status} {message}{}", verb(method), hint_suffix(hint))]
    Http {
        method: Method,
        path: String,
        status: u16,
        /// PVE's message (with per-parameter errors appended), or the start of a non-JSON body.
        message: String,
        /// The whole response body (redacted, cut at 4 KiB), for logs.
        body: String,
        hint: Option<String>,
    },
    /// No HTTP answer: refused, unreachable, TLS failure, timeout, connection reset.
    #[error("failed to {} `{path}`: {}", verb(method), transport_text(kind, url, detail, timeout))]
    Transport {
        method: Method,
        path: String,
        /// The API's base URL, so the reader sees where nixprox tried to connect.
        url: String,
        kind: TransportKind,
        detail: String,
        /// The per-request timeout in force (for [`TransportKind::Timeout`]'s text).
        timeout: Duration,
    },
    /// An answer that is not the JSON PVE sends (`{"data": …}`) or not of the expected shape.
    #[error("failed to {} `{path}`: unexpected answer: {detail} (body: {body})", verb(method))]
    Decode { method: Method, path: String, detail: String, body: String },
    /// A PVE task (UPID) ended with an error (boxed: it is the largest variant).
    #[error("{0}")]
    TaskFailed(Box<TaskFailure>),
    /// A task still running when nixprox stopped waiting for it.
    #[error(
        "task {task_type} of `{id}` on node `{node}` did not finish within {}s (task `{upid}`; it may still be running: see the node's task list)",
        waited.as_secs_f64()
    )]
    TaskTimeout { upid: String, node: String, task_type: String, id: String, waited: Duration },
    /// The client could not be set up (URL, CA file, token).
    #[error("{message}")]
    Config { message: String },
    /// PVE accepted a write and answered with its task, but following that task failed (the
    /// status could not be read): whether the write did its work is unknown. Shown as the
    /// failure underneath; [`ProxmoxError::not_executed`] is false.
    #[error(transparent)]
    Unconfirmed(Box<ProxmoxError>),
}

/// A task that ended in an error: which, how, and the end of its log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "task {task_type} of `{id}` on node `{node}` failed: {exitstatus} (task `{upid}`){}",
    log_suffix(log_tail)
)]
pub struct TaskFailure {
    pub upid: String,
    pub node: String,
    pub task_type: String,
    pub id: String,
    pub exitstatus: String,
    /// The last lines of the task log (up to [`crate::proxmox::tasks::LOG_TAIL_LINES`]).
    pub log_tail: Vec<String>,
}

/// An answer that does not have the shape PVE's API documents, as the pure parsers of the
/// read path find it; [`UnexpectedAnswer::at`] makes it the request's [`ProxmoxError::Decode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnexpectedAnswer(pub String);

impl UnexpectedAnswer {
    /// The decode error of the request `method path` that answered `data`.
    pub fn at(self, method: Method, path: &str, data: &serde_json::Value) -> ProxmoxError {
        ProxmoxError::Decode {
            method,
            path: path.to_string(),
            detail: self.0,
            body: crate::text::truncate(&data.to_string(), 300),
        }
    }
}

/// Why a request got no HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Refused, unreachable, DNS: the request never reached the API.
    Connect,
    /// The server's certificate was not accepted (or the handshake failed).
    Tls,
    /// No answer within the per-request timeout.
    Timeout,
    /// The connection broke after the request was sent (reset, closed, truncated body).
    Broken,
}

impl ProxmoxError {
    /// Whether the same request may succeed if tried again shortly: a busy or restarting
    /// node, a held config lock, a backup in progress, a flaky network.
    ///
    /// PVE answers most refusals with HTTP 500, so a 5xx counts as transient unless its
    /// message is one of PVE's permanent answers ("does not exist", "already running", …).
    pub fn is_transient(&self) -> bool {
        match self {
            ProxmoxError::Http { status, message, .. } => {
                *status >= 500 && *status != 501 && transient_message(message)
            }
            ProxmoxError::Transport { kind, .. } => *kind != TransportKind::Tls,
            ProxmoxError::TaskFailed(failure) => {
                let text = failure.exitstatus.as_str();
                is_lock_timeout(text) || text.contains("got no worker upid") || locked_by_busy_task(text)
            }
            ProxmoxError::Unconfirmed(inner) => inner.is_transient(),
            ProxmoxError::Decode { .. } | ProxmoxError::TaskTimeout { .. } | ProxmoxError::Config { .. } => {
                false
            }
        }
    }

    /// Whether the request certainly did not take effect, so even a non-idempotent POST may be
    /// sent again: PVE answered with an error (it checks before it acts), the connection was
    /// never made, or the task failed before it could act (a config lock it did not get, a
    /// worker that did not start, a VM busy with a backup).
    pub fn not_executed(&self) -> bool {
        match self {
            ProxmoxError::Http { .. } => true,
            ProxmoxError::Transport { kind, .. } => {
                matches!(kind, TransportKind::Connect | TransportKind::Tls)
            }
            ProxmoxError::TaskFailed(_) => self.is_transient(),
            _ => false,
        }
    }

    /// Whether the request may or may not have done its work: sent, but no answer came (a
    /// timeout, a connection lost), or PVE accepted it and its task could not be followed to
    /// its end. Neither "not executed" nor a definite failure: a caller that must not act
    /// twice looks for the effect before it sends anything again.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            ProxmoxError::Transport { kind, .. } => {
                matches!(kind, TransportKind::Timeout | TransportKind::Broken)
            }
            ProxmoxError::Unconfirmed(_) | ProxmoxError::TaskTimeout { .. } | ProxmoxError::Decode { .. } => {
                true
            }
            ProxmoxError::Http { .. } | ProxmoxError::TaskFailed(_) | ProxmoxError::Config { .. } => false,
        }
    }

    /// PVE's answer when a config write lost a compare-and-swap.
    pub fn is_digest_conflict(&self) -> bool {
        self.pve_message().is_some_and(|text| text.contains("checksum mismatch"))
    }

    /// PVE's answer when a VMID is taken: `unable to create VM 101: config file already
    /// exists` (clone), `… - VM 101 already exists on node 'pve1'` (create), `VM 101 already
    /// exists` (`/cluster/nextid?vmid=101`).
    pub fn is_vmid_taken(&self) -> bool {
        self.pve_message().is_some_and(|text| text.contains("already exists"))
    }

    /// PVE's answer for a VM that is not (or no longer) there.
    pub fn is_missing(&self) -> bool {
        matches!(self, ProxmoxError::Http { status: 500, message, .. } if message.contains("does not exist"))
    }

    /// The guest agent is not there yet, so ask again later: qemu-server's
    /// `assert_agent_available` (`PVE/QemuServer/Agent.pm`) answers 500 "QEMU guest agent is
    /// not running" while the guest boots (PVE 8 and 9), and an agent that does not answer yet
    /// times out (`VM 101 qmp command 'guest-ping' failed - got timeout`). The one place that
    /// decides it, for every agent wait ([`super::agent::wait_for_agent`]). A stopped VM
    /// ("VM 101 is not running") is not "not yet": waiting would not start it.
    pub fn agent_not_ready(&self) -> bool {
        match self {
            ProxmoxError::Http { status: 500, message, .. } => {
                message.contains("QEMU guest agent is not running")
                    || (message.contains("qmp command 'guest-") && message.contains("got timeout"))
            }
            _ => false,
        }
    }

    /// What PVE said: the message of an HTTP error or the exit status of a failed task.
    fn pve_message(&self) -> Option<&str> {
        match self {
            ProxmoxError::Http { message, .. } => Some(message),
            ProxmoxError::TaskFailed(failure) => Some(&failure.exitstatus),
            _ => None,
        }
    }

    /// The HTTP status, when the API answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ProxmoxError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl crate::retry::Retryable for ProxmoxError {
    fn is_transient(&self) -> bool {
        ProxmoxError::is_transient(self)
    }

    fn not_executed(&self) -> bool {
        ProxmoxError::not_executed(self)
    }
}

/// `can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout`
pub(crate) fn is_lock_timeout(message: &str) -> bool {
    message.contains("can't lock file") && message.contains("got timeout")
}

/// `VM is locked (backup)`: the lock goes away when the job ends. Locks left by an
/// interrupted snapshot or a suspend stay until someone runs `qm unlock`, so they are not.
fn locked_by_busy_task(message: &str) -> bool {
    ["(backup)", "(migrate)", "(clone)", "(create)", "(copy)"]
        .iter()
        .any(|lock| message.contains(&format!("is locked {lock}")))
}

/// PVE's permanent 5xx answers: the same request will fail the same way.
const PERMANENT: [&str; 13] = [
    "does not exist",
    "already exists",
    "already running",
    "not running",
    "checksum mismatch",
    "unable to parse",
    "no such",
    "not implemented",
    "is a template",
    "protection mode enabled",
    "you can't",
    "not allowed",
    // Lost quorum: it lasts until an operator brings nodes back, so retrying only delays the
    // message (pve-cluster `check_cfs_quorum`).
    "no quorum",
];

fn transient_message(message: &str) -> bool {
    if message.contains("is locked (") {
        return locked_by_busy_task(message);
    }
    let lower = message.to_ascii_lowercase();
    !PERMANENT.iter().any(|p| lower.contains(p))
}

fn verb(method: &Method) -> &'static str {
    match *method {
        Method::GET => "read",
        Method::POST => "post to",
        Method::PUT => "update",
        Method::DELETE => "delete",
        _ => "call",
    }
}

fn hint_suffix(hint: &Option<String>) -> String {
    hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
}

fn log_suffix(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut text = String::from("; last lines of its log:");
    for line in lines {
        text.push_str("\n  ");
        text.push_str(line);
    }
    text
}

fn transport_text(kind: &TransportKind, url: &str, detail: &str, timeout: &Duration) -> String {
    match kind {
        TransportKind::Connect => format!(
            "cannot connect to `{url}`: {detail} (is the Proxmox API reachable from here? check `proxmox.url` or PROXMOX_URL)"
        ),
        TransportKind::Tls => format!(
            "TLS handshake with `{url}` failed: {detail} (set `proxmox.ca_cert` to the PEM file of the CA that signed the API's certificate, e.g. a copy of /etc/pve/pve-root-ca.pem, or set `proxmox.insecure: true` for a throwaway lab)"
        ),
        TransportKind::Timeout => format!(
            "no answer from `{url}` within {}s (is the node overloaded? raise `proxmox.timeout`)",
            timeout.as_secs_f64()
        ),
        TransportKind::Broken => format!("the connection to `{url}` broke: {detail}"),
    }
}

/// The hint for an HTTP error: what to change so the request succeeds.
pub(crate) fn hint_for(status: u16, message: &str, token_id: &str) -> Option<String> {
    match status {
        401 => Some(format!(
            "check PROXMOX_API_TOKEN (`user@realm!tokenid=secret`): the token `{token_id}` was rejected; it must exist, be unexpired and have this secret"
        )),
        403 => Some(match permission_check(message) {
            Some((path, privilege)) => format!("give the token `{privilege}` on `{path}`"),
            None => "give the token the privilege this request needs".to_string(),
        }),
        595 | 596 => Some("a cluster node is offline or unreachable from the node answering the API".into()),
        _ if message.contains("no quorum") => Some(
            "the cluster has lost quorum and /etc/pve is read-only: check `pvecm status`, bring enough nodes back, then run apply again".into(),
        ),
        _ if is_lock_timeout(message) => {
            Some("another task holds the VM's config lock; wait for it or check the node's task list".into())
        }
        _ => None,
    }
}

/// `Permission check failed (/vms/101, VM.Audit)` → `("/vms/101", "VM.Audit")`.
fn permission_check(message: &str) -> Option<(&str, &str)> {
    let inside = message.split_once("Permission check failed (")?.1.split_once(')')?.0;
    let (path, privilege) = inside.split_once(',')?;
    let (path, privilege) = (path.trim(), privilege.trim());
    (path.starts_with('/') && !privilege.is_empty()).then_some((path, privilege))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, message: &str) -> ProxmoxError {
        ProxmoxError::Http {
            method: Method::GET,
            path: "/nodes/pve1/qemu/101/config".into(),
            status,
            message: message.into(),
            body: String::new(),
            hint: hint_for(status, message, "ci@pve!plan"),
        }
    }

    #[test]
    fn forbidden_names_privilege_and_path() {
        assert_eq!(
            http(403, "Permission check failed (/vms/101, VM.Audit)").to_string(),
            "failed to read `/nodes/pve1/qemu/101/config`: 403 Permission check failed (/vms/101, VM.Audit) (give the token `VM.Audit` on `/vms/101`)"
        );
        assert_eq!(permission_check("Permission check failed (API token not allowed)"), None);
    }

    #[test]
    fn unauthorized_points_at_the_token() {
        assert_eq!(
            http(401, "authentication failure").to_string(),
            "failed to read `/nodes/pve1/qemu/101/config`: 401 authentication failure (check PROXMOX_API_TOKEN (`user@realm!tokenid=secret`): the token `ci@pve!plan` was rejected; it must exist, be unexpired and have this secret)"
        );
    }

    #[test]
    fn transient_and_permanent_answers() {
        for message in [
            "can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout",
            "VM is locked (backup)",
            "got no worker upid - start worker failed",
            "proxy loop detected",
        ] {
            assert!(http(500, message).is_transient(), "{message}");
        }
        assert!(http(503, "Service Unavailable").is_transient());
        assert!(http(595, "No route to host").is_transient());
        for message in [
            "Configuration file 'nodes/pve1/qemu-server/101.conf' does not exist",
            "VM 101 already running",
            "checksum mismatch (file change by other user?)",
            "VM is locked (snapshot)",
            "unable to parse worker upid 'x'",
            "cluster not ready - no quorum?",
        ] {
            assert!(!http(500, message).is_transient(), "{message}");
        }
        assert!(!http(501, "Method not implemented").is_transient());
        assert!(!http(400, "Parameter verification failed.").is_transient());
        assert!(!http(403, "Permission check failed (/, Sys.Audit)").is_transient());
    }

    #[test]
    fn task_failures_carry_the_log_tail() {
        let err = ProxmoxError::TaskFailed(Box::new(TaskFailure {
            upid: "UPID:pve1:00000001:00000002:00000003:qmstart:101:root@pam:".into(),
            node: "pve1".into(),
            task_type: "qmstart".into(),
            id: "101".into(),
            exitstatus: "can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout".into(),
            log_tail: vec!["starting".into(), "TASK ERROR: x".into()],
        }));
        assert!(err.is_transient());
        assert_eq!(
            err.to_string(),
            "task qmstart of `101` on node `pve1` failed: can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout (task `UPID:pve1:00000001:00000002:00000003:qmstart:101:root@pam:`); last lines of its log:\n  starting\n  TASK ERROR: x"
        );
    }

    #[test]
    fn pve_answers_apply_branches_on() {
        let http = |message: &str| http(500, message);
        assert!(http("QEMU guest agent is not running").agent_not_ready());
        assert!(http("VM 101 qmp command 'guest-ping' failed - got timeout").agent_not_ready());
        assert!(!http("Permission check failed (/vms/101, VM.GuestAgent.Audit)").agent_not_ready());
        assert!(!http("VM 101 is not running").agent_not_ready(), "a stopped VM is no agent starting");
        assert!(
            !http("can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout").agent_not_ready()
        );
        assert!(http("Configuration file 'nodes/pve1/qemu-server/101.conf' does not exist").is_missing());
        assert!(http("checksum mismatch (file change by other user?)").is_digest_conflict());
        assert!(http("unable to create VM 101: config file already exists").is_vmid_taken());
        assert!(http("unable to create VM 101 - VM 101 already exists on node 'pve1'").is_vmid_taken());
    }

    #[test]
    fn what_may_have_run() {
        let task_failed = |exitstatus: &str| {
            ProxmoxError::TaskFailed(Box::new(TaskFailure {
                upid: String::new(),
                node: "pve1".into(),
                task_type: "qmclone".into(),
                id: "9000".into(),
                exitstatus: exitstatus.into(),
                log_tail: Vec::new(),
            }))
        };
        let lock = task_failed("can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout");
        assert!(lock.not_executed(), "a task that did not get its lock did nothing");
        let clone_failed = task_failed("clone failed: no space left on device");
        assert!(!clone_failed.not_executed());
        assert!(http(500, "VM is locked (backup)").not_executed(), "PVE refused it");
        let unconfirmed = ProxmoxError::Unconfirmed(Box::new(http(503, "Service Unavailable")));
        assert!(unconfirmed.is_transient() && !unconfirmed.not_executed() && unconfirmed.outcome_unknown());
        assert!(!clone_failed.outcome_unknown(), "a failed task is a known outcome");
        assert!(!http(500, "VM is locked (backup)").outcome_unknown());
        assert_eq!(unconfirmed.to_string(), http(503, "Service Unavailable").to_string());
    }
}
