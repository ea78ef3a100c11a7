//! Approval gates and votes (`playbook_approval_gates`, `playbook_approvals`).
//!
//! A gate leaves `pending` once (approved, denied, expired, or withdrawn with its run), by an
//! UPDATE guarded on `state = 'pending'`. A vote locks its gate, is refused for a run of another
//! node, and an approving vote is refused while a SAFE-HALT is in force (see README "SAFE-HALT":
//! an approval given during a halt must not fire the moment an admin clears it).

use std::time::Duration;

use crate::store::audit::Tx;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::registry::model::RiskTier;
use crate::store::audit::{
    Actor, AppendError, AuditEvent, AuditHandle, Effect, Scope, format_timestamp,
};
use crate::store::executions;
use crate::store::halts::{self, HaltWatch};
use crate::store::model::{GateState, Vote, decode_risk};
use crate::store::rows::{
    append_as_node, index_from_db, index_to_db, require_open_run, require_own,
};
use crate::store::{Store, StoreError};

/// A gate to open for a step.
#[derive(Debug, Clone)]
pub struct NewGate {
    pub execution_id: Uuid,
    pub step_index: usize,
    pub step_id: String,
    pub risk: RiskTier,
    pub required: u8,
    /// What approvers are shown (redacted by the caller).
    pub context: Value,
    pub expires_after: Duration,
}

/// Opens the gate (or finds the one opened before a restart) and moves the run to
/// `awaiting_approval`, with `approval.requested` (or `approval.waiting`). `Ok(true)` when the
/// gate was opened now.
pub async fn open(audit: &AuditHandle, gate: NewGate) -> Result<bool, AppendError> {
    let NewGate {
        execution_id,
        step_index,
        step_id,
        risk,
        required,
        context,
        expires_after,
    } = gate;
    let context = crate::text::storable_json(context);
    let expires_ms = i64::try_from(expires_after.as_millis()).unwrap_or(i64::MAX);
    append_as_node(
        audit,
        Scope::Execution(execution_id),
        (step_id, context),
        move |tx, node_id, (step_id, context)| {
            Box::pin(async move {
                let index = index_to_db(step_index);
                let opened = tx
                    .execute(
                        "INSERT INTO playbook_approval_gates (execution_id, step_index, risk, required, state, \
                            context, opened_at, expires_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, now(), now() + $7 * interval '1 millisecond') \
                         ON CONFLICT (execution_id, step_index) DO NOTHING",
                        &[&execution_id, &index, &risk.as_str(), &i32::from(required),
                          &GateState::Pending.as_str(), &context, &(expires_ms as f64)],
                    )
                    .await?
                    == 1;
                executions::await_approval(tx, execution_id, &node_id, step_index).await?;
                let event_type = if opened {
                    "approval.requested"
                } else {
                    "approval.waiting"
                };
                Ok((
                    AuditEvent::new(event_type, Actor::System)
                        .execution(execution_id)
                        .with("step_id", step_id)
                        .with("risk", risk.as_str())
                        .with("required", required),
                    opened,
                ))
            })
        },
    )
    .await
}

/// A gate's state and deadline, and how long it waited once resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateStatus {
    pub state: GateState,
    pub expires_at: OffsetDateTime,
    /// From opening to resolution, once resolved (`playbookd_approval_wait_seconds`).
    pub waited_seconds: Option<f64>,
}

/// The state of the gate of step `index` of run `id`.
pub async fn status(store: &Store, id: Uuid, index: usize) -> Result<GateStatus, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            "SELECT state, expires_at, EXTRACT(EPOCH FROM resolved_at - opened_at)::float8 FROM playbook_approval_gates WHERE execution_id = $1 AND step_index = $2",
            &[&id, &index_to_db(index)],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "approval gate",
            detail: format!("{id}#{index}"),
        })?;
    Ok(GateStatus {
        state: GateState::decode(row.get(0))?,
        expires_at: row.get(1),
        waited_seconds: row.get(2),
    })
}

/// Who denied the gate and why (`uid N: reason`), if a deny vote is recorded.
pub async fn deny_reason(
    store: &Store,
    id: Uuid,
    index: usize,
) -> Result<Option<String>, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            "SELECT approver_uid, reason FROM playbook_approvals \
             WHERE execution_id = $1 AND step_index = $2 AND verdict = $3 ORDER BY created_at LIMIT 1",
            &[&id, &index_to_db(index), &Vote::Deny.as_str()],
        )
        .await?;
    Ok(row.map(|row| format!("uid {}: {}", row.get::<_, i64>(0), row.get::<_, String>(1))))
}

/// Expires a pending gate with `approval.expired`. `Ok(false)` when the gate had already left
/// `pending` (a vote or a withdrawal came first): nothing is written.
pub async fn expire(
    audit: &AuditHandle,
    id: Uuid,
    index: usize,
    step_id: String,
) -> Result<bool, AppendError> {
    let effect: Effect<bool> = Box::new(move |tx| {
        let step_id = step_id.clone();
        Box::pin(async move {
            let expired =
                resolve_pending(tx, id, index_to_db(index), GateState::Expired).await? == 1;
            let mut event = AuditEvent::new("approval.expired", Actor::System)
                .execution(id)
                .with("step_id", step_id);
            if !expired {
                event = event.with("already_resolved", true);
            }
            Ok((event, expired))
        })
    });
    let (_, expired) = audit.append_in(Scope::Execution(id), effect).await?;
    Ok(expired)
}

/// Records the escalation of a gate near its expiry.
pub async fn escalated(
    audit: &AuditHandle,
    id: Uuid,
    step_id: &str,
    expires_at: OffsetDateTime,
) -> Result<(), AppendError> {
    audit
        .append(
            AuditEvent::new("approval.escalated", Actor::System)
                .execution(id)
                .with("step_id", step_id)
                .with("expires_at", format_timestamp(expires_at)),
        )
        .await
        .map(|_| ())
}

/// A pending gate found by its step id, for a vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingGate {
    pub index: usize,
    pub risk: RiskTier,
    /// Past its deadline, not yet expired by its run.
    pub expired: bool,
}

/// The pending gate of step `step_id` of run `id`, if any; [`StoreError::OtherNode`] when the
/// run belongs to another node.
pub async fn find_pending(
    store: &Store,
    id: Uuid,
    step_id: &str,
    node_id: &str,
) -> Result<Option<PendingGate>, StoreError> {
    if let Some(run) = executions::scope(store, id).await? {
        require_own(id, run.node_id, node_id)?;
    }
    let client = store.client().await?;
    let row = client
        .query_opt(
            "SELECT step_index, risk, expires_at <= now() FROM playbook_approval_gates \
             WHERE execution_id = $1 AND state = $2 AND context->>'step_id' = $3",
            &[&id, &GateState::Pending.as_str(), &step_id],
        )
        .await?;
    row.map(|row| {
        Ok(PendingGate {
            index: index_from_db(row.get(0))?,
            risk: decode_risk(row.get(1))?,
            expired: row.get(2),
        })
    })
    .transpose()
}

/// One vote to record.
#[derive(Debug, Clone)]
pub struct NewVote {
    pub execution_id: Uuid,
    pub index: usize,
    pub step_id: String,
    pub uid: u32,
    pub vote: Vote,
    pub reason: String,
}

/// The gate after a vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct VoteOutcome {
    pub gate_state: GateState,
    pub approvals: i64,
    pub required: i32,
}

/// Records one vote and resolves the gate when it decides it, with `approval.vote`, in one
/// transaction. Refused: a gate no longer pending ([`StoreError::Transition`]), a run of another
/// node ([`StoreError::OtherNode`]), an approval during SAFE-HALT ([`StoreError::Halted`]), a
/// second vote of one uid (a unique violation, [`StoreError::Query`]).
pub async fn vote(
    audit: &AuditHandle,
    vote: NewVote,
    watch: &HaltWatch,
) -> Result<VoteOutcome, AppendError> {
    let scope = Scope::Execution(vote.execution_id);
    append_as_node(
        audit,
        scope,
        (vote, watch.clone()),
        |tx, node_id, (vote, watch)| {
            Box::pin(async move {
                let NewVote {
                    execution_id,
                    index,
                    step_id,
                    uid,
                    vote,
                    reason,
                } = vote;
                require_open_run(tx, execution_id, &node_id).await?;
                let index = index_to_db(index);
                let gate = tx
                    .query_one(
                        "SELECT state, required FROM playbook_approval_gates \
                         WHERE execution_id = $1 AND step_index = $2 FOR UPDATE",
                        &[&execution_id, &index],
                    )
                    .await?;
                let state = GateState::decode(gate.get(0))?;
                let required: i32 = gate.get(1);
                if state != GateState::Pending {
                    return Err(StoreError::Transition {
                        what: "approval gate",
                        id: format!("{execution_id}#{index}"),
                        from: state.as_str().to_owned(),
                        to: "a vote",
                    });
                }
                match vote {
                    Vote::Approve => {
                        if let Some(halt) = halts::refuse_if_halted(&**tx, &node_id, &watch).await?
                        {
                            return Err(StoreError::Halted(Box::new(halt)));
                        }
                    }
                    // A deny stops a run: allowed during a halt (its undos wait for the clear).
                    Vote::Deny => {}
                }
                let reason = crate::text::storable(&reason, crate::text::MAX_FIELD_BYTES);
                tx.execute(
                    "INSERT INTO playbook_approvals (execution_id, step_index, approver_uid, verdict, reason, created_at) \
                     VALUES ($1, $2, $3, $4, $5, now())",
                    &[&execution_id, &index, &i64::from(uid), &vote.as_str(), &reason],
                )
                .await?;
                let approvals: i64 = tx
                    .query_one(
                        "SELECT count(*) FROM playbook_approvals \
                         WHERE execution_id = $1 AND step_index = $2 AND verdict = $3",
                        &[&execution_id, &index, &Vote::Approve.as_str()],
                    )
                    .await?
                    .get(0);
                let gate_state = match vote {
                    Vote::Deny => GateState::Denied,
                    Vote::Approve if approvals >= i64::from(required) => GateState::Approved,
                    Vote::Approve => GateState::Pending,
                };
                match gate_state {
                    GateState::Denied | GateState::Approved => {
                        resolve_pending(tx, execution_id, index, gate_state).await?;
                    }
                    GateState::Pending | GateState::Expired | GateState::Cancelled => {}
                }
                let outcome = VoteOutcome {
                    gate_state,
                    approvals,
                    required,
                };
                let event = AuditEvent::new("approval.vote", Actor::Uid(uid))
                    .execution(execution_id)
                    .with("step_id", step_id)
                    .with("verdict", vote.as_str())
                    .with("reason", reason)
                    .with("gate_state", gate_state.as_str())
                    .with("approvals", approvals)
                    .with("required", required);
                Ok((event, outcome))
            })
        },
    )
    .await
}

/// Every pending gate of `node_id`'s runs with its context and the votes so far, oldest first.
pub async fn pending(store: &Store, node_id: &str) -> Result<Vec<Value>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT g.context, g.required, g.opened_at, g.expires_at, \
                COALESCE((SELECT json_agg(json_build_object('uid', a.approver_uid, 'verdict', a.verdict) \
                                          ORDER BY a.created_at) \
                          FROM playbook_approvals a \
                          WHERE a.execution_id = g.execution_id AND a.step_index = g.step_index), '[]'::json) \
             FROM playbook_approval_gates g JOIN playbook_executions e USING (execution_id) \
             WHERE g.state = $1 AND e.node_id = $2 ORDER BY g.opened_at",
            &[&GateState::Pending.as_str(), &node_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let mut context: Value = row.get(0);
            let votes: Value = row.get(4);
            context["required"] = json!(row.get::<_, i32>(1));
            context["opened_at"] = json!(format_timestamp(row.get(2)));
            context["expires_at"] = json!(format_timestamp(row.get(3)));
            context["votes"] = votes;
            context
        })
        .collect())
}

/// Withdraws the gates of run `id` still pending (the run stopped while they waited).
pub(crate) async fn withdraw_pending(tx: &Tx<'_>, id: Uuid) -> Result<u64, StoreError> {
    Ok(tx
        .execute(
            "UPDATE playbook_approval_gates SET state = $2, resolved_at = now() \
             WHERE execution_id = $1 AND state = $3",
            &[
                &id,
                &GateState::Cancelled.as_str(),
                &GateState::Pending.as_str(),
            ],
        )
        .await?)
}

/// Moves a pending gate to `to`; the number of rows changed (0 when it was no longer pending).
async fn resolve_pending(
    tx: &Tx<'_>,
    id: Uuid,
    index: i32,
    to: GateState,
) -> Result<u64, StoreError> {
    Ok(tx
        .execute(
            "UPDATE playbook_approval_gates SET state = $3, resolved_at = now() \
             WHERE execution_id = $1 AND step_index = $2 AND state = $4",
            &[&id, &index, &to.as_str(), &GateState::Pending.as_str()],
        )
        .await?)
}
