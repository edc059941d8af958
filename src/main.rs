//! The `nixprox` binary: parse, set up logging, run, and map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // clap exits with 2 on a usage error, which `plan --detailed-exitcode` means as "changes":
    // a bad command line is an error like any other (1); `--help` and `--version` succeed.
    let cli = match nixprox::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { ExitCode::from(1) } else { ExitCode::SUCCESS };
        }
    };
    nixprox::run::init_logging();
    match nixprox::run::run(cli) {
        Ok(outcome) => ExitCode::from(outcome.code()),
        Err(err) => {
            nixprox::run::report_error(&err);
            ExitCode::from(nixprox::run::error_code(&err))
        }
    }
}
