//! SAFE-HALT at the point of no return, through the real daemon and its sockets: whatever path
//! leads to an action (an approved gate, a retry after its backoff, a run between its steps, a
//! run resumed after a restart, the rollback of another run), nothing starts once the halt is
//! committed, and the run goes on as documented once an admin clears it. Every action here
//! would create (or an undo would remove) a file: the file is the evidence.
//!
//! Also: what votes and cancels do while halted, and two nodes on one database, each with its
//! own halt and its own runs.

use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::harness::{
    Evidence, GATED_NOOP, TestDaemon, UNDO_FAILS, accepted_id, bindings, decision, exec_config,
};
use crate::helpers::{assert_contains, insert_unnotified_fleet_halt, query_column};

const LIMIT: Duration = Duration::from_secs(20);

/// Sends a decision for `undo-fails` and waits until the daemon is in SAFE-HALT because of it.
async fn enter_halt(daemon: &TestDaemon) -> String {
    let mut d = decision("halt", "now", json!({}));
    d["org_id"] = json!("other");
    let id = accepted_id(&daemon.send_decision(&d).await);
    daemon.wait_state(&id, "safe_halted", LIMIT).await;
    assert!(daemon.safe_halt.is_active());
    id
}

async fn clear_halt(daemon: &TestDaemon) {
    let reply = daemon
        .control(&json!({"verb": "halt-resolve", "reason": "undone by hand"}))
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    assert_eq!(reply["safe_halt"], "cleared");
}

/// Waits for the `nth` (1-based) `event_type` of the run.
async fn wait_count(daemon: &TestDaemon, id: &str, event_type: &str, nth: usize) {
    let start = std::time::Instant::now();
    while daemon.count_events(id, event_type).await < nth {
        assert!(
            start.elapsed() < LIMIT,
            "fewer than {nth} `{event_type}` for {id}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

const SLOW_TOUCH: &str = r#"
id: slow-touch
version: 1
name: Waits, then creates a file
owners: {technical: a@example.org, operational: b@example.org}
steps:
  - {id: wait, action: exec, with: {command: /bin/sleep, args: ["2"]}, risk: low, rollback: none}
  - id: touch
    action: exec
    with: {command: /usr/bin/touch, args: [FILES/touched]}
    risk: low
    rollback: {action: exec, with: {command: /bin/rm, args: ["-f", FILES/touched]}}
"#;

/// A run between its steps when the halt commits: its next step does not start.
async fn start_between_steps(files: &Evidence) -> (TestDaemon, String) {
    let daemon = halting(&exec_config(&[], "", ""), files, SLOW_TOUCH).await;
    let run = daemon.decide_p_o().await;
    daemon.wait_event(&run, "step.started", LIMIT).await;
    enter_halt(&daemon).await;
    (daemon, run)
}

/// The run's first step has ended and its second has not started: it waits at the halt.
async fn assert_waits_before_second_step(daemon: &TestDaemon, run: &str, files: &Evidence) {
    daemon.wait_event(run, "step.succeeded", LIMIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!files.exists("touched"), "the step ran during SAFE-HALT");
    assert_eq!(daemon.count_events(run, "step.started").await, 1);
    assert_eq!(daemon.state(run).await, "running");
}

/// Clears the halt: the run then completes, and its step leaves `touched`.
async fn clear_then_touched(daemon: &TestDaemon, files: &Evidence, run: &str) {
    clear_halt(daemon).await;
    daemon.wait_state(run, "completed", LIMIT).await;
    assert!(files.exists("touched"));
}

/// A daemon that can be halted (`undo-fails` bound to (halt, now)) with `playbook` (FILES
/// replaced by `files`' directory) bound to (p, o), under `config`.
async fn halting(config: &str, files: &Evidence, playbook: &str) -> TestDaemon {
    let text = files.playbook(playbook);
    let id = playbookd::registry::playbook::parse_playbook(text.as_bytes())
        .expect("playbook parses")
        .id;
    let bound = bindings(&[("halt", "now", "undo-fails"), ("p", "o", &id)]);
    TestDaemon::start(config, &[UNDO_FAILS, &text], &bound).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_between_steps_does_not_start_its_next_step_during_safe_halt() {
    let files = Evidence::new();
    let (daemon, run) = start_between_steps(&files).await;
    assert_waits_before_second_step(&daemon, &run, &files).await;

    // Nothing new is accepted either, and the refusal says how the halt is cleared.
    let reply = daemon.send_decision(&decision("p", "o", json!({}))).await;
    let reason = reply["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("safe_halt") && reason.contains("playbookd ctl halt-resolve --reason"),
        "{reply}"
    );

    clear_then_touched(&daemon, &files, &run).await;
    assert_eq!(daemon.count_events(&run, "step.started").await, 2);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_resumed_after_a_restart_does_not_act_during_safe_halt() {
    let files = Evidence::new();
    let (daemon, run) = start_between_steps(&files).await;
    assert_waits_before_second_step(&daemon, &run, &files).await;
    let daemon = daemon.restart().await;
    assert!(
        daemon.safe_halt.is_active(),
        "the halt survives the restart"
    );
    // The resumed run meets the halt again before the same step, and stops there.
    assert_waits_before_second_step(&daemon, &run, &files).await;

    clear_then_touched(&daemon, &files, &run).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waiting_in_its_backoff_does_not_start_during_safe_halt() {
    let files = Evidence::new();
    // Fails (transiently) the first time, creates the file the second.
    let flaky = files.script(
        "flaky",
        r#"if [ -e "$1.marker" ]; then touch "$1"; exit 0; fi
touch "$1.marker"; exit 1"#,
    );
    let playbook = format!(
        r#"
id: flaky-touch
version: 1
name: Retried after a transient failure
owners: {{technical: a@example.org, operational: b@example.org}}
steps:
  - id: touch
    action: exec
    with: {{command: {flaky}, args: [FILES/touched]}}
    risk: low
    retry: {{attempts: 2, backoff: 3s}}
    rollback: none
"#,
        flaky = flaky.display()
    );
    let daemon = halting(
        &exec_config(&[&flaky], "", "transient_exit_codes = [1]"),
        &files,
        &playbook,
    )
    .await;
    let run = daemon.decide_p_o().await;
    daemon.wait_event(&run, "step.retry", LIMIT).await;
    enter_halt(&daemon).await;
    daemon
        .wait_event(&run, "step.start_refused", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!files.exists("touched"), "the retry ran during SAFE-HALT");
    assert_eq!(daemon.count_events(&run, "step.started").await, 1);

    clear_then_touched(&daemon, &files, &run).await;
    assert_eq!(daemon.count_events(&run, "step.started").await, 2);
    daemon.stop().await;
}

const GATED_TOUCH: &str = r#"
id: gated-touch
version: 1
name: Creates a file once approved
owners: {technical: a@example.org, operational: b@example.org}
approval: {expires: 5m}
steps:
  - id: touch
    action: exec
    with: {command: /usr/bin/touch, args: [FILES/touched]}
    risk: high
    rollback: none
"#;

const SLEEPER: &str = r#"
id: sleeper
version: 1
name: Holds its org's only slot for a while
owners: {technical: a@example.org, operational: b@example.org}
steps:
  - {id: nap, action: exec, with: {command: /bin/sleep, args: ["4"]}, risk: low, rollback: none}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_gate_does_not_start_its_step_during_safe_halt() {
    let files = Evidence::new();
    // One run at a time per org: the approved run waits for the slot the sleeper holds, and the
    // halt commits meanwhile (the halter runs in another org).
    let daemon = TestDaemon::start(
        &exec_config(&[], "max_runs_per_org = 1", ""),
        &[UNDO_FAILS, SLEEPER, &files.playbook(GATED_TOUCH)],
        &bindings(&[
            ("halt", "now", "undo-fails"),
            ("p", "gated", "gated-touch"),
            ("p", "sleep", "sleeper"),
        ]),
    )
    .await;
    let run = accepted_id(
        &daemon
            .send_decision(&decision("p", "gated", json!({})))
            .await,
    );
    daemon.wait_state(&run, "awaiting_approval", LIMIT).await;
    let sleeper = accepted_id(
        &daemon
            .send_decision(&decision("p", "sleep", json!({})))
            .await,
    );
    daemon.wait_event(&sleeper, "step.started", LIMIT).await;
    let approved = daemon
        .control(
            &json!({"verb": "approve", "execution_id": run, "step": "touch", "reason": "checked"}),
        )
        .await;
    assert_eq!(approved["gate_state"], "approved", "{approved}");
    enter_halt(&daemon).await;
    assert!(
        daemon.count_events(&run, "step.started").await == 0,
        "the approved step started before the halt: the test did not wait where it meant to"
    );

    daemon.wait_state(&sleeper, "completed", LIMIT).await;
    daemon
        .wait_event(&run, "step.start_refused", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !files.exists("touched"),
        "the approved step ran during SAFE-HALT"
    );

    clear_then_touched(&daemon, &files, &run).await;
    daemon.stop().await;
}

/// Prepares a file (undone by removing it), then a high-risk step that creates another.
const PREPARED_GATE: &str = r#"
id: prepared-gate
version: 1
name: Prepares, then waits for approval
owners: {technical: a@example.org, operational: b@example.org}
approval: {expires: 5m}
inputs:
  name: {type: string}
steps:
  - id: prepare
    action: exec
    with: {command: /usr/bin/touch, args: ["FILES/{{ subject.name }}.prepared"]}
    risk: low
    rollback: {action: exec, with: {command: /bin/rm, args: ["-f", "FILES/{{ subject.name }}.prepared"]}}
  - id: contain
    action: exec
    with: {command: /usr/bin/touch, args: ["FILES/{{ subject.name }}.contained"]}
    risk: high
    rollback: none
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_safe_halt_an_approval_is_refused_and_denied_or_expired_runs_undos_wait_for_the_clear()
 {
    let files = Evidence::new();
    let daemon = halting(&exec_config(&[], "", ""), &files, PREPARED_GATE).await;
    let first = accepted_id(
        &daemon
            .send_decision(&decision("p", "o", json!({"name": "first"})))
            .await,
    );
    let second = accepted_id(
        &daemon
            .send_decision(&decision("p", "o", json!({"name": "second"})))
            .await,
    );
    let third = accepted_id(
        &daemon
            .send_decision(&decision("p", "o", json!({"name": "third"})))
            .await,
    );
    daemon.wait_state(&first, "awaiting_approval", LIMIT).await;
    daemon.wait_state(&second, "awaiting_approval", LIMIT).await;
    daemon.wait_state(&third, "awaiting_approval", LIMIT).await;
    enter_halt(&daemon).await;

    // A gate that expires during the halt: the run rolls back, its undo waits too.
    let client = daemon.db.client().await;
    client
        .execute(
            "UPDATE playbook_approval_gates SET expires_at = now() - interval '1 second' \
             WHERE execution_id = $1::text::uuid",
            &[&third],
        )
        .await
        .unwrap();

    // An approval would fire the moment the halt is cleared: refused, naming the command.
    let approve = daemon
        .control(&json!({"verb": "approve", "execution_id": first, "step": "contain", "reason": "looks fine"}))
        .await;
    assert_eq!(approve["status"], "refused", "{approve}");
    let reason = approve["reason"].as_str().unwrap();
    assert_contains(reason, "safe_halt");
    assert_contains(reason, "playbookd ctl halt-resolve");
    // A deny stops a run: recorded, and the run rolls back, but its undo (an action) waits.
    let deny = daemon
        .control(&json!({"verb": "deny", "execution_id": second, "step": "contain", "reason": "wrong host"}))
        .await;
    assert_eq!(deny["gate_state"], "denied", "{deny}");
    daemon
        .wait_event(&second, "rollback.step_start_refused", LIMIT)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        files.exists("second.prepared"),
        "the undo ran during SAFE-HALT"
    );
    assert_eq!(daemon.state(&second).await, "rolling_back");
    assert!(!files.exists("first.contained"));
    daemon
        .wait_event(&third, "rollback.step_start_refused", LIMIT)
        .await;
    assert!(
        files.exists("third.prepared"),
        "the undo ran during SAFE-HALT"
    );

    clear_halt(&daemon).await;
    daemon.wait_state(&second, "rejected", LIMIT).await;
    daemon.wait_state(&third, "rejected", LIMIT).await;
    assert!(!files.exists("second.prepared"), "undone once cleared");
    assert!(!files.exists("third.prepared"), "undone once cleared");
    let approve = daemon
        .control(&json!({"verb": "approve", "execution_id": first, "step": "contain", "reason": "looks fine"}))
        .await;
    assert_eq!(approve["gate_state"], "approved", "{approve}");
    daemon.wait_state(&first, "completed", LIMIT).await;
    assert!(files.exists("first.contained"));
    daemon.stop().await;
}

const TOUCH_THEN_SLEEP: &str = r#"
id: touch-then-sleep
version: 1
name: Creates a file, then takes its time
owners: {technical: a@example.org, operational: b@example.org}
steps:
  - id: touch
    action: exec
    with: {command: /usr/bin/touch, args: [FILES/touched]}
    risk: low
    rollback: {action: exec, with: {command: /bin/rm, args: ["-f", FILES/touched]}}
  - {id: nap, action: exec, with: {command: /bin/sleep, args: ["30"]}, risk: low, rollback: none}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollback_of_another_run_does_not_undo_anything_during_safe_halt() {
    let files = Evidence::new();
    let daemon = halting(&exec_config(&[], "", ""), &files, TOUCH_THEN_SLEEP).await;
    let run = daemon.decide_p_o().await;
    wait_count(&daemon, &run, "step.started", 2).await;
    assert!(files.exists("touched"));
    enter_halt(&daemon).await;

    // A cancel during the halt is recorded (it stops a run); its undos wait for the clear.
    let cancel = daemon
        .control(&json!({"verb": "cancel", "execution_id": run, "reason": "contained elsewhere"}))
        .await;
    assert_eq!(cancel["status"], "ok", "{cancel}");
    daemon
        .wait_event(&run, "rollback.step_start_refused", LIMIT)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(files.exists("touched"), "an undo ran during SAFE-HALT");
    assert_eq!(daemon.state(&run).await, "rolling_back");

    clear_halt(&daemon).await;
    daemon.wait_state(&run, "cancelled", LIMIT).await;
    assert!(!files.exists("touched"), "undone once cleared");
    daemon.stop().await;
}

// ---- two nodes on one database ----

async fn two_nodes(files: &Evidence, playbooks: &[&str]) -> (TestDaemon, TestDaemon) {
    let texts: Vec<String> = playbooks.iter().map(|p| files.playbook(p)).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let bound = bindings(&[
        ("halt", "now", "undo-fails"),
        ("p", "o", "touch-then-sleep"),
        ("p", "gated", "gated-noop"),
    ]);
    let [a, b] = TestDaemon::builder()
        .config(&exec_config(&[], "", ""))
        .playbooks(&texts)
        .bindings(&bound)
        .start_nodes(["node-a", "node-b"])
        .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_has_its_own_safe_halt_and_clears_only_its_own() {
    let files = Evidence::new();
    let (a, b) = two_nodes(&files, &[UNDO_FAILS, TOUCH_THEN_SLEEP, GATED_NOOP]).await;
    enter_halt(&a).await;
    assert!(!b.safe_halt.is_active(), "a halt on node-a halted node-b");
    let on_b = accepted_id(&b.send_decision(&decision("p", "gated", json!({}))).await);
    b.wait_state(&on_b, "awaiting_approval", LIMIT).await;

    enter_halt(&b).await;
    clear_halt(&a).await;
    assert!(!a.safe_halt.is_active());
    assert!(b.safe_halt.is_active(), "clearing node-a cleared node-b");
    // The database agrees: only node-b's halt is active.
    let active: Vec<String> = query_column(
        &a.db.client().await,
        "SELECT node_id FROM playbook_safe_halt_state WHERE is_active",
        &[],
    )
    .await;
    assert_eq!(active, ["node-b"]);

    // Each keeps its own across a restart, whatever the other cleared.
    let b = b.restart().await;
    assert!(b.safe_halt.is_active(), "node-b came back un-halted");
    let a = a.restart().await;
    assert!(!a.safe_halt.is_active());
    // node-a cannot clear node-b's halt: it has none of its own.
    let again = a
        .control(&json!({"verb": "halt-resolve", "reason": "not mine"}))
        .await;
    assert_eq!(again["status"], "error", "{again}");
    assert!(b.safe_halt.is_active());
    clear_halt(&b).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_another_nodes_run_is_refused_naming_the_owner_and_runs_nothing() {
    let files = Evidence::new();
    let (a, b) = two_nodes(&files, &[UNDO_FAILS, TOUCH_THEN_SLEEP, GATED_NOOP]).await;
    let run = accepted_id(&a.send_decision(&decision("p", "o", json!({}))).await);
    wait_count(&a, &run, "step.started", 2).await;
    assert!(files.exists("touched"));

    let cancel = b
        .control(&json!({"verb": "cancel", "execution_id": run, "reason": "wrong node"}))
        .await;
    assert_eq!(cancel["status"], "refused", "{cancel}");
    assert!(
        cancel["reason"].as_str().unwrap().contains("node `node-a`"),
        "{cancel}"
    );
    let gated = accepted_id(&a.send_decision(&decision("p", "gated", json!({}))).await);
    a.wait_state(&gated, "awaiting_approval", LIMIT).await;
    let vote = b
        .control(&json!({"verb": "approve", "execution_id": gated, "step": "act", "reason": "wrong node"}))
        .await;
    assert_eq!(vote["status"], "refused", "{vote}");
    assert!(
        vote["reason"].as_str().unwrap().contains("node `node-a`"),
        "{vote}"
    );
    let pending = b.control(&json!({"verb": "pending"})).await;
    assert_eq!(pending["pending"], json!([]), "node-b lists node-a's gates");

    // Nothing of it happened anywhere: the run goes on on node-a, node-b wrote no rollback.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(files.exists("touched"), "node-b undid node-a's step");
    assert_eq!(a.state(&run).await, "running");
    let client = a.db.client().await;
    let on_b: i64 = client
        .query_one(
            "SELECT count(*) FROM playbook_audit_log WHERE node_id = 'node-b' \
             AND event_type LIKE 'rollback.%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(on_b, 0);
    a.stop().await;
    b.stop().await;
}

// ---- re-verification of what is resumed ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_whose_stored_bytes_were_altered_enters_safe_halt_instead_of_acting() {
    let files = Evidence::new();
    let daemon = TestDaemon::start(
        &exec_config(&[], "", ""),
        &[&files.playbook(GATED_TOUCH)],
        &bindings(&[("p", "gated", "gated-touch")]),
    )
    .await;
    let run = accepted_id(
        &daemon
            .send_decision(&decision("p", "gated", json!({})))
            .await,
    );
    daemon.wait_state(&run, "awaiting_approval", LIMIT).await;
    // Whoever can write the database rewrites the stored version (and, so that the hash
    // matches, the hash beside it and the run's pin): only the stored signatures can tell.
    let client = daemon.db.client().await;
    let forged = files.playbook(&GATED_TOUCH.replace("FILES/touched", "FILES/forged"));
    assert_ne!(forged, files.playbook(GATED_TOUCH));
    let sha: Vec<u8> = Sha256::digest(forged.as_bytes()).to_vec();
    client
        .execute(
            "UPDATE playbook_versions SET content = $1, sha256 = $2 WHERE playbook_id = 'gated-touch'",
            &[&forged.as_bytes(), &sha],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE playbook_executions SET playbook_sha256 = $1 WHERE playbook_id = 'gated-touch'",
            &[&sha],
        )
        .await
        .unwrap();
    let daemon = daemon.restart_without_playbooks().await;
    daemon.wait_state(&run, "safe_halted", LIMIT).await;
    assert!(daemon.safe_halt.is_active());
    let halt = daemon.safe_halt.active().unwrap();
    assert!(
        halt.message.contains("gated-touch@1") && halt.message.contains("no longer verifies"),
        "{}",
        halt.message
    );
    assert_contains(&halt.message, "playbookd ctl halt-resolve");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!files.exists("forged") && !files.exists("touched"));
    assert_eq!(daemon.count_events(&run, "step.started").await, 0);
    daemon.stop().await;
}

/// The shape ready for the fleet work: a fleet-wide halt row (as `ctl halt --fleet` will write
/// it) is read by the very transactions that admit a decision and start a step, although this
/// node never had it in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_wide_halt_in_the_database_is_enforced_at_the_point_of_no_return() {
    let files = Evidence::new();
    // A slow heartbeat and no notification (below): the halt is known only in the database,
    // so what stops the step is the check in its start transaction.
    let daemon = halting(
        &format!(
            "{}\n[fleet]\nheartbeat_interval_seconds = 120\nstale_after_seconds = 300\n",
            exec_config(&[], "", "")
        ),
        &files,
        SLOW_TOUCH,
    )
    .await;
    let run = daemon.decide_p_o().await;
    daemon.wait_event(&run, "step.started", LIMIT).await;
    let client = daemon.db.client().await;
    insert_unnotified_fleet_halt(&client, "fleet halt for the test").await;
    assert!(!daemon.safe_halt.is_active(), "not known in memory");

    let refused = daemon.wait_event(&run, "step.start_refused", LIMIT).await;
    assert_eq!(refused["halt_scope"], "fleet");
    assert_eq!(
        refused["clear_with"],
        "playbookd ctl halt-resolve --fleet --reason …"
    );
    let reply = daemon.send_decision(&decision("p", "o", json!({}))).await;
    assert!(
        reply["reason"]
            .as_str()
            .unwrap()
            .starts_with("safe_halt: the fleet is in SAFE-HALT"),
        "{reply}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!files.exists("touched"), "the step ran during a fleet halt");

    // Cleared with its notification, as `ctl halt-resolve --fleet` does.
    client
        .batch_execute(
            "ALTER TABLE playbook_safe_halt_state ENABLE TRIGGER playbook_safe_halt_state_notify",
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE playbook_safe_halt_state SET is_active = false, resolved_at = now(), \
             resolved_by = 0, reason = 'test over' WHERE scope = 'fleet'",
            &[],
        )
        .await
        .unwrap();
    daemon.wait_state(&run, "completed", LIMIT).await;
    assert!(files.exists("touched"));
    daemon.stop().await;
}

/// Recording a failed undo can fail for reasons other than content (here a trigger stands for
/// any refusal): the daemon halts in memory at once, nothing starts meanwhile, and the halt
/// is written as soon as the database takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_that_cannot_be_written_yet_still_stops_everything_and_is_written_later() {
    let files = Evidence::new();
    let daemon = halting(&exec_config(&[], "", ""), &files, SLOW_TOUCH).await;
    let client = daemon.db.client().await;
    client
        .batch_execute(
            "CREATE FUNCTION refuse_halts() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'database refuses halts for now'; END $$; \
             CREATE TRIGGER refuse_halts BEFORE INSERT ON playbook_safe_halt_state \
               FOR EACH ROW EXECUTE FUNCTION refuse_halts();",
        )
        .await
        .unwrap();
    let run = daemon.decide_p_o().await;
    daemon.wait_event(&run, "step.started", LIMIT).await;
    let mut d = decision("halt", "now", json!({}));
    d["org_id"] = json!("other");
    let halter = accepted_id(&daemon.send_decision(&d).await);
    let start = std::time::Instant::now();
    while !daemon.safe_halt.is_active() {
        assert!(start.elapsed() < LIMIT, "no SAFE-HALT in memory");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let halt = daemon.safe_halt.active().unwrap();
    assert_eq!(halt.halt_id, None, "written although the database refuses");
    let reply = daemon.send_decision(&decision("p", "o", json!({}))).await;
    let reason = reply["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("safe_halt") && reason.contains("not yet written"),
        "{reply}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    client
        .batch_execute("DROP TRIGGER refuse_halts ON playbook_safe_halt_state")
        .await
        .unwrap();
    daemon.wait_state(&halter, "safe_halted", LIMIT).await;
    let start = std::time::Instant::now();
    while daemon.safe_halt.active().and_then(|h| h.halt_id).is_none() {
        assert!(start.elapsed() < LIMIT, "the halt is never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The other run waited through all of it.
    daemon.wait_event(&run, "step.succeeded", LIMIT).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !files.exists("touched"),
        "a step ran during the unwritten halt"
    );

    clear_then_touched(&daemon, &files, &run).await;
    daemon.stop().await;
}
