//! What one step of a host's run returns and how it is recorded: a step ends [`Done`] (with a
//! status, a detail and warnings for the report) or with a [`StepError`]; the [`Log`] times
//! each step, reports its progress and keeps its [`StepReport`].

use std::future::Future;
use std::time::Instant;

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

/// A step that failed: where, and why. Ends the host's run.
#[derive(Debug)]
pub struct Failure {
    pub step: String,
    pub error: String,
}

impl Failure {
    pub fn new(step: &str, error: impl Into<String>) -> Failure {
        Failure { step: step.into(), error: error.into() }
    }
}

/// The steps of one host as they finish.
#[derive(Debug)]
pub struct Log<'r> {
    pub progress: &'r Progress,
    pub host: &'r str,
    pub steps: Vec<StepReport>,
}

impl Log<'_> {
    /// Runs `body` as the step `name`: times it, reports progress, records the result.
    pub async fn step<T, F>(&mut self, name: &str, body: F) -> Result<T, Failure>
    where
        F: Future<Output = Result<Done<T>, StepError>>,
    {
        self.progress.step_started(self.host, name);
        let started = Instant::now();
        let result = body.await;
        let duration_ms = millis(started.elapsed());
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
