//! Daemon configuration: one TOML file, read once at start, every key with a safe default,
//! unknown keys refused.
//!
//! `PLAYBOOKD_DATABASE_URL`, when set, replaces `database.url` so that a secret-bearing URL can
//! come from the environment (systemd `Environment=`/credentials) rather than a world-readable file.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
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
        key: String,
        reason: String,
    },
    #[error("invalid {DATABASE_URL_ENV}: {reason}")]
    DatabaseUrlEnv { reason: String },
}

/// Declares a table of the file (the file itself included) whose every key has a default: a
/// missing key takes it (each table's `Default`, at the end of this file) and an unknown key is
/// an error, so a misspelt key never passes for a default. Every such table goes through here,
/// so none can drop either rule.
macro_rules! config_table {
    ($(#[$attr:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$attr])*
        #[derive(Debug, Clone, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name { $($body)* }
    };
}

config_table! {
    /// The whole configuration, as read from the file and checked.
    pub struct Config {
        /// Names this host's audit chain; several daemons may share one database, one chain each.
        pub node_id: NodeId,
        pub database: DatabaseConfig,
        pub paths: PathsConfig,
        pub status: StatusConfig,
        pub intake: IntakeConfig,
        pub executor: ExecutorConfig,
        pub actions: ActionsConfig,
        pub roles: RolesConfig,
        pub audit: AuditConfig,
        pub control: ControlConfig,
        pub actuator: ActuatorConfig,
        pub fleet: FleetConfig,
    }
}

config_table! {
    /// `[fleet]`: this node's place among the daemons that share one database.
    pub struct FleetConfig {
        /// How often this node writes its heartbeat row (and re-reads the fleet halt, prunes
        /// nonces).
        pub heartbeat_interval_seconds: Seconds<1, 300>,
        /// A node whose heartbeat is older than this is shown as stale.
        pub stale_after_seconds: Seconds<1, 86_400>,
        /// Whether this node's own failed rollback also halts every node of the fleet.
        pub halt_fleet_on_rollback_failure: bool,
        /// Nonces deleted per statement by retention (at most `nonce_prune_batches` per heartbeat).
        pub nonce_prune_batch: Count<1, 10_000>,
    }
}

config_table! {
    /// `[actuator]`: where the privileged helper listens, and whom it serves (`playbookd actuator`
    /// reads this section; the daemon only reads `socket`, to reach it).
    pub struct ActuatorConfig {
        /// The actuator's socket: the daemon connects here; the actuator binds it when systemd does
        /// not pass it one (`playbookd-actuator.socket`).
        pub socket: PathBuf,
        /// The only peer the actuator serves (SO_PEERCRED uid): the daemon's user.
        pub daemon_user: UserName,
        /// Users whose processes are never signalled; each must exist. Unset: `postgres` (the
        /// daemon's PostgreSQL server) when this host has that user, nothing otherwise (a fleet
        /// host whose database is elsewhere).
        pub protected_users: Option<BTreeSet<UserName>>,
    }
}

config_table! {
    pub struct DatabaseConfig {
        /// libpq-style URL, parsed; never logged because it may carry a password.
        pub url: DatabaseUrl,
        /// Upper bound on pooled connections (the audit writer holds two more of its own).
        pub pool_size: Count<1, 256>,
        /// How long to wait for a connection before the operation fails (and nothing runs).
        pub connect_timeout_seconds: Seconds<1>,
    }
}

config_table! {
    pub struct PathsConfig {
        pub playbooks: PathBuf,
        pub trusted_keys: PathBuf,
        pub bindings: PathBuf,
        pub decision_socket: PathBuf,
        pub control_socket: PathBuf,
        /// The node's Ed25519 signing key (PKCS#8 PEM) for audit checkpoints; generated on first
        /// start, refused when group- or world-accessible.
        pub node_key: PathBuf,
    }
}

config_table! {
    pub struct AuditConfig {
        /// How often the chain head is signed when it moved (and once more at shutdown).
        pub checkpoint_interval_seconds: Seconds<1, 86_400>,
        /// C2SP tlog-witnesses each new checkpoint is submitted to (`[[audit.witnesses]]`).
        pub witnesses: Vec<WitnessEndpoint>,
    }
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

config_table! {
    pub struct StatusConfig {
        /// `ip:port` (loopback by default) or `unix:/path/to/socket`.
        pub listen: StatusAddr,
    }
}

config_table! {
    pub struct IntakeConfig {
        /// The only peers allowed on decisions.sock (SO_PEERCRED uid). The daemon's own uid is
        /// not implicitly allowed: a program it runs must not be able to act as a policy engine.
        pub allowed_uids: BTreeSet<u32>,
        /// A decision is fresh while `|now - issued_at| <= freshness_seconds`.
        pub freshness_seconds: Seconds<1, 86_400>,
        /// Simultaneous connections on decisions.sock; more get `busy` and are closed.
        pub max_connections: Count,
        /// Simultaneous connections one uid may hold on decisions.sock.
        pub max_connections_per_uid: Count,
        /// Each request line must arrive complete within this many seconds (counted from when
        /// the daemon starts waiting for it, not reset by each byte); otherwise the connection
        /// closes.
        pub idle_timeout_seconds: Seconds<1>,
        /// Group owning decisions.sock (mode 0660); the daemon's own group when unset.
        pub socket_group: Option<String>,
        /// Global storm cap: decisions accepted per second, across all bindings.
        pub max_accepted_per_second: Count,
        /// Admission control: accepted runs allowed to wait for an executor slot at once. A
        /// decision that would exceed it gets a `busy` reply (audited, with the backlog size)
        /// instead of a run that would start late.
        pub max_backlog: Count,
        /// Ed25519 public keys (SPKI PEM files); when set, every decision must be signed by one.
        pub policy_keys: Vec<PathBuf>,
    }
}

config_table! {
    pub struct ExecutorConfig {
        /// Executions running at once on this node.
        pub max_concurrent_runs: Count,
        /// Executions of one org running at once (0: same as `max_concurrent_runs`).
        pub max_runs_per_org: usize,
        /// Timeout of a step that sets none.
        pub default_step_timeout_seconds: Seconds<1, 3600>,
        /// How often unfinished executions not running here are picked up again.
        pub resume_interval_seconds: Seconds<1>,
    }
}

config_table! {
    #[derive(Default)]
    pub struct ActionsConfig {
        pub exec: ExecActionConfig,
        pub file: FileActionConfig,
        pub http: HttpActionConfig,
        pub net: NetActionConfig,
    }
}

config_table! {
    pub struct ExecActionConfig {
        /// Absolute paths; nothing else may be executed.
        pub allowed_commands: BTreeSet<PathBuf>,
        /// Exit codes that mean "try again later" (a transient error); any other non-zero exit is
        /// permanent. Default: `[75]` (EX_TEMPFAIL).
        pub transient_exit_codes: BTreeSet<i32>,
        /// The user `exec` children run as when the daemon starts them itself (it must be able to
        /// switch user, i.e. run as root): never the daemon's own uid, so a child cannot read the
        /// node key, the daemon's files or reach its database role. Default `nobody`; the shipped
        /// configuration uses the dedicated `playbookd-exec`.
        pub run_as: UserName,
        /// The exec runner's socket (`playbookd-exec.socket`, `Accept=yes`): when set, systemd
        /// starts each child as the runner unit's user, so the daemon needs no privilege to switch.
        pub runner_socket: Option<PathBuf>,
    }
}

config_table! {
    /// `http.post` (and `notify`'s webhook): where the daemon may send requests, and how.
    pub struct HttpActionConfig {
        /// Destination host names (or IP literals) a request may go to; empty: none.
        pub allowed_hosts: BTreeSet<String>,
        /// Hosts (also in `allowed_hosts`) that may be reached over plain `http://` and may resolve
        /// to loopback or other non-public addresses: a local receiver. Default: none.
        pub allowed_loopback: BTreeSet<String>,
        /// Hosts (also in `allowed_hosts`) that may resolve to private (RFC 1918, ULA) addresses,
        /// still over https. Default: none.
        pub allowed_private: BTreeSet<String>,
        /// Time allowed to establish the TCP/TLS connection. Default 5.
        pub connect_timeout_seconds: Seconds<1>,
        /// Time allowed for the whole request (never beyond the step's deadline). Default 15.
        pub timeout_seconds: Seconds<1>,
        /// Where secrets named by `secret:` are read from when `$CREDENTIALS_DIRECTORY` (systemd
        /// `LoadCredential=`) does not hold them; each file must be owned by the daemon's uid and
        /// readable by it alone.
        pub secrets_dir: PathBuf,
        /// Consecutive failures (5xx, timeouts, connection errors) after which a destination's
        /// circuit opens. Default 5.
        pub breaker_failures: Count,
        /// Seconds an open circuit waits before letting one trial request through. Default 30.
        pub breaker_reset_seconds: u64,
    }
}

config_table! {
    /// `net.block_ip` / `net.unblock_ip`: the nftables command and addresses never to block.
    pub struct NetActionConfig {
        /// argv prefix that runs `nft` (no shell); the actions append `-f -` and write the script
        /// on stdin. Default `["/usr/sbin/nft"]`. To act inside a network namespace:
        /// `["/usr/sbin/ip", "netns", "exec", "NS", "/usr/sbin/nft"]`.
        pub nft_command: Vec<String>,
        /// Networks (CIDR) that must never be blocked, such as management networks; a request to
        /// block an address or network overlapping one of them is refused. Loopback and
        /// unspecified addresses are always refused.
        pub never_block: Vec<ipnet::IpNet>,
    }
}

config_table! {
    pub struct FileActionConfig {
        /// Where the actuator keeps quarantined files (mode 0700, owned by the actuator's user).
        pub quarantine_dir: PathBuf,
        /// Directories under which the actuator may quarantine and restore files; nothing outside
        /// them (default: none). Each must also be writable in the actuator's unit (a drop-in).
        pub roots: Vec<PathBuf>,
    }
}

config_table! {
    /// control.sock: the operators' socket (approve, deny, cancel, halt-resolve, reload).
    pub struct ControlConfig {
        /// Group owning control.sock (mode 0660); the daemon's own group when unset. Only members
        /// can connect at all; what each may do is still decided by `[roles]`.
        pub socket_group: Option<String>,
        /// Each request line must arrive complete within this many seconds (counted from when
        /// the daemon starts waiting for it, not reset by each byte); otherwise the connection
        /// closes.
        pub idle_timeout_seconds: Seconds<1>,
        /// Simultaneous connections on control.sock; more are refused with a reason.
        pub max_connections: Count,
        /// Simultaneous connections one uid may hold on control.sock.
        pub max_connections_per_uid: Count,
        /// Slots of `max_connections` that only admins may take, so that no flood of other peers
        /// can keep an admin from clearing a SAFE-HALT.
        pub admin_reserved_connections: usize,
    }
}

config_table! {
    /// Who may do what on control.sock, by peer uid or group name.
    pub struct RolesConfig {
        pub admin: RoleMembers,
        pub approver: RoleMembers,
        pub operator: RoleMembers,
        pub viewer: RoleMembers,
        /// Org scopes (`[[roles.orgs]]`): a peer matched by one or more entries may approve, deny
        /// or cancel only executions of the orgs those entries list; a peer matched by none is not
        /// restricted by org.
        pub orgs: Vec<OrgScope>,
    }
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

config_table! {
    #[derive(Default)]
    pub struct RoleMembers {
        pub uids: BTreeSet<u32>,
        pub groups: BTreeSet<String>,
    }
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
    ///
    /// Each value is checked by its type as it is decoded ([`Seconds`], [`Count`], ...), and a
    /// refused value names its key (the path the decoder was at); `check` then holds
    /// only the rules that tie several keys together or that a type cannot say.
    pub fn parse(
        path: &Path,
        text: &str,
        env_url: Option<std::ffi::OsString>,
    ) -> Result<Config, ConfigError> {
        let parse_error = |error: &toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            message: describe_toml_error(text, error),
        };
        let document = toml::Deserializer::parse(text).map_err(|error| parse_error(&error))?;
        let mut config: Config = serde_path_to_error::deserialize(document).map_err(|error| {
            let key = error.path().to_string();
            if key == "." {
                parse_error(error.inner())
            } else {
                ConfigError::Invalid {
                    path: path.to_owned(),
                    reason: describe_toml_error(text, error.inner()),
                    key,
                }
            }
        })?;
        if let Some(url) = env_url {
            let url = url.into_string().map_err(|_| ConfigError::DatabaseUrlEnv {
                reason: "not valid UTF-8".into(),
            })?;
            config.database.url = url
                .parse()
                .map_err(|reason| ConfigError::DatabaseUrlEnv { reason })?;
        }
        config.check(path)?;
        Ok(config)
    }

    /// The rules no single value's type can say (a key compared with another, a value that may
    /// come from the environment, lists checked as a whole); each names the key.
    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            reason,
        };
        if self.fleet.stale_after_seconds.as_secs()
            <= self.fleet.heartbeat_interval_seconds.as_secs()
        {
            return Err(invalid(
                "fleet.stale_after_seconds",
                "expected an integer above fleet.heartbeat_interval_seconds, at most 86400".into(),
            ));
        }
        self.check_witnesses()
            .map_err(|(key, reason)| invalid(key, reason))?;
        if self.control.admin_reserved_connections >= self.control.max_connections.usize() {
            return Err(invalid(
                "control.admin_reserved_connections",
                "expected fewer than control.max_connections (others need a slot too)".into(),
            ));
        }
        self.roles
            .check()
            .map_err(|(key, reason)| invalid(key, reason))?;
        self.actions
            .check()
            .map_err(|(key, reason)| invalid(key, reason))?;
        self.check_paths()
            .map_err(|(key, reason)| invalid(key, reason))
    }

    /// The single paths: each absolute (lists of paths are checked with their section).
    fn check_paths(&self) -> Result<(), (&'static str, String)> {
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
                return Err((key, "expected an absolute path".into()));
            }
        }
        Ok(())
    }

    /// `[[audit.witnesses]]`: each key a cosignature key under the witness's own name, each
    /// witness listed once.
    fn check_witnesses(&self) -> Result<(), (&'static str, String)> {
        let mut witness_names = BTreeSet::new();
        for witness in &self.audit.witnesses {
            if witness.vkey.key_type != crate::note::KeyType::CosignatureV1 {
                return Err((
                    "audit.witnesses.vkey",
                    format!(
                        "witness `{}`: expected a cosignature/v1 key (type 0x04)",
                        witness.name
                    ),
                ));
            }
            if witness.vkey.name != witness.name {
                return Err((
                    "audit.witnesses.name",
                    format!(
                        "`{}` is not the key name in its vkey (`{}`)",
                        witness.name, witness.vkey.name
                    ),
                ));
            }
            if !witness_names.insert(witness.name.as_str()) {
                return Err((
                    "audit.witnesses.name",
                    format!("witness `{}` is listed twice", witness.name),
                ));
            }
        }
        Ok(())
    }

    /// The database connection settings: `database.url` (or its override) with the connect
    /// timeout and, unless the URL names one, playbookd's application name.
    pub fn postgres_config(&self) -> tokio_postgres::Config {
        let mut pg = self.database.url.postgres().clone();
        pg.connect_timeout(self.database.connect_timeout_seconds.duration());
        if pg.get_application_name().is_none() {
            pg.application_name("playbookd");
        }
        pg
    }
}

impl RolesConfig {
    /// Each `[[roles.orgs]]` entry scopes someone to something: an entry naming no org or no
    /// peer would silently scope nothing.
    fn check(&self) -> Result<(), (&'static str, String)> {
        for scope in &self.orgs {
            if scope.orgs.is_empty() {
                return Err((
                    "roles.orgs.orgs",
                    "each [[roles.orgs]] entry must list at least one org".into(),
                ));
            }
            if scope.uids.is_empty() && scope.groups.is_empty() {
                return Err((
                    "roles.orgs",
                    "each [[roles.orgs]] entry must name uids or groups".into(),
                ));
            }
        }
        Ok(())
    }
}

impl ActionsConfig {
    /// What the actions' keys say together: absolute programs and roots, and no host allowed to
    /// reach loopback or private addresses without being allowed at all.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(command) = self.exec.allowed_commands.iter().find(|c| !c.is_absolute()) {
            return Err((
                "actions.exec.allowed_commands",
                format!("{} is not an absolute path", command.display()),
            ));
        }
        if let Some(host) = self
            .http
            .allowed_loopback
            .iter()
            .chain(&self.http.allowed_private)
            .find(|host| !self.http.allowed_hosts.contains(*host))
        {
            return Err((
                "actions.http.allowed_hosts",
                format!(
                    "{host} is allowlisted for loopback/private addresses but not in allowed_hosts"
                ),
            ));
        }
        if let Some(root) = self.file.roots.iter().find(|r| !r.is_absolute()) {
            return Err((
                "actions.file.roots",
                format!("{} is not an absolute path", root.display()),
            ));
        }
        if let Some(socket) = &self.exec.runner_socket
            && !socket.is_absolute()
        {
            return Err((
                "actions.exec.runner_socket",
                "expected an absolute path".into(),
            ));
        }
        match self.net.nft_command.first() {
            Some(program) if Path::new(program).is_absolute() => Ok(()),
            _ => Err((
                "actions.net.nft_command",
                "expected a non-empty list starting with an absolute path".into(),
            )),
        }
    }
}

/// A whole number from `MIN` to `MAX`: a value outside the bounds is refused while the file is
/// decoded, naming its key. [`Seconds`] and [`Count`] say what the number means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "u64")]
pub struct Bounded<const MIN: u64, const MAX: u64>(u64);

impl<const MIN: u64, const MAX: u64> Bounded<MIN, MAX> {
    /// `value`, which must lie within the bounds (for defaults and tests; a file's values go
    /// through `TryFrom`, which says what is wrong instead).
    pub const fn new(value: u64) -> Self {
        assert!(MIN <= value && value <= MAX, "value out of bounds");
        Bounded(value)
    }

    pub const fn get(self) -> u64 {
        self.0
    }
}

impl<const MIN: u64, const MAX: u64> TryFrom<u64> for Bounded<MIN, MAX> {
    type Error = String;

    fn try_from(value: u64) -> Result<Self, String> {
        if !(MIN..=MAX).contains(&value) {
            return Err(match (MIN, MAX) {
                (1, u64::MAX) => "expected a positive integer".into(),
                (1, COUNT_MAX) => format!("expected a positive integer (at most {COUNT_MAX})"),
                _ => format!("expected an integer from {MIN} to {MAX}"),
            });
        }
        Ok(Bounded(value))
    }
}

/// A duration written as whole seconds (the `*_seconds` keys), from `MIN` to `MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(transparent)]
pub struct Seconds<const MIN: u64 = 1, const MAX: u64 = { u64::MAX }>(Bounded<MIN, MAX>);

impl<const MIN: u64, const MAX: u64> Seconds<MIN, MAX> {
    /// `seconds`, which must lie within the bounds (for defaults and tests).
    pub const fn new(seconds: u64) -> Self {
        Seconds(Bounded::new(seconds))
    }

    pub const fn duration(self) -> Duration {
        Duration::from_secs(self.0.get())
    }

    pub const fn as_secs(self) -> u64 {
        self.0.get()
    }
}

/// A count (connections, runs, a batch size) from `MIN` to `MAX`; at most `u32::MAX`, the widest
/// of the settings it feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(transparent)]
pub struct Count<const MIN: u64 = 1, const MAX: u64 = COUNT_MAX>(Bounded<MIN, MAX>);

/// The widest a [`Count`] goes: `u32::MAX`.
pub const COUNT_MAX: u64 = u32::MAX as u64;

impl<const MIN: u64, const MAX: u64> Count<MIN, MAX> {
    /// `count`, which must lie within the bounds (for defaults and tests).
    pub const fn new(count: u32) -> Self {
        Count(Bounded::new(count as u64))
    }

    pub fn get(self) -> u32 {
        // Within `MAX`, which no `Count` sets above `u32::MAX`.
        u32::try_from(self.0.get()).unwrap_or(u32::MAX)
    }

    /// The count as an index-sized number.
    pub fn usize(self) -> usize {
        usize::try_from(self.0.get()).unwrap_or(usize::MAX)
    }
}

/// One line: where (line and, unless it [may hold a secret](may_hold_secret), its source text)
/// and what (the parser's message, in plain words).
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
    if may_hold_secret(line) {
        return format!("line {line_number}: {message}");
    }
    format!("line {line_number} (`{line}`): {message}")
}

/// Whether a line may carry a credential, whichever key the error is about: `database.url`'s
/// own line, an inline table (`database = { url = "postgres://u:PASSWORD@h/db", pool_size = 0
/// }`) that puts a URL on the line of another key, and a syntax error, which has no key at all.
/// Such a line is located, never quoted.
fn may_hold_secret(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    lower.contains("://") || lower.contains("url") || lower.contains("password")
}

/// What every checked-text value of the configuration ([`NodeId`], [`UserName`]) offers
/// beside its rule (its `TryFrom<String>`): parsing through that rule, and its text. It is used
/// where a `&str` is (SQL parameters, lock keys, user lookups, log fields): `Deref` keeps those
/// call sites as they were without letting an unchecked string become one.
macro_rules! checked_text {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, String> {
                $name::try_from(text.to_owned())
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// `node_id`: 1-64 characters of `[A-Za-z0-9._-]`. Node ids go into advisory-lock keys, audit
/// rows, checkpoint origins and journald fields: keep them plain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct NodeId(String);

checked_text!(NodeId);

/// The rule of [`NodeId`], for ids that come from elsewhere (URLs of the status API, bundles).
pub fn is_valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl TryFrom<String> for NodeId {
    type Error = String;

    fn try_from(id: String) -> Result<Self, String> {
        if !is_valid_node_id(&id) {
            return Err("expected 1-64 characters of [A-Za-z0-9._-]".into());
        }
        Ok(NodeId(id))
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

/// A local user's name (`actuator.daemon_user`, `actions.exec.run_as`). Only its form is checked
/// here; whether the user exists is checked where it is used (the actuator at start, `exec` per
/// child), on the host that runs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct UserName(String);

checked_text!(UserName);

impl TryFrom<String> for UserName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        if name.is_empty() {
            return Err("expected a user name".into());
        }
        Ok(UserName(name))
    }
}

/// `database.url` (or `PLAYBOOKD_DATABASE_URL`), parsed once. It may hold a password, so neither
/// its `Debug` (the driver's, which redacts the password) nor a refusal ever shows the text.
#[derive(Clone)]
pub struct DatabaseUrl(tokio_postgres::Config);

/// Why a database URL was refused; says what is wrong without echoing the URL.
const DATABASE_URL_EXPECTED: &str = "expected a PostgreSQL connection URL (postgres://…)";

impl DatabaseUrl {
    /// The connection settings as written (see [`Config::postgres_config`] for what is added).
    pub fn postgres(&self) -> &tokio_postgres::Config {
        &self.0
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        url.parse()
            .map(DatabaseUrl)
            .map_err(|_| DATABASE_URL_EXPECTED.to_owned())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DatabaseUrl").field(&self.0).finish()
    }
}

/// `status.listen`: `unix:/abs/path` or a numeric `ip:port` (no DNS: a name could resolve to a
/// public address and expose the API).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum StatusAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

const UNIX_PREFIX: &str = "unix:";

impl FromStr for StatusAddr {
    type Err = String;

    fn from_str(listen: &str) -> Result<Self, String> {
        let bad = || "expected host:port (e.g. 127.0.0.1:9470) or unix:/absolute/path".to_owned();
        if let Some(path) = listen.strip_prefix(UNIX_PREFIX) {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(bad());
            }
            return Ok(StatusAddr::Unix(path));
        }
        listen
            .parse::<SocketAddr>()
            .map(StatusAddr::Tcp)
            .map_err(|_| bad())
    }
}

impl TryFrom<String> for StatusAddr {
    type Error = String;

    fn try_from(listen: String) -> Result<Self, String> {
        listen.parse()
    }
}

impl std::fmt::Display for StatusAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusAddr::Tcp(addr) => write!(f, "{addr}"),
            StatusAddr::Unix(path) => write!(f, "{UNIX_PREFIX}{}", path.display()),
        }
    }
}

/// A witness's submission prefix: an `http://` or `https://` URL, refused otherwise.
fn deserialize_url<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<reqwest::Url, D::Error> {
    let text = String::deserialize(deserializer)?;
    let url = reqwest::Url::parse(&text).map_err(serde::de::Error::custom)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(serde::de::Error::custom(
            "expected an http:// or https:// URL",
        ));
    }
    Ok(url)
}

// The defaults, one `Default` per table; `#[serde(default)]` on each table takes a missing
// key's value from here, so the file and the code cannot disagree about a default.

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: nix::unistd::gethostname()
                .ok()
                .and_then(|name| name.into_string().ok())
                .and_then(|name| NodeId::try_from(name).ok())
                .unwrap_or_else(|| NodeId("localhost".into())),
            database: DatabaseConfig::default(),
            paths: PathsConfig::default(),
            status: StatusConfig::default(),
            intake: IntakeConfig::default(),
            executor: ExecutorConfig::default(),
            actions: ActionsConfig::default(),
            roles: RolesConfig::default(),
            audit: AuditConfig::default(),
            control: ControlConfig::default(),
            actuator: ActuatorConfig::default(),
            fleet: FleetConfig::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            // postgres://playbookd@/playbookd?host=/run/postgresql (a host that starts with
            // `/` is the directory of the server's Unix socket).
            url: DatabaseUrl({
                let mut pg = tokio_postgres::Config::new();
                pg.user("playbookd")
                    .dbname("playbookd")
                    .host("/run/postgresql");
                pg
            }),
            pool_size: Count::new(8),
            connect_timeout_seconds: Seconds::new(5),
        }
    }
}

impl Default for PathsConfig {
    fn default() -> Self {
        PathsConfig {
            playbooks: "/var/lib/playbookd/playbooks".into(),
            trusted_keys: "/etc/playbookd/trusted-keys".into(),
            bindings: "/etc/playbookd/bindings.yaml".into(),
            decision_socket: "/run/playbookd/decisions.sock".into(),
            control_socket: "/run/playbookd/control.sock".into(),
            node_key: "/var/lib/playbookd/node.key".into(),
        }
    }
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            heartbeat_interval_seconds: Seconds::new(5),
            stale_after_seconds: Seconds::new(30),
            halt_fleet_on_rollback_failure: false,
            nonce_prune_batch: Count::new(1000),
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_interval_seconds: Seconds::new(300),
            witnesses: Vec::new(),
        }
    }
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            listen: StatusAddr::Tcp(SocketAddr::from(([127, 0, 0, 1], 9470))),
        }
    }
}

impl Default for IntakeConfig {
    fn default() -> Self {
        IntakeConfig {
            allowed_uids: BTreeSet::new(),
            freshness_seconds: Seconds::new(300),
            max_connections: Count::new(1024),
            max_connections_per_uid: Count::new(256),
            idle_timeout_seconds: Seconds::new(10),
            socket_group: None,
            max_accepted_per_second: Count::new(200),
            max_backlog: Count::new(1024),
            policy_keys: Vec::new(),
        }
    }
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            max_concurrent_runs: Count::new(64),
            max_runs_per_org: 0,
            default_step_timeout_seconds: Seconds::new(60),
            resume_interval_seconds: Seconds::new(10),
        }
    }
}

impl Default for FileActionConfig {
    fn default() -> Self {
        FileActionConfig {
            quarantine_dir: "/var/lib/playbookd-actuator/quarantine".into(),
            roots: Vec::new(),
        }
    }
}

impl Default for ExecActionConfig {
    fn default() -> Self {
        ExecActionConfig {
            allowed_commands: BTreeSet::new(),
            // EX_TEMPFAIL from sysexits.h: "temporary failure, try again later".
            transient_exit_codes: BTreeSet::from([75]),
            run_as: UserName("nobody".into()),
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
            connect_timeout_seconds: Seconds::new(5),
            timeout_seconds: Seconds::new(15),
            secrets_dir: "/etc/playbookd/secrets".into(),
            breaker_failures: Count::new(5),
            breaker_reset_seconds: 30,
        }
    }
}

impl Default for NetActionConfig {
    fn default() -> Self {
        NetActionConfig {
            nft_command: vec!["/usr/sbin/nft".into()],
            never_block: Vec::new(),
        }
    }
}

impl Default for RolesConfig {
    fn default() -> Self {
        RolesConfig {
            admin: RoleMembers {
                uids: BTreeSet::from([0]),
                groups: BTreeSet::new(),
            },
            approver: RoleMembers {
                uids: BTreeSet::new(),
                groups: BTreeSet::from(["playbookd-approvers".to_owned()]),
            },
            operator: RoleMembers::default(),
            viewer: RoleMembers::default(),
            orgs: Vec::new(),
        }
    }
}

impl Default for ActuatorConfig {
    fn default() -> Self {
        ActuatorConfig {
            socket: "/run/playbookd/actuator.sock".into(),
            daemon_user: UserName("playbookd".into()),
            protected_users: None,
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket_group: None,
            idle_timeout_seconds: Seconds::new(60),
            max_connections: Count::new(16),
            max_connections_per_uid: Count::new(4),
            admin_reserved_connections: 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/playbookd/playbookd.toml"), text, None)
    }

    /// `text` read with `PLAYBOOKD_DATABASE_URL` set to `env_url`.
    fn parse_with_env(text: &str, env_url: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/x.toml"), text, Some(env_url.into()))
    }

    /// Why `text` is refused, which must say each of `expected`.
    fn refusal(text: &str, expected: &[&str]) -> String {
        let message = parse(text).unwrap_err().to_string();
        for part in expected {
            assert!(message.contains(part), "{text:?}: {message}");
        }
        message
    }

    /// The error for `table.key = value` (`value` as TOML), which must name the key and say
    /// `expected`.
    fn refusal_naming(dotted: &str, value: &str, expected: &str) {
        let (table, key) = dotted.rsplit_once('.').unwrap();
        refusal(
            &format!("[{table}]\n{key} = {value}\n"),
            &[&format!("key `{dotted}`"), expected],
        );
    }

    #[test]
    fn empty_file_takes_safe_defaults() {
        let config = parse("").unwrap();
        assert_eq!(
            config.status.listen,
            StatusAddr::Tcp("127.0.0.1:9470".parse().unwrap())
        );
        assert_eq!(config.actions.exec.run_as.as_str(), "nobody");
        assert_eq!(config.actuator.daemon_user.as_str(), "playbookd");
        // The default URL, built without parsing, is the one the documentation gives.
        let documented: tokio_postgres::Config =
            "postgres://playbookd@/playbookd?host=/run/postgresql"
                .parse()
                .unwrap();
        assert_eq!(
            format!("{:?}", config.database.url.postgres()),
            format!("{documented:?}")
        );
        assert_eq!(
            config.intake.freshness_seconds.duration(),
            Duration::from_secs(300)
        );
        assert!(config.intake.allowed_uids.is_empty());
        assert!(config.actions.exec.allowed_commands.is_empty());
        assert_eq!(config.roles.admin.uids, BTreeSet::from([0]));
    }

    #[test]
    fn unknown_top_level_key_is_rejected_by_name() {
        refusal(
            "node_id = \"a\"\nskip_signatures = true\n",
            &["skip_signatures", "/etc/playbookd/playbookd.toml"],
        );
    }

    #[test]
    fn unknown_nested_key_is_rejected_by_name() {
        refusal("[intake]\nfreshnes_seconds = 5\n", &["freshnes_seconds"]);
    }

    #[test]
    fn mistyped_value_names_what_was_expected() {
        let text = "[intake]\nfreshness_seconds = \"soon\"\n";
        refusal(text, &["freshness_seconds", "integer"]);
    }

    #[test]
    fn relative_allowed_command_is_rejected() {
        let text = "[actions.exec]\nallowed_commands = [\"sh\"]\n";
        refusal(text, &["actions.exec.allowed_commands"]);
    }

    #[test]
    fn zero_freshness_window_is_rejected() {
        refusal(
            "[intake]\nfreshness_seconds = 0\n",
            &["intake.freshness_seconds"],
        );
    }

    #[test]
    fn environment_overrides_database_url() {
        let config = parse_with_env(
            "[database]\nurl = \"postgres://a@h1/db\"\n",
            "postgres://b@h2/other",
        )
        .unwrap();
        let pg = config.postgres_config();
        assert_eq!(pg.get_user(), Some("b"));
        assert_eq!(pg.get_dbname(), Some("other"));
        assert_eq!(
            pg.get_hosts(),
            &[tokio_postgres::config::Host::Tcp("h2".into())]
        );
    }

    #[test]
    fn bad_environment_database_url_is_refused_without_echoing_it() {
        let message = parse_with_env("", "nonsense://u:hunter2@@")
            .unwrap_err()
            .to_string();
        for expected in [DATABASE_URL_ENV, "PostgreSQL connection URL"] {
            assert!(message.contains(expected), "{message}");
        }
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn database_password_is_never_in_debug_output() {
        let config = parse("[database]\nurl = \"postgres://u:hunter2@h/db\"\n").unwrap();
        assert_eq!(
            config.postgres_config().get_password(),
            Some(&b"hunter2"[..])
        );
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn bad_database_url_does_not_echo_the_password() {
        let message = refusal(
            "[database]\nurl = \"nonsense://u:hunter2@@\"\n",
            &["key `database.url`", "line 2", "PostgreSQL connection URL"],
        );
        assert!(!message.contains("hunter2"), "{message}");
    }

    /// The password's line is not quoted when the error is about another key on it (an inline
    /// table) or when the line does not parse at all.
    #[test]
    fn an_error_beside_the_database_url_does_not_echo_the_password() {
        for text in [
            "database = { url = \"postgres://u:hunter2@h/db\", pool_size = 0 }\n",
            "[database]\nurl = \"postgres://u:hunter2\\q@h/db\"\n",
        ] {
            let message = refusal(text, &["line "]);
            assert!(!message.contains("hunter2"), "{message}");
        }
        // Other lines are still quoted: the operator sees what was refused.
        refusal("[database]\npool_size = 0\n", &["`pool_size = 0`"]);
    }

    #[test]
    fn action_defaults_allow_nothing_and_are_safe() {
        let config = parse("").unwrap();
        assert!(config.actions.http.allowed_hosts.is_empty());
        assert_eq!(
            config.actions.exec.transient_exit_codes,
            BTreeSet::from([75])
        );
        assert_eq!(config.actions.http.breaker_failures.get(), 5);
        assert_eq!(
            config.actions.net.nft_command,
            vec!["/usr/sbin/nft".to_owned()]
        );
    }

    #[test]
    fn loopback_host_must_also_be_allowlisted() {
        refusal(
            "[actions.http]\nallowed_loopback = [\"127.0.0.1\"]\n",
            &["127.0.0.1"],
        );
    }

    #[test]
    fn never_block_takes_cidrs_and_rejects_garbage() {
        let config =
            parse("[actions.net]\nnever_block = [\"10.0.0.0/8\", \"fd00::/8\"]\n").unwrap();
        assert_eq!(config.actions.net.never_block.len(), 2);
        assert!(parse("[actions.net]\nnever_block = [\"10.0.0\"]\n").is_err());
        let text = "[actions.net]\nnft_command = [\"nft\"]\n";
        refusal(text, &["actions.net.nft_command"]);
    }

    #[test]
    fn checkpoint_interval_defaults_to_five_minutes_and_zero_is_rejected() {
        assert_eq!(
            parse("")
                .unwrap()
                .audit
                .checkpoint_interval_seconds
                .as_secs(),
            300
        );
        let text = "[audit]\ncheckpoint_interval_seconds = 0\n";
        refusal(text, &["audit.checkpoint_interval_seconds"]);
    }

    #[test]
    fn control_and_org_scopes_parse_and_are_checked() {
        let config = parse(
            "[control]\nsocket_group = \"soc\"\nidle_timeout_seconds = 5\n\
             [[roles.orgs]]\nuids = [2001]\norgs = [\"acme\"]\n",
        )
        .unwrap();
        assert_eq!(config.control.socket_group.as_deref(), Some("soc"));
        assert_eq!(config.control.idle_timeout_seconds.as_secs(), 5);
        assert_eq!(
            config.roles.orgs[0].orgs,
            BTreeSet::from(["acme".to_owned()])
        );
        for (text, expected) in [
            (
                "[[roles.orgs]]\nuids = [2001]\norgs = []\n",
                "roles.orgs.orgs",
            ),
            ("[[roles.orgs]]\norgs = [\"acme\"]\n", "uids or groups"),
            (
                "[control]\nidle_timeout_seconds = 0\n",
                "control.idle_timeout_seconds",
            ),
        ] {
            refusal(text, &[expected]);
        }
    }

    #[test]
    fn relative_node_key_path_is_rejected() {
        refusal("[paths]\nnode_key = \"node.key\"\n", &["paths.node_key"]);
    }

    #[test]
    fn node_id_with_spaces_is_rejected() {
        assert!(parse("node_id = \"a b\"\n").is_err());
    }

    #[test]
    fn status_listen_takes_ip_port_and_unix_path() {
        for (listen, expected) in [
            (
                "127.0.0.1:9470",
                StatusAddr::Tcp("127.0.0.1:9470".parse().unwrap()),
            ),
            ("[::1]:0", StatusAddr::Tcp("[::1]:0".parse().unwrap())),
            (
                "unix:/run/playbookd/status.sock",
                StatusAddr::Unix("/run/playbookd/status.sock".into()),
            ),
        ] {
            let config = parse(&format!("[status]\nlisten = \"{listen}\"\n")).unwrap();
            assert_eq!(config.status.listen, expected);
            assert_eq!(config.status.listen.to_string(), listen);
        }
    }

    /// Every key whose value is checked as the file is decoded (a typed string, a bounded
    /// number) refuses a bad value naming the key (dotted) and what was expected.
    #[test]
    fn each_checked_key_names_itself_and_what_it_expected() {
        // One refused value a line: the key, the value as TOML, what the refusal says.
        #[rustfmt::skip]
        let refused = [
            ("status.listen", "\"localhost:9470\"", "expected host:port"),
            ("status.listen", "\"unix:status.sock\"", "unix:/absolute/path"),
            ("status.listen", "\"9470\"", "expected host:port"),
            ("status.listen", "\"\"", "expected host:port"),
            ("database.url", "\"nonsense://\"", "PostgreSQL connection URL"),
            ("actuator.daemon_user", "\"\"", "expected a user name"),
            ("actions.exec.run_as", "\"\"", "expected a user name"),
            ("database.pool_size", "0", "from 1 to 256"),
            ("database.pool_size", "257", "from 1 to 256"),
            ("database.connect_timeout_seconds", "0", "positive integer"),
            ("fleet.heartbeat_interval_seconds", "301", "from 1 to 300"),
            ("fleet.stale_after_seconds", "86401", "from 1 to 86400"),
            ("fleet.nonce_prune_batch", "10001", "from 1 to 10000"),
            ("intake.freshness_seconds", "86401", "from 1 to 86400"),
            ("intake.max_connections", "0", "positive integer"),
            ("intake.max_connections_per_uid", "0", "positive integer"),
            ("intake.idle_timeout_seconds", "0", "positive integer"),
            ("intake.max_accepted_per_second", "0", "positive integer"),
            ("intake.max_backlog", "0", "positive integer"),
            ("executor.max_concurrent_runs", "0", "positive integer"),
            ("executor.default_step_timeout_seconds", "3601", "from 1 to 3600"),
            ("executor.resume_interval_seconds", "0", "positive integer"),
            ("control.idle_timeout_seconds", "0", "positive integer"),
            ("control.max_connections", "0", "positive integer"),
            ("control.max_connections_per_uid", "0", "positive integer"),
            ("audit.checkpoint_interval_seconds", "86401", "from 1 to 86400"),
            ("actions.http.connect_timeout_seconds", "0", "positive integer"),
            ("actions.http.timeout_seconds", "0", "positive integer"),
            ("actions.http.breaker_failures", "0", "positive integer"),
        ];
        for (key, value, expected) in refused {
            refusal_naming(key, value, expected);
        }
    }

    /// `node_id` (a top-level key) and each name of a list of user names are refused naming
    /// the key and the reason too.
    #[test]
    fn node_id_and_protected_users_name_themselves_and_the_reason() {
        for id in ["a b", "", &"x".repeat(65), "a/b"] {
            refusal(
                &format!("node_id = \"{id}\"\n"),
                &[
                    "key `node_id`",
                    "expected 1-64 characters of [A-Za-z0-9._-]",
                ],
            );
        }
        refusal(
            "[actuator]\nprotected_users = [\"postgres\", \"\"]\n",
            &["actuator.protected_users", "expected a user name"],
        );
        let config = parse(&format!("node_id = \"{}\"\n", "a.B_9-".repeat(10))).unwrap();
        assert_eq!(config.node_id.len(), 60);
    }

    #[test]
    fn a_count_beyond_u32_is_refused_by_name() {
        refusal(
            "[intake]\nmax_backlog = 5000000000\n",
            &["intake.max_backlog", "at most 4294967295"],
        );
    }

    #[test]
    fn stale_after_must_exceed_the_heartbeat_interval() {
        refusal(
            "[fleet]\nheartbeat_interval_seconds = 30\nstale_after_seconds = 30\n",
            &["fleet.stale_after_seconds"],
        );
    }

    #[test]
    fn witness_url_other_than_http_is_refused_by_key() {
        refusal(
            "[[audit.witnesses]]\nname = \"w\"\nurl = \"ftp://w.example\"\n\
             vkey = \"w+00000000+AAAA\"\n",
            &["audit.witnesses", "url"],
        );
    }
}
