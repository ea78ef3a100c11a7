//! Reading and writing an execution's persisted state. Every write goes through the audit
//! writer: the state change and its audit event commit together, or neither does.

use std::collections::HashMap;

use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use super::state::{RollbackCause, RunState, StepState};
use crate::store::audit::{Actor, AppendError, AuditEvent, AuditHandle};
use crate::store::{Store, StoreError};

/// The stored row of one execution.
#[derive(Debug, Clone)]
pub struct ExecutionRecord {
    pub id: Uuid,
    pub playbook_id: String,
    pub version: i64,
    pub sha256: [u8; 32],
    pub state: RunState,
    pub org_id: String,
    pub subject: serde_json::Map<String, Value>,
    pub decision: DecisionInfo,
    pub started_at: OffsetDateTime,
    pub rollback_cause: Option<RollbackCause>,
    pub cancel_requested: bool,
    pub require_approval: bool,
}

/// The decision fields a template or `when:` may read.
#[derive(Debug, Clone)]
pub struct DecisionInfo {
    pub decision_id: String,
    pub policy: String,
    pub outcome: String,
    pub org_id: String,
    pub severity: String,
}

impl DecisionInfo {
    pub fn fields(&self) -> crate::registry::template::DecisionFields<'_> {
        crate::registry::template::DecisionFields {
            decision_id: &self.decision_id,
            policy: &self.policy,
            outcome: &self.outcome,
            org_id: &self.org_id,
            severity: &self.severity,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct StepRecord {
    pub state: StepState,
    pub attempts: i32,
}

/// What the rollback of one step has reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UndoState {
    Running,
    Succeeded,
    Failed,
    NotUndoable,
}

pub async fn load_execution(store: &Store, id: Uuid) -> Result<ExecutionRecord, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_one(
            "SELECT playbook_id, playbook_version, playbook_sha256, state, org_id, subject, \
                    policy_decision_id, policy, outcome, severity, started_at, rollback_cause, \
                    cancel_requested_at IS NOT NULL, binding \
             FROM playbook_executions WHERE execution_id = $1",
            &[&id],
        )
        .await?;
    let sha: Vec<u8> = row.get(2);
    let state: String = row.get(3);
    let subject: Value = row.get(5);
    let cause: Option<String> = row.get(11);
    let binding: Value = row.get(13);
    Ok(ExecutionRecord {
        id,
        playbook_id: row.get(0),
        version: row.get(1),
        sha256: sha.try_into().map_err(|_| StoreError::Corrupt {
            what: "playbook_sha256",
            detail: "not 32 bytes".into(),
        })?,
        state: state.parse()?,
        org_id: row.get(4),
        subject: match subject {
            Value::Object(map) => map,
            _ => {
                return Err(StoreError::Corrupt {
                    what: "execution subject",
                    detail: "not a JSON object".into(),
                });
            }
        },
        decision: DecisionInfo {
            decision_id: row.get(6),
            policy: row.get(7),
            outcome: row.get(8),
            org_id: row.get(4),
            severity: row.get(9),
        },
        started_at: row.get(10),
        rollback_cause: cause.as_deref().map(str::parse).transpose()?,
        cancel_requested: row.get(12),
        require_approval: binding
            .get("require_approval")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

pub async fn load_steps(store: &Store, id: Uuid) -> Result<HashMap<usize, StepRecord>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT step_index, state, attempts FROM playbook_step_runs WHERE execution_id = $1",
            &[&id],
        )
        .await?;
    let mut steps = HashMap::new();
    for row in rows {
        let index: i32 = row.get(0);
        let state: String = row.get(1);
        steps.insert(
            index_from_db(index)?,
            StepRecord {
                state: state.parse()?,
                attempts: row.get(2),
            },
        );
    }
    Ok(steps)
}

pub async fn load_undo_states(
    store: &Store,
    id: Uuid,
) -> Result<HashMap<usize, UndoState>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT step_index, state FROM playbook_rollback_states WHERE execution_id = $1",
            &[&id],
        )
        .await?;
    let mut states = HashMap::new();
    for row in rows {
        let index: i32 = row.get(0);
        let state: String = row.get(1);
        let state = match state.as_str() {
            "running" | "pending" => UndoState::Running,
            "succeeded" => UndoState::Succeeded,
            "failed" => UndoState::Failed,
            "not_undoable" => UndoState::NotUndoable,
            other => {
                return Err(StoreError::Corrupt {
                    what: "rollback state",
                    detail: format!("unknown value `{other}`"),
                });
            }
        };
        states.insert(index_from_db(index)?, state);
    }
    Ok(states)
}

/// Sets the run's state, with its audit event, in one transaction.
pub async fn set_run_state(
    audit: &AuditHandle,
    id: Uuid,
    state: RunState,
    event: AuditEvent,
) -> Result<(), AppendError> {
    audit
        .append_with(Box::new(move |tx| {
            Box::pin(async move {
                let completed = state.is_terminal();
                tx.execute(
                    "UPDATE playbook_executions SET state = $2, updated_at = now(), \
                     completed_at = CASE WHEN $3 THEN now() ELSE completed_at END \
                     WHERE execution_id = $1 AND state NOT IN \
                       ('completed','rolled_back','safe_halted','cancelled','timed_out','rejected')",
                    &[&id, &state.as_str(), &completed],
                )
                .await?;
                Ok((event.execution(id).with("state", state.as_str()), ()))
            })
        }))
        .await
        .map(|_| ())
}

/// Marks the run as rolling back for `cause`, with the reason, in one transaction.
pub async fn begin_rollback(
    audit: &AuditHandle,
    id: Uuid,
    cause: RollbackCause,
    reason: String,
) -> Result<(), AppendError> {
    audit
        .append_with(Box::new(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "UPDATE playbook_executions SET state = 'rolling_back', rollback_cause = $2, \
                     end_reason = COALESCE(end_reason, $3), updated_at = now() WHERE execution_id = $1",
                    &[&id, &cause.as_str(), &reason],
                )
                .await?;
                // A gate still open (the run was cancelled or timed out while waiting) is
                // withdrawn with the run: it must neither be listed as pending nor take votes.
                let withdrawn = tx
                    .execute(
                        "UPDATE playbook_approval_gates SET state = 'cancelled', resolved_at = now() \
                         WHERE execution_id = $1 AND state = 'pending'",
                        &[&id],
                    )
                    .await?;
                let mut event = AuditEvent::new("rollback.begin", Actor::System)
                    .execution(id)
                    .with("cause", cause.as_str())
                    .with("reason", reason);
                if withdrawn > 0 {
                    event = event.with("approval_gates_withdrawn", withdrawn);
                }
                Ok((event, ()))
            })
        }))
        .await
        .map(|_| ())
}

/// What is written when a step (or an attempt of it) starts.
pub struct StepStart {
    pub execution_id: Uuid,
    pub index: usize,
    pub step_id: String,
    pub action: String,
    pub attempt: i32,
    pub idempotency_key: [u8; 32],
    pub params: Value,
}

/// Persists `running` and the `step.started` event; the action may run only once this
/// returns `Ok` (rule 4: nothing happens before its audit record is durable).
pub async fn record_step_start(audit: &AuditHandle, start: StepStart) -> Result<(), AppendError> {
    let params_sha256 = params_hash(&start.params);
    audit
        .append_with(Box::new(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO playbook_step_runs (execution_id, step_index, step_id, action, state, \
                        attempts, idempotency_key, params_sha256, started_at) \
                     VALUES ($1, $2, $3, $4, 'running', $5, $6, $7, now()) \
                     ON CONFLICT (execution_id, step_index) DO UPDATE SET state = 'running', \
                        attempts = EXCLUDED.attempts, params_sha256 = EXCLUDED.params_sha256, \
                        error = NULL, error_class = NULL, finished_at = NULL",
                    &[
                        &start.execution_id,
                        &index_to_db(start.index),
                        &start.step_id,
                        &start.action,
                        &start.attempt,
                        &start.idempotency_key.as_slice(),
                        &params_sha256.as_slice(),
                    ],
                )
                .await?;
                tx.execute(
                    "UPDATE playbook_executions SET state = 'running', current_step = $2, updated_at = now() \
                     WHERE execution_id = $1",
                    &[&start.execution_id, &index_to_db(start.index)],
                )
                .await?;
                Ok((AuditEvent::new("step.started", Actor::System)
                    .execution(start.execution_id)
                    .with("step_id", start.step_id)
                    .with("action", start.action)
                    .with("attempt", start.attempt)
                    .with("params_sha256", hex::encode(params_sha256)), ()))
            })
        }))
        .await
        .map(|_| ())
}

/// The end of one attempt.
pub enum StepEnd {
    Succeeded {
        output: Value,
    },
    /// A transient failure that will be retried after `delay_ms`.
    Retrying {
        class: &'static str,
        error: String,
        delay_ms: u64,
    },
    Failed {
        class: &'static str,
        error: String,
    },
    Skipped {
        reason: String,
    },
}

pub async fn record_step_end(
    audit: &AuditHandle,
    execution_id: Uuid,
    index: usize,
    step_id: String,
    action: String,
    end: StepEnd,
) -> Result<(), AppendError> {
    audit
        .append_with(Box::new(move |tx| {
            Box::pin(async move {
                let (state, event_type, output, class, error, reason) = match &end {
                    StepEnd::Succeeded { output } => {
                        ("succeeded", "step.succeeded", Some(output.clone()), None, None, None)
                    }
                    StepEnd::Retrying { class, error, .. } => {
                        ("running", "step.retry", None, Some(*class), Some(error.clone()), None)
                    }
                    StepEnd::Failed { class, error } => {
                        ("failed", "step.failed", None, Some(*class), Some(error.clone()), None)
                    }
                    StepEnd::Skipped { reason } => {
                        ("skipped", "step.skipped", None, None, None, Some(reason.clone()))
                    }
                };
                let finished = !matches!(end, StepEnd::Retrying { .. });
                tx.execute(
                    "INSERT INTO playbook_step_runs (execution_id, step_index, step_id, action, state, \
                        attempts, idempotency_key, skip_reason, output, error_class, error, finished_at) \
                     VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $9, $10, now()) \
                     ON CONFLICT (execution_id, step_index) DO UPDATE SET state = EXCLUDED.state, \
                        skip_reason = EXCLUDED.skip_reason, output = EXCLUDED.output, \
                        error_class = EXCLUDED.error_class, error = EXCLUDED.error, \
                        finished_at = CASE WHEN $11 THEN now() ELSE NULL END",
                    &[
                        &execution_id,
                        &index_to_db(index),
                        &step_id,
                        &action,
                        &state,
                        &step_key(execution_id, &step_id).as_slice(),
                        &reason,
                        &output,
                        &class,
                        &error,
                        &finished,
                    ],
                )
                .await?;
                let mut event = AuditEvent::new(event_type, Actor::System)
                    .execution(execution_id)
                    .with("step_id", step_id)
                    .with("action", action);
                if let Some(class) = class {
                    event = event.with("error_class", class);
                }
                if let Some(error) = error {
                    event = event.with("error", error);
                }
                if let Some(reason) = reason {
                    event = event.with("reason", reason);
                }
                if let StepEnd::Retrying { delay_ms, .. } = end {
                    event = event.with("retry_in_ms", delay_ms);
                }
                if let Some(output) = output {
                    event = event.with("output_sha256", hex::encode(params_hash(&output)));
                }
                Ok((event, ()))
            })
        }))
        .await
        .map(|_| ())
}

/// Persists an undo step's state (and, when it ends, the step's own state), with its event.
pub async fn record_undo(
    audit: &AuditHandle,
    execution_id: Uuid,
    index: usize,
    step_id: String,
    state: UndoState,
    error: Option<String>,
) -> Result<(), AppendError> {
    audit
        .append_with(Box::new(move |tx| {
            Box::pin(async move {
                let (undo_state, event_type, step_state) = match state {
                    UndoState::Running => ("running", "rollback.step_started", None),
                    UndoState::Succeeded => {
                        ("succeeded", "rollback.step_succeeded", Some(StepState::RolledBack))
                    }
                    UndoState::Failed => {
                        ("failed", "rollback.step_failed", Some(StepState::RollbackFailed))
                    }
                    UndoState::NotUndoable => ("not_undoable", "rollback.step_not_undoable", None),
                };
                tx.execute(
                    "INSERT INTO playbook_rollback_states (execution_id, step_index, state, attempts, error, \
                        started_at, finished_at) \
                     VALUES ($1, $2, $3, 1, $4, now(), CASE WHEN $3 = 'running' THEN NULL ELSE now() END) \
                     ON CONFLICT (execution_id, step_index) DO UPDATE SET state = EXCLUDED.state, \
                        attempts = playbook_rollback_states.attempts + CASE WHEN EXCLUDED.state = 'running' THEN 1 ELSE 0 END, \
                        error = EXCLUDED.error, finished_at = EXCLUDED.finished_at",
                    &[&execution_id, &index_to_db(index), &undo_state, &error],
                )
                .await?;
                if let Some(step_state) = step_state {
                    tx.execute(
                        "UPDATE playbook_step_runs SET state = $3 WHERE execution_id = $1 AND step_index = $2",
                        &[&execution_id, &index_to_db(index), &step_state.as_str()],
                    )
                    .await?;
                }
                let mut event = AuditEvent::new(event_type, Actor::System)
                    .execution(execution_id)
                    .with("step_id", step_id);
                if let Some(error) = error {
                    event = event.with("error", error);
                }
                Ok((event, ()))
            })
        }))
        .await
        .map(|_| ())
}

/// SHA-256(execution_id ‖ step_id): the same on every attempt and after every restart.
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

/// Hash of rendered parameters for the audit log: proves what ran without storing secrets.
pub fn params_hash(params: &Value) -> [u8; 32] {
    let canonical = serde_json_canonicalizer::to_vec(params).unwrap_or_default();
    Sha256::digest(&canonical).into()
}

pub fn index_to_db(index: usize) -> i32 {
    i32::try_from(index).unwrap_or(i32::MAX)
}

fn index_from_db(index: i32) -> Result<usize, StoreError> {
    usize::try_from(index).map_err(|_| StoreError::Corrupt {
        what: "step index",
        detail: format!("negative index {index}"),
    })
}
