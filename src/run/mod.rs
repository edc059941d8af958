//! Runs the commands: turns CLI arguments into requests and calls the modules in the order of
//! the data flow. This is the only place that reads the process environment.

mod apply_cmd;
mod changes;
mod drift_cmd;
mod forget_cmd;
mod gc_cmd;
mod import_cmd;
mod plan_cmd;
mod privileges;
mod probe;
mod publish;
pub mod shard;
mod shown;
mod signals;
pub mod source;

use std::io::IsTerminal;

use crate::cli::{Cli, ColorChoice, Command};

/// The process exit codes (docs/plan.md). CI scripts branch on them, so they never change
/// meaning: 1 is any error, and the outcomes a workflow reacts to differently have their own.
pub mod exit {
    /// Success: nothing to do, or done.
    pub const SUCCESS: u8 = 0;
    /// An error (message on stderr): bad input, an unreachable API, a missing privilege, …
    pub const ERROR: u8 = 1;
    /// `plan`/`drift --detailed-exitcode`: the plan has changes.
    pub const CHANGES: u8 = 2;
    /// `apply` ran, and at least one host failed (the report says which and where); a re-run
    /// resumes.
    pub const HOSTS_FAILED: u8 = 3;
    /// `apply` refused to start: the plan changed since it was reviewed (nothing was done).
    pub const REFUSED: u8 = 4;
    /// `apply` stopped on SIGINT (128 + 2, the shells' convention); the report says what was
    /// left, and a re-run resumes.
    pub const INTERRUPTED: u8 = 130;
    /// `apply` stopped on SIGTERM (128 + 15).
    pub const TERMINATED: u8 = 143;
}

/// How a successful run ends; errors map through [`error_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do, or done.
    Success,
    /// `plan --detailed-exitcode` found changes.
    Changes,
    /// `apply` ran, and at least one host failed (the report says which and where).
    HostsFailed,
    /// `apply` was asked to stop by this signal (the report says what was left).
    Cancelled(crate::apply::Signal),
}

impl Outcome {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Success => exit::SUCCESS,
            Outcome::Changes => exit::CHANGES,
            Outcome::HostsFailed => exit::HOSTS_FAILED,
            Outcome::Cancelled(crate::apply::Signal::Interrupt) => exit::INTERRUPTED,
            Outcome::Cancelled(crate::apply::Signal::Terminate) => exit::TERMINATED,
        }
    }
}

/// The exit code of a run that ended in `err`: [`exit::REFUSED`] when apply refused a plan
/// that changed since review, [`exit::ERROR`] for everything else.
pub fn error_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<crate::apply::ApplyError>() {
        Some(crate::apply::ApplyError::Stale(_) | crate::apply::ApplyError::NotShown(_)) => exit::REFUSED,
        _ => exit::ERROR,
    }
}

/// Logs go to stderr (stdout is data), filtered by `NIXPROX_LOG` (default `info`), without
/// colour when `NO_COLOR` is set or stderr is not a terminal.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIXPROX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .without_time()
        .init();
}

/// Prints an error and its causes on stderr.
pub fn report_error(err: &anyhow::Error) {
    eprintln!("error: {err:#}");
}

/// Whether stdout gets colour.
pub(crate) fn stdout_color(choice: ColorChoice) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    }
}

/// Runs one command on a multi-threaded runtime.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    // reqwest and octocrab both bring rustls; pick the provider once so neither has to guess.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Plan(args) => plan_cmd::run(args, stdout_color(cli.color)).await,
            Command::Apply(args) => apply_cmd::run(args).await,
            Command::Drift(args) => drift_cmd::run(args, stdout_color(cli.color)).await,
            Command::Forget(args) => forget_cmd::run(args).await,
            Command::Import(args) => import_cmd::run(args).await,
            Command::GcImages(args) => gc_cmd::run(args).await,
        }
    })
}
