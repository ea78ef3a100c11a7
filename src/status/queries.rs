//! The status API's and the console's SQL: one query layer, both read through it.
//!
//! Every SELECT names its columns: only columns that are secret-free by design leave the
//! database (never `SELECT *`, never `step_results`, idempotency keys or playbook bytes). Free-form
//! JSON written by actions (step output, gate context, subject, binding) is redacted by key and
//! bounded in size here, on the way out, in case an action author put a credential there anyway.
//!
//! Each query decodes its rows into the typed rows below at once (states and risks through
//! [`crate::store::model`]); a value the schema does not allow is [`StoreError::Corrupt`],
//! never shown as something it is not. The API serializes these rows ([`super::json`]); the
//! console formats them ([`super::console::view`]).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use crate::registry::model::RiskTier;
use crate::status::cursor::Cursor;
use crate::status::json::{self, truncate};
use crate::store::StoreError;
use crate::store::model::{GateState, RunState, StepState, UndoState, Vote, decode_risk};

/// An instant, serialized as RFC 3339 UTC with six fractional digits (as stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub OffsetDateTime);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        json::timestamp(&self.0, serializer)
    }
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

#[derive(Debug, Clone, Serialize)]
pub struct SafeHalt {
    pub halt_id: i64,
    pub is_active: bool,
    pub node_id: String,
    pub execution_id: Option<Uuid>,
    /// The step whose undo failed.
    pub rollback_id: Option<String>,
    #[serde(serialize_with = "json::bounded")]
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

/// One run: a row of `/v1/executions` and of the console's runs page.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub execution_id: Uuid,
    pub node_id: String,
    pub playbook: PinnedPlaybook,
    #[serde(serialize_with = "json::text")]
    pub state: RunState,
    pub current_step: Option<i32>,
    pub policy: String,
    pub outcome: String,
    pub org_id: String,
    pub severity: String,
    pub policy_decision_id: String,
    #[serde(serialize_with = "json::bounded_opt")]
    pub end_reason: Option<String>,
    #[serde(serialize_with = "json::timestamp")]
    pub started_at: OffsetDateTime,
    #[serde(serialize_with = "json::timestamp")]
    pub updated_at: OffsetDateTime,
    #[serde(serialize_with = "json::timestamp_opt")]
    pub completed_at: Option<OffsetDateTime>,
}

/// The playbook version a run is pinned to.
#[derive(Debug, Clone, Serialize)]
pub struct PinnedPlaybook {
    pub id: String,
    pub version: i64,
    #[serde(serialize_with = "json::hex")]
    pub sha256: [u8; 32],
}

/// Which runs to list, already checked by the handler (the API has no node filter).
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub state: Option<RunState>,
    pub playbook: Option<String>,
    pub org: Option<String>,
    pub node: Option<String>,
    /// Inclusive.
    pub since: Option<OffsetDateTime>,
    /// Exclusive.
    pub until: Option<OffsetDateTime>,
    /// Start strictly after this row, in (started_at DESC, execution_id DESC).
    pub cursor: Option<Cursor>,
    pub limit: i64,
}

/// One page of runs, newest first (`/v1/executions`).
#[derive(Debug, Serialize)]
pub struct RunPage {
    #[serde(rename = "executions")]
    pub runs: Vec<RunSummary>,
    /// The position after the last row, when an older page exists (the API's `next_cursor`,
    /// to pass back as `cursor`).
    #[serde(rename = "next_cursor", serialize_with = "json::cursor")]
    pub next: Option<Cursor>,
}

/// Everything about one run: `/v1/executions/{id}` and the console's run page.
#[derive(Debug, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub summary: RunSummary,
    pub subject: Value,
    /// The uid of the policy engine's peer that sent the decision (SO_PEERCRED).
    pub requested_by_uid: i64,
    /// The binding that matched, as recorded at intake.
    #[serde(skip)]
    pub binding: Value,
    #[serde(skip)]
    pub rollback_cause: Option<String>,
    /// The signers of the pinned version; `None` if its version row is missing (the foreign
    /// key forbids it, so the page says so rather than showing no signer).
    #[serde(skip)]
    pub signer_key_ids: Option<Vec<String>>,
    pub steps: Vec<StepRow>,
    #[serde(rename = "approvals")]
    pub gates: Vec<GateRow>,
    /// Undo records by step, the last step first (the console shows them in the order they
    /// ran).
    pub rollback: Vec<UndoRow>,
    /// Audit rows whose `event_data.execution_id` is this run, in chain order.
    #[serde(rename = "audit")]
    pub events: Vec<EventRow>,
}

/// When a step or an undo ran and how its last attempt failed, as the API shows both.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    #[serde(serialize_with = "json::bounded_opt")]
    pub error: Option<String>,
    #[serde(serialize_with = "json::timestamp_opt")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(serialize_with = "json::timestamp_opt")]
    pub finished_at: Option<OffsetDateTime>,
}

/// One step of a run.
#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    pub step_index: i32,
    pub step_id: String,
    pub action: String,
    #[serde(serialize_with = "json::text")]
    pub state: StepState,
    pub attempts: i32,
    #[serde(serialize_with = "json::hex_opt")]
    pub params_sha256: Option<Vec<u8>>,
    pub skip_reason: Option<String>,
    /// Redacted and bounded (see [`bounded_json`]).
    pub output: Option<Value>,
    pub error_class: Option<String>,
    /// `error`, `started_at`, `finished_at`.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// From start to finish, once both are known.
    pub duration_ms: Option<i64>,
}

/// One approval gate with its votes.
#[derive(Debug, Clone, Serialize)]
pub struct GateRow {
    #[serde(skip)]
    pub execution_id: Uuid,
    pub step_index: i32,
    pub risk: RiskTier,
    pub required: i32,
    #[serde(serialize_with = "json::text")]
    pub state: GateState,
    /// Redacted and bounded: step id, action, rendered parameters.
    pub context: Value,
    #[serde(serialize_with = "json::timestamp")]
    pub opened_at: OffsetDateTime,
    #[serde(serialize_with = "json::timestamp")]
    pub expires_at: OffsetDateTime,
    #[serde(serialize_with = "json::timestamp_opt")]
    pub resolved_at: Option<OffsetDateTime>,
    pub votes: Vec<VoteRow>,
}

/// One vote on a gate.
#[derive(Debug, Clone, Serialize)]
pub struct VoteRow {
    pub approver_uid: i64,
    #[serde(serialize_with = "json::text")]
    pub verdict: Vote,
    #[serde(serialize_with = "json::bounded")]
    pub reason: String,
    #[serde(serialize_with = "json::timestamp")]
    pub created_at: OffsetDateTime,
}

/// One undo of the rollback.
#[derive(Debug, Clone, Serialize)]
pub struct UndoRow {
    pub step_index: i32,
    #[serde(serialize_with = "json::text")]
    pub state: UndoState,
    pub attempts: i32,
    /// `error`, `started_at`, `finished_at`.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// One audit event of a run, with its evidence (the API lists where it is, not the evidence).
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub node_id: String,
    pub seq: i64,
    #[serde(skip)]
    pub hash: Vec<u8>,
    pub event_type: String,
    /// The event's fields (actor, step_id, reason, …); never secret by construction.
    #[serde(skip)]
    pub data: Value,
    #[serde(serialize_with = "json::timestamp")]
    pub created_at: OffsetDateTime,
    /// The first signed checkpoint of the same chain at or after `seq`, if one was taken.
    #[serde(skip)]
    pub checkpoint: Option<CheckpointRef>,
    /// How many witnesses cosigned a checkpoint of this chain at or after `seq` (each
    /// cosignature was verified against the configured witness key before it was stored, and a
    /// witness cosigns only a tree consistent with the one it saw before).
    #[serde(skip)]
    pub witnesses: i64,
}

/// A signed chain head that covers an event (its seq is at or after the event's).
#[derive(Debug, Clone)]
pub struct CheckpointRef {
    pub seq: i64,
    pub key_id: String,
    pub created_at: OffsetDateTime,
    /// True when the checkpoint stored its signed C2SP note (since V9): the status API serves it
    /// and inclusion proofs against the newest one.
    pub has_note: bool,
}

/// An active SAFE-HALT with what the banner shows about it.
#[derive(Debug, Clone)]
pub struct ActiveHalt {
    pub halt: SafeHalt,
    /// Whether every node is halted (`playbookd ctl halt --fleet`), not only `halt.node_id`.
    pub fleet: bool,
}

/// A gate waiting now, with the run it belongs to.
#[derive(Debug, Clone)]
pub struct WaitingGate {
    pub gate: GateRow,
    pub playbook_id: String,
    pub playbook_version: i64,
    pub org_id: String,
    pub node_id: String,
    pub policy: String,
    pub outcome: String,
    pub severity: String,
}

/// Executions by state, every state present (0 when none).
pub async fn count_by_state(
    client: &impl GenericClient,
) -> Result<BTreeMap<String, i64>, StoreError> {
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
) -> Result<Option<ChainHead>, StoreError> {
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
) -> Result<Option<SafeHalt>, StoreError> {
    let rows = halt_rows(
        client,
        concat!(
            "WHERE ",
            crate::store::halts::in_force!("$1"),
            " ORDER BY scope = 'fleet' DESC, entered_at LIMIT 1"
        ),
        &[&node_id],
    )
    .await?;
    Ok(rows.first().map(halt_from_row))
}

/// The newest `limit` halts, active or resolved.
pub async fn halt_history(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Vec<SafeHalt>, StoreError> {
    let rows = halt_rows(
        client,
        "ORDER BY entered_at DESC, halt_id DESC LIMIT $1",
        &[&limit],
    )
    .await?;
    Ok(rows.iter().map(halt_from_row).collect())
}

pub async fn known_versions(client: &impl GenericClient) -> Result<Vec<KnownVersion>, StoreError> {
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
            id: row.get("playbook_id"),
            version: row.get("version"),
            sha256: hex::encode(row.get::<_, Vec<u8>>("sha256")),
            signer_key_ids: row.get("signer_key_ids"),
            first_seen: Timestamp(row.get("first_seen")),
        })
        .collect())
}

/// Every active SAFE-HALT, oldest first (one per node once halts are node-scoped).
pub async fn active_halts(client: &impl GenericClient) -> Result<Vec<ActiveHalt>, StoreError> {
    let rows = halt_rows(client, "WHERE is_active ORDER BY entered_at, halt_id", &[]).await?;
    Ok(rows
        .iter()
        .map(|row| ActiveHalt {
            halt: halt_from_row(row),
            fleet: row.get("fleet"),
        })
        .collect())
}

/// How many gates wait for a vote (for the navigation).
pub async fn waiting_gate_count(client: &impl GenericClient) -> Result<i64, StoreError> {
    let row = client
        .query_one(
            "SELECT count(*) FROM playbook_approval_gates WHERE state = 'pending'",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// One page of runs, newest first, strictly after `filter.cursor`.
pub async fn runs(client: &impl GenericClient, filter: &RunFilter) -> Result<RunPage, StoreError> {
    // Only the filters present go into the SQL, so the planner sees a plain predicate and can
    // use the matching (column, started_at DESC, execution_id DESC) index.
    let fetch = filter.limit + 1;
    let state = filter.state.map(RunState::as_str);
    let cursor = filter.cursor.map(|c| (c.started_at, c.execution_id));
    let mut conditions: Vec<String> = Vec::new();
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(state) = &state {
        add_condition(&mut conditions, &mut params, "state = ?", &[state]);
    }
    if let Some(playbook) = &filter.playbook {
        add_condition(&mut conditions, &mut params, "playbook_id = ?", &[playbook]);
    }
    if let Some(org) = &filter.org {
        add_condition(&mut conditions, &mut params, "org_id = ?", &[org]);
    }
    if let Some(node) = &filter.node {
        add_condition(&mut conditions, &mut params, "node_id = ?", &[node]);
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
        "SELECT {RUN_COLUMNS} FROM playbook_executions e {where_clause} \
         ORDER BY started_at DESC, execution_id DESC LIMIT ${}",
        params.len()
    );
    let rows = client.query(&sql, &params).await?;
    let mut runs = rows
        .iter()
        .map(run_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let limit = usize::try_from(filter.limit).unwrap_or(usize::MAX);
    let has_more = runs.len() > limit;
    runs.truncate(limit);
    let next = match runs.last() {
        Some(last) if has_more => Some(Cursor {
            started_at: last.started_at,
            execution_id: last.execution_id,
        }),
        _ => None,
    };
    Ok(RunPage { runs, next })
}

/// Everything about one run, or `None` when there is no such execution.
pub async fn run_detail(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<RunDetail>, StoreError> {
    let Some(row) = client
        .query_opt(
            &format!(
                "SELECT {RUN_COLUMNS}, e.subject, e.requested_by_uid, e.binding, e.rollback_cause, \
                        v.signer_key_ids \
                 FROM playbook_executions e \
                 LEFT JOIN playbook_versions v \
                   ON v.playbook_id = e.playbook_id AND v.version = e.playbook_version \
                 WHERE e.execution_id = $1"
            ),
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(RunDetail {
        summary: run_from_row(&row)?,
        subject: bounded_json(row.get("subject")),
        requested_by_uid: row.get("requested_by_uid"),
        binding: bounded_json(row.get("binding")),
        rollback_cause: row.get("rollback_cause"),
        signer_key_ids: row.get("signer_key_ids"),
        steps: steps_of(client, id).await?,
        gates: gates_of(client, &[id], false).await?,
        rollback: undos_of(client, id).await?,
        events: events_of(client, id).await?,
    }))
}

/// The steps of run `id`, in step order.
async fn steps_of(client: &impl GenericClient, id: Uuid) -> Result<Vec<StepRow>, StoreError> {
    client
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
            Ok(StepRow {
                step_index: row.get(0),
                step_id: row.get(1),
                action: row.get(2),
                state: StepState::decode(row.get(3))?,
                attempts: row.get(4),
                params_sha256: row.get(5),
                skip_reason: row.get(6),
                output: row.get::<_, Option<Value>>(7).map(bounded_json),
                error_class: row.get(8),
                outcome: Outcome {
                    error: row.get(9),
                    started_at,
                    finished_at,
                },
                duration_ms: started_at.zip(finished_at).map(|(start, end)| {
                    i64::try_from((end - start).whole_milliseconds()).unwrap_or(i64::MAX)
                }),
            })
        })
        .collect()
}

/// The undos of run `id`, the last step first.
async fn undos_of(client: &impl GenericClient, id: Uuid) -> Result<Vec<UndoRow>, StoreError> {
    client
        .query(
            "SELECT step_index, state, attempts, error, started_at, finished_at \
             FROM playbook_rollback_states WHERE execution_id = $1 ORDER BY step_index DESC",
            &[&id],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(UndoRow {
                step_index: row.get(0),
                state: UndoState::decode(row.get(1))?,
                attempts: row.get(2),
                outcome: Outcome {
                    error: row.get(3),
                    started_at: row.get(4),
                    finished_at: row.get(5),
                },
            })
        })
        .collect()
}

/// The audit events of run `id` in chain order (at most [`EVENTS_LIMIT`]), each with the
/// checkpoint and cosignatures that cover it.
async fn events_of(client: &impl GenericClient, id: Uuid) -> Result<Vec<EventRow>, StoreError> {
    // `event_data ? 'execution_id'` matches the partial index's predicate, so it is used; the
    // lateral join finds the first checkpoint of the same chain at or after each event through
    // the checkpoints' primary key.
    let rows = client
        .query(
            "SELECT a.node_id, a.seq, a.hash, a.event_type, a.event_data, a.created_at, \
                    c.seq, c.key_id, c.created_at, c.note IS NOT NULL, \
                    (SELECT count(DISTINCT w.witness_name) FROM audit_cosignatures w \
                     WHERE w.node_id = a.node_id AND w.checkpoint_seq >= a.seq) \
             FROM playbook_audit_log a \
             LEFT JOIN LATERAL ( \
                 SELECT seq, key_id, created_at, note FROM audit_checkpoints k \
                 WHERE k.node_id = a.node_id AND k.seq >= a.seq ORDER BY k.seq LIMIT 1 \
             ) c ON true \
             WHERE a.event_data ? 'execution_id' AND a.event_data ->> 'execution_id' = $1 \
             ORDER BY a.created_at, a.node_id, a.seq LIMIT $2",
            &[&id.to_string(), &EVENTS_LIMIT],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| EventRow {
            node_id: row.get(0),
            seq: row.get(1),
            hash: row.get(2),
            event_type: row.get(3),
            data: row.get(4),
            created_at: row.get(5),
            checkpoint: row.get::<_, Option<i64>>(6).map(|seq| CheckpointRef {
                seq,
                key_id: row.get(7),
                created_at: row.get(8),
                has_note: row.get::<_, Option<bool>>(9).unwrap_or(false),
            }),
            witnesses: row.get(10),
        })
        .collect())
}

/// Every gate waiting for a vote, the most critical first, then the soonest to expire.
pub async fn waiting_gates(client: &impl GenericClient) -> Result<Vec<WaitingGate>, StoreError> {
    let rows = client
        .query(
            "SELECT g.execution_id, e.playbook_id, e.playbook_version, e.org_id, e.node_id, \
                    e.policy, e.outcome, e.severity \
             FROM playbook_approval_gates g JOIN playbook_executions e USING (execution_id) \
             WHERE g.state = 'pending' LIMIT $1",
            &[&WAITING_LIMIT],
        )
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|row| row.get(0)).collect();
    let runs: BTreeMap<Uuid, &Row> = rows.iter().map(|row| (row.get(0), row)).collect();
    let gates = gates_of(client, &ids, true).await?;
    let mut waiting: Vec<WaitingGate> = gates
        .into_iter()
        .filter_map(|gate| {
            let run = runs.get(&gate.execution_id)?;
            Some(WaitingGate {
                playbook_id: run.get(1),
                playbook_version: run.get(2),
                org_id: run.get(3),
                node_id: run.get(4),
                policy: run.get(5),
                outcome: run.get(6),
                severity: run.get(7),
                gate,
            })
        })
        .collect();
    waiting.sort_by(|a, b| {
        b.gate
            .risk
            .cmp(&a.gate.risk)
            .then(a.gate.expires_at.cmp(&b.gate.expires_at))
            .then(a.gate.execution_id.cmp(&b.gate.execution_id))
            .then(a.gate.step_index.cmp(&b.gate.step_index))
    });
    Ok(waiting)
}

/// The gates (with votes) of `executions`; only pending ones with `only_pending`.
async fn gates_of(
    client: &impl GenericClient,
    executions: &[Uuid],
    only_pending: bool,
) -> Result<Vec<GateRow>, StoreError> {
    if executions.is_empty() {
        return Ok(Vec::new());
    }
    let mut votes: BTreeMap<(Uuid, i32), Vec<VoteRow>> = BTreeMap::new();
    for row in client
        .query(
            "SELECT execution_id, step_index, approver_uid, verdict, reason, created_at \
             FROM playbook_approvals WHERE execution_id = ANY($1) \
             ORDER BY execution_id, step_index, created_at, approver_uid",
            &[&executions],
        )
        .await?
    {
        let verdict = Vote::decode(row.get(3))?;
        votes
            .entry((row.get(0), row.get(1)))
            .or_default()
            .push(VoteRow {
                approver_uid: row.get(2),
                verdict,
                reason: row.get(4),
                created_at: row.get(5),
            });
    }
    client
        .query(
            "SELECT execution_id, step_index, risk, required, state, context, opened_at, \
                    expires_at, resolved_at \
             FROM playbook_approval_gates \
             WHERE execution_id = ANY($1) AND (NOT $2 OR state = 'pending') \
             ORDER BY execution_id, step_index",
            &[&executions, &only_pending],
        )
        .await?
        .iter()
        .map(|row| {
            let key: (Uuid, i32) = (row.get(0), row.get(1));
            Ok(GateRow {
                execution_id: key.0,
                step_index: key.1,
                risk: decode_risk(row.get(2))?,
                required: row.get(3),
                state: GateState::decode(row.get(4))?,
                context: bounded_json(row.get(5)),
                opened_at: row.get(6),
                expires_at: row.get(7),
                resolved_at: row.get(8),
                votes: votes.remove(&key).unwrap_or_default(),
            })
        })
        .collect()
}

fn run_from_row(row: &Row) -> Result<RunSummary, StoreError> {
    let sha: Vec<u8> = row.get("playbook_sha256");
    Ok(RunSummary {
        execution_id: row.get("execution_id"),
        node_id: row.get("node_id"),
        playbook: PinnedPlaybook {
            id: row.get("playbook_id"),
            version: row.get("playbook_version"),
            sha256: <[u8; 32]>::try_from(sha.as_slice()).map_err(|_| StoreError::Corrupt {
                what: "playbook sha256",
                detail: format!("`{}` is not 32 bytes", hex::encode(&sha)),
            })?,
        },
        state: RunState::decode(row.get("state"))?,
        current_step: row.get("current_step"),
        policy: row.get("policy"),
        outcome: row.get("outcome"),
        org_id: row.get("org_id"),
        severity: row.get("severity"),
        policy_decision_id: row.get("policy_decision_id"),
        end_reason: row.get("end_reason"),
        started_at: row.get("started_at"),
        updated_at: row.get("updated_at"),
        completed_at: row.get("completed_at"),
    })
}

/// Rows of `node_id`'s chain with `seq > after`, in order.
pub async fn audit_rows(
    client: &impl GenericClient,
    node_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditRow>, StoreError> {
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

/// The newest stored checkpoint note of `node_id` (or the one of exactly `size` rows), with its
/// size.
pub async fn checkpoint_note(
    client: &tokio_postgres::Client,
    node_id: &str,
    size: Option<i64>,
) -> Result<Option<(i64, String)>, StoreError> {
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

/// Replaces the value of any key that names a credential, at any depth, then caps the size:
/// a value larger than [`OUTPUT_LIMIT`] bytes becomes `{"truncated": true, "bytes": N, "preview": "…"}`.
pub fn bounded_json(value: Value) -> Value {
    crate::text::capped_json(
        crate::redact::redact(value, crate::redact::Audience::StatusReaders),
        OUTPUT_LIMIT,
        "preview",
        |text, max_bytes| truncate(text, max_bytes).to_owned(),
    )
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

/// The halt rows `tail` (a WHERE and ORDER BY clause with `params`) selects, with the
/// [`halt_from_row`] columns and `fleet`.
async fn halt_rows(
    client: &impl GenericClient,
    tail: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let sql = format!(
        "SELECT {HALT_COLUMNS}, scope = 'fleet' AS fleet FROM playbook_safe_halt_state {tail}"
    );
    Ok(client.query(&sql, params).await?)
}

fn halt_from_row(row: &Row) -> SafeHalt {
    SafeHalt {
        halt_id: row.get("halt_id"),
        is_active: row.get("is_active"),
        node_id: row.get("node_id"),
        execution_id: row.get("execution_id"),
        rollback_id: row.get("rollback_id"),
        error_message: row.get("error_message"),
        entered_at: Timestamp(row.get("entered_at")),
        resolved_at: row
            .get::<_, Option<OffsetDateTime>>("resolved_at")
            .map(Timestamp),
        resolved_by: row.get("resolved_by"),
        reason: row.get("reason"),
    }
}

const HALT_COLUMNS: &str = "halt_id, is_active, node_id, execution_id, rollback_id, error_message, \
     entered_at, resolved_at, resolved_by, reason";
/// Largest step output or gate context returned as is (bytes of JSON).
pub const OUTPUT_LIMIT: usize = 4096;
/// Columns of [`RunSummary`], qualified so they also work in the joined detail query.
const RUN_COLUMNS: &str = "e.execution_id, e.node_id, e.playbook_id, e.playbook_version, \
     e.playbook_sha256, e.state, e.current_step, e.policy, e.outcome, e.org_id, e.severity, e.policy_decision_id, \
     e.end_reason, e.started_at, e.updated_at, e.completed_at";
/// The events shown for one run (a run has a few dozen; the page says when it is cut).
pub const EVENTS_LIMIT: i64 = 1000;
/// The waiting gates shown at once.
pub const WAITING_LIMIT: i64 = 500;

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
