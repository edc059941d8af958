//! The apply report: per host ok, failed (at which step, with the error), skipped, pending
//! reboot or cancelled (the run was asked to stop), with every step's duration and the warnings
//! Proxmox tasks ended with. Rendered as text (end of the run), JSON (`--report`) and Markdown
//! (PR comment, job summary).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// The version of the report's JSON; bumped on breaking changes.
pub const REPORT_VERSION: u32 = 1;

/// How one step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Ok,
    /// Nothing to do: the live state already matched (a resumed run).
    AlreadyDone,
    Failed,
    Skipped,
    /// The plan blocked the action; it was not run.
    Blocked,
    /// The run was asked to stop (SIGINT, SIGTERM): the step did not start, or was stopped.
    Cancelled,
}

impl StepStatus {
    /// The word the text report and the progress lines show.
    pub fn word(&self) -> &'static str {
        match self {
            StepStatus::Ok => "ok",
            StepStatus::AlreadyDone => "already done",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Blocked => "blocked",
            StepStatus::Cancelled => "cancelled",
        }
    }
}

/// One step of a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepReport {
    /// `clone`, `configure`, `resize scsi0`, `start`, `address`, `reboot`, `destroy`, `install`, …
    pub step: String,
    pub status: StepStatus,
    pub duration_ms: u64,
    /// What the step did or why it was skipped (`vmid 101`, `cores, memory`, `no deployer configured`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `WARN:` lines of tasks that ended with `WARNINGS: n`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// How a host ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum HostOutcome {
    Ok,
    Failed {
        step: String,
        error: String,
    },
    Skipped {
        reason: String,
    },
    /// Settings changed but wait for a reboot the host's policy does not allow.
    PendingReboot {
        keys: Vec<String>,
    },
    /// The run was asked to stop before the host was done: `step` did not start (or was
    /// stopped while it ran). A re-run resumes from there.
    Cancelled {
        step: String,
        reason: String,
    },
}

impl HostOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            HostOutcome::Ok => "ok",
            HostOutcome::Failed { .. } => "failed",
            HostOutcome::Skipped { .. } => "skipped",
            HostOutcome::PendingReboot { .. } => "pending reboot",
            HostOutcome::Cancelled { .. } => "cancelled",
        }
    }
}

/// One host's (or orphan VM's) run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostReport {
    pub host: String,
    pub node: String,
    pub vmid: Option<u32>,
    #[serde(flatten)]
    pub outcome: HostOutcome,
    /// The address found for the host (static, or from the guest agent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub duration_ms: u64,
    pub steps: Vec<StepReport>,
}

impl HostReport {
    /// Every task warning of the host's steps.
    pub fn warnings(&self) -> impl Iterator<Item = &String> {
        self.steps.iter().flat_map(|s| &s.warnings)
    }
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub version: u32,
    /// The id of the plan that was carried out (recomputed from the merged commit).
    pub plan_id: String,
    /// The id that was reviewed, when it differs (a resumed run or `--allow-new-plan`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reviewed_plan_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_rev: Option<String>,
    pub duration_ms: u64,
    /// The signal that stopped the run (`SIGINT`, `SIGTERM`), when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
    pub hosts: Vec<HostReport>,
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

impl ApplyReport {
    /// Whether any host failed: the exit code is 3 then (unless the run was cancelled).
    pub fn has_failures(&self) -> bool {
        self.hosts.iter().any(|h| matches!(h.outcome, HostOutcome::Failed { .. }))
    }

    /// The host that took longest, with its duration (for the performance log).
    pub fn slowest(&self) -> Option<&HostReport> {
        self.hosts.iter().max_by_key(|h| h.duration_ms)
    }

    /// "3 ok, 1 failed, 1 skipped, 1 pending reboot".
    pub fn summary_line(&self) -> String {
        let count = |label: &str| self.hosts.iter().filter(|h| h.outcome.label() == label).count();
        let mut parts = vec![format!("{} ok", count("ok")), format!("{} failed", count("failed"))];
        for label in ["skipped", "pending reboot", "cancelled"] {
            let n = count(label);
            if n > 0 {
                parts.push(format!("{n} {label}"));
            }
        }
        let cancelled =
            self.cancelled_by.as_ref().map(|signal| format!(" (cancelled by {signal})")).unwrap_or_default();
        format!("{} in {}{cancelled}", parts.join(", "), seconds(self.duration_ms))
    }

    /// Pretty JSON with a trailing newline (`--report FILE`).
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// The text printed at the end of a run.
    pub fn render_text(&self) -> String {
        let mut out = format!("apply {}: {}\n", self.plan_id, self.summary_line());
        for host in &self.hosts {
            let vm = match host.vmid {
                Some(vmid) => format!("{}/{vmid}", host.node),
                None => format!("{}/new", host.node),
            };
            let _ = writeln!(
                out,
                "\n{} ({vm}): {} in {}",
                host.host,
                host.outcome.label(),
                seconds(host.duration_ms)
            );
            for step in &host.steps {
                let status = match step.status {
                    StepStatus::Failed => "FAILED",
                    ref other => other.word(),
                };
                let detail = step.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
                let _ = writeln!(out, "  {:<14} {status}{detail} {}", step.step, seconds(step.duration_ms));
                for warning in &step.warnings {
                    let _ = writeln!(out, "    warning: {warning}");
                }
            }
            match &host.outcome {
                HostOutcome::Failed { step, error } => {
                    let _ = writeln!(out, "  error at {step}: {error}");
                }
                HostOutcome::Skipped { reason } => {
                    let _ = writeln!(out, "  {reason}");
                }
                HostOutcome::PendingReboot { keys } => {
                    let _ = writeln!(
                        out,
                        "  {} take effect at the next reboot (set `nixprox.deploy.allowReboot` to let nixprox reboot)",
                        keys.join(", ")
                    );
                }
                HostOutcome::Cancelled { step, reason } => {
                    let _ =
                        writeln!(out, "  cancelled at {step}: {reason}; run apply again to finish this host");
                }
                HostOutcome::Ok => {}
            }
            if let Some(address) = &host.address {
                let _ = writeln!(out, "  address: {address}");
            }
        }
        out
    }

    /// Markdown for the merged PR's comment and the job summary.
    pub fn render_markdown(&self) -> String {
        use crate::text::markdown::{code, escape, quoted};
        let mut out = String::from("### nixprox apply\n\n");
        let _ = writeln!(out, "Plan {}: {}\n", code(&self.plan_id), escape(&self.summary_line()));
        out.push_str("| host | VM | result | duration | detail |\n| --- | --- | --- | --- | --- |\n");
        for host in &self.hosts {
            let vm = host
                .vmid
                .map(|v| format!("{}/{v}", host.node))
                .unwrap_or_else(|| format!("{}/new", host.node));
            let detail = match &host.outcome {
                HostOutcome::Ok => String::new(),
                HostOutcome::Failed { step, error } => {
                    format!("at `{step}`: {}", error.lines().next().unwrap_or_default())
                }
                HostOutcome::Skipped { reason } => reason.clone(),
                HostOutcome::PendingReboot { keys } => format!("waits for a reboot: {}", keys.join(", ")),
                HostOutcome::Cancelled { step, reason } => format!("at `{step}`: {reason}"),
            };
            let detail = quoted(&detail);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {detail} |",
                code(&host.host),
                escape(&vm),
                host.outcome.label(),
                seconds(host.duration_ms)
            );
        }
        let warnings: Vec<String> = self
            .hosts
            .iter()
            .flat_map(|h| h.warnings().map(move |w| format!("- {}: {}", code(&h.host), quoted(w))))
            .collect();
        if !warnings.is_empty() {
            out.push_str("\nTask warnings:\n\n");
            out.push_str(&warnings.join("\n"));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ApplyReport {
        ApplyReport {
            version: REPORT_VERSION,
            plan_id: "0123456789abcdef".into(),
            reviewed_plan_id: None,
            git_rev: Some("abc".into()),
            duration_ms: 12_300,
            cancelled_by: None,
            hosts: vec![
                HostReport {
                    host: "web".into(),
                    node: "pve1".into(),
                    vmid: Some(101),
                    outcome: HostOutcome::Ok,
                    address: Some("127.0.0.20".into()),
                    duration_ms: 12_000,
                    steps: vec![StepReport {
                        step: "clone".into(),
                        status: StepStatus::Ok,
                        duration_ms: 3_000,
                        detail: Some("vmid 101".into()),
                        warnings: vec!["WARN: slow storage".into()],
                    }],
                },
                HostReport {
                    host: "db".into(),
                    node: "pve1".into(),
                    vmid: None,
                    outcome: HostOutcome::Failed {
                        step: "start".into(),
                        error: "task qmstart failed | x".into(),
                    },
                    address: None,
                    duration_ms: 2_000,
                    steps: vec![],
                },
            ],
        }
    }

    #[test]
    fn json_shape() {
        let json: serde_json::Value = serde_json::from_str(&sample().to_json()).expect("json");
        assert_eq!(json["hosts"][0]["status"], "ok");
        assert_eq!(json["hosts"][1]["status"], "failed");
        assert_eq!(json["hosts"][1]["step"], "start");
        assert_eq!(json["hosts"][0]["steps"][0]["warnings"][0], "WARN: slow storage");
        assert!(sample().has_failures());
        assert_eq!(sample().slowest().map(|h| h.host.as_str()), Some("web"));
    }

    #[test]
    fn text_and_markdown() {
        let report = sample();
        assert_eq!(report.summary_line(), "1 ok, 1 failed in 12.3s");
        let text = report.render_text();
        assert!(text.contains("web (pve1/101): ok in 12.0s"), "{text}");
        assert!(text.contains("  error at start: task qmstart failed | x"), "{text}");
        let markdown = report.render_markdown();
        assert!(
            markdown
                .contains("| `db` | pve1/new | failed | 2.0s | at `start`: task qmstart failed &#124; x |"),
            "{markdown}"
        );
        assert!(markdown.contains("- `web`: WARN: slow storage"), "{markdown}");
    }
}
