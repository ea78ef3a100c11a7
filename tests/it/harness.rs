//! An in-process daemon over a real database and real sockets, with playbooks placed in its
#![allow(dead_code)] // shared by several test modules; not each uses every field
//! catalog directly (the signed registry has its own tests), and a decision client.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use playbookd::config::Config;
use playbookd::daemon::{Daemon, DaemonError};
use playbookd::registry::playbook::parse_playbook;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use crate::helpers::{DaemonDir, TestDb};

pub struct Running {
    /// Shared by the daemons of one test when several nodes use one database.
    pub db: Arc<TestDb>,
    pub dir: DaemonDir,
    pub node: String,
    pub socket: PathBuf,
    pub executor: playbookd::executor::Executor,
    pub safe_halt: playbookd::safe_halt::SafeHalt,
    pub approvals: playbookd::approvals::Approvals,
    /// Where the status API (and the console) listens.
    pub status: playbookd::status::StatusAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), DaemonError>>,
    extra: String,
    playbooks: Vec<String>,
    bindings: String,
}

impl Running {
    /// Starts a daemon on a fresh database with `playbooks` (YAML texts) and `bindings`.
    pub async fn start(extra_config: &str, playbooks: &[&str], bindings: &str) -> Running {
        let db = Arc::new(TestDb::new().await);
        Running::start_on(db, "node-a", extra_config, playbooks, bindings).await
    }

    /// Starts a daemon with node id `node` on `db` (which other daemons of the test may share),
    /// in a directory of its own.
    pub async fn start_on(
        db: Arc<TestDb>,
        node: &str,
        extra_config: &str,
        playbooks: &[&str],
        bindings: &str,
    ) -> Running {
        let dir = DaemonDir::new();
        let playbooks: Vec<String> = playbooks.iter().map(|p| (*p).to_owned()).collect();
        Running::boot(
            db,
            dir,
            node.to_owned(),
            extra_config.to_owned(),
            playbooks,
            bindings.to_owned(),
        )
        .await
    }

    /// Like [`Running::start`], with the playbooks and bindings written by `documents` once the
    /// daemon's directory exists (for documents that name paths inside it).
    pub async fn start_with(
        extra_config: &str,
        documents: impl FnOnce(&DaemonDir) -> (Vec<String>, String),
    ) -> Running {
        let db = Arc::new(TestDb::new().await);
        let dir = DaemonDir::new();
        let (playbooks, bindings) = documents(&dir);
        Running::boot(
            db,
            dir,
            "node-a".to_owned(),
            extra_config.to_owned(),
            playbooks,
            bindings,
        )
        .await
    }

    async fn boot(
        db: Arc<TestDb>,
        dir: DaemonDir,
        node: String,
        extra: String,
        playbooks: Vec<String>,
        bindings: String,
    ) -> Running {
        let config_path = dir.write_config(&db, &node, &extra);
        for text in &playbooks {
            let playbook = parse_playbook(text.as_bytes()).expect("playbook parses");
            let name = format!("playbooks/{}-v{}.yaml", playbook.id, playbook.version);
            dir.write_signed(&name, text, true);
        }
        dir.write_signed("bindings.yaml", &bindings, true);
        let config = Config::load(&config_path).expect("config");
        let daemon = Daemon::build(config).await.expect("daemon builds");
        let socket = dir.path("run/decisions.sock");
        let status = daemon.status_addr().clone();
        let (executor, safe_halt, approvals) = (
            daemon.executor().clone(),
            daemon.safe_halt().clone(),
            daemon.approvals().clone(),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(daemon.run_until_stopped(stop.clone()));
        Running {
            db,
            dir,
            node,
            socket,
            executor,
            safe_halt,
            approvals,
            status,
            stop,
            task,
            extra,
            playbooks,
            bindings,
        }
    }

    /// Stops the daemon (as SIGTERM would) and starts a new one on the same database.
    pub async fn restart(self) -> Running {
        let Running {
            db,
            dir,
            node,
            stop,
            task,
            extra,
            playbooks,
            bindings,
            ..
        } = self;
        stop.cancel();
        task.await.unwrap().expect("clean stop");
        Running::boot(db, dir, node, extra, playbooks, bindings).await
    }

    /// Like [`Running::restart`], without the playbook files: the catalog is empty and a run
    /// resumes from the bytes stored in the database.
    pub async fn restart_without_playbooks(mut self) -> Running {
        for text in std::mem::take(&mut self.playbooks) {
            let playbook = parse_playbook(text.as_bytes()).expect("playbook parses");
            let name = format!("playbooks/{}-v{}.yaml", playbook.id, playbook.version);
            for suffix in ["", ".sig", ".sig.2"] {
                let _ = std::fs::remove_file(self.dir.path(&format!("{name}{suffix}")));
            }
        }
        self.restart().await
    }

    /// Sends one request line to control.sock (as this test's uid, root: an admin by the
    /// default roles) and returns the parsed reply.
    pub async fn control(&self, request: &Value) -> Value {
        let mut stream = UnixStream::connect(self.dir.path("run/control.sock"))
            .await
            .expect("connect control.sock");
        stream
            .write_all(format!("{request}\n").as_bytes())
            .await
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut reply))
            .await
            .expect("control reply in time")
            .unwrap();
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"))
    }

    /// The run's state as stored.
    pub async fn state(&self, execution_id: &str) -> String {
        let id: uuid::Uuid = execution_id.parse().unwrap();
        self.db
            .client()
            .await
            .query_one(
                "SELECT state FROM playbook_executions WHERE execution_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Waits until the run is in `want`, or panics naming the state it is in.
    pub async fn wait_state(&self, execution_id: &str, want: &str, limit: Duration) {
        let start = std::time::Instant::now();
        loop {
            let state = self.state(execution_id).await;
            if state == want {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "execution {execution_id} is `{state}`, not `{want}`, after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until an audit event of `event_type` exists for the run.
    pub async fn wait_event(&self, execution_id: &str, event_type: &str, limit: Duration) -> Value {
        let start = std::time::Instant::now();
        loop {
            if let Some((_, data)) = self
                .events(execution_id)
                .await
                .into_iter()
                .find(|(kind, _)| kind == event_type)
            {
                return data;
            }
            assert!(
                start.elapsed() < limit,
                "no `{event_type}` for {execution_id} after {limit:?}: {:?}",
                self.events(execution_id)
                    .await
                    .iter()
                    .map(|(kind, _)| kind.clone())
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().expect("clean stop");
    }

    /// Sends one decision line on a new connection and returns the parsed reply.
    pub async fn send(&self, line: &[u8]) -> Value {
        send_line(&self.socket, line).await
    }

    pub async fn send_decision(&self, decision: &Value) -> Value {
        self.send(decision.to_string().as_bytes()).await
    }

    /// Waits until the execution reaches a terminal state and returns it.
    pub async fn wait_terminal(&self, execution_id: &str, limit: Duration) -> String {
        let client = self.db.client().await;
        let id: uuid::Uuid = execution_id.parse().unwrap();
        let start = std::time::Instant::now();
        loop {
            let state: String = client
                .query_one(
                    "SELECT state FROM playbook_executions WHERE execution_id = $1",
                    &[&id],
                )
                .await
                .unwrap()
                .get(0);
            if [
                "completed",
                "rolled_back",
                "safe_halted",
                "cancelled",
                "timed_out",
                "rejected",
            ]
            .contains(&state.as_str())
            {
                return state;
            }
            assert!(
                start.elapsed() < limit,
                "execution still {state} after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The audit events of one execution, in chain order: (event_type, event_data).
    pub async fn events(&self, execution_id: &str) -> Vec<(String, Value)> {
        let client = self.db.client().await;
        client
            .query(
                "SELECT event_type, event_data FROM playbook_audit_log \
                 WHERE event_data->>'execution_id' = $1 ORDER BY seq",
                &[&execution_id],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }
}

/// Files for one test: where the playbooks' actions leave their evidence.
pub struct Evidence {
    pub dir: tempfile::TempDir,
}

impl Evidence {
    pub fn new() -> Evidence {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("pbd-halt-")
            .tempdir()
            .unwrap();
        // exec children run as `actions.exec.run_as` (nobody), never as the daemon: they must
        // be able to leave their evidence here (sticky, like /tmp).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        Evidence { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    /// An executable `/bin/sh` script (a test fixture; playbooks never get a shell).
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Replaces `FILES` in a playbook with this test's directory.
    pub fn playbook(&self, text: &str) -> String {
        text.replace("FILES", &self.dir.path().display().to_string())
    }
}

/// Sends one line on a new connection to decisions.sock at `socket` and returns the parsed reply.
pub async fn send_line(socket: &std::path::Path, line: &[u8]) -> Value {
    let mut stream = UnixStream::connect(socket)
        .await
        .expect("connect decisions.sock");
    stream.write_all(line).await.unwrap();
    stream.write_all(b"\n").await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut reply))
        .await
        .expect("reply in time")
        .unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"))
}

/// A fresh decision for (policy, outcome) with a random nonce, issued now.
pub fn decision(policy: &str, outcome: &str, subject: Value) -> Value {
    json!({
        "decision_id": format!("d-{}", uuid::Uuid::new_v4().simple()),
        "nonce": uuid::Uuid::new_v4().simple().to_string(),
        "issued_at": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap(),
        "policy": policy,
        "outcome": outcome,
        "org_id": "acme",
        "severity": "high",
        "subject": subject,
    })
}

/// A binding file with one (policy, outcome) → playbook line per entry.
pub fn bindings(entries: &[(&str, &str, &str)]) -> String {
    let mut text = String::from("bindings:\n");
    for (policy, outcome, playbook) in entries {
        text.push_str(&format!(
            "  - {{policy: {policy}, outcome: {outcome}, playbook: {playbook}}}\n"
        ));
    }
    text
}

pub const NOOP_3: &str = include_str!("../../playbooks/noop-3.yaml");

/// Its first step's undo fails three times (about 0.4 s after the decision): SAFE-HALT.
pub const UNDO_FAILS: &str = r#"
id: undo-fails
version: 1
name: The undo of the first step fails
owners: {technical: a@example.org, operational: b@example.org}
steps:
  - id: one
    action: exec
    with: {command: /bin/true}
    risk: low
    retry: {attempts: 1, backoff: 100ms}
    rollback: {action: exec, with: {command: /bin/false}}
  - {id: two, action: exec, with: {command: /bin/false}, risk: low, rollback: none}
"#;

/// Configuration allowing the commands the tests' playbooks use (`true`, `false`, `sleep`,
/// `touch`, `rm`) and `scripts`, with a one-second resume sweep; `executor` is added to
/// `[executor]`, `exec` to `[actions.exec]`.
pub fn exec_config(scripts: &[&std::path::Path], executor: &str, exec: &str) -> String {
    let mut commands = vec![
        "/bin/true".to_owned(),
        "/bin/false".to_owned(),
        "/bin/sleep".to_owned(),
        "/usr/bin/touch".to_owned(),
        "/bin/rm".to_owned(),
    ];
    commands.extend(scripts.iter().map(|p| p.display().to_string()));
    format!(
        "[executor]\nresume_interval_seconds = 1\n{executor}\n[actions.exec]\nallowed_commands = {}\n{exec}\n",
        serde_json::to_string(&commands).unwrap()
    )
}
