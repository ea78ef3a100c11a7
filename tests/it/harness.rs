//! The one test daemon: [`TestDaemon`], in-process over a real database and real sockets, with
//! playbooks placed in its catalog directly (the signed registry has its own tests), and the one
//! NDJSON client ([`send_line`]) for decisions.sock and control.sock. A test that needs the real
//! binary as a child process uses `helpers::ChildDaemon` with the same `DaemonDir`.
#![allow(dead_code)] // shared by several test modules; not each uses every field

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use playbookd::config::Config;
use playbookd::daemon::{Daemon, DaemonError};
use playbookd::registry::playbook::parse_playbook;
use playbookd::store::model::RunState;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use crate::helpers::{DaemonDir, TestDb};

/// A daemon running in this process (what `playbookd serve` builds), connected to its database
/// as the runtime role the migrations grant (`TestDb::url`), never as the owner or a superuser.
pub struct TestDaemon {
    /// Shared by the daemons of one test when several nodes use one database.
    pub db: Arc<TestDb>,
    pub dir: DaemonDir,
    pub node: String,
    /// decisions.sock.
    pub socket: PathBuf,
    pub executor: playbookd::executor::Executor,
    pub safe_halt: playbookd::safe_halt::SafeHalt,
    pub approvals: playbookd::approvals::Approvals,
    /// Where the status API (and the console) listens.
    pub status: playbookd::status::StatusAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), DaemonError>>,
    setup: Setup,
}

/// What a daemon is started from, kept for [`TestDaemon::restart`].
#[derive(Clone)]
struct Setup {
    node: String,
    config: String,
    playbooks: Vec<String>,
    bindings: String,
}

type Documents = Box<dyn FnOnce(&DaemonDir) -> (Vec<String>, String) + Send>;

/// What differs between the tests' daemons; everything else is [`DaemonDir::write_config`]'s.
pub struct TestDaemonBuilder {
    db: Option<Arc<TestDb>>,
    setup: Setup,
    documents: Option<Documents>,
    open_to_other_uids: bool,
}

impl TestDaemonBuilder {
    /// A fragment appended to the configuration (tables such as `[executor]`, `[roles]`, or
    /// `allowed_uids` under `[intake]` to replace the default allowlist of this test's uid).
    pub fn config(mut self, fragment: &str) -> Self {
        fragment.clone_into(&mut self.setup.config);
        self
    }

    /// Playbooks (YAML texts), each signed by both authors into `playbooks/ID-vVERSION.yaml`.
    pub fn playbooks(mut self, texts: &[&str]) -> Self {
        self.setup.playbooks = texts.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    /// The bindings file (signed by both authors); `bindings: []` unless set.
    pub fn bindings(mut self, text: &str) -> Self {
        text.clone_into(&mut self.setup.bindings);
        self
    }

    /// The node id (`node-a` unless set).
    pub fn node(mut self, node: &str) -> Self {
        node.clone_into(&mut self.setup.node);
        self
    }

    /// Runs on `db` (which other daemons of the test, or SQL run before the start, share)
    /// instead of a fresh database.
    pub fn on(mut self, db: Arc<TestDb>) -> Self {
        self.db = Some(db);
        self
    }

    /// Playbooks and bindings written by `documents` once the daemon's directory exists (for
    /// documents that name paths inside it); they replace [`Self::playbooks`] and
    /// [`Self::bindings`].
    pub fn documents(
        mut self,
        documents: impl FnOnce(&DaemonDir) -> (Vec<String>, String) + Send + 'static,
    ) -> Self {
        self.documents = Some(Box::new(documents));
        self
    }

    /// Makes the sockets' directories reachable by other uids (tempdirs are 0700), for clients
    /// such as `playbookd ctl` run under the uids a test gives roles to.
    pub fn open_to_other_uids(mut self) -> Self {
        self.open_to_other_uids = true;
        self
    }

    /// Starts one daemon per node id in `nodes`, in that order, all on this builder's database
    /// (a fresh one unless [`Self::on`] set it).
    pub async fn start_nodes<const N: usize>(self, nodes: [&str; N]) -> [TestDaemon; N] {
        assert!(
            self.documents.is_none(),
            "documents are written once, for one daemon"
        );
        let db = match self.db {
            Some(db) => db,
            None => Arc::new(TestDb::new().await),
        };
        let mut started = Vec::with_capacity(N);
        for node in nodes {
            let builder = TestDaemonBuilder {
                db: Some(db.clone()),
                setup: self.setup.clone(),
                documents: None,
                open_to_other_uids: self.open_to_other_uids,
            };
            started.push(builder.node(node).start().await);
        }
        started
            .try_into()
            .unwrap_or_else(|_| unreachable!("one daemon per node"))
    }

    pub async fn start(self) -> TestDaemon {
        let db = match self.db {
            Some(db) => db,
            None => Arc::new(TestDb::new().await),
        };
        let dir = DaemonDir::new();
        if self.open_to_other_uids {
            dir.open_to_other_uids();
        }
        let mut setup = self.setup;
        if let Some(documents) = self.documents {
            (setup.playbooks, setup.bindings) = documents(&dir);
        }
        TestDaemon::boot(db, dir, setup).await
    }
}

impl TestDaemon {
    /// A daemon on a fresh database, node `node-a`, no playbooks and no bindings until the
    /// builder says otherwise.
    pub fn builder() -> TestDaemonBuilder {
        TestDaemonBuilder {
            db: None,
            setup: Setup {
                node: "node-a".to_owned(),
                config: String::new(),
                playbooks: Vec::new(),
                bindings: "bindings: []\n".to_owned(),
            },
            documents: None,
            open_to_other_uids: false,
        }
    }

    /// The common case: a fresh database with `config`, `playbooks` (YAML texts) and `bindings`.
    pub async fn start(config: &str, playbooks: &[&str], bindings: &str) -> TestDaemon {
        TestDaemon::builder()
            .config(config)
            .playbooks(playbooks)
            .bindings(bindings)
            .start()
            .await
    }

    /// A fresh database with `config` and one playbook, bound to (policy `p`, outcome `o`).
    pub async fn bound(config: &str, playbook: &str) -> TestDaemon {
        let id = parse_playbook(playbook.as_bytes())
            .expect("playbook parses")
            .id;
        TestDaemon::start(config, &[playbook], &bindings(&[("p", "o", &id)])).await
    }

    /// Sends a fresh decision for (`p`, `o`), which must be accepted; returns the execution id.
    pub async fn decide_p_o(&self) -> String {
        accepted_id(&self.send_decision(&decision("p", "o", json!({}))).await)
    }

    /// Like [`Self::decide_p_o`], then waits for the run to end, in `want`.
    pub async fn decide_p_o_ending(&self, want: &str, limit: Duration) -> String {
        let id = self.decide_p_o().await;
        assert_eq!(self.wait_terminal(&id, limit).await, want, "run {id}");
        id
    }

    async fn boot(db: Arc<TestDb>, dir: DaemonDir, setup: Setup) -> TestDaemon {
        let config_path = dir.write_config(&db, &setup.node, &setup.config);
        for text in &setup.playbooks {
            dir.write_signed(&playbook_file(text), text, true);
        }
        dir.write_bindings(&setup.bindings);
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
        TestDaemon {
            db,
            dir,
            node: setup.node.clone(),
            socket,
            executor,
            safe_halt,
            approvals,
            status,
            stop,
            task,
            setup,
        }
    }

    /// Stops the daemon (as SIGTERM would) and starts a new one on the same database.
    pub async fn restart(self) -> TestDaemon {
        let TestDaemon {
            db,
            dir,
            stop,
            task,
            setup,
            ..
        } = self;
        stop.cancel();
        task.await.unwrap().expect("clean stop");
        TestDaemon::boot(db, dir, setup).await
    }

    /// Like [`TestDaemon::restart`], without the playbook files: the catalog is empty and a run
    /// resumes from the bytes stored in the database.
    pub async fn restart_without_playbooks(mut self) -> TestDaemon {
        for text in std::mem::take(&mut self.setup.playbooks) {
            let name = playbook_file(&text);
            for suffix in ["", ".sig", ".sig.2"] {
                let _ = std::fs::remove_file(self.dir.path(&format!("{name}{suffix}")));
            }
        }
        self.restart().await
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().expect("clean stop");
    }

    /// control.sock.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.path("run/control.sock")
    }

    /// Sends one request to control.sock (as this test's uid, root: an admin by the default
    /// roles) and returns the parsed reply.
    pub async fn control(&self, request: &Value) -> Value {
        send_json(&self.control_socket(), request).await
    }

    /// Sends one decision line on a new connection and returns the parsed reply.
    pub async fn send(&self, line: &[u8]) -> Value {
        send_line(&self.socket, line).await
    }

    pub async fn send_decision(&self, decision: &Value) -> Value {
        send_json(&self.socket, decision).await
    }

    /// Sends `decision`, which must be accepted, and returns the execution id.
    pub async fn accepted(&self, decision: &Value) -> uuid::Uuid {
        accepted_id(&self.send_decision(decision).await)
            .parse()
            .unwrap()
    }

    /// The run's state as stored.
    pub async fn state(&self, execution_id: impl std::fmt::Display) -> String {
        run_state(&self.db.client().await, execution_id).await
    }

    /// Waits until the run is in `want`, or panics naming the state it is in.
    pub async fn wait_state(
        &self,
        execution_id: impl std::fmt::Display,
        want: &str,
        limit: Duration,
    ) {
        wait_run_state(&self.db.client().await, execution_id, want, limit).await;
    }

    /// Waits until the execution reaches a terminal state and returns it.
    pub async fn wait_terminal(
        &self,
        execution_id: impl std::fmt::Display,
        limit: Duration,
    ) -> String {
        wait_run_terminal(&self.db.client().await, execution_id, limit).await
    }

    /// How many `event_type` events the run has.
    pub async fn count_events(
        &self,
        execution_id: impl std::fmt::Display,
        event_type: &str,
    ) -> usize {
        self.events(execution_id)
            .await
            .iter()
            .filter(|(kind, _)| kind == event_type)
            .count()
    }

    /// Waits until an audit event of `event_type` exists for the run.
    pub async fn wait_event(
        &self,
        execution_id: impl std::fmt::Display,
        event_type: &str,
        limit: Duration,
    ) -> Value {
        let start = std::time::Instant::now();
        loop {
            let events = self.events(&execution_id).await;
            if let Some((_, data)) = events.iter().find(|(kind, _)| kind == event_type) {
                return data.clone();
            }
            assert!(
                start.elapsed() < limit,
                "no `{event_type}` for {execution_id} after {limit:?}: {:?}",
                events.iter().map(|(kind, _)| kind).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The audit events of one execution, in chain order: (event_type, event_data).
    pub async fn events(&self, execution_id: impl std::fmt::Display) -> Vec<(String, Value)> {
        self.query_events(
            "WHERE event_data->>'execution_id' = $1 ORDER BY seq",
            &[&execution_id.to_string()],
        )
        .await
    }

    /// Every audit event in the database, by node then in chain order.
    pub async fn all_events(&self) -> Vec<(String, Value)> {
        self.query_events("ORDER BY node_id, seq", &[]).await
    }

    async fn query_events(
        &self,
        filter_and_order: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Vec<(String, Value)> {
        self.db
            .client()
            .await
            .query(
                &format!(
                    "SELECT event_type, event_data FROM playbook_audit_log {filter_and_order}"
                ),
                params,
            )
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }
}

/// The run's state as stored (for tests whose daemon is a child process, with a client of
/// their own; [`TestDaemon::state`] otherwise).
pub async fn run_state(
    client: &tokio_postgres::Client,
    execution_id: impl std::fmt::Display,
) -> String {
    let id: uuid::Uuid = execution_id.to_string().parse().unwrap();
    client
        .query_one(
            "SELECT state FROM playbook_executions WHERE execution_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until the run is in `want`, or panics naming the state it is in.
pub async fn wait_run_state(
    client: &tokio_postgres::Client,
    execution_id: impl std::fmt::Display,
    want: &str,
    limit: Duration,
) {
    let start = std::time::Instant::now();
    loop {
        let state = run_state(client, &execution_id).await;
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

/// Waits until the execution reaches a terminal state and returns it.
pub async fn wait_run_terminal(
    client: &tokio_postgres::Client,
    execution_id: impl std::fmt::Display,
    limit: Duration,
) -> String {
    let start = std::time::Instant::now();
    loop {
        let state = run_state(client, &execution_id).await;
        // The daemon's own rule, on the stored spelling (an unknown state fails the test).
        let decoded = RunState::decode(&state).unwrap_or_else(|e| panic!("{e}"));
        if decoded.is_terminal() {
            return state;
        }
        assert!(
            start.elapsed() < limit,
            "execution still {state} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The execution id of a reply that must be `accepted`.
pub fn accepted_id(reply: &Value) -> String {
    assert_eq!(reply["status"], "accepted", "{reply}");
    reply["execution_id"].as_str().unwrap().to_owned()
}

/// Where a playbook's text is written: `playbooks/ID-vVERSION.yaml`.
fn playbook_file(text: &str) -> String {
    let playbook = parse_playbook(text.as_bytes()).expect("playbook parses");
    format!("playbooks/{}-v{}.yaml", playbook.id, playbook.version)
}

/// Files for one test: where the playbooks' actions leave their evidence.
pub struct Evidence {
    pub dir: tempfile::TempDir,
}

impl Evidence {
    pub fn new() -> Evidence {
        // exec children run as `actions.exec.run_as` (nobody), never as the daemon: they must
        // be able to leave their evidence here (sticky, like /tmp).
        let dir = crate::helpers::tempdir_with_mode("pbd-halt-", 0o1777);
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

    /// A daemon running `playbook` bound to (p, o), with `SCRIPT` in it replaced by the path of
    /// the executable script `name` (`body`), which is allowlisted, and `FILES` by this
    /// directory.
    pub async fn daemon_with_script(&self, name: &str, body: &str, playbook: &str) -> TestDaemon {
        let script = self.script(name, body);
        let playbook = playbook.replace("SCRIPT", &script.display().to_string());
        TestDaemon::bound(&exec_config(&[&script], "", ""), &self.playbook(&playbook)).await
    }

    /// Replaces `FILES` in a playbook with this test's directory.
    pub fn playbook(&self, text: &str) -> String {
        text.replace("FILES", &self.dir.path().display().to_string())
    }
}

/// Sends one line on a new connection to the socket at `socket` (decisions.sock or
/// control.sock: the same NDJSON framing) and returns the parsed reply.
pub async fn send_line(socket: &std::path::Path, line: &[u8]) -> Value {
    let mut stream = UnixStream::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    let reply = exchange(&mut stream, line)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    parse_reply(&reply)
}

/// [`send_line`] of `message`'s JSON text: a decision or a control request.
pub async fn send_json(socket: &std::path::Path, message: &Value) -> Value {
    send_line(socket, message.to_string().as_bytes()).await
}

/// Like [`send_line`], for a daemon that may be gone (killed by the test): `None` when the
/// connection breaks before a whole reply; a reply that is not JSON still fails the test.
pub async fn try_send_line(socket: &std::path::Path, line: &[u8]) -> Option<Value> {
    let mut stream = UnixStream::connect(socket).await.ok()?;
    let reply = exchange(&mut stream, line).await.ok()?;
    (!reply.is_empty()).then(|| parse_reply(&reply))
}

/// Sends unbound decisions to `socket` until `daemon`'s log shows `needle`, or panics with the
/// log after `limit`: each decision needs an append (it is refused), so the audit writer
/// reconnects for it and checks the chain. Replies do not matter (nor their absence: the
/// daemon may be reconnecting).
pub async fn poke_until_logged(
    daemon: &crate::helpers::ChildDaemon,
    socket: &std::path::Path,
    needle: &str,
    limit: Duration,
) {
    let start = std::time::Instant::now();
    while !daemon.log_text().contains(needle) {
        assert!(
            start.elapsed() < limit,
            "no `{needle}`:\n{}",
            daemon.log_text()
        );
        let _ = try_send_line(
            socket,
            decision("unbound", "x", json!({})).to_string().as_bytes(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One line out, one line back (within 15 s: a reply may wait for a database failover).
async fn exchange(stream: &mut UnixStream, line: &[u8]) -> Result<String, String> {
    stream.write_all(line).await.map_err(|e| e.to_string())?;
    stream.write_all(b"\n").await.map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(15), reader.read_line(&mut reply))
        .await
        .map_err(|_| "no reply in time".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(reply)
}

fn parse_reply(reply: &str) -> Value {
    serde_json::from_str(reply).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"))
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

/// One high-risk step behind a gate.
pub const GATED_NOOP: &str = r#"
id: gated-noop
version: 1
name: One high-risk step behind a gate
owners: {technical: a@example.org, operational: b@example.org}
approval: {expires: 5m}
steps:
  - {id: act, action: noop, risk: high, rollback: none}
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
