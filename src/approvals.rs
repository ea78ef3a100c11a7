//! Approval gates: the riskier the step, the more people must say yes, and anyone can say no.
//!
//! low → no gate; moderate → a gate only when the binding asks; high → one approval;
//! critical → two approvals from distinct uids. The gate row and every vote are persisted,
//! so a waiting step keeps waiting across restarts and continues once approved. A gate
//! expires (default 15 min) and the run rolls back.
//!
//! A waiting gate costs no queries: it re-reads its row when something wakes it (a vote here,
//! a change made elsewhere heard through LISTEN, see [`crate::store::wakeups`]), at its
//! escalation point and at its expiry; a cancel or shutdown interrupts it.

// A new state must fail to compile wherever something is decided about it.
#![deny(clippy::wildcard_enum_match_arm)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::redact::Audience;
use crate::registry::model::RiskTier;
use crate::store::audit::{AppendError, AuditHandle, Unavailable};
pub use crate::store::gates::VoteOutcome;
use crate::store::gates::{self, NewGate, NewVote};
use crate::store::halts::{ActiveHalt, HaltWatch};
use crate::store::model::GateState;
pub use crate::store::model::Vote;
use crate::store::wakeups::Wakeup;
use crate::store::{Store, StoreError};

/// How long a gate waits when the playbook does not say.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(15 * 60);
/// Escalate when less than 1/N of the gate's lifetime is left.
const ESCALATE_AT_FRACTION: u32 = 5;

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
#[must_use]
pub enum Verdict {
    Approved,
    Denied(String),
    Expired,
    /// Cancel or shutdown while waiting; the caller decides which.
    Interrupted,
}

/// Why a vote was not recorded.
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
    #[error("the gate is no longer pending (it is {0})")]
    Closed(String),
    /// A host acts only for its own runs.
    #[error(
        "execution {execution_id} belongs to node `{owner}`; this node cannot vote on it: \
         send the vote to node `{owner}`"
    )]
    OtherNode { execution_id: Uuid, owner: String },
    /// An approval during SAFE-HALT would fire the moment an admin clears it.
    #[error(
        "safe_halt: {0}; approvals are refused until an admin clears it with `{cmd}` \
         (a deny is still recorded)",
        cmd = .0.clear_command()
    )]
    Halted(Box<ActiveHalt>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit log unavailable; the vote was not recorded")]
    Audit(#[source] AppendError),
}

/// Approval gates: opened by the executor, decided by votes on control.sock. Cloning is
/// shallow.
#[derive(Clone)]
pub struct Approvals {
    store: Store,
    audit: AuditHandle,
    /// This node's SAFE-HALT, read by the vote transaction (an approval is refused while halted).
    halt: HaltWatch,
    waiters: Arc<Mutex<HashMap<GateKey, Arc<Notify>>>>,
}

/// (execution, step index) of one gate.
type GateKey = (Uuid, usize);

impl Approvals {
    /// Gates over `store`, recorded through `audit`; votes read `halt` (this node's SAFE-HALT).
    pub fn new(store: Store, audit: AuditHandle, halt: HaltWatch) -> Approvals {
        Approvals {
            store,
            audit,
            halt,
            waiters: Arc::default(),
        }
    }

    /// Opens the gate (or finds the one opened before a restart) and waits for its verdict.
    pub async fn gate(
        &self,
        request: GateRequest,
        interrupt: &CancellationToken,
    ) -> Result<Verdict, Unavailable> {
        let index = request.step_index;
        let key = (request.execution_id, index);
        let notify = self.waiter(key);
        self.open(&request).await?;
        let mut escalated = false;
        loop {
            let status = gates::status(&self.store, request.execution_id, index).await?;
            if let Some(waited) = status.waited_seconds {
                metrics::histogram!("playbookd_approval_wait_seconds").record(waited.max(0.0));
            }
            match status.state {
                GateState::Approved => {
                    self.forget(key);
                    return Ok(Verdict::Approved);
                }
                GateState::Denied => {
                    self.forget(key);
                    let reason = gates::deny_reason(&self.store, request.execution_id, index)
                        .await?
                        .unwrap_or_else(|| "denied".to_owned());
                    return Ok(Verdict::Denied(reason));
                }
                GateState::Expired | GateState::Cancelled => {
                    self.forget(key);
                    return Ok(Verdict::Expired);
                }
                GateState::Pending => {}
            }
            let now = OffsetDateTime::now_utc();
            if now >= status.expires_at {
                self.expire(request.execution_id, index, &request.step_id)
                    .await?;
                continue;
            }
            let until_expiry = Duration::try_from(status.expires_at - now).unwrap_or_default();
            let escalate_in =
                until_expiry.saturating_sub(request.expires_after / ESCALATE_AT_FRACTION);
            if !escalated && escalate_in.is_zero() {
                escalated = true;
                self.escalate(&request, status.expires_at).await?;
            }
            let next_deadline = if escalated { until_expiry } else { escalate_in };
            tokio::select! {
                () = notify.notified() => {}
                () = tokio::time::sleep(next_deadline) => {}
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
        gates::escalated(
            &self.audit,
            request.execution_id,
            &request.step_id,
            expires_at,
        )
        .await
    }

    /// Wakes the gates that `wakeups` names (changes made by another process or node); after a
    /// gap in listening, every waiting gate re-reads once.
    pub fn follow(&self, mut wakeups: broadcast::Receiver<Wakeup>) {
        let waiters = self.waiters.clone();
        tokio::spawn(async move {
            loop {
                let wakeup = match wakeups.recv().await {
                    Ok(wakeup) => wakeup,
                    Err(broadcast::error::RecvError::Lagged(_)) => Wakeup::Resync,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let waiters = waiters
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match wakeup {
                    Wakeup::Gate {
                        execution_id,
                        step_index,
                    } => {
                        if let Some(waiter) = waiters.get(&(execution_id, step_index)) {
                            waiter.notify_one();
                        }
                    }
                    Wakeup::Resync => waiters.values().for_each(|waiter| waiter.notify_one()),
                }
            }
        });
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
        let context = json!({
            "execution_id": request.execution_id,
            "org_id": request.org_id,
            "playbook": request.playbook,
            "step_id": request.step_id,
            "action": request.action,
            "params": crate::redact::redact(request.params.clone(), Audience::Approvers),
            "risk": request.risk.as_str(),
            "undoable": request.undoable,
        });
        gates::open(
            &self.audit,
            NewGate {
                execution_id: request.execution_id,
                step_index: request.step_index,
                step_id: request.step_id.clone(),
                risk: request.risk,
                required: request.required,
                context,
                expires_after: request.expires_after,
            },
        )
        .await?;
        metrics::gauge!("playbookd_approvals_pending").increment(1.0);
        Ok(())
    }

    async fn expire(
        &self,
        execution_id: Uuid,
        index: usize,
        step_id: &str,
    ) -> Result<(), AppendError> {
        if gates::expire(&self.audit, execution_id, index, step_id.to_owned()).await? {
            metrics::gauge!("playbookd_approvals_pending").decrement(1.0);
        }
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
        let node_id = self.audit.node_id();
        let gate = match gates::find_pending(&self.store, execution_id, step_id, node_id).await {
            Ok(Some(gate)) => gate,
            Ok(None) => {
                return Err(VoteError::NoPendingGate {
                    execution_id,
                    step: step_id.to_owned(),
                });
            }
            Err(StoreError::OtherNode { owner, .. }) => {
                return Err(VoteError::OtherNode {
                    execution_id,
                    owner,
                });
            }
            Err(other) => return Err(VoteError::Store(other)),
        };
        if gate.expired {
            return Err(VoteError::Expired);
        }
        let reason = reason.trim().to_owned();
        match gate.risk {
            RiskTier::High if reason.is_empty() => return Err(VoteError::ReasonRequired("high")),
            RiskTier::Critical if reason.is_empty() => {
                return Err(VoteError::ReasonRequired("critical"));
            }
            RiskTier::Low | RiskTier::Moderate | RiskTier::High | RiskTier::Critical => {}
        }
        let request = NewVote {
            execution_id,
            index: gate.index,
            step_id: step_id.to_owned(),
            uid,
            vote,
            reason,
        };
        let outcome = gates::vote(&self.audit, request, &self.halt)
            .await
            .map_err(|error| classify_vote_error(error, execution_id, uid))?;
        match outcome.gate_state {
            GateState::Pending => {}
            GateState::Approved | GateState::Denied | GateState::Expired | GateState::Cancelled => {
                metrics::gauge!("playbookd_approvals_pending").decrement(1.0);
            }
        }
        self.waiter((execution_id, gate.index)).notify_one();
        Ok(outcome)
    }

    /// Every pending gate of this node's runs with its context and the votes so far.
    pub async fn pending(&self) -> Result<Vec<Value>, StoreError> {
        gates::pending(&self.store, self.audit.node_id()).await
    }
}

fn classify_vote_error(error: AppendError, execution_id: Uuid, uid: u32) -> VoteError {
    match error {
        AppendError::Effect(StoreError::Query(query))
            if query.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
        {
            VoteError::AlreadyVoted(uid)
        }
        AppendError::Effect(StoreError::Transition { from, .. }) => VoteError::Closed(from),
        AppendError::Effect(StoreError::Halted(halt)) => VoteError::Halted(halt),
        AppendError::Effect(StoreError::OtherNode { owner, .. }) => VoteError::OtherNode {
            execution_id,
            owner,
        },
        other @ (AppendError::Effect(_) | AppendError::Unavailable(_) | AppendError::Stopped) => {
            VoteError::Audit(other)
        }
    }
}
