//! What one step of a host's run returns and how it is recorded: a step ends [`Done`] (with a
//! status, a detail and warnings for the report) or with a [`StepError`]; the [`Log`] times
//! each step, reports its progress, keeps its [`StepReport`], and starts no step once the run
//! was asked to stop (see [`super::cancel`]).

use std::future::Future;
use std::time::Instant;

use super::cancel::Cancel;
use super::progress::Progress;
use super::report::{StepReport, StepStatus, millis};
use crate::proxmox::ProxmoxError;

/// How a step went, when it did not fail.
#[derive(Debug)]
pub struct Done<T> {
    pub value: T,
    pub status: StepStatus,
    pub detail: Option<String>,
    pub warnings: Vec<String>,
}

impl<T> Done<T> {
    /// The step did its work.
    pub fn ok(value: T) -> Done<T> {
        Done { value, status: StepStatus::Ok, detail: None, warnings: Vec::new() }
    }

    /// Live state showed the work was done already: nothing was written.
    pub fn already(value: T) -> Done<T> {
        Done { value, status: StepStatus::AlreadyDone, detail: None, warnings: Vec::new() }
    }

    /// What the report shows next to the step.
    pub fn detail(mut self, detail: impl Into<String>) -> Done<T> {
        self.detail = Some(detail.into());
        self
    }

    /// Warnings of the Proxmox tasks the step ran.
    pub fn warnings(mut self, warnings: Vec<String>) -> Done<T> {
        self.warnings = warnings;
        self
    }
}

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

/// A step that failed, or was cancelled: where, and why. Ends the host's run.
#[derive(Debug)]
pub struct Failure {
    pub step: String,
    pub error: String,
    /// The run was asked to stop: the step did not start, or was stopped while it ran.
    pub cancelled: bool,
}

impl Failure {
    pub fn new(step: &str, error: impl Into<String>) -> Failure {
        Failure { step: step.into(), error: error.into(), cancelled: false }
    }

    fn cancelled(step: &str, reason: String) -> Failure {
        Failure { step: step.into(), error: reason, cancelled: true }
    }
}

/// How a step behaves when the run is asked to stop while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    /// It talks to Proxmox: let its task end and be recorded, within the grace.
    Finish,
    /// It only waits, or runs nixprox's own processes: stop it at once.
    Stop,
}

/// The steps of one host as they finish.
#[derive(Debug)]
pub struct Log<'r> {
    pub progress: &'r Progress,
    pub cancel: &'r Cancel,
    pub host: &'r str,
    pub steps: Vec<StepReport>,
}

impl Log<'_> {
    /// Runs `body` as the step `name`: times it, reports progress, records the result. A step
    /// that talks to Proxmox: once the run is asked to stop it does not start, and one already
    /// running gets [`IN_FLIGHT_GRACE`](super::cancel::IN_FLIGHT_GRACE) to finish.
    pub async fn step<T, F>(&mut self, name: &str, body: F) -> Result<T, Failure>
    where
        F: Future<Output = Result<Done<T>, StepError>>,
    {
        self.run(name, body, InFlight::Finish).await
    }

    /// Like [`Log::step`], for a step that only waits or runs nixprox's own processes (the
    /// address wait, nixos-anywhere, a switch): stopped at once when the run is asked to stop,
    /// which kills its processes and removes its temporary files.
    pub async fn interruptible<T, F>(&mut self, name: &str, body: F) -> Result<T, Failure>
    where
        F: Future<Output = Result<Done<T>, StepError>>,
    {
        self.run(name, body, InFlight::Stop).await
    }

    async fn run<T, F>(&mut self, name: &str, body: F, in_flight: InFlight) -> Result<T, Failure>
    where
        F: Future<Output = Result<Done<T>, StepError>>,
    {
        if let Some(signal) = self.cancel.requested() {
            let reason = format!("not started: apply was cancelled ({})", signal.name());
            self.record(name, StepStatus::Cancelled, &reason);
            return Err(Failure::cancelled(name, reason));
        }
        self.progress.step_started(self.host, name);
        let started = Instant::now();
        let cancel = self.cancel.clone();
        let stop = async move {
            match in_flight {
                InFlight::Finish => cancel.wait_abort().await,
                InFlight::Stop => {
                    cancel.wait_requested().await;
                }
            }
        };
        let result = tokio::select! {
            biased;
            result = body => Some(result),
            () = stop => None,
        };
        let duration_ms = millis(started.elapsed());
        let Some(result) = result else {
            let signal = self.cancel.requested().map(|s| s.name()).unwrap_or("a request");
            let reason = format!("stopped while running: apply was cancelled ({signal})");
            let report = StepReport {
                step: name.into(),
                status: StepStatus::Cancelled,
                duration_ms,
                detail: Some(reason.clone()),
                warnings: Vec::new(),
            };
            self.progress.step_finished(self.host, &report);
            self.steps.push(report);
            return Err(Failure::cancelled(name, reason));
        };
        let (report, out) = match result {
            Ok(done) => (
                StepReport {
                    step: name.into(),
                    status: done.status,
                    duration_ms,
                    detail: done.detail,
                    warnings: done.warnings,
                },
                Ok(done.value),
            ),
            Err(err) => (
                StepReport {
                    step: name.into(),
                    status: StepStatus::Failed,
                    duration_ms,
                    detail: None,
                    warnings: Vec::new(),
                },
                Err(Failure::new(name, err.to_string())),
            ),
        };
        self.progress.step_finished(self.host, &report);
        self.steps.push(report);
        out
    }

    /// Records a step that did not run (blocked, skipped) with its reason.
    pub fn record(&mut self, name: &str, status: StepStatus, reason: &str) {
        let report = StepReport {
            step: name.into(),
            status,
            duration_ms: 0,
            detail: Some(reason.into()),
            warnings: Vec::new(),
        };
        self.progress.step_finished(self.host, &report);
        self.steps.push(report);
    }

    /// Whether any step was left out (skipped or blocked), with their distinct reasons.
    pub fn left_out(&self) -> Option<String> {
        let left_out =
            || self.steps.iter().filter(|s| matches!(s.status, StepStatus::Skipped | StepStatus::Blocked));
        let reasons: std::collections::BTreeSet<&str> =
            left_out().filter_map(|s| s.detail.as_deref()).collect();
        left_out().next().map(|_| reasons.into_iter().collect::<Vec<_>>().join("; "))
    }
}
