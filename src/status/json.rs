//! The JSON shapes of `/v1/executions` and `/v1/executions/{id}`, built from the query layer's
//! typed rows ([`super::queries`]) that the console reads too.
//!
//! Free text a person or an action wrote (end reasons, errors, vote reasons) is bounded to
//! [`TEXT_LIMIT`](super::queries::TEXT_LIMIT) bytes here; JSON was bounded by the query layer.

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::status::queries::{
    EventRow, GateRow, RunDetail, RunPage, RunSummary, StepRow, Timestamp, UndoRow, VoteRow,
    bounded_text,
};

/// The playbook version a run is pinned to.
#[derive(Debug, Serialize)]
pub struct PinnedPlaybook {
    pub id: String,
    pub version: i64,
    pub sha256: String,
}

/// One row of `/v1/executions`.
#[derive(Debug, Serialize)]
pub struct ExecutionSummary {
    pub execution_id: Uuid,
    pub node_id: String,
    pub playbook: PinnedPlaybook,
    pub state: &'static str,
    pub current_step: Option<i32>,
    pub policy: String,
    pub outcome: String,
    pub org_id: String,
    pub severity: String,
    pub policy_decision_id: String,
    pub end_reason: Option<String>,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    pub completed_at: Option<Timestamp>,
}

#[derive(Debug, Serialize)]
pub struct ExecutionPage {
    pub executions: Vec<ExecutionSummary>,
    /// Pass back as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `/v1/executions/{id}`.
#[derive(Debug, Serialize)]
pub struct ExecutionDetail {
    #[serde(flatten)]
    pub summary: ExecutionSummary,
    pub subject: Value,
    pub requested_by_uid: i64,
    pub steps: Vec<StepRun>,
    pub approvals: Vec<ApprovalGate>,
    pub rollback: Vec<RollbackState>,
    /// Audit rows whose `event_data.execution_id` is this run, in chain order.
    pub audit: Vec<AuditRef>,
}

#[derive(Debug, Serialize)]
pub struct StepRun {
    pub step_index: i32,
    pub step_id: String,
    pub action: String,
    pub state: &'static str,
    pub attempts: i32,
    pub params_sha256: Option<String>,
    pub skip_reason: Option<String>,
    pub output: Option<Value>,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub duration_ms: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct ApprovalGate {
    pub step_index: i32,
    pub risk: &'static str,
    pub required: i32,
    pub state: &'static str,
    pub context: Value,
    pub opened_at: Timestamp,
    pub expires_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
    pub votes: Vec<ApprovalVote>,
}

#[derive(Debug, Serialize)]
pub struct ApprovalVote {
    pub approver_uid: i64,
    pub verdict: &'static str,
    pub reason: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Serialize)]
pub struct RollbackState {
    pub step_index: i32,
    pub state: &'static str,
    pub attempts: i32,
    pub error: Option<String>,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

#[derive(Debug, Serialize)]
pub struct AuditRef {
    pub node_id: String,
    pub seq: i64,
    pub event_type: String,
    pub created_at: Timestamp,
}

impl From<RunPage> for ExecutionPage {
    fn from(page: RunPage) -> ExecutionPage {
        ExecutionPage {
            executions: page.runs.iter().map(ExecutionSummary::from).collect(),
            next_cursor: page.next.map(|cursor| cursor.encode()),
        }
    }
}

impl From<&RunSummary> for ExecutionSummary {
    fn from(run: &RunSummary) -> ExecutionSummary {
        ExecutionSummary {
            execution_id: run.execution_id,
            node_id: run.node_id.clone(),
            playbook: PinnedPlaybook {
                id: run.playbook_id.clone(),
                version: run.playbook_version,
                sha256: hex::encode(run.playbook_sha256),
            },
            state: run.state.as_str(),
            current_step: run.current_step,
            policy: run.policy.clone(),
            outcome: run.outcome.clone(),
            org_id: run.org_id.clone(),
            severity: run.severity.clone(),
            policy_decision_id: run.policy_decision_id.clone(),
            end_reason: bounded(run.end_reason.as_deref()),
            started_at: Timestamp(run.started_at),
            updated_at: Timestamp(run.updated_at),
            completed_at: run.completed_at.map(Timestamp),
        }
    }
}

impl From<RunDetail> for ExecutionDetail {
    fn from(detail: RunDetail) -> ExecutionDetail {
        // The API lists undos by step, last step first (the console by the order they ran).
        let mut rollback: Vec<RollbackState> =
            detail.rollback.iter().map(RollbackState::from).collect();
        rollback.sort_by_key(|undo| std::cmp::Reverse(undo.step_index));
        ExecutionDetail {
            summary: ExecutionSummary::from(&detail.summary),
            subject: detail.subject,
            requested_by_uid: detail.requested_by_uid,
            steps: detail.steps.iter().map(StepRun::from).collect(),
            approvals: detail.gates.iter().map(ApprovalGate::from).collect(),
            rollback,
            audit: detail.events.iter().map(AuditRef::from).collect(),
        }
    }
}

impl From<&StepRow> for StepRun {
    fn from(step: &StepRow) -> StepRun {
        StepRun {
            step_index: step.step_index,
            step_id: step.step_id.clone(),
            action: step.action.clone(),
            state: step.state.as_str(),
            attempts: step.attempts,
            params_sha256: step.params_sha256.as_ref().map(hex::encode),
            skip_reason: step.skip_reason.clone(),
            output: step.output.clone(),
            error_class: step.error_class.clone(),
            error: bounded(step.error.as_deref()),
            started_at: step.started_at.map(Timestamp),
            finished_at: step.finished_at.map(Timestamp),
            duration_ms: duration_ms(step.started_at, step.finished_at),
        }
    }
}

impl From<&GateRow> for ApprovalGate {
    fn from(gate: &GateRow) -> ApprovalGate {
        ApprovalGate {
            step_index: gate.step_index,
            risk: gate.risk.as_str(),
            required: gate.required,
            state: gate.state.as_str(),
            context: gate.context.clone(),
            opened_at: Timestamp(gate.opened_at),
            expires_at: Timestamp(gate.expires_at),
            resolved_at: gate.resolved_at.map(Timestamp),
            votes: gate.votes.iter().map(ApprovalVote::from).collect(),
        }
    }
}

impl From<&VoteRow> for ApprovalVote {
    fn from(vote: &VoteRow) -> ApprovalVote {
        ApprovalVote {
            approver_uid: vote.approver_uid,
            verdict: vote.verdict.as_str(),
            reason: bounded_text(&vote.reason),
            created_at: Timestamp(vote.created_at),
        }
    }
}

impl From<&UndoRow> for RollbackState {
    fn from(undo: &UndoRow) -> RollbackState {
        RollbackState {
            step_index: undo.step_index,
            state: undo.state.as_str(),
            attempts: undo.attempts,
            error: bounded(undo.error.as_deref()),
            started_at: undo.started_at.map(Timestamp),
            finished_at: undo.finished_at.map(Timestamp),
        }
    }
}

impl From<&EventRow> for AuditRef {
    fn from(event: &EventRow) -> AuditRef {
        AuditRef {
            node_id: event.node_id.clone(),
            seq: event.seq,
            event_type: event.event_type.clone(),
            created_at: Timestamp(event.created_at),
        }
    }
}

fn bounded(text: Option<&str>) -> Option<String> {
    text.map(bounded_text)
}

/// Milliseconds from start to finish, when both are known.
fn duration_ms(start: Option<OffsetDateTime>, end: Option<OffsetDateTime>) -> Option<i64> {
    start
        .zip(end)
        .map(|(start, end)| i64::try_from((end - start).whole_milliseconds()).unwrap_or(i64::MAX))
}
