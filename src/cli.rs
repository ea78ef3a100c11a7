//! The `playbookd` command line: one verb per subcommand, each mapped to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
use crate::ctl_client::{self, CtlArgs, CtlError};
use crate::daemon::{Daemon, DaemonError, EXIT_CONFIG};
use crate::registry::playbook;
use crate::status_client::{self, ClientError, StatusArgs};
use crate::store::{self, StoreError};
use crate::systemd;

/// Rootless, fail-closed runner of signed incident-response playbooks.
#[derive(Debug, Parser)]
#[command(name = "playbookd", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Operator client for control.sock: pending, approve, deny, cancel, halt-resolve, reload.
    Ctl(CtlArgs),
    /// Query the read-only status API (health without a subcommand).
    Status(StatusArgs),
    /// Parse and validate playbook or bindings files offline (signatures are not checked).
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{failed} of {total} files failed validation")]
    Invalid { failed: usize, total: usize },
    #[error("failed to start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Status(#[from] ClientError),
    #[error(transparent)]
    Ctl(#[from] CtlError),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Config(_) => ExitCode::from(EXIT_CONFIG),
            CliError::Daemon(error) => error.exit_code(),
            CliError::Ctl(error) => error.exit_code(),
            CliError::Status(ClientError::Config(_)) => ExitCode::from(EXIT_CONFIG),
            CliError::Store(_)
            | CliError::Runtime(_)
            | CliError::Status(_)
            | CliError::Invalid { .. } => ExitCode::FAILURE,
        }
    }
}

/// Runs one parsed command line to completion.
pub fn run(cli: Cli) -> Result<(), CliError> {
    systemd::init_logging();
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            runtime()?.block_on(async {
                let daemon = Daemon::build(config).await?;
                daemon.run_until_stopped(CancellationToken::new()).await?;
                Ok(())
            })
        }
        Command::Status(args) => Ok(status_client::run(args)?),
        Command::Ctl(args) => Ok(ctl_client::run(args)?),
        Command::Validate { files } => validate(&files),
        Command::Migrate { config } => {
            let config = Config::load(&config)?;
            runtime()?.block_on(async {
                let mut client = store::connect_single(&config.postgres_config()).await?;
                let report = store::migrate::migrate(&mut client).await?;
                if report.applied.is_empty() {
                    println!("schema up to date; nothing applied");
                } else {
                    for name in report.applied {
                        println!("applied {name}");
                    }
                }
                Ok(())
            })
        }
    }
}

/// `validate FILE…`: one line per file, `FILE: ok (…)` or `FILE: reason`.
fn validate(files: &[PathBuf]) -> Result<(), CliError> {
    let mut failed = 0;
    for file in files {
        match playbook::load_document(file) {
            Ok(document) => println!("{}: ok ({})", file.display(), document.summary()),
            Err(error) => {
                failed += 1;
                println!("{}: {error}", file.display());
            }
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(CliError::Invalid {
            failed,
            total: files.len(),
        })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}
