//! Progress while apply runs, on stderr (stdout is for data).
//!
//! On a terminal: one indicatif spinner per host showing its current step. In CI (`CI` or
//! `GITHUB_ACTIONS` set): a plain line per finished step as it happens, and when a host ends,
//! its steps again inside `::group::host … ::endgroup::` so the log folds per host even though
//! hosts run concurrently. Quiet: nothing (tests, `--report` only runs).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::report::{HostReport, StepReport};
use crate::proxmox::upload::{TenPercentSteps, UploadProgress};

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Tty,
    Ci,
    Quiet,
}

impl ProgressMode {
    /// `Ci` when `CI` or `GITHUB_ACTIONS` is set, `Tty` when stderr is a terminal, else `Ci`
    /// (plain lines are the right thing for any log file).
    pub fn detect() -> ProgressMode {
        use std::io::IsTerminal;
        let ci = ["CI", "GITHUB_ACTIONS"].iter().any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
        if !ci && std::io::stderr().is_terminal() { ProgressMode::Tty } else { ProgressMode::Ci }
    }
}

/// The progress sink the executor reports to; safe to share between concurrent hosts.
#[derive(Debug)]
pub struct Progress {
    mode: ProgressMode,
    multi: Option<MultiProgress>,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
}

/// One line for a finished step: `web: clone ok (vmid 101) 2.1s`.
pub fn step_line(host: &str, step: &StepReport) -> String {
    let detail = step.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
    format!("{host}: {} {}{detail} {:.1}s", step.step, step.status.word(), step.duration_ms as f64 / 1000.0)
}

impl Progress {
    pub fn new(mode: ProgressMode) -> Progress {
        let multi = (mode == ProgressMode::Tty)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress { mode, multi, bars: Mutex::new(BTreeMap::new()) }
    }

    pub fn mode(&self) -> ProgressMode {
        self.mode
    }

    /// A step started.
    pub fn step_started(&self, host: &str, step: &str) {
        match self.mode {
            ProgressMode::Tty => {
                let Some(multi) = &self.multi else { return };
                let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
                let bar = bars.entry(host.to_string()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {prefix:.bold} {msg} ({elapsed})")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_prefix(host.to_string());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                });
                bar.set_message(format!("{step}…"));
            }
            ProgressMode::Ci | ProgressMode::Quiet => {}
        }
    }

    /// A step finished.
    pub fn step_finished(&self, host: &str, step: &StepReport) {
        match self.mode {
            ProgressMode::Tty => {
                if let Some(multi) = &self.multi {
                    let _ = multi.println(step_line(host, step));
                }
            }
            ProgressMode::Ci => eprintln!("{}", step_line(host, step)),
            ProgressMode::Quiet => {}
        }
    }

    /// What an upload reports as it goes: on a terminal a bar with bytes, rate and time left;
    /// in CI a line each time another 10 % is sent; nothing when quiet. Owned, because the
    /// upload hands it to the connection's body stream.
    pub fn upload_reporter(
        &self,
        host: &str,
        file: &str,
        total: u64,
    ) -> impl Fn(UploadProgress) + Send + Sync + 'static {
        let bar = self.multi.as_ref().map(|multi| {
            let bar = multi.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:.bold} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} (eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(host.to_string());
            bar.set_message(format!("upload {file}"));
            bar
        });
        let lines = (self.mode == ProgressMode::Ci).then(|| Mutex::new(TenPercentSteps::default()));
        let label = format!("{host}: upload {file}");
        move |progress: UploadProgress| {
            if let Some(bar) = &bar {
                bar.set_position(progress.sent);
                if progress.sent >= progress.total {
                    bar.finish_and_clear();
                }
            }
            let step = lines
                .as_ref()
                .and_then(|steps| steps.lock().unwrap_or_else(|e| e.into_inner()).step(&progress));
            if let Some(step) = step {
                eprintln!("{}", upload_line(&label, step, &progress));
            }
        }
    }

    /// A host finished: close its spinner, or print its folded group in CI.
    pub fn host_finished(&self, report: &HostReport) {
        match self.mode {
            ProgressMode::Tty => {
                let bar = self.bars.lock().unwrap_or_else(|e| e.into_inner()).remove(&report.host);
                if let Some(bar) = bar {
                    bar.finish_with_message(format!(
                        "{} ({:.1}s)",
                        report.outcome.label(),
                        report.duration_ms as f64 / 1000.0
                    ));
                }
            }
            ProgressMode::Ci => eprintln!("{}", ci_group(report)),
            ProgressMode::Quiet => {}
        }
    }
}

/// One CI line of an upload: `web: upload x.qcow2 40% (1.2 GiB of 3 GiB, 85 MiB/s)`.
pub fn upload_line(label: &str, step: u8, progress: &UploadProgress) -> String {
    format!(
        "{label} {step}% ({} of {}, {}/s)",
        HumanBytes(progress.sent),
        HumanBytes(progress.total),
        HumanBytes(progress.rate() as u64)
    )
}

/// A host's steps inside `::group::` / `::endgroup::`.
pub fn ci_group(report: &HostReport) -> String {
    let mut lines = vec![format!(
        "::group::{}: {} ({:.1}s)",
        report.host,
        report.outcome.label(),
        report.duration_ms as f64 / 1000.0
    )];
    lines.extend(report.steps.iter().map(|s| step_line(&report.host, s)));
    if let super::report::HostOutcome::Failed { step, error } = &report.outcome {
        lines.push(format!(
            "::error title=nixprox apply {}::failed at {step}: {}",
            report.host,
            error.replace('\n', "%0A")
        ));
    }
    lines.push("::endgroup::".into());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::report::{HostOutcome, StepStatus};

    #[test]
    fn upload_lines_show_bytes_and_rate() {
        let progress =
            UploadProgress { sent: 3 << 29, total: 3 << 30, elapsed: std::time::Duration::from_secs(16) };
        assert_eq!(
            upload_line("web: upload nixprox-x-scsi0.qcow2", 50, &progress),
            "web: upload nixprox-x-scsi0.qcow2 50% (1.50 GiB of 3.00 GiB, 96.00 MiB/s)"
        );
    }

    #[test]
    fn ci_groups_fold_one_host() {
        let report = HostReport {
            host: "web".into(),
            node: "pve1".into(),
            vmid: Some(101),
            outcome: HostOutcome::Failed { step: "start".into(), error: "boom\nlog".into() },
            address: None,
            duration_ms: 2500,
            steps: vec![
                StepReport {
                    step: "clone".into(),
                    status: StepStatus::Ok,
                    duration_ms: 1200,
                    detail: Some("vmid 101".into()),
                    warnings: vec![],
                },
                StepReport {
                    step: "start".into(),
                    status: StepStatus::Failed,
                    duration_ms: 300,
                    detail: None,
                    warnings: vec![],
                },
            ],
        };
        assert_eq!(
            ci_group(&report),
            "::group::web: failed (2.5s)\nweb: clone ok (vmid 101) 1.2s\nweb: start failed 0.3s\n::error title=nixprox apply web::failed at start: boom%0Alog\n::endgroup::"
        );
    }
}
