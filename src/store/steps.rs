//! Steps (`playbook_step_runs`): started, ended, read back.
//!
//! [`record_start`] is the point of no return: the transaction that writes `running` and
//! `step.started` first reads this node's (and the fleet's) SAFE-HALT and refuses the start when
//! one is in force, whatever path led there (an approved gate, a retry after its backoff, a
//! resumed run, another run between its steps). An action runs only after it returned
//! [`StartOutcome::Started`].
//!
//! Every text a step produces (output, error, skip reason) is made storable by
//! [`crate::text`] here, and outputs are bounded, so recording a step's end cannot fail on
//! content.

use std::collections::HashMap;

use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use tokio_postgres::types::Type;

use crate::store::audit::{
    Actor, AppendError, AuditEvent, AuditHandle, Body, Checked, CheckedSql, Deferred, Foreseen,
    Foresight, Params, Records, RecordsEffect, Scope, SetRow, Tx, TypedParams, column,
};
use crate::store::halts::{self, ActiveHalt, HaltWatch};
use crate::store::model::{ErrorClass, RunState, StepState};
pub use crate::store::rows::{StepStart, params_hash};
use crate::store::rows::{as_node, explain_refusal, index_from_db, index_to_db, require_open_run};
use crate::store::{Store, StoreError, executions, transitions};
use crate::text;

/// A step's stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepRecord {
    pub state: StepState,
    /// The number of the last attempt started (0 when none was).
    pub attempts: i32,
    /// How the last attempt failed, if it did.
    pub error_class: Option<ErrorClass>,
}

/// Every recorded step of run `id`, by index.
pub async fn load(store: &Store, id: Uuid) -> Result<HashMap<usize, StepRecord>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT step_index, state, attempts, error_class FROM playbook_step_runs \
             WHERE execution_id = $1",
            &[&id],
        )
        .await?;
    let mut steps = HashMap::new();
    for row in rows {
        let class: Option<&str> = row.get(3);
        steps.insert(
            index_from_db(row.get(0))?,
            StepRecord {
                state: StepState::decode(row.get(1))?,
                attempts: row.get(2),
                error_class: class.map(ErrorClass::decode).transpose()?,
            },
        );
    }
    Ok(steps)
}

/// Whether an action may start.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub enum StartOutcome {
    /// `running` and the start event are durable: the action may run now.
    Started,
    /// A SAFE-HALT is in force: nothing was started (the refusal is audited).
    Refused(ActiveHalt),
}

/// Records that a step starts, unless a SAFE-HALT is in force (read in memory and in the
/// database inside this transaction): the run `running`, the step `running` with its attempt
/// number, and `step.started`, or only `step.start_refused`.
pub async fn record_start(
    audit: &AuditHandle,
    start: StepStart,
    watch: &HaltWatch,
) -> Result<StartOutcome, AppendError> {
    record_start_after(audit, Vec::new(), start, watch).await
}

/// [`record_start`] in the transaction of `before` (records with no side effect since, e.g. the
/// previous step's end), after them: one COMMIT for both, and the start still durable before
/// the action. Nothing starts unless all of `before` committed.
pub async fn record_start_after(
    audit: &AuditHandle,
    before: Vec<Deferred>,
    start: StepStart,
    watch: &HaltWatch,
) -> Result<StartOutcome, AppendError> {
    send_start(audit, before, None, start, watch).await
}

/// [`record_start_after`] for a run's first step, with the run's own start (`pending ->
/// running`, recorded by `started` as [`executions::defer_state`] records it) between `before`
/// and the step's record, both written by one statement: apart, the run's start is an UPDATE of
/// the run's row of its own (its guard, its CHECKs, a new version in every index of the table)
/// right before the step's start updates the row again. The records, changes and refusals are
/// those of the two apart:
/// - the run's start makes both changes (by the statement of [`record_start`], whose guard takes
///   the run from the states [`executions::defer_state`] takes it from and refuses as it does),
///   and the step's record is written only with it: when the run may not start, nothing is;
/// - when a SAFE-HALT refuses the step, the run starts all the same (the UPDATE the run's start
///   makes apart) and the step's record is `step.start_refused`.
///
/// A step row that refused `running` would fail the run's start too, where apart the run would
/// start and its step's record fail; no step of a `pending` run is ever written.
pub async fn record_first_start_after(
    audit: &AuditHandle,
    before: Vec<Deferred>,
    started: AuditEvent,
    start: StepStart,
    watch: &HaltWatch,
) -> Result<StartOutcome, AppendError> {
    send_start(audit, before, Some(started), start, watch).await
}

/// A run's admission, its start and its first step's start as one request whose one statement
/// writes them all ([`executions::AdmissionAhead`]): the nonce, the run `running` at the step,
/// the step `running`; then `decision.accepted`, `started` (as [`executions::defer_state`]
/// records it) and `step.started`, as the admission sent ahead of
/// [`record_first_start_after`] records them. The admission refuses for a SAFE-HALT (in memory
/// or in the database, read by that statement) or a used nonce, and then nothing of the
/// request is written: the records behind it are attempted only if it succeeded, so the start
/// is `Started` whenever the request commits. The run and step are those of the admission.
pub async fn record_admission_and_first_start(
    audit: &AuditHandle,
    admission: executions::AdmissionAhead,
    started: AuditEvent,
    start: StepStart,
) -> Result<StartOutcome, AppendError> {
    let id = admission.execution_id();
    let start = StepStart {
        execution_id: id,
        ..start
    };
    let run_started = executions::state_event(started, id, RunState::Running);
    let (step_started, _) = start_event(start.clone(), None);
    let before = vec![admission.with_first_step(start)];
    // Written by the admission's statement, just before this in the same transaction.
    let records = Records::after([run_started], step_started);
    let foreseen = records.clone();
    let effect: RecordsEffect<StartOutcome> = Box::new(move |_tx| {
        let records = records.clone();
        Box::pin(async move { Ok((records, StartOutcome::Started)) })
    });
    let body = Body::from(effect).foreseen(Box::new(move || {
        Some(Foreseen {
            records: foreseen.clone(),
            value: StartOutcome::Started,
            checked: Vec::new(),
        })
    }));
    let (_, outcome) = audit
        .append_after_in(Scope::Execution(id), before, body)
        .await?;
    Ok(outcome)
}

/// Sends the start's record (with the run's start, recorded by `run_start`, when given) after
/// `before`, as one request.
async fn send_start(
    audit: &AuditHandle,
    before: Vec<Deferred>,
    run_start: Option<AuditEvent>,
    start: StepStart,
    watch: &HaltWatch,
) -> Result<StartOutcome, AppendError> {
    let scope = Scope::Execution(start.execution_id);
    let node_id = audit.node_id().to_owned();
    let watch = watch.clone();
    let foreseen = ForeseenStart {
        node_id: node_id.clone(),
        run_start: run_start.clone(),
        start: start.clone(),
        watch: watch.clone(),
    };
    let effect: RecordsEffect<StartOutcome> = Box::new(move |tx| {
        let (node_id, run_start, start, watch) = (
            node_id.clone(),
            run_start.clone(),
            start.clone(),
            watch.clone(),
        );
        Box::pin(async move {
            let id = start.execution_id;
            let halted = start_unless_halted(tx, &start, &watch, &node_id).await?;
            let step_refused = halted.is_some();
            let (event, outcome) = start_event(start, halted);
            let Some(run_started) = run_start else {
                return Ok((event.into(), outcome));
            };
            if step_refused {
                // The step refused: the run starts all the same, on its own.
                executions::transition(tx, id, &node_id, RunState::Running).await?;
            }
            let run_started = executions::state_event(run_started, id, RunState::Running);
            Ok((Records::after([run_started], event), outcome))
        })
    });
    let foresight: Foresight<StartOutcome> = Box::new(move || {
        // A halt known in memory refuses it: not foreseen, the effect records the refusal.
        if foreseen.watch.current().is_some() {
            return None;
        }
        let start = foreseen.start.clone();
        let id = start.execution_id;
        let row = RunAndStepStart {
            start: start.clone(),
            node_id: foreseen.node_id.clone(),
        };
        let (event, outcome) = start_event(start, None);
        let records = match &foreseen.run_start {
            Some(started) => Records::after(
                [executions::state_event(
                    started.clone(),
                    id,
                    RunState::Running,
                )],
                event,
            ),
            None => event.into(),
        };
        Some(Foreseen {
            records,
            value: outcome,
            checked: vec![Checked::new(&RUN_AND_STEP_START_CHECKED, row.one())],
        })
    });
    let body = Body::from(effect).foreseen(foresight);
    let (_, outcome) = audit.append_after_in(scope, before, body).await?;
    Ok(outcome)
}

/// What [`send_start`]'s foresight reads: its own copies of the effect's.
struct ForeseenStart {
    node_id: String,
    run_start: Option<AuditEvent>,
    start: StepStart,
    watch: HaltWatch,
}

/// The run on to the step and the step `running` ([`start_run_and_step`]), unless a SAFE-HALT
/// refuses it: the halt known in memory (possibly not written yet), then the database's, read
/// by the very statement that moves the run on and writes the step. `Ok(Some(halt))` when one
/// refused it.
async fn start_unless_halted(
    tx: &Tx<'_>,
    start: &StepStart,
    watch: &HaltWatch,
    node_id: &str,
) -> Result<Option<ActiveHalt>, StoreError> {
    match watch.current() {
        Some(halt) => Ok(Some(halt)),
        None => start_run_and_step(tx, start, node_id).await,
    }
}

/// The record of a step's start, or of its refusal by `halted`.
fn start_event(start: StepStart, halted: Option<ActiveHalt>) -> (AuditEvent, StartOutcome) {
    if let Some(halt) = halted {
        let event = refused_event(
            "step.start_refused",
            start.execution_id,
            &start.step_id,
            &halt,
        )
        .with("action", start.action)
        .with("attempt", start.attempt);
        return (event, StartOutcome::Refused(halt));
    }
    let event = AuditEvent::new("step.started", Actor::System)
        .execution(start.execution_id)
        .with("step_id", start.step_id)
        .with("action", start.action)
        .with("attempt", start.attempt)
        .with("params_sha256", hex::encode(start.params_sha256));
    (event, StartOutcome::Started)
}

/// The run `running` at the step and the step `running` at its attempt, in one statement (one
/// round trip, one executor start in the writer's backend, where every statement of every run
/// is executed one after the other; the starts of other runs written at the same moment share
/// it, see [`Tx::query_set`]). The run's change is guarded by the transition table, this node
/// **and the absence of an active SAFE-HALT of this node or the fleet, read in the same
/// statement**; the step is written only if the run moved, and only from a state the table
/// allows. `Ok(Some(halt))` when a halt refused the start (nothing written); an error when the
/// run may not start a step or the step may not start.
async fn start_run_and_step(
    tx: &Tx<'_>,
    start: &StepStart,
    node_id: &str,
) -> Result<Option<ActiveHalt>, StoreError> {
    let rows = tx
        .query_set(RunAndStepStart {
            start: start.clone(),
            node_id: node_id.to_owned(),
        })
        .await?;
    let step_written: Option<bool> = rows.first().map(|row| row.get(1));
    let Some(step_written) = step_written else {
        if let Some(halt) = halts::active_in(&**tx, node_id).await? {
            return Ok(Some(halt));
        }
        let to = RunState::Running.as_str();
        return Err(explain_refusal(tx, start.execution_id, node_id, to).await);
    };
    if !step_written {
        return Err(step_refusal(tx, start.execution_id, start.index, StepState::Running).await);
    }
    Ok(None)
}

/// A row of [`start_run_and_step`]'s statement: one comes back for each run that moved, with
/// whether its step was written.
pub(crate) struct RunAndStepStart {
    start: StepStart,
    node_id: String,
}

/// [`RunAndStepStart`]'s statement for one row, but for its final `SELECT`: the run's change
/// (`run`) and the step's (`step`).
macro_rules! run_and_step_start {
    () => {
        concat!(
            "moved_run AS ( \
            UPDATE playbook_executions SET state = $3, current_step = $4, updated_at = now() \
            WHERE execution_id = $1 AND node_id = $2 AND state = ANY($5) \
            AND NOT EXISTS (SELECT 1 FROM playbook_safe_halt_state WHERE ",
            halts::in_force!("$2"),
            ") \
            RETURNING execution_id), \
         started_step AS ( \
            INSERT INTO playbook_step_runs (execution_id, step_index, step_id, action, state, \
                attempts, idempotency_key, params_sha256, started_at) \
            SELECT execution_id, $4, $6, $7, $8, $9, $10, $11, now() FROM moved_run \
            ON CONFLICT (execution_id, step_index) DO UPDATE SET state = EXCLUDED.state, \
                attempts = EXCLUDED.attempts, params_sha256 = EXCLUDED.params_sha256, \
                error = NULL, error_class = NULL, finished_at = NULL \
            WHERE playbook_step_runs.state = ANY($12) \
            RETURNING 1)"
        )
    };
}

/// [`RunAndStepStart`]'s [`SetRow::ONE`] for a one-flight write: holds only if the run moved
/// on and the step was written.
pub(crate) const RUN_AND_STEP_START_CHECKED: CheckedSql = CheckedSql {
    with: run_and_step_start!(),
    expect: "EXISTS (SELECT 1 FROM moved_run) AND EXISTS (SELECT 1 FROM started_step)",
    what: "the step start",
};

impl SetRow for RunAndStepStart {
    const ONE: &'static str = concat!(
        "WITH ",
        run_and_step_start!(),
        " SELECT 1::int8, EXISTS (SELECT 1 FROM started_step) FROM moved_run"
    );

    fn one(&self) -> Params {
        let start = &self.start;
        let mut params: Params = vec![
            Box::new(start.execution_id),
            Box::new(self.node_id.clone()),
            Box::new(RunState::Running.as_str()),
            Box::new(index_to_db(start.index)),
            Box::new(transitions::run_sources(RunState::Running)),
        ];
        params.extend(start.running_row());
        params.push(Box::new(transitions::step_sources(StepState::Running)));
        params
    }

    const MANY: &'static str = concat!(
        "WITH v AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::text[], \
            $5::text[], $6::int4[], $7::bytea[], $8::bytea[], $9::text[]) WITH ORDINALITY \
            AS v(execution_id, node_id, step_index, step_id, action, attempts, idempotency_key, \
                params_sha256, run_sources, i)), \
         run AS ( \
            UPDATE playbook_executions e SET state = $10, current_step = v.step_index, \
                updated_at = now() \
            FROM v \
            WHERE e.execution_id = v.execution_id AND e.node_id = v.node_id \
            AND e.state = ANY(v.run_sources::text[]) \
            AND NOT EXISTS (SELECT 1 FROM playbook_safe_halt_state WHERE ",
        halts::in_force!("v.node_id"),
        ") \
            RETURNING v.*), \
         step AS ( \
            INSERT INTO playbook_step_runs (execution_id, step_index, step_id, action, state, \
                attempts, idempotency_key, params_sha256, started_at) \
            SELECT execution_id, step_index, step_id, action, $11, attempts, idempotency_key, \
                params_sha256, now() FROM run \
            ON CONFLICT (execution_id, step_index) DO UPDATE SET state = EXCLUDED.state, \
                attempts = EXCLUDED.attempts, params_sha256 = EXCLUDED.params_sha256, \
                error = NULL, error_class = NULL, finished_at = NULL \
            WHERE playbook_step_runs.state = ANY($12) \
            RETURNING execution_id) \
         SELECT run.i, EXISTS (SELECT 1 FROM step WHERE step.execution_id = run.execution_id) \
         FROM run"
    );

    fn many(rows: &[Self]) -> TypedParams {
        let run_sources =
            transitions::sources_literal(&transitions::run_sources(RunState::Running));
        vec![
            column(rows, Type::UUID_ARRAY, |r| r.start.execution_id),
            column(rows, Type::TEXT_ARRAY, |r| r.node_id.clone()),
            column(rows, Type::INT4_ARRAY, |r| index_to_db(r.start.index)),
            column(rows, Type::TEXT_ARRAY, |r| r.start.step_id.clone()),
            column(rows, Type::TEXT_ARRAY, |r| r.start.action.clone()),
            column(rows, Type::INT4_ARRAY, |r| r.start.attempt),
            column(rows, Type::BYTEA_ARRAY, |r| {
                r.start.idempotency_key.to_vec()
            }),
            column(rows, Type::BYTEA_ARRAY, |r| r.start.params_sha256.to_vec()),
            column(rows, Type::TEXT_ARRAY, |_| run_sources.clone()),
            (Box::new(RunState::Running.as_str()), Type::TEXT),
            (Box::new(StepState::Running.as_str()), Type::TEXT),
            (
                Box::new(transitions::step_sources(StepState::Running)),
                Type::TEXT_ARRAY,
            ),
        ]
    }
}

/// The end of one attempt.
#[derive(Debug, Clone)]
pub enum StepEnd {
    Succeeded {
        output: Value,
    },
    /// A failure that will be retried after `delay_ms`; the step stays `running`.
    Retrying {
        class: ErrorClass,
        error: String,
        delay_ms: u64,
    },
    Failed {
        class: ErrorClass,
        error: String,
    },
    Skipped {
        reason: String,
    },
}

impl StepEnd {
    fn state(&self) -> StepState {
        match self {
            StepEnd::Succeeded { .. } => StepState::Succeeded,
            StepEnd::Retrying { .. } => StepState::Running,
            StepEnd::Failed { .. } => StepState::Failed,
            StepEnd::Skipped { .. } => StepState::Skipped,
        }
    }

    fn event_type(&self) -> &'static str {
        match self {
            StepEnd::Succeeded { .. } => "step.succeeded",
            StepEnd::Retrying { .. } => "step.retry",
            StepEnd::Failed { .. } => "step.failed",
            StepEnd::Skipped { .. } => "step.skipped",
        }
    }
}

/// Which step ended, and how.
#[derive(Debug, Clone)]
pub struct StepEndRecord {
    pub execution_id: Uuid,
    pub index: usize,
    pub step_id: String,
    pub action: String,
    pub end: StepEnd,
}

/// Records the end of an attempt with its event. Output, error and reason are made storable
/// and bounded first: no content can make this fail. A step that never started (skipped, or
/// failed before its action: a denied gate, unrenderable parameters) gets its row here.
pub async fn record_end(audit: &AuditHandle, record: StepEndRecord) -> Result<(), AppendError> {
    audit
        .append_in(
            Scope::Execution(record.execution_id),
            end_effect(audit, record),
        )
        .await
        .map(|_| ())
}

/// [`record_end`], written with the caller's next append (see [`AuditHandle::defer`]): for an end
/// with no side effect before the next record (a success, a skip).
pub fn defer_end(audit: &AuditHandle, record: StepEndRecord) -> Deferred {
    audit.defer_in(
        Scope::Execution(record.execution_id),
        end_effect(audit, record),
    )
}

/// What an attempt's end writes, made storable and bounded once ([`record_end`]).
#[derive(Clone)]
struct Ended {
    record: StepEndRecord,
    to: StepState,
    output: Option<Value>,
    class: Option<ErrorClass>,
    error: Option<String>,
    reason: Option<String>,
    /// Not a retry: the step's `finished_at` is set.
    finished: bool,
    /// The attempt's end record, built once from the above.
    event: AuditEvent,
}

impl Ended {
    fn of(record: StepEndRecord) -> Ended {
        let to = record.end.state();
        let (output, class, error, reason) = match &record.end {
            StepEnd::Succeeded { output } => {
                (Some(storable_output(output.clone())), None, None, None)
            }
            StepEnd::Retrying { class, error, .. } | StepEnd::Failed { class, error } => (
                None,
                Some(*class),
                Some(text::storable(error, text::MAX_FIELD_BYTES)),
                None,
            ),
            StepEnd::Skipped { reason } => (
                None,
                None,
                None,
                Some(text::storable(reason, text::MAX_FIELD_BYTES)),
            ),
        };
        let finished = !matches!(record.end, StepEnd::Retrying { .. });
        let event = end_event(&record, class, error.as_deref(), reason.as_deref(), &output);
        Ended {
            record,
            to,
            output,
            class,
            error,
            reason,
            finished,
            event,
        }
    }

    /// The row of [`AttemptEnd`]'s statement: for an attempt whose step row exists (a success,
    /// a retry); `None` for a failure or a skip, whose step may never have started.
    fn attempt_end(&self) -> Option<AttemptEnd> {
        match self.record.end {
            StepEnd::Succeeded { .. } | StepEnd::Retrying { .. } => Some(AttemptEnd {
                execution_id: self.record.execution_id,
                index: index_to_db(self.record.index),
                to: self.to,
                output: self.output.clone(),
                class: self.class,
                error: self.error.clone(),
                finished: self.finished,
            }),
            StepEnd::Failed { .. } | StepEnd::Skipped { .. } => None,
        }
    }
}

/// The end record of `record`'s attempt, with its storable error, reason and output.
fn end_event(
    record: &StepEndRecord,
    class: Option<ErrorClass>,
    error: Option<&str>,
    reason: Option<&str>,
    output: &Option<Value>,
) -> AuditEvent {
    let mut event = AuditEvent::new(record.end.event_type(), Actor::System)
        .execution(record.execution_id)
        .with("step_id", record.step_id.clone())
        .with("action", record.action.clone());
    if let Some(class) = class {
        event = event.with("error_class", class.as_str());
    }
    if let Some(error) = error {
        event = event.with("error", error);
    }
    if let Some(reason) = reason {
        event = event.with("reason", reason);
    }
    if let StepEnd::Retrying { delay_ms, .. } = record.end {
        event = event.with("retry_in_ms", delay_ms);
    }
    if let Some(output) = output {
        event = event.with("output_sha256", hex::encode(params_hash(output)));
    }
    event
}

fn end_effect(audit: &AuditHandle, record: StepEndRecord) -> Body<()> {
    let ended = Ended::of(record);
    // A success or a retry is foreseen: its row exists and its state guards the change.
    let foresight: Option<Foresight<()>> = ended.attempt_end().map(|row| {
        let event = ended.event.clone();
        let foresight: Foresight<()> = Box::new(move || {
            Some(Foreseen {
                records: event.clone().into(),
                value: (),
                checked: vec![Checked::new(&ATTEMPT_END_CHECKED, row.one())],
            })
        });
        foresight
    });
    let effect = as_node(audit, ended, |tx, node_id, ended| {
        Box::pin(async move {
            let StepEndRecord {
                execution_id,
                index,
                ref step_id,
                ref action,
                ..
            } = ended.record;
            let to = ended.to;
            let written = match ended.attempt_end() {
                // Success and a retry end an attempt whose start this node recorded (its
                // transaction checked the run's owner and state): the row exists, and its
                // state guards the change.
                Some(row) => tx.query_set(row).await?.len() as u64,
                // A step may end before it ever started (its row is created here). Only for
                // this node's run, still open: checked in the same statement.
                None => {
                    tx.execute(
                        "INSERT INTO playbook_step_runs (execution_id, step_index, step_id, action, state, \
                            attempts, idempotency_key, skip_reason, output, error_class, error, finished_at) \
                         SELECT $1::uuid, $2::int4, $3::text, $4::text, $5::text, 0, $6::bytea, $7::text, \
                            $8::jsonb, $9::text, $10::text, CASE WHEN $11::bool THEN now() END \
                         FROM playbook_executions e \
                         WHERE e.execution_id = $1 AND e.node_id = $13 AND e.state = ANY($14) \
                         ON CONFLICT (execution_id, step_index) DO UPDATE SET state = EXCLUDED.state, \
                            skip_reason = EXCLUDED.skip_reason, output = EXCLUDED.output, \
                            error_class = EXCLUDED.error_class, error = EXCLUDED.error, \
                            finished_at = EXCLUDED.finished_at \
                         WHERE playbook_step_runs.state = ANY($12)",
                        &[
                            &execution_id,
                            &index_to_db(index),
                            step_id,
                            action,
                            &to.as_str(),
                            &step_key(execution_id, step_id).as_slice(),
                            &ended.reason,
                            &ended.output,
                            &ended.class.map(ErrorClass::as_str),
                            &ended.error,
                            &ended.finished,
                            &transitions::step_sources(to),
                            &node_id,
                            &transitions::open_run_states(),
                        ],
                    )
                    .await?
                }
            };
            if written != 1 {
                // Not this node's run, or it ended; else the step's state refused it.
                require_open_run(tx, execution_id, &node_id).await?;
                return Err(step_refusal(tx, execution_id, index, to).await);
            }
            Ok((ended.event, ()))
        })
    });
    match foresight {
        Some(foresight) => Body::from(effect).foreseen(foresight),
        None => Body::from(effect),
    }
}

/// The successful end of the first step of each of `runs` (`store::set_row_statements`).
pub(crate) fn attempt_ends(runs: &[Uuid]) -> Vec<AttemptEnd> {
    let ended = |execution_id| AttemptEnd {
        execution_id,
        index: 0,
        to: StepState::Succeeded,
        output: Some(Value::Object(serde_json::Map::new())),
        class: None,
        error: None,
        finished: true,
    };
    runs.iter().copied().map(ended).collect()
}

/// The start of the second step of each of `runs` (`store::set_row_statements`).
pub(crate) fn run_and_step_starts(runs: &[Uuid], node_id: &str) -> Vec<RunAndStepStart> {
    let started = |&execution_id: &Uuid| RunAndStepStart {
        start: StepStart {
            execution_id,
            index: 1,
            step_id: "s1".into(),
            action: "noop".into(),
            attempt: 1,
            idempotency_key: step_key(execution_id, "s1"),
            params_sha256: [0; 32],
        },
        node_id: node_id.to_owned(),
    };
    runs.iter().map(started).collect()
}

/// A row of the statement that ends an attempt whose step row exists (a success, a retry):
/// one comes back when the step's state allowed it.
pub(crate) struct AttemptEnd {
    execution_id: Uuid,
    index: i32,
    to: StepState,
    output: Option<Value>,
    class: Option<ErrorClass>,
    error: Option<String>,
    finished: bool,
}

/// [`AttemptEnd`]'s statement for one row, without its `RETURNING`.
macro_rules! attempt_end {
    () => {
        "UPDATE playbook_step_runs SET state = $3, output = $4, \
            error_class = $5, error = $6, finished_at = CASE WHEN $7 THEN now() END \
        WHERE execution_id = $1 AND step_index = $2 AND state = ANY($8)"
    };
}

/// [`AttemptEnd`]'s [`SetRow::ONE`] for a one-flight write: holds only if the step changed.
pub(crate) const ATTEMPT_END_CHECKED: CheckedSql =
    crate::store::audit::checked_change!("step_end", attempt_end!(), "the step end");

impl SetRow for AttemptEnd {
    const ONE: &'static str = concat!(attempt_end!(), " RETURNING 1::int8");

    fn one(&self) -> Params {
        vec![
            Box::new(self.execution_id),
            Box::new(self.index),
            Box::new(self.to.as_str()),
            Box::new(self.output.clone()),
            Box::new(self.class.map(ErrorClass::as_str)),
            Box::new(self.error.clone()),
            Box::new(self.finished),
            Box::new(transitions::step_sources(self.to)),
        ]
    }

    const MANY: &'static str = "UPDATE playbook_step_runs s SET state = v.state, \
            output = v.output, error_class = v.error_class, error = v.error, \
            finished_at = CASE WHEN v.finished THEN now() END \
        FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::jsonb[], $5::text[], $6::text[], \
            $7::bool[], $8::text[]) WITH ORDINALITY \
            AS v(execution_id, step_index, state, output, error_class, error, finished, sources, i) \
        WHERE s.execution_id = v.execution_id AND s.step_index = v.step_index \
        AND s.state = ANY(v.sources::text[]) \
        RETURNING v.i";

    fn many(rows: &[Self]) -> TypedParams {
        vec![
            column(rows, Type::UUID_ARRAY, |r| r.execution_id),
            column(rows, Type::INT4_ARRAY, |r| r.index),
            column(rows, Type::TEXT_ARRAY, |r| r.to.as_str()),
            column(rows, Type::JSONB_ARRAY, |r| r.output.clone()),
            column(rows, Type::TEXT_ARRAY, |r| r.class.map(ErrorClass::as_str)),
            column(rows, Type::TEXT_ARRAY, |r| r.error.clone()),
            column(rows, Type::BOOL_ARRAY, |r| r.finished),
            column(rows, Type::TEXT_ARRAY, |r| {
                transitions::sources_literal(&transitions::step_sources(r.to))
            }),
        ]
    }
}

/// Marks step `index` of run `id` undone (`rolled_back`) or not (`rollback_failed`), guarded
/// by the transition table; the number of rows changed (0 when the step is in no state the
/// table allows that from).
pub(crate) async fn mark_undone(
    tx: &Tx<'_>,
    id: Uuid,
    index: usize,
    to: StepState,
) -> Result<u64, StoreError> {
    Ok(tx
        .execute(
            "UPDATE playbook_step_runs SET state = $3 \
             WHERE execution_id = $1 AND step_index = $2 AND state = ANY($4)",
            &[
                &id,
                &index_to_db(index),
                &to.as_str(),
                &transitions::step_sources(to),
            ],
        )
        .await?)
}

/// A step's output as stored: every string made storable, then bounded to
/// [`MAX_OUTPUT_BYTES`] of JSON (a larger one is replaced by its size and head).
pub fn storable_output(output: Value) -> Value {
    text::capped_json(
        text::storable_json(output),
        MAX_OUTPUT_BYTES,
        "head",
        text::storable,
    )
}

/// SHA-256(execution_id ‖ step_id): a step's idempotency key, the same on every attempt and
/// after every restart.
pub fn step_key(execution_id: Uuid, step_id: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(execution_id.as_bytes());
    hasher.update(step_id.as_bytes());
    hasher.finalize().into()
}

/// The key handed to a step's undo action: distinct from the step's own.
pub fn undo_key(execution_id: Uuid, step_id: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(execution_id.as_bytes());
    hasher.update(step_id.as_bytes());
    hasher.update(b"\0rollback");
    hasher.finalize().into()
}

/// The event that records a start refused by a SAFE-HALT.
pub(crate) fn refused_event(
    event_type: &'static str,
    execution_id: Uuid,
    step_id: &str,
    halt: &ActiveHalt,
) -> AuditEvent {
    let mut event = AuditEvent::new(event_type, Actor::System)
        .refused_by_halt()
        .execution(execution_id)
        .with("step_id", step_id)
        .with("halt_scope", halt.scope.as_str())
        .with("halt_node_id", halt.node_id.as_str())
        .with("clear_with", halt.clear_command());
    if let Some(id) = halt.halt_id {
        event = event.with("halt_id", id);
    }
    event
}

/// Why a guarded change of a step matched no row.
pub(crate) async fn step_refusal(tx: &Tx<'_>, id: Uuid, index: usize, to: StepState) -> StoreError {
    let found = tx
        .query_opt(
            "SELECT state FROM playbook_step_runs WHERE execution_id = $1 AND step_index = $2",
            &[&id, &index_to_db(index)],
        )
        .await;
    match found {
        Ok(row) => StoreError::Transition {
            what: "step",
            id: format!("{id}#{index}"),
            from: row.map_or_else(|| "(none)".to_owned(), |row| row.get(0)),
            to: to.as_str(),
        },
        Err(error) => StoreError::Query(error),
    }
}

/// Stored step outputs are cut to this many bytes of JSON.
pub const MAX_OUTPUT_BYTES: usize = 8 * 1024;
