//! An in-process daemon over a real database and real sockets, with playbooks placed in its
#![allow(dead_code)] // shared by several test modules; not each uses every field
//! catalog directly (the signed registry has its own tests), and a decision client.

use std::path::PathBuf;
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
    pub db: TestDb,
    pub dir: DaemonDir,
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
        let db = TestDb::new().await;
        let dir = DaemonDir::new();
        let playbooks: Vec<String> = playbooks.iter().map(|p| (*p).to_owned()).collect();
        Running::boot(
            db,
            dir,
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
        let db = TestDb::new().await;
        let dir = DaemonDir::new();
        let (playbooks, bindings) = documents(&dir);
        Running::boot(db, dir, extra_config.to_owned(), playbooks, bindings).await
    }

    async fn boot(
        db: TestDb,
        dir: DaemonDir,
        extra: String,
        playbooks: Vec<String>,
        bindings: String,
    ) -> Running {
        let config_path = dir.write_config(&db, "node-a", &extra);
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
            stop,
            task,
            extra,
            playbooks,
            bindings,
            ..
        } = self;
        stop.cancel();
        task.await.unwrap().expect("clean stop");
        Running::boot(db, dir, extra, playbooks, bindings).await
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
