//! Runs the commands: turns CLI arguments into requests and calls the modules in the order of
//! the data flow. This is the only place that reads the process environment.

mod apply_cmd;
mod drift_cmd;
mod plan_cmd;
mod probe;
mod publish;
pub mod shard;
pub mod source;

use std::io::IsTerminal;

use crate::cli::{Cli, ColorChoice, Command};

/// How a successful run ends; errors are exit code 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do, or done.
    Success,
    /// `plan --detailed-exitcode` found changes.
    Changes,
    /// `apply` ran, and at least one host failed (the report says which and where).
    HostsFailed,
}

impl Outcome {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Changes => 2,
            Outcome::HostsFailed => 1,
        }
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
        }
    })
}
