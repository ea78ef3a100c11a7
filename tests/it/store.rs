//! The store's state machines against the real database: the migration's transition table is
//! the code's, the database refuses illegal changes even from the daemon's own role, and
//! arbitrary bytes in everything a step can produce are recorded and read back.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use playbookd::store::StoreError;
use playbookd::store::audit::{self, AppendError, AuditEvent, AuditHandle};
use playbookd::store::executions::{self, BindingRecord, NewExecution};
use playbookd::store::halts::{self, HaltCause, HaltWatch};
use playbookd::store::joint;
use playbookd::store::model::{
    ErrorClass, HaltScope, RollbackCause, RunState, Severity, StepState,
};
use playbookd::store::steps::{self, StartOutcome, StepEnd, StepEndRecord, StepStart};
use playbookd::store::transitions::{RUN_TRANSITIONS, STEP_TRANSITIONS};
use playbookd::store::undos;
use playbookd::store::versions::{self, NewVersion};
use playbookd::text;

use crate::helpers::{OwnerRoleDb, TestDb, assert_contains, query_value};

const NODE: &str = "node-store";
const PLAYBOOK: &str = "id: store-test\nversion: 1\n";

/// Tries every change of state (and every same-state write) against the triggers of migration
/// V11 (the guard function that replaced V5's WHEN arrays) and compares what the database
/// allows with `src/store/transitions.rs`: a change is allowed exactly when the table lists it;
/// a write that keeps the state is allowed exactly when the state is not terminal.
#[tokio::test]
async fn the_databases_transition_rules_are_the_codes() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    client
        .execute(
            "INSERT INTO playbook_versions (playbook_id, version, sha256, signer_key_ids, content, first_seen) \
             VALUES ('p', 1, sha256('x'), ARRAY['k'], 'x', now())",
            &[],
        )
        .await
        .unwrap();
    let mut differences = Vec::new();
    for from in RunState::ALL {
        let id = Uuid::new_v4();
        client
            .execute(
                "INSERT INTO playbook_executions (execution_id, node_id, playbook_id, playbook_version, \
                   playbook_sha256, state, nonce, policy_decision_id, policy, outcome, org_id, severity, \
                   subject, requested_by_uid, started_at, updated_at) \
                 VALUES ($1, 'n', 'p', 1, sha256('x'), $2, $3, 'd', 'p', 'o', 'acme', 'high', '{}', 0, now(), now())",
                &[&id, &from.as_str(), &id.to_string()],
            )
            .await
            .unwrap();
        for to in RunState::ALL {
            let allowed = try_update(&mut client, "playbook_executions", id, to.as_str()).await;
            let expected = if from == to {
                !from.is_terminal()
            } else {
                RUN_TRANSITIONS.contains(&(*from, *to))
            };
            if allowed != expected {
                differences.push(format!("run {from} -> {to}: database allows {allowed}"));
            }
        }
    }
    let run = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO playbook_executions (execution_id, node_id, playbook_id, playbook_version, \
               playbook_sha256, state, nonce, policy_decision_id, policy, outcome, org_id, severity, \
               subject, requested_by_uid, started_at, updated_at) \
             VALUES ($1, 'n', 'p', 1, sha256('x'), 'running', $2, 'd', 'p', 'o', 'acme', 'high', '{}', 0, now(), now())",
            &[&run, &run.to_string()],
        )
        .await
        .unwrap();
    for (index, from) in (0i32..).zip(StepState::ALL) {
        client
            .execute(
                "INSERT INTO playbook_step_runs (execution_id, step_index, step_id, action, state, idempotency_key) \
                 VALUES ($1, $2, $3, 'noop', $4, sha256('k'))",
                &[&run, &index, &format!("s{index}"), &from.as_str()],
            )
            .await
            .unwrap();
        for to in StepState::ALL {
            let tx = client.transaction().await.unwrap();
            let allowed = tx
                .execute(
                    "UPDATE playbook_step_runs SET state = $3 WHERE execution_id = $1 AND step_index = $2",
                    &[&run, &index, &to.as_str()],
                )
                .await
                .is_ok();
            tx.rollback().await.unwrap();
            let expected = if from == to {
                !playbookd::store::transitions::step_is_terminal(*from)
            } else {
                STEP_TRANSITIONS.contains(&(*from, *to))
            };
            if allowed != expected {
                differences.push(format!("step {from} -> {to}: database allows {allowed}"));
            }
        }
    }
    assert!(
        differences.is_empty(),
        "migration V11 and src/store/transitions.rs differ: {differences:#?}"
    );
}

/// Whether the database lets run `id` be set to `state` (rolled back either way).
async fn try_update(
    client: &mut tokio_postgres::Client,
    table: &str,
    id: Uuid,
    state: &str,
) -> bool {
    let tx = client.transaction().await.unwrap();
    let allowed = tx
        .execute(
            &format!("UPDATE {table} SET state = $2 WHERE execution_id = $1"),
            &[&id, &state],
        )
        .await
        .is_ok();
    tx.rollback().await.unwrap();
    allowed
}

#[tokio::test]
async fn illegal_transitions_are_refused_by_the_database_even_for_the_daemons_role() {
    let db = OwnerRoleDb::new().await;
    let shutdown = CancellationToken::new();
    let (audit, _task) = audit::start_writer(db.config.clone(), NODE.into(), shutdown.clone())
        .await
        .unwrap();
    let watch = HaltWatch::new(None);
    record_version(&audit).await;

    // A run that completed through the store, step by step.
    let done = admit(&audit, &watch).await;
    started(&audit, done).await;
    start_step(&audit, &watch, done, 0).await;
    end_step(&audit, done, 0, StepEnd::Succeeded { output: json!({}) })
        .await
        .unwrap();
    executions::set_state(
        &audit,
        done,
        RunState::Completed,
        AuditEvent::new("execution.completed", audit::Actor::System),
    )
    .await
    .unwrap();
    // And one still pending.
    let pending = admit(&audit, &watch).await;

    let client = db.client().await;
    let mut outcomes = Vec::new();
    for (what, statement, id) in [
        (
            "terminal run back to running",
            "UPDATE playbook_executions SET state = 'running' WHERE execution_id = $1",
            done,
        ),
        (
            "any change to a terminal run",
            "UPDATE playbook_executions SET end_reason = 'rewritten' WHERE execution_id = $1",
            done,
        ),
        (
            "a succeeded step back to running",
            "UPDATE playbook_step_runs SET state = 'running' WHERE execution_id = $1",
            done,
        ),
        (
            "a pending run straight to completed",
            "UPDATE playbook_executions SET state = 'completed' WHERE execution_id = $1",
            pending,
        ),
        (
            "a pending run to an unknown state",
            "UPDATE playbook_executions SET state = 'paused' WHERE execution_id = $1",
            pending,
        ),
    ] {
        let outcome = client.execute(statement, &[&id]).await;
        outcomes.push(match outcome {
            Ok(rows) => format!("{what}: allowed ({rows} rows)"),
            Err(error) => format!(
                "{what}: refused: {}",
                error.as_db_error().map_or("", |e| e.message())
            ),
        });
    }
    for line in &outcomes {
        assert!(line.contains("refused"), "{outcomes:#?}");
    }
    assert_contains(
        &outcomes[0],
        "run state change completed -> running is not allowed",
    );
    assert_contains(&outcomes[1], "run state completed is terminal");
    assert_contains(&outcomes[2], "succeeded -> running");
    // A legal change by hand is still possible (the trigger is not a blanket refusal).
    client
        .execute(
            "UPDATE playbook_executions SET state = 'running' WHERE execution_id = $1",
            &[&pending],
        )
        .await
        .expect("pending → running is in the table");

    // The same through the store: a guarded change from a state the table does not allow is
    // refused inside the audit transaction, naming the state found.
    let refused = executions::set_state(
        &audit,
        done,
        RunState::Running,
        AuditEvent::new("execution.started", audit::Actor::System),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&refused, AppendError::Effect(StoreError::Transition { from, .. }) if from == "completed"),
        "{refused:?}"
    );
    shutdown.cancel();
}

/// A run's start written by its first step's start (`steps::record_first_start_after`: one
/// UPDATE of the run instead of two) changes and records what the two records apart do
/// (`executions::set_state`, then `steps::record_start`): when the step starts, when the run may
/// not start, and when a SAFE-HALT refuses the step (known only to the database, or in memory
/// too), the run then started all the same.
#[tokio::test]
async fn a_runs_start_written_with_its_first_steps_is_the_two_records_apart() {
    let (db, audit, shutdown) = writer_with_version().await;
    let client = db.client().await;
    let no_halt = HaltWatch::new(None);
    // Admitted before the halt below, which refuses admissions; a pair each: apart, together.
    let mut pairs = Vec::new();
    for _ in 0..4 {
        pairs.push([admit(&audit, &no_halt).await, admit(&audit, &no_halt).await]);
    }
    let [started, ended, halted, halted_in_memory] = [pairs[0], pairs[1], pairs[2], pairs[3]];

    let written = both_ways(&audit, &client, &no_halt, started).await;
    assert_eq!(written[0].1, written[1].1);
    assert!(
        matches!(written[1].0, Ok(StartOutcome::Started)),
        "{written:?}"
    );
    let run = &written[1].1;
    assert_eq!(event_types(run), ["execution.started", "step.started"]);
    assert_eq!((run.state.as_str(), run.current_step), ("running", Some(0)));
    assert_eq!(run.steps, [(0, "running".to_owned(), 1)]);

    for id in ended {
        client
            .execute(
                "UPDATE playbook_executions SET state = 'rolling_back' WHERE execution_id = $1",
                &[&id],
            )
            .await
            .unwrap();
    }
    let written = both_ways(&audit, &client, &no_halt, ended).await;
    assert_eq!(written[0].1, written[1].1);
    for (outcome, run) in &written {
        assert!(
            matches!(outcome, Err(AppendError::Effect(StoreError::Transition { from, .. })) if from == "rolling_back"),
            "{outcome:?}"
        );
        assert!(run.events.is_empty() && run.steps.is_empty(), "{run:?}");
    }

    crate::helpers::insert_unnotified_fleet_halt(&client, "fleet halt for the test").await;
    let in_memory = HaltWatch::new(halts::active_in(&client, NODE).await.unwrap());
    for (watch, pair) in [(&no_halt, halted), (&in_memory, halted_in_memory)] {
        let written = both_ways(&audit, &client, watch, pair).await;
        assert_eq!(written[0].1, written[1].1);
        assert!(
            matches!(written[1].0, Ok(StartOutcome::Refused(_))),
            "{written:?}"
        );
        let run = &written[1].1;
        assert_eq!(
            event_types(run),
            ["execution.started", "step.start_refused"]
        );
        assert_eq!((run.state.as_str(), run.current_step), ("running", None));
        assert!(run.steps.is_empty(), "{run:?}");
    }
    shutdown.cancel();
}

#[test]
fn arbitrary_bytes_in_everything_a_step_produces_are_stored_and_read_back() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (db, audit, shutdown) = runtime.block_on(writer_with_version());
    let watch = HaltWatch::new(None);
    let mut runner = TestRunner::new(Config {
        cases: 40,
        failure_persistence: None,
        ..Config::default()
    });
    let texts = (
        hostile_text(),
        hostile_text(),
        hostile_text(),
        hostile_text(),
    );
    runner
        .run(&texts, |(output, error, undo_error, halt_reason)| {
            runtime.block_on(async {
                record_and_read_back(&db, &audit, &watch, output, error, undo_error, halt_reason)
                    .await;
            });
            Ok(())
        })
        .unwrap();
    shutdown.cancel();
    drop(runtime);
}

/// One case: every text a step can produce goes in; what comes back is exactly the storable
/// form of it, and nothing failed.
async fn record_and_read_back(
    db: &TestDb,
    audit: &AuditHandle,
    watch: &HaltWatch,
    output: String,
    error: String,
    undo_error: String,
    halt_reason: String,
) {
    let id = admit(audit, watch).await;
    started(audit, id).await;
    start_step(audit, watch, id, 0).await;
    let produced = json!({"stdout": {"text": output}, output.clone(): 1});
    end_step(
        audit,
        id,
        0,
        StepEnd::Succeeded {
            output: produced.clone(),
        },
    )
    .await
    .expect("a step's output is always recorded");
    start_step(audit, watch, id, 1).await;
    end_step(
        audit,
        id,
        1,
        StepEnd::Failed {
            class: ErrorClass::Transient,
            error: error.clone(),
        },
    )
    .await
    .expect("a step's error is always recorded");
    joint::begin_rollback(audit, id, RollbackCause::Failed, error.clone())
        .await
        .expect("the rollback reason is always recorded");
    let undo = undos::record_start(audit, id, 0, "s0".into(), watch)
        .await
        .unwrap();
    assert_eq!(undo, StartOutcome::Started);
    let halt = joint::enter_safe_halt(
        audit,
        HaltCause::FailedUndo {
            execution_id: id,
            step_index: 0,
            step_id: "s0".into(),
            error: undo_error.clone(),
        },
    )
    .await
    .expect("a failed undo always enters SAFE-HALT");
    halts::resolve(audit, HaltScope::Node, 0, "case done")
        .await
        .unwrap();

    // A halt for a run that cannot be continued, with an arbitrary reason.
    let other = admit(audit, watch).await;
    let unusable = joint::enter_safe_halt(
        audit,
        HaltCause::UnusableRun {
            execution_id: other,
            reason: halt_reason.clone(),
        },
    )
    .await
    .expect("a halt is always entered");
    halts::resolve(audit, HaltScope::Node, 0, "case done")
        .await
        .unwrap();

    let client = db.client().await;
    let output: Value = query_value(
        &client,
        "SELECT output FROM playbook_step_runs WHERE execution_id = $1 AND step_index = 0",
        &[&id],
    )
    .await;
    assert_eq!(output, steps::storable_output(produced));
    let row = client
        .query_one(
            "SELECT error, error_class, state FROM playbook_step_runs WHERE execution_id = $1 AND step_index = 1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        text::storable(&error, text::MAX_FIELD_BYTES)
    );
    assert_eq!(row.get::<_, String>(1), "transient");
    assert_eq!(row.get::<_, String>(2), StepState::Failed.as_str());
    let undo_stored: String = query_value(
        &client,
        "SELECT error FROM playbook_rollback_states WHERE execution_id = $1 AND step_index = 0",
        &[&id],
    )
    .await;
    assert_eq!(
        undo_stored,
        text::storable(&undo_error, text::MAX_FIELD_BYTES)
    );
    for (halt, execution) in [(&halt, id), (&unusable, other)] {
        let row = client
            .query_one(
                "SELECT error_message, is_active FROM playbook_safe_halt_state WHERE halt_id = $1",
                &[&halt.halt_id.unwrap()],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), halt.message);
        assert!(!row.get::<_, bool>(1));
        assert_eq!(
            crate::harness::run_state(&client, execution).await,
            "safe_halted"
        );
    }
    assert!(
        halt.message.contains("halt-resolve") && text::is_storable(&halt.message, 16 * 1024),
        "{}",
        halt.message
    );
    // Read back through the store's decoders too.
    let store = playbookd::store::Store::connect(&db.config, 1, Duration::from_secs(5))
        .await
        .unwrap();
    let loaded = steps::load(&store, id).await.unwrap();
    assert_eq!(loaded[&0].state, StepState::RollbackFailed);
    assert_eq!(loaded[&1].error_class, Some(ErrorClass::Transient));
}

/// Text as hostile as a process can print: arbitrary bytes (lossily decoded, as actions do),
/// any Unicode, NUL and escape sequences, and long runs.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512)
            .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        any::<String>(),
        "[\\x00\\x1b\\x7f\\u{202e}\\u{200b}a-z\\[\\]]{0,64}",
        (any::<u8>(), 5_000usize..20_000)
            .prop_map(|(byte, len)| String::from_utf8_lossy(&vec![byte; len]).into_owned()),
    ]
}

/// A test database with this node's audit writer on it and the test playbook's version
/// recorded; cancel the token to stop the writer.
async fn writer_with_version() -> (TestDb, AuditHandle, CancellationToken) {
    let db = TestDb::new().await;
    let shutdown = CancellationToken::new();
    let (audit, _task) = audit::start_writer(db.config.clone(), NODE.into(), shutdown.clone())
        .await
        .unwrap();
    record_version(&audit).await;
    (db, audit, shutdown)
}

async fn record_version(audit: &AuditHandle) {
    let sha256: [u8; 32] = Sha256::digest(PLAYBOOK).into();
    let new = NewVersion {
        playbook_id: "store-test".into(),
        version: 1,
        sha256,
        signer_key_ids: vec!["a".repeat(64)],
        signatures: vec![("a".repeat(64), vec![1; 64])],
        content: PLAYBOOK.as_bytes().to_vec(),
    };
    audit
        .append_with(Box::new(move |tx| {
            let new = new.clone();
            Box::pin(async move {
                let recorded = versions::check_and_record(tx, &new).await?;
                assert_eq!(recorded, Ok(true));
                Ok((AuditEvent::new("playbook.loaded", audit::Actor::System), ()))
            })
        }))
        .await
        .unwrap();
}

async fn admit(audit: &AuditHandle, watch: &HaltWatch) -> Uuid {
    let new = new_execution(Uuid::new_v4().simple().to_string());
    let id = new.execution_id;
    executions::admit(audit, new, watch).await.unwrap();
    id
}

/// A run of the test playbook to admit with `nonce`.
fn new_execution(nonce: String) -> NewExecution {
    let sha256: [u8; 32] = Sha256::digest(PLAYBOOK).into();
    NewExecution {
        execution_id: Uuid::new_v4(),
        playbook_id: "store-test".into(),
        version: 1,
        sha256,
        nonce,
        decision_id: "d-1".into(),
        policy: "p".into(),
        outcome: "o".into(),
        org_id: "acme".into(),
        severity: Severity::High,
        subject: serde_json::Map::new(),
        requested_by_uid: 0,
        binding: BindingRecord {
            policy: "p".into(),
            outcome: "o".into(),
            org_id: None,
            playbook: "store-test".into(),
            require_approval: false,
        },
        ignored_subject_keys: Vec::new(),
    }
}

/// A run's admission written with its start and its first step's start
/// (`steps::record_admission_and_first_start`: one statement, the run never `pending`) writes
/// and records what the admission followed by `steps::record_first_start_after` does; a used
/// nonce or a SAFE-HALT known only to the database refuses the admission, and nothing of the
/// run is written.
#[tokio::test]
async fn a_runs_admission_written_with_its_first_steps_start_is_the_records_apart() {
    let (db, audit, shutdown) = writer_with_version().await;
    let client = db.client().await;
    let no_halt = HaltWatch::new(None);
    let started = || AuditEvent::new("execution.started", audit::Actor::System);

    let apart = admit(&audit, &no_halt).await;
    let outcome = steps::record_first_start_after(
        &audit,
        Vec::new(),
        started(),
        step_start(apart, 0),
        &no_halt,
    )
    .await
    .unwrap();
    assert_eq!(outcome, StartOutcome::Started);

    let nonce = Uuid::new_v4().simple().to_string();
    let executions::Admission {
        record,
        ahead,
        admitted,
    } = executions::prepare_admit(&audit, new_execution(nonce.clone()), &no_halt);
    let together = record.id;
    let outcome =
        steps::record_admission_and_first_start(&audit, ahead, started(), step_start(together, 0))
            .await
            .unwrap();
    assert_eq!(outcome, StartOutcome::Started);
    admitted.outcome().await.unwrap();
    let written = run_written(&client, together).await;
    assert_eq!(written, run_written(&client, apart).await);
    assert_eq!(
        (written.state.as_str(), written.current_step),
        ("running", Some(0))
    );
    assert_eq!(event_types(&written), ["execution.started", "step.started"]);
    let first_event: String = query_value(
        &client,
        "SELECT event_type FROM playbook_audit_log WHERE event_data ->> 'execution_id' = $1 \
         ORDER BY seq LIMIT 1",
        &[&together.to_string()],
    )
    .await;
    assert_eq!(first_event, "decision.accepted");

    // The same nonce again: refused as a replay, nothing of the second run written.
    let (admitted, written) = refused_with_first_start(&audit, &client, nonce).await;
    assert!(
        matches!(admitted, Err(executions::AdmitError::Replay(_))),
        "{admitted:?}"
    );
    assert_eq!(written, 0);

    // A SAFE-HALT the writer knows only from the database: nothing written either.
    crate::helpers::insert_unnotified_fleet_halt(&client, "fleet halt for the test").await;
    let nonce = Uuid::new_v4().simple().to_string();
    let (admitted, written) = refused_with_first_start(&audit, &client, nonce).await;
    assert!(
        matches!(admitted, Err(executions::AdmitError::Halted(_))),
        "{admitted:?}"
    );
    assert_eq!(written, 0);
    shutdown.cancel();
}

/// A run admitted with `nonce` and its first step's start as one request
/// (`steps::record_admission_and_first_start`), expected to be refused: the admission's outcome
/// and the rows written for the run (its row, its steps, its nonce).
async fn refused_with_first_start(
    audit: &AuditHandle,
    client: &tokio_postgres::Client,
    nonce: String,
) -> (Result<(), executions::AdmitError>, i64) {
    let admission = executions::prepare_admit(audit, new_execution(nonce), &HaltWatch::new(None));
    let id = admission.record.id;
    let started = AuditEvent::new("execution.started", audit::Actor::System);
    let refused =
        steps::record_admission_and_first_start(audit, admission.ahead, started, step_start(id, 0))
            .await;
    assert!(refused.is_err(), "{refused:?}");
    let written = query_value(
        client,
        "SELECT (SELECT count(*) FROM playbook_executions WHERE execution_id = $1) \
              + (SELECT count(*) FROM playbook_step_runs WHERE execution_id = $1) \
              + (SELECT count(*) FROM playbook_nonces WHERE execution_id = $1)",
        &[&id],
    )
    .await;
    (admission.admitted.outcome().await, written)
}

/// The start of run `id` with its first step `s0`: the run's start and the step's as two records
/// apart, or `together` as one request whose one statement writes both.
async fn first_start(
    audit: &AuditHandle,
    watch: &HaltWatch,
    id: Uuid,
    together: bool,
) -> Result<StartOutcome, AppendError> {
    let started = AuditEvent::new("execution.started", audit::Actor::System);
    let start = StepStart {
        execution_id: id,
        index: 0,
        step_id: "s0".into(),
        action: "exec".into(),
        attempt: 1,
        idempotency_key: steps::step_key(id, "s0"),
        params_sha256: [0; 32],
    };
    if together {
        return steps::record_first_start_after(audit, Vec::new(), started, start, watch).await;
    }
    executions::set_state(audit, id, RunState::Running, started).await?;
    steps::record_start(audit, start, watch).await
}

/// The first start of `pair[0]` apart and of `pair[1]` together ([`first_start`]), each with
/// what its run then holds.
async fn both_ways(
    audit: &AuditHandle,
    client: &tokio_postgres::Client,
    watch: &HaltWatch,
    pair: [Uuid; 2],
) -> Vec<(Result<StartOutcome, AppendError>, RunWritten)> {
    let mut written = Vec::new();
    for (id, together) in pair.into_iter().zip([false, true]) {
        let outcome = first_start(audit, watch, id, together).await;
        written.push((outcome, run_written(client, id).await));
    }
    written
}

fn event_types(run: &RunWritten) -> Vec<&str> {
    run.events.iter().map(|(kind, _)| kind.as_str()).collect()
}

/// What run `id` holds after its admission, with its id left out.
#[derive(Debug, PartialEq)]
struct RunWritten {
    state: String,
    current_step: Option<i32>,
    /// (index, state, attempts)
    steps: Vec<(i32, String, i32)>,
    /// The records after `decision.accepted`, in chain order, without `execution_id`.
    events: Vec<(String, Value)>,
}

async fn run_written(client: &tokio_postgres::Client, id: Uuid) -> RunWritten {
    let run = client
        .query_one(
            "SELECT state, current_step FROM playbook_executions WHERE execution_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let steps = client
        .query(
            "SELECT step_index, state, attempts FROM playbook_step_runs WHERE execution_id = $1 \
             ORDER BY step_index",
            &[&id],
        )
        .await
        .unwrap();
    let events = client
        .query(
            "SELECT event_type, event_data - 'execution_id' FROM playbook_audit_log \
             WHERE event_data ->> 'execution_id' = $1 AND event_type <> 'decision.accepted' \
             ORDER BY seq",
            &[&id.to_string()],
        )
        .await
        .unwrap();
    RunWritten {
        state: run.get(0),
        current_step: run.get(1),
        steps: steps
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect(),
        events: events.iter().map(|row| (row.get(0), row.get(1))).collect(),
    }
}

async fn started(audit: &AuditHandle, id: Uuid) {
    executions::set_state(
        audit,
        id,
        RunState::Running,
        AuditEvent::new("execution.started", audit::Actor::System),
    )
    .await
    .unwrap();
}

async fn start_step(audit: &AuditHandle, watch: &HaltWatch, id: Uuid, index: usize) {
    let outcome = steps::record_start(audit, step_start(id, index), watch)
        .await
        .unwrap();
    assert_eq!(outcome, StartOutcome::Started);
}

/// The first attempt of step `s{index}` of run `id`.
fn step_start(id: Uuid, index: usize) -> StepStart {
    let step_id = format!("s{index}");
    StepStart {
        execution_id: id,
        index,
        idempotency_key: steps::step_key(id, &step_id),
        step_id,
        action: "exec".into(),
        attempt: 1,
        params_sha256: [0; 32],
    }
}

async fn end_step(
    audit: &AuditHandle,
    id: Uuid,
    index: usize,
    end: StepEnd,
) -> Result<(), AppendError> {
    steps::record_end(
        audit,
        StepEndRecord {
            execution_id: id,
            index,
            step_id: format!("s{index}"),
            action: "exec".into(),
            end,
        },
    )
    .await
}

/// Issue #16: the rows that the runs of one batch write at the same moment (their steps' ends,
/// their next steps' starts with the runs, the runs' completions) are one statement per kind
/// (`audit::SetRow`): rows written by one statement share its transaction and command id
/// (`xmin`, `cmin`). Each row keeps its own guard: in a batch where one step's end is refused,
/// the attempt is rolled back and written one by one; the other ends commit, each by a
/// statement of its own, and the refused one is answered with its transition error.
#[tokio::test]
async fn the_rows_a_batchs_runs_write_at_once_are_one_statement_each_row_guarded() {
    let (db, audit, shutdown) = writer_with_version().await;
    let client = db.client().await;
    let no_halt = HaltWatch::new(None);
    let mut runs = Vec::new();
    for _ in 0..6 {
        let id = admit(&audit, &no_halt).await;
        started(&audit, id).await;
        start_step(&audit, &no_halt, id, 0).await;
        runs.push(id);
    }
    let succeeded = || StepEnd::Succeeded { output: json!({}) };
    let (audit, no_halt) = (&audit, &no_halt);

    let ended = in_one_batch(
        audit,
        runs.iter().map(|&id| end_step(audit, id, 0, succeeded())),
    )
    .await;
    assert!(ended.iter().all(Result::is_ok), "{ended:?}");
    let steps = written_by(&client, "playbook_step_runs", &runs, "step_index = 0").await;
    assert!(
        steps.iter().all(|(state, _)| state == "succeeded"),
        "{steps:?}"
    );
    assert_eq!(distinct(&steps), 1, "six ends, one statement: {steps:?}");

    let outcomes = in_one_batch(
        audit,
        runs.iter()
            .map(|&id| steps::record_start(audit, step_start(id, 1), no_halt)),
    )
    .await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Ok(StartOutcome::Started))),
        "{outcomes:?}"
    );
    let steps = written_by(&client, "playbook_step_runs", &runs, "step_index = 1").await;
    let moved = written_by(&client, "playbook_executions", &runs, "current_step = 1").await;
    assert!(
        steps.iter().all(|(state, _)| state == "running"),
        "{steps:?}"
    );
    assert_eq!(moved.len(), 6, "{moved:?}");
    assert_eq!(distinct(&steps), 1, "six starts, one statement: {steps:?}");
    assert_eq!(
        distinct(&moved),
        1,
        "six runs moved, one statement: {moved:?}"
    );

    // Run 5 ends a step that never started: refused by its own guard, alone.
    let ended = in_one_batch(
        audit,
        runs.iter()
            .enumerate()
            .map(|(k, &id)| end_step(audit, id, if k == 5 { 2 } else { 1 }, succeeded())),
    )
    .await;
    assert!(ended[..5].iter().all(Result::is_ok), "{ended:?}");
    assert!(
        matches!(&ended[5], Err(AppendError::Effect(StoreError::Transition { from, .. })) if from == "(none)"),
        "{ended:?}"
    );
    let steps = written_by(&client, "playbook_step_runs", &runs[..5], "step_index = 1").await;
    assert!(
        steps.iter().all(|(state, _)| state == "succeeded"),
        "{steps:?}"
    );
    assert_eq!(distinct(&steps), 5, "written one by one: {steps:?}");
    assert_eq!(
        run_written(&client, runs[5]).await.steps,
        [(0, "succeeded".to_owned(), 1), (1, "running".to_owned(), 1)]
    );

    let completed = in_one_batch(
        audit,
        runs[..5].iter().map(|&id| {
            executions::set_state(
                audit,
                id,
                RunState::Completed,
                AuditEvent::new("execution.completed", audit::Actor::System),
            )
        }),
    )
    .await;
    assert!(completed.iter().all(Result::is_ok), "{completed:?}");
    let runs_done = written_by(&client, "playbook_executions", &runs[..5], "true").await;
    assert!(
        runs_done.iter().all(|(state, _)| state == "completed"),
        "{runs_done:?}"
    );
    assert_eq!(
        distinct(&runs_done),
        1,
        "five completions, one statement: {runs_done:?}"
    );
    assert_eq!(
        playbookd::store::verify::verify_chain(&client, NODE)
            .await
            .unwrap()
            .breach,
        None
    );
    shutdown.cancel();
}

/// The outcomes of `appends`, sent while the writer is held by another append, so that they
/// queue up and are written as one batch.
async fn in_one_batch<F: std::future::Future>(
    audit: &AuditHandle,
    appends: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let appends = appends.into_iter().map(|append| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        append.await
    });
    let (held, outcomes) = tokio::join!(
        crate::audit::hold_writer(audit),
        futures::future::join_all(appends)
    );
    held.expect("blocker");
    outcomes
}

/// The state and the writing statement (`xmin`, `cmin`) of the rows of `table` of `runs` that
/// match `filter`.
async fn written_by(
    client: &tokio_postgres::Client,
    table: &str,
    runs: &[Uuid],
    filter: &str,
) -> Vec<(String, (String, String))> {
    let rows = client
        .query(
            &format!(
                "SELECT state, xmin::text, cmin::text FROM {table} \
                 WHERE execution_id = ANY($1) AND {filter}"
            ),
            &[&runs],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect()
}

/// How many statements wrote `rows`.
fn distinct(rows: &[(String, (String, String))]) -> usize {
    let statements: std::collections::HashSet<_> = rows.iter().map(|(_, s)| s).collect();
    statements.len()
}

/// The statements that write many runs' rows at once (sent unprepared, planned for their
/// arrays each time) look each row up by its primary key, with many open runs of this node or
/// few among many ended ones (a busy node, a quiet one): a plan that scanned the table, or this
/// node's open runs by the partial index on them, would cost every batch in proportion to the
/// runs stored or parked at gates.
#[tokio::test]
async fn the_statements_writing_many_runs_look_each_row_up_by_its_key() {
    let (db, _audit, shutdown) = writer_with_version().await;
    let client = db.client().await;
    let sha256: [u8; 32] = Sha256::digest(PLAYBOOK).into();
    client
        .execute(
            "INSERT INTO playbook_executions (execution_id, node_id, playbook_id, \
                playbook_version, playbook_sha256, state, current_step, nonce, \
                policy_decision_id, policy, outcome, org_id, severity, subject, \
                requested_by_uid, binding, started_at, updated_at) \
             SELECT gen_random_uuid(), $1, 'store-test', 1, $2, 'running', 0, 'n' || g, 'd', \
                'p', 'o', 'acme', 'high', '{}', 0, '{}', now(), now() \
             FROM generate_series(1, 5000) g",
            &[&NODE, &sha256.as_slice()],
        )
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO playbook_step_runs (execution_id, step_index, step_id, action, state, \
                attempts, idempotency_key, params_sha256, started_at) \
             SELECT execution_id, 0, 's0', 'exec', 'running', 1, sha256(nonce::bytea), \
                sha256(''::bytea), now() FROM playbook_executions; \
             ANALYZE",
        )
        .await
        .unwrap();
    let open = |nonces: &str| {
        format!("SELECT execution_id FROM playbook_executions WHERE nonce IN ({nonces})")
    };
    let sixteen = "SELECT 'n' || g FROM generate_series(1, 16) g";
    let runs: Vec<Uuid> = client
        .query(&open(sixteen), &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_plans_use_keys(&client, &runs, "5,000 open runs").await;
    client
        .batch_execute(
            "UPDATE playbook_executions SET state = 'completed', completed_at = now() \
             WHERE nonce NOT IN (SELECT 'n' || g FROM generate_series(1, 20) g); \
             ANALYZE",
        )
        .await
        .unwrap();
    assert_plans_use_keys(&client, &runs, "20 open runs of 5,000").await;
    shutdown.cancel();
}

/// Each statement of `store::set_row_statements` for `runs`, planned as the writer sends it:
/// every scan of a run or step in its plan is a lookup by the primary key.
async fn assert_plans_use_keys(client: &tokio_postgres::Client, runs: &[Uuid], when: &str) {
    for (sql, params) in playbookd::store::set_row_statements(runs, NODE) {
        let params: Vec<_> = params
            .iter()
            .map(|(param, ty)| {
                (
                    &**param as &(dyn tokio_postgres::types::ToSql + Sync),
                    ty.clone(),
                )
            })
            .collect();
        let plan: Vec<String> = client
            .query_typed(&format!("EXPLAIN (COSTS OFF) {sql}"), &params)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let plan = plan.join("\n");
        let scans: Vec<&str> = plan
            .lines()
            .filter(|line| {
                line.contains("Scan")
                    && (line.contains(" on playbook_executions")
                        || line.contains(" on playbook_step_runs"))
            })
            .collect();
        assert!(!scans.is_empty(), "{when}: {sql}\n{plan}");
        assert!(
            scans
                .iter()
                .all(|line| line.contains("Index Scan using") && line.contains("_pkey on")),
            "{when}: {sql}\n{plan}"
        );
    }
}
