//! The `playbookd` binary: parse the command line, run it, turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = playbookd::cli::Cli::parse();
    match playbookd::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): nothing to report and nobody to report it to.
        Err(error) if error.is_closed_output() => error.exit_code(),
        Err(error) => {
            eprintln!(
                "playbookd: {}",
                playbookd::store::audit::error_chain(&error)
            );
            error.exit_code()
        }
    }
}
