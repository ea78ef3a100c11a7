//! The daemon's life cycle, driven through the real binary.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::helpers::{
    ChildDaemon, DaemonDir, TestDb, assert_contains, configured, http_get, query_column,
    query_value, run_cli, serve_fresh, serve_refused,
};

#[tokio::test]
async fn serve_stays_up_and_exits_zero_on_sigterm() {
    let (db, _dir, _config, mut daemon) = serve_fresh("node-a", "").await;

    let client = db.client().await;
    let tables: i64 = query_value(
        &client,
        "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'playbook_%'",
        &[],
    )
    .await;
    assert!(
        tables >= 8,
        "expected the playbook_* tables, found {tables}"
    );

    std::thread::sleep(Duration::from_millis(300));
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "daemon exited early"
    );
    let asked = Instant::now();
    daemon.signal(Signal::SIGTERM);
    daemon.exits_cleanly_within(Duration::from_secs(5));
    assert!(asked.elapsed() < Duration::from_secs(5));

    let events: Vec<String> = query_column(
        &client,
        "SELECT event_type FROM playbook_audit_log WHERE node_id = 'node-a' ORDER BY seq",
        &[],
    )
    .await;
    // No bindings file in the directory: audited as such, and no bindings at all.
    assert_eq!(events, ["daemon.start", "bindings.rejected", "daemon.stop"]);
}

#[tokio::test]
async fn second_migrate_is_a_no_op() {
    let db = TestDb::empty().await;
    // No configuration needed: the owner's URL comes from the environment.
    let owner = [("PLAYBOOKD_OWNER_DATABASE_URL", db.owner_url())];
    let env: Vec<(&str, &str)> = owner.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = [
        "migrate",
        "--config",
        "/nonexistent/playbookd.toml",
        "--runtime-role",
        &db.runtime,
    ];

    let (status, stdout, stderr) = run_cli(&args, &env);
    assert!(status.success(), "{stderr}");
    assert_contains(&stdout, "applied V1__");
    assert_contains(&stdout, "applied V6__runtime_role");

    let (status, stdout, stderr) = run_cli(&args, &env);
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!(
            "schema up to date; nothing applied\ngranted the runtime privileges to role {}",
            db.runtime
        )
    );
}

#[tokio::test]
async fn unknown_config_key_exits_78_naming_the_key() {
    let (_db, _dir, config) = configured("node-a", "[intake]\nallow_everyone = true\n").await;
    let stderr = serve_refused(&config);
    assert_contains(&stderr, "allow_everyone");
    assert_contains(&stderr, config.to_str().unwrap());
}

/// Each typed value (`node_id`, `database.url`, `status.listen`, user names) is refused as the
/// file is read, before anything is touched: exit 78, the key and the reason, and a database
/// URL's password never in the message, from the file or from `PLAYBOOKD_DATABASE_URL`.
#[test]
fn a_malformed_value_exits_78_naming_its_key_and_never_the_password() {
    let dir = DaemonDir::new();
    for (text, key, reason) in [
        ("node_id = \"a b\"\n", "node_id", "expected 1-64 characters"),
        (
            "[database]\nurl = \"nonsense://u:hunter2@h/db\"\n",
            "database.url",
            "PostgreSQL connection URL",
        ),
        (
            "[status]\nlisten = \"localhost:9470\"\n",
            "status.listen",
            "expected host:port",
        ),
        (
            "[actuator]\ndaemon_user = \"\"\n",
            "actuator.daemon_user",
            "expected a user name",
        ),
        (
            "[actions.exec]\nrun_as = \"\"\n",
            "actions.exec.run_as",
            "expected a user name",
        ),
    ] {
        let config = dir.path("malformed.toml");
        std::fs::write(&config, text).unwrap();
        let stderr = serve_refused(&config);
        assert_contains(&stderr, &format!("key `{key}`"));
        assert_contains(&stderr, reason);
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
    let config = dir.path("empty.toml");
    std::fs::write(&config, "").unwrap();
    let (status, _, stderr) = run_cli(
        &["serve", "--config", config.to_str().unwrap()],
        &[("PLAYBOOKD_DATABASE_URL", "nonsense://u:hunter2@h/db")],
    );
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert_contains(&stderr, "invalid PLAYBOOKD_DATABASE_URL");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn unreachable_database_exits_quickly_naming_host_and_port() {
    let dir = DaemonDir::new();
    // A port nothing listens on: bind it, note it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path("unreachable.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"x\"\n[database]\nurl = \"postgres://postgres@127.0.0.1:{port}/x\"\n\
             [paths]\nnode_key = \"{}\"\n",
            dir.path("node.key").display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    let (status, _, stderr) = run_cli(&["serve", "--config", config.to_str().unwrap()], &[]);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_contains(&stderr, &format!("127.0.0.1:{port}"));
}

#[tokio::test]
async fn environment_database_url_overrides_the_file() {
    let db = TestDb::empty().await;
    let dir = DaemonDir::new();
    let config = dir.path("wrong-db.toml");
    std::fs::write(
        &config,
        "node_id = \"x\"\n[database]\nurl = \"postgres://postgres@127.0.0.1:1/nothing\"\n",
    )
    .unwrap();
    let (status, stdout, stderr) = run_cli(
        &["migrate", "--config", config.to_str().unwrap()],
        &[("PLAYBOOKD_DATABASE_URL", &db.owner_url())],
    );
    assert!(status.success(), "{stderr}");
    assert_contains(&stdout, "applied");
}

#[tokio::test]
async fn second_daemon_with_the_same_node_id_refuses_to_start() {
    let (db, dir, config) = configured("shared-node", "").await;
    let mut first = ChildDaemon::start(&config, &dir.path("first.log"));
    first.wait_for_log("playbookd ready", Duration::from_secs(20));

    let other = DaemonDir::new();
    let config = other.write_config(&db, "shared-node", "");
    let stderr = serve_refused(&config);
    assert_contains(&stderr, "shared-node");
    assert_contains(&stderr, "another playbookd");
}

/// GET `path` over the status API's Unix socket; the status line and body.
fn get_over_unix(socket: &std::path::Path, path: &str) -> String {
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    http_get(stream, "localhost", path)
}

#[tokio::test]
async fn a_second_daemon_started_by_mistake_leaves_the_first_ones_status_socket_working() {
    let (_db, dir, config) = configured("node-a", "").await;
    let socket = dir.path("run/status.sock");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"unix:{}\"", socket.display()),
    );
    assert_contains(&text, "unix:");
    std::fs::write(&config, text).unwrap();
    let mut first = ChildDaemon::start(&config, &dir.path("first.log"));
    first.wait_for_log("playbookd ready", Duration::from_secs(20));
    first.wait_for_log("status API listening on unix:", Duration::from_secs(5));
    let response = get_over_unix(&socket, "/v1/health");
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");

    // The same configuration again: it must stop at the live status socket, not unlink it.
    let (status, _, stderr) = run_cli(&["serve", "--config", config.to_str().unwrap()], &[]);
    assert!(!status.success(), "{stderr}");
    assert!(
        socket.exists(),
        "the first daemon's status socket was unlinked:\n{stderr}"
    );
    let response = get_over_unix(&socket, "/v1/health");
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert_contains(&stderr, "another process is already serving on this socket");
    first.stop_within(Duration::from_secs(10));
}

#[tokio::test]
async fn missing_trusted_keys_dir_exits_78_naming_it() {
    let db = TestDb::new().await;
    let dir = DaemonDir::new();
    std::fs::remove_dir_all(dir.path("trusted-keys")).unwrap();
    let config = dir.write_config(&db, "node-a", "");
    let stderr = serve_refused(&config);
    assert_contains(&stderr, "trusted-keys");
}

#[tokio::test]
async fn a_policy_key_others_can_write_is_refused_like_a_trusted_key() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::new().await;
    let dir = DaemonDir::new();
    // A valid Ed25519 public key, but anyone may replace it: whoever does signs decisions.
    let key = dir.path("policy.pub");
    std::fs::copy(dir.path("trusted-keys/author-a.pub"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o666)).unwrap();
    let config = dir.write_config(
        &db,
        "node-a",
        &format!("[intake]\npolicy_keys = [\"{}\"]\n", key.display()),
    );
    let stderr = serve_refused(&config);
    assert_contains(&stderr, "policy.pub");
    assert_contains(&stderr, "group- or world-writable");
    // The same file, private again, is accepted.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _ready = ChildDaemon::serve(&config);
}

#[tokio::test]
async fn sighup_reloads_the_registry_and_audits_the_counts() {
    let (db, dir, _config, mut daemon) = serve_fresh("node-a", "").await;

    dir.write_signed(
        "playbooks/hello.yaml",
        "id: hello\nversion: 1\nname: Hello\nowners: {technical: a@example.org, operational: b@example.org}\n\
         steps:\n  - id: say\n    action: notify\n    with: {message: hi}\n    rollback: none\n",
        false,
    );
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_log("registry reloaded", Duration::from_secs(10));

    let client = db.client().await;
    let reload: serde_json::Value = query_value(
        &client,
        "SELECT event_data FROM playbook_audit_log WHERE event_type = 'daemon.reload'",
        &[],
    )
    .await;
    assert_eq!(reload["loaded"], 1, "{reload}");
    assert_eq!(reload["rejected"], 1, "the missing bindings file: {reload}");
    let versions: i64 = query_value(
        &client,
        "SELECT count(*) FROM playbook_versions WHERE playbook_id = 'hello'",
        &[],
    )
    .await;
    assert_eq!(versions, 1);
}

#[tokio::test]
async fn ctl_reload_lists_each_refused_file_exits_65_and_the_last_good_versions_stay() {
    use playbookd::cli::status::request;

    let db = TestDb::new().await;
    let dir = DaemonDir::new();
    let hello = "id: hello\nversion: 1\nname: Hello\nowners: {technical: a@example.org, operational: b@example.org}\n\
         steps:\n  - id: say\n    action: notify\n    with: {message: hi}\n    rollback: none\n";
    dir.write_signed("playbooks/hello.yaml", hello, false);
    dir.write_bindings("bindings:\n  - {policy: p, outcome: o, playbook: hello}\n  - {policy: p, outcome: x, playbook: ghost}\n");
    let config = dir.write_config(&db, "node-a", "");
    let daemon = ChildDaemon::serve(&config);
    let endpoint = daemon.status_endpoint();

    // A binding whose playbook has no active version: flagged by health and a metric, while
    // the daemon stays ready for everything else.
    let health = request(&endpoint, "GET", "/v1/health").await.unwrap();
    assert_eq!(health.status, 200);
    let body = health.json().unwrap();
    assert_eq!(
        body["unresolved_bindings"][0]["playbook"], "ghost",
        "{body}"
    );
    assert!(
        body["warnings"][0].as_str().unwrap().contains("ghost"),
        "{body}"
    );
    let metrics = request(&endpoint, "GET", "/metrics").await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.contains("playbookd_bindings_without_active_playbook 1"),
        "{metrics}"
    );
    // Its own process, so only this daemon's appends count: the start, the registry's records.
    let append_count = sample(&metrics, "playbookd_audit_append_seconds_count");
    assert!(append_count >= 1.0, "append latencies recorded: {metrics}");
    assert_eq!(
        append_count,
        sample(&metrics, "playbookd_audit_appends_total"),
        "one latency per committed row: {metrics}"
    );

    // A clean reload (options after the verb) exits 0.
    let config_arg = config.to_str().unwrap();
    let (status, stdout, stderr) = run_cli(&["ctl", "reload", "--config", config_arg], &[]);
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");

    // hello edited without a version bump, the bindings' second signature lost.
    dir.write_signed(
        "playbooks/hello.yaml",
        &hello.replace("message: hi", "message: changed"),
        false,
    );
    std::fs::remove_file(dir.path("bindings.yaml.sig.2")).unwrap();
    let (status, stdout, stderr) = run_cli(&["ctl", "reload", "--config", config_arg], &[]);
    assert_eq!(status.code(), Some(65), "{stdout}{stderr}");
    assert_contains(&stdout, "REFUSED");
    assert_contains(&stdout, "hello.yaml (equivocation)");
    assert_contains(&stdout, "bindings.yaml (dual_control)");
    assert_contains(&stdout, "KEPT playbook hello@1");
    assert_contains(&stdout, "KEPT bindings");
    let (status, json, _) = run_cli(&["ctl", "reload", "--json", "--config", config_arg], &[]);
    assert_eq!(status.code(), Some(65));
    let reply: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(reply["refused"].as_array().unwrap().len(), 2, "{reply}");

    // The kept versions still answer decisions.
    let decision = crate::harness::decision("p", "o", serde_json::json!({}));
    let reply = crate::harness::send_json(&dir.path("run/decisions.sock"), &decision).await;
    assert_eq!(reply["status"], "accepted", "{reply}");
}

/// The value of the sample named `name` (no labels) in a Prometheus text page.
fn sample(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name}:\n{page}"))
        .parse()
        .unwrap()
}
