//! The `playbookd` command line: one verb per subcommand, each mapped to an exit code.

pub mod audit;
pub mod bench;
pub mod ctl;
pub mod documents;
pub mod evidence;
pub mod simulate;
pub mod status;
pub mod witnesses;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use self::bench::{BenchArgs, BenchError};
use self::ctl::CtlArgs;
use self::status::StatusArgs;
use crate::actions::exec_runner::{self, RunnerError};
use crate::actions::limits::ActionLimits;
use crate::activation::{Activated, ActivationError};
use crate::actuator::{self, ActuatorError};
use crate::config::EXIT_CONFIG;
use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH, OWNER_DATABASE_URL_ENV};
use crate::daemon::{Daemon, DaemonError};
use crate::registry::signature::{self, Algorithm, KeyError, Signer, TrustStoreError};
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
        /// The daemon's configuration file (TOML).
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// The privileged helper (its own unit): signals, the nftables set and file quarantine,
    /// for the daemon's uid only, over a closed typed protocol.
    Actuator {
        /// Configuration file (its `[actuator]`, `[actions.net]` and `[actions.file]` sections).
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Runs one `exec` child for the daemon (started by playbookd-exec.socket, Accept=yes, with
    /// the connection on stdin and stdout).
    ExecRunner {
        /// The daemon's user: the only peer served.
        #[arg(long, default_value = "playbookd")]
        daemon_user: crate::config::UserName,
    },
    /// Operator client for control.sock: pending, approve, deny, cancel, halt-resolve, reload.
    Ctl(CtlArgs),
    /// Query the read-only status API (health without a subcommand).
    Status(StatusArgs),
    /// Parse and validate playbook or bindings files offline (signatures are not checked).
    /// Exit 0: every file is valid; 65: a file is invalid; 66: a file could not be read.
    Validate {
        /// Playbook or bindings files (YAML); each is reported on its own line.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Show what a decision would do with a playbook: steps, rendered parameters, approvals.
    /// Nothing is executed and nothing is written.
    /// Exit 0: planned; 65: the decision or playbook is invalid; 66: a file could not be read.
    Simulate {
        /// A file holding one decision (JSON, as sent on decisions.sock).
        #[arg(long, value_name = "FILE")]
        decision: PathBuf,
        /// The playbook YAML.
        #[arg(value_name = "PLAYBOOK")]
        playbook: PathBuf,
        /// As if the binding set `require_approval` (gates moderate steps too).
        #[arg(long)]
        require_approval: bool,
        /// Print the plan as JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Refuse, as the daemon would at load, a playbook outside this configuration's
        /// [actions.*] limits (allowed commands, hosts, quarantine dir, never-block addresses).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Apply pending database migrations as the schema's owner, grant the daemon's runtime role
    /// its privileges, and exit. Connects with PLAYBOOKD_OWNER_DATABASE_URL when set (the
    /// configuration is then not read), otherwise with the configuration's `[database]`.
    Migrate {
        /// The daemon's configuration file (its `[database]` is used without PLAYBOOKD_OWNER_DATABASE_URL).
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Grant exactly the daemon's privileges to this role (and revoke anything else it held on the schema).
        #[arg(long, value_name = "ROLE")]
        runtime_role: Option<String>,
        /// SET ROLE to this role before migrating, so that the schema belongs to it (for a
        /// superuser connecting by peer authentication).
        #[arg(long, value_name = "ROLE")]
        owner_role: Option<String>,
    },
    /// Generate a signing key: PREFIX.key (PKCS#8 PEM, mode 0600) and PREFIX.pub (SPKI PEM).
    Keygen {
        /// `ed25519` or `rsa4096`.
        #[arg(long, value_parser = documents::parse_algorithm)]
        algorithm: Algorithm,
        /// Path prefix of the two files written (never over an existing file).
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// Sign files: writes FILE.sig (raw signature bytes over the exact file bytes).
    Sign {
        /// PKCS#8 PEM private key (Ed25519, or RSA of at least 4096 bits).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// Write the second signature of dual control, FILE.sig.2.
        #[arg(long)]
        second: bool,
        /// The files to sign, byte for byte.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Apply every rule the daemon applies to a signed file, except the version history in its
    /// database: signatures (FILE.sig, and FILE.sig.2 when present) from trusted keys, each in
    /// its key's scheme; strict parsing; dual control for critical playbooks and the bindings
    /// file; and, with --config, the configuration's limits. One line per file: OK with each
    /// signer and scheme, or REJECTED (label) and the rule that failed. Exit 65 if any failed.
    Verify {
        /// Directory of trusted SPKI PEM public keys (`*.pub`; `NAME.pss.pub` binds an RSA key
        /// to RSA-PSS).
        #[arg(long, value_name = "DIR")]
        trusted_keys: PathBuf,
        /// Also check playbooks against this daemon configuration's [actions.*] limits (allowed
        /// commands, hosts, quarantine dir, never-block addresses), as the daemon does at load.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Playbook or bindings files, each beside its signature file(s).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Benchmark the real daemon over its sockets on a throwaway database, and print a table.
    Bench(BenchArgs),
    /// Run a C2SP tlog-witness (c2sp.org/tlog-witness) for playbookd logs, e.g. on another host
    /// or for another team: it cosigns a checkpoint only if it extends the last one it cosigned.
    /// Exit 78: the configuration, key or state file must be fixed.
    Witness {
        /// The witness configuration (TOML: name, key, state, listen, `[[logs]]`).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print the witness's verifier key (type 0x04) for the logs' [[audit.witnesses]] and exit.
        #[arg(long)]
        vkey: bool,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute every chain (or one) and check its signed checkpoints (and the anchor).
    /// Exit 0: intact; 2: a breach or cut was found; 3: intact but a pinned node key could
    /// not be checked (no checkpoint yet); 1: could not verify; 78: the anchor does not decode.
    Verify {
        /// The daemon's configuration file (its `[database]` is used).
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Verify only this node's chain.
        #[arg(long, value_name = "NODE_ID")]
        node: Option<String>,
        /// A node public key (SPKI PEM, e.g. /var/lib/playbookd/node.pub); checkpoints must be
        /// signed by one of the keys given. Repeatable.
        #[arg(long = "trusted-node-key", value_name = "PUBFILE")]
        trusted_node_keys: Vec<PathBuf>,
        /// The daemon's chain anchor (e.g. /var/lib/playbookd/chain-anchor.json, or a copy): an
        /// external record of the head it committed and the last checkpoint it signed; a
        /// database that lost either is reported as a cut.
        #[arg(long, value_name = "FILE")]
        anchor: Option<PathBuf>,
        /// The daemon's log of signed checkpoints (`journalctl -u playbookd -o json`, or its
        /// stderr lines): each `audit checkpoint signed` (node, seq, hash) the database no
        /// longer holds is reported as a cut. Repeatable.
        #[arg(long = "checkpoint-log", value_name = "FILE")]
        checkpoint_logs: Vec<PathBuf>,
        #[command(flatten)]
        witnesses: witnesses::WitnessArgs,
    },
    /// Acknowledge a cut the daemon found (it stopped appending): run with the daemon stopped,
    /// as the daemon's user. The next start records the acknowledgment as its first audit
    /// event (`audit.cut_accepted`, naming the lost seqs) and appends again.
    AcceptCut {
        /// The daemon's configuration file (its node id, node key directory and database).
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Why the loss is accepted (kept in the anchor and in the audit event).
        #[arg(long)]
        reason: String,
    },
    /// Print the newest checkpoint as a C2SP tlog-checkpoint signed note (needs the node key:
    /// run as the daemon's user). Exit 2: the chain does not verify.
    CheckpointText {
        /// The daemon's configuration file (its `[database]` and `paths.node_key` are used).
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Another node's chain in the same database (its key must be the configured one).
        #[arg(long, value_name = "NODE_ID")]
        node: Option<String>,
        /// Print the signed-note verifier key (`name+keyid+base64`) instead.
        #[arg(long)]
        vkey: bool,
    },
    /// Write one run's evidence bundle: its audit rows with inclusion proofs against a signed
    /// checkpoint note (needs the node key). Exit 2: the chain does not verify.
    Prove {
        /// The daemon's configuration file (its `[database]` and `paths.node_key` are used).
        #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The execution id of the run.
        execution: uuid::Uuid,
        /// Write the bundle here (never overwritten) instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Check an evidence bundle offline against the node's public key.
    /// Exit 0: verified; 2: it does not verify (the reason is printed); 4: fewer trusted
    /// witnesses than required cosigned its checkpoint; 1: cannot read it.
    VerifyBundle {
        /// The bundle `audit prove` wrote.
        file: PathBuf,
        /// The node public key (SPKI PEM, e.g. /var/lib/playbookd/node.pub).
        #[arg(long = "trusted-node-key", value_name = "PUBFILE")]
        trusted_node_key: PathBuf,
        #[command(flatten)]
        witnesses: witnesses::WitnessArgs,
    },
}

/// A verb's failure, and the exit status it ends the process with. Each tool's error says its
/// own status, following one table:
/// - 0: success;
/// - 1: a failure a retry may fix (database, runtime);
/// - 2: bad command line (clap);
/// - 65 (EX_DATAERR): a file failed its checks (`verify`, `validate`, `simulate`), or a key
///   is malformed, weak or of an unsupported algorithm (`sign`);
/// - 66 (EX_NOINPUT): an input file or key could not be read;
/// - 73 (EX_CANTCREAT): an output file could not be written (`keygen` never overwrites);
/// - 74 (EX_IOERR): standard output failed (a reader that went away is not a failure: 0);
/// - 78 (EX_CONFIG): the configuration, or the trusted-keys directory, must be fixed;
///
/// and the verbs' own (`audit verify` 2 and 3, `ctl` 77, …), documented with their errors.
///
/// Only a reader that went away (`| head`) ends a verb with 0 after an error: nothing to
/// report, and nobody to report it to.
pub trait VerbError: std::error::Error + Send + Sync + 'static {
    fn exit_code(&self) -> ExitCode;
}

/// Whatever a verb failed with: its message (and sources) as it was, its exit status from
/// [`VerbError`].
#[derive(Debug)]
pub struct CliError(Box<dyn VerbError>);

impl<E: VerbError> From<E> for CliError {
    fn from(error: E) -> CliError {
        CliError(Box::new(error))
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        self.0.exit_code()
    }
}

/// The failures of the verbs this module runs itself.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// `validate` or `verify`: each file's verdict is already on stdout.
    #[error("{failed} of {total} file(s) failed {check}")]
    FilesFailed {
        check: &'static str,
        failed: usize,
        total: usize,
        /// At least one of them could not be read at all (exit 66 rather than 65).
        unreadable: bool,
    },
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
    #[error("socket activation")]
    Activation(#[source] ActivationError),
    #[error("failed to start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("{OWNER_DATABASE_URL_ENV} is not a PostgreSQL URL")]
    OwnerUrl,
}

impl VerbError for Failure {
    fn exit_code(&self) -> ExitCode {
        match self {
            Failure::FilesFailed {
                unreadable: true, ..
            }
            | Failure::ReadInput { .. } => ExitCode::from(EXIT_NOINPUT),
            Failure::FilesFailed {
                unreadable: false, ..
            } => ExitCode::from(EXIT_DATAERR),
            Failure::NoTrustedKeys(_) | Failure::Activation(_) | Failure::OwnerUrl => {
                ExitCode::from(EXIT_CONFIG)
            }
            Failure::WriteOutput { .. } => ExitCode::from(EXIT_CANTCREAT),
            Failure::Runtime(_) => ExitCode::FAILURE,
        }
    }
}

/// Errors whose every case ends the process with one status.
macro_rules! exit_always {
    ($code:expr => $($error:ty),+) => {$(
        impl VerbError for $error {
            fn exit_code(&self) -> ExitCode {
                $code
            }
        }
    )+};
}

exit_always!(ExitCode::from(EXIT_CONFIG) => ConfigError, TrustStoreError);
exit_always!(ExitCode::FAILURE => BenchError);

/// `migrate`: 78 when the roles named do not fit (missing, not the owner's, unsafe), 1 when the
/// database failed.
impl VerbError for StoreError {
    fn exit_code(&self) -> ExitCode {
        match self {
            StoreError::SetRole { .. }
            | StoreError::NoSuchRole { .. }
            | StoreError::Grant { .. } => ExitCode::from(EXIT_CONFIG),
            _ => ExitCode::FAILURE,
        }
    }
}

/// `keygen` and `sign`.
impl VerbError for KeyError {
    fn exit_code(&self) -> ExitCode {
        match self {
            KeyError::Write { .. } => ExitCode::from(EXIT_CANTCREAT),
            KeyError::Open(_) => ExitCode::from(EXIT_NOINPUT),
            _ => ExitCode::from(EXIT_DATAERR),
        }
    }
}

/// The errors of the daemon's own subsystems, which say their exit status themselves.
macro_rules! exit_as_they_say {
    ($($error:ty),+) => {$(
        impl VerbError for $error {
            fn exit_code(&self) -> ExitCode {
                <$error>::exit_code(self)
            }
        }
    )+};
}

exit_as_they_say!(
    DaemonError,
    ActuatorError,
    RunnerError,
    crate::witness::WitnessError
);

/// Standard output could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output")]
pub struct OutputError(#[source] std::io::Error);

impl OutputError {
    /// The reader closed the pipe (`playbookd … | head`): not a failure of ours.
    pub fn is_closed_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

impl VerbError for OutputError {
    /// 0 for a closed pipe (as `cat` or `grep` end when `head` has read enough), 74 otherwise.
    fn exit_code(&self) -> ExitCode {
        if self.is_closed_pipe() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_IOERR)
        }
    }
}

/// Writes `text` to standard output and flushes it. `print!` would panic when the reader has
/// gone away; this returns the error instead, so each verb ends cleanly (see
/// [`OutputError::exit_code`]).
pub fn write_stdout(text: &str) -> Result<(), OutputError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(OutputError)
}

/// [`write_stdout`] with a newline.
pub fn write_stdout_line(text: &str) -> Result<(), OutputError> {
    write_stdout(&format!("{text}\n"))
}

/// A file failed its checks, or a key is unusable.
pub const EXIT_DATAERR: u8 = 65;
/// An input could not be read.
pub const EXIT_NOINPUT: u8 = 66;
/// An output could not be created.
pub const EXIT_CANTCREAT: u8 = 73;
/// Standard output failed (other than a closed pipe).
pub const EXIT_IOERR: u8 = 74;

/// Runs one parsed command line to completion.
pub fn run(cli: Cli) -> Result<(), CliError> {
    systemd::init_logging();
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            // Before any thread exists: reading LISTEN_FDS clears it from the environment.
            let activated = Activated::from_env().map_err(Failure::Activation)?;
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
            let activated = Activated::from_env().map_err(Failure::Activation)?;
            runtime()?.block_on(async {
                actuator::run(config, activated).await?;
                Ok(())
            })
        }
        Command::Status(args) => Ok(status::run(args)?),
        Command::Ctl(args) => Ok(ctl::run(args)?),
        Command::Bench(args) => Ok(bench::run(args)?),
        Command::Validate { files } => documents::validate(&files),
        Command::Simulate {
            decision,
            playbook,
            require_approval,
            json,
            config,
        } => {
            if let Some(config) = config {
                documents::check_limits_offline(&playbook, &Config::load(&config)?)?;
            }
            let plan = simulate::plan(&decision, &playbook, require_approval)?;
            if json {
                write_stdout_line(&format!("{plan:#}"))?;
            } else {
                write_stdout(&simulate::render_text(&plan))?;
            }
            Ok(())
        }
        Command::Migrate {
            config,
            runtime_role,
            owner_role,
        } => {
            let pg = match std::env::var(OWNER_DATABASE_URL_ENV) {
                Ok(url) => url
                    .parse::<tokio_postgres::Config>()
                    .map_err(|_| Failure::OwnerUrl)?,
                Err(_) => Config::load(&config)?.postgres_config(),
            };
            let roles = store::migrate::Roles {
                owner: owner_role.as_deref(),
                runtime: runtime_role.as_deref(),
            };
            runtime()?.block_on(async {
                let mut client = store::connect_single(&pg).await?;
                let report = store::migrate::migrate_with_roles(&mut client, &roles).await?;
                if report.applied.is_empty() {
                    write_stdout_line("schema up to date; nothing applied")?;
                } else {
                    for name in report.applied {
                        write_stdout_line(&format!("applied {name}"))?;
                    }
                }
                match roles.runtime {
                    Some(role) => write_stdout_line(&format!(
                        "granted the runtime privileges to role {role}"
                    ))?,
                    None => write_stdout_line(
                        "no --runtime-role: no role was granted the daemon's privileges",
                    )?,
                }
                Ok(())
            })
        }
        Command::Keygen { algorithm, out } => {
            let id = Signer::keygen(algorithm, &out)?;
            write_stdout_line(&format!(
                "wrote {} and {}; key id {id}",
                signature::with_suffix(&out, ".key").display(),
                signature::with_suffix(&out, ".pub").display()
            ))?;
            Ok(())
        }
        Command::Sign { key, second, files } => documents::sign(&key, second, &files),
        Command::Verify {
            trusted_keys,
            config,
            files,
        } => {
            let limits = match config {
                Some(path) => Some(ActionLimits::from_config(&Config::load(&path)?.actions)),
                None => None,
            };
            documents::verify(&trusted_keys, limits.as_ref(), &files)
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    config,
                    node,
                    trusted_node_keys,
                    anchor,
                    checkpoint_logs,
                    witnesses,
                },
        } => with_config(&config, async |config| {
            Ok(audit::verify(
                &config,
                node.as_deref(),
                &trusted_node_keys,
                anchor.as_deref(),
                &checkpoint_logs,
                &witnesses,
            )
            .await?)
        }),
        Command::Audit {
            command: AuditCommand::AcceptCut { config, reason },
        } => with_config(&config, async |config| {
            Ok(audit::accept_cut(&config, &reason).await?)
        }),
        Command::Audit {
            command: AuditCommand::CheckpointText { config, node, vkey },
        } => with_config(&config, async |config| {
            Ok(evidence::checkpoint_text(&config, node.as_deref(), vkey).await?)
        }),
        Command::Audit {
            command:
                AuditCommand::Prove {
                    config,
                    execution,
                    out,
                },
        } => with_config(&config, async |config| {
            Ok(evidence::prove(&config, execution, out.as_deref()).await?)
        }),
        Command::Audit {
            command:
                AuditCommand::VerifyBundle {
                    file,
                    trusted_node_key,
                    witnesses,
                },
        } => Ok(evidence::verify_bundle(
            &file,
            &trusted_node_key,
            &witnesses,
        )?),
        Command::Witness { config, vkey: true } => {
            write_stdout_line(&crate::witness::verifier_key_of(&config)?.to_string())?;
            Ok(())
        }
        Command::Witness {
            config,
            vkey: false,
        } => runtime()?.block_on(async { Ok(crate::witness::run(&config).await?) }),
    }
}

/// Loads the configuration at `path`, then runs `verb` with it on a new runtime.
fn with_config(
    path: &std::path::Path,
    verb: impl AsyncFnOnce(Config) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let config = Config::load(path)?;
    runtime()?.block_on(verb(config))
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::Runtime)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> String {
        let cli = Cli::try_parse_from(std::iter::once("playbookd").chain(args.iter().copied()))
            .unwrap_or_else(|error| panic!("{args:?}: {error}"));
        format!("{:?}", cli.command)
    }

    /// Each pair is one command line with its options before and after the positional
    /// arguments (and, for `ctl` and `status`, before and after the sub-verb).
    #[test]
    fn options_come_before_or_after_arguments_on_every_verb() {
        let pairs: &[(&[&str], &[&str])] = &[
            (&["serve", "--config", "c"], &["serve", "--config", "c"]),
            (&["migrate", "--config", "c"], &["migrate", "--config", "c"]),
            (
                &["keygen", "--algorithm", "ed25519", "--out", "k"],
                &["keygen", "--out", "k", "--algorithm", "ed25519"],
            ),
            (
                &["sign", "--key", "k", "--second", "a", "b"],
                &["sign", "a", "b", "--key", "k", "--second"],
            ),
            (
                &["verify", "--trusted-keys", "d", "--config", "c", "a"],
                &["verify", "a", "--config", "c", "--trusted-keys", "d"],
            ),
            (&["validate", "a", "b"], &["validate", "a", "b"]),
            (
                &[
                    "simulate",
                    "--decision",
                    "d",
                    "--json",
                    "--require-approval",
                    "--config",
                    "c",
                    "p",
                ],
                &[
                    "simulate",
                    "p",
                    "--config",
                    "c",
                    "--decision",
                    "d",
                    "--json",
                    "--require-approval",
                ],
            ),
            (
                &[
                    "audit",
                    "verify",
                    "--config",
                    "c",
                    "--node",
                    "n",
                    "--trusted-node-key",
                    "k",
                ],
                &[
                    "audit",
                    "verify",
                    "--trusted-node-key",
                    "k",
                    "--node",
                    "n",
                    "--config",
                    "c",
                ],
            ),
            (
                &[
                    "ctl", "--config", "c", "--json", "approve", "e", "s", "--reason", "r",
                ],
                &[
                    "ctl", "approve", "e", "s", "--reason", "r", "--config", "c", "--json",
                ],
            ),
            (
                &["ctl", "--socket", "s", "deny", "--reason", "r", "e", "st"],
                &["ctl", "deny", "e", "st", "--socket", "s", "--reason", "r"],
            ),
            (
                &["ctl", "--json", "cancel", "--reason", "r", "e"],
                &["ctl", "cancel", "e", "--json", "--reason", "r"],
            ),
            (
                &["ctl", "--config", "c", "halt-resolve", "--reason", "r"],
                &["ctl", "halt-resolve", "--reason", "r", "--config", "c"],
            ),
            (&["ctl", "--json", "pending"], &["ctl", "pending", "--json"]),
            (
                &["ctl", "--config", "c", "reload"],
                &["ctl", "reload", "--config", "c"],
            ),
            (
                &[
                    "status",
                    "--url",
                    "http://127.0.0.1:1",
                    "--json",
                    "execution",
                    "i",
                ],
                &[
                    "status",
                    "execution",
                    "i",
                    "--json",
                    "--url",
                    "http://127.0.0.1:1",
                ],
            ),
            (
                &[
                    "status",
                    "--config",
                    "c",
                    "executions",
                    "--limit",
                    "5",
                    "--since",
                    "t",
                ],
                &[
                    "status",
                    "executions",
                    "--since",
                    "t",
                    "--limit",
                    "5",
                    "--config",
                    "c",
                ],
            ),
            (
                &["status", "--json", "audit", "--after", "3"],
                &["status", "audit", "--after", "3", "--json"],
            ),
            (&["status", "--json", "halt"], &["status", "halt", "--json"]),
            (
                &["bench", "--quick", "--connections", "2"],
                &["bench", "--connections", "2", "--quick"],
            ),
            (
                &["actuator", "--config", "c"],
                &["actuator", "--config", "c"],
            ),
            (
                &["exec-runner", "--daemon-user", "u"],
                &["exec-runner", "--daemon-user", "u"],
            ),
            (
                &["witness", "--vkey", "--config", "c"],
                &["witness", "--config", "c", "--vkey"],
            ),
        ];
        for (before, after) in pairs {
            assert_eq!(parse(before), parse(after), "{before:?} vs {after:?}");
        }
        // Every verb of the CLI appears above.
        let listed: std::collections::BTreeSet<&str> =
            pairs.iter().map(|(before, _)| before[0]).collect();
        for verb in Cli::command().get_subcommands() {
            assert!(
                listed.contains(verb.get_name()),
                "{} untested",
                verb.get_name()
            );
        }
    }

    #[test]
    fn a_reason_is_required_where_the_daemon_requires_one() {
        for args in [
            &["ctl", "approve", "e", "s"][..],
            &["ctl", "deny", "e", "s"],
            &["ctl", "cancel", "e"],
            &["ctl", "halt-resolve"],
        ] {
            let error =
                Cli::try_parse_from(std::iter::once("playbookd").chain(args.iter().copied()))
                    .unwrap_err();
            assert!(error.to_string().contains("--reason"), "{args:?}: {error}");
        }
        let help = Cli::command()
            .find_subcommand_mut("ctl")
            .and_then(|ctl| ctl.find_subcommand_mut("approve"))
            .map(|approve| approve.render_long_help().to_string())
            .unwrap();
        assert!(!help.contains("[default: ]"), "{help}");
    }

    #[test]
    fn every_option_and_argument_has_help_text() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "playbookd", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
