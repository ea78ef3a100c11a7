//! The executor end to end: decisions over the real socket, real actions, real database.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    Evidence, NOOP_3, TestDaemon, UNDO_FAILS, accepted_id, bindings, decision, exec_config,
};
use crate::helpers::{assert_contains, query_column, query_pairs, query_value};
use playbookd::store::model::HaltScope;

fn types(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(t, _)| t.as_str()).collect()
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
    let daemon =
        TestDaemon::start("", &[NOOP_3], &bindings(&[("bench.noop", "run", "noop-3")])).await;
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

/// Records with no side effect between them share a transaction (rows of one transaction
/// share `xmin`): a decision with its noop-3 run commits 4 times, not 9 (the admission with
/// the run's start and its first step's), and every step's start still commits before (and
/// apart from) its end.
#[tokio::test]
async fn a_noop_3_run_commits_four_transactions_with_each_start_before_its_action() {
    let daemon =
        TestDaemon::start("", &[NOOP_3], &bindings(&[("bench.noop", "run", "noop-3")])).await;
    let id = accepted_id(
        &daemon
            .send_decision(&decision("bench.noop", "run", json!({})))
            .await,
    );
    assert_eq!(
        daemon.wait_terminal(&id, Duration::from_secs(10)).await,
        "completed"
    );
    let client = daemon.db.client().await;
    let rows: Vec<(String, String, Option<String>)> = client
        .query(
            "SELECT event_type, xmin::text, event_data ->> 'step_id' FROM playbook_audit_log \
             WHERE event_data ->> 'execution_id' = $1 ORDER BY seq",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut last_xmin = None;
    for (event_type, xmin, step) in &rows {
        let label = match step {
            Some(step) => format!("{event_type}:{step}"),
            None => event_type.clone(),
        };
        if last_xmin.as_ref() == Some(xmin) {
            groups.last_mut().unwrap().push(label);
        } else {
            groups.push(vec![label]);
            last_xmin = Some(xmin.clone());
        }
    }
    assert_eq!(
        groups,
        [
            vec![
                "decision.accepted",
                "execution.started",
                "step.started:first"
            ],
            vec!["step.succeeded:first", "step.started:second"],
            vec!["step.succeeded:second", "step.started:third"],
            vec!["step.succeeded:third", "execution.completed"],
        ],
        "{rows:?}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_failure_at_step_three_rolls_back_two_then_one() {
    let daemon = TestDaemon::bound(EXEC_CONFIG, FAILS_AT_THREE).await;
    let id = daemon
        .decide_p_o_ending("rolled_back", Duration::from_secs(10))
        .await;
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
    let states: Vec<String> = query_column(&client, "SELECT state FROM playbook_step_runs WHERE execution_id = $1::text::uuid ORDER BY step_index", &[&id]).await;
    assert_eq!(states, ["rolled_back", "rolled_back", "failed"]);
    daemon.stop().await;
}

#[tokio::test]
async fn a_failed_undo_enters_safe_halt_that_survives_restart_until_resolved() {
    let daemon = TestDaemon::start(
        EXEC_CONFIG,
        &[UNDO_FAILS, NOOP_3],
        &bindings(&[("p", "o", "undo-fails"), ("bench.noop", "run", "noop-3")]),
    )
    .await;
    let id = daemon
        .decide_p_o_ending("safe_halted", Duration::from_secs(20))
        .await;
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
        daemon
            .safe_halt
            .resolve(HaltScope::Node, 0, "  ")
            .await
            .is_err(),
        "a reason is required"
    );
    daemon
        .safe_halt
        .resolve(HaltScope::Node, 0, "undo done by hand")
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
    let resolved: Vec<(i64, String)> = query_pairs(
        &daemon.db.client().await,
        "SELECT resolved_by, reason FROM playbook_safe_halt_state WHERE NOT is_active",
        &[],
    )
    .await;
    assert_eq!(resolved, [(0, "undo done by hand".to_owned())]);
    daemon.stop().await;
}

#[tokio::test]
async fn a_step_timeout_kills_the_child_within_a_second_of_the_deadline() {
    let daemon = TestDaemon::bound(EXEC_CONFIG, SLEEPS).await;
    let started = Instant::now();
    let id = daemon
        .decide_p_o_ending("rolled_back", Duration::from_secs(10))
        .await;
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
    // Only this process's children: other test runs on the machine may run the same playbook.
    let sleepers = std::process::Command::new("pgrep")
        .args([
            "-P",
            &std::process::id().to_string(),
            "-f",
            "^/bin/sleep 60$",
        ])
        .output()
        .unwrap();
    assert!(sleepers.stdout.is_empty(), "sleep 60 still running");
    daemon.stop().await;
}

#[tokio::test]
async fn a_transient_error_is_retried_with_growing_delays() {
    let config = format!("{EXEC_CONFIG}transient_exit_codes = [1]\n");
    let daemon = TestDaemon::bound(&config, FLAKY).await;
    let id = daemon
        .decide_p_o_ending("rolled_back", Duration::from_secs(10))
        .await;
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
    let daemon = TestDaemon::bound("", GATED).await;
    let id = daemon.decide_p_o().await;
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

// ---- hostile bytes, unevaluable conditions, unrecordable outcomes, cancels (#23, #20) ----

/// A daemon running `playbook`, whose `SCRIPT` appends a line to the file it is given: one line
/// per run ([`invocations`] counts them).
async fn daemon_with_counter(files: &Evidence, playbook: &str) -> TestDaemon {
    files
        .daemon_with_script("counter", r#"echo x >> "$1""#, playbook)
        .await
}

/// Makes the database refuse every UPDATE of `table` for which `condition` (on `NEW`) holds:
/// an outcome the daemon cannot record, whatever the reason (here a trigger).
async fn refuse_updates(client: &tokio_postgres::Client, table: &str, condition: &str) {
    client
        .batch_execute(&format!(
            "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF {condition} THEN RAISE EXCEPTION 'not today'; END IF; RETURN NEW; END $$; \
             CREATE TRIGGER refuse_{table} BEFORE UPDATE ON {table} \
               FOR EACH ROW EXECUTE FUNCTION refuse_{table}();"
        ))
        .await
        .unwrap();
}

/// Invocations a counting script recorded (one line each in `FILE`).
fn invocations(files: &Evidence, name: &str) -> usize {
    std::fs::read_to_string(files.path(name))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_undo_failing_with_nul_and_escape_bytes_enters_safe_halt_and_runs_once() {
    let files = Evidence::new();
    let undo = files.script(
        "undo",
        r#"echo x >> "$1"
printf 'undo \000 failed \033[2J\033]0;owned\007 here' >&2
exit 3"#,
    );
    let playbook = files.playbook(&format!(
        r#"
id: hostile-undo
version: 1
name: The undo fails with hostile bytes on stderr
owners: {{technical: a@example.org, operational: b@example.org}}
steps:
  - id: one
    action: exec
    with: {{command: /bin/true}}
    risk: low
    retry: {{attempts: 1, backoff: 100ms}}
    rollback: {{action: exec, with: {{command: {undo}, args: [FILES/undos]}}}}
  - {{id: two, action: exec, with: {{command: /bin/false}}, risk: low, rollback: none}}
"#,
        undo = undo.display()
    ));
    let daemon = TestDaemon::start(
        &exec_config(&[&undo], "", ""),
        &[&playbook, NOOP_3],
        &bindings(&[("p", "o", "hostile-undo"), ("bench.noop", "run", "noop-3")]),
    )
    .await;
    let id = daemon
        .decide_p_o_ending("safe_halted", Duration::from_secs(20))
        .await;
    assert!(daemon.safe_halt.is_active());
    // One undo (its three attempts), never started again by the resume sweep.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(invocations(&files, "undos"), 3);
    let client = daemon.db.client().await;
    let message: String = query_value(
        &client,
        "SELECT error_message FROM playbook_safe_halt_state WHERE is_active",
        &[],
    )
    .await;
    assert_contains(
        &message,
        "undo \\u{0} failed \\u{1b}[2J\\u{1b}]0;owned\\u{7} here",
    );
    assert_contains(&message, "playbookd ctl halt-resolve --reason");
    let undo_error: String = query_value(
        &client,
        "SELECT error FROM playbook_rollback_states WHERE execution_id = $1::text::uuid",
        &[&id],
    )
    .await;
    assert_contains(&undo_error, "\\u{0}");
    let refused = daemon
        .send_decision(&decision("bench.noop", "run", json!({})))
        .await;
    assert_eq!(refused["status"], "rejected", "{refused}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_step_printing_nul_bytes_completes_once_with_its_output_recorded_escaped() {
    let files = Evidence::new();
    let evidence = files.script(
        "evidence",
        r#"echo x >> "$1"
printf 'pid\0001234\000cmdline\033[31m'"#,
    );
    let playbook = format!(
        r#"
id: nul-output
version: 1
name: Collects evidence with NUL bytes in it
owners: {{technical: a@example.org, operational: b@example.org}}
steps:
  - {{id: collect, action: exec, with: {{command: {evidence}, args: [FILES/runs]}}, risk: low, rollback: none}}
  - {{id: after, action: noop, rollback: none}}
"#,
        evidence = evidence.display()
    );
    let daemon = TestDaemon::bound(
        &exec_config(&[&evidence], "", ""),
        &files.playbook(&playbook),
    )
    .await;
    let id = daemon
        .decide_p_o_ending("completed", Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(invocations(&files, "runs"), 1, "run once, never again");
    let client = daemon.db.client().await;
    let output: Value = query_value(&client, "SELECT output FROM playbook_step_runs WHERE execution_id = $1::text::uuid AND step_id = 'collect'", &[&id]).await;
    assert_eq!(
        output["stdout"]["text"], "pid\\u{0}1234\\u{0}cmdline\\u{1b}[31m",
        "{output}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn an_unevaluable_when_fails_the_step_and_rolls_back() {
    let files = Evidence::new();
    let playbook = files.playbook(
        r#"
id: unevaluable
version: 1
name: A condition on an input the decision did not send
owners: {technical: a@example.org, operational: b@example.org}
inputs:
  count: {type: integer, required: false}
steps:
  - id: prepare
    action: exec
    with: {command: /usr/bin/touch, args: [FILES/prepared]}
    risk: low
    rollback: {action: exec, with: {command: /bin/rm, args: ["-f", FILES/prepared]}}
  - id: destroy
    when: "subject.count > 10"
    action: exec
    with: {command: /usr/bin/touch, args: [FILES/destroyed]}
    risk: low
    rollback: none
"#,
    );
    let daemon = TestDaemon::bound(&exec_config(&[], "", ""), &playbook).await;
    let id = daemon
        .decide_p_o_ending("rolled_back", Duration::from_secs(20))
        .await;
    assert!(
        !files.exists("destroyed"),
        "the step after the condition ran"
    );
    assert!(!files.exists("prepared"), "the first step was not undone");
    let client = daemon.db.client().await;
    let row = client
        .query_one(
            "SELECT state, error FROM playbook_step_runs WHERE execution_id = $1::text::uuid AND step_id = 'destroy'",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    assert!(
        row.get::<_, String>(1).contains("could not be evaluated"),
        "{}",
        row.get::<_, String>(1)
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_step_whose_outcome_cannot_be_recorded_is_not_run_again_and_again() {
    let files = Evidence::new();
    let daemon = daemon_with_counter(
        &files,
        r#"
id: unrecordable
version: 1
name: Its success cannot be written
owners: {technical: a@example.org, operational: b@example.org}
steps:
  - id: stubborn
    action: exec
    with: {command: SCRIPT, args: [FILES/runs]}
    risk: low
    rollback: {action: exec, with: {command: SCRIPT, args: [FILES/undos]}}
"#,
    )
    .await;
    // The database refuses to record this step's success (whatever the reason: here a
    // trigger); everything else is recorded.
    let client = daemon.db.client().await;
    refuse_updates(
        &client,
        "playbook_step_runs",
        "NEW.step_id = 'stubborn' AND NEW.state = 'succeeded'",
    )
    .await;
    let id = daemon
        .decide_p_o_ending("rolled_back", Duration::from_secs(30))
        .await;
    assert_eq!(
        invocations(&files, "runs"),
        3,
        "started three times without a recorded outcome, then no more"
    );
    assert_eq!(invocations(&files, "undos"), 1, "possibly done: undone");
    let error: String = query_value(
        &client,
        "SELECT error FROM playbook_step_runs WHERE execution_id = $1::text::uuid",
        &[&id],
    )
    .await;
    assert_contains(&error, "without its outcome being recorded");
    daemon.stop().await;
}

#[tokio::test]
async fn a_cancel_during_a_long_exec_step_undoes_what_the_step_did() {
    let files = Evidence::new();
    let slow = files.script("slow", r#"touch "$1"; exec sleep 30"#);
    let playbook = format!(
        r#"
id: slow-create
version: 1
name: Creates a file, then takes its time
owners: {{technical: a@example.org, operational: b@example.org}}
steps:
  - id: create
    action: exec
    with: {{command: {slow}, args: [FILES/created]}}
    risk: low
    timeout: 1m
    rollback: {{action: exec, with: {{command: /bin/rm, args: ["-f", FILES/created]}}}}
"#,
        slow = slow.display()
    );
    let daemon =
        TestDaemon::bound(&exec_config(&[&slow], "", ""), &files.playbook(&playbook)).await;
    let id = daemon.decide_p_o().await;
    let start = Instant::now();
    while !files.exists("created") {
        assert!(start.elapsed() < Duration::from_secs(10), "never created");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancel = daemon
        .control(&json!({"verb": "cancel", "execution_id": id, "reason": "false positive"}))
        .await;
    assert_eq!(cancel["status"], "ok", "{cancel}");
    assert_eq!(
        daemon.wait_terminal(&id, Duration::from_secs(20)).await,
        "cancelled"
    );
    assert!(
        !files.exists("created"),
        "the cancelled step's effect stayed"
    );
    let client = daemon.db.client().await;
    let row = client
        .query_one(
            "SELECT s.state, s.error_class, r.state FROM playbook_step_runs s \
             JOIN playbook_rollback_states r USING (execution_id, step_index) \
             WHERE s.execution_id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "rolled_back");
    assert_eq!(row.get::<_, String>(1), "cancelled");
    assert_eq!(row.get::<_, String>(2), "succeeded");
    daemon.stop().await;
}

#[tokio::test]
async fn an_undo_whose_outcome_cannot_be_recorded_ends_in_safe_halt_not_in_a_loop() {
    let files = Evidence::new();
    let daemon = daemon_with_counter(
        &files,
        r#"
id: unrecordable-undo
version: 1
name: Its undo's success cannot be written
owners: {technical: a@example.org, operational: b@example.org}
steps:
  - id: one
    action: exec
    with: {command: /bin/true}
    risk: low
    rollback: {action: exec, with: {command: SCRIPT, args: [FILES/undos]}}
  - {id: two, action: exec, with: {command: /bin/false}, risk: low, rollback: none}
"#,
    )
    .await;
    let client = daemon.db.client().await;
    refuse_updates(
        &client,
        "playbook_rollback_states",
        "NEW.state = 'succeeded'",
    )
    .await;
    daemon
        .decide_p_o_ending("safe_halted", Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(invocations(&files, "undos"), 3, "then never again");
    let halt = daemon.safe_halt.active().expect("halted");
    assert_contains(&halt.message, "without its outcome being recorded");
    daemon.stop().await;
}
