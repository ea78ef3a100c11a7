//! The fleet (issue #18): nonce retention, the node list, the fleet-wide SAFE-HALT, and several
//! daemons on one database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use playbookd::cli::status::{Endpoint, request};
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use crate::harness::{
    Evidence, TestDaemon, TestDaemonBuilder, accepted_id, bindings, decision, exec_config,
};
use crate::helpers::{
    TestDb, assert_contains, insert_halt, query_column, query_pairs, query_value,
};

const LIMIT: Duration = Duration::from_secs(20);

const NOOP: &str = r#"
id: one-noop
version: 1
name: One step that does nothing
owners: {technical: a@example.org, operational: b@example.org}
steps:
  - {id: one, action: noop, rollback: none}
"#;

/// A first step that takes a while, then a second: a halt entered during the first stops the
/// second from starting.
const NAP_THEN_NOOP: &str = r#"
id: nap-then-noop
version: 1
name: Naps, then does nothing
owners: {technical: a@example.org, operational: b@example.org}
steps:
  - {id: nap, action: exec, with: {command: /bin/sleep, args: ["2"]}, risk: low, rollback: none}
  - {id: after, action: noop, risk: low, rollback: none}
"#;

async fn nonce_row(db: &TestDb, nonce: &str) -> bool {
    db.client()
        .await
        .query_opt("SELECT 1 FROM playbook_nonces WHERE nonce = $1", &[&nonce])
        .await
        .unwrap()
        .is_some()
}

fn issued(at: time::OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruned_nonce_replays_as_stale_and_one_inside_twice_the_window_as_replay() {
    // Window 2 s; heartbeat (and retention) every second.
    let config = "[fleet]\nheartbeat_interval_seconds = 1\nstale_after_seconds = 5\n[intake]\nfreshness_seconds = 2\n";
    let daemon = TestDaemon::bound(config, NOOP).await;
    // Issued 1.5 s in the future: fresh now, and fresh again until 3.5 s from now, so its nonce
    // must outlive the window itself (a cut-off at one window would let it replay at 2-3.5 s).
    let mut future = decision("p", "o", json!({}));
    future["issued_at"] = json!(issued(
        time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1500)
    ));
    let nonce = future["nonce"].as_str().unwrap().to_owned();
    let sent = Instant::now();
    accepted_id(&daemon.send_decision(&future).await);

    // After the window but inside twice the window: retention has run (every second) and must
    // have kept the nonce; the decision is still fresh, so it is a replay.
    tokio::time::sleep(Duration::from_millis(2300).saturating_sub(sent.elapsed())).await;
    let inside = daemon.send_decision(&future).await;
    assert!(
        sent.elapsed() < Duration::from_millis(3400),
        "too slow to test inside the window"
    );
    assert_eq!(inside["status"], "rejected", "{inside}");
    assert!(
        inside["reason"].as_str().unwrap().starts_with("replay"),
        "{inside}"
    );
    assert!(
        nonce_row(&daemon.db, &nonce).await,
        "pruned inside 2 × window"
    );

    // Past twice the window: the daemon's own retention deletes the row, and the decision is
    // refused as stale (never accepted again).
    let deadline = Instant::now() + LIMIT;
    while nonce_row(&daemon.db, &nonce).await {
        assert!(Instant::now() < deadline, "nonce never pruned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        sent.elapsed() >= Duration::from_secs(4),
        "pruned before 2 × window"
    );
    let after = daemon.send_decision(&future).await;
    assert_eq!(after["status"], "rejected", "{after}");
    assert!(
        after["reason"].as_str().unwrap().starts_with("stale"),
        "{after}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn retention_keeps_nonces_for_the_widest_window_of_any_node_and_deletes_in_batches() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let insert = |age_seconds: i64, count: i64| {
        format!(
            "INSERT INTO playbook_nonces (nonce, used_at, execution_id) \
             SELECT 'n{age_seconds}-' || g, now() - make_interval(secs => {age_seconds}), NULL \
             FROM generate_series(1, {count}) g"
        )
    };
    client.batch_execute(&insert(700, 5)).await.unwrap();
    client.batch_execute(&insert(100, 3)).await.unwrap();
    let remaining = || async {
        let n: i64 = query_value(
            &db.client().await,
            "SELECT count(*) FROM playbook_nonces",
            &[],
        )
        .await;
        n
    };
    // Another node registered a one-hour window: nothing younger than two hours may go, even
    // for a caller whose own window is 300 s.
    client
        .batch_execute(
            "INSERT INTO playbook_nodes (node_id, version, started_at, heartbeat_at, chain_head_seq, \
                runs_in_flight, halt, freshness_seconds) \
             VALUES ('wide', '0', now(), now(), 0, 0, 'none', 3600)",
        )
        .await
        .unwrap();
    let pruned: i32 = query_value(&client, "SELECT playbook_prune_nonces(300, 100)", &[]).await;
    assert_eq!(pruned, 0);
    assert_eq!(remaining().await, 8);

    client
        .batch_execute("UPDATE playbook_nodes SET freshness_seconds = 300")
        .await
        .unwrap();
    // Bounded: two per call.
    let batch: i32 = query_value(&client, "SELECT playbook_prune_nonces(300, 2)", &[]).await;
    assert_eq!(batch, 2);
    let rest: i32 = query_value(&client, "SELECT playbook_prune_nonces(300, 100)", &[]).await;
    assert_eq!(rest, 3, "only the five older than 2 × 300 s go");
    assert_eq!(remaining().await, 3);
    // Nonsense arguments are refused, not clamped.
    for call in [
        "SELECT playbook_prune_nonces(0, 10)",
        "SELECT playbook_prune_nonces(300, 0)",
        "SELECT playbook_prune_nonces(300, 100000)",
    ] {
        let error = client.query_one(call, &[]).await.unwrap_err();
        assert!(
            error.to_string().contains("playbook_prune_nonces")
                || error
                    .as_db_error()
                    .is_some_and(|e| e.message().contains("playbook_prune_nonces")),
            "{call}: {error:?}"
        );
    }
}

#[tokio::test]
async fn a_role_without_delete_on_nonces_prunes_only_through_the_function() {
    let owner = crate::helpers::OwnerRoleDb::new().await;
    let runtime = format!("{}_rt", owner.role);
    let admin = crate::helpers::connect(&crate::helpers::admin_config()).await;
    admin
        .batch_execute(&format!("CREATE ROLE {runtime} LOGIN"))
        .await
        .unwrap();
    let as_owner = owner.client().await;
    as_owner
        .batch_execute(&format!(
            "GRANT SELECT, INSERT ON playbook_nonces, playbook_nodes TO {runtime}; \
             GRANT EXECUTE ON FUNCTION playbook_prune_nonces(integer, integer) TO {runtime}; \
             INSERT INTO playbook_nonces (nonce, used_at) VALUES ('old', now() - interval '1 hour'), \
                ('new', now());"
        ))
        .await
        .unwrap();
    let mut config = owner.config.clone();
    config.user(&runtime);
    let as_runtime = crate::helpers::connect(&config).await;
    let refused = as_runtime
        .execute("DELETE FROM playbook_nonces", &[])
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{refused:?}"
    );
    let pruned: i32 = query_value(&as_runtime, "SELECT playbook_prune_nonces(60, 100)", &[]).await;
    assert_eq!(pruned, 1);
    let left: Vec<String> = query_column(&as_owner, "SELECT nonce FROM playbook_nonces", &[]).await;
    assert_eq!(left, ["new"]);
    drop(as_runtime);
    // Dropped with the owner role's database; the runtime role owns nothing.
    as_owner
        .batch_execute(&format!(
            "REVOKE ALL ON playbook_nonces, playbook_nodes FROM {runtime}; \
             REVOKE ALL ON FUNCTION playbook_prune_nonces(integer, integer) FROM {runtime}"
        ))
        .await
        .unwrap();
    drop(as_owner);
    admin
        .batch_execute(&format!("DROP ROLE {runtime}"))
        .await
        .unwrap();
}

// ---- nodes and the fleet halt ----

fn endpoint(daemon: &TestDaemon) -> Endpoint {
    Endpoint(daemon.status.clone())
}

async fn get(daemon: &TestDaemon, path: &str) -> (u16, Value) {
    let response = request(&endpoint(daemon), "GET", path).await.unwrap();
    let body = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    (response.status, body)
}

const FLEET_CONFIG: &str = "[fleet]\nheartbeat_interval_seconds = 1\nstale_after_seconds = 3\n";

/// `nap-then-noop` bound to (p, nap) and `one-noop` to (p, o), heartbeats every second.
fn fleet_node(extra: &str) -> TestDaemonBuilder {
    let files = Evidence::new();
    let bound = bindings(&[("p", "nap", "nap-then-noop"), ("p", "o", "one-noop")]);
    TestDaemon::builder()
        .config(&format!(
            "{}\n{FLEET_CONFIG}{extra}",
            exec_config(&[], "", "")
        ))
        .playbooks(&[&files.playbook(NAP_THEN_NOOP), NOOP])
        .bindings(&bound)
}

async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_halt_from_one_node_is_learned_by_the_others_within_a_second_and_cleared_the_same_way()
 {
    let db = Arc::new(TestDb::new().await);
    // A slow heartbeat: only the notification can make the other node learn in time.
    let slow = "[fleet]\nheartbeat_interval_seconds = 30\nstale_after_seconds = 60\n";
    let files = Evidence::new();
    let texts = [files.playbook(NAP_THEN_NOOP)];
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let bound = bindings(&[("p", "nap", "nap-then-noop")]);
    let config = format!("{}\n{slow}", exec_config(&[], "", ""));
    let [a, b] = TestDaemon::builder()
        .on(db.clone())
        .config(&config)
        .playbooks(&texts)
        .bindings(&bound)
        .start_nodes(["node-a", "node-b"])
        .await;

    let no_reason = a
        .control(&json!({"verb": "halt-fleet", "reason": " "}))
        .await;
    assert_eq!(no_reason["status"], "refused", "{no_reason}");
    // Through the operator's client, as an admin would.
    let socket = a.dir.path("run/control.sock").display().to_string();
    let (status, stdout, stderr) = crate::helpers::run_cli(
        &[
            "ctl",
            "--socket",
            &socket,
            "halt",
            "--fleet",
            "--reason",
            "suspected compromise of the engine",
        ],
        &[],
    );
    assert!(status.success(), "{stdout}{stderr}");
    assert_contains(&stdout, "fleet SAFE-HALT");
    let at = Instant::now();
    wait_until(
        "node-b to learn of the fleet halt",
        Duration::from_secs(1),
        async || b.safe_halt.is_active(),
    )
    .await;
    eprintln!("node-b learned of the fleet halt in {:?}", at.elapsed());
    // A new decision is refused on either node.
    let refused = b.send_decision(&decision("p", "nap", json!({}))).await;
    assert_eq!(refused["status"], "rejected", "{refused}");
    assert!(
        refused["reason"].as_str().unwrap().contains("SAFE-HALT"),
        "{refused}"
    );
    // The console of either node shows the fleet banner with the fleet's clear command.
    let page = request(&endpoint(&b), "GET", "/ui/").await.unwrap();
    let html = String::from_utf8(page.body).unwrap();
    assert_contains(&html, "FLEET SAFE-HALT");
    assert_contains(&html, "playbookd ctl halt-resolve --fleet --reason");
    // The fleet halt is not a node's halt: halt-resolve without --fleet clears nothing.
    let wrong = b
        .control(&json!({"verb": "halt-resolve", "reason": "x"}))
        .await;
    assert_eq!(wrong["status"], "error", "{wrong}");
    assert!(b.safe_halt.is_active());

    let cleared = b
        .control(&json!({"verb": "halt-resolve-fleet", "reason": "engine key rotated"}))
        .await;
    assert_eq!(cleared["status"], "ok", "{cleared}");
    let at = Instant::now();
    wait_until(
        "node-a to learn the fleet halt is cleared",
        Duration::from_secs(1),
        async || !a.safe_halt.is_active(),
    )
    .await;
    eprintln!("node-a learned of the clear in {:?}", at.elapsed());
    accepted_id(&a.send_decision(&decision("p", "nap", json!({}))).await);
    // Both are in the audit chains of the nodes whose admins acted.
    let client = db.client().await;
    let events: Vec<(String, String)> = query_pairs(
        &client,
        "SELECT node_id, event_type FROM playbook_audit_log \
             WHERE event_type LIKE 'safe_halt.fleet_%' ORDER BY created_at",
        &[],
    )
    .await;
    assert_eq!(
        events,
        [
            ("node-a".to_owned(), "safe_halt.fleet_entered".to_owned()),
            ("node-b".to_owned(), "safe_halt.fleet_cleared".to_owned())
        ]
    );
    a.stop().await;
    b.stop().await;
}

/// Must show (issue #18, item 1): three daemons on one database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_on_one_database() {
    let db = Arc::new(TestDb::new().await);
    let mut nodes = Vec::from(
        fleet_node("")
            .on(db.clone())
            .start_nodes(["node-a", "node-b", "node-c"])
            .await,
    );

    // /v1/nodes on any node lists all three, alive, each with its own chain head.
    let (status, body) = get(&nodes[0], "/v1/nodes").await;
    assert_eq!(status, 200, "{body}");
    let listed: Vec<&str> = body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["node-a", "node-b", "node-c"]);
    for node in body["nodes"].as_array().unwrap() {
        assert_eq!(node["stale"], false, "{node}");
        assert_eq!(node["safe_halt"], "none", "{node}");
        assert!(node["chain_head"]["seq"].as_i64().unwrap() >= 1, "{node}");
    }
    let (status, one) = get(&nodes[2], "/v1/nodes/node-b").await;
    assert_eq!((status, one["node_id"].as_str()), (200, Some("node-b")));
    let (status, _) = get(&nodes[2], "/v1/nodes/nobody").await;
    assert_eq!(status, 404);
    let (status, _) = get(&nodes[2], "/v1/nodes/bad%20id").await;
    assert_eq!(status, 400);

    // A fleet halt stops all three before their next step.
    let mut runs = Vec::new();
    for node in &nodes {
        let run = accepted_id(&node.send_decision(&decision("p", "nap", json!({}))).await);
        node.wait_event(&run, "step.started", LIMIT).await;
        runs.push(run);
    }
    let halted = nodes[1]
        .control(&json!({"verb": "halt-fleet", "reason": "drill"}))
        .await;
    assert_eq!(halted["status"], "ok", "{halted}");
    // Each node learns of it at once; each run's first step ends, and its second never starts
    // (the run waits out the halt before the step; a start would be refused in its transaction).
    for node in &nodes {
        wait_until(
            &format!("{} to learn of the halt", node.node),
            Duration::from_secs(1),
            async || node.safe_halt.is_active(),
        )
        .await;
    }
    for (node, run) in nodes.iter().zip(&runs) {
        node.wait_event(run, "step.succeeded", LIMIT).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (node, run) in nodes.iter().zip(&runs) {
        assert_eq!(
            node.count_events(run, "step.started").await,
            1,
            "{}",
            node.node
        );
        assert_eq!(node.state(run).await, "running", "{}", node.node);
    }
    // The node list says so once each has beaten again.
    wait_until("every node to report the fleet halt", LIMIT, async || {
        let (_, body) = get(&nodes[0], "/v1/nodes").await;
        body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["safe_halt"] == "fleet")
    })
    .await;
    let cleared = nodes[2]
        .control(&json!({"verb": "halt-resolve-fleet", "reason": "drill over"}))
        .await;
    assert_eq!(cleared["status"], "ok", "{cleared}");
    for (node, run) in nodes.iter().zip(&runs) {
        node.wait_state(run, "completed", LIMIT).await;
    }

    // Per-node halts stay isolated: node-a's own halt stops none of the others.
    insert_halt(&db.client().await, "node", "node-a", "test halt of node-a").await;
    let on_b = accepted_id(&nodes[1].send_decision(&decision("p", "o", json!({}))).await);
    nodes[1].wait_state(&on_b, "completed", LIMIT).await;
    let refused = nodes[0].send_decision(&decision("p", "o", json!({}))).await;
    assert_eq!(refused["status"], "rejected", "{refused}");
    assert!(!nodes[2].safe_halt.is_active());
    let cleared = nodes[0]
        .control(&json!({"verb": "halt-resolve", "reason": "test over"}))
        .await;
    assert_eq!(cleared["status"], "ok", "{cleared}");

    // Each resumes only its own runs after a restart: runs on all three, all stopped, only
    // node-a restarted: it finishes its own and touches none of the others'.
    let mut runs = Vec::new();
    for node in &nodes {
        let run = accepted_id(&node.send_decision(&decision("p", "nap", json!({}))).await);
        node.wait_event(&run, "step.started", LIMIT).await;
        runs.push(run);
    }
    let c = nodes.pop().unwrap();
    let b = nodes.pop().unwrap();
    let a = nodes.pop().unwrap();
    b.stop().await;
    c.stop().await;
    // Where the others' runs stood when their nodes stopped (on a loaded machine a 2 s step may
    // have ended first): node-a must move none of them.
    let mut stopped_at = Vec::new();
    for run in &runs[1..] {
        stopped_at.push(a.state(run).await);
    }
    let a = a.restart().await;
    a.wait_state(&runs[0], "completed", LIMIT).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (run, before) in runs[1..].iter().zip(&stopped_at) {
        let state = a.state(run).await;
        assert_eq!(
            &state, before,
            "another node's run moved from {before} to {state} while its node is down"
        );
    }
    let foreign: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM playbook_audit_log WHERE node_id = 'node-a' \
             AND event_data ->> 'execution_id' = ANY($1)",
            &[&runs[1..].to_vec()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(foreign, 0, "node-a wrote events for another node's runs");

    // /v1/nodes: three nodes, the two stopped ones stale.
    let (_, body) = get(&a, "/v1/nodes").await;
    let stale: Vec<&str> = body["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["stale"] == true)
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(body["nodes"].as_array().unwrap().len(), 3, "{body}");
    assert_eq!(stale, ["node-b", "node-c"], "{body}");
    // So does `playbookd status nodes`.
    let url = endpoint(&a).to_string();
    let (status, stdout, stderr) =
        crate::helpers::run_cli(&["status", "--url", &url, "nodes"], &[]);
    assert!(status.success(), "{stdout}{stderr}");
    assert_contains(&stdout, "3 nodes, 2 stale");
    let line = |node: &str| stdout.lines().find(|l| l.starts_with(node)).unwrap_or("");
    assert!(line("node-a ").contains("alive"), "{stdout}");
    assert!(line("node-b ").contains("stopped"), "{stdout}");
    // The console's node page says the same.
    let page = request(&endpoint(&a), "GET", "/ui/nodes").await.unwrap();
    assert_eq!(page.status, 200);
    let html = String::from_utf8(page.body).unwrap();
    for (node, state) in [
        ("node-a", "alive"),
        ("node-b", "stopped"),
        ("node-c", "stopped"),
    ] {
        assert!(
            html.contains(&format!(r#"<tr id="node-{node}" class="node-{state}">"#)),
            "{node} not {state}:\n{html}"
        );
    }
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_halt_fleet_on_rollback_failure_a_nodes_failed_undo_halts_every_node() {
    let db = Arc::new(TestDb::new().await);
    let slow = "[fleet]\nheartbeat_interval_seconds = 30\nstale_after_seconds = 60\n";
    let bound = bindings(&[("halt", "now", "undo-fails"), ("p", "o", "one-noop")]);
    let texts = [crate::harness::UNDO_FAILS, NOOP];
    let spreading = format!(
        "{}\n{slow}halt_fleet_on_rollback_failure = true\n",
        exec_config(&[], "", "")
    );
    let plain = format!("{}\n{slow}", exec_config(&[], "", ""));
    let node = || {
        TestDaemon::builder()
            .on(db.clone())
            .playbooks(&texts)
            .bindings(&bound)
    };
    let a = node().config(&spreading).node("node-a").start().await;
    let [b, c] = node()
        .config(&plain)
        .start_nodes(["node-b", "node-c"])
        .await;

    // node-b's own failed undo stays on node-b (its key is off).
    let failing = accepted_id(&b.send_decision(&decision("halt", "now", json!({}))).await);
    b.wait_state(&failing, "safe_halted", LIMIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!a.safe_halt.is_active() && !c.safe_halt.is_active());
    let clear = b
        .control(&json!({"verb": "halt-resolve", "reason": "undone by hand"}))
        .await;
    assert_eq!(clear["status"], "ok", "{clear}");

    // node-a's spreads to the whole fleet.
    let failing = accepted_id(&a.send_decision(&decision("halt", "now", json!({}))).await);
    a.wait_state(&failing, "safe_halted", LIMIT).await;
    for node in [&b, &c] {
        wait_until(
            &format!("{} to be halted", node.node),
            Duration::from_secs(2),
            async || node.safe_halt.is_active(),
        )
        .await;
        let refused = node.send_decision(&decision("p", "o", json!({}))).await;
        assert_eq!(refused["status"], "rejected", "{refused}");
    }
    let fleet = db
        .client()
        .await
        .query_one(
            "SELECT node_id, error_message FROM playbook_safe_halt_state WHERE is_active AND scope = 'fleet'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(fleet.get::<_, String>(0), "node-a");
    assert!(
        fleet
            .get::<_, String>(1)
            .contains("SAFE-HALT of node `node-a`"),
        "{}",
        fleet.get::<_, String>(1)
    );
    // Clearing the fleet halt leaves node-a's own halt in force.
    let cleared = c
        .control(&json!({"verb": "halt-resolve-fleet", "reason": "node-a isolated"}))
        .await;
    assert_eq!(cleared["status"], "ok", "{cleared}");
    wait_until(
        "node-b to learn of the clear",
        Duration::from_secs(2),
        async || !b.safe_halt.is_active(),
    )
    .await;
    assert!(
        a.safe_halt.is_active(),
        "node-a's own halt went with the fleet's"
    );
    accepted_id(&b.send_decision(&decision("p", "o", json!({}))).await);
    for node in [a, b, c] {
        node.stop().await;
    }
}
