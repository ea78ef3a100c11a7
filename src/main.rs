//! The `playbookd` binary: parse the command line, run it, turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = playbookd::cli::Cli::parse();
    match playbookd::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = error.exit_code();
            // 0 after an error: the reader went away (`| head`), nothing to report and nobody
            // to report it to.
            if code != ExitCode::SUCCESS {
                eprintln!(
                    "playbookd: {}",
                    playbookd::store::audit::error_chain(&error)
                );
            }
            code
        }
    }
}
