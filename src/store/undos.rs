//! Undos (`playbook_rollback_states`): one row per step a rollback reached.
//!
//! An undo is an action too: [`record_start`] refuses while a SAFE-HALT is in force, exactly as
//! a step's start does. A failed undo is recorded by [`super::joint::enter_safe_halt`], which enters
//! the halt in the same transaction.

use std::collections::HashMap;

use uuid::Uuid;

use crate::store::audit::{Actor, AppendError, AuditEvent, AuditHandle, Scope, Tx};
use crate::store::halts::{self, HaltWatch};
use crate::store::model::{RunState, StepState, UndoState};
use crate::store::rows::{append_as_node, index_from_db, index_to_db, require_open_run};
use crate::store::steps::{self, StartOutcome, refused_event, step_refusal};
use crate::store::{Store, StoreError};

/// An undo's stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UndoRecord {
    pub state: UndoState,
    /// Attempts started so far, across restarts.
    pub attempts: i32,
}

/// Every undo of run `id` recorded so far, by step index.
pub async fn load(store: &Store, id: Uuid) -> Result<HashMap<usize, UndoRecord>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT step_index, state, attempts FROM playbook_rollback_states WHERE execution_id = $1",
            &[&id],
        )
        .await?;
    let mut undos = HashMap::new();
    for row in rows {
        undos.insert(
            index_from_db(row.get(0))?,
            UndoRecord {
                state: UndoState::decode(row.get(1))?,
                attempts: row.get(2),
            },
        );
    }
    Ok(undos)
}

/// Records that an undo attempt starts (the run must be this node's and rolling back), unless
/// a SAFE-HALT is in force: then only `rollback.step_start_refused` is written.
pub async fn record_start(
    audit: &AuditHandle,
    execution_id: Uuid,
    index: usize,
    step_id: String,
    watch: &HaltWatch,
) -> Result<StartOutcome, AppendError> {
    append_as_node(
        audit,
        Scope::Execution(execution_id),
        (step_id, watch.clone()),
        move |tx, node_id, (step_id, watch)| {
            Box::pin(async move {
                if let Some(halt) = halts::refuse_if_halted(&**tx, &node_id, &watch).await? {
                    let event =
                        refused_event("rollback.step_start_refused", execution_id, &step_id, &halt);
                    return Ok((event, StartOutcome::Refused(halt)));
                }
                require_rolling_back(tx, execution_id, &node_id).await?;
                tx.execute(
                    "INSERT INTO playbook_rollback_states (execution_id, step_index, state, attempts, \
                        started_at) VALUES ($1, $2, $3, 1, now()) \
                     ON CONFLICT (execution_id, step_index) DO UPDATE SET state = EXCLUDED.state, \
                        attempts = playbook_rollback_states.attempts + 1, error = NULL, finished_at = NULL",
                    &[&execution_id, &index_to_db(index), &UndoState::Running.as_str()],
                )
                .await?;
                let event = AuditEvent::new("rollback.step_started", Actor::System)
                    .execution(execution_id)
                    .with("step_id", step_id);
                Ok((event, StartOutcome::Started))
            })
        },
    )
    .await
}

/// How an undo ended without failing (a failure enters SAFE-HALT instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UndoEnd {
    /// The undo action succeeded: the step is `rolled_back`.
    Succeeded,
    /// The step said `rollback: none`: nothing to do, said explicitly.
    NotUndoable,
}

/// Records the end of an undo (and, when it succeeded, the step `rolled_back`) with its event.
pub async fn record_end(
    audit: &AuditHandle,
    execution_id: Uuid,
    index: usize,
    step_id: String,
    end: UndoEnd,
) -> Result<(), AppendError> {
    let scope = Scope::Execution(execution_id);
    append_as_node(audit, scope, step_id, move |tx, node_id, step_id| {
        Box::pin(async move {
            require_rolling_back(tx, execution_id, &node_id).await?;
            let (state, event_type) = match end {
                UndoEnd::Succeeded => (UndoState::Succeeded, "rollback.step_succeeded"),
                UndoEnd::NotUndoable => (UndoState::NotUndoable, "rollback.step_not_undoable"),
            };
            tx.execute(
                "INSERT INTO playbook_rollback_states (execution_id, step_index, state, attempts, \
                        started_at, finished_at) VALUES ($1, $2, $3, 0, now(), now()) \
                     ON CONFLICT (execution_id, step_index) DO UPDATE SET state = EXCLUDED.state, \
                        error = NULL, finished_at = now()",
                &[&execution_id, &index_to_db(index), &state.as_str()],
            )
            .await?;
            match end {
                UndoEnd::Succeeded => {
                    let to = StepState::RolledBack;
                    if steps::mark_undone(tx, execution_id, index, to).await? != 1 {
                        return Err(step_refusal(tx, execution_id, index, to).await);
                    }
                }
                UndoEnd::NotUndoable => {}
            }
            Ok((
                AuditEvent::new(event_type, Actor::System)
                    .execution(execution_id)
                    .with("step_id", step_id),
                (),
            ))
        })
    })
    .await
}

/// Records a failed undo (with its storable error) and its step `rollback_failed`, inside the
/// transaction that enters SAFE-HALT for it. Never refuses on the step's state: the halt must
/// be written whatever it finds.
pub(crate) async fn record_failed(
    tx: &Tx<'_>,
    execution_id: Uuid,
    index: usize,
    error: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO playbook_rollback_states (execution_id, step_index, state, attempts, \
            error, started_at, finished_at) \
         VALUES ($1, $2, $3, 1, $4, now(), now()) \
         ON CONFLICT (execution_id, step_index) DO UPDATE SET state = EXCLUDED.state, \
            error = EXCLUDED.error, finished_at = now()",
        &[
            &execution_id,
            &index_to_db(index),
            &UndoState::Failed.as_str(),
            &error,
        ],
    )
    .await?;
    steps::mark_undone(tx, execution_id, index, StepState::RollbackFailed).await?;
    Ok(())
}

async fn require_rolling_back(tx: &Tx<'_>, id: Uuid, node_id: &str) -> Result<(), StoreError> {
    let state = require_open_run(tx, id, node_id).await?;
    match state {
        RunState::RollingBack => Ok(()),
        RunState::Pending
        | RunState::Running
        | RunState::AwaitingApproval
        | RunState::Completed
        | RunState::RolledBack
        | RunState::SafeHalted
        | RunState::Cancelled
        | RunState::TimedOut
        | RunState::Rejected => Err(StoreError::Transition {
            what: "execution",
            id: id.to_string(),
            from: state.as_str().to_owned(),
            to: "an undo",
        }),
    }
}
