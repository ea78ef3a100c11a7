//! Daemon configuration: one TOML file, read once at start, every key with a safe default,
//! unknown keys refused.
//!
//! `PLAYBOOKD_DATABASE_URL`, when set, replaces `database.url` so that a secret-bearing URL can
//! come from the environment (systemd `Environment=`/credentials) rather than a world-readable file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Environment variable that overrides `database.url`.
pub const DATABASE_URL_ENV: &str = "PLAYBOOKD_DATABASE_URL";
/// The owner's URL for `playbookd migrate` only; `serve` never reads it (it never migrates).
pub const OWNER_DATABASE_URL_ENV: &str = "PLAYBOOKD_OWNER_DATABASE_URL";

/// Exit status for "the configuration (or what it points at) is wrong": EX_CONFIG from
/// sysexits.h, which systemd's `RestartPreventExitStatus=78` keeps from restarting in a loop.
/// It lives here, with the configuration, so that every subsystem can use it without importing
/// the daemon that wires them together.
pub const EXIT_CONFIG: u8 = 78;

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/playbookd/playbookd.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML parser's message names the line, the key and what was expected.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config file {path}: key `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
    #[error("invalid {DATABASE_URL_ENV}: {reason}")]
    DatabaseUrlEnv { reason: String },
}

/// The whole configuration, as read from the file and checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Names this host's audit chain; several daemons may share one database, one chain each.
    #[serde(default = "default_node_id")]
    pub node_id: String,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub paths: PathsConfig,
    #[serde(default)]
    pub status: StatusConfig,
    #[serde(default)]
    pub intake: IntakeConfig,
    #[serde(default)]
    pub executor: ExecutorConfig,
    #[serde(default)]
    pub actions: ActionsConfig,
    #[serde(default)]
    pub roles: RolesConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub actuator: ActuatorConfig,
    #[serde(default)]
    pub fleet: FleetConfig,
}

/// `[fleet]`: this node's place among the daemons that share one database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// How often this node writes its heartbeat row (and re-reads the fleet halt, prunes nonces).
    #[serde(default = "default_heartbeat_interval_seconds")]
    pub heartbeat_interval_seconds: u64,
    /// A node whose heartbeat is older than this is shown as stale.
    #[serde(default = "default_stale_after_seconds")]
    pub stale_after_seconds: u64,
    /// Whether this node's own failed rollback also halts every node of the fleet.
    #[serde(default)]
    pub halt_fleet_on_rollback_failure: bool,
    /// Nonces deleted per statement by retention (at most `nonce_prune_batches` per heartbeat).
    #[serde(default = "default_nonce_prune_batch")]
    pub nonce_prune_batch: u32,
}

/// `[actuator]`: where the privileged helper listens, and whom it serves (`playbookd actuator`
/// reads this section; the daemon only reads `socket`, to reach it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActuatorConfig {
    /// The actuator's socket: the daemon connects here; the actuator binds it when systemd does
    /// not pass it one (`playbookd-actuator.socket`).
    #[serde(default = "default_actuator_socket")]
    pub socket: PathBuf,
    /// The only peer the actuator serves (SO_PEERCRED uid): the daemon's user.
    #[serde(default = "default_daemon_user")]
    pub daemon_user: String,
    /// Users whose processes are never signalled; each must exist. Unset: `postgres` (the
    /// daemon's PostgreSQL server) when this host has that user, nothing otherwise (a fleet
    /// host whose database is elsewhere).
    #[serde(default)]
    pub protected_users: Option<BTreeSet<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// libpq-style URL; never logged because it may carry a password.
    #[serde(default = "default_database_url")]
    pub url: String,
    /// Upper bound on pooled connections (the audit writer holds one more of its own).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How long to wait for a connection before the operation fails (and nothing runs).
    #[serde(default = "default_connect_timeout_seconds")]
    pub connect_timeout_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsConfig {
    #[serde(default = "default_playbooks_dir")]
    pub playbooks: PathBuf,
    #[serde(default = "default_trusted_keys_dir")]
    pub trusted_keys: PathBuf,
    #[serde(default = "default_bindings_path")]
    pub bindings: PathBuf,
    #[serde(default = "default_decision_socket")]
    pub decision_socket: PathBuf,
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// The node's Ed25519 signing key (PKCS#8 PEM) for audit checkpoints; generated on first
    /// start, refused when group- or world-accessible.
    #[serde(default = "default_node_key")]
    pub node_key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// How often the chain head is signed when it moved (and once more at shutdown).
    #[serde(default = "default_checkpoint_interval_seconds")]
    pub checkpoint_interval_seconds: u64,
    /// C2SP tlog-witnesses each new checkpoint is submitted to (`[[audit.witnesses]]`).
    #[serde(default)]
    pub witnesses: Vec<WitnessEndpoint>,
}

/// One witness: where to submit (`<url>/add-checkpoint`) and the key its cosignatures must verify
/// under (`playbookd witness --vkey` prints it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessEndpoint {
    /// The witness's key name; must be the name in `vkey`.
    pub name: String,
    /// The submission prefix, `http://` or `https://`.
    #[serde(deserialize_with = "deserialize_url")]
    pub url: reqwest::Url,
    /// A cosignature/v1 verifier key (type 0x04): `name+keyid+base64`.
    pub vkey: crate::note::VerifierKey,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// `host:port` (loopback by default) or `unix:/path/to/socket`.
    #[serde(default = "default_status_listen")]
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntakeConfig {
    /// The only peers allowed on decisions.sock (SO_PEERCRED uid). The daemon's own uid is
    /// not implicitly allowed: a program it runs must not be able to act as a policy engine.
    #[serde(default)]
    pub allowed_uids: BTreeSet<u32>,
    /// A decision is fresh while `|now - issued_at| <= freshness_seconds`.
    #[serde(default = "default_freshness_seconds")]
    pub freshness_seconds: u64,
    /// Simultaneous connections on decisions.sock; more get `busy` and are closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Simultaneous connections one uid may hold on decisions.sock.
    #[serde(default = "default_max_connections_per_uid")]
    pub max_connections_per_uid: usize,
    /// Each request line must arrive complete within this many seconds (counted from when
    /// the daemon starts waiting for it, not reset by each byte); otherwise the connection closes.
    #[serde(default = "default_idle_timeout_seconds")]
    pub idle_timeout_seconds: u64,
    /// Group owning decisions.sock (mode 0660); the daemon's own group when unset.
    #[serde(default)]
    pub socket_group: Option<String>,
    /// Global storm cap: decisions accepted per second, across all bindings.
    #[serde(default = "default_max_accepted_per_second")]
    pub max_accepted_per_second: u32,
    /// Admission control: accepted runs allowed to wait for an executor slot at once. A
    /// decision that would exceed it gets a `busy` reply (audited, with the backlog size)
    /// instead of a run that would start late.
    #[serde(default = "default_max_backlog")]
    pub max_backlog: usize,
    /// Ed25519 public keys (SPKI PEM files); when set, every decision must be signed by one.
    #[serde(default)]
    pub policy_keys: Vec<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    /// Executions running at once on this node.
    #[serde(default = "default_max_concurrent_runs")]
    pub max_concurrent_runs: usize,
    /// Executions of one org running at once (0: same as `max_concurrent_runs`).
    #[serde(default)]
    pub max_runs_per_org: usize,
    /// Timeout of a step that sets none.
    #[serde(default = "default_step_timeout_seconds")]
    pub default_step_timeout_seconds: u64,
    /// How often unfinished executions not running here are picked up again.
    #[serde(default = "default_resume_interval_seconds")]
    pub resume_interval_seconds: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsConfig {
    #[serde(default)]
    pub exec: ExecActionConfig,
    #[serde(default)]
    pub file: FileActionConfig,
    #[serde(default)]
    pub http: HttpActionConfig,
    #[serde(default)]
    pub net: NetActionConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecActionConfig {
    /// Absolute paths; nothing else may be executed.
    #[serde(default)]
    pub allowed_commands: BTreeSet<PathBuf>,
    /// Exit codes that mean "try again later" (a transient error); any other non-zero exit is
    /// permanent. Default: `[75]` (EX_TEMPFAIL).
    #[serde(default = "default_transient_exit_codes")]
    pub transient_exit_codes: BTreeSet<i32>,
    /// The user `exec` children run as when the daemon starts them itself (it must be able to
    /// switch user, i.e. run as root): never the daemon's own uid, so a child cannot read the
    /// node key, the daemon's files or reach its database role. Default `nobody`; the shipped
    /// configuration uses the dedicated `playbookd-exec`.
    #[serde(default = "default_exec_run_as")]
    pub run_as: String,
    /// The exec runner's socket (`playbookd-exec.socket`, `Accept=yes`): when set, systemd
    /// starts each child as the runner unit's user, so the daemon needs no privilege to switch.
    #[serde(default)]
    pub runner_socket: Option<PathBuf>,
}

/// `http.post` (and `notify`'s webhook): where the daemon may send requests, and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpActionConfig {
    /// Destination host names (or IP literals) a request may go to; empty: none.
    #[serde(default)]
    pub allowed_hosts: BTreeSet<String>,
    /// Hosts (also in `allowed_hosts`) that may be reached over plain `http://` and may resolve
    /// to loopback or other non-public addresses: a local receiver. Default: none.
    #[serde(default)]
    pub allowed_loopback: BTreeSet<String>,
    /// Hosts (also in `allowed_hosts`) that may resolve to private (RFC 1918, ULA) addresses,
    /// still over https. Default: none.
    #[serde(default)]
    pub allowed_private: BTreeSet<String>,
    /// Time allowed to establish the TCP/TLS connection. Default 5.
    #[serde(default = "default_http_connect_timeout_seconds")]
    pub connect_timeout_seconds: u64,
    /// Time allowed for the whole request (never beyond the step's deadline). Default 15.
    #[serde(default = "default_http_timeout_seconds")]
    pub timeout_seconds: u64,
    /// Where secrets named by `secret:` are read from when `$CREDENTIALS_DIRECTORY` (systemd
    /// `LoadCredential=`) does not hold them; each file must be owned by the daemon's uid and
    /// readable by it alone.
    #[serde(default = "default_http_secrets_dir")]
    pub secrets_dir: PathBuf,
    /// Consecutive failures (5xx, timeouts, connection errors) after which a destination's
    /// circuit opens. Default 5.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// Seconds an open circuit waits before letting one trial request through. Default 30.
    #[serde(default = "default_breaker_reset_seconds")]
    pub breaker_reset_seconds: u64,
}

/// `net.block_ip` / `net.unblock_ip`: the nftables command and addresses never to block.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetActionConfig {
    /// argv prefix that runs `nft` (no shell); the actions append `-f -` and write the script
    /// on stdin. Default `["/usr/sbin/nft"]`. To act inside a network namespace:
    /// `["/usr/sbin/ip", "netns", "exec", "NS", "/usr/sbin/nft"]`.
    #[serde(default = "default_nft_command")]
    pub nft_command: Vec<String>,
    /// Networks (CIDR) that must never be blocked, such as management networks; a request to
    /// block an address or network overlapping one of them is refused. Loopback and
    /// unspecified addresses are always refused.
    #[serde(default)]
    pub never_block: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileActionConfig {
    /// Where the actuator keeps quarantined files (mode 0700, owned by the actuator's user).
    #[serde(default = "default_quarantine_dir")]
    pub quarantine_dir: PathBuf,
    /// Directories under which the actuator may quarantine and restore files; nothing outside
    /// them (default: none). Each must also be writable in the actuator's unit (a drop-in).
    #[serde(default)]
    pub roots: Vec<PathBuf>,
}

/// control.sock: the operators' socket (approve, deny, cancel, halt-resolve, reload).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Group owning control.sock (mode 0660); the daemon's own group when unset. Only members
    /// can connect at all; what each may do is still decided by `[roles]`.
    #[serde(default)]
    pub socket_group: Option<String>,
    /// Each request line must arrive complete within this many seconds (counted from when
    /// the daemon starts waiting for it, not reset by each byte); otherwise the connection closes.
    #[serde(default = "default_control_idle_timeout_seconds")]
    pub idle_timeout_seconds: u64,
    /// Simultaneous connections on control.sock; more are refused with a reason.
    #[serde(default = "default_control_max_connections")]
    pub max_connections: usize,
    /// Simultaneous connections one uid may hold on control.sock.
    #[serde(default = "default_control_max_connections_per_uid")]
    pub max_connections_per_uid: usize,
    /// Slots of `max_connections` that only admins may take, so that no flood of other peers
    /// can keep an admin from clearing a SAFE-HALT.
    #[serde(default = "default_control_admin_reserved_connections")]
    pub admin_reserved_connections: usize,
}

/// Who may do what on control.sock, by peer uid or group name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolesConfig {
    #[serde(default = "default_admin_role")]
    pub admin: RoleMembers,
    #[serde(default = "default_approver_role")]
    pub approver: RoleMembers,
    #[serde(default)]
    pub operator: RoleMembers,
    #[serde(default)]
    pub viewer: RoleMembers,
    /// Org scopes (`[[roles.orgs]]`): a peer matched by one or more entries may approve, deny
    /// or cancel only executions of the orgs those entries list; a peer matched by none is not
    /// restricted by org.
    #[serde(default)]
    pub orgs: Vec<OrgScope>,
}

/// One `[[roles.orgs]]` entry: these uids and groups act only on these orgs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgScope {
    #[serde(default)]
    pub uids: BTreeSet<u32>,
    #[serde(default)]
    pub groups: BTreeSet<String>,
    pub orgs: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleMembers {
    #[serde(default)]
    pub uids: BTreeSet<u32>,
    #[serde(default)]
    pub groups: BTreeSet<String>,
}

impl Config {
    /// Reads and checks the file at `path`, then applies `PLAYBOOKD_DATABASE_URL`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let env_url = std::env::var_os(DATABASE_URL_ENV);
        Self::parse(path, &text, env_url)
    }

    /// Parses `text` as if read from `path`; `env_url` is the value of `PLAYBOOKD_DATABASE_URL`.
    pub fn parse(
        path: &Path,
        text: &str,
        env_url: Option<std::ffi::OsString>,
    ) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: describe_toml_error(text, &error),
        })?;
        if let Some(url) = env_url {
            config.database.url = url.into_string().map_err(|_| ConfigError::DatabaseUrlEnv {
                reason: "not valid UTF-8".into(),
            })?;
        }
        config.check(path)?;
        Ok(config)
    }

    /// Semantic checks that serde cannot express; each names the key.
    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            reason,
        };
        if !is_valid_node_id(&self.node_id) {
            return Err(invalid(
                "node_id",
                "expected 1-64 characters of [A-Za-z0-9._-]".into(),
            ));
        }
        if self.database.pool_size == 0 || self.database.pool_size > 256 {
            return Err(invalid(
                "database.pool_size",
                "expected an integer from 1 to 256".into(),
            ));
        }
        if self.database.connect_timeout_seconds == 0 {
            return Err(invalid(
                "database.connect_timeout_seconds",
                "expected a positive integer".into(),
            ));
        }
        if self.database.url.parse::<tokio_postgres::Config>().is_err() {
            // The URL may hold a password: say what is wrong, never echo it.
            return Err(invalid(
                "database.url",
                "expected a PostgreSQL connection URL (postgres://…)".into(),
            ));
        }
        if !(1..=300).contains(&self.fleet.heartbeat_interval_seconds) {
            return Err(invalid(
                "fleet.heartbeat_interval_seconds",
                "expected an integer from 1 to 300".into(),
            ));
        }
        if self.fleet.stale_after_seconds <= self.fleet.heartbeat_interval_seconds
            || self.fleet.stale_after_seconds > 86_400
        {
            return Err(invalid(
                "fleet.stale_after_seconds",
                "expected an integer above fleet.heartbeat_interval_seconds, at most 86400".into(),
            ));
        }
        if !(1..=10_000).contains(&self.fleet.nonce_prune_batch) {
            return Err(invalid(
                "fleet.nonce_prune_batch",
                "expected an integer from 1 to 10000".into(),
            ));
        }
        if !(1..=86_400).contains(&self.intake.freshness_seconds) {
            return Err(invalid(
                "intake.freshness_seconds",
                "expected an integer from 1 to 86400".into(),
            ));
        }
        let mut witness_names = BTreeSet::new();
        for witness in &self.audit.witnesses {
            if witness.vkey.key_type != crate::note::KeyType::CosignatureV1 {
                return Err(invalid(
                    "audit.witnesses.vkey",
                    format!(
                        "witness `{}`: expected a cosignature/v1 key (type 0x04)",
                        witness.name
                    ),
                ));
            }
            if witness.vkey.name != witness.name {
                return Err(invalid(
                    "audit.witnesses.name",
                    format!(
                        "`{}` is not the key name in its vkey (`{}`)",
                        witness.name, witness.vkey.name
                    ),
                ));
            }
            if !matches!(witness.url.scheme(), "http" | "https") {
                return Err(invalid(
                    "audit.witnesses.url",
                    format!(
                        "witness `{}`: expected an http:// or https:// URL",
                        witness.name
                    ),
                ));
            }
            if !witness_names.insert(witness.name.as_str()) {
                return Err(invalid(
                    "audit.witnesses.name",
                    format!("witness `{}` is listed twice", witness.name),
                ));
            }
        }
        if self.intake.max_connections == 0 {
            return Err(invalid(
                "intake.max_connections",
                "expected a positive integer".into(),
            ));
        }
        if self.intake.max_connections_per_uid == 0 {
            return Err(invalid(
                "intake.max_connections_per_uid",
                "expected a positive integer".into(),
            ));
        }
        if self.intake.idle_timeout_seconds == 0 {
            return Err(invalid(
                "intake.idle_timeout_seconds",
                "expected a positive integer".into(),
            ));
        }
        if self.intake.max_backlog == 0 {
            return Err(invalid(
                "intake.max_backlog",
                "expected a positive integer".into(),
            ));
        }
        if self.intake.max_accepted_per_second == 0 {
            return Err(invalid(
                "intake.max_accepted_per_second",
                "expected a positive integer".into(),
            ));
        }
        if !(1..=3600).contains(&self.executor.default_step_timeout_seconds) {
            return Err(invalid(
                "executor.default_step_timeout_seconds",
                "expected an integer from 1 to 3600".into(),
            ));
        }
        if self.control.idle_timeout_seconds == 0 {
            return Err(invalid(
                "control.idle_timeout_seconds",
                "expected a positive integer".into(),
            ));
        }
        if self.control.max_connections == 0 {
            return Err(invalid(
                "control.max_connections",
                "expected a positive integer".into(),
            ));
        }
        if self.control.max_connections_per_uid == 0 {
            return Err(invalid(
                "control.max_connections_per_uid",
                "expected a positive integer".into(),
            ));
        }
        if self.control.admin_reserved_connections >= self.control.max_connections {
            return Err(invalid(
                "control.admin_reserved_connections",
                "expected fewer than control.max_connections (others need a slot too)".into(),
            ));
        }
        for scope in &self.roles.orgs {
            if scope.orgs.is_empty() {
                return Err(invalid(
                    "roles.orgs.orgs",
                    "each [[roles.orgs]] entry must list at least one org".into(),
                ));
            }
            if scope.uids.is_empty() && scope.groups.is_empty() {
                return Err(invalid(
                    "roles.orgs",
                    "each [[roles.orgs]] entry must name uids or groups".into(),
                ));
            }
        }
        if self.executor.resume_interval_seconds == 0 {
            return Err(invalid(
                "executor.resume_interval_seconds",
                "expected a positive integer".into(),
            ));
        }
        if self.executor.max_concurrent_runs == 0 {
            return Err(invalid(
                "executor.max_concurrent_runs",
                "expected a positive integer".into(),
            ));
        }
        if !(1..=86_400).contains(&self.audit.checkpoint_interval_seconds) {
            return Err(invalid(
                "audit.checkpoint_interval_seconds",
                "expected an integer from 1 to 86400".into(),
            ));
        }
        if let Some(command) = self
            .actions
            .exec
            .allowed_commands
            .iter()
            .find(|c| !c.is_absolute())
        {
            return Err(invalid(
                "actions.exec.allowed_commands",
                format!("{} is not an absolute path", command.display()),
            ));
        }
        if self.actions.http.connect_timeout_seconds == 0 {
            return Err(invalid(
                "actions.http.connect_timeout_seconds",
                "expected a positive integer".into(),
            ));
        }
        if self.actions.http.timeout_seconds == 0 {
            return Err(invalid(
                "actions.http.timeout_seconds",
                "expected a positive integer".into(),
            ));
        }
        if self.actions.http.breaker_failures == 0 {
            return Err(invalid(
                "actions.http.breaker_failures",
                "expected a positive integer".into(),
            ));
        }
        if let Some(host) = self
            .actions
            .http
            .allowed_loopback
            .iter()
            .chain(&self.actions.http.allowed_private)
            .find(|host| !self.actions.http.allowed_hosts.contains(*host))
        {
            return Err(invalid(
                "actions.http.allowed_hosts",
                format!(
                    "{host} is allowlisted for loopback/private addresses but not in allowed_hosts"
                ),
            ));
        }
        if let Some(root) = self.actions.file.roots.iter().find(|r| !r.is_absolute()) {
            return Err(invalid(
                "actions.file.roots",
                format!("{} is not an absolute path", root.display()),
            ));
        }
        if let Some(socket) = &self.actions.exec.runner_socket
            && !socket.is_absolute()
        {
            return Err(invalid(
                "actions.exec.runner_socket",
                "expected an absolute path".into(),
            ));
        }
        if self.actions.exec.run_as.is_empty() || self.actuator.daemon_user.is_empty() {
            return Err(invalid(
                "actions.exec.run_as",
                "expected a user name (and actuator.daemon_user too)".into(),
            ));
        }
        match self.actions.net.nft_command.first() {
            Some(program) if Path::new(program).is_absolute() => {}
            _ => {
                return Err(invalid(
                    "actions.net.nft_command",
                    "expected a non-empty list starting with an absolute path".into(),
                ));
            }
        }
        for (key, dir) in [
            ("paths.playbooks", &self.paths.playbooks),
            ("paths.trusted_keys", &self.paths.trusted_keys),
            ("paths.bindings", &self.paths.bindings),
            ("paths.decision_socket", &self.paths.decision_socket),
            ("paths.control_socket", &self.paths.control_socket),
            ("paths.node_key", &self.paths.node_key),
            (
                "actions.file.quarantine_dir",
                &self.actions.file.quarantine_dir,
            ),
            ("actions.http.secrets_dir", &self.actions.http.secrets_dir),
            ("actuator.socket", &self.actuator.socket),
        ] {
            if !dir.is_absolute() {
                return Err(invalid(key, "expected an absolute path".into()));
            }
        }
        Ok(())
    }

    /// The database connection settings, parsed (checked in [`Config::parse`]).
    pub fn postgres_config(&self) -> tokio_postgres::Config {
        let mut pg: tokio_postgres::Config = self
            .database
            .url
            .parse()
            .unwrap_or_else(|_| tokio_postgres::Config::new());
        pg.connect_timeout(self.database.connect_timeout());
        if pg.get_application_name().is_none() {
            pg.application_name("playbookd");
        }
        pg
    }
}

impl AuditConfig {
    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_secs(self.checkpoint_interval_seconds)
    }
}

impl DatabaseConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_seconds)
    }
}

/// One line: where (line and source text) and what (the parser's message, in plain words).
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error
        .message()
        .replace("expected u64", "expected a non-negative integer")
        .replace("expected usize", "expected a non-negative integer")
        .replace("expected u32", "expected a non-negative integer");
    let Some(span) = error.span() else {
        return message;
    };
    let line_number = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let line = text.lines().nth(line_number - 1).unwrap_or("").trim();
    format!("line {line_number} (`{line}`): {message}")
}

/// Node ids go into advisory-lock keys, audit rows and journald fields: keep them plain.
pub fn is_valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn default_node_id() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| is_valid_node_id(name))
        .unwrap_or_else(|| "localhost".into())
}
fn default_database_url() -> String {
    "postgres://playbookd@/playbookd?host=/run/postgresql".into()
}
fn default_pool_size() -> usize {
    8
}
fn default_connect_timeout_seconds() -> u64 {
    5
}
fn default_playbooks_dir() -> PathBuf {
    "/var/lib/playbookd/playbooks".into()
}
fn default_trusted_keys_dir() -> PathBuf {
    "/etc/playbookd/trusted-keys".into()
}
fn default_bindings_path() -> PathBuf {
    "/etc/playbookd/bindings.yaml".into()
}
fn default_decision_socket() -> PathBuf {
    "/run/playbookd/decisions.sock".into()
}
fn default_control_socket() -> PathBuf {
    "/run/playbookd/control.sock".into()
}
fn default_node_key() -> PathBuf {
    "/var/lib/playbookd/node.key".into()
}
fn default_checkpoint_interval_seconds() -> u64 {
    300
}
fn default_status_listen() -> String {
    "127.0.0.1:9470".into()
}
fn default_freshness_seconds() -> u64 {
    300
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_accepted_per_second() -> u32 {
    200
}
fn default_max_backlog() -> usize {
    1024
}
fn default_step_timeout_seconds() -> u64 {
    60
}
fn default_resume_interval_seconds() -> u64 {
    10
}
fn default_idle_timeout_seconds() -> u64 {
    10
}
fn default_control_idle_timeout_seconds() -> u64 {
    60
}
fn default_control_max_connections() -> usize {
    16
}
fn default_control_max_connections_per_uid() -> usize {
    4
}
fn default_control_admin_reserved_connections() -> usize {
    2
}
fn default_max_connections_per_uid() -> usize {
    256
}
fn default_max_concurrent_runs() -> usize {
    64
}
fn default_quarantine_dir() -> PathBuf {
    "/var/lib/playbookd-actuator/quarantine".into()
}
fn default_actuator_socket() -> PathBuf {
    "/run/playbookd/actuator.sock".into()
}
fn default_daemon_user() -> String {
    "playbookd".into()
}
fn default_exec_run_as() -> String {
    "nobody".into()
}
fn default_transient_exit_codes() -> BTreeSet<i32> {
    // EX_TEMPFAIL from sysexits.h: "temporary failure, try again later".
    BTreeSet::from([75])
}
fn default_http_connect_timeout_seconds() -> u64 {
    5
}
fn default_http_timeout_seconds() -> u64 {
    15
}
fn default_http_secrets_dir() -> PathBuf {
    "/etc/playbookd/secrets".into()
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_reset_seconds() -> u64 {
    30
}
fn default_nft_command() -> Vec<String> {
    vec!["/usr/sbin/nft".into()]
}
fn default_admin_role() -> RoleMembers {
    RoleMembers {
        uids: BTreeSet::from([0]),
        groups: BTreeSet::new(),
    }
}
fn default_approver_role() -> RoleMembers {
    RoleMembers {
        uids: BTreeSet::new(),
        groups: BTreeSet::from(["playbookd-approvers".to_owned()]),
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: default_database_url(),
            pool_size: default_pool_size(),
            connect_timeout_seconds: default_connect_timeout_seconds(),
        }
    }
}
impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            playbooks: default_playbooks_dir(),
            trusted_keys: default_trusted_keys_dir(),
            bindings: default_bindings_path(),
            decision_socket: default_decision_socket(),
            control_socket: default_control_socket(),
            node_key: default_node_key(),
        }
    }
}
impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            heartbeat_interval_seconds: default_heartbeat_interval_seconds(),
            stale_after_seconds: default_stale_after_seconds(),
            halt_fleet_on_rollback_failure: false,
            nonce_prune_batch: default_nonce_prune_batch(),
        }
    }
}
impl FleetConfig {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(self.heartbeat_interval_seconds)
    }
}
fn default_heartbeat_interval_seconds() -> u64 {
    5
}
fn default_stale_after_seconds() -> u64 {
    30
}
fn default_nonce_prune_batch() -> u32 {
    1000
}
fn deserialize_url<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<reqwest::Url, D::Error> {
    let text = String::deserialize(deserializer)?;
    reqwest::Url::parse(&text).map_err(serde::de::Error::custom)
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_interval_seconds: default_checkpoint_interval_seconds(),
            witnesses: Vec::new(),
        }
    }
}
impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            listen: default_status_listen(),
        }
    }
}
impl Default for IntakeConfig {
    fn default() -> Self {
        IntakeConfig {
            allowed_uids: BTreeSet::new(),
            freshness_seconds: default_freshness_seconds(),
            max_connections: default_max_connections(),
            max_connections_per_uid: default_max_connections_per_uid(),
            idle_timeout_seconds: default_idle_timeout_seconds(),
            socket_group: None,
            max_accepted_per_second: default_max_accepted_per_second(),
            max_backlog: default_max_backlog(),
            policy_keys: Vec::new(),
        }
    }
}
impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            max_concurrent_runs: default_max_concurrent_runs(),
            max_runs_per_org: 0,
            default_step_timeout_seconds: default_step_timeout_seconds(),
            resume_interval_seconds: default_resume_interval_seconds(),
        }
    }
}
impl Default for FileActionConfig {
    fn default() -> Self {
        FileActionConfig {
            quarantine_dir: default_quarantine_dir(),
            roots: Vec::new(),
        }
    }
}
impl Default for ExecActionConfig {
    fn default() -> Self {
        ExecActionConfig {
            allowed_commands: BTreeSet::new(),
            transient_exit_codes: default_transient_exit_codes(),
            run_as: default_exec_run_as(),
            runner_socket: None,
        }
    }
}
impl Default for HttpActionConfig {
    fn default() -> Self {
        HttpActionConfig {
            allowed_hosts: BTreeSet::new(),
            allowed_loopback: BTreeSet::new(),
            allowed_private: BTreeSet::new(),
            connect_timeout_seconds: default_http_connect_timeout_seconds(),
            timeout_seconds: default_http_timeout_seconds(),
            secrets_dir: default_http_secrets_dir(),
            breaker_failures: default_breaker_failures(),
            breaker_reset_seconds: default_breaker_reset_seconds(),
        }
    }
}
impl Default for NetActionConfig {
    fn default() -> Self {
        NetActionConfig {
            nft_command: default_nft_command(),
            never_block: Vec::new(),
        }
    }
}
impl Default for RolesConfig {
    fn default() -> Self {
        RolesConfig {
            admin: default_admin_role(),
            approver: default_approver_role(),
            operator: RoleMembers::default(),
            viewer: RoleMembers::default(),
            orgs: Vec::new(),
        }
    }
}
impl Default for ActuatorConfig {
    fn default() -> Self {
        ActuatorConfig {
            socket: default_actuator_socket(),
            daemon_user: default_daemon_user(),
            protected_users: None,
        }
    }
}
impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket_group: None,
            idle_timeout_seconds: default_control_idle_timeout_seconds(),
            max_connections: default_control_max_connections(),
            max_connections_per_uid: default_control_max_connections_per_uid(),
            admin_reserved_connections: default_control_admin_reserved_connections(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/playbookd/playbookd.toml"), text, None)
    }

    #[test]
    fn empty_file_takes_safe_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.status.listen, "127.0.0.1:9470");
        assert_eq!(config.intake.freshness_seconds, 300);
        assert!(config.intake.allowed_uids.is_empty());
        assert!(config.actions.exec.allowed_commands.is_empty());
        assert_eq!(config.roles.admin.uids, BTreeSet::from([0]));
    }

    #[test]
    fn unknown_top_level_key_is_rejected_by_name() {
        let error = parse("node_id = \"a\"\nskip_signatures = true\n").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("skip_signatures"), "{message}");
        assert!(
            message.contains("/etc/playbookd/playbookd.toml"),
            "{message}"
        );
    }

    #[test]
    fn unknown_nested_key_is_rejected_by_name() {
        let error = parse("[intake]\nfreshnes_seconds = 5\n").unwrap_err();
        assert!(error.to_string().contains("freshnes_seconds"), "{error}");
    }

    #[test]
    fn mistyped_value_names_what_was_expected() {
        let error = parse("[intake]\nfreshness_seconds = \"soon\"\n").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("freshness_seconds"), "{message}");
        assert!(message.contains("integer"), "{message}");
    }

    #[test]
    fn relative_allowed_command_is_rejected() {
        let error = parse("[actions.exec]\nallowed_commands = [\"sh\"]\n").unwrap_err();
        assert!(
            error.to_string().contains("actions.exec.allowed_commands"),
            "{error}"
        );
    }

    #[test]
    fn zero_freshness_window_is_rejected() {
        let error = parse("[intake]\nfreshness_seconds = 0\n").unwrap_err();
        assert!(error.to_string().contains("intake.freshness_seconds"));
    }

    #[test]
    fn environment_overrides_database_url() {
        let config = Config::parse(
            Path::new("/x.toml"),
            "[database]\nurl = \"postgres://a@h1/db\"\n",
            Some("postgres://b@h2/other".into()),
        )
        .unwrap();
        assert_eq!(config.database.url, "postgres://b@h2/other");
    }

    #[test]
    fn bad_database_url_does_not_echo_the_password() {
        let error = parse("[database]\nurl = \"nonsense://u:hunter2@@\"\n").unwrap_err();
        let message = error.to_string();
        assert!(message.contains("database.url"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn action_defaults_allow_nothing_and_are_safe() {
        let config = parse("").unwrap();
        assert!(config.actions.http.allowed_hosts.is_empty());
        assert_eq!(
            config.actions.exec.transient_exit_codes,
            BTreeSet::from([75])
        );
        assert_eq!(config.actions.http.breaker_failures, 5);
        assert_eq!(
            config.actions.net.nft_command,
            vec!["/usr/sbin/nft".to_owned()]
        );
    }

    #[test]
    fn loopback_host_must_also_be_allowlisted() {
        let error = parse("[actions.http]\nallowed_loopback = [\"127.0.0.1\"]\n").unwrap_err();
        assert!(error.to_string().contains("127.0.0.1"), "{error}");
    }

    #[test]
    fn never_block_takes_cidrs_and_rejects_garbage() {
        let config =
            parse("[actions.net]\nnever_block = [\"10.0.0.0/8\", \"fd00::/8\"]\n").unwrap();
        assert_eq!(config.actions.net.never_block.len(), 2);
        assert!(parse("[actions.net]\nnever_block = [\"10.0.0\"]\n").is_err());
        let error = parse("[actions.net]\nnft_command = [\"nft\"]\n").unwrap_err();
        assert!(
            error.to_string().contains("actions.net.nft_command"),
            "{error}"
        );
    }

    #[test]
    fn checkpoint_interval_defaults_to_five_minutes_and_zero_is_rejected() {
        assert_eq!(parse("").unwrap().audit.checkpoint_interval_seconds, 300);
        let error = parse("[audit]\ncheckpoint_interval_seconds = 0\n").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("audit.checkpoint_interval_seconds"),
            "{error}"
        );
    }

    #[test]
    fn control_and_org_scopes_parse_and_are_checked() {
        let config = parse(
            "[control]\nsocket_group = \"soc\"\nidle_timeout_seconds = 5\n\
             [[roles.orgs]]\nuids = [2001]\norgs = [\"acme\"]\n",
        )
        .unwrap();
        assert_eq!(config.control.socket_group.as_deref(), Some("soc"));
        assert_eq!(config.control.idle_timeout_seconds, 5);
        assert_eq!(
            config.roles.orgs[0].orgs,
            BTreeSet::from(["acme".to_owned()])
        );
        let error = parse("[[roles.orgs]]\nuids = [2001]\norgs = []\n").unwrap_err();
        assert!(error.to_string().contains("roles.orgs.orgs"), "{error}");
        let error = parse("[[roles.orgs]]\norgs = [\"acme\"]\n").unwrap_err();
        assert!(error.to_string().contains("uids or groups"), "{error}");
        let error = parse("[control]\nidle_timeout_seconds = 0\n").unwrap_err();
        assert!(
            error.to_string().contains("control.idle_timeout_seconds"),
            "{error}"
        );
    }

    #[test]
    fn relative_node_key_path_is_rejected() {
        let error = parse("[paths]\nnode_key = \"node.key\"\n").unwrap_err();
        assert!(error.to_string().contains("paths.node_key"), "{error}");
    }

    #[test]
    fn node_id_with_spaces_is_rejected() {
        assert!(parse("node_id = \"a b\"\n").is_err());
    }
}
