//! The `nixprox` binary: parse, set up logging, run, and map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = nixprox::cli::Cli::parse();
    nixprox::run::init_logging();
    match nixprox::run::run(cli) {
        Ok(outcome) => ExitCode::from(outcome.code()),
        Err(err) => {
            nixprox::run::report_error(&err);
            ExitCode::from(nixprox::run::error_code(&err))
        }
    }
}
