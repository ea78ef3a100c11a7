//! The executor end to end: decisions over the real socket, real actions, real database.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{NOOP_3, Running, bindings, decision};

fn types(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(t, _)| t.as_str()).collect()
}

fn accepted_id(reply: &Value) -> String {
    assert_eq!(reply["status"], "accepted", "{reply}");
    reply["execution_id"].as_str().unwrap().to_owned()
}

/// Steps `one`, `two` succeed (undone by `exec /bin/true`), `three` fails.
const FAILS_AT_THREE: &str = r#"
id: fails-at-three
version: 1
name: Fails at the third step
owners: {technical: a@example.org, operational: b@example.org}
steps:
  - {id: one, action: noop, rollback: {action: noop}}
  - {id: two, action: noop, rollback: {action: noop}}
  - {id: three, action: exec, with: {command: /bin/false}, risk: low, rollback: none}
"#;

const UNDO_FAILS: &str = r#"
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

const SLEEPS: &str = r#"
id: sleeps
version: 1
name: A step that outlives its timeout
owners: {technical: a@example.org, operational: b@example.org}
steps:
  - {id: nap, action: exec, with: {command: /bin/sleep, args: ["60"]}, timeout: 1s, risk: low, rollback: none}
"#;

const FLAKY: &str = r#"
id: flaky
version: 1
name: A transient failure, retried
owners: {technical: a@example.org, operational: b@example.org}
steps:
  - id: try
    action: exec
    with: {command: /bin/false}
    risk: low
    retry: {attempts: 3, backoff: 200ms}
    rollback: none
"#;

const EXEC_CONFIG: &str = r#"
[actions.exec]
allowed_commands = ["/bin/true", "/bin/false", "/bin/sleep"]
"#;

#[tokio::test]
async fn happy_path_runs_every_step_once_in_order() {
    let daemon = Running::start("", &[NOOP_3], &bindings(&[("bench.noop", "run", "noop-3")])).await;
    let reply = daemon
        .send_decision(&decision("bench.noop", "run", json!({})))
        .await;
    let id = accepted_id(&reply);
    assert_eq!(reply["playbook"], "noop-3@1");
    assert_eq!(
        daemon.wait_terminal(&id, Duration::from_secs(10)).await,
        "completed"
    );
    let events = daemon.events(&id).await;
    let steps: Vec<_> = events
        .iter()
        .filter(|(t, _)| t == "step.succeeded")
        .map(|(_, d)| d["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["first", "second", "third"]);
    assert_eq!(types(&events).first(), Some(&"decision.accepted"));
    assert_eq!(types(&events).last(), Some(&"execution.completed"));
    daemon.stop().await;
}

#[tokio::test]
async fn a_failure_at_step_three_rolls_back_two_then_one() {
    let daemon = Running::start(
        EXEC_CONFIG,
        &[FAILS_AT_THREE],
        &bindings(&[("p", "o", "fails-at-three")]),
    )
    .await;
    let id = accepted_id(&daemon.send_decision(&decision("p", "o", json!({}))).await);
    assert_eq!(
        daemon.wait_terminal(&id, Duration::from_secs(10)).await,
        "rolled_back"
    );
    let events = daemon.events(&id).await;
    let undone: Vec<_> = events
        .iter()
        .filter(|(t, _)| t == "rollback.step_succeeded")
        .map(|(_, d)| d["step_id"].as_str().unwrap())
        .collect();
    assert_eq!(undone, ["two", "one"], "reverse order");
    let failed = events.iter().position(|(t, _)| t == "step.failed").unwrap();
    let began = events
        .iter()
        .position(|(t, _)| t == "rollback.begin")
        .unwrap();
    assert!(failed < began);
    let client = daemon.db.client().await;
    let states: Vec<String> = client
        .query(
            "SELECT state FROM playbook_step_runs WHERE execution_id = $1::text::uuid ORDER BY step_index",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(states, ["rolled_back", "rolled_back", "failed"]);
    daemon.stop().await;
}

#[tokio::test]
async fn a_failed_undo_enters_safe_halt_that_survives_restart_until_resolved() {
    let daemon = Running::start(
        EXEC_CONFIG,
        &[UNDO_FAILS, NOOP_3],
        &bindings(&[("p", "o", "undo-fails"), ("bench.noop", "run", "noop-3")]),
    )
    .await;
    let id = accepted_id(&daemon.send_decision(&decision("p", "o", json!({}))).await);
    assert_eq!(
        daemon.wait_terminal(&id, Duration::from_secs(20)).await,
        "safe_halted"
    );
    assert!(daemon.safe_halt.is_active());
    let events = daemon.events(&id).await;
    assert!(
        types(&events).contains(&"safe_halt.entered"),
        "{:?}",
        types(&events)
    );

    let refused = daemon
        .send_decision(&decision("bench.noop", "run", json!({})))
        .await;
    assert_eq!(refused["status"], "rejected");
    assert!(
        refused["reason"].as_str().unwrap().starts_with("safe_halt"),
        "{refused}"
    );

    let daemon = daemon.restart().await;
    assert!(daemon.safe_halt.is_active(), "the halt is persisted");
    let refused = daemon
        .send_decision(&decision("bench.noop", "run", json!({})))
        .await;
    assert_eq!(refused["status"], "rejected", "{refused}");

    assert!(
        daemon.safe_halt.resolve(0, "  ").await.is_err(),
        "a reason is required"
    );
    daemon
        .safe_halt
        .resolve(0, "undo done by hand")
        .await
        .unwrap();
    let reply = daemon
        .send_decision(&decision("bench.noop", "run", json!({})))
        .await;
    let id = accepted_id(&reply);
    assert_eq!(
        daemon.wait_terminal(&id, Duration::from_secs(10)).await,
        "completed"
    );
    let client = daemon.db.client().await;
    let row = client
        .query_one(
            "SELECT resolved_by, reason FROM playbook_safe_halt_state WHERE NOT is_active",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    assert_eq!(row.get::<_, String>(1), "undo done by hand");
    daemon.stop().await;
}

#[tokio::test]
async fn a_step_timeout_kills_the_child_within_a_second_of_the_deadline() {
    let daemon = Running::start(EXEC_CONFIG, &[SLEEPS], &bindings(&[("p", "o", "sleeps")])).await;
    let started = Instant::now();
    let id = accepted_id(&daemon.send_decision(&decision("p", "o", json!({}))).await);
    assert_eq!(
        daemon.wait_terminal(&id, Duration::from_secs(10)).await,
        "rolled_back"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let client = daemon.db.client().await;
    let row = client
        .query_one(
            "SELECT error_class, error FROM playbook_step_runs WHERE execution_id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    let class: String = row.get(0);
    assert!(class == "timeout" || class == "transient", "{class}");
    let sleepers = std::process::Command::new("pgrep")
        .args(["-f", "^/bin/sleep 60$"])
        .output()
        .unwrap();
    assert!(sleepers.stdout.is_empty(), "sleep 60 still running");
    daemon.stop().await;
}

#[tokio::test]
async fn a_transient_error_is_retried_with_growing_delays() {
    let config = format!("{EXEC_CONFIG}transient_exit_codes = [1]\n");
    let daemon = Running::start(&config, &[FLAKY], &bindings(&[("p", "o", "flaky")])).await;
    let id = accepted_id(&daemon.send_decision(&decision("p", "o", json!({}))).await);
    assert_eq!(
        daemon.wait_terminal(&id, Duration::from_secs(10)).await,
        "rolled_back"
    );
    let events = daemon.events(&id).await;
    let delays: Vec<u64> = events
        .iter()
        .filter(|(t, _)| t == "step.retry")
        .map(|(_, d)| d["retry_in_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(delays.len(), 2, "3 attempts = 2 retries");
    assert!(
        delays[0] >= 200 && delays[1] >= 400 && delays[1] > delays[0],
        "{delays:?}"
    );
    let attempts = events.iter().filter(|(t, _)| t == "step.started").count();
    assert_eq!(attempts, 3);
    daemon.stop().await;
}

const GATED: &str = r#"
id: gated
version: 1
name: One high-risk step behind a gate
owners: {technical: a@example.org, operational: b@example.org}
approval: {expires: 1m}
steps:
  - {id: act, action: noop, risk: high, rollback: none}
"#;

#[tokio::test]
async fn a_gate_near_expiry_is_escalated_before_it_expires() {
    let daemon = Running::start("", &[GATED], &bindings(&[("p", "o", "gated")])).await;
    let id = accepted_id(&daemon.send_decision(&decision("p", "o", json!({}))).await);
    let client = daemon.db.client().await;
    let started = Instant::now();
    while client
        .query_opt(
            "SELECT 1 FROM playbook_approval_gates WHERE execution_id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no gate opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = daemon.events(&id).await;
    assert!(
        !types(&events).contains(&"approval.escalated"),
        "not yet: a minute is left"
    );
    // Less than a fifth of the gate's minute left: the next re-read escalates.
    client
        .execute(
            "UPDATE playbook_approval_gates SET expires_at = now() + interval '9 seconds' \
             WHERE execution_id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let events = daemon.events(&id).await;
        if types(&events).contains(&"approval.escalated") {
            assert!(
                !types(&events).contains(&"approval.expired"),
                "escalated before expiry"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "no escalation: {:?}",
            types(&events)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.stop().await;
}
