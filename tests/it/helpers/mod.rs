//! Test fixtures: a fresh database per test, and the real `playbookd` binary as a child process.

#![allow(dead_code)]

pub mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use playbookd::registry::signature::{self, Algorithm, Signer};
use playbookd::store::scratch::{OwnerLogin, ScratchDb};
use tokio_postgres::NoTls;

/// The trusted authors every `DaemonDir` has keys for (`keys/NAME.key`, `trusted-keys/NAME.pub`).
pub const AUTHORS: [&str; 2] = ["author-a", "author-b"];

/// The server the tests use, as a superuser URL. See scripts/test.
pub const TEST_DATABASE_URL_ENV: &str = "PLAYBOOKD_TEST_DATABASE_URL";
const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn admin_config() -> tokio_postgres::Config {
    let url = std::env::var(TEST_DATABASE_URL_ENV)
        .unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned());
    url.parse()
        .unwrap_or_else(|e| panic!("{TEST_DATABASE_URL_ENV} is not a PostgreSQL URL: {e}"))
}

/// A database of its own for one test, created from scratch and dropped afterwards
/// (also when the test panics), with the two roles of a real install (issue 21): `owner`
/// owns the database and the schema and runs the migrations; `runtime` is what the daemon
/// connects as ([`TestDb::url`]) and owns nothing. Roles are cluster-wide, so each test has its
/// own, named after its database, and they are dropped with it.
pub struct TestDb {
    pub name: String,
    /// A superuser connection to this database: what the tests read (and tamper) with.
    pub config: tokio_postgres::Config,
    /// Owns the database and the schema (LOGIN, so a test can try to run the daemon as it).
    pub owner: String,
    /// The daemon's role: granted exactly the runtime privileges by [`TestDb::new`].
    pub runtime: String,
}

impl TestDb {
    /// Creates `pbd_test_<pid>_<uuid>` owned by `<name>_owner`, and `<name>_rt` (not migrated).
    pub async fn empty() -> TestDb {
        let scratch = ScratchDb::named(fresh_name().await);
        scratch
            .create(&admin_client().await, OwnerLogin::Login)
            .await
            .expect("create the test database and its roles");
        let ScratchDb {
            name,
            owner,
            runtime,
        } = scratch;
        let mut config = admin_config();
        config.dbname(&name);
        TestDb {
            name,
            config,
            owner,
            runtime,
        }
    }

    /// Creates the database, applies the migrations as the owner with the production migrator
    /// and grants the runtime role its privileges (what `playbookd migrate --runtime-role` does).
    pub async fn new() -> TestDb {
        let db = TestDb::empty().await;
        db.migrate().await;
        db
    }

    /// Migrates as the owner and grants the runtime privileges.
    pub async fn migrate(&self) {
        migrate_as_owner(connect(&self.owner_config()).await, &self.runtime).await;
    }

    /// A superuser client on this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.config).await
    }

    /// The URL the daemon uses: the runtime role.
    pub fn url(&self) -> String {
        url_of(&self.runtime_config())
    }

    /// Connects as the runtime role.
    pub fn runtime_config(&self) -> tokio_postgres::Config {
        let mut config = self.config.clone();
        config.user(&self.runtime);
        config
    }

    /// Connects as the owner role.
    pub fn owner_config(&self) -> tokio_postgres::Config {
        let mut config = self.config.clone();
        config.user(&self.owner);
        config
    }

    /// The owner's URL (for `playbookd migrate`, and to show that the daemon refuses it).
    pub fn owner_url(&self) -> String {
        url_of(&self.owner_config())
    }

    /// A superuser URL on this database (to show that the daemon refuses it).
    pub fn admin_url(&self) -> String {
        url_of(&self.config)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let scratch = ScratchDb {
            name: self.name.clone(),
            owner: self.owner.clone(),
            runtime: self.runtime.clone(),
        };
        block_on_own_thread(async move {
            let _ = scratch.drop_all(&admin_client().await).await;
        });
    }
}

/// Applies the migrations through `owner` (a connection as the owner role) with the production
/// migrator and grants `runtime` its privileges (what `playbookd migrate --runtime-role` does).
pub async fn migrate_as_owner(mut owner: tokio_postgres::Client, runtime: &str) {
    playbookd::store::migrate::migrate_with_roles(
        &mut owner,
        &playbookd::store::migrate::Roles {
            owner: None,
            runtime: Some(runtime),
        },
    )
    .await
    .expect("migrate as the owner role");
}

/// Runs `work` to its end on a runtime of its own in a thread of its own: what a `Drop` does
/// runs outside any runtime guarantee (maybe during a panic).
fn block_on_own_thread(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(work);
    })
    .join();
}

pub async fn connect(config: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, connection) = config.connect(NoTls).await.unwrap_or_else(|e| {
        panic!(
            "cannot connect to the test PostgreSQL ({TEST_DATABASE_URL_ENV}={}): {e}",
            url_of(config)
        )
    });
    tokio::spawn(connection);
    client
}

async fn admin_client() -> tokio_postgres::Client {
    connect(&admin_config()).await
}

pub fn url_of(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(name)) => name.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let db = config.get_dbname().unwrap_or("postgres");
    format!("postgres://{user}@{host}:{port}/{db}")
}

/// A name for a test's database and roles that no other test (or run) uses:
/// `pbd_test_<pid>_<uuid>`, the pid telling [`sweep_stale_databases_once`] whether the run is
/// gone. The first call sweeps what earlier runs left.
async fn fresh_name() -> String {
    sweep_stale_databases_once().await;
    format!(
        "pbd_test_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Drops databases left by earlier test runs whose process is gone (a crashed or killed run).
async fn sweep_stale_databases_once() {
    static SWEPT: Once = Once::new();
    let mut first = false;
    SWEPT.call_once(|| first = true);
    if !first {
        return;
    }
    let admin = admin_client().await;
    drop_stale(
        &admin,
        ("pg_database", "datname"),
        "DATABASE",
        " WITH (FORCE)",
    )
    .await;
    // Then the roles of those tests (every database they had privileges in is gone).
    drop_stale(&admin, ("pg_roles", "rolname"), "ROLE", "").await;
}

/// Drops each object of `catalog` (its name in `column`) that a test made (`pbd_test_<pid>_…`)
/// whose process is gone: `DROP KIND IF EXISTS name OPTIONS`.
async fn drop_stale(
    admin: &tokio_postgres::Client,
    (catalog, column): (&str, &str),
    kind: &str,
    options: &str,
) {
    let sql = format!("SELECT {column} FROM {catalog} WHERE {column} LIKE 'pbd\\_test\\_%'");
    let names: Vec<String> = query_column(admin, &sql, &[]).await;
    for name in names {
        let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = admin
                .batch_execute(&format!("DROP {kind} IF EXISTS {name}{options}"))
                .await;
        }
    }
}

/// The `playbookd` binary under test.
/// The last seq of `node`'s chain (0 when it has none).
pub async fn chain_head(client: &tokio_postgres::Client, node: &str) -> i64 {
    client
        .query_one(
            "SELECT COALESCE(max(seq), 0) FROM playbook_audit_log WHERE node_id = $1",
            &[&node],
        )
        .await
        .unwrap()
        .get(0)
}

/// Asserts that `haystack` (a command's output, a log, a page) contains `needle`; the failure
/// shows both, so that a changed message can be seen without rerunning.
#[track_caller]
pub fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "{needle:?} is not in:\n{haystack}"
    );
}

/// Asserts that `haystack` does not contain `needle` (a secret, a refused step's output…).
#[track_caller]
pub fn assert_lacks(haystack: &str, needle: &str) {
    assert!(!haystack.contains(needle), "{needle:?} is in:\n{haystack}");
}

/// Inserts one active halt of `scope` (`node` or `fleet`) recorded by `node`, straight into the
/// database (as another node or an admin would): daemons learn of it from there.
pub async fn insert_halt(client: &tokio_postgres::Client, scope: &str, node: &str, message: &str) {
    let inserted = client
        .execute(
            "INSERT INTO playbook_safe_halt_state (is_active, scope, node_id, error_message, entered_at) \
             VALUES (true, $1, $2, $3, now())",
            &[&scope, &node, &message],
        )
        .await
        .unwrap();
    assert_eq!(inserted, 1);
}

/// A fleet halt known only to the database: its notification trigger is disabled first, so no
/// daemon hears of it until it reads the table itself.
pub async fn insert_unnotified_fleet_halt(client: &tokio_postgres::Client, message: &str) {
    client
        .batch_execute(
            "ALTER TABLE playbook_safe_halt_state DISABLE TRIGGER playbook_safe_halt_state_notify",
        )
        .await
        .unwrap();
    insert_halt(client, "fleet", "node-admin", message).await;
}

/// How many rows of `event_type` the audit log holds (all nodes).
pub async fn count_events(client: &tokio_postgres::Client, event_type: &str) -> i64 {
    query_value(
        client,
        "SELECT count(*) FROM playbook_audit_log WHERE event_type = $1",
        &[&event_type],
    )
    .await
}

/// The first column of every row `sql` returns.
pub async fn query_column<T>(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    let rows = client.query(sql, params).await;
    let rows = rows.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter().map(|row| row.get(0)).collect()
}

/// The first two columns of every row `sql` returns.
pub async fn query_pairs<A, B>(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<(A, B)>
where
    A: for<'a> tokio_postgres::types::FromSql<'a>,
    B: for<'a> tokio_postgres::types::FromSql<'a>,
{
    let rows = client.query(sql, params).await;
    let rows = rows.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter().map(|row| (row.get(0), row.get(1))).collect()
}

/// The keys of a JSON object (a schema's `properties`, an OpenAPI document's `paths`).
pub fn json_keys(object: &serde_json::Value) -> std::collections::BTreeSet<&str> {
    let object = object.as_object();
    let object = object.unwrap_or_else(|| panic!("not a JSON object: {object:?}"));
    object.keys().map(String::as_str).collect()
}

/// The first column of the one row `sql` returns.
pub async fn query_value<T>(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> T
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client
        .query_one(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// `playbookd audit verify --config CONFIG EXTRA…`.
pub fn audit_verify(config: &Path, extra: &[&str]) -> (ExitStatus, String, String) {
    audit_cli("verify", config, extra)
}

/// `playbookd audit verify --config CONFIG --anchor DIR/chain-anchor.json`.
pub fn audit_verify_anchor(config: &Path, dir: &DaemonDir) -> (ExitStatus, String, String) {
    let anchor = dir.path("chain-anchor.json");
    audit_verify(config, &["--anchor", anchor.to_str().unwrap()])
}

/// What a running daemon halted by a cut of its chain (seqs after `kept` up to `committed`
/// lost) shows everywhere: its anchor records the loss, /v1/health is not ready and names the
/// seqs, `playbookd status` fails naming them; once stopped it has appended nothing, and
/// `audit verify` passes on the database alone but reports the cut against the anchor.
pub async fn assert_cut_reported(
    daemon: &mut ChildDaemon,
    dir: &DaemonDir,
    client: &tokio_postgres::Client,
    (node, kept, committed): (&str, i64, i64),
    stop_limit: Duration,
) {
    let missing = format!("seq {}..={committed} are missing", kept + 1);
    assert_eq!(
        chain_head(client, node).await,
        kept,
        "{}",
        daemon.log_text()
    );
    assert_eq!(
        dir.chain_anchor()["cut"]["loss"],
        serde_json::json!({"kind": "missing", "first": kept + 1, "last": committed})
    );
    let health = daemon.get_json("/v1/health");
    assert_eq!(health["ready"], false, "{health}");
    assert_eq!(
        health["chain_cut"]["lost_seqs"],
        format!("{}..{committed}", kept + 1),
        "{health}"
    );
    let endpoint = daemon.status_endpoint().to_string();
    let (status, stdout, stderr) = run_cli(&["status", "--url", &endpoint], &[]);
    assert!(!status.success(), "{stdout}{stderr}");
    assert_contains(&stdout, "SAFE-HALT: AUDIT CHAIN CUT:");
    assert_contains(&stdout, &missing);
    daemon.stop_within(stop_limit);
    assert_eq!(
        chain_head(client, node).await,
        kept,
        "nothing appended at shutdown"
    );
    let config = dir.path("playbookd.toml");
    let (status, stdout, stderr) = audit_verify(&config, &[]);
    assert!(status.success(), "{stdout}{stderr}");
    let (status, stdout, _) = audit_verify_anchor(&config, dir);
    assert_eq!(status.code(), Some(2), "{stdout}");
    assert_contains(&stdout, &format!("BREACH at seq {}: cut:", kept + 1));
    assert_contains(&stdout, &missing);
}

/// `playbookd audit accept-cut --config CONFIG --reason REASON`, which must succeed: the admin
/// acknowledges a cut so that the daemon starts again.
pub fn accept_cut(config: &Path, reason: &str) {
    let (status, stdout, stderr) = audit_cli("accept-cut", config, &["--reason", reason]);
    assert!(status.success(), "{stdout}{stderr}");
}

/// `playbookd audit VERB --config CONFIG EXTRA…`.
pub fn audit_cli(verb: &str, config: &Path, extra: &[&str]) -> (ExitStatus, String, String) {
    let mut args = vec!["audit", verb, "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_cli(&args, &[])
}

/// Runs `openssl ARGS…`, which must succeed: keys and signatures made by an implementation
/// this project did not write.
pub fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `openssl genpkey -algorithm ALGORITHM [-pkeyopt OPTION] -out KEY`, and the public half (PEM)
/// at `public`.
pub fn openssl_key_pair(algorithm: &str, option: Option<&str>, key: &Path, public: &Path) {
    let key = key.to_str().unwrap();
    let mut args = vec!["genpkey", "-algorithm", algorithm];
    if let Some(option) = option {
        args.extend(["-pkeyopt", option]);
    }
    args.extend(["-out", key]);
    openssl(&args);
    openssl(&[
        "pkey",
        "-in",
        key,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_playbookd"))
}

/// Runs `playbookd ARGS…` to completion and returns (status, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut command = Command::new(binary());
    command.args(args).env_remove("PLAYBOOKD_DATABASE_URL");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run playbookd");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `playbookd serve --config CONFIG`, which must refuse to start with exit 78 (EX_CONFIG: a
/// setup the operator must fix); its stderr, where the fix is named.
pub fn serve_refused(config: &Path) -> String {
    let (status, _, stderr) = run_cli(&["serve", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(status.code(), Some(78), "{stderr}");
    stderr
}

/// A fresh database, and a directory with a config for `node` (`extra` appended), not
/// started: (database, directory, config path).
pub async fn configured(node: &str, extra: &str) -> (TestDb, DaemonDir, PathBuf) {
    let db = TestDb::new().await;
    let dir = DaemonDir::new();
    let config = dir.write_config(&db, node, extra);
    (db, dir, config)
}

/// A fresh database, and a directory with a config for `node` (`extra` appended), served by
/// the real daemon (ready): (database, directory, config path, daemon).
pub async fn serve_fresh(node: &str, extra: &str) -> (TestDb, DaemonDir, PathBuf, ChildDaemon) {
    let (db, dir, config) = configured(node, extra).await;
    let daemon = ChildDaemon::serve(&config);
    (db, dir, config, daemon)
}

/// A temporary directory with permissions `mode` (tempdirs are 0700): for what exec children,
/// which run as another uid (`nobody`), must reach.
pub fn tempdir_with_mode(prefix: &str, mode: u32) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

/// A directory holding a daemon's configuration, keys, playbooks and sockets.
pub struct DaemonDir {
    pub dir: tempfile::TempDir,
}

impl DaemonDir {
    pub fn new() -> DaemonDir {
        let dir = tempfile::Builder::new()
            .prefix("pbd-it-")
            .tempdir()
            .expect("tempdir");
        for sub in ["playbooks", "trusted-keys", "keys", "quarantine", "run"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        // Two trusted authors, so that dual control (bindings, critical playbooks) can be met.
        for author in AUTHORS {
            let prefix = dir.path().join("keys").join(author);
            Signer::keygen(Algorithm::Ed25519, &prefix).expect("keygen");
            std::fs::copy(
                prefix.with_extension("pub"),
                dir.path()
                    .join("trusted-keys")
                    .join(format!("{author}.pub")),
            )
            .expect("trust key");
        }
        DaemonDir { dir }
    }

    /// The private key of a trusted author (`AUTHORS`).
    pub fn signer(&self, author: &str) -> Signer {
        let path = self.path(&format!("keys/{author}.key"));
        let pem = std::fs::read_to_string(&path).expect("read key");
        Signer::load(&pem, &path).expect("load key")
    }

    /// Writes `text` to `relative` and signs it as `FILE.sig` by the first author and, with
    /// `dual`, as `FILE.sig.2` by the second.
    pub fn write_signed(&self, relative: &str, text: &str, dual: bool) -> PathBuf {
        let path = self.path(relative);
        std::fs::write(&path, text).expect("write document");
        let sig = signature::with_suffix(&path, ".sig");
        std::fs::write(&sig, self.signer(AUTHORS[0]).sign(text.as_bytes())).expect("sign");
        if dual {
            let sig2 = signature::with_suffix(&path, ".sig.2");
            std::fs::write(&sig2, self.signer(AUTHORS[1]).sign(text.as_bytes())).expect("sign");
        }
        path
    }

    /// Writes the bindings file, signed by both authors (bindings are always under dual control).
    pub fn write_bindings(&self, text: &str) -> PathBuf {
        self.write_signed("bindings.yaml", text, true)
    }

    /// Makes the directory and `run/` reachable by other uids (tempdirs are 0700), for clients
    /// such as `playbookd ctl` run under the uids a test gives roles to.
    pub fn open_to_other_uids(&self) {
        use std::os::unix::fs::PermissionsExt;
        for path in [self.dir.path().to_owned(), self.path("run")] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// The daemon's chain anchor (`chain-anchor.json`), as JSON.
    pub fn chain_anchor(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.path("chain-anchor.json")).unwrap()).unwrap()
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes a config for `db` with every path inside this directory; `extra` is appended.
    /// The test process is the policy engine: its uid goes into `intake.allowed_uids` (inside
    /// the `[intake]` table of `extra` when it has one), unless `extra` sets that key itself.
    pub fn write_config(&self, db: &TestDb, node_id: &str, extra: &str) -> PathBuf {
        self.write_config_url(&db.url(), node_id, extra)
    }

    /// Like [`DaemonDir::write_config`], for the database at `url` (any form `database.url`
    /// takes, e.g. a multi-host connection string).
    pub fn write_config_url(&self, url: &str, node_id: &str, extra: &str) -> PathBuf {
        let p = |s: &str| self.path(s).display().to_string();
        let allow = format!("allowed_uids = [{}]\n", nix::unistd::geteuid().as_raw());
        let extra = if extra.contains("allowed_uids") {
            extra.to_owned()
        } else if extra.contains("[intake]\n") {
            extra.replacen("[intake]\n", &format!("[intake]\n{allow}"), 1)
        } else {
            format!("{extra}\n[intake]\n{allow}")
        };
        let text = format!(
            r#"node_id = "{node_id}"
[database]
url = "{url}"
pool_size = 4
[paths]
playbooks = "{playbooks}"
trusted_keys = "{keys}"
bindings = "{bindings}"
decision_socket = "{decisions}"
control_socket = "{control}"
node_key = "{node_key}"
[status]
listen = "127.0.0.1:0"
[actions.file]
quarantine_dir = "{quarantine}"
{extra}
"#,
            url = url.replace('\\', "\\\\").replace('"', "\\\""),
            playbooks = p("playbooks"),
            keys = p("trusted-keys"),
            bindings = p("bindings.yaml"),
            decisions = p("run/decisions.sock"),
            control = p("run/control.sock"),
            node_key = p("node.key"),
            quarantine = p("quarantine"),
        );
        let path = self.path("playbookd.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }
}

/// The real daemon as a child process; killed on drop.
pub struct ChildDaemon {
    pub child: Child,
    pub log: PathBuf,
}

impl ChildDaemon {
    /// Starts `playbookd serve --config CONFIG`, logging to `LOG`.
    pub fn start(config: &Path, log: &Path) -> ChildDaemon {
        ChildDaemon::start_with_env(config, log, &[])
    }

    /// `playbookd serve --config CONFIG`, logging to `daemon.log` beside CONFIG, once it is
    /// ready (within 30 s).
    pub fn serve(config: &Path) -> ChildDaemon {
        let log = config.with_file_name("daemon.log");
        let mut daemon = ChildDaemon::start(config, &log);
        daemon.wait_for_log("playbookd ready", Duration::from_secs(30));
        daemon
    }

    /// Like [`ChildDaemon::start`], with extra environment variables (`NOTIFY_SOCKET`, …).
    pub fn start_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> ChildDaemon {
        let log_file = std::fs::File::create(log).expect("log file");
        let child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("PLAYBOOKD_DATABASE_URL")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env("PLAYBOOKD_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn playbookd");
        ChildDaemon {
            child,
            log: log.to_owned(),
        }
    }

    /// The status API's address, from the `status API listening on` log line (the listener's
    /// task may log it just after `playbookd ready`: waited for, briefly).
    pub fn status_endpoint(&self) -> playbookd::cli::status::Endpoint {
        let start = Instant::now();
        while !self.log_text().contains("status API listening on ")
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let log = self.log_text();
        let addr = log
            .split("status API listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no status address in the log:\n{log}"));
        playbookd::cli::status::Endpoint::parse(&format!("http://{addr}")).unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log shows `needle`, or panics with the log after `limit`.
    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.log_text().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "playbookd exited with {status} before `{needle}`:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no `{needle}` in the log after {limit:?}:\n{}",
            self.log_text()
        );
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, signal).expect("kill");
    }

    /// SIGTERM, then the process must exit successfully within `limit`.
    pub fn stop_within(&mut self, limit: Duration) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.exits_cleanly_within(limit);
    }

    /// The process must exit successfully within `limit` (of a signal the test sent).
    pub fn exits_cleanly_within(&mut self, limit: Duration) {
        let status = self.wait_exit(limit).unwrap_or_else(|| {
            panic!("daemon did not exit within {limit:?}:\n{}", self.log_text())
        });
        assert!(status.success(), "exit {status}:\n{}", self.log_text());
    }

    /// GET `path` of the daemon's status API, as JSON.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let addr = self.status_endpoint().to_string();
        let addr = addr
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let stream = std::net::TcpStream::connect(&addr).unwrap();
        let response = http_get(stream, &addr, path);
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A database owned by a role of its own (LOGIN, not a superuser), migrated as that role: the
/// privileges the daemon has in production. Dropped, with the role, on drop.
pub struct OwnerRoleDb {
    pub role: String,
    /// Connects as the owner role to its database.
    pub config: tokio_postgres::Config,
}

impl OwnerRoleDb {
    pub async fn new() -> OwnerRoleDb {
        let role = fresh_name().await;
        let admin = admin_client().await;
        // Two calls: CREATE DATABASE cannot run in the implicit transaction of a batch.
        for statement in [
            format!("CREATE ROLE {role} LOGIN"),
            format!("CREATE DATABASE {role} OWNER {role}"),
        ] {
            admin.batch_execute(&statement).await.expect(&statement);
        }
        let mut config = admin_config();
        config.user(&role).dbname(&role);
        let db = OwnerRoleDb { role, config };
        let mut client = db.client().await;
        playbookd::store::migrate::migrate(&mut client)
            .await
            .expect("migrate as the owner role");
        db
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.config).await
    }
}

impl Drop for OwnerRoleDb {
    fn drop(&mut self) {
        // One role that owns its database of the same name: dropped after the database.
        let role = self.role.clone();
        block_on_own_thread(async move {
            let admin = admin_client().await;
            for statement in [
                format!("DROP DATABASE IF EXISTS {role} WITH (FORCE)"),
                format!("DROP ROLE IF EXISTS {role}"),
            ] {
                let _ = admin.batch_execute(&statement).await;
            }
        });
    }
}

/// A JSON array of base64 hashes (a proof from a bundle or the status API) as tlog_tiles hashes.
pub fn tlog_hashes(proof: &serde_json::Value) -> Vec<tlog_tiles::Hash> {
    use base64::Engine;
    proof
        .as_array()
        .expect("a proof is an array")
        .iter()
        .map(|h| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(h.as_str().expect("a base64 string"))
                .expect("base64");
            tlog_tiles::Hash(bytes.try_into().expect("32 bytes"))
        })
        .collect()
}

/// One HTTP/1.0 GET of `path` over `stream` (TCP or a Unix socket); the whole response.
pub fn http_get<S: std::io::Read + std::io::Write>(
    mut stream: S,
    host: &str,
    path: &str,
) -> String {
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
