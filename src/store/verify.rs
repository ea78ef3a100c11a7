//! Re-verification of audit chains: recomputes every hash from the stored rows and checks the
//! links, the sequence and the signed checkpoints. Used by `playbookd audit verify`.

use futures::TryStreamExt;
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;

use crate::store::StoreError;
use crate::store::audit::{GENESIS_HASH, canonical_bytes, chain_hash};

/// What is wrong at the first bad row of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Breach {
    /// The row's content no longer matches its stored hash: it was modified.
    Modified,
    /// A sequence number is missing: rows were deleted.
    Missing { expected: i64 },
    /// The row does not link to the one before it: rows were inserted, deleted and renumbered,
    /// or reordered.
    BrokenLink,
    /// The chain ends before a signed checkpoint: its tail was cut off.
    Truncated { checkpoint_seq: i64, last_seq: i64 },
    /// The checkpoint's hash differs from the chain's hash at that seq.
    CheckpointMismatch,
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Breach::Modified => f.write_str("modified: content does not match its hash"),
            Breach::Missing { expected } => {
                write!(f, "deleted: seq {expected} is missing")
            }
            Breach::BrokenLink => f.write_str(
                "inserted, deleted or reordered: prev_hash does not match the previous row",
            ),
            Breach::Truncated {
                checkpoint_seq,
                last_seq,
            } => write!(
                f,
                "truncated: a checkpoint covers seq {checkpoint_seq} but the chain ends at {last_seq}"
            ),
            Breach::CheckpointMismatch => {
                f.write_str("checkpoint hash differs from the chain at that seq")
            }
        }
    }
}

/// Outcome of verifying one node's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    pub node_id: String,
    /// Rows checked before the first breach (all of them when `breach` is None).
    pub rows: u64,
    pub last_seq: i64,
    /// The first problem found and the seq it was found at.
    pub breach: Option<(i64, Breach)>,
}

/// Every node id that has a chain.
pub async fn nodes(client: &tokio_postgres::Client) -> Result<Vec<String>, StoreError> {
    let rows = client
        .query(
            "SELECT DISTINCT node_id FROM playbook_audit_log ORDER BY node_id",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Recomputes the chain of `node_id`, streaming rows in seq order, and stops at the first breach.
pub async fn verify_chain(
    client: &tokio_postgres::Client,
    node_id: &str,
) -> Result<ChainReport, StoreError> {
    // Before the row stream opens: a second query on the same connection would wait behind it.
    let checkpoints = checkpoints(client, node_id).await?;
    let params: [&(dyn ToSql + Sync); 1] = [&node_id];
    let rows = client
        .query_raw(
            "SELECT seq, prev_hash, hash, event_type, event_data, created_at \
             FROM playbook_audit_log WHERE node_id = $1 ORDER BY seq",
            params,
        )
        .await?;
    futures::pin_mut!(rows);
    let mut report = ChainReport {
        node_id: node_id.to_owned(),
        rows: 0,
        last_seq: 0,
        breach: None,
    };
    let mut prev_hash = GENESIS_HASH;
    let mut hashes_at_checkpoints = Vec::new();
    while let Some(row) = rows.try_next().await? {
        let seq: i64 = row.get(0);
        let stored_prev: Vec<u8> = row.get(1);
        let stored_hash: Vec<u8> = row.get(2);
        let event_type: String = row.get(3);
        let event_data: serde_json::Value = row.get(4);
        let created_at: OffsetDateTime = row.get(5);
        let expected = report.last_seq + 1;
        if seq != expected {
            report.breach = Some((seq, Breach::Missing { expected }));
            return Ok(report);
        }
        if stored_prev != prev_hash {
            report.breach = Some((seq, Breach::BrokenLink));
            return Ok(report);
        }
        let canonical = canonical_bytes(node_id, seq, &event_type, &event_data, created_at);
        let hash = chain_hash(&prev_hash, &canonical);
        if stored_hash != hash {
            report.breach = Some((seq, Breach::Modified));
            return Ok(report);
        }
        if checkpoints.iter().any(|(cp_seq, _)| *cp_seq == seq) {
            hashes_at_checkpoints.push((seq, hash));
        }
        prev_hash = hash;
        report.last_seq = seq;
        report.rows += 1;
    }
    for (checkpoint_seq, checkpoint_hash) in &checkpoints {
        if *checkpoint_seq > report.last_seq {
            report.breach = Some((
                report.last_seq + 1,
                Breach::Truncated {
                    checkpoint_seq: *checkpoint_seq,
                    last_seq: report.last_seq,
                },
            ));
            return Ok(report);
        }
        let matches = hashes_at_checkpoints
            .iter()
            .any(|(seq, hash)| seq == checkpoint_seq && hash.as_slice() == checkpoint_hash);
        if !matches {
            report.breach = Some((*checkpoint_seq, Breach::CheckpointMismatch));
            return Ok(report);
        }
    }
    Ok(report)
}

/// The (seq, hash) of every stored checkpoint of a node. Their signatures are checked by the
/// caller that holds the node's public key.
async fn checkpoints(
    client: &tokio_postgres::Client,
    node_id: &str,
) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    let rows = client
        .query(
            "SELECT seq, hash FROM audit_checkpoints WHERE node_id = $1 ORDER BY seq",
            &[&node_id],
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}
