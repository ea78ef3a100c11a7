//! control.sock through the real socket: the real `playbookd ctl` binary, run under other uids
//! (the tests run as root), against the daemon in-process or as a child process.
//!
//! Uids in these tests: 0 and 2000 admin, 2001 and 2002 approvers, 2003 operator, 2004 only a
//! viewer (through the `users` group every client runs with), 2005 an approver limited to org
//! `globex`, 2006 in no group that may open the socket, 2007 an operator only while it holds
//! the supplementary group `staff`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use uuid::Uuid;

use playbookd::registry::playbook::parse_playbook;

use crate::harness::{
    TestDaemon, TestDaemonBuilder, bindings, decision, run_state, send_json, send_line,
    wait_run_state,
};
use crate::helpers::{
    ChildDaemon, DaemonDir, TestDb, assert_contains, binary, query_column, query_pairs, query_value,
};

const NODE: &str = "node-ctl";
/// `users`: the group owning control.sock in these tests, and every client's primary group.
const SOCKET_GID: u32 = 100;
const ADMIN: u32 = 2000;
const APPROVER_A: u32 = 2001;
const APPROVER_B: u32 = 2002;
const OPERATOR: u32 = 2003;
const VIEWER: u32 = 2004;
const GLOBEX_APPROVER: u32 = 2005;

const CONTROL_CONFIG: &str = r#"
[control]
socket_group = "users"
idle_timeout_seconds = 5
[roles]
admin = { uids = [0, 2000] }
approver = { uids = [2001, 2002, 2005] }
operator = { uids = [2003], groups = ["staff"] }
viewer = { groups = ["users"] }
[[roles.orgs]]
uids = [2005]
orgs = ["globex"]
"#;

/// Two steps: an undoable one, then a gated one (`RISK`) that cannot be undone.
fn playbook_yaml(risk: &str) -> String {
    format!(
        r#"id: ctl-test
version: 1
name: Control socket test
owners: {{technical: sec-eng@example.org, operational: soc@example.org}}
approval: {{expires: 1m}}
steps:
  - id: prepare
    action: noop
    rollback: {{action: noop}}
  - id: contain
    action: noop
    risk: {risk}
    rollback: none
"#
    )
}

// ---- fixtures ----

/// A daemon with `ctl-test` (its gated step at `risk`) bound to (test.ctl, run), the roles
/// above, and sockets the client uids can reach.
fn ctl_daemon(risk: &str) -> TestDaemonBuilder {
    TestDaemon::builder()
        .node(NODE)
        .config(CONTROL_CONFIG)
        .playbooks(&[&playbook_yaml(risk)])
        .bindings(&bindings(&[("test.ctl", "run", "ctl-test")]))
        .open_to_other_uids()
}

/// `playbookd ctl` against a test daemon's control.sock.
trait CtlClient {
    async fn ctl(&self, uid: u32, args: &[&str]) -> Ctl;
}

impl CtlClient for TestDaemon {
    async fn ctl(&self, uid: u32, args: &[&str]) -> Ctl {
        ctl(&self.control_socket(), uid, args).await
    }
}

/// A daemon whose `ctl-test` run (its gated step at `risk`) awaits approval: (daemon, a
/// client, the execution id, the same as text).
async fn awaiting_gate(risk: &str) -> (TestDaemon, tokio_postgres::Client, Uuid, String) {
    let daemon = ctl_daemon(risk).start().await;
    let client = daemon.db.client().await;
    let id = daemon.accepted(&ctl_decision()).await;
    wait_run_state(&client, id, "awaiting_approval", Duration::from_secs(20)).await;
    let id_text = id.to_string();
    (daemon, client, id, id_text)
}

/// A decision for `ctl-test`.
fn ctl_decision() -> Value {
    decision("test.ctl", "run", json!({}))
}

/// Stores the version's bytes and both authors' signatures as the registry would, and returns
/// their sha256.
async fn store_version(client: &tokio_postgres::Client, dir: &DaemonDir, bytes: &[u8]) -> [u8; 32] {
    let playbook = parse_playbook(bytes).unwrap();
    let sha256: [u8; 32] = Sha256::digest(bytes).into();
    let signers: Vec<_> = crate::helpers::AUTHORS
        .iter()
        .map(|a| dir.signer(a))
        .collect();
    let key_ids: Vec<String> = signers
        .iter()
        .map(|s| s.key_id().as_str().to_owned())
        .collect();
    client
        .execute(
            "INSERT INTO playbook_versions (playbook_id, version, sha256, signer_key_ids, content, first_seen) \
             VALUES ($1, $2, $3, $4, $5, now())",
            &[&playbook.id, &i64::from(playbook.version), &sha256.as_slice(), &key_ids, &bytes],
        )
        .await
        .unwrap();
    for signer in &signers {
        client
            .execute(
                "INSERT INTO playbook_version_signatures (playbook_id, version, key_id, signature, recorded_at) \
                 VALUES ($1, $2, $3, $4, now())",
                &[&playbook.id, &i64::from(playbook.version), &signer.key_id().as_str(), &signer.sign(bytes)],
            )
            .await
            .unwrap();
    }
    sha256
}

/// What `playbookd ctl --json …` printed and how it exited.
#[derive(Debug)]
struct Ctl {
    code: Option<i32>,
    reply: Value,
    stderr: String,
}

impl Ctl {
    fn refusal(&self) -> &str {
        assert_eq!(self.code, Some(77), "expected a refusal: {self:?}");
        assert_eq!(self.reply["status"], "refused", "{self:?}");
        self.reply["reason"].as_str().unwrap()
    }

    fn ok(&self) -> &Value {
        assert_eq!(self.code, Some(0), "expected success: {self:?}");
        assert_eq!(self.reply["status"], "ok", "{self:?}");
        &self.reply
    }
}

/// Runs the real `playbookd ctl --json --socket SOCKET ARGS…` as `uid` (primary group `users`).
async fn ctl(socket: &Path, uid: u32, args: &[&str]) -> Ctl {
    ctl_as(socket, uid, SOCKET_GID, args).await
}

async fn ctl_as(socket: &Path, uid: u32, gid: u32, args: &[&str]) -> Ctl {
    let output = tokio::process::Command::new(binary())
        .arg("ctl")
        .arg("--json")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .uid(uid)
        .gid(gid)
        .env_remove("PLAYBOOKD_DATABASE_URL")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ctl {
        code: output.status.code(),
        reply: serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `playbookd ctl --socket SOCKET ARGS…` (human output) as uid 2007, group `users`, with
/// `staff` as a supplementary group (set by util-linux `setpriv`, since std cannot).
async fn ctl_with_staff_group(socket: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new("setpriv")
        .args(["--reuid=2007", "--regid=100", "--groups=50", "--"])
        .arg(binary())
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("PLAYBOOKD_DATABASE_URL")
        .output()
        .await
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// PostgreSQL ends a killed client's session (and frees its audit-chain lock) only once it
/// notices the closed connection; a daemon started before that refuses to start (exit 78).
async fn wait_for_chain_lock_release(client: &tokio_postgres::Client) {
    let start = Instant::now();
    loop {
        let held: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                 WHERE l.locktype = 'advisory' AND d.datname = current_database())",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if !held {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the killed daemon's chain lock is still held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_verb_is_checked_against_the_peers_role_and_org() {
    let (daemon, client, id, id_text) = awaiting_gate("critical").await;
    let approve = [
        "approve",
        id_text.as_str(),
        "contain",
        "--reason",
        "looks right",
    ];

    // A viewer sees the context of what waits...
    let pending = daemon.ctl(VIEWER, &["pending"]).await;
    let gates = pending.ok()["pending"].as_array().unwrap();
    assert_eq!(gates.len(), 1, "{pending:?}");
    let gate = &gates[0];
    assert_eq!(gate["execution_id"], id_text);
    assert_eq!(gate["org_id"], "acme");
    assert_eq!(gate["playbook"], "ctl-test@1");
    assert_eq!(gate["step_id"], "contain");
    assert_eq!(gate["action"], "noop");
    assert_eq!(gate["risk"], "critical");
    assert_eq!(gate["undoable"], false);
    assert_eq!(gate["required"], 2);

    // ...but may not act on it; nor may an operator approve, nor an approver cancel.
    let reason = daemon.ctl(VIEWER, &approve).await.refusal().to_owned();
    assert_contains(&reason, "uid 2004");
    assert_contains(&reason, "viewer");
    assert_contains(&reason, "approver or admin");
    let reason = daemon.ctl(OPERATOR, &approve).await.refusal().to_owned();
    assert_contains(&reason, "operator");
    let cancel = ["cancel", id_text.as_str(), "--reason", "not mine"];
    let reason = daemon.ctl(APPROVER_A, &cancel).await.refusal().to_owned();
    assert_contains(&reason, "may not cancel");
    for admin_only in [
        &["halt-resolve", "--reason", "x"][..],
        &["halt", "--fleet", "--reason", "x"][..],
        &["halt-resolve", "--fleet", "--reason", "x"][..],
        &["reload"][..],
    ] {
        let reason = daemon
            .ctl(APPROVER_A, admin_only)
            .await
            .refusal()
            .to_owned();
        assert_contains(&reason, "admin");
    }

    // An approver limited to another org is refused for this org's execution, and sees
    // nothing pending.
    let reason = daemon
        .ctl(GLOBEX_APPROVER, &approve)
        .await
        .refusal()
        .to_owned();
    assert_contains(&reason, "globex");
    assert_contains(&reason, "`acme`");
    let scoped = daemon.ctl(GLOBEX_APPROVER, &["pending"]).await;
    assert_eq!(scoped.ok()["pending"], json!([]));

    // None of that changed anything.
    assert_eq!(run_state(&client, id).await, "awaiting_approval");
    let votes: i64 = query_value(&client, "SELECT count(*) FROM playbook_approvals", &[]).await;
    assert_eq!(votes, 0);

    // A client outside the socket's group cannot even connect.
    let outsider = ctl_as(&daemon.control_socket(), 2006, 65534, &["pending"]).await;
    assert_eq!(outsider.code, Some(1), "{outsider:?}");
    assert!(outsider.stderr.contains("cannot connect"), "{outsider:?}");

    // Every request was audited with the peer's uid and its result.
    let refused: Vec<(String, String)> = daemon
        .all_events()
        .await
        .into_iter()
        .filter(|(kind, data)| kind.starts_with("control.") && data["result"] == "refused")
        .map(|(kind, data)| (kind, data["actor"].as_str().unwrap().to_owned()))
        .collect();
    for expected in [
        ("control.approve", "uid:2004"),
        ("control.approve", "uid:2003"),
        ("control.cancel", "uid:2001"),
        ("control.halt_resolve", "uid:2001"),
        ("control.reload", "uid:2001"),
        ("control.approve", "uid:2005"),
    ] {
        assert!(
            refused.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} not in {refused:?}"
        );
    }

    // The operator may cancel: the run stops and rolls back.
    let cancelled = daemon
        .ctl(
            OPERATOR,
            &["cancel", id_text.as_str(), "--reason", "false positive"],
        )
        .await;
    cancelled.ok();
    wait_run_state(&client, id, "cancelled", Duration::from_secs(20)).await;
    // A cancelled run leaves no gate waiting, and its gate takes no more votes.
    assert_eq!(
        daemon.ctl(VIEWER, &["pending"]).await.ok()["pending"],
        json!([])
    );
    let late = daemon.ctl(APPROVER_A, &approve).await;
    assert_eq!(late.reply["status"], "error", "{late:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_step_needs_two_different_approvers() {
    let (daemon, client, id, id_text) = awaiting_gate("critical").await;

    let reason = daemon
        .ctl(
            APPROVER_A,
            &["approve", &id_text, "contain", "--reason", " "],
        )
        .await
        .refusal()
        .to_owned();
    assert_contains(&reason, "reason is required");

    let first = daemon
        .ctl(
            APPROVER_A,
            &[
                "approve",
                &id_text,
                "contain",
                "--reason",
                "confirmed on the host",
            ],
        )
        .await;
    let first = first.ok();
    assert_eq!(first["gate_state"], "pending");
    assert_eq!(first["approvals"], 1);
    assert_eq!(first["required"], 2);

    // The same person twice is not dual control.
    let reason = daemon
        .ctl(
            APPROVER_A,
            &["approve", &id_text, "contain", "--reason", "really sure"],
        )
        .await
        .refusal()
        .to_owned();
    assert_contains(&reason, "already voted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(run_state(&client, id).await, "awaiting_approval");

    let second = daemon
        .ctl(
            APPROVER_B,
            &[
                "approve",
                &id_text,
                "contain",
                "--reason",
                "second pair of eyes",
            ],
        )
        .await;
    assert_eq!(second.ok()["gate_state"], "approved");
    wait_run_state(&client, id, "completed", Duration::from_secs(20)).await;

    let voters: Vec<i64> = query_column(
        &client,
        "SELECT approver_uid FROM playbook_approvals WHERE execution_id = $1 ORDER BY created_at",
        &[&id],
    )
    .await;
    assert_eq!(voters, [i64::from(APPROVER_A), i64::from(APPROVER_B)]);
    let step: String = query_value(
        &client,
        "SELECT state FROM playbook_step_runs WHERE execution_id = $1 AND step_id = 'contain'",
        &[&id],
    )
    .await;
    assert_eq!(step, "succeeded");

    // The gate's wait (over 300 ms above) is observed when the run sees the verdict. The
    // recorder is shared by this process's daemons, so the figures only ever grow.
    let page = playbookd::cli::status::request(
        &playbookd::cli::status::Endpoint(daemon.status.clone()),
        "GET",
        "/metrics",
    )
    .await
    .unwrap();
    let page = String::from_utf8_lossy(&page.body);
    let waited: f64 = page
        .lines()
        .find_map(|line| line.strip_prefix("playbookd_approval_wait_seconds_sum "))
        .unwrap_or_else(|| panic!("no approval wait sum:\n{page}"))
        .parse()
        .unwrap();
    assert!(waited >= 0.3, "approval wait recorded: {page}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deny_rejects_the_step_and_rolls_the_run_back() {
    let (daemon, client, id, id_text) = awaiting_gate("high").await;

    let reason = daemon
        .ctl(APPROVER_A, &["deny", &id_text, "contain", "--reason", ""])
        .await
        .refusal()
        .to_owned();
    assert_contains(&reason, "reason is required");
    assert_eq!(run_state(&client, id).await, "awaiting_approval");

    let denied = daemon
        .ctl(
            APPROVER_A,
            &["deny", &id_text, "contain", "--reason", "wrong host"],
        )
        .await;
    assert_eq!(denied.ok()["gate_state"], "denied");
    wait_run_state(&client, id, "rejected", Duration::from_secs(20)).await;

    let events = daemon.events(id).await;
    let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
    let position = |kind: &str| kinds.iter().position(|k| *k == kind);
    let vote = position("approval.vote").expect("vote audited");
    let begin = position("rollback.begin").expect("rollback audited");
    let undone = position("rollback.step_succeeded").expect("undo audited");
    assert!(vote < begin && begin < undone, "{kinds:?}");
    assert_eq!(
        events[undone].1["step_id"], "prepare",
        "{:?}",
        events[undone]
    );
    let (_, data) = &events[vote];
    assert_eq!(data["actor"], "uid:2001");
    assert_eq!(data["reason"], "wrong host");

    let steps: Vec<(String, String)> = query_pairs(
        &client,
        "SELECT step_id, state FROM playbook_step_runs WHERE execution_id = $1 ORDER BY step_index",
        &[&id],
    )
    .await;
    assert_eq!(
        steps,
        [
            ("prepare".to_owned(), "rolled_back".to_owned()),
            ("contain".to_owned(), "failed".to_owned())
        ]
    );
    // Nothing is left waiting, and a late vote finds no gate.
    assert_eq!(
        daemon.ctl(VIEWER, &["pending"]).await.ok()["pending"],
        json!([])
    );
    let late = daemon
        .ctl(
            APPROVER_B,
            &["approve", &id_text, "contain", "--reason", "late"],
        )
        .await;
    assert_eq!(late.code, Some(1), "{late:?}");
    assert_eq!(late.reply["status"], "error");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_gate_rolls_the_run_back() {
    let daemon = ctl_daemon("high").start().await;
    let client = daemon.db.client().await;
    let id = daemon.accepted(&ctl_decision()).await;
    wait_run_state(&client, id, "awaiting_approval", Duration::from_secs(20)).await;

    // The parser's shortest expiry is a minute: move this gate's deadline into the past
    // instead, from another connection. The waiting run does not poll: it hears the change
    // through LISTEN (migration V7), well before the minute is up and this test gives up.
    let moved = client
        .execute(
            "UPDATE playbook_approval_gates SET expires_at = now() - interval '1 second' \
             WHERE execution_id = $1 AND state = 'pending'",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(moved, 1);
    wait_run_state(&client, id, "rejected", Duration::from_secs(20)).await;

    let kinds: Vec<String> = daemon
        .events(id)
        .await
        .into_iter()
        .map(|(kind, _)| kind)
        .collect();
    let position = |kind: &str| kinds.iter().position(|k| k == kind);
    let expired = position("approval.expired").expect("expiry audited");
    let undone = position("rollback.step_succeeded").expect("undo audited");
    assert!(expired < undone, "{kinds:?}");
    let gate: String = query_value(
        &client,
        "SELECT state FROM playbook_approval_gates WHERE execution_id = $1",
        &[&id],
    )
    .await;
    assert_eq!(gate, "expired");

    let late = daemon
        .ctl(
            APPROVER_A,
            &["approve", &id.to_string(), "contain", "--reason", "late"],
        )
        .await;
    assert_eq!(late.code, Some(1), "{late:?}");
    assert!(
        late.reply["reason"]
            .as_str()
            .unwrap()
            .contains("no approval is pending"),
        "{late:?}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_resolve_needs_an_admin_and_a_reason() {
    let db = std::sync::Arc::new(TestDb::new().await);
    db.client()
        .await
        .execute(
            "INSERT INTO playbook_safe_halt_state (is_active, node_id, error_message, entered_at) \
                 VALUES (true, $1, 'rollback of step `x` failed: test', now())",
            &[&NODE],
        )
        .await
        .unwrap();
    let daemon = ctl_daemon("high").on(db).start().await;
    let client = daemon.db.client().await;
    let decisions = daemon.dir.path("run/decisions.sock");
    let refused = send_json(&decisions, &ctl_decision()).await;
    assert!(
        refused["reason"].as_str().unwrap().starts_with("safe_halt"),
        "{refused}"
    );

    let reason = daemon
        .ctl(OPERATOR, &["halt-resolve", "--reason", "fixed"])
        .await
        .refusal()
        .to_owned();
    assert_contains(&reason, "admin");
    let reason = daemon
        .ctl(ADMIN, &["halt-resolve", "--reason", ""])
        .await
        .refusal()
        .to_owned();
    assert_contains(&reason, "reason is required");
    let still: bool = query_value(
        &client,
        "SELECT count(*) = 1 FROM playbook_safe_halt_state WHERE is_active",
        &[],
    )
    .await;
    assert!(still, "the halt was cleared without admin and reason");

    let cleared = daemon
        .ctl(
            ADMIN,
            &["halt-resolve", "--reason", "restored the file by hand"],
        )
        .await;
    assert_eq!(cleared.ok()["safe_halt"], "cleared");
    let row = client
        .query_one(
            "SELECT is_active, resolved_by, reason FROM playbook_safe_halt_state",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    assert_eq!(row.get::<_, Option<i64>>(1), Some(i64::from(ADMIN)));
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("restored the file by hand")
    );
    let events = daemon.all_events().await;
    assert!(
        events.iter().any(|(kind, data)| kind == "safe_halt.cleared"
            && data["actor"] == "uid:2000"
            && data["reason"] == "restored the file by hand"),
        "{events:?}"
    );

    let again = daemon
        .ctl(ADMIN, &["halt-resolve", "--reason", "again"])
        .await;
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(
        again.reply["reason"]
            .as_str()
            .unwrap()
            .contains("no SAFE-HALT"),
        "{again:?}"
    );
    assert_eq!(
        send_json(&decisions, &ctl_decision()).await["status"],
        "accepted"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_is_for_admins_and_runs_the_daemons_reload() {
    let daemon = ctl_daemon("high").start().await;
    let reason = daemon.ctl(OPERATOR, &["reload"]).await.refusal().to_owned();
    assert_contains(&reason, "admin");
    let count_reloads = || async {
        daemon
            .all_events()
            .await
            .iter()
            .filter(|(kind, _)| kind == "daemon.reload")
            .count()
    };
    assert_eq!(count_reloads().await, 0);
    let reloaded = daemon.ctl(ADMIN, &["reload"]).await;
    assert_eq!(reloaded.ok()["reload"], "done");
    assert_eq!(count_reloads().await, 1);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_request_gets_a_reason_and_the_connection_keeps_serving() {
    let daemon = ctl_daemon("high").start().await;
    let stream = UnixStream::connect(daemon.control_socket()).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let long = format!(
        "{{\"verb\":\"pending\",\"x\":\"{}\"}}",
        "a".repeat(70 * 1024)
    );
    for (request, expected) in [
        (
            r#"{"verb":"pending","as_uid":0}"#.to_owned(),
            "unknown field `as_uid`",
        ),
        (
            r#"{"verb":"approve","step":"x"}"#.to_owned(),
            "needs `execution_id`",
        ),
        (long, "longer than 65536 bytes"),
        (r#"{"verb":"launch"}"#.to_owned(), "unknown verb `launch`"),
    ] {
        write
            .write_all(format!("{request}\n").as_bytes())
            .await
            .unwrap();
        let reply: Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(reply["status"], "error", "{reply}");
        assert!(
            reply["reason"].as_str().unwrap().contains(expected),
            "{reply}"
        );
    }
    write.write_all(b"{\"verb\":\"pending\"}\n").await.unwrap();
    let reply: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(reply["status"], "ok", "{reply}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_survives_a_daemon_kill_and_the_run_completes_after_the_second() {
    let db = TestDb::new().await;
    let dir = DaemonDir::new();
    dir.open_to_other_uids();
    let client = db.client().await;
    // The child cannot be handed a catalog: record the execution as the intake would have,
    // and let startup recovery pick it up from the stored, hash-checked playbook bytes.
    let sha256 = store_version(&client, &dir, playbook_yaml("critical").as_bytes()).await;
    let id = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO playbook_executions (execution_id, node_id, playbook_id, playbook_version, \
               playbook_sha256, state, nonce, policy_decision_id, policy, outcome, org_id, severity, \
               subject, requested_by_uid, binding, started_at, updated_at) \
             VALUES ($1, $2, 'ctl-test', 1, $3, 'pending', $4, 'd-restart', 'test.ctl', 'run', 'acme', \
               'high', '{}'::jsonb, 0, \
               '{\"policy\": \"test.ctl\", \"outcome\": \"run\", \"org_id\": null, \"playbook\": \"ctl-test\", \"require_approval\": false}'::jsonb, \
               now(), now())",
            &[&id, &NODE, &sha256.as_slice(), &Uuid::new_v4().simple().to_string()],
        )
        .await
        .unwrap();
    let config = dir.write_config(&db, NODE, CONTROL_CONFIG);
    let socket = dir.path("run/control.sock");
    let id_text = id.to_string();

    let mut first = ChildDaemon::start(&config, &dir.path("first.log"));
    first.wait_for_log("playbookd ready", Duration::from_secs(20));
    wait_run_state(&client, id, "awaiting_approval", Duration::from_secs(20)).await;
    let vote = ctl(
        &socket,
        APPROVER_A,
        &["approve", &id_text, "contain", "--reason", "checked"],
    )
    .await;
    assert_eq!(vote.ok()["gate_state"], "pending");
    first.signal(nix::sys::signal::Signal::SIGKILL);
    first
        .wait_exit(Duration::from_secs(5))
        .expect("killed daemon exits");
    wait_for_chain_lock_release(&client).await;

    let mut second = ChildDaemon::start(&config, &dir.path("second.log"));
    second.wait_for_log("playbookd ready", Duration::from_secs(20));
    // The vote from before the kill still counts: uid 2001 cannot vote again...
    let again = ctl(
        &socket,
        APPROVER_A,
        &["approve", &id_text, "contain", "--reason", "again"],
    )
    .await;
    assert!(again.refusal().contains("already voted"), "{again:?}");
    let pending = ctl(&socket, VIEWER, &["pending"]).await;
    let votes = &pending.ok()["pending"][0]["votes"];
    assert_eq!(votes, &json!([{"uid": APPROVER_A, "verdict": "approve"}]));
    assert_eq!(run_state(&client, id).await, "awaiting_approval");
    // ...and a second approver completes the gate; the resumed run continues.
    let second_vote = ctl(
        &socket,
        APPROVER_B,
        &["approve", &id_text, "contain", "--reason", "agreed"],
    )
    .await;
    assert_eq!(second_vote.ok()["gate_state"], "approved");
    wait_run_state(&client, id, "completed", Duration::from_secs(30)).await;
    second.signal(nix::sys::signal::Signal::SIGTERM);
    second
        .wait_exit(Duration::from_secs(10))
        .expect("daemon stops");
    assert!(!socket.exists(), "control.sock left behind after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplementary_group_grants_its_role_and_ctl_prints_for_people() {
    let (daemon, client, id, id_text) = awaiting_gate("high").await;
    let cancel = ["cancel", id_text.as_str(), "--reason", "duplicate incident"];

    // Without `staff`, uid 2007 is only a viewer (through `users`).
    let reason = daemon.ctl(2007, &cancel).await.refusal().to_owned();
    assert_contains(&reason, "roles: viewer");

    let (code, stdout, stderr) = ctl_with_staff_group(&daemon.control_socket(), &["pending"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_contains(
        &stdout,
        &format!("{id_text} step contain: noop, risk high, 0/1 approvals"),
    );
    assert_contains(&stdout, "org acme, playbook ctl-test@1, undoable false");

    let (code, stdout, stderr) = ctl_with_staff_group(
        &daemon.control_socket(),
        &["approve", &id_text, "contain", "--reason", "x"],
    )
    .await;
    assert_eq!(code, Some(77), "{stdout}");
    assert_contains(&stderr, "refused:");
    assert_contains(&stderr, "viewer, operator");

    let (code, stdout, stderr) = ctl_with_staff_group(&daemon.control_socket(), &cancel).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        format!("cancel requested for {id_text}: the run stops and rolls back\n")
    );
    wait_run_state(&client, id, "cancelled", Duration::from_secs(20)).await;
    let cancel_event = daemon
        .all_events()
        .await
        .into_iter()
        .find(|(kind, data)| kind == "control.cancel" && data["result"] == "ok")
        .expect("cancel audited");
    assert_eq!(cancel_event.1["actor"], "uid:2007");
    assert_eq!(cancel_event.1["gids"], json!([50, 100]));
    daemon.stop().await;
}

/// Opens `count` connections to `socket` as `uid`/`gid` and sends one byte of a line that never
/// ends on each, every 200 ms, for `seconds`; prints `ready` once every connect returned, then
/// (at the end) a JSON list of what each connection received.
const DRIP: &str = r#"
import json, socket, sys, time
path, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
conns = []
for _ in range(count):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.setblocking(False)
    conns.append(s)
print("ready", flush=True)
received = [b""] * count
end = time.time() + seconds
while time.time() < end:
    for i, s in enumerate(conns):
        try:
            s.send(b"{")
        except OSError:
            pass
        try:
            received[i] += s.recv(4096)
        except OSError:
            pass
    time.sleep(0.2)
print(json.dumps([r.decode("utf-8", "replace") for r in received]), flush=True)
"#;

/// A slow-drip client (see [`DRIP`]) running as another uid.
struct Drip {
    child: tokio::process::Child,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Drip {
    async fn start(socket: &Path, uid: u32, gid: u32, count: usize, seconds: f64) -> Drip {
        let mut child = tokio::process::Command::new("/usr/bin/python3")
            .args(["-c", DRIP])
            .arg(socket)
            .arg(count.to_string())
            .arg(seconds.to_string())
            .uid(uid)
            .gid(gid)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(10), stdout.next_line())
            .await
            .expect("drip connects in time")
            .unwrap();
        assert_eq!(ready.as_deref(), Some("ready"));
        Drip { child, stdout }
    }

    /// What each connection received, once the drip ends.
    async fn received(mut self) -> Vec<String> {
        let line = tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line())
            .await
            .expect("drip ends")
            .unwrap()
            .unwrap();
        self.child.wait().await.unwrap();
        serde_json::from_str(&line).unwrap()
    }
}

/// A uid with no role at all: not in `[roles]`, and not in `users` (gid 100, the viewers).
const NO_ROLE_UID: u32 = 2006;
const NO_ROLE_GID: u32 = 65534;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_drip_connections_from_a_uid_with_no_role_cannot_keep_an_admin_out() {
    let daemon = ctl_daemon("high").start().await;
    // Anyone may open the socket; what a peer may do is decided by its roles.
    std::fs::set_permissions(
        daemon.control_socket(),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let drip = Drip::start(&daemon.control_socket(), NO_ROLE_UID, NO_ROLE_GID, 32, 3.0).await;
    // The real client, as that uid, is told why and exits 77 (refused).
    let refused = ctl_as(
        &daemon.control_socket(),
        NO_ROLE_UID,
        NO_ROLE_GID,
        &["pending"],
    )
    .await;
    assert!(refused.refusal().contains("has no role"), "{refused:?}");
    for _ in 0..3 {
        let started = Instant::now();
        daemon.ctl(ADMIN, &["pending"]).await.ok();
        eprintln!(
            "admin `ctl pending` beside 32 slow drips: {:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        daemon.ctl(APPROVER_A, &["pending"]).await.ok();
    }
    // Each of the 32 was refused at connect, with the reason and the setting that grants a role.
    let received = drip.received().await;
    assert_eq!(received.len(), 32);
    for text in &received {
        let reply: Value =
            serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(reply["status"], "refused", "{reply}");
        let reason = reply["reason"].as_str().unwrap();
        assert_contains(reason, "uid 2006 has no role");
        assert_contains(reason, "[roles]");
    }
    // Recorded, but not once per connection: one record per uid and interval, with a count.
    let started = Instant::now();
    let refusals = loop {
        let recorded: Vec<Value> = daemon
            .all_events()
            .await
            .into_iter()
            .filter(|(kind, data)| kind == "control.peer_refused" && data["actor"] == "uid:2006")
            .map(|(_, data)| data)
            .collect();
        if !recorded.is_empty() {
            break recorded;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refusal not recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0]["refusals"], 1);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_a_role_hold_a_few_slots_each_and_admins_keep_a_reserve() {
    let daemon = ctl_daemon("high").start().await;
    // The deadline is per line: a drip that sends a byte every 200 ms is closed after
    // control.idle_timeout_seconds (5 s) all the same, with the reason.
    let drip = Drip::start(&daemon.control_socket(), 3100, SOCKET_GID, 4, 7.0).await;
    let started = Instant::now();
    let received = drip.received().await;
    assert!(started.elapsed() >= Duration::from_secs(5));
    for text in &received {
        let reply: Value =
            serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(
            reply["reason"]
                .as_str()
                .unwrap()
                .contains("not complete within 5 s (control.idle_timeout_seconds)"),
            "{reply}"
        );
    }

    // A viewer (any uid in `users`) asking for 6 connections holds 4; the others are told
    // `busy`, naming the per-uid setting.
    let one_uid = Drip::start(&daemon.control_socket(), 3000, SOCKET_GID, 6, 0.5).await;
    let received = one_uid.received().await;
    let per_uid = received
        .iter()
        .filter(|text| text.contains("control.max_connections_per_uid"))
        .count();
    assert_eq!(per_uid, 2, "{received:?}");
    assert_eq!(received.iter().filter(|text| text.is_empty()).count(), 4);

    // Four viewers ask for 4 each: 16 asked, 14 general slots (16 minus 2 kept for admins).
    let socket = daemon.control_socket();
    let drips = futures::future::join_all(
        (3001..3005).map(|uid| Drip::start(&socket, uid, SOCKET_GID, 4, 4.0)),
    )
    .await;
    // The general slots are full: an approver is told to retry, admins get in.
    let approver = daemon.ctl(APPROVER_A, &["pending"]).await;
    let reason = approver.reply["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.starts_with("busy") && reason.contains("(control.max_connections)"),
        "{approver:?}"
    );
    daemon.ctl(ADMIN, &["pending"]).await.ok();
    daemon.ctl(0, &["pending"]).await.ok();
    let mut held = 0;
    let mut busy = 0;
    for drip in drips {
        for text in drip.received().await {
            if text.contains("busy") {
                busy += 1;
            } else {
                held += 1;
            }
        }
    }
    // (A few may have been closed already if uid 3000's slots were still being given back.)
    assert_eq!(held + busy, 16);
    assert!(busy >= 2, "held {held}, busy {busy}");

    // Once the drips are gone (each closed connection is answered and recorded first), the
    // approver is served again.
    let started = Instant::now();
    loop {
        let approver = daemon.ctl(APPROVER_A, &["pending"]).await;
        if approver.code == Some(0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{approver:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_field_names_on_both_sockets_are_refused_and_recorded_while_valid_lines_are_served() {
    const HOSTILE: usize = 100;
    const VALID: usize = 60;
    let daemon = ctl_daemon("high").start().await;
    let decisions = daemon.dir.path("run/decisions.sock");
    let control = daemon.control_socket();

    // One hostile peer per socket, repeating a line whose field name is a NUL byte.
    let hostile = |socket: PathBuf, line: String| {
        tokio::spawn(async move {
            let stream = UnixStream::connect(&socket).await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let mut replies = Vec::new();
            for _ in 0..HOSTILE {
                write.write_all(line.as_bytes()).await.unwrap();
                let reply: Value =
                    serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
                replies.push(reply);
            }
            replies
        })
    };
    let mut nul_decision = serde_json::Map::new();
    nul_decision.insert("policy".into(), json!("test.ctl"));
    nul_decision.insert("\0".into(), json!(1));
    let hostile_decisions = hostile(
        decisions.clone(),
        format!("{}\n", Value::Object(nul_decision)),
    );
    let hostile_control = hostile(
        control.clone(),
        "{\"verb\":\"pending\",\"\\u0000\":1}\n".into(),
    );

    // Meanwhile, legitimate peers on both sockets.
    let valid_decisions = tokio::spawn(async move {
        let mut replies = Vec::new();
        for _ in 0..VALID {
            replies.push(send_json(&decisions, &ctl_decision()).await);
        }
        replies
    });
    let valid_control = tokio::spawn(async move {
        let mut replies = Vec::new();
        for _ in 0..VALID {
            replies.push(send_line(&control, br#"{"verb":"pending"}"#).await);
        }
        replies
    });

    for reply in hostile_decisions.await.unwrap() {
        assert_eq!(reply["status"], "rejected", "{reply}");
        let reason = reply["reason"].as_str().unwrap();
        assert_contains(reason, "unknown field `\\u{0}`");
    }
    for reply in hostile_control.await.unwrap() {
        assert_eq!(reply["status"], "error", "{reply}");
        let reason = reply["reason"].as_str().unwrap();
        assert_contains(reason, "unknown field `\\u{0}`");
    }
    for reply in valid_decisions.await.unwrap() {
        assert_eq!(reply["status"], "accepted", "{reply}");
    }
    for reply in valid_control.await.unwrap() {
        assert_eq!(reply["status"], "ok", "{reply}");
    }

    // Every hostile line is in the audit log as a refusal, its reason escaped.
    let events = daemon.all_events().await;
    let refused_decisions = events
        .iter()
        .filter(|(kind, data)| {
            kind == "decision.received"
                && data["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("unknown field `\\u{0}`"))
        })
        .count();
    let refused_requests = events
        .iter()
        .filter(|(kind, data)| {
            kind == "control.invalid"
                && data["refusal"]
                    .as_str()
                    .is_some_and(|r| r.contains("unknown field `\\u{0}`"))
        })
        .count();
    assert_eq!((refused_decisions, refused_requests), (HOSTILE, HOSTILE));
    let accepted = events
        .iter()
        .filter(|(kind, _)| kind == "decision.accepted")
        .count();
    assert_eq!(accepted, VALID);
    let served = events
        .iter()
        .filter(|(kind, data)| kind == "control.pending" && data["result"] == "ok")
        .count();
    assert_eq!(served, VALID);
    daemon.stop().await;
}
