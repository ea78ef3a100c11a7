//! Approval gates: the riskier the step, the more people must say yes, and anyone can say no.
//!
//! low → no gate; moderate → a gate only when the binding asks; high → one approval;
//! critical → two approvals from distinct uids. The gate row and every vote are persisted,
//! so a waiting step keeps waiting across restarts and continues once approved. A gate
//! expires (default 15 min) and the run rolls back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::registry::model::RiskTier;
use crate::store::audit::{Actor, AppendError, AuditEvent, AuditHandle};
use crate::store::{Store, StoreError};

pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(15 * 60);
/// Escalate when less than 1/N of the gate's lifetime is left.
const ESCALATE_AT_FRACTION: u32 = 5;
/// How often a waiting gate re-reads its row even without a wake-up (another process's vote).
const RECHECK: Duration = Duration::from_secs(5);

/// Approvals needed before a step of `risk` may run.
pub fn required_approvals(risk: RiskTier, binding_requires_approval: bool) -> Option<u8> {
    match risk {
        RiskTier::Low => None,
        RiskTier::Moderate => binding_requires_approval.then_some(1),
        RiskTier::High => Some(1),
        RiskTier::Critical => Some(2),
    }
}

/// What the executor asks for when a step needs a gate.
#[derive(Debug, Clone)]
pub struct GateRequest {
    pub execution_id: Uuid,
    pub step_index: usize,
    pub step_id: String,
    pub action: String,
    pub risk: RiskTier,
    pub required: u8,
    pub undoable: bool,
    pub org_id: String,
    pub playbook: String,
    /// Rendered parameters; secret-bearing keys are redacted before they are stored.
    pub params: Value,
    pub expires_after: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approved,
    Denied(String),
    Expired,
    /// Cancel or shutdown while waiting; the caller decides which.
    Interrupted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vote {
    Approve,
    Deny,
}

impl Vote {
    fn as_str(self) -> &'static str {
        match self {
            Vote::Approve => "approve",
            Vote::Deny => "deny",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VoteError {
    #[error("no approval is pending for execution {execution_id} step `{step}`")]
    NoPendingGate { execution_id: Uuid, step: String },
    #[error("uid {0} has already voted on this step: dual control needs two different people")]
    AlreadyVoted(u32),
    #[error("a reason is required for {0} steps")]
    ReasonRequired(&'static str),
    #[error("the gate has expired")]
    Expired,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit log unavailable; the vote was not recorded")]
    Audit(#[source] AppendError),
}

/// The outcome of a vote as the voter sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteOutcome {
    pub gate_state: String,
    pub approvals: i64,
    pub required: i32,
}

#[derive(Clone)]
pub struct Approvals {
    store: Store,
    audit: AuditHandle,
    waiters: Arc<Mutex<HashMap<GateKey, Arc<Notify>>>>,
}

/// (execution, step index) of one gate.
type GateKey = (Uuid, i32);

impl Approvals {
    pub fn new(store: Store, audit: AuditHandle) -> Approvals {
        Approvals {
            store,
            audit,
            waiters: Arc::default(),
        }
    }

    /// Opens the gate (or finds the one opened before a restart) and waits for its verdict.
    pub async fn gate(
        &self,
        request: GateRequest,
        interrupt: &CancellationToken,
    ) -> Result<Verdict, crate::executor::RunError> {
        let index = i32::try_from(request.step_index).unwrap_or(i32::MAX);
        let key = (request.execution_id, index);
        let notify = self.waiter(key);
        self.open(&request).await?;
        let mut escalated = false;
        loop {
            let (state, expires_at) = self.gate_state(request.execution_id, index).await?;
            match state.as_str() {
                "approved" => {
                    self.forget(key);
                    return Ok(Verdict::Approved);
                }
                "denied" => {
                    self.forget(key);
                    let reason = self.deny_reason(request.execution_id, index).await?;
                    return Ok(Verdict::Denied(reason));
                }
                "expired" | "cancelled" => {
                    self.forget(key);
                    return Ok(Verdict::Expired);
                }
                _ => {}
            }
            let now = OffsetDateTime::now_utc();
            if now >= expires_at {
                self.expire(request.execution_id, index, &request.step_id)
                    .await?;
                continue;
            }
            let until_expiry = Duration::try_from(expires_at - now).unwrap_or_default();
            if !escalated && until_expiry <= request.expires_after / ESCALATE_AT_FRACTION {
                escalated = true;
                self.escalate(&request, expires_at).await?;
            }
            tokio::select! {
                () = notify.notified() => {}
                () = tokio::time::sleep(until_expiry.min(RECHECK)) => {}
                () = interrupt.cancelled() => {
                    // No longer waited on here: a cancel withdraws the gate, a shutdown ends the
                    // process (a restart counts the gates it re-opens).
                    metrics::gauge!("playbookd_approvals_pending").decrement(1.0);
                    return Ok(Verdict::Interrupted);
                }
            }
        }
    }

    /// The escalation before expiry: a notify-style journald warning (the record a `notify`
    /// step writes) and an audit event, so the on-call sees the gate before the run rolls back.
    async fn escalate(
        &self,
        request: &GateRequest,
        expires_at: OffsetDateTime,
    ) -> Result<(), AppendError> {
        let expires = crate::store::audit::format_timestamp(expires_at);
        tracing::warn!(
            target: "playbookd::notify",
            execution_id = %request.execution_id,
            step_id = %request.step_id,
            org_id = %request.org_id,
            playbook_id = %request.playbook,
            expires_at = %expires,
            "approval escalation: step `{}` ({} risk) of {} still waits for approval; it expires at {expires}",
            request.step_id,
            request.risk.as_str(),
            request.playbook,
        );
        self.audit
            .append(
                AuditEvent::new("approval.escalated", Actor::System)
                    .execution(request.execution_id)
                    .with("step_id", request.step_id.as_str())
                    .with("expires_at", expires),
            )
            .await
            .map(|_| ())
    }

    fn waiter(&self, key: GateKey) -> Arc<Notify> {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone()
    }

    fn forget(&self, key: GateKey) {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
    }

    async fn open(&self, request: &GateRequest) -> Result<(), AppendError> {
        let request = request.clone();
        let index = i32::try_from(request.step_index).unwrap_or(i32::MAX);
        let context = json!({
            "execution_id": request.execution_id,
            "org_id": request.org_id,
            "playbook": request.playbook,
            "step_id": request.step_id,
            "action": request.action,
            "params": crate::redact::redact(request.params.clone(), &APPROVAL_SECRET_KEY_PARTS),
            "risk": request.risk.as_str(),
            "undoable": request.undoable,
        });
        let expires_ms = i64::try_from(request.expires_after.as_millis()).unwrap_or(i64::MAX);
        self.audit
            .append_with(Box::new(move |tx| {
                Box::pin(async move {
                    let opened = tx
                        .execute(
                            "INSERT INTO playbook_approval_gates (execution_id, step_index, risk, required, state, \
                                context, opened_at, expires_at) \
                             VALUES ($1, $2, $3, $4, 'pending', $5, now(), now() + $6 * interval '1 millisecond') \
                             ON CONFLICT (execution_id, step_index) DO NOTHING",
                            &[&request.execution_id, &index, &request.risk.as_str(),
                              &i32::from(request.required), &context, &(expires_ms as f64)],
                        )
                        .await?;
                    tx.execute(
                        "UPDATE playbook_executions SET state = 'awaiting_approval', current_step = $2, updated_at = now() \
                         WHERE execution_id = $1 AND state IN ('pending', 'running')",
                        &[&request.execution_id, &index],
                    )
                    .await?;
                    let event_type = if opened == 1 { "approval.requested" } else { "approval.waiting" };
                    Ok((AuditEvent::new(event_type, Actor::System)
                        .execution(request.execution_id)
                        .with("step_id", request.step_id)
                        .with("risk", request.risk.as_str())
                        .with("required", request.required), ()))
                })
            }))
            .await?;
        metrics::gauge!("playbookd_approvals_pending").increment(1.0);
        Ok(())
    }

    async fn gate_state(
        &self,
        execution_id: Uuid,
        index: i32,
    ) -> Result<(String, OffsetDateTime), StoreError> {
        let client = self.store.client().await?;
        let row = client
            .query_one(
                "SELECT state, expires_at FROM playbook_approval_gates WHERE execution_id = $1 AND step_index = $2",
                &[&execution_id, &index],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    async fn deny_reason(&self, execution_id: Uuid, index: i32) -> Result<String, StoreError> {
        let client = self.store.client().await?;
        let row = client
            .query_opt(
                "SELECT approver_uid, reason FROM playbook_approvals \
                 WHERE execution_id = $1 AND step_index = $2 AND verdict = 'deny' LIMIT 1",
                &[&execution_id, &index],
            )
            .await?;
        Ok(row.map_or_else(
            || "denied".to_owned(),
            |row| format!("uid {}: {}", row.get::<_, i64>(0), row.get::<_, String>(1)),
        ))
    }

    async fn expire(
        &self,
        execution_id: Uuid,
        index: i32,
        step_id: &str,
    ) -> Result<(), AppendError> {
        let step_id = step_id.to_owned();
        self.audit
            .append_with(Box::new(move |tx| {
                Box::pin(async move {
                    tx.execute(
                        "UPDATE playbook_approval_gates SET state = 'expired', resolved_at = now() \
                         WHERE execution_id = $1 AND step_index = $2 AND state = 'pending'",
                        &[&execution_id, &index],
                    )
                    .await?;
                    Ok((
                        AuditEvent::new("approval.expired", Actor::System)
                            .execution(execution_id)
                            .with("step_id", step_id),
                        (),
                    ))
                })
            }))
            .await?;
        metrics::gauge!("playbookd_approvals_pending").decrement(1.0);
        Ok(())
    }

    /// Records one person's vote; resolves the gate when it decides it. Wakes the waiting run.
    pub async fn vote(
        &self,
        execution_id: Uuid,
        step_id: &str,
        uid: u32,
        vote: Vote,
        reason: &str,
    ) -> Result<VoteOutcome, VoteError> {
        let (index, risk) = self.pending_gate(execution_id, step_id).await?;
        let reason = reason.trim().to_owned();
        if reason.is_empty() && matches!(risk.as_str(), "high" | "critical") {
            return Err(VoteError::ReasonRequired(if risk == "high" {
                "high"
            } else {
                "critical"
            }));
        }
        let step = step_id.to_owned();
        let (_, outcome) = self
            .audit
            .append_with(Box::new(move |tx| {
                Box::pin(async move {
                    let outcome = apply_vote(tx, execution_id, index, uid, vote, &reason).await?;
                    let event = AuditEvent::new("approval.vote", Actor::Uid(uid))
                        .execution(execution_id)
                        .with("step_id", step)
                        .with("verdict", vote.as_str())
                        .with("reason", reason)
                        .with("gate_state", outcome.gate_state.clone())
                        .with("approvals", outcome.approvals)
                        .with("required", outcome.required);
                    Ok((event, outcome))
                })
            }))
            .await
            .map_err(|error| classify_vote_error(error, uid))?;
        if outcome.gate_state != "pending" {
            metrics::gauge!("playbookd_approvals_pending").decrement(1.0);
        }
        self.waiter((execution_id, index)).notify_one();
        Ok(outcome)
    }

    async fn pending_gate(
        &self,
        execution_id: Uuid,
        step_id: &str,
    ) -> Result<(i32, String), VoteError> {
        let client = self.store.client().await?;
        let row = client
            .query_opt(
                "SELECT g.step_index, g.risk, g.expires_at <= now() FROM playbook_approval_gates g \
                 JOIN playbook_step_runs s USING (execution_id, step_index) \
                 WHERE g.execution_id = $1 AND g.state = 'pending' AND g.context->>'step_id' = $2",
                &[&execution_id, &step_id],
            )
            .await
            .map_err(StoreError::from)?;
        let row = match row {
            Some(row) => row,
            None => client
                .query_opt(
                    "SELECT step_index, risk, expires_at <= now() FROM playbook_approval_gates \
                     WHERE execution_id = $1 AND state = 'pending' AND context->>'step_id' = $2",
                    &[&execution_id, &step_id],
                )
                .await
                .map_err(StoreError::from)?
                .ok_or_else(|| VoteError::NoPendingGate {
                    execution_id,
                    step: step_id.to_owned(),
                })?,
        };
        if row.get::<_, bool>(2) {
            return Err(VoteError::Expired);
        }
        Ok((row.get(0), row.get(1)))
    }

    /// Every pending gate with its context and the votes so far.
    pub async fn pending(&self) -> Result<Vec<Value>, StoreError> {
        let client = self.store.client().await?;
        let rows = client
            .query(
                "SELECT g.context, g.required, g.opened_at, g.expires_at, \
                    COALESCE((SELECT json_agg(json_build_object('uid', a.approver_uid, 'verdict', a.verdict)) \
                              FROM playbook_approvals a \
                              WHERE a.execution_id = g.execution_id AND a.step_index = g.step_index), '[]'::json) \
                 FROM playbook_approval_gates g WHERE g.state = 'pending' ORDER BY g.opened_at",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let mut context: Value = row.get(0);
                let votes: Value = row.get(4);
                context["required"] = json!(row.get::<_, i32>(1));
                context["opened_at"] = json!(crate::store::audit::format_timestamp(row.get(2)));
                context["expires_at"] = json!(crate::store::audit::format_timestamp(row.get(3)));
                context["votes"] = votes;
                context
            })
            .collect())
    }
}

async fn apply_vote(
    tx: &tokio_postgres::Transaction<'_>,
    execution_id: Uuid,
    index: i32,
    uid: u32,
    vote: Vote,
    reason: &str,
) -> Result<VoteOutcome, StoreError> {
    let gate = tx
        .query_one(
            "SELECT state, required FROM playbook_approval_gates \
             WHERE execution_id = $1 AND step_index = $2 FOR UPDATE",
            &[&execution_id, &index],
        )
        .await?;
    let state: String = gate.get(0);
    let required: i32 = gate.get(1);
    if state != "pending" {
        return Err(StoreError::Corrupt {
            what: "gate",
            detail: format!("gate is {state}"),
        });
    }
    tx.execute(
        "INSERT INTO playbook_approvals (execution_id, step_index, approver_uid, verdict, reason, created_at) \
         VALUES ($1, $2, $3, $4, $5, now())",
        &[&execution_id, &index, &i64::from(uid), &vote.as_str(), &reason],
    )
    .await?;
    let approvals: i64 = tx
        .query_one(
            "SELECT count(*) FROM playbook_approvals WHERE execution_id = $1 AND step_index = $2 AND verdict = 'approve'",
            &[&execution_id, &index],
        )
        .await?
        .get(0);
    let gate_state = match vote {
        Vote::Deny => "denied",
        Vote::Approve if approvals >= i64::from(required) => "approved",
        Vote::Approve => "pending",
    };
    if gate_state != "pending" {
        tx.execute(
            "UPDATE playbook_approval_gates SET state = $3, resolved_at = now() WHERE execution_id = $1 AND step_index = $2",
            &[&execution_id, &index, &gate_state],
        )
        .await?;
    }
    if gate_state == "approved" {
        tx.execute(
            "UPDATE playbook_executions SET state = 'running', updated_at = now() \
             WHERE execution_id = $1 AND state = 'awaiting_approval'",
            &[&execution_id],
        )
        .await?;
    }
    Ok(VoteOutcome {
        gate_state: gate_state.to_owned(),
        approvals,
        required,
    })
}

fn classify_vote_error(error: AppendError, uid: u32) -> VoteError {
    if let AppendError::Effect(StoreError::Query(query)) = &error
        && query.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    {
        return VoteError::AlreadyVoted(uid);
    }
    if let AppendError::Effect(StoreError::Corrupt { .. }) = &error {
        return VoteError::Expired;
    }
    VoteError::Audit(error)
}

/// Parameters shown to approvers: anything that names a secret keeps its name, never a value
/// (so `secret: NAME` of http.post stays readable).
const APPROVAL_SECRET_KEY_PARTS: [&str; 3] = ["password", "token", "authorization"];
