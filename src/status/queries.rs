//! The status API's SQL, and the JSON shapes it returns.
//!
//! Every SELECT names its columns: only columns that are secret-free by design leave the
//! database (never `SELECT *`, never `step_results`, idempotency keys or playbook bytes). Free-form
//! JSON written by actions (step output, gate context) is redacted by key and bounded in size
//! on the way out, in case an action author put a credential there anyway.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use crate::status::cursor::Cursor;
use crate::store::audit::format_timestamp;

/// An instant, serialized as RFC 3339 UTC with six fractional digits (as stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub OffsetDateTime);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_timestamp(self.0))
    }
}

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
    pub state: String,
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

/// `/v1/executions` filters, already checked by the route.
#[derive(Debug, Default)]
pub struct ExecutionFilter {
    pub state: Option<String>,
    pub playbook: Option<String>,
    pub org: Option<String>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub cursor: Option<Cursor>,
    pub limit: i64,
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
    pub state: String,
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
    pub risk: String,
    pub required: i32,
    pub state: String,
    pub context: Value,
    pub opened_at: Timestamp,
    pub expires_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
    pub votes: Vec<ApprovalVote>,
}

#[derive(Debug, Serialize)]
pub struct ApprovalVote {
    pub approver_uid: i64,
    pub verdict: String,
    pub reason: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Serialize)]
pub struct RollbackState {
    pub step_index: i32,
    pub state: String,
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

/// One row of this node's audit chain.
#[derive(Debug, Serialize)]
pub struct AuditRow {
    pub seq: i64,
    pub prev_hash: String,
    pub hash: String,
    pub event_type: String,
    pub event_data: Value,
    pub created_at: Timestamp,
}

#[derive(Debug, Serialize)]
pub struct ChainHead {
    pub node_id: String,
    pub seq: i64,
    pub hash: String,
}

#[derive(Debug, Serialize)]
pub struct SafeHalt {
    pub halt_id: i64,
    pub is_active: bool,
    pub node_id: String,
    pub execution_id: Option<Uuid>,
    pub rollback_id: Option<String>,
    pub error_message: String,
    pub entered_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
    pub resolved_by: Option<i64>,
    pub reason: Option<String>,
}

/// A version the registry accepted at some point (the bytes themselves stay in the database).
#[derive(Debug, Serialize)]
pub struct KnownVersion {
    pub id: String,
    pub version: i64,
    pub sha256: String,
    pub signer_key_ids: Vec<String>,
    pub first_seen: Timestamp,
}

/// Executions by state, every state present (0 when none).
pub async fn count_by_state(
    client: &impl GenericClient,
) -> Result<BTreeMap<String, i64>, tokio_postgres::Error> {
    let mut counts: BTreeMap<String, i64> = RUN_STATES.iter().map(|s| ((*s).into(), 0)).collect();
    for row in client
        .query(
            "SELECT state, count(*) FROM playbook_executions GROUP BY state",
            &[],
        )
        .await?
    {
        counts.insert(row.get(0), row.get(1));
    }
    Ok(counts)
}

/// The last row of `node_id`'s chain, if it has any.
pub async fn chain_head(
    client: &impl GenericClient,
    node_id: &str,
) -> Result<Option<ChainHead>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT seq, hash FROM playbook_audit_log WHERE node_id = $1 ORDER BY seq DESC LIMIT 1",
            &[&node_id],
        )
        .await?;
    Ok(row.map(|row| ChainHead {
        node_id: node_id.to_owned(),
        seq: row.get(0),
        hash: hex::encode(row.get::<_, Vec<u8>>(1)),
    }))
}

/// The active SAFE-HALT that stops `node_id`, if any: its own (at most one per node, by a
/// unique index) or the fleet's.
pub async fn active_halt(
    client: &impl GenericClient,
    node_id: &str,
) -> Result<Option<SafeHalt>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {HALT_COLUMNS} FROM playbook_safe_halt_state \
                 WHERE is_active AND (node_id = $1 OR scope = 'fleet') \
                 ORDER BY scope = 'fleet' DESC, entered_at LIMIT 1"
            ),
            &[&node_id],
        )
        .await?;
    Ok(row.as_ref().map(halt_from_row))
}

/// The newest `limit` halts, active or resolved.
pub async fn halt_history(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Vec<SafeHalt>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT {HALT_COLUMNS} FROM playbook_safe_halt_state \
                 ORDER BY entered_at DESC, halt_id DESC LIMIT $1"
            ),
            &[&limit],
        )
        .await?;
    Ok(rows.iter().map(halt_from_row).collect())
}

pub async fn known_versions(
    client: &impl GenericClient,
) -> Result<Vec<KnownVersion>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT playbook_id, version, sha256, signer_key_ids, first_seen \
             FROM playbook_versions ORDER BY playbook_id, version DESC",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| KnownVersion {
            id: row.get(0),
            version: row.get(1),
            sha256: hex::encode(row.get::<_, Vec<u8>>(2)),
            signer_key_ids: row.get(3),
            first_seen: Timestamp(row.get(4)),
        })
        .collect())
}

/// One page, newest first, strictly after `filter.cursor` in (started_at DESC, execution_id DESC).
pub async fn list_executions(
    client: &impl GenericClient,
    filter: &ExecutionFilter,
) -> Result<ExecutionPage, tokio_postgres::Error> {
    // Only the filters present go into the SQL, so the planner sees a plain predicate and can
    // use the matching (column, started_at DESC, execution_id DESC) index.
    // One more than asked: its presence says whether there is a next page.
    let fetch = filter.limit + 1;
    let mut conditions: Vec<String> = Vec::new();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    let cursor = filter
        .cursor
        .map(|cursor| (cursor.started_at, cursor.execution_id));
    if let Some(state) = &filter.state {
        add_condition(&mut conditions, &mut params, "state = ?", &[state]);
    }
    if let Some(playbook) = &filter.playbook {
        add_condition(&mut conditions, &mut params, "playbook_id = ?", &[playbook]);
    }
    if let Some(org) = &filter.org {
        add_condition(&mut conditions, &mut params, "org_id = ?", &[org]);
    }
    if let Some(since) = &filter.since {
        add_condition(&mut conditions, &mut params, "started_at >= ?", &[since]);
    }
    if let Some(until) = &filter.until {
        add_condition(&mut conditions, &mut params, "started_at < ?", &[until]);
    }
    if let Some((started_at, execution_id)) = &cursor {
        add_condition(
            &mut conditions,
            &mut params,
            "(started_at, execution_id) < (?, ?)",
            &[started_at, execution_id],
        );
    }
    params.push(&fetch);
    let where_clause = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM playbook_executions {where_clause} \
         ORDER BY started_at DESC, execution_id DESC LIMIT ${}",
        params.len()
    );
    let rows = client.query(&sql, &params).await?;
    let mut executions: Vec<ExecutionSummary> = rows.iter().map(summary_from_row).collect();
    let has_more = executions.len() > usize::try_from(filter.limit).unwrap_or(usize::MAX);
    executions.truncate(usize::try_from(filter.limit).unwrap_or(usize::MAX));
    let next_cursor = match executions.last() {
        Some(last) if has_more => Some(
            Cursor {
                started_at: last.started_at.0,
                execution_id: last.execution_id,
            }
            .encode(),
        ),
        _ => None,
    };
    Ok(ExecutionPage {
        executions,
        next_cursor,
    })
}

/// Everything about one run, or `None` when there is no such execution.
pub async fn execution_detail(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<ExecutionDetail>, tokio_postgres::Error> {
    let Some(row) = client
        .query_opt(
            &format!(
                "SELECT {SUMMARY_COLUMNS}, subject, requested_by_uid \
                 FROM playbook_executions WHERE execution_id = $1"
            ),
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let summary = summary_from_row(&row);
    let subject: Value = row.get("subject");
    let requested_by_uid: i64 = row.get("requested_by_uid");

    let steps = client
        .query(
            "SELECT step_index, step_id, action, state, attempts, params_sha256, skip_reason, output, \
                    error_class, error, started_at, finished_at \
             FROM playbook_step_runs WHERE execution_id = $1 ORDER BY step_index",
            &[&id],
        )
        .await?
        .iter()
        .map(|row| {
            let started_at: Option<OffsetDateTime> = row.get(10);
            let finished_at: Option<OffsetDateTime> = row.get(11);
            StepRun {
                step_index: row.get(0),
                step_id: row.get(1),
                action: row.get(2),
                state: row.get(3),
                attempts: row.get(4),
                params_sha256: row.get::<_, Option<Vec<u8>>>(5).map(hex::encode),
                skip_reason: row.get(6),
                output: row.get::<_, Option<Value>>(7).map(bounded_json),
                error_class: row.get(8),
                error: row.get::<_, Option<String>>(9).map(|e| bounded_text(&e)),
                started_at: started_at.map(Timestamp),
                finished_at: finished_at.map(Timestamp),
                duration_ms: started_at
                    .zip(finished_at)
                    .map(|(start, end)| i64::try_from((end - start).whole_milliseconds()).unwrap_or(i64::MAX)),
            }
        })
        .collect();

    let mut votes: BTreeMap<i32, Vec<ApprovalVote>> = BTreeMap::new();
    for row in client
        .query(
            "SELECT step_index, approver_uid, verdict, reason, created_at FROM playbook_approvals \
             WHERE execution_id = $1 ORDER BY step_index, created_at, approver_uid",
            &[&id],
        )
        .await?
    {
        votes.entry(row.get(0)).or_default().push(ApprovalVote {
            approver_uid: row.get(1),
            verdict: row.get(2),
            reason: bounded_text(&row.get::<_, String>(3)),
            created_at: Timestamp(row.get(4)),
        });
    }
    let approvals = client
        .query(
            "SELECT step_index, risk, required, state, context, opened_at, expires_at, resolved_at \
             FROM playbook_approval_gates WHERE execution_id = $1 ORDER BY step_index",
            &[&id],
        )
        .await?
        .iter()
        .map(|row| {
            let step_index: i32 = row.get(0);
            ApprovalGate {
                step_index,
                risk: row.get(1),
                required: row.get(2),
                state: row.get(3),
                context: bounded_json(row.get(4)),
                opened_at: Timestamp(row.get(5)),
                expires_at: Timestamp(row.get(6)),
                resolved_at: row.get::<_, Option<OffsetDateTime>>(7).map(Timestamp),
                votes: votes.remove(&step_index).unwrap_or_default(),
            }
        })
        .collect();

    let rollback = client
        .query(
            "SELECT step_index, state, attempts, error, started_at, finished_at \
             FROM playbook_rollback_states WHERE execution_id = $1 ORDER BY step_index DESC",
            &[&id],
        )
        .await?
        .iter()
        .map(|row| RollbackState {
            step_index: row.get(0),
            state: row.get(1),
            attempts: row.get(2),
            error: row.get::<_, Option<String>>(3).map(|e| bounded_text(&e)),
            started_at: row.get::<_, Option<OffsetDateTime>>(4).map(Timestamp),
            finished_at: row.get::<_, Option<OffsetDateTime>>(5).map(Timestamp),
        })
        .collect();

    // `event_data ? 'execution_id'` matches the partial index's predicate, so it is used.
    let audit = client
        .query(
            "SELECT node_id, seq, event_type, created_at FROM playbook_audit_log \
             WHERE event_data ? 'execution_id' AND event_data ->> 'execution_id' = $1 \
             ORDER BY created_at, node_id, seq LIMIT $2",
            &[&id.to_string(), &AUDIT_REFS_LIMIT],
        )
        .await?
        .iter()
        .map(|row| AuditRef {
            node_id: row.get(0),
            seq: row.get(1),
            event_type: row.get(2),
            created_at: Timestamp(row.get(3)),
        })
        .collect();

    Ok(Some(ExecutionDetail {
        summary,
        subject: bounded_json(subject),
        requested_by_uid,
        steps,
        approvals,
        rollback,
        audit,
    }))
}

/// Rows of `node_id`'s chain with `seq > after`, in order.
pub async fn audit_rows(
    client: &impl GenericClient,
    node_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditRow>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT seq, prev_hash, hash, event_type, event_data, created_at FROM playbook_audit_log \
             WHERE node_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&node_id, &after, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| AuditRow {
            seq: row.get(0),
            prev_hash: hex::encode(row.get::<_, Vec<u8>>(1)),
            hash: hex::encode(row.get::<_, Vec<u8>>(2)),
            event_type: row.get(3),
            event_data: row.get(4),
            created_at: Timestamp(row.get(5)),
        })
        .collect())
}

/// Every run state, as the schema's CHECK constraint lists them.
pub const RUN_STATES: [&str; 10] = [
    "pending",
    "running",
    "awaiting_approval",
    "completed",
    "rolling_back",
    "rolled_back",
    "safe_halted",
    "cancelled",
    "timed_out",
    "rejected",
];

/// Replaces the value of any key that names a credential, at any depth, then caps the size:
/// a value larger than [`OUTPUT_LIMIT`] bytes becomes `{"truncated": true, "bytes": N, "preview": "…"}`.
pub fn bounded_json(value: Value) -> Value {
    let value = crate::redact::redact(value, crate::redact::Audience::StatusReaders);
    let text = value.to_string();
    if text.len() <= OUTPUT_LIMIT {
        return value;
    }
    serde_json::json!({
        "truncated": true,
        "bytes": text.len(),
        "preview": truncate(&text, OUTPUT_LIMIT),
    })
}

fn bounded_text(text: &str) -> String {
    if text.len() <= TEXT_LIMIT {
        return text.to_owned();
    }
    format!("{}… ({} bytes)", truncate(text, TEXT_LIMIT), text.len())
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Appends `condition` with each `?` numbered after the parameters already bound.
pub(crate) fn add_condition<'a>(
    conditions: &mut Vec<String>,
    params: &mut Vec<&'a (dyn ToSql + Sync)>,
    condition: &str,
    values: &[&'a (dyn ToSql + Sync)],
) {
    let mut text = condition.to_owned();
    for value in values {
        params.push(*value);
        text = text.replacen('?', &format!("${}", params.len()), 1);
    }
    conditions.push(text);
}

fn summary_from_row(row: &Row) -> ExecutionSummary {
    ExecutionSummary {
        execution_id: row.get("execution_id"),
        node_id: row.get("node_id"),
        playbook: PinnedPlaybook {
            id: row.get("playbook_id"),
            version: row.get("playbook_version"),
            sha256: hex::encode(row.get::<_, Vec<u8>>("playbook_sha256")),
        },
        state: row.get("state"),
        current_step: row.get("current_step"),
        policy: row.get("policy"),
        outcome: row.get("outcome"),
        org_id: row.get("org_id"),
        severity: row.get("severity"),
        policy_decision_id: row.get("policy_decision_id"),
        end_reason: row
            .get::<_, Option<String>>("end_reason")
            .map(|r| bounded_text(&r)),
        started_at: Timestamp(row.get("started_at")),
        updated_at: Timestamp(row.get("updated_at")),
        completed_at: row
            .get::<_, Option<OffsetDateTime>>("completed_at")
            .map(Timestamp),
    }
}

fn halt_from_row(row: &Row) -> SafeHalt {
    SafeHalt {
        halt_id: row.get("halt_id"),
        is_active: row.get("is_active"),
        node_id: row.get("node_id"),
        execution_id: row.get("execution_id"),
        rollback_id: row.get("rollback_id"),
        error_message: bounded_text(&row.get::<_, String>("error_message")),
        entered_at: Timestamp(row.get("entered_at")),
        resolved_at: row
            .get::<_, Option<OffsetDateTime>>("resolved_at")
            .map(Timestamp),
        resolved_by: row.get("resolved_by"),
        reason: row.get("reason"),
    }
}

const SUMMARY_COLUMNS: &str = "execution_id, node_id, playbook_id, playbook_version, playbook_sha256, \
     state, current_step, policy, outcome, org_id, severity, policy_decision_id, end_reason, \
     started_at, updated_at, completed_at";
const HALT_COLUMNS: &str = "halt_id, is_active, node_id, execution_id, rollback_id, error_message, \
     entered_at, resolved_at, resolved_by, reason";
/// Largest step output or gate context returned as is (bytes of JSON).
pub const OUTPUT_LIMIT: usize = 4096;
/// Largest error or reason text returned as is (bytes).
pub const TEXT_LIMIT: usize = 2048;
const AUDIT_REFS_LIMIT: i64 = 1000;
/// The newest stored checkpoint note of `node_id` (or the one of exactly `size` rows), with its
/// size.
pub async fn checkpoint_note(
    client: &tokio_postgres::Client,
    node_id: &str,
    size: Option<i64>,
) -> Result<Option<(i64, String)>, tokio_postgres::Error> {
    let row = match size {
        Some(size) => {
            client
                .query_opt(
                    "SELECT seq, note FROM audit_checkpoints \
                     WHERE node_id = $1 AND seq = $2 AND note IS NOT NULL",
                    &[&node_id, &size],
                )
                .await?
        }
        None => {
            client
                .query_opt(
                    "SELECT seq, note FROM audit_checkpoints \
                     WHERE node_id = $1 AND note IS NOT NULL ORDER BY seq DESC LIMIT 1",
                    &[&node_id],
                )
                .await?
        }
    };
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_keys_are_redacted_at_any_depth() {
        let value = serde_json::json!({
            "status": 200,
            "headers": [{"Authorization": "Bearer abc"}],
            "nested": {"webhook_secret": "s3cr3t", "ok": "visible"},
        });
        let text = bounded_json(value).to_string();
        assert!(!text.contains("Bearer abc"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("visible"), "{text}");
        assert!(text.contains("200"), "{text}");
    }

    #[test]
    fn large_output_is_bounded() {
        let value = serde_json::json!({"stdout": "é".repeat(10_000)});
        let bounded = bounded_json(value);
        assert_eq!(bounded["truncated"], true);
        assert!(bounded["preview"].as_str().unwrap().len() <= OUTPUT_LIMIT);
        assert!(bounded["bytes"].as_u64().unwrap() > 20_000);
    }
}
