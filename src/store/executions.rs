//! Runs (`playbook_executions`): admitted with their nonce, loaded for this node only, moved
//! through [`super::transitions::RUN_TRANSITIONS`] by guarded UPDATEs whose row count is checked
//! inside the audit transaction.
//!
//! Every function that changes a run acts as the audit writer's node and refuses a run of
//! another node ([`StoreError::OtherNode`]): a host acts only for its own runs.

use std::sync::{Arc, OnceLock};

use crate::store::audit::Tx;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::store::audit::{
    Actor, Answer, AppendError, AuditEvent, AuditHandle, Body, Checked, CheckedSql, Deferred,
    Foreseen, Foresight, Params, Scope, SetRow, TypedParams, column, refs,
};
use crate::store::halts::{self, HaltWatch};
use crate::store::model::{RollbackCause, RunState, Severity};
use crate::store::rows::{
    StepStart, append_as_node, as_node, explain_refusal, index_to_db, not_found, require_own,
};
use crate::store::{Store, StoreError, nonces, transitions};

/// A run to admit: what intake decided, written with its nonce in one transaction.
#[derive(Debug, Clone)]
pub struct NewExecution {
    pub execution_id: Uuid,
    pub playbook_id: String,
    pub version: u32,
    pub sha256: [u8; 32],
    pub nonce: String,
    pub decision_id: String,
    pub policy: String,
    pub outcome: String,
    pub org_id: String,
    pub severity: Severity,
    pub subject: Map<String, Value>,
    pub requested_by_uid: u32,
    pub binding: BindingRecord,
    /// Subject keys the playbook does not declare: reported in the event, never stored.
    pub ignored_subject_keys: Vec<String>,
}

/// The binding that admitted a run, as stored with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRecord {
    pub policy: String,
    pub outcome: String,
    pub org_id: Option<String>,
    pub playbook: String,
    /// Gate `moderate` steps too. Stored explicitly: a missing value is corrupt, never `false`.
    pub require_approval: bool,
}

/// Why a run was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// With the first use when the admitting transaction read it.
    #[error("replay: this nonce has been used before")]
    Replay(Option<nonces::FirstUse>),
    #[error("{0}")]
    Halted(Box<halts::ActiveHalt>),
    #[error("the audit log is unavailable; nothing was admitted")]
    Unavailable(#[source] AppendError),
}

/// Records the nonce, the run (`pending`) and `decision.accepted` in one transaction, unless a
/// SAFE-HALT of this node (or the fleet) is in force, read inside that transaction. Returns the
/// run as written, for the executor to start without reading it back.
pub async fn admit(
    audit: &AuditHandle,
    new: NewExecution,
    watch: &HaltWatch,
) -> Result<ExecutionRecord, AdmitError> {
    let Admission {
        record,
        ahead,
        admitted,
    } = prepare_admit(audit, new, watch);
    audit
        .flush(vec![ahead.alone()])
        .await
        .map_err(AdmitError::Unavailable)?;
    admitted.outcome().await?;
    Ok(record)
}

/// An admission ([`admit`]) prepared, not sent yet: the executor sends it ahead of the run's
/// first records, in their transaction, while intake awaits its outcome.
pub struct Admission {
    /// The run as the admission writes it (see [`execution_record`]).
    pub record: ExecutionRecord,
    /// The admission's append, to send alone or with the run's first step's start.
    pub ahead: AdmissionAhead,
    /// Where its outcome arrives, after the COMMIT that holds it (or its refusal).
    pub admitted: Admitted,
}

/// An admission's append, not sent yet. Its later records are attempted only if it succeeds;
/// dropped unsent, nothing is admitted and [`Admitted::outcome`] says the log is unavailable.
///
/// Sent [`alone`](Self::alone), it writes the run `pending`. Sent by
/// [`steps::record_admission_and_first_start`](super::steps::record_admission_and_first_start)
/// with the run's start and its first step's start right behind it, its one statement writes
/// the nonce, the run `running` at that step, and the step `running`: the run is never written
/// `pending` to be rewritten `running` by the next statement (a new version of the row in every
/// index of the table, its transition guard and CHECKs: a tenth of the writer backend's work a
/// noop-3 run, `benches/sql/guard.sh`). The nonce, the halt and the node are checked by the
/// same statement either way; with the start, the step's record cannot meet a SAFE-HALT the
/// admission did not meet (both are read once, by that statement).
pub struct AdmissionAhead {
    execution_id: Uuid,
    deferred: Deferred,
    /// Set (once, before the append is sent) when the first step's start is written with it;
    /// read by the admission's effect, each time it runs.
    first_step: Arc<OnceLock<StepStart>>,
}

impl AdmissionAhead {
    /// The admission on its own: the run `pending`.
    pub fn alone(self) -> Deferred {
        self.deferred
    }

    /// The run this admission writes.
    pub(crate) fn execution_id(&self) -> Uuid {
        self.execution_id
    }

    /// The admission writing `start` too: only for a request that carries the records of the
    /// run's start and of `start` right after it (see the type's documentation).
    pub(crate) fn with_first_step(self, start: StepStart) -> Deferred {
        // A fresh cell that nothing else has set: this cannot fail.
        let _ = self.first_step.set(start);
        self.deferred
    }
}

/// The outcome of an [`Admission`], answered to whoever awaits it, not to whoever sends it.
pub struct Admitted(Answer<()>);

impl Admitted {
    /// `Ok` once the admission has committed; its refusal (a replay, a SAFE-HALT) or
    /// [`AdmitError::Unavailable`] when nothing of it was written.
    pub async fn outcome(self) -> Result<(), AdmitError> {
        match self.0.await.unwrap_or(Err(AppendError::Stopped)) {
            Ok(_) => Ok(()),
            Err(AppendError::Effect(StoreError::Replay(first))) => Err(AdmitError::Replay(first)),
            Err(AppendError::Effect(StoreError::Halted(halt))) => Err(AdmitError::Halted(halt)),
            Err(other) => Err(AdmitError::Unavailable(other)),
        }
    }
}

/// Prepares the admission of `new` ([`admit`]) without sending it.
pub fn prepare_admit(audit: &AuditHandle, new: NewExecution, watch: &HaltWatch) -> Admission {
    let record = execution_record(&new, audit.node_id(), crate::store::chain::now_micros());
    let scope = Scope::Execution(new.execution_id);
    let execution_id = new.execution_id;
    let first_step = Arc::new(OnceLock::new());
    let captured = (new, watch.clone(), first_step.clone());
    let foresight = {
        let (node_id, (new, watch, first_step)) = (audit.node_id().to_owned(), captured.clone());
        Box::new(move || {
            // A halt known in memory refuses it: not foreseen, the effect says so.
            if watch.current().is_some() {
                return None;
            }
            let first_step: Option<&StepStart> = first_step.get();
            let sql = match first_step {
                Some(_) => &ADMIT_AND_START_CHECKED,
                None => &ADMIT_CHECKED,
            };
            Some(Foreseen {
                records: accepted_event(&new).into(),
                value: (),
                checked: vec![Checked::new(
                    sql,
                    admission_params(&new, &node_id, first_step),
                )],
            })
        })
    };
    let effect = as_node(audit, captured, |tx, node_id, (new, watch, first_step)| {
        Box::pin(async move {
            if let Some(halt) = watch.current() {
                return Err(StoreError::Halted(Box::new(halt)));
            }
            let first_step: Option<&StepStart> = first_step.get();
            let sql = match first_step {
                Some(_) => ADMIT_AND_START,
                None => ADMIT,
            };
            // One statement, one round trip: the nonce and the run (and its first step), or
            // nothing.
            let params = admission_params(&new, &node_id, first_step);
            let inserted = tx
                .query_opt(sql, &refs(&params))
                .await
                .map_err(nonces::replay_or_query)?;
            if inserted.is_none() {
                // The nonce was taken (a replay: that comes first, as in intake's order of
                // checks), or a SAFE-HALT refused it.
                if let Some(first) = nonces::first_use_in(tx, &new.nonce).await? {
                    return Err(StoreError::Replay(Some(first)));
                }
                let halt =
                    halts::active_in(&**tx, &node_id)
                        .await?
                        .ok_or(StoreError::NotFound {
                            what: "SAFE-HALT or earlier use",
                            detail: "that refused the nonce (cleared meanwhile)".into(),
                        })?;
                return Err(StoreError::Halted(Box::new(halt)));
            }
            Ok((accepted_event(&new), ()))
        })
    });
    let (deferred, answer) = audit.defer_answered_in(scope, Body::from(effect).foreseen(foresight));
    Admission {
        record,
        ahead: AdmissionAhead {
            execution_id,
            deferred,
            first_step,
        },
        admitted: Admitted(answer),
    }
}

/// [`ADMIT`]'s parameters for `new` on node `node_id`, and [`ADMIT_AND_START`]'s with
/// `first_step`: the run `running` at that step, else `pending`.
fn admission_params(new: &NewExecution, node_id: &str, first_step: Option<&StepStart>) -> Params {
    let binding = json!({
        "policy": new.binding.policy, "outcome": new.binding.outcome,
        "org_id": new.binding.org_id, "playbook": new.binding.playbook,
        "require_approval": new.binding.require_approval,
    });
    let (state, current_step) = match first_step {
        Some(start) => (RunState::Running, Some(index_to_db(start.index))),
        None => (RunState::Pending, None),
    };
    let mut params: Params = vec![
        Box::new(new.execution_id),
        Box::new(node_id.to_owned()),
        Box::new(new.playbook_id.clone()),
        Box::new(i64::from(new.version)),
        Box::new(new.sha256.to_vec()),
        Box::new(state.as_str()),
        Box::new(new.nonce.clone()),
        Box::new(new.decision_id.clone()),
        Box::new(new.policy.clone()),
        Box::new(new.outcome.clone()),
        Box::new(new.org_id.clone()),
        Box::new(new.severity.as_str()),
        Box::new(Value::Object(new.subject.clone())),
        Box::new(i64::from(new.requested_by_uid)),
        Box::new(binding),
        Box::new(current_step),
    ];
    if let Some(start) = first_step {
        params.extend(start.running_row());
    }
    params
}

/// `decision.accepted` for `new`: what its admission records.
fn accepted_event(new: &NewExecution) -> AuditEvent {
    let subject_hash = crate::store::rows::params_hash(&Value::Object(new.subject.clone()));
    let event = AuditEvent::new("decision.accepted", Actor::Uid(new.requested_by_uid))
        .execution(new.execution_id)
        .with("decision_id", new.decision_id.clone())
        .with("policy", new.policy.clone())
        .with("outcome", new.outcome.clone())
        .with("org_id", new.org_id.clone())
        .with("nonce", new.nonce.clone())
        .with("playbook", format!("{}@{}", new.playbook_id, new.version))
        .with("playbook_sha256", hex::encode(new.sha256))
        .with("subject_sha256", hex::encode(subject_hash));
    if new.ignored_subject_keys.is_empty() {
        event
    } else {
        event.with("ignored_subject_keys", new.ignored_subject_keys.clone())
    }
}

/// The run `new` as its admission writes it for node `node_id` when sent alone (`pending`), as
/// [`load`] would read it back but for `started_at`: the database stamps the row with its
/// transaction's time, which the caller cannot know before the COMMIT; `started_at` (taken
/// before the admission is sent, so not later than the stored one) makes the run's deadline
/// count from no later than that. Sent with the run's first step's start
/// ([`AdmissionAhead`]), the admission writes the run as that start leaves it.
pub fn execution_record(
    new: &NewExecution,
    node_id: &str,
    started_at: OffsetDateTime,
) -> ExecutionRecord {
    ExecutionRecord {
        id: new.execution_id,
        node_id: node_id.to_owned(),
        playbook_id: new.playbook_id.clone(),
        version: new.version,
        sha256: new.sha256,
        state: RunState::Pending,
        org_id: new.org_id.clone(),
        subject: new.subject.clone(),
        decision: DecisionInfo {
            decision_id: new.decision_id.clone(),
            policy: new.policy.clone(),
            outcome: new.outcome.clone(),
            org_id: new.org_id.clone(),
            severity: new.severity,
        },
        started_at,
        rollback_cause: None,
        cancel_requested: false,
        binding: new.binding.clone(),
    }
}

/// The nonce, as [`ADMIT`] and [`ADMIT_AND_START`] write it (the `WITH` query `used`), unless a SAFE-HALT of this
/// node (or the fleet) is active or the nonce was used before.
macro_rules! used_nonce {
    () => {
        concat!(
            "used AS ( \
                INSERT INTO playbook_nonces (nonce, used_at, execution_id) \
                SELECT $7::text, now(), $1::uuid \
                WHERE NOT EXISTS (SELECT 1 FROM playbook_safe_halt_state WHERE ",
            halts::in_force!("$2::text"),
            ") \
                ON CONFLICT (nonce) DO NOTHING \
                RETURNING execution_id)"
        )
    };
}

/// The run, written only with its nonce: `$6` its state, `$16` its current step.
macro_rules! run_from_nonce {
    () => {
        "INSERT INTO playbook_executions (execution_id, node_id, playbook_id, playbook_version, \
            playbook_sha256, state, current_step, nonce, policy_decision_id, policy, outcome, \
            org_id, severity, subject, requested_by_uid, binding, started_at, updated_at) \
        SELECT used.execution_id, $2::text, $3::text, $4::int8, $5::bytea, $6::text, $16::int4, \
            $7::text, $8::text, $9::text, $10::text, $11::text, $12::text, $13::jsonb, $14::int8, \
            $15::jsonb, now(), now() \
        FROM used"
    };
}

/// Records the nonce and the run in one statement, unless a SAFE-HALT of this node (or the
/// fleet) is active or the nonce was used before: then neither is written and no row comes back.
/// `ON CONFLICT DO NOTHING` waits for a concurrent transaction holding the same nonce and, if
/// it committed, inserts nothing (no unique violation aborts the batch); the run's own UNIQUE
/// nonce still raises one for a nonce pruned from `playbook_nonces` but not from the runs.
/// Every parameter is cast: in `INSERT … SELECT` they take no type from the target columns.
const ADMIT: &str = concat!(
    "WITH ",
    used_nonce!(),
    " ",
    run_from_nonce!(),
    " RETURNING started_at"
);

/// The run's first step (`$16` its index, `$17`–`$22` its row), written only with the run.
macro_rules! first_step_from_run {
    () => {
        "INSERT INTO playbook_step_runs (execution_id, step_index, step_id, action, state, \
            attempts, idempotency_key, params_sha256, started_at) \
        SELECT execution_id, $16::int4, $17::text, $18::text, $19::text, $20::int4, $21::bytea, \
            $22::bytea, now() \
        FROM run"
    };
}

/// [`ADMIT`] with the run's first step: the step is written only with the run, the run only
/// with the nonce; no row comes back when nothing was written.
const ADMIT_AND_START: &str = concat!(
    "WITH ",
    used_nonce!(),
    ", run AS (",
    run_from_nonce!(),
    " RETURNING execution_id) ",
    first_step_from_run!(),
    " RETURNING started_at"
);

/// [`ADMIT`] for a one-flight write: holds only if the run was written.
pub(crate) const ADMIT_CHECKED: CheckedSql = CheckedSql {
    with: concat!(
        used_nonce!(),
        ", run AS (",
        run_from_nonce!(),
        " RETURNING 1)"
    ),
    expect: "EXISTS (SELECT 1 FROM run)",
    what: "the admission",
};

/// [`ADMIT_AND_START`] for a one-flight write: holds only if the run and its step were written.
pub(crate) const ADMIT_AND_START_CHECKED: CheckedSql = CheckedSql {
    with: concat!(
        used_nonce!(),
        ", run AS (",
        run_from_nonce!(),
        " RETURNING execution_id), step AS (",
        first_step_from_run!(),
        " RETURNING 1)"
    ),
    expect: "EXISTS (SELECT 1 FROM step)",
    what: "the admission with its first step",
};

/// The stored row of one execution, decoded.
#[derive(Debug, Clone)]
pub struct ExecutionRecord {
    pub id: Uuid,
    pub node_id: String,
    pub playbook_id: String,
    pub version: u32,
    pub sha256: [u8; 32],
    pub state: RunState,
    pub org_id: String,
    pub subject: Map<String, Value>,
    pub decision: DecisionInfo,
    pub started_at: OffsetDateTime,
    pub rollback_cause: Option<RollbackCause>,
    pub cancel_requested: bool,
    pub binding: BindingRecord,
}

/// The decision fields a template or `when:` may read.
#[derive(Debug, Clone)]
pub struct DecisionInfo {
    pub decision_id: String,
    pub policy: String,
    pub outcome: String,
    pub org_id: String,
    pub severity: Severity,
}

impl DecisionInfo {
    /// The fields as templates and `when:` read them.
    pub fn fields(&self) -> crate::registry::template::DecisionFields<'_> {
        crate::registry::template::DecisionFields {
            decision_id: &self.decision_id,
            policy: &self.policy,
            outcome: &self.outcome,
            org_id: &self.org_id,
            severity: self.severity.as_str(),
        }
    }
}

/// Loads run `id` for this node (`node_id`); a run of another node is
/// [`StoreError::OtherNode`], a missing one [`StoreError::NotFound`], an undecodable one
/// [`StoreError::Corrupt`].
pub async fn load(store: &Store, id: Uuid, node_id: &str) -> Result<ExecutionRecord, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            "SELECT node_id, playbook_id, playbook_version, playbook_sha256, state, org_id, subject, \
                    policy_decision_id, policy, outcome, severity, started_at, rollback_cause, \
                    cancel_requested_at IS NOT NULL, binding \
             FROM playbook_executions WHERE execution_id = $1",
            &[&id],
        )
        .await?
        .ok_or_else(|| not_found(id))?;
    require_own(id, row.get(0), node_id)?;
    let sha: Vec<u8> = row.get(3);
    let version: i64 = row.get(2);
    let subject: Value = row.get(6);
    let cause: Option<String> = row.get(12);
    let binding: Value = row.get(14);
    let org_id: String = row.get(5);
    Ok(ExecutionRecord {
        id,
        node_id: node_id.to_owned(),
        playbook_id: row.get(1),
        version: u32::try_from(version).map_err(|_| StoreError::Corrupt {
            what: "playbook_version",
            detail: format!("{version} is out of range"),
        })?,
        sha256: sha.try_into().map_err(|_| StoreError::Corrupt {
            what: "playbook_sha256",
            detail: "not 32 bytes".into(),
        })?,
        state: RunState::decode(row.get(4))?,
        subject: match subject {
            Value::Object(map) => map,
            Value::Null
            | Value::Bool(_)
            | Value::Number(_)
            | Value::String(_)
            | Value::Array(_) => {
                return Err(StoreError::Corrupt {
                    what: "execution subject",
                    detail: "not a JSON object".into(),
                });
            }
        },
        decision: DecisionInfo {
            decision_id: row.get(7),
            policy: row.get(8),
            outcome: row.get(9),
            org_id: org_id.clone(),
            severity: Severity::decode(row.get(10))?,
        },
        org_id,
        started_at: row.get(11),
        rollback_cause: cause.as_deref().map(RollbackCause::decode).transpose()?,
        cancel_requested: row.get(13),
        binding: decode_binding(&binding)?,
    })
}

/// Who owns run `id` and for which org: what control.sock checks before it acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionScope {
    pub node_id: String,
    pub org_id: String,
    pub state: RunState,
}

/// The owner, org and state of run `id`, or `None` when there is no such run.
pub async fn scope(store: &Store, id: Uuid) -> Result<Option<ExecutionScope>, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            "SELECT node_id, org_id, state FROM playbook_executions WHERE execution_id = $1",
            &[&id],
        )
        .await?;
    row.map(|row| {
        Ok(ExecutionScope {
            node_id: row.get(0),
            org_id: row.get(1),
            state: RunState::decode(row.get(2))?,
        })
    })
    .transpose()
}

/// Every run of `node_id` that has not ended, oldest first: what start-up and the sweep resume.
pub async fn resumable(store: &Store, node_id: &str) -> Result<Vec<Uuid>, StoreError> {
    // The states as literals (our own spellings, never input), so that the planner can use the
    // partial index on the open runs (`playbook_executions_active_idx`).
    let open = transitions::open_run_states()
        .iter()
        .map(|state| format!("'{state}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let client = store.client().await?;
    // Run by the periodic sweep: prepared once per pooled connection, not parsed at every sweep.
    let statement = client
        .prepare_cached(&format!(
            "SELECT execution_id FROM playbook_executions \
             WHERE node_id = $1 AND state IN ({open}) ORDER BY started_at"
        ))
        .await?;
    let rows = client.query(&statement, &[&node_id]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Moves run `id` to `to` with `event` (which gets the execution id and the new state).
pub async fn set_state(
    audit: &AuditHandle,
    id: Uuid,
    to: RunState,
    event: AuditEvent,
) -> Result<(), AppendError> {
    set_state_after(audit, Vec::new(), id, to, event).await
}

/// [`set_state`] in one transaction with `before` (records with no side effect since, e.g. the
/// last step's end), after them; not attempted unless all of them committed.
pub async fn set_state_after(
    audit: &AuditHandle,
    before: Vec<Deferred>,
    id: Uuid,
    to: RunState,
    event: AuditEvent,
) -> Result<(), AppendError> {
    let effect = state_effect(audit, id, to, event);
    audit
        .append_after_in(Scope::Execution(id), before, effect)
        .await
        .map(|_| ())
}

/// [`set_state`], written with the caller's next append (see [`AuditHandle::defer`]): for a
/// change with no side effect before the next record (a run's start before its first step's).
pub fn defer_state(audit: &AuditHandle, id: Uuid, to: RunState, event: AuditEvent) -> Deferred {
    audit.defer_in(Scope::Execution(id), state_effect(audit, id, to, event))
}

fn state_effect(audit: &AuditHandle, id: Uuid, to: RunState, event: AuditEvent) -> Body<()> {
    let change = RunStateChange {
        execution_id: id,
        node_id: audit.node_id().to_owned(),
        to,
        end_reason: None,
    };
    let foreseen = state_event(event.clone(), id, to);
    let foresight: Foresight<()> = Box::new(move || {
        Some(Foreseen {
            records: foreseen.clone().into(),
            value: (),
            checked: vec![Checked::new(&RUN_STATE_CHANGE_CHECKED, change.one())],
        })
    });
    let effect = as_node(audit, event, move |tx, node_id, event| {
        Box::pin(async move {
            transition(tx, id, &node_id, to).await?;
            Ok((state_event(event, id, to), ()))
        })
    });
    Body::from(effect).foreseen(foresight)
}

/// `event` as the record of run `id` moving to `to` ([`set_state`]).
pub(crate) fn state_event(event: AuditEvent, id: Uuid, to: RunState) -> AuditEvent {
    event.execution(id).with("state", to.as_str())
}

/// Records a cancel request for run `id` of this node; the run's task then rolls it back.
/// Refused for a run that has ended ([`StoreError::Transition`]), another node's run
/// ([`StoreError::OtherNode`]) or none ([`StoreError::NotFound`]).
pub async fn request_cancel(
    audit: &AuditHandle,
    id: Uuid,
    uid: u32,
    reason: String,
) -> Result<(), AppendError> {
    let reason = crate::text::storable(&reason, crate::text::MAX_FIELD_BYTES);
    let scope = Scope::Execution(id);
    append_as_node(audit, scope, reason, move |tx, node_id, reason| {
        Box::pin(async move {
            let updated = tx
                .execute(
                    "UPDATE playbook_executions SET cancel_requested_at = now(), \
                         end_reason = COALESCE(end_reason, $4), updated_at = now() \
                         WHERE execution_id = $1 AND node_id = $2 AND state = ANY($3)",
                    &[
                        &id,
                        &node_id,
                        &transitions::open_run_states(),
                        &format!("cancelled by uid {uid}: {reason}"),
                    ],
                )
                .await?;
            if updated != 1 {
                return Err(explain_refusal(tx, id, &node_id, "cancel requested").await);
            }
            Ok((
                AuditEvent::new("execution.cancel_requested", Actor::Uid(uid))
                    .execution(id)
                    .with("reason", reason),
                (),
            ))
        })
    })
    .await
}

/// The guarded UPDATE of a run's state: allowed only from the states the transition table
/// lists for `to`, only for this node's run, and exactly one row; otherwise the error says
/// what the run's state (or owner) is.
pub(crate) async fn transition(
    tx: &Tx<'_>,
    id: Uuid,
    node_id: &str,
    to: RunState,
) -> Result<(), StoreError> {
    if guarded_update(tx, id, node_id, to, None).await? == 1 {
        Ok(())
    } else {
        Err(explain_refusal(tx, id, node_id, to.as_str()).await)
    }
}

/// The run's side of a gate opening: `awaiting_approval` at step `index`, guarded by the
/// transition table and this node.
pub(crate) async fn await_approval(
    tx: &Tx<'_>,
    id: Uuid,
    node_id: &str,
    index: usize,
) -> Result<(), StoreError> {
    transition(tx, id, node_id, RunState::AwaitingApproval).await?;
    tx.execute(
        "UPDATE playbook_executions SET current_step = $2 WHERE execution_id = $1",
        &[&id, &index_to_db(index)],
    )
    .await?;
    Ok(())
}

/// The run's side of a rollback's start: `rolling_back` for `cause`, guarded by the transition
/// table and this node, with `reason` as its end reason unless one is set already.
pub(crate) async fn mark_rolling_back(
    tx: &Tx<'_>,
    id: Uuid,
    node_id: &str,
    cause: RollbackCause,
    reason: &str,
) -> Result<(), StoreError> {
    transition(tx, id, node_id, RunState::RollingBack).await?;
    tx.execute(
        "UPDATE playbook_executions SET rollback_cause = $2, \
         end_reason = COALESCE(end_reason, $3) WHERE execution_id = $1",
        &[&id, &cause.as_str(), &reason],
    )
    .await?;
    Ok(())
}

/// Stops run `id` as `safe_halted` with `message` when its state allows it; `false` when the
/// run had already ended (or is not this node's): the halt is entered all the same.
pub(crate) async fn mark_safe_halted(
    tx: &Tx<'_>,
    id: Uuid,
    node_id: &str,
    message: &str,
) -> Result<bool, StoreError> {
    Ok(guarded_update(tx, id, node_id, RunState::SafeHalted, Some(message)).await? == 1)
}

/// `UPDATE … SET state = to WHERE state = ANY(sources(to))` for this node's run; the row count.
/// The changes of other runs written at the same moment share the statement
/// ([`Tx::query_set`]).
async fn guarded_update(
    tx: &Tx<'_>,
    id: Uuid,
    node_id: &str,
    to: RunState,
    end_reason: Option<&str>,
) -> Result<u64, StoreError> {
    let change = RunStateChange {
        execution_id: id,
        node_id: node_id.to_owned(),
        to,
        end_reason: end_reason.map(str::to_owned),
    };
    Ok(tx.query_set(change).await?.len() as u64)
}

/// The completion of each of `runs` (`store::set_row_statements`).
pub(crate) fn completions(runs: &[Uuid], node_id: &str) -> Vec<RunStateChange> {
    let completed = |&execution_id: &Uuid| RunStateChange {
        execution_id,
        node_id: node_id.to_owned(),
        to: RunState::Completed,
        end_reason: None,
    };
    runs.iter().map(completed).collect()
}

/// A row of [`guarded_update`]'s statement: one comes back when the run changed.
pub(crate) struct RunStateChange {
    execution_id: Uuid,
    node_id: String,
    to: RunState,
    end_reason: Option<String>,
}

/// [`RunStateChange`]'s statement for one row, without its `RETURNING`.
macro_rules! run_state_change {
    () => {
        "UPDATE playbook_executions SET state = $3, updated_at = now(), \
            completed_at = CASE WHEN $4 THEN now() ELSE completed_at END, \
            end_reason = COALESCE($6, end_reason) \
        WHERE execution_id = $1 AND node_id = $2 AND state = ANY($5)"
    };
}

/// [`RunStateChange`]'s [`SetRow::ONE`] for a one-flight write: holds only if the run changed.
pub(crate) const RUN_STATE_CHANGE_CHECKED: CheckedSql =
    crate::store::audit::checked_change!("run_change", run_state_change!(), "the run state change");

impl SetRow for RunStateChange {
    const ONE: &'static str = concat!(run_state_change!(), " RETURNING 1::int8");

    fn one(&self) -> Params {
        vec![
            Box::new(self.execution_id),
            Box::new(self.node_id.clone()),
            Box::new(self.to.as_str()),
            Box::new(self.to.is_terminal()),
            Box::new(transitions::run_sources(self.to)),
            Box::new(self.end_reason.clone()),
        ]
    }

    const MANY: &'static str = "UPDATE playbook_executions e SET state = v.state, \
            updated_at = now(), \
            completed_at = CASE WHEN v.terminal THEN now() ELSE e.completed_at END, \
            end_reason = COALESCE(v.end_reason, e.end_reason) \
        FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bool[], $5::text[], $6::text[]) \
            WITH ORDINALITY AS v(execution_id, node_id, state, terminal, sources, end_reason, i) \
        WHERE e.execution_id = v.execution_id AND e.node_id = v.node_id \
        AND e.state = ANY(v.sources::text[]) \
        RETURNING v.i";

    fn many(rows: &[Self]) -> TypedParams {
        vec![
            column(rows, Type::UUID_ARRAY, |r| r.execution_id),
            column(rows, Type::TEXT_ARRAY, |r| r.node_id.clone()),
            column(rows, Type::TEXT_ARRAY, |r| r.to.as_str()),
            column(rows, Type::BOOL_ARRAY, |r| r.to.is_terminal()),
            column(rows, Type::TEXT_ARRAY, |r| {
                transitions::sources_literal(&transitions::run_sources(r.to))
            }),
            column(rows, Type::TEXT_ARRAY, |r| r.end_reason.clone()),
        ]
    }
}

fn decode_binding(binding: &Value) -> Result<BindingRecord, StoreError> {
    let corrupt = |detail: &str| StoreError::Corrupt {
        what: "execution binding",
        detail: detail.to_owned(),
    };
    let text = |key: &str| {
        binding
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| corrupt(&format!("`{key}` is missing or not a string")))
    };
    let org_id = match binding.get("org_id") {
        Some(Value::Null) => None,
        Some(Value::String(org)) => Some(org.clone()),
        Some(_) | None => return Err(corrupt("`org_id` is missing or not a string or null")),
    };
    Ok(BindingRecord {
        policy: text("policy")?,
        outcome: text("outcome")?,
        org_id,
        playbook: text("playbook")?,
        // Missing is corrupt, never "no approval needed": that would open a gate.
        require_approval: binding
            .get("require_approval")
            .and_then(Value::as_bool)
            .ok_or_else(|| corrupt("`require_approval` is missing or not a boolean"))?,
    })
}
