//! SAFE-HALT: the persisted "stop acting" state entered when a rollback fails.
//!
//! The row in `playbook_safe_halt_state` is the truth; this module keeps a watch channel in
//! step with it so the intake and the executor can check it without a query, and so tasks can
//! wait for it to clear. It is loaded at start (a halt survives restarts) and changes only
//! together with its audit event.

use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::store::audit::{Actor, AppendError, AuditEvent, AuditHandle};
use crate::store::{Store, StoreError};
use crate::systemd;

/// The active halt, as operators see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Halt {
    pub halt_id: i64,
    pub execution_id: Option<uuid::Uuid>,
    pub error_message: String,
    pub entered_at: OffsetDateTime,
}

#[derive(Clone)]
pub struct SafeHalt {
    state: Arc<watch::Sender<Option<Halt>>>,
    audit: AuditHandle,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no SAFE-HALT is active")]
    NotActive,
    #[error("a reason is required to clear a SAFE-HALT")]
    NoReason,
    #[error("the audit log is unavailable; SAFE-HALT stays active")]
    Audit(#[source] AppendError),
}

impl SafeHalt {
    /// Reads the active halt (if any) from the database.
    pub async fn load(store: &Store, audit: AuditHandle) -> Result<SafeHalt, StoreError> {
        let client = store.client().await?;
        let row = client
            .query_opt(
                "SELECT halt_id, execution_id, error_message, entered_at \
                 FROM playbook_safe_halt_state WHERE is_active",
                &[],
            )
            .await?;
        let halt = row.map(|row| Halt {
            halt_id: row.get(0),
            execution_id: row.get(1),
            error_message: row.get(2),
            entered_at: row.get(3),
        });
        if let Some(halt) = &halt {
            tracing::error!(halt_id = halt.halt_id, error = %halt.error_message, "SAFE-HALT is active: nothing will run until an admin clears it");
            systemd::notify_status(&status_line(halt));
        }
        metrics::gauge!("playbookd_safe_halt_active").set(if halt.is_some() { 1.0 } else { 0.0 });
        Ok(SafeHalt {
            state: Arc::new(watch::channel(halt).0),
            audit,
        })
    }

    pub fn active(&self) -> Option<Halt> {
        self.state.borrow().clone()
    }

    pub fn is_active(&self) -> bool {
        self.state.borrow().is_some()
    }

    /// Resolves once no halt is active.
    pub async fn wait_clear(&self) {
        let mut receiver = self.state.subscribe();
        let _ = receiver.wait_for(Option::is_none).await;
    }

    /// Records that a halt was entered inside the caller's transaction (see the executor),
    /// after that transaction committed.
    pub fn entered(&self, halt: Halt) {
        tracing::error!(
            halt_id = halt.halt_id,
            execution_id = ?halt.execution_id,
            error = %halt.error_message,
            priority = "critical",
            "SAFE-HALT entered: a rollback failed; every new decision and step is refused until an admin clears it"
        );
        systemd::notify_status(&status_line(&halt));
        metrics::gauge!("playbookd_safe_halt_active").set(1.0);
        self.state.send_replace(Some(halt));
    }

    /// Clears the active halt, with the admin's uid and reason, audited in the same transaction.
    pub async fn resolve(&self, admin_uid: u32, reason: &str) -> Result<(), ResolveError> {
        let reason = reason.trim().to_owned();
        if reason.is_empty() {
            return Err(ResolveError::NoReason);
        }
        let Some(halt) = self.active() else {
            return Err(ResolveError::NotActive);
        };
        let halt_id = halt.halt_id;
        let logged_reason = reason.clone();
        self.audit
            .append_with(Box::new(move |tx| {
                Box::pin(async move {
                    tx.execute(
                        "UPDATE playbook_safe_halt_state \
                         SET is_active = false, resolved_at = now(), resolved_by = $2, reason = $3 \
                         WHERE halt_id = $1 AND is_active",
                        &[&halt_id, &i64::from(admin_uid), &reason],
                    )
                    .await?;
                    Ok((
                        AuditEvent::new("safe_halt.cleared", Actor::Uid(admin_uid))
                            .with("halt_id", halt_id)
                            .with("reason", reason),
                        (),
                    ))
                })
            }))
            .await
            .map_err(ResolveError::Audit)?;
        tracing::warn!(halt_id, admin_uid, reason = %logged_reason, "SAFE-HALT cleared");
        metrics::gauge!("playbookd_safe_halt_active").set(0.0);
        systemd::notify_status("ready: SAFE-HALT cleared");
        self.state.send_replace(None);
        Ok(())
    }
}

pub fn status_line(halt: &Halt) -> String {
    let since = halt
        .entered_at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    format!("SAFE-HALT since {since}: {}", halt.error_message)
}

/// Enters SAFE-HALT for a failed rollback, in one transaction: the undo and step marked
/// failed, the run `safe_halted`, the halt row (or the already active one), and the event.
pub async fn enter(
    audit: &AuditHandle,
    execution_id: uuid::Uuid,
    step_index: usize,
    step_id: &str,
    error_message: String,
) -> Result<Halt, AppendError> {
    let index = i32::try_from(step_index).unwrap_or(i32::MAX);
    let rollback_id = format!("{execution_id}:{step_id}");
    let node_id = audit.node_id().to_owned();
    // Error text may quote an action's output: made storable so the halt can always be written.
    let message = crate::text::storable(&error_message, crate::text::MAX_FIELD_BYTES);
    let (_, halt) = audit
        .append_with(Box::new(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO playbook_rollback_states (execution_id, step_index, state, attempts, error, started_at, finished_at) \
                     VALUES ($1, $2, 'failed', 1, $3, now(), now()) \
                     ON CONFLICT (execution_id, step_index) DO UPDATE SET state = 'failed', error = $3, finished_at = now()",
                    &[&execution_id, &index, &message],
                )
                .await?;
                tx.execute(
                    "UPDATE playbook_step_runs SET state = 'rollback_failed' WHERE execution_id = $1 AND step_index = $2",
                    &[&execution_id, &index],
                )
                .await?;
                tx.execute(
                    "UPDATE playbook_executions SET state = 'safe_halted', completed_at = now(), updated_at = now(), \
                     end_reason = $2 WHERE execution_id = $1",
                    &[&execution_id, &message],
                )
                .await?;
                let inserted = tx
                    .query_opt(
                        "INSERT INTO playbook_safe_halt_state (is_active, node_id, execution_id, rollback_id, error_message, entered_at) \
                         VALUES (true, $1, $2, $3, $4, now()) \
                         ON CONFLICT (is_active) WHERE is_active DO NOTHING RETURNING halt_id, entered_at",
                        &[&node_id, &execution_id, &rollback_id, &message],
                    )
                    .await?;
                let row = match inserted {
                    Some(row) => row,
                    None => {
                        tx.query_one(
                            "SELECT halt_id, entered_at FROM playbook_safe_halt_state WHERE is_active",
                            &[],
                        )
                        .await?
                    }
                };
                let halt_id: i64 = row.get(0);
                let entered_at: OffsetDateTime = row.get(1);
                let event = AuditEvent::new("safe_halt.entered", Actor::System)
                    .execution(execution_id)
                    .with("halt_id", halt_id)
                    .with("step_id", rollback_id)
                    .with("error", message.clone())
                    .with("entered_at", crate::store::audit::format_timestamp(entered_at));
                let halt = Halt {
                    halt_id,
                    execution_id: Some(execution_id),
                    error_message: message,
                    entered_at,
                };
                Ok((event, halt))
            })
        }))
        .await?;
    Ok(halt)
}
