//! The `playbookd` command line: one verb per subcommand, each mapped to an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::actions::exec_runner::{self, RunnerError};
use crate::activation::{Activated, ActivationError};
use crate::actuator::{self, ActuatorError};
use crate::audit_cli::{self, AuditCliError};
use crate::bench::{self, BenchArgs, BenchError};
use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
use crate::ctl_client::{self, CtlArgs, CtlError};
use crate::daemon::{Daemon, DaemonError, EXIT_CONFIG};
use crate::registry::playbook;
use crate::registry::secure_open::TrustedDir;
use crate::registry::signature::{self, Algorithm, KeyError, Signer, TrustStoreError, TrustedKeys};
use crate::simulate::{self, SimulateError};
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
    /// The privileged helper (its own unit): signals, the nftables set and file quarantine,
    /// for the daemon's uid only, over a closed typed protocol.
    Actuator {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Runs one `exec` child for the daemon (started by playbookd-exec.socket, Accept=yes, with
    /// the connection on stdin and stdout).
    ExecRunner {
        /// The daemon's user: the only peer served.
        #[arg(long, default_value = "playbookd")]
        daemon_user: String,
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
    /// Show what a decision would do with a playbook: steps, rendered parameters, approvals.
    /// Nothing is executed and nothing is written.
    Simulate {
        /// A file holding one decision (JSON, as sent on decisions.sock).
        #[arg(long)]
        decision: PathBuf,
        /// The playbook YAML.
        playbook: PathBuf,
        /// As if the binding set `require_approval` (gates moderate steps too).
        #[arg(long)]
        require_approval: bool,
        #[arg(long)]
        json: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Generate a signing key: PREFIX.key (PKCS#8 PEM, mode 0600) and PREFIX.pub (SPKI PEM).
    Keygen {
        /// `ed25519` or `rsa4096`.
        #[arg(long, value_parser = parse_algorithm)]
        algorithm: Algorithm,
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign files: writes FILE.sig (raw signature bytes over the exact file bytes).
    Sign {
        /// PKCS#8 PEM private key (Ed25519, or RSA of at least 4096 bits).
        #[arg(long)]
        key: PathBuf,
        /// Write the second signature of dual control, FILE.sig.2.
        #[arg(long)]
        second: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Check files' signatures (FILE.sig, and FILE.sig.2 when present) against trusted keys.
    Verify {
        /// Directory of trusted SPKI PEM public keys (`*.pub`).
        #[arg(long)]
        trusted_keys: PathBuf,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Benchmark the real daemon over its sockets on a throwaway database, and print a table.
    Bench(BenchArgs),
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute every chain (or one) and check its signed checkpoints.
    /// Exit 0: intact; 2: a breach was found; 1: could not verify.
    Verify {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Verify only this node's chain.
        #[arg(long)]
        node: Option<String>,
        /// A node public key (SPKI PEM, e.g. /var/lib/playbookd/node.pub); checkpoints must be
        /// signed by one of the keys given. Repeatable.
        #[arg(long = "trusted-node-key", value_name = "PUBFILE")]
        trusted_node_keys: Vec<PathBuf>,
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
    #[error(transparent)]
    Audit(#[from] AuditCliError),
    #[error("{failed} of {total} files failed validation")]
    Invalid { failed: usize, total: usize },
    #[error("failed to start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Status(#[from] ClientError),
    #[error(transparent)]
    Simulate(#[from] SimulateError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    TrustStore(#[from] TrustStoreError),
    #[error("no usable trusted key in {0}")]
    NoTrustedKeys(PathBuf),
    #[error("failed to read {path}")]
    ReadInput {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write {path}")]
    WriteOutput {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{failed} of {total} file(s) failed verification")]
    Unverified { failed: usize, total: usize },
    #[error(transparent)]
    Ctl(#[from] CtlError),
    #[error(transparent)]
    Bench(#[from] BenchError),
    #[error(transparent)]
    Actuator(#[from] ActuatorError),
    #[error("socket activation")]
    Activation(#[from] ActivationError),
    #[error(transparent)]
    Runner(#[from] RunnerError),
}

impl CliError {
    /// The process exit status:
    /// - 0: success;
    /// - 1: a failure a retry may fix (database, runtime);
    /// - 2: bad command line (clap);
    /// - 65 (EX_DATAERR): a file failed verification (`verify`), or a key is malformed, weak or
    ///   of an unsupported algorithm (`sign`);
    /// - 66 (EX_NOINPUT): an input file or key could not be read;
    /// - 73 (EX_CANTCREAT): an output file could not be written (`keygen` never overwrites);
    /// - 78 (EX_CONFIG): the configuration, or the trusted-keys directory, must be fixed.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Config(_) | CliError::TrustStore(_) | CliError::NoTrustedKeys(_) => {
                ExitCode::from(EXIT_CONFIG)
            }
            CliError::Daemon(error) => error.exit_code(),
            CliError::Actuator(error) => error.exit_code(),
            CliError::Activation(_) => ExitCode::from(EXIT_CONFIG),
            CliError::Runner(error) => error.exit_code(),
            CliError::Audit(error) => error.exit_code(),
            CliError::Ctl(error) => error.exit_code(),
            CliError::Status(ClientError::Config(_)) => ExitCode::from(EXIT_CONFIG),
            CliError::Store(_)
            | CliError::Runtime(_)
            | CliError::Status(_)
            | CliError::Simulate(_)
            | CliError::Bench(_)
            | CliError::Invalid { .. } => ExitCode::FAILURE,
            CliError::Key(KeyError::Write { .. }) | CliError::WriteOutput { .. } => {
                ExitCode::from(EXIT_CANTCREAT)
            }
            CliError::Key(KeyError::Open(_)) | CliError::ReadInput { .. } => {
                ExitCode::from(EXIT_NOINPUT)
            }
            CliError::Key(_) | CliError::Unverified { .. } => ExitCode::from(EXIT_DATAERR),
        }
    }
}

/// A file failed verification, or a key is unusable.
pub const EXIT_DATAERR: u8 = 65;
/// An input could not be read.
pub const EXIT_NOINPUT: u8 = 66;
/// An output could not be created.
pub const EXIT_CANTCREAT: u8 = 73;

/// Runs one parsed command line to completion.
pub fn run(cli: Cli) -> Result<(), CliError> {
    systemd::init_logging();
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            // Before any thread exists: reading LISTEN_FDS clears it from the environment.
            let activated = Activated::from_env()?;
            runtime()?.block_on(async {
                let daemon = Daemon::build_activated(config, activated).await?;
                daemon.run_until_stopped(CancellationToken::new()).await?;
                Ok(())
            })
        }
        Command::ExecRunner { daemon_user } => runtime()?.block_on(async {
            exec_runner::serve_stdin(&daemon_user).await?;
            Ok(())
        }),
        Command::Actuator { config } => {
            let config = Config::load(&config)?;
            let activated = Activated::from_env()?;
            runtime()?.block_on(async {
                actuator::run(config, activated).await?;
                Ok(())
            })
        }
        Command::Status(args) => Ok(status_client::run(args)?),
        Command::Ctl(args) => Ok(ctl_client::run(args)?),
        Command::Bench(args) => Ok(bench::run(args)?),
        Command::Validate { files } => validate(&files),
        Command::Simulate {
            decision,
            playbook,
            require_approval,
            json,
        } => {
            let plan = simulate::plan(&decision, &playbook, require_approval)?;
            if json {
                println!("{plan:#}");
            } else {
                print!("{}", simulate::render_text(&plan));
            }
            Ok(())
        }
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
        Command::Keygen { algorithm, out } => {
            let id = Signer::keygen(algorithm, &out)?;
            println!(
                "wrote {} and {}; key id {id}",
                signature::with_suffix(&out, ".key").display(),
                signature::with_suffix(&out, ".pub").display()
            );
            Ok(())
        }
        Command::Sign { key, second, files } => sign(&key, second, &files),
        Command::Verify {
            trusted_keys,
            files,
        } => verify(&trusted_keys, &files),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    config,
                    node,
                    trusted_node_keys,
                },
        } => runtime()?.block_on(async {
            audit_cli::verify(&config, node.as_deref(), &trusted_node_keys).await?;
            Ok(())
        }),
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

fn sign(key: &std::path::Path, second: bool, files: &[PathBuf]) -> Result<(), CliError> {
    let pem = std::fs::read_to_string(key).map_err(|source| CliError::ReadInput {
        path: key.to_owned(),
        source,
    })?;
    let pem = rsa::pkcs8::der::zeroize::Zeroizing::new(pem);
    let signer = Signer::load(&pem, key)?;
    let suffix = if second { ".sig.2" } else { ".sig" };
    for file in files {
        let bytes = std::fs::read(file).map_err(|source| CliError::ReadInput {
            path: file.clone(),
            source,
        })?;
        let sig_path = signature::with_suffix(file, suffix);
        std::fs::write(&sig_path, signer.sign(&bytes)).map_err(|source| CliError::WriteOutput {
            path: sig_path.clone(),
            source,
        })?;
        println!("{}: signed by {}", sig_path.display(), signer.key_id());
    }
    Ok(())
}

fn verify(trusted_keys: &std::path::Path, files: &[PathBuf]) -> Result<(), CliError> {
    let (keys, refused) = TrustedKeys::load(trusted_keys)?;
    for refusal in &refused {
        eprintln!(
            "playbookd: warning: not trusted: {}",
            store::audit::error_chain(&refusal.error)
        );
    }
    if keys.is_empty() {
        return Err(CliError::NoTrustedKeys(trusted_keys.to_owned()));
    }
    let mut failed = 0;
    for file in files {
        let outcome = TrustedDir::parent_of(file)
            .map_err(signature::FileError::Document)
            .and_then(|dir| keys.verify_file(&dir, file));
        match outcome {
            Ok(verified) => {
                let signers: Vec<&str> = verified.signers().iter().map(|k| k.as_str()).collect();
                println!(
                    "{}: OK, sha256 {}, signed by {}",
                    file.display(),
                    hex::encode(verified.sha256()),
                    signers.join(" and ")
                );
            }
            Err(error) => {
                failed += 1;
                println!(
                    "{}: REJECTED ({}): {}",
                    file.display(),
                    error.label(),
                    store::audit::error_chain(&error)
                );
            }
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(CliError::Unverified {
            failed,
            total: files.len(),
        })
    }
}

fn parse_algorithm(text: &str) -> Result<Algorithm, String> {
    Algorithm::parse(text).map_err(|error| error.to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}
