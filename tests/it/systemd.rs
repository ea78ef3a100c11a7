//! The daemon as a systemd service: the installer, the unit file, sd_notify and journald.
//!
//! sd_notify: each test binds its own `NOTIFY_SOCKET` (a Unix datagram socket in a temp dir) and
//! hands it to the real binary, as systemd would.
//!
//! journald: tracing-journald always sends to `/run/systemd/journal/socket` (no path override),
//! so the stand-in journal is a datagram socket in a temp dir, and the daemon runs in a private
//! mount namespace where that temp dir is bind-mounted over `/run`. This needs root (CAP_SYS_ADMIN).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::helpers::{
    ChildDaemon, DaemonDir, TestDb, assert_contains, assert_lacks, binary, configured,
};

// ---- installer and unit ---------------------------------------------------------------------

#[test]
fn installer_into_destdir_lays_out_files_with_their_modes() {
    let root = tempfile::tempdir().unwrap();
    let output = install_into(root.path(), &["--no-enable"]);
    let at = |path: &str| root.path().join(path.trim_start_matches('/'));

    for (path, mode) in [
        ("/usr/local/bin/playbookd", 0o755),
        ("/etc/systemd/system/playbookd.service", 0o644),
        ("/etc/playbookd", 0o750),
        ("/etc/playbookd/playbookd.toml", 0o640),
        ("/etc/playbookd/trusted-keys", 0o750),
        ("/var/lib/playbookd", 0o750),
        ("/var/lib/playbookd/playbooks", 0o750),
        ("/var/lib/playbookd-actuator", 0o700),
        ("/var/lib/playbookd-actuator/quarantine", 0o700),
        ("/etc/systemd/system/playbookd.socket", 0o644),
        ("/etc/systemd/system/playbookd-control.socket", 0o644),
        ("/etc/systemd/system/playbookd-status.socket", 0o644),
        ("/etc/systemd/system/playbookd-actuator.service", 0o644),
        ("/etc/systemd/system/playbookd-actuator.socket", 0o644),
        ("/etc/systemd/system/playbookd-exec.socket", 0o644),
        ("/etc/systemd/system/playbookd-exec@.service", 0o644),
        (
            "/etc/systemd/system/playbookd-actuator.service.d/file-roots.conf",
            0o644,
        ),
        ("/usr/share/playbookd/samples/README", 0o644),
    ] {
        let meta = std::fs::metadata(at(path)).unwrap_or_else(|e| panic!("{path}: {e}\n{output}"));
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            mode,
            "mode of {path} is {:o}",
            meta.permissions().mode() & 0o7777
        );
    }
    assert_eq!(
        std::fs::read(at("/usr/local/bin/playbookd")).unwrap(),
        std::fs::read(binary()).unwrap(),
        "installed binary differs from --binary"
    );
    assert_eq!(
        std::fs::read_to_string(at("/etc/systemd/system/playbookd.service")).unwrap(),
        std::fs::read_to_string(source("systemd/playbookd.service")).unwrap()
    );
    // Unsigned samples must never land where the daemon loads playbooks from.
    let active: Vec<_> = std::fs::read_dir(at("/var/lib/playbookd/playbooks"))
        .unwrap()
        .collect();
    assert!(
        active.is_empty(),
        "active playbook dir not empty: {active:?}"
    );

    // Host changes are printed, not made, under DESTDIR; the unit is left disabled.
    for printed in [
        "skipped (DESTDIR set): useradd --system --gid playbookd",
        "skipped (DESTDIR set): groupadd --system playbookd-approvers",
        "skipped (DESTDIR set): groupadd --system playbookd-policy",
        "skipped (DESTDIR set): groupadd --system playbookd-operators",
        "skipped (DESTDIR set): useradd --system --user-group --home-dir / --no-create-home --shell /usr/sbin/nologin --comment playbookd\\ actuator playbookd-actuator",
        "skipped (DESTDIR set): useradd --system --user-group --home-dir / --no-create-home --shell /usr/sbin/nologin --comment playbookd\\ exec playbookd-exec",
        // Two roles: the schema's owner, and the daemon's role that owns nothing.
        "CREATE ROLE playbookd_owner NOLOGIN;",
        "CREATE ROLE playbookd LOGIN;",
        "CREATE DATABASE playbookd OWNER playbookd_owner;",
        "skipped (DESTDIR set): runuser -u postgres -- env PLAYBOOKD_OWNER_DATABASE_URL=postgres://postgres@/playbookd\\?host=/run/postgresql /usr/local/bin/playbookd migrate --owner-role playbookd_owner --runtime-role playbookd",
        "skipped (DESTDIR set): systemctl daemon-reload",
    ] {
        assert!(output.contains(printed), "no `{printed}` in:\n{output}");
    }
    assert_lacks(&output, "systemctl enable");

    // The installed default configuration is one the daemon accepts as it is.
    playbookd::config::Config::load(&at("/etc/playbookd/playbookd.toml"))
        .unwrap_or_else(|e| panic!("installed config rejected: {e}"));
}

#[test]
fn installer_run_twice_keeps_an_edited_config() {
    let root = tempfile::tempdir().unwrap();
    install_into(root.path(), &["--no-enable"]);
    let config = root.path().join("etc/playbookd/playbookd.toml");
    std::fs::write(&config, "node_id = \"edited\"\n").unwrap();

    let output = install_into(root.path(), &[]);
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "node_id = \"edited\"\n"
    );
    assert_contains(
        &output,
        "keeping the existing /etc/playbookd/playbookd.toml",
    );
    assert_contains(
        &output,
        "skipped (DESTDIR set): systemctl enable playbookd.socket playbookd-control.socket \
             playbookd-status.socket playbookd-actuator.socket playbookd-exec.socket \
             playbookd-actuator.service playbookd.service",
    );
}

#[test]
fn installer_dry_run_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let output = install_into(root.path(), &["--dry-run"]);
    assert!(
        output.contains("+ install -m 0755"),
        "dry run printed no steps:\n{output}"
    );
    let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
    assert!(left.is_empty(), "dry run wrote {left:?}");
}

#[test]
fn uninstall_keeps_config_and_data_unless_purged() {
    let root = tempfile::tempdir().unwrap();
    install_into(root.path(), &["--no-enable"]);
    let at = |path: &str| root.path().join(path);

    let output = run_script("installer/uninstall.sh", root.path(), &[]);
    assert!(!at("usr/local/bin/playbookd").exists(), "{output}");
    for unit in [
        "playbookd.service",
        "playbookd.socket",
        "playbookd-actuator.service",
        "playbookd-exec@.service",
        "playbookd-actuator.service.d",
    ] {
        assert!(
            !at(&format!("etc/systemd/system/{unit}")).exists(),
            "{unit} left behind"
        );
    }
    assert!(!at("usr/share/playbookd").exists());
    assert!(at("etc/playbookd/playbookd.toml").exists(), "{output}");
    assert!(at("var/lib/playbookd-actuator/quarantine").exists());
    assert_contains(
        &output,
        "systemctl disable --now playbookd.socket playbookd-control.socket",
    );

    let output = run_script("installer/uninstall.sh", root.path(), &["--purge"]);
    assert!(!at("etc/playbookd").exists(), "{output}");
    assert!(!at("var/lib/playbookd").exists(), "{output}");
    assert!(!at("var/lib/playbookd-actuator").exists(), "{output}");
    assert_contains(&output, "userdel playbookd-actuator");
    assert_contains(&output, "DROP DATABASE playbookd;");
}

#[test]
fn installed_units_pass_systemd_analyze_verify() {
    let root = tempfile::tempdir().unwrap();
    install_into(root.path(), &["--no-enable"]);
    // verify insists that ExecStart= exists: point it at the DESTDIR copy, change nothing else.
    let installed = root.path().join("usr/local/bin/playbookd");
    let check = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(root.path().join("etc/systemd/system")).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_file() {
            continue;
        }
        let unit = std::fs::read_to_string(entry.path()).unwrap().replace(
            "ExecStart=/usr/local/bin/playbookd ",
            &format!("ExecStart={} ", installed.display()),
        );
        let path = check.path().join(entry.file_name());
        std::fs::write(&path, unit).unwrap();
        // A template is verified through an instance of it.
        let name = entry.file_name().to_str().unwrap().replace("@.", "@1.");
        paths.push(check.path().join(name));
    }
    assert!(paths.len() >= 8, "{paths:?}");

    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", check.path().display()))
        .output()
        .expect("systemd-analyze (package systemd) is needed for this test");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "verify failed:\n{stderr}");
    // verify exits 0 on unknown keys and similar mistakes; it only warns, on stderr.
    assert!(stderr.trim().is_empty(), "verify warned:\n{stderr}");
}

/// A unit file's lines, trimmed, without its comments.
fn settings(unit: &str) -> Vec<&str> {
    unit.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .collect()
}

#[test]
fn unit_does_not_restart_on_the_daemons_config_exit_code() {
    let unit = std::fs::read_to_string(source("systemd/playbookd.service")).unwrap();
    let settings = settings(&unit);
    for expected in [
        format!(
            "RestartPreventExitStatus={}",
            playbookd::config::EXIT_CONFIG
        ),
        "Restart=always".into(),
        "Type=notify".into(),
        "NotifyAccess=main".into(),
        "User=playbookd".into(),
        format!(
            "ExecStart=/usr/local/bin/playbookd serve --config {}",
            playbookd::config::DEFAULT_CONFIG_PATH
        ),
    ] {
        assert!(
            settings.contains(&expected.as_str()),
            "unit lacks `{expected}`"
        );
    }
}

#[test]
fn the_units_open_file_limit_covers_every_bounded_listener_at_its_default() {
    let unit = std::fs::read_to_string(source("systemd/playbookd.service")).unwrap();
    let limit: usize = unit
        .lines()
        .find_map(|line| line.trim().strip_prefix("LimitNOFILE="))
        .expect("the unit sets LimitNOFILE")
        .parse()
        .unwrap();
    let config =
        playbookd::config::Config::parse(Path::new("/etc/playbookd/playbookd.toml"), "", None)
            .unwrap();
    // Connections on each listener, refused ones drained for a moment, the database (the pool
    // and the audit writer's two), three pipes per running exec step, and a margin for files,
    // journald and the listeners.
    let needed = config.intake.max_connections.usize()
        + config.control.max_connections.usize()
        + playbookd::status::MAX_CONNECTIONS
        + 2 * 64
        + config.database.pool_size.usize()
        + 2
        + 3 * config.executor.max_concurrent_runs.usize()
        + 256;
    assert!(
        needed <= limit,
        "LimitNOFILE={limit} is below the {needed} descriptors the defaults allow"
    );
}

#[test]
fn daemon_unit_exposure_is_at_most_1_2_and_the_actuators_at_most_2() {
    for (unit, limit) in [
        ("playbookd.service", 1.2),
        ("playbookd-actuator.service", 2.0),
    ] {
        let score = exposure(unit);
        assert!(score <= limit, "{unit}: exposure {score} > {limit}");
    }
}

#[test]
fn daemon_unit_keeps_no_capability_and_no_netlink() {
    let unit = std::fs::read_to_string(source("systemd/playbookd.service")).unwrap();
    let settings = settings(&unit);
    for expected in [
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "ProtectProc=invisible",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ] {
        assert!(settings.contains(&expected), "unit lacks `{expected}`");
    }
    assert!(
        !unit.contains("AF_NETLINK\n"),
        "the daemon may not open netlink sockets"
    );
    // Every hardening setting is explained by a comment just above it.
    let hardening = unit
        .split("# --- Privilege")
        .nth(1)
        .and_then(|rest| rest.split("[Install]").next())
        .expect("a hardening section");
    let mut previous = "#";
    for line in hardening.lines().skip(1) {
        let bare = line.trim();
        if !bare.is_empty()
            && !bare.starts_with('#')
            && !bare.starts_with('[')
            && previous.is_empty()
        {
            panic!("`{bare}` has no comment above it");
        }
        previous = bare;
    }
}

/// `systemd-analyze security --offline=yes` of a shipped unit: its overall exposure, rated OK.
fn exposure(unit: &str) -> f64 {
    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(source(&format!("systemd/{unit}")))
        .output()
        .expect("systemd-analyze (package systemd) is needed for this test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|line| line.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    println!("systemd-analyze security --offline=yes: {}", line.trim());
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in `{line}`"));
    assert!(line.contains(" OK"), "not rated OK: {line}");
    score
}

// ---- sd_notify ------------------------------------------------------------------------------

#[tokio::test]
async fn ready_comes_after_startup_and_stopping_on_sigterm() {
    let (db, dir, config) = configured("node-notify", "").await;
    let notify = NotifySocket::bind(&dir);
    let mut daemon = ChildDaemon::start_with_env(
        &config,
        &dir.path("daemon.log"),
        &[("NOTIFY_SOCKET", notify.path_str())],
    );

    let ready = notify.wait_for(&mut daemon, "READY=1", Duration::from_secs(20));
    // Checked the moment READY arrives: whatever must be up before READY is up now.
    assert_startup_done_at_ready(&db, &dir).await;
    let status = field(&ready, "STATUS").unwrap_or_else(|| panic!("no STATUS with READY: {ready}"));
    assert!(status.starts_with("ready"), "{status}");
    // No watchdog was asked for, so none is sent.
    let early = notify.collect_for(Duration::from_millis(1200));
    assert!(
        early.iter().all(|m| !m.contains("WATCHDOG=1")),
        "watchdog pings without WATCHDOG_USEC: {early:?}"
    );

    daemon.signal(Signal::SIGTERM);
    notify.wait_for(&mut daemon, "STOPPING=1", Duration::from_secs(5));
    daemon.exits_cleanly_within(Duration::from_secs(10));
}

#[tokio::test]
async fn watchdog_pings_while_alive_and_stops_when_the_database_is_gone() {
    let (db, dir, config) = configured("node-watchdog", "").await;
    let notify = NotifySocket::bind(&dir);
    let mut daemon = ChildDaemon::start_with_env(
        &config,
        &dir.path("daemon.log"),
        &[
            ("NOTIFY_SOCKET", notify.path_str()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    notify.wait_for(&mut daemon, "READY=1", Duration::from_secs(20));

    // A 1 s watchdog: a ping every half second, about 6 in 3 s; at least 3 leaves room for a
    // loaded machine and still fails if the pings stop after the first.
    let window = Duration::from_secs(3);
    let pings = notify
        .collect_for(window)
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(
        pings >= 3,
        "{pings} WATCHDOG=1 in {window:?}:\n{}",
        daemon.log_text()
    );

    // Take the database away: the liveness check fails, so the pings must stop and systemd
    // would restart the daemon.
    let admin = crate::helpers::connect(&crate::helpers::admin_config()).await;
    admin
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", db.name))
        .await
        .unwrap();
    // One ping may already be on its way.
    notify.collect_for(Duration::from_millis(700));
    let after = notify.collect_for(Duration::from_secs(2));
    assert!(
        after.iter().all(|m| !m.contains("WATCHDOG=1")),
        "still pinging without a database: {after:?}\n{}",
        daemon.log_text()
    );
    assert_contains(&daemon.log_text(), "liveness check failed");
}

#[tokio::test]
async fn status_turns_to_safe_halt_when_a_rollback_fails() {
    let db = TestDb::new().await;
    let dir = DaemonDir::new();
    let config = dir.write_config(
        &db,
        "node-halt",
        "[actions.exec]\nallowed_commands = [\"/bin/true\", \"/bin/false\"]\n",
    );
    dir.write_signed(
        "playbooks/undo-fails.yaml",
        "id: undo-fails\nversion: 1\nname: The undo fails\n\
         owners: {technical: a@example.org, operational: b@example.org}\nsteps:\n\
         \x20 - {id: one, action: exec, with: {command: /bin/true}, risk: low,\n\
         \x20    retry: {attempts: 1, backoff: 100ms}, rollback: {action: exec, with: {command: /bin/false}}}\n\
         \x20 - {id: two, action: exec, with: {command: /bin/false}, risk: low, rollback: none}\n",
        true,
    );
    dir.write_bindings("bindings:\n  - {policy: p, outcome: o, playbook: undo-fails}\n");
    let notify = NotifySocket::bind(&dir);
    let mut daemon = ChildDaemon::start_with_env(
        &config,
        &dir.path("daemon.log"),
        &[("NOTIFY_SOCKET", notify.path_str())],
    );
    let ready = notify.wait_for(&mut daemon, "READY=1", Duration::from_secs(20));
    assert_eq!(
        field(&ready, "STATUS"),
        Some("ready: 1 playbooks, 1 bindings")
    );

    let decision = serde_json::json!({
        "decision_id": "d-halt", "nonce": uuid::Uuid::new_v4().simple().to_string(),
        "issued_at": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339).unwrap(),
        "policy": "p", "outcome": "o", "org_id": "acme", "severity": "high", "subject": {}
    });
    let mut stream =
        std::os::unix::net::UnixStream::connect(dir.path("run/decisions.sock")).unwrap();
    std::io::Write::write_all(&mut stream, format!("{decision}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut reply).unwrap();
    assert_contains(&reply, "accepted");

    let start = Instant::now();
    loop {
        let message = notify.recv();
        if let Some(status) = message.as_deref().and_then(|m| field(m, "STATUS"))
            && status.starts_with("SAFE-HALT since ")
        {
            assert_contains(status, "rollback of step `one`");
            // The status names the command that clears the halt.
            assert_contains(status, "playbookd ctl halt-resolve --reason");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no SAFE-HALT status:\n{}",
            daemon.log_text()
        );
    }
    daemon.signal(Signal::SIGTERM);
    assert!(
        daemon
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
}

/// Everything that must be true once READY=1 has been sent: the schema is migrated and the
/// audit chain holds `daemon.start`, and every endpoint the daemon serves accepts connections.
async fn assert_startup_done_at_ready(db: &TestDb, dir: &DaemonDir) {
    let client = db.client().await;
    let starts: i64 = client
        .query_one(
            "SELECT count(*) FROM playbook_audit_log WHERE event_type = 'daemon.start'",
            &[],
        )
        .await
        .expect("audit log readable at READY (migrations done)")
        .get(0);
    assert_eq!(starts, 1, "daemon.start not committed before READY");
    for socket in sockets_bound_before_ready(dir) {
        std::os::unix::net::UnixStream::connect(&socket).unwrap_or_else(|e| {
            panic!("READY=1 sent but {} does not accept: {e}", socket.display())
        });
    }
}

/// The Unix sockets (paths from `DaemonDir::write_config`) that `Daemon::build` binds before
/// READY. Add each one here as the daemon starts binding it, e.g. `dir.path("run/decisions.sock")`.
fn sockets_bound_before_ready(dir: &DaemonDir) -> Vec<PathBuf> {
    vec![dir.path("run/decisions.sock"), dir.path("run/control.sock")]
}

/// A stand-in for systemd's notification socket.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &DaemonDir) -> NotifySocket {
        let path = dir.path("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        NotifySocket { socket, path }
    }

    fn path_str(&self) -> &str {
        self.path.to_str().unwrap()
    }

    fn recv(&self) -> Option<String> {
        let mut buf = vec![0; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }

    /// The first message with a line equal to `line`, or a panic with the daemon's log.
    fn wait_for(&self, daemon: &mut ChildDaemon, line: &str, limit: Duration) -> String {
        let start = Instant::now();
        let mut seen = Vec::new();
        while start.elapsed() < limit {
            if let Some(message) = self.recv() {
                if message.lines().any(|l| l == line) {
                    return message;
                }
                seen.push(message);
            } else if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!(
                    "playbookd exited ({status}) before {line}; got {seen:?}\n{}",
                    daemon.log_text()
                );
            }
        }
        panic!(
            "no {line} after {limit:?}; got {seen:?}\n{}",
            daemon.log_text()
        );
    }

    fn collect_for(&self, window: Duration) -> Vec<String> {
        let start = Instant::now();
        let mut messages = Vec::new();
        while start.elapsed() < window {
            messages.extend(self.recv());
        }
        messages
    }
}

fn field<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
}

// ---- journald -------------------------------------------------------------------------------

#[tokio::test]
async fn journal_entries_carry_identifier_priority_and_run_fields() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: it bind-mounts a stand-in journal over /run in a private mount namespace"
    );
    let (_db, dir, config) = configured("node-journal", "").await;
    let fake_run = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(fake_run.path().join("systemd/journal")).unwrap();
    let journal = UnixDatagram::bind(fake_run.path().join("systemd/journal/socket")).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();

    let log = dir.path("daemon.log");
    let run_dir = fake_run.path().to_owned();
    let config_path = config.clone();
    let mut daemon = std::thread::spawn(move || {
        enter_private_run(&run_dir);
        // The production journald layer, fed an event inside a span, as the executor will log.
        let layer = playbookd::systemd::journald_layer().expect("stand-in journal answers");
        let subscriber =
            tracing_subscriber::layer::SubscriberExt::with(tracing_subscriber::registry(), layer);
        tracing::subscriber::with_default(subscriber, || {
            let run = tracing::info_span!(
                "run",
                execution_id = "0d2c6a52-5bd4-4c0e-9d1e-2f0b8e0f7a11",
                playbook_id = "contain-host"
            );
            let _entered = run.enter();
            tracing::warn!(step_id = "kill", org_id = "acme", "step failed");
        });
        // Spawned from this thread, so the daemon lives in the same private mount namespace.
        ChildDaemon::start(&config_path, &log)
    })
    .join()
    .expect("namespace thread");

    let start = Instant::now();
    let mut entries = Vec::new();
    let mut buf = vec![0; 65536];
    while start.elapsed() < Duration::from_secs(20) {
        match journal.recv(&mut buf) {
            Ok(0) => {} // tracing-journald probes the socket with an empty datagram
            Ok(n) => {
                let entry = parse_journal_entry(&buf[..n]);
                let ready = entry.get("MESSAGE").is_some_and(|m| m == "playbookd ready");
                entries.push(entry);
                if ready {
                    break;
                }
            }
            Err(_) => {
                if let Ok(Some(status)) = daemon.child.try_wait() {
                    panic!("playbookd exited ({status}):\n{}", daemon.log_text());
                }
            }
        }
    }

    let step = entries
        .iter()
        .find(|e| e.get("MESSAGE").is_some_and(|m| m == "step failed"))
        .unwrap_or_else(|| panic!("no `step failed` entry in {entries:#?}"));
    for (name, value) in [
        ("SYSLOG_IDENTIFIER", "playbookd"),
        ("PRIORITY", "4"),
        ("EXECUTION_ID", "0d2c6a52-5bd4-4c0e-9d1e-2f0b8e0f7a11"),
        ("PLAYBOOK_ID", "contain-host"),
        ("STEP_ID", "kill"),
        ("ORG_ID", "acme"),
    ] {
        assert_eq!(
            step.get(name).map(String::as_str),
            Some(value),
            "{name} in {step:#?}"
        );
    }

    let ready = entries
        .iter()
        .find(|e| e.get("MESSAGE").is_some_and(|m| m == "playbookd ready"))
        .unwrap_or_else(|| {
            panic!(
                "the daemon logged no `playbookd ready` to the journal: {entries:#?}\nstderr:\n{}",
                daemon.log_text()
            )
        });
    for (name, value) in [
        ("SYSLOG_IDENTIFIER", "playbookd"),
        ("PRIORITY", "6"),
        ("NODE_ID", "node-journal"),
    ] {
        assert_eq!(
            ready.get(name).map(String::as_str),
            Some(value),
            "{name} in {ready:#?}"
        );
    }
    assert!(
        !ready.contains_key("F_NODE_ID"),
        "fields must not carry a prefix: {ready:#?}"
    );
    // With a journal, nothing goes to stderr.
    assert_lacks(&daemon.log_text(), "playbookd ready");
}

/// Moves the calling thread (and the processes it spawns) into a private mount namespace where
/// `run_dir` is mounted over /run. Other threads of the test binary are unaffected.
fn enter_private_run(run_dir: &Path) {
    use nix::mount::{MsFlags, mount};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
    // Private first, or the bind mount would propagate back to the host's /run.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make / private");
    mount(
        Some(run_dir),
        "/run",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind the stand-in over /run");
}

/// Decodes one datagram of the journald native protocol: `NAME=value\n`, or `NAME\n` followed
/// by a little-endian u64 length, the value bytes and `\n`.
fn parse_journal_entry(mut data: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while !data.is_empty() {
        let end = data
            .iter()
            .position(|&b| b == b'\n')
            .expect("field ends with a newline");
        let line = &data[..end];
        data = &data[end + 1..];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
        } else {
            let len = usize::try_from(u64::from_le_bytes(data[..8].try_into().unwrap())).unwrap();
            let value = &data[8..8 + len];
            assert_eq!(data[8 + len], b'\n', "binary field not closed by a newline");
            fields.insert(
                String::from_utf8_lossy(line).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            );
            data = &data[8 + len + 1..];
        }
    }
    fields
}

// ---- helpers --------------------------------------------------------------------------------

fn source(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs the installer into `root` with the binary under test; returns stdout and stderr.
fn install_into(root: &Path, args: &[&str]) -> String {
    let binary = binary();
    let mut all = vec!["--binary", binary.to_str().unwrap()];
    all.extend_from_slice(args);
    run_script("installer/install.sh", root, &all)
}

fn run_script(script: &str, destdir: &Path, args: &[&str]) -> String {
    let output = Command::new("bash")
        .arg(source(script))
        .args(args)
        .env("DESTDIR", destdir)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{script} failed:\n{text}");
    text
}

// ---- socket activation ----------------------------------------------------------------------

/// Stands in for systemd's socket units: binds decisions.sock, control.sock and a status port
/// once, and starts the daemon (again and again) with them as fds 3, 4, 5 and `LISTEN_FDS`,
/// `LISTEN_PID`, `LISTEN_FDNAMES` set as systemd sets them. bash places the descriptors and sets
/// `LISTEN_PID=$$` before it execs the daemon (same pid), so no `pre_exec` is needed.
struct SocketLauncher {
    decisions: std::os::unix::net::UnixListener,
    control: std::os::unix::net::UnixListener,
    status: std::net::TcpListener,
}

impl SocketLauncher {
    fn bind(dir: &DaemonDir) -> SocketLauncher {
        SocketLauncher {
            decisions: std::os::unix::net::UnixListener::bind(dir.path("run/decisions.sock"))
                .unwrap(),
            control: std::os::unix::net::UnixListener::bind(dir.path("run/control.sock")).unwrap(),
            status: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        }
    }

    fn start(&self, config: &Path, log: &Path) -> ChildDaemon {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        use std::os::fd::{AsFd, AsRawFd};
        let fds = [
            self.decisions.as_fd(),
            self.control.as_fd(),
            self.status.as_fd(),
        ];
        let raw: Vec<i32> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        // Inherited only across this one spawn: close-on-exec is cleared, then set again.
        for fd in &fds {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
        }
        let script = format!(
            "exec 100<&{a} 101<&{b} 102<&{c} {a}<&- {b}<&- {c}<&-; \
             exec 3<&100 4<&101 5<&102 100<&- 101<&- 102<&-; \
             export LISTEN_PID=$$ LISTEN_FDS=3 LISTEN_FDNAMES=decisions:control:status; \
             exec \"$0\" serve --config \"$1\"",
            a = raw[0],
            b = raw[1],
            c = raw[2]
        );
        let log_file = std::fs::File::create(log).unwrap();
        let child = Command::new("/bin/bash")
            .arg("-c")
            .arg(script)
            .arg(binary())
            .arg(config)
            .env_remove("PLAYBOOKD_DATABASE_URL")
            .env_remove("NOTIFY_SOCKET")
            .env("PLAYBOOKD_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn bash");
        for fd in &fds {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
        }
        ChildDaemon {
            child,
            log: log.to_owned(),
        }
    }
}

fn inode(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

#[tokio::test]
async fn socket_activated_daemon_serves_the_passed_sockets_and_answers_a_decision_sent_during_a_restart()
 {
    let db = TestDb::new().await;
    let dir = DaemonDir::new();
    dir.write_signed(
        "playbooks/noop-3.yaml",
        include_str!("../../playbooks/noop-3.yaml"),
        true,
    );
    dir.write_bindings("bindings:\n  - {policy: bench.noop, outcome: run, playbook: noop-3}\n");
    let config = dir.write_config(&db, "node-activation", "[intake]\nallowed_uids = [0]\n");
    let launcher = SocketLauncher::bind(&dir);
    let decisions = dir.path("run/decisions.sock");
    let before = inode(&decisions);

    let mut daemon = launcher.start(&config, &dir.path("daemon-1.log"));
    daemon.wait_for_log("playbookd ready", Duration::from_secs(30));
    let status_port = launcher.status.local_addr().unwrap().port();
    // Logged by the status task, which may first run after `ready` is logged (the socket is
    // bound before either: it was passed).
    daemon.wait_for_log("status API listening on", Duration::from_secs(10));
    assert!(
        daemon
            .log_text()
            .contains(&format!("status API listening on 127.0.0.1:{status_port}")),
        "the daemon did not serve the passed status socket:\n{}",
        daemon.log_text()
    );
    let reply = send_line(&decisions, &noop_decision());
    assert_contains(&reply, "\"accepted\"");
    assert_eq!(
        inode(&decisions),
        before,
        "the daemon re-bound decisions.sock"
    );

    // A crash: the socket stays with the launcher, as with systemd. A decision sent now waits
    // in the backlog and is answered by the next process.
    daemon.signal(Signal::SIGKILL);
    assert!(daemon.wait_exit(Duration::from_secs(5)).is_some());
    let pending_path = decisions.clone();
    let pending = std::thread::spawn(move || send_line(&pending_path, &noop_decision()));
    std::thread::sleep(Duration::from_millis(300));
    let mut daemon = launcher.start(&config, &dir.path("daemon-2.log"));
    daemon.wait_for_log("playbookd ready", Duration::from_secs(30));
    let reply = pending.join().unwrap();
    assert!(
        reply.contains("\"accepted\""),
        "decision sent during the restart: {reply}\n{}",
        daemon.log_text()
    );

    // A clean stop leaves the sockets to their owner.
    daemon.signal(Signal::SIGTERM);
    daemon.exits_cleanly_within(Duration::from_secs(15));
    assert_eq!(
        inode(&decisions),
        before,
        "the daemon removed or replaced decisions.sock"
    );
}

#[tokio::test]
async fn a_passed_socket_at_another_path_than_configured_is_exit_78_naming_both() {
    let (_db, dir, config) = configured("node-mismatch", "").await;
    // The launcher binds run/decisions.sock; the configuration names another path.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("run/decisions.sock", "run/elsewhere.sock");
    std::fs::write(&config, text).unwrap();
    let launcher = SocketLauncher::bind(&dir);
    let mut daemon = launcher.start(&config, &dir.path("daemon.log"));
    let status = daemon.wait_exit(Duration::from_secs(30)).expect("exit");
    assert_eq!(status.code(), Some(78), "{}", daemon.log_text());
    let log = daemon.log_text();
    assert_contains(&log, "run/decisions.sock");
    assert_contains(&log, "run/elsewhere.sock");
}

#[tokio::test]
async fn socket_units_that_disagree_with_themselves_are_exit_78_saying_socket_activation() {
    let (_db, _dir, config) = configured("node-fdnames", "").await;
    // Two names for one descriptor: systemd's own variables contradict each other.
    let output = Command::new("/bin/bash")
        .arg("-c")
        .arg(
            "export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=decisions:control; \
             exec \"$0\" serve --config \"$1\"",
        )
        .arg(binary())
        .arg(&config)
        .env_remove("PLAYBOOKD_DATABASE_URL")
        .output()
        .expect("run the daemon");
    let (status, text) = (output.status, String::from_utf8_lossy(&output.stderr));
    assert_eq!(status.code(), Some(78), "{text}");
    assert_contains(
        &text,
        "playbookd: socket activation: LISTEN_FDNAMES names 2 descriptors but LISTEN_FDS says 1",
    );
}

fn noop_decision() -> String {
    serde_json::json!({
        "decision_id": format!("d-{}", uuid::Uuid::new_v4().simple()),
        "nonce": uuid::Uuid::new_v4().simple().to_string(),
        "issued_at": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339).unwrap(),
        "policy": "bench.noop", "outcome": "run", "org_id": "acme", "severity": "low", "subject": {}
    })
    .to_string()
}

/// Connects (waiting in the backlog if nobody accepts yet), sends one line, reads one line.
fn send_line(socket: &Path, line: &str) -> String {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut reply)
        .unwrap();
    reply
}

#[tokio::test]
async fn a_socket_group_the_daemon_cannot_use_is_exit_78_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::new().await;
    let dir = DaemonDir::new();
    // The daemon runs as nobody, who is not in group `adm`: it cannot give decisions.sock to it.
    let config = dir.write_config(&db, "node-group", "[intake]\nsocket_group = \"adm\"\n");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    for path in ["", "run", "playbooks", "trusted-keys"] {
        std::fs::set_permissions(dir.path(path), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for path in ["", "run"] {
        nix::unistd::chown(&dir.path(path), Some(nobody.uid), None).unwrap();
    }
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = dir.path("daemon.log");
    let mut child = crate::actions_support::as_nobody_with_nothing(&binary())
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("PLAYBOOKD_DATABASE_URL")
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(78), "{text}");
    assert_contains(&text, "group `adm`");
    assert_contains(&text, "usermod -aG adm");
}
