//! The node list (`playbook_nodes`): one heartbeat row per daemon of the fleet.
//!
//! Each daemon writes only its own row: at start, every `fleet.heartbeat_interval_seconds`, and
//! at a clean stop. What the row says (runs in flight, halt, last checkpoint) is read from the
//! node's own rows in the same statement, so it is never more than one interval old; the chain
//! head is the one the node's audit writer has committed. The heartbeat is not an audit event: it
//! changes no execution state and would bury the chain in noise.

use time::OffsetDateTime;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row, Statement};

use super::chain::ChainHead;
use super::halts::ActiveHalt;
use super::{Store, StoreError};

/// What a node reports about itself.
#[derive(Debug, Clone)]
pub struct Heartbeat<'a> {
    pub node_id: &'a str,
    pub version: &'a str,
    pub started_at: OffsetDateTime,
    pub head: ChainHead,
    pub freshness_seconds: u64,
}

crate::store::model::db_enum! {
    /// A node's halt state, as the heartbeat last saw it (`playbook_nodes.halt`).
    NodeHalt, "node halt state" {
        None => "none",
        /// Its own SAFE-HALT.
        Node => "node",
        /// The fleet's SAFE-HALT.
        Fleet => "fleet",
    }
}

/// One row of the node list.
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub node_id: String,
    pub version: String,
    pub started_at: OffsetDateTime,
    pub heartbeat_at: OffsetDateTime,
    /// Set when the daemon stopped cleanly (and not started since).
    pub stopped_at: Option<OffsetDateTime>,
    pub chain_head_seq: i64,
    pub chain_head_hash: Option<Vec<u8>>,
    pub last_checkpoint_seq: Option<i64>,
    pub last_checkpoint_at: Option<OffsetDateTime>,
    pub runs_in_flight: i64,
    pub halt: NodeHalt,
    /// Seconds between the heartbeat and the database's clock when it was read.
    pub heartbeat_age_seconds: f64,
}

impl NodeRow {
    /// Stale: stopped, or its heartbeat is older than `stale_after_seconds`.
    pub fn is_stale(&self, stale_after_seconds: u64) -> bool {
        #[allow(clippy::cast_precision_loss)] // at most 86400
        let limit = stale_after_seconds as f64;
        self.stopped_at.is_some() || self.heartbeat_age_seconds > limit
    }
}

const COLUMNS: &str = "node_id, version, started_at, heartbeat_at, stopped_at, chain_head_seq, \
     chain_head_hash, last_checkpoint_seq, last_checkpoint_at, runs_in_flight, halt, \
     EXTRACT(EPOCH FROM (now() - heartbeat_at))::float8";

/// The heartbeat upsert: `$1` node, `$2` version, `$3` started at, `$4`/`$5` chain head,
/// `$6` freshness window. A macro so that [`PERIODIC`] can embed the same text.
macro_rules! upsert_beat {
    () => {
        concat!(
        "INSERT INTO playbook_nodes AS n (node_id, version, started_at, heartbeat_at, stopped_at, \
            chain_head_seq, chain_head_hash, last_checkpoint_seq, last_checkpoint_at, \
            runs_in_flight, halt, freshness_seconds) \
         SELECT $1, $2, $3, now(), NULL, $4, $5, cp.seq, cp.created_at, \
            (SELECT count(*) FROM playbook_executions e WHERE e.node_id = $1 \
               AND e.state IN ('pending', 'running', 'awaiting_approval', 'rolling_back')), \
            COALESCE((SELECT CASE WHEN bool_or(scope = 'fleet') THEN 'fleet' ELSE 'node' END \
               FROM playbook_safe_halt_state WHERE ",
        crate::store::halts::in_force!("$1"),
        " HAVING count(*) > 0), 'none'), \
            $6 \
         FROM (SELECT NULL) AS one \
         LEFT JOIN LATERAL (SELECT c.seq, c.created_at FROM audit_checkpoints c \
            WHERE c.node_id = $1 ORDER BY c.seq DESC LIMIT 1) cp ON true \
         ON CONFLICT (node_id) DO UPDATE SET version = EXCLUDED.version, \
            started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, \
            stopped_at = NULL, chain_head_seq = EXCLUDED.chain_head_seq, \
            chain_head_hash = EXCLUDED.chain_head_hash, \
            last_checkpoint_seq = EXCLUDED.last_checkpoint_seq, \
            last_checkpoint_at = EXCLUDED.last_checkpoint_at, \
            runs_in_flight = EXCLUDED.runs_in_flight, halt = EXCLUDED.halt, \
            freshness_seconds = GREATEST(n.freshness_seconds, EXCLUDED.freshness_seconds)"
        )
    };
}

/// The whole periodic work of a node in one statement (issue #16: an idle daemon makes about one
/// query per heartbeat, whatever number of runs it has parked): the heartbeat upsert, one batch
/// of nonce retention (`$7` window, `$8` batch, see [`super::nonces::prune`]) and the fleet halt
/// (the backstop for a missed notification), columns as [`super::halts::FLEET_COLUMNS`]. A
/// data-modifying WITH runs exactly once whatever the outer query reads; the outer query has
/// exactly one row (at most one fleet halt is active, by a unique index), so the prune runs once.
pub const PERIODIC: &str = concat!(
    "WITH beat AS (",
    upsert_beat!(),
    " RETURNING 1) \
     SELECT playbook_prune_nonces($7, $8), h.halt_id, h.node_id, h.execution_id, h.error_message, \
        h.entered_at \
     FROM (SELECT NULL) AS one \
     LEFT JOIN playbook_safe_halt_state h ON h.is_active AND h.scope = 'fleet'"
);

/// Writes this node's row: what it reports, and what its own rows say now.
pub async fn beat(store: &Store, beat: &Heartbeat<'_>) -> Result<(), StoreError> {
    let (freshness, head_hash) = beat_params(beat)?;
    let client = store.client().await?;
    client
        .execute(upsert_beat!(), &beat_values(beat, &freshness, &head_hash))
        .await?;
    Ok(())
}

/// What one periodic statement learned besides writing the heartbeat.
#[derive(Debug, Clone)]
pub struct Periodic {
    /// Nonces deleted by its prune batch (a full batch means more are due).
    pub pruned: u64,
    /// The active fleet halt, if any.
    pub fleet_halt: Option<ActiveHalt>,
}

/// Runs [`PERIODIC`] (prepared by the caller on its connection, so that a beat is one round
/// trip and no parse) with the heartbeat `beat` and a prune batch of `prune_batch` nonces older
/// than the retention for `window_seconds`.
pub async fn periodic<C: GenericClient>(
    client: &C,
    statement: &Statement,
    beat: &Heartbeat<'_>,
    window_seconds: u64,
    prune_batch: u32,
) -> Result<Periodic, StoreError> {
    let (freshness, head_hash) = beat_params(beat)?;
    let (window, batch) = super::nonces::prune_params(window_seconds, prune_batch)?;
    let mut values = beat_values(beat, &freshness, &head_hash);
    values.extend([&window as &(dyn ToSql + Sync), &batch]);
    let row = client.query_one(statement, &values).await?;
    let pruned: i32 = row.get(0);
    Ok(Periodic {
        pruned: u64::try_from(pruned).unwrap_or(0),
        fleet_halt: super::halts::fleet_from_row(&row, 1),
    })
}

/// `$1`…`$6` of the heartbeat upsert.
fn beat_values<'a>(
    beat: &'a Heartbeat<'_>,
    freshness: &'a i32,
    head_hash: &'a Option<Vec<u8>>,
) -> Vec<&'a (dyn ToSql + Sync)> {
    vec![
        &beat.node_id,
        &beat.version,
        &beat.started_at,
        &beat.head.seq,
        head_hash,
        freshness,
    ]
}

fn beat_params(beat: &Heartbeat<'_>) -> Result<(i32, Option<Vec<u8>>), StoreError> {
    let freshness = i32::try_from(beat.freshness_seconds).map_err(|_| StoreError::Corrupt {
        what: "freshness window",
        detail: format!("{} s does not fit", beat.freshness_seconds),
    })?;
    Ok((
        freshness,
        (beat.head.seq > 0).then(|| beat.head.hash.to_vec()),
    ))
}

/// Marks this node's row as stopped (a clean shutdown).
pub async fn mark_stopped(store: &Store, node_id: &str) -> Result<(), StoreError> {
    let client = store.client().await?;
    client
        .execute(
            "UPDATE playbook_nodes SET stopped_at = now(), heartbeat_at = now() WHERE node_id = $1",
            &[&node_id],
        )
        .await?;
    Ok(())
}

/// Every node, by id.
pub async fn list(store: &Store) -> Result<Vec<NodeRow>, StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM playbook_nodes ORDER BY node_id"),
            &[],
        )
        .await?;
    rows.iter().map(decode).collect()
}

/// One node, if it ever reported.
pub async fn get(store: &Store, node_id: &str) -> Result<Option<NodeRow>, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM playbook_nodes WHERE node_id = $1"),
            &[&node_id],
        )
        .await?;
    row.as_ref().map(decode).transpose()
}

fn decode(row: &Row) -> Result<NodeRow, StoreError> {
    Ok(NodeRow {
        node_id: row.get(0),
        version: row.get(1),
        started_at: row.get(2),
        heartbeat_at: row.get(3),
        stopped_at: row.get(4),
        chain_head_seq: row.get(5),
        chain_head_hash: row.get(6),
        last_checkpoint_seq: row.get(7),
        last_checkpoint_at: row.get(8),
        runs_in_flight: row.get(9),
        halt: NodeHalt::decode(row.get(10))?,
        heartbeat_age_seconds: row.get(11),
    })
}
