//! The chain head lives outside the database too (issue 21): a database that lost rows this
//! node committed — cut by whoever can write it, as a superuser here — is never appended to.
//! The daemon finds the cut at the next writer reconnect and at the next start, names the
//! missing seqs, and `audit verify --anchor` reports it; `audit accept-cut` is the way out.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::harness::{
    GATED_NOOP, UNDO_FAILS, bindings, decision, exec_config, poke_until_logged, send_json,
};
use crate::helpers::{
    ChildDaemon, DaemonDir, TestDb, accept_cut, assert_contains, assert_cut_reported, audit_verify,
    audit_verify_anchor, chain_head, configured, query_value, serve_fresh, serve_refused,
};

const LIMIT: Duration = Duration::from_secs(20);
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// The attack of issue 21, as a superuser: the append-only triggers disabled, every row and
/// checkpoint of `node` above `keep` deleted.
async fn cut_above(client: &tokio_postgres::Client, node: &str, keep: i64) {
    client
        .batch_execute(&format!(
            "ALTER TABLE playbook_audit_log DISABLE TRIGGER USER; \
             ALTER TABLE audit_checkpoints DISABLE TRIGGER USER; \
             DELETE FROM playbook_audit_log WHERE node_id = '{node}' AND seq > {keep}; \
             DELETE FROM audit_checkpoints WHERE node_id = '{node}' AND seq > {keep}; \
             ALTER TABLE playbook_audit_log ENABLE TRIGGER USER; \
             ALTER TABLE audit_checkpoints ENABLE TRIGGER USER;"
        ))
        .await
        .unwrap();
}

/// Sends `count` decisions nothing binds: each is audited (`no_action`) before its reply.
async fn append_decisions(dir: &DaemonDir, count: usize) {
    for _ in 0..count {
        let reply = send_json(
            &dir.path("run/decisions.sock"),
            &decision("unbound", "x", json!({})),
        )
        .await;
        assert_eq!(reply["status"], "no_action", "{reply}");
    }
}

/// A first run of the daemon in `dir`, stopped: its shutdown checkpoint is the early one.
/// Returns a client and the head it left.
async fn first_run(db: &TestDb, dir: &DaemonDir) -> (tokio_postgres::Client, i64) {
    let mut daemon = ChildDaemon::start(&dir.path("playbookd.toml"), &dir.path("first.log"));
    daemon.wait_for_log("playbookd ready", LIMIT);
    daemon.stop_within(STOP_LIMIT);
    let client = db.client().await;
    let early = chain_head(&client, "node-a").await;
    (client, early)
}

#[tokio::test]
async fn a_cut_while_the_daemon_runs_halts_it_at_the_next_writer_reconnect() {
    let (db, dir, config) = configured("node-a", "").await;
    // An early checkpoint: the first run's, at shutdown.
    let (client, early) = first_run(&db, &dir).await;

    let mut daemon = ChildDaemon::serve(&config);
    append_decisions(&dir, 3).await;
    let committed = chain_head(&client, "node-a").await;
    assert!(committed >= early + 4, "{early} {committed}");
    // The anchor follows each commit (off the writer's path, so shortly after the reply).
    let start = std::time::Instant::now();
    while dir.chain_anchor()["head"]["seq"] != committed {
        assert!(start.elapsed() < LIMIT, "{}", dir.chain_anchor());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    cut_above(&client, "node-a", early).await;
    // The writer is forced to reconnect: every other session of the database is killed.
    client
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    let missing = format!("seq {}..={committed} are missing", early + 1);
    poke_until_logged(&daemon, &dir.path("run/decisions.sock"), &missing, LIMIT).await;
    daemon.wait_for_log("SAFE-HALT entered: the audit chain was cut", LIMIT);
    // Nothing went on top of the cut, whatever arrives.
    let reply = send_json(
        &dir.path("run/decisions.sock"),
        &decision("unbound", "x", json!({})),
    )
    .await;
    assert_ne!(reply["status"], "no_action", "{reply}");
    // The refusal names the only way out of a cut halt, not `ctl halt-resolve` (which cannot clear it).
    let reason = reply["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("playbookd audit accept-cut") && !reason.contains("halt-resolve"),
        "{reply}"
    );
    assert_cut_reported(
        &mut daemon,
        &dir,
        &client,
        ("node-a", early, committed),
        STOP_LIMIT,
    )
    .await;

    // The halt survives the restart: the daemon refuses to start, naming the seqs and the fix.
    let stderr = serve_refused(&config);
    assert_contains(&stderr, &missing);
    assert_contains(&stderr, "playbookd audit accept-cut");

    // The admin accepts the cut; the next start appends again, first of all the acknowledgment.
    accept_cut(&config, "incident 42: database restored from the cut copy");
    let mut daemon = ChildDaemon::start(&config, &dir.path("after.log"));
    daemon.wait_for_log("playbookd ready", LIMIT);
    let row = client
        .query_one(
            "SELECT event_type, event_data FROM playbook_audit_log WHERE node_id = 'node-a' AND seq = $1",
            &[&(early + 1)],
        )
        .await
        .unwrap();
    let (event_type, data): (String, Value) = (row.get(0), row.get(1));
    assert_eq!(event_type, "audit.cut_accepted");
    assert_eq!(data["first_lost_seq"], early + 1, "{data}");
    assert_eq!(data["last_lost_seq"], committed, "{data}");
    assert!(
        data["reason"].as_str().unwrap().contains("incident 42"),
        "{data}"
    );
    daemon.stop_within(STOP_LIMIT);
    assert!(
        dir.chain_anchor()["cut"].is_null(),
        "{}",
        dir.chain_anchor()
    );
    let (status, stdout, stderr) = audit_verify_anchor(&config, &dir);
    assert!(status.success(), "{stdout}{stderr}");
}

#[tokio::test]
async fn a_cut_while_the_daemon_is_stopped_is_found_at_the_next_start() {
    let (db, dir, config, mut daemon) = serve_fresh("node-a", "").await;
    append_decisions(&dir, 2).await;
    daemon.stop_within(STOP_LIMIT);
    let client = db.client().await;
    let committed = chain_head(&client, "node-a").await;
    assert_eq!(dir.chain_anchor()["checkpoint"]["seq"], committed);

    cut_above(&client, "node-a", 3).await;
    let stderr = serve_refused(&config);
    let missing = format!("seq 4..={committed} are missing");
    assert_contains(&stderr, &missing);
    assert_eq!(chain_head(&client, "node-a").await, 3, "nothing appended");
    assert_eq!(
        dir.chain_anchor()["cut"]["loss"],
        json!({"kind": "missing", "first": 4, "last": committed})
    );
    let (status, stdout, _) = audit_verify_anchor(&config, &dir);
    assert_eq!(status.code(), Some(2), "{stdout}");
    assert_contains(&stdout, "BREACH at seq 4: cut:");
    // The log's copy of the shutdown checkpoint is an external anchor too.
    let (status, stdout, _) = audit_verify(&config, &[]);
    assert!(
        status.success(),
        "the database alone looks intact: {stdout}"
    );
    let log = dir.path("daemon.log");
    let (status, stdout, _) = audit_verify(&config, &["--checkpoint-log", log.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{stdout}");
    assert_contains(
        &stdout,
        &format!("node node-a: 1 logged checkpoints (last seq {committed}): BREACH at seq 4: cut:"),
    );
}

#[tokio::test]
async fn a_rewritten_row_below_the_committed_head_is_a_cut_too() {
    let (db, _dir, config, mut daemon) = serve_fresh("node-a", "").await;
    daemon.stop_within(STOP_LIMIT);
    let client = db.client().await;
    let head = chain_head(&client, "node-a").await;
    // The last row replaced by one with another hash (as a lagging standby's own row would be).
    client
        .batch_execute(&format!(
            "ALTER TABLE playbook_audit_log DISABLE TRIGGER USER; \
             UPDATE playbook_audit_log SET hash = sha256(hash) WHERE node_id = 'node-a' AND seq = {head}; \
             ALTER TABLE playbook_audit_log ENABLE TRIGGER USER;"
        ))
        .await
        .unwrap();
    let stderr = serve_refused(&config);
    assert_contains(&stderr, &format!("the row at seq {head} differs"));
}

#[tokio::test]
async fn a_safe_halt_checkpoint_covers_the_rows_after_the_last_periodic_one() {
    let db = TestDb::new().await;
    let dir = DaemonDir::new();
    let extra = format!(
        "[audit]\ncheckpoint_interval_seconds = 3600\n{}",
        exec_config(&[], "", "")
    );
    let config = dir.write_config(&db, "node-a", &extra);
    dir.write_signed("playbooks/undo-fails-v1.yaml", UNDO_FAILS, true);
    dir.write_bindings(&bindings(&[("halt", "now", "undo-fails")]));
    // The last checkpoint before the halt: the first run's shutdown.
    let (client, early) = first_run(&db, &dir).await;

    let mut daemon = ChildDaemon::serve(&config);
    let reply = send_json(
        &dir.path("run/decisions.sock"),
        &decision("halt", "now", json!({})),
    )
    .await;
    assert_eq!(reply["status"], "accepted", "{reply}");
    daemon.wait_for_log("SAFE-HALT written", LIMIT);
    // No periodic checkpoint is due for an hour: this one is the halt's own.
    daemon.wait_for_log("audit checkpoint signed", LIMIT);
    let halt_seq: i64 = query_value(&client, "SELECT seq FROM playbook_audit_log WHERE node_id = 'node-a' AND event_type = 'safe_halt.entered'", &[]).await;
    let signed: i64 = query_value(
        &client,
        "SELECT max(seq) FROM audit_checkpoints WHERE node_id = 'node-a'",
        &[],
    )
    .await;
    assert!(signed >= halt_seq, "checkpoint {signed} < halt {halt_seq}");
    let start = std::time::Instant::now();
    while dir.chain_anchor()["checkpoint"]["seq"].as_i64() < Some(halt_seq) {
        assert!(start.elapsed() < LIMIT, "{}", dir.chain_anchor());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A crash: no shutdown checkpoint. Then the rows after the last periodic checkpoint go.
    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit(LIMIT).expect("killed");
    cut_above(&client, "node-a", early).await;
    let stderr = serve_refused(&config);
    assert_contains(&stderr, &format!("seq {}..=", early + 1));
    assert_contains(&stderr, "are missing");
    let (status, stdout, _) = audit_verify_anchor(&config, &dir);
    assert_eq!(status.code(), Some(2), "{stdout}");
    assert_contains(&stdout, &format!("BREACH at seq {}: cut:", early + 1));
}

#[tokio::test]
async fn a_group_readable_anchor_stops_the_daemon_with_78() {
    use std::os::unix::fs::PermissionsExt;
    let (_db, dir, config, mut daemon) = serve_fresh("node-a", "").await;
    daemon.stop_within(STOP_LIMIT);
    let path = dir.path("chain-anchor.json");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = serve_refused(&config);
    assert_contains(&stderr, "chain-anchor.json");
    assert_contains(&stderr, "0644");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&path, b"{\"format\": 1}").unwrap();
    let stderr = serve_refused(&config);
    assert_contains(&stderr, "does not decode");
}

async fn signed(client: &tokio_postgres::Client, node: &str) -> i64 {
    query_value(
        client,
        "SELECT COALESCE(max(seq), 0) FROM audit_checkpoints WHERE node_id = $1",
        &[&node],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_decision_is_checkpointed_at_once() {
    use crate::harness::TestDaemon;
    let daemon =
        TestDaemon::bound("[audit]\ncheckpoint_interval_seconds = 3600\n", GATED_NOOP).await;
    let reply = daemon.send_decision(&decision("p", "o", json!({}))).await;
    assert_eq!(reply["status"], "accepted", "{reply}");
    let run = reply["execution_id"].as_str().unwrap().to_owned();
    daemon.wait_event(&run, "approval.requested", LIMIT).await;
    let client = daemon.db.client().await;
    // No periodic checkpoint for an hour: nothing is signed while the run waits.
    assert_eq!(signed(&client, "node-a").await, 0);
    let approved = daemon
        .control(
            &json!({"verb": "approve", "execution_id": run, "step": "act", "reason": "checked"}),
        )
        .await;
    assert_eq!(approved["gate_state"], "approved", "{approved}");
    let vote: i64 = query_value(&client, "SELECT seq FROM playbook_audit_log WHERE node_id = 'node-a' AND event_type = 'approval.vote'", &[]).await;
    let start = std::time::Instant::now();
    while signed(&client, "node-a").await < vote {
        assert!(
            start.elapsed() < LIMIT,
            "no checkpoint covers the vote at seq {vote}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The anchor file is written (and fsynced) right after the checkpoint row commits.
    while daemon.dir.chain_anchor()["checkpoint"]["seq"].as_i64() < Some(vote) {
        assert!(
            start.elapsed() < LIMIT,
            "the anchor never recorded a checkpoint covering seq {vote}: {}",
            daemon.dir.chain_anchor()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.stop().await;
}
