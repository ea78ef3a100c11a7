//! The changes that by nature span several aggregates, each in one audit transaction: a run
//! begins its rollback (the run, and a gate still open withdrawn with it), and a node enters
//! SAFE-HALT (the failed undo and its step, the run stopped, its gates withdrawn, the halt row).
//!
//! Each calls, for every table it writes, the module that owns it ([`executions`], [`gates`],
//! [`undos`], [`halts`]): those keep all the SQL of their tables and never call up here.

use uuid::Uuid;

use crate::store::audit::{Actor, AppendError, AuditEvent, AuditHandle, Scope, format_timestamp};
use crate::store::halts::{self, ActiveHalt, CLEAR_COMMAND, HaltCause};
use crate::store::model::{RollbackCause, RunState};
use crate::store::rows::append_as_node;
use crate::store::{executions, gates, undos};
use crate::text;

/// Marks run `id` as rolling back for `cause`, with the reason, and withdraws a gate still
/// open, in one transaction.
pub async fn begin_rollback(
    audit: &AuditHandle,
    id: Uuid,
    cause: RollbackCause,
    reason: String,
) -> Result<(), AppendError> {
    let reason = text::storable(&reason, text::MAX_FIELD_BYTES);
    let scope = Scope::Execution(id);
    append_as_node(audit, scope, reason, move |tx, node_id, reason| {
        Box::pin(async move {
            executions::mark_rolling_back(tx, id, &node_id, cause, &reason).await?;
            // A gate still open (the run was cancelled or timed out while waiting) is
            // withdrawn with the run: it must neither be listed as pending nor take votes.
            let withdrawn = gates::withdraw_pending(tx, id).await?;
            let mut event = AuditEvent::new("rollback.begin", Actor::System)
                .execution(id)
                .with("cause", cause.as_str())
                .with("reason", reason);
            if withdrawn > 0 {
                event = event.with("approval_gates_withdrawn", withdrawn);
            }
            Ok((event, ()))
        })
    })
    .await
}

/// Enters SAFE-HALT in one transaction with everything `cause` implies: for a failed undo, the
/// undo `failed`, its step `rollback_failed`, the run `safe_halted`; for an unusable run, the
/// run `safe_halted` when its state allows it. Then the halt row (or the node's active one) and
/// `safe_halt.entered`. Every text is storable, so content cannot make this fail.
pub async fn enter_safe_halt(
    audit: &AuditHandle,
    cause: HaltCause,
) -> Result<ActiveHalt, AppendError> {
    append_as_node(audit, Scope::Global, cause, |tx, node_id, cause| {
        Box::pin(async move {
            let message = cause.message();
            let execution_id = cause.execution_id();
            let mut event = AuditEvent::new("safe_halt.entered", Actor::System)
                .execution(execution_id)
                .with("clear_with", CLEAR_COMMAND);
            match &cause {
                HaltCause::FailedUndo {
                    step_index,
                    step_id,
                    error,
                    ..
                } => {
                    let error = text::storable(error, text::MAX_FIELD_BYTES);
                    undos::record_failed(tx, execution_id, *step_index, &error).await?;
                    event = event.with("step_id", format!("{execution_id}:{step_id}"));
                }
                HaltCause::UnusableRun { .. } => {}
            }
            let marked = executions::mark_safe_halted(tx, execution_id, &node_id, &message).await?;
            if marked {
                // A gate of a stopped run must neither be listed as pending nor take votes.
                gates::withdraw_pending(tx, execution_id).await?;
            }
            event = event.with(
                "execution_state",
                if marked {
                    RunState::SafeHalted.as_str()
                } else {
                    "unchanged"
                },
            );
            let rollback_id = match &cause {
                HaltCause::FailedUndo { step_id, .. } => Some(format!("{execution_id}:{step_id}")),
                HaltCause::UnusableRun { .. } => None,
            };
            let halt = halts::insert_or_find(
                tx,
                &node_id,
                Some(execution_id),
                rollback_id.as_deref(),
                &message,
            )
            .await?;
            let event = event
                .with("halt_id", halt.halt_id)
                .with("error", message)
                .with("entered_at", format_timestamp(halt.entered_at));
            Ok((event, halt))
        })
    })
    .await
}
