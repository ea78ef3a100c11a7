//! Crash safety of the real binary: SIGKILL at every step boundary of a multi-step playbook,
//! restart, and check that every execution ends, that each side effect happened exactly once
//! per idempotency key, that no side effect ran without its audit record, and that the audit
//! chain still verifies.
//!
//! The side effect is a counter program (a test fixture, not a playbook: playbooks never get a
//! shell) that records every invocation in `FILE.raw` and appends `KEY TAG` to `FILE` only if
//! that line is not there yet, under a lock. A step re-run after a crash gets the same key, so:
//!   * the `do` keys in `FILE` are exactly the keys of the steps that succeeded (distinct, and
//!     no line twice), the `undo` keys exactly those of the undos that succeeded;
//!   * every raw invocation of a key is preceded by its own `step.started` (or
//!     `rollback.step_started`) audit event: invocations(key) <= started events of that step.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use uuid::Uuid;

use crate::harness::{bindings, decision, try_send_line};
use crate::helpers::{ChildDaemon, DaemonDir, TestDb, audit_cli, query_value};

/// Kills in the test; each kill is followed by a restart. Two rounds of the boundaries: each
/// restart may start a resumed run's undo again, and an undo started more often than its
/// attempts plus the executor's crash-loop cap (25 restarted starts) halts the node by design.
/// With 130 kills a slow machine drove one undo there (28 starts) and the test saw that
/// SAFE-HALT; below the cap, every interruption is one the daemon must absorb.
const KILLS: usize = 2 * BOUNDARIES.len();
/// How long one round waits for its boundary before killing anyway.
const BOUNDARY_WAIT: Duration = Duration::from_secs(4);

/// The moments just after which the daemon is killed: (event type, step id). A decision's
/// admission commits with its first step's start (`decision.accepted` and `step.started` of
/// `one` in one transaction): killing just after it is the second boundary's kill.
const BOUNDARIES: [(&str, Option<&str>); 12] = [
    ("step.started", Some("one")),
    ("step.succeeded", Some("one")),
    ("step.started", Some("two")),
    ("step.succeeded", Some("two")),
    ("step.started", Some("three")),
    ("step.succeeded", Some("three")),
    ("step.failed", Some("three")),
    ("rollback.begin", None),
    ("rollback.step_started", Some("two")),
    ("rollback.step_succeeded", Some("two")),
    ("rollback.step_started", Some("one")),
    ("rollback.step_succeeded", Some("one")),
];

/// `counter FILE TAG [fail]`: one line per invocation in FILE.raw; `KEY TAG` in FILE once.
const COUNTER: &str = r#"#!/bin/sh
set -eu
file=$1
tag=$2
key=${PLAYBOOKD_IDEMPOTENCY_KEY:?no idempotency key}
exec 9>>"$file.lock"
flock 9
printf '%s %s\n' "$key" "$tag" >> "$file.raw"
if [ "${3:-}" = fail ]; then
    echo "asked to fail" >&2
    exit 1
fi
if ! grep -qxF "$key $tag" "$file" 2>/dev/null; then
    printf '%s %s\n' "$key" "$tag" >> "$file"
fi
"#;

/// Steps one, two, three each count once; three fails when the subject says so, and then two
/// and one are undone (each undo counted under its own key).
const COUNTED: &str = r#"
id: counted
version: 1
name: Three counted side effects
owners: {technical: a@example.org, operational: b@example.org}
inputs:
  fail: {type: string}
steps:
  - id: one
    action: exec
    with: {command: COUNTER, args: [EFFECTS, do]}
    risk: low
    timeout: 10s
    rollback: {action: exec, with: {command: COUNTER, args: [EFFECTS, undo]}}
  - id: two
    action: exec
    with: {command: COUNTER, args: [EFFECTS, do]}
    risk: low
    timeout: 10s
    rollback: {action: exec, with: {command: COUNTER, args: [EFFECTS, undo]}}
  - id: three
    action: exec
    with: {command: COUNTER, args: [EFFECTS, do, "{{ subject.fail }}"]}
    risk: low
    timeout: 10s
    rollback: {action: exec, with: {command: COUNTER, args: [EFFECTS, undo]}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_step_boundary_loses_and_repeats_nothing() {
    let db = TestDb::new().await;
    let dir = DaemonDir::new();
    // exec children run as `nobody` (actions.exec.run_as): the counter and its effect files
    // live where they can reach them (not in the daemon's own directory).
    let scratch = crate::helpers::tempdir_with_mode("pbd-crash-", 0o1777);
    let counter = scratch.path().join("counter");
    std::fs::write(&counter, COUNTER).unwrap();
    std::fs::set_permissions(&counter, std::fs::Permissions::from_mode(0o755)).unwrap();
    let effects = scratch.path().join("effects");
    let playbook = COUNTED
        .replace("COUNTER", &counter.display().to_string())
        .replace("EFFECTS", &effects.display().to_string());
    dir.write_signed("playbooks/counted-v1.yaml", &playbook, true);
    dir.write_bindings(&bindings(&[("crash", "run", "counted")]));
    let config = dir.write_config(
        &db,
        "node-crash",
        &format!(
            "[executor]\nresume_interval_seconds = 1\n[actions.exec]\nallowed_commands = [\"{}\"]\n",
            counter.display()
        ),
    );
    let client = db.client().await;
    let socket = dir.path("run/decisions.sock");
    let started = Instant::now();

    let mut expected: HashMap<Uuid, &str> = HashMap::new();
    let mut at_boundary = 0;
    for round in 0..KILLS {
        let (event_type, step_id) = BOUNDARIES[round % BOUNDARIES.len()];
        let mut daemon = ChildDaemon::start(&config, &dir.path(&format!("daemon-{round}.log")));
        daemon.wait_for_log("playbookd ready", Duration::from_secs(20));
        let baseline = head_seq(&client).await;
        // Decisions go out while the boundary is watched, so that the kill lands just after
        // the commit rather than after the reply.
        let socket_for_sender = socket.clone();
        let sender = tokio::spawn(async move {
            let mut replies = Vec::new();
            for fail in ["no", "fail"] {
                let d = decision("crash", "run", json!({"fail": fail}));
                replies.push((
                    fail,
                    try_send_line(&socket_for_sender, d.to_string().as_bytes()).await,
                ));
            }
            replies
        });
        if wait_for_event(&client, baseline, event_type, step_id).await {
            at_boundary += 1;
        }
        daemon.signal(Signal::SIGKILL);
        daemon
            .wait_exit(Duration::from_secs(5))
            .expect("SIGKILL ends the daemon");
        for (fail, reply) in sender.await.unwrap() {
            // A reply cut by the kill is fine: the database says whether it was accepted.
            if let Some(reply) = reply {
                assert_ne!(
                    reply["status"],
                    "rejected",
                    "{reply}\n{}",
                    daemon.log_text()
                );
                if reply["status"] == "accepted" {
                    let id = reply["execution_id"].as_str().unwrap().parse().unwrap();
                    expected.insert(
                        id,
                        if fail == "fail" {
                            "rolled_back"
                        } else {
                            "completed"
                        },
                    );
                }
            }
        }
    }
    let killing = started.elapsed();

    // The last restart: nothing is killed any more, everything must finish.
    let mut daemon = ChildDaemon::start(&config, &dir.path("daemon-final.log"));
    daemon.wait_for_log("playbookd ready", Duration::from_secs(20));
    let executions = wait_all_terminal(&client, Duration::from_secs(60)).await;
    daemon.signal(Signal::SIGTERM);
    daemon.exits_cleanly_within(Duration::from_secs(10));

    for (id, want) in &expected {
        assert_eq!(
            executions.get(id).map(|(state, _)| state.as_str()),
            Some(*want),
            "execution {id} (acknowledged to the client)"
        );
    }
    for (id, (state, fail)) in &executions {
        let want = if fail == "fail" {
            "rolled_back"
        } else {
            "completed"
        };
        assert_eq!(state, want, "execution {id}");
    }

    let counts = check_effects(&client, &effects).await;

    let (status, stdout, stderr) = audit_cli("verify", &config, &[]);
    assert!(status.success(), "audit verify failed:\n{stdout}\n{stderr}");

    // Shown with --nocapture: the figures the report quotes.
    println!(
        "crash test: {KILLS} SIGKILLs ({at_boundary} just after the targeted boundary commit, \
         the rest after {BOUNDARY_WAIT:?} without it) in {killing:?}; {} executions \
         ({} acknowledged); steps: {} succeeded, {} invocations of their keys; undos: {} \
         succeeded, {} invocations; failing steps: {} invocations; audit verify: {}",
        executions.len(),
        expected.len(),
        counts.do_distinct,
        counts.do_raw,
        counts.undo_distinct,
        counts.undo_raw,
        counts.failing_raw,
        stdout.trim()
    );
    assert!(
        at_boundary >= KILLS / 2,
        "only {at_boundary} of {KILLS} kills landed on their boundary"
    );
    assert!(
        counts.do_raw > counts.do_distinct || counts.undo_raw > counts.undo_distinct,
        "no kill ever interrupted a side effect: the test did not exercise a re-run"
    );
}

async fn head_seq(client: &tokio_postgres::Client) -> i64 {
    query_value(
        client,
        "SELECT COALESCE(max(seq), 0) FROM playbook_audit_log",
        &[],
    )
    .await
}

/// Polls (about every millisecond) for an audit row past `baseline` of this type and step.
async fn wait_for_event(
    client: &tokio_postgres::Client,
    baseline: i64,
    event_type: &str,
    step_id: Option<&str>,
) -> bool {
    let statement = client
        .prepare(
            "SELECT 1 FROM playbook_audit_log WHERE seq > $1 AND event_type = $2 \
             AND ($3::text IS NULL OR event_data->>'step_id' = $3) LIMIT 1",
        )
        .await
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < BOUNDARY_WAIT {
        if client
            .query_opt(&statement, &[&baseline, &event_type, &step_id])
            .await
            .unwrap()
            .is_some()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

/// Waits until no execution is left in a non-terminal state; returns id → (state, subject.fail).
async fn wait_all_terminal(
    client: &tokio_postgres::Client,
    limit: Duration,
) -> BTreeMap<Uuid, (String, String)> {
    let start = Instant::now();
    loop {
        let rows = client
            .query(
                "SELECT execution_id, state, subject->>'fail' FROM playbook_executions",
                &[],
            )
            .await
            .unwrap();
        let executions: BTreeMap<Uuid, (String, String)> = rows
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        let open: Vec<_> = executions
            .iter()
            .filter(|(_, (state, _))| {
                ["pending", "running", "awaiting_approval", "rolling_back"]
                    .contains(&state.as_str())
            })
            .collect();
        if open.is_empty() {
            return executions;
        }
        assert!(
            start.elapsed() < limit,
            "{} executions still open after {limit:?}: {open:?}",
            open.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct EffectCounts {
    do_distinct: usize,
    do_raw: usize,
    undo_distinct: usize,
    undo_raw: usize,
    failing_raw: usize,
}

/// Compares the counter files with the step rows and the audit log (see the module docs).
async fn check_effects(client: &tokio_postgres::Client, effects: &Path) -> EffectCounts {
    let lines = read_lines(effects);
    let unique: BTreeSet<&(String, String)> = lines.iter().collect();
    assert_eq!(
        unique.len(),
        lines.len(),
        "a line appears twice in the effects file"
    );
    let raw = read_lines(&effects.with_extension("raw"));
    let mut raw_counts: HashMap<(String, String), usize> = HashMap::new();
    for line in &raw {
        *raw_counts.entry(line.clone()).or_default() += 1;
    }

    // Every step that ever succeeded (it may since have been rolled back), by key.
    let mut succeeded: BTreeSet<String> = BTreeSet::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut step_of: HashMap<String, (Uuid, String)> = HashMap::new();
    for row in client
        .query(
            "SELECT execution_id, step_id, state, idempotency_key FROM playbook_step_runs",
            &[],
        )
        .await
        .unwrap()
    {
        let (id, step, state): (Uuid, String, String) = (row.get(0), row.get(1), row.get(2));
        let key = hex::encode(row.get::<_, Vec<u8>>(3));
        assert_eq!(
            key,
            hex::encode(playbookd::executor::step_key(id, &step)),
            "stored idempotency key of {id}/{step}"
        );
        match state.as_str() {
            "succeeded" | "rolled_back" => succeeded.insert(key.clone()),
            "failed" => failed.insert(key.clone()),
            other => panic!("step {id}/{step} ended {other}"),
        };
        step_of.insert(key, (id, step));
    }
    let mut undone: BTreeSet<String> = BTreeSet::new();
    for row in client
        .query(
            "SELECT r.execution_id, s.step_id, r.state FROM playbook_rollback_states r \
             JOIN playbook_step_runs s USING (execution_id, step_index)",
            &[],
        )
        .await
        .unwrap()
    {
        let (id, step, state): (Uuid, String, String) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(state, "succeeded", "undo of {id}/{step}");
        let key = hex::encode(playbookd::executor::undo_key(id, &step));
        undone.insert(key.clone());
        step_of.insert(key, (id, step));
    }

    let keys_tagged = |tag: &str| -> BTreeSet<String> {
        lines
            .iter()
            .filter(|(_, t)| t == tag)
            .map(|(k, _)| k.clone())
            .collect()
    };
    assert_eq!(
        keys_tagged("do"),
        succeeded,
        "side effects recorded vs steps that succeeded"
    );
    assert_eq!(
        keys_tagged("undo"),
        undone,
        "undo effects recorded vs undos that succeeded"
    );

    // No invocation without its audit record: each one follows a `*started` event of its own.
    let mut started: HashMap<(Uuid, String, String), usize> = HashMap::new();
    for row in client
        .query(
            "SELECT event_data->>'execution_id', event_data->>'step_id', event_type \
             FROM playbook_audit_log WHERE event_type IN ('step.started', 'rollback.step_started')",
            &[],
        )
        .await
        .unwrap()
    {
        let id: String = row.get(0);
        *started
            .entry((id.parse().unwrap(), row.get(1), row.get(2)))
            .or_default() += 1;
    }
    for ((key, tag), invocations) in &raw_counts {
        let (id, step) = step_of
            .get(key)
            .unwrap_or_else(|| panic!("counter ran with key {key} that no step or undo has"));
        let event = if tag == "undo" {
            "rollback.step_started"
        } else {
            "step.started"
        };
        let audited = started
            .get(&(*id, step.clone(), event.to_owned()))
            .copied()
            .unwrap_or(0);
        assert!(
            *invocations <= audited,
            "{id}/{step} ({tag}) ran {invocations} times after only {audited} `{event}` events"
        );
    }
    let raw_of = |keys: &BTreeSet<String>, tag: &str| -> usize {
        keys.iter()
            .map(|k| {
                raw_counts
                    .get(&(k.clone(), tag.to_owned()))
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    };
    EffectCounts {
        do_distinct: succeeded.len(),
        do_raw: raw_of(&succeeded, "do"),
        undo_distinct: undone.len(),
        undo_raw: raw_of(&undone, "undo"),
        failing_raw: raw_of(&failed, "do"),
    }
}

/// `KEY TAG` lines of a counter file (missing file: no lines).
fn read_lines(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let (key, tag) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("malformed counter line {line:?}"));
            (key.to_owned(), tag.to_owned())
        })
        .collect()
}
