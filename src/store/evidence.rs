//! Reads for evidence (`audit prove`, `audit checkpoint-text`, witness submissions): one run's
//! audit rows, a node's chain hashes, its newest checkpoint and the witness cosignatures stored
//! beside checkpoints (`audit_cosignatures`, migration V10: the only write here, append-only).
//! The chain itself is checked by [`crate::store::verify`] before any of this is signed.

use time::OffsetDateTime;

use crate::bundle::AuditRow;
use crate::cosignature::Cosignature;
use crate::merkle::{self, Hash, Tree};
use crate::note::{self, TreeHead};
use crate::store::StoreError;

/// The newest stored checkpoint of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestCheckpoint {
    pub seq: u64,
    pub hash: Hash,
    pub key_id: String,
    /// Its C2SP signed note, stored since migration V9.
    pub note: Option<String>,
}

/// A stored checkpoint's signed note (since V9) and the size of the tree it signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNote {
    pub seq: u64,
    pub note: String,
}

/// A stored value that breaks the schema's own constraints.
fn corrupt(detail: &str) -> StoreError {
    StoreError::Corrupt {
        what: "audit evidence",
        detail: detail.to_owned(),
    }
}

fn to_hash(bytes: Vec<u8>, what: &str) -> Result<Hash, StoreError> {
    Hash::try_from(bytes).map_err(|_| corrupt(what))
}

fn to_seq(seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq).map_err(|_| corrupt("audit seq below 1"))
}

/// Every audit row that names `execution_id`, grouped by node, each group in seq order.
pub async fn execution_rows(
    client: &tokio_postgres::Client,
    execution_id: uuid::Uuid,
) -> Result<Vec<(String, Vec<AuditRow>)>, StoreError> {
    let rows = client
        .query(
            "SELECT node_id, seq, prev_hash, hash, event_type, event_data, created_at \
             FROM playbook_audit_log \
             WHERE event_data ? 'execution_id' AND event_data ->> 'execution_id' = $1 \
             ORDER BY node_id, seq",
            &[&execution_id.to_string()],
        )
        .await?;
    let mut nodes: Vec<(String, Vec<AuditRow>)> = Vec::new();
    for row in rows {
        let node_id: String = row.get(0);
        let created_at: OffsetDateTime = row.get(6);
        let audit_row = AuditRow {
            seq: to_seq(row.get(1))?,
            prev_hash: to_hash(row.get(2), "audit prev_hash of another length than 32")?,
            hash: to_hash(row.get(3), "audit hash of another length than 32")?,
            event_type: row.get(4),
            event_data: row.get(5),
            created_at,
        };
        match nodes.last_mut() {
            Some((node, rows)) if *node == node_id => rows.push(audit_row),
            _ => nodes.push((node_id, vec![audit_row])),
        }
    }
    Ok(nodes)
}

/// The chain hashes of `node_id`'s rows 1..=`size`, in seq order; a gap is an error.
pub async fn chain_hashes(
    client: &tokio_postgres::Client,
    node_id: &str,
    size: u64,
) -> Result<Vec<Hash>, StoreError> {
    let last = i64::try_from(size).map_err(|_| corrupt("tree size beyond i64"))?;
    let rows = client
        .query(
            "SELECT seq, hash FROM playbook_audit_log WHERE node_id = $1 AND seq <= $2 ORDER BY seq",
            &[&node_id, &last],
        )
        .await?;
    let mut hashes = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        if to_seq(row.get(0))? != index as u64 + 1 {
            return Err(corrupt("a gap in the audit chain"));
        }
        hashes.push(to_hash(row.get(1), "audit hash of another length than 32")?);
    }
    if hashes.len() as u64 != size {
        return Err(corrupt("the audit chain ends before the checkpoint"));
    }
    Ok(hashes)
}

/// The newest checkpoint of `node_id`, if any.
pub async fn latest_checkpoint(
    client: &tokio_postgres::Client,
    node_id: &str,
) -> Result<Option<LatestCheckpoint>, StoreError> {
    let row = client
        .query_opt(
            "SELECT seq, hash, key_id, note FROM audit_checkpoints WHERE node_id = $1 \
             ORDER BY seq DESC LIMIT 1",
            &[&node_id],
        )
        .await?;
    row.map(|row| {
        Ok(LatestCheckpoint {
            seq: to_seq(row.get(0))?,
            hash: to_hash(row.get(1), "checkpoint hash of another length than 32")?,
            key_id: row.get(2),
            note: row.get(3),
        })
    })
    .transpose()
}

/// The newest stored note of `node_id`, if any.
pub async fn latest_note(
    client: &tokio_postgres::Client,
    node_id: &str,
) -> Result<Option<StoredNote>, StoreError> {
    let row = client
        .query_opt(
            "SELECT seq, note FROM audit_checkpoints \
             WHERE node_id = $1 AND note IS NOT NULL ORDER BY seq DESC LIMIT 1",
            &[&node_id],
        )
        .await?;
    stored_note(row)
}

fn stored_note(row: Option<tokio_postgres::Row>) -> Result<Option<StoredNote>, StoreError> {
    row.map(|row| {
        Ok(StoredNote {
            seq: to_seq(row.get(0))?,
            note: row.get(1),
        })
    })
    .transpose()
}

/// The first stored note of `node_id` whose tree covers seq `seq` (its size is at least `seq`).
pub async fn first_note_covering(
    client: &tokio_postgres::Client,
    node_id: &str,
    seq: u64,
) -> Result<Option<StoredNote>, StoreError> {
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    let row = client
        .query_opt(
            "SELECT seq, note FROM audit_checkpoints \
             WHERE node_id = $1 AND seq >= $2 AND note IS NOT NULL ORDER BY seq LIMIT 1",
            &[&node_id, &seq],
        )
        .await?;
    stored_note(row)
}

/// The Merkle tree of `node_id`'s rows up to `checkpoint`, after checking that the row at its
/// seq still carries the signed hash.
pub async fn tree_at(
    client: &tokio_postgres::Client,
    node_id: &str,
    checkpoint: &LatestCheckpoint,
) -> Result<Tree, StoreError> {
    let hashes = chain_hashes(client, node_id, checkpoint.seq).await?;
    if hashes.last() != Some(&checkpoint.hash) {
        return Err(corrupt(
            "the row at the checkpoint's seq no longer carries the signed hash",
        ));
    }
    Ok(Tree::new(
        hashes.iter().map(|h| merkle::leaf_hash(h)).collect(),
    ))
}

/// The tree head of `node_id`'s checkpoint over `tree`, whose last row has chain hash `chain_head`.
pub fn tree_head(node_id: &str, tree: &Tree, chain_head: Hash) -> TreeHead {
    TreeHead {
        origin: note::origin(node_id),
        size: tree.size(),
        root: tree.root(),
        chain_head,
    }
}

/// Stores a cosignature the caller verified; storing the same one twice is a no-op.
pub async fn insert_cosignature(
    client: &tokio_postgres::Client,
    node_id: &str,
    checkpoint_seq: u64,
    cosignature: &Cosignature,
) -> Result<(), StoreError> {
    let seq = i64::try_from(checkpoint_seq).map_err(|_| corrupt("checkpoint seq beyond i64"))?;
    let timestamp =
        i64::try_from(cosignature.timestamp).map_err(|_| corrupt("timestamp beyond i64"))?;
    client
        .execute(
            "INSERT INTO audit_cosignatures \
             (node_id, checkpoint_seq, witness_name, key_id, timestamp, signature, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, now()) ON CONFLICT DO NOTHING",
            &[
                &node_id,
                &seq,
                &cosignature.witness,
                &format!("{:08x}", cosignature.key_id),
                &timestamp,
                &cosignature.signature.as_slice(),
            ],
        )
        .await?;
    Ok(())
}

/// Every stored cosignature of `node_id`'s checkpoints, by checkpoint seq (newest first), or
/// only those of `checkpoint_seq`.
pub async fn cosignatures(
    client: &tokio_postgres::Client,
    node_id: &str,
    checkpoint_seq: Option<u64>,
) -> Result<Vec<(u64, Cosignature)>, StoreError> {
    let only = checkpoint_seq
        .map(i64::try_from)
        .transpose()
        .map_err(|_| corrupt("checkpoint seq beyond i64"))?;
    let rows = client
        .query(
            "SELECT checkpoint_seq, witness_name, key_id, timestamp, signature \
             FROM audit_cosignatures WHERE node_id = $1 AND ($2::bigint IS NULL OR checkpoint_seq = $2) \
             ORDER BY checkpoint_seq DESC, witness_name, key_id",
            &[&node_id, &only],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let key_id: String = row.get(2);
            let signature: Vec<u8> = row.get(4);
            Ok((
                to_seq(row.get(0))?,
                Cosignature {
                    witness: row.get(1),
                    key_id: u32::from_str_radix(&key_id, 16)
                        .map_err(|_| corrupt("cosignature key_id is not 8 hex digits"))?,
                    timestamp: u64::try_from(row.get::<_, i64>(3))
                        .map_err(|_| corrupt("negative cosignature timestamp"))?,
                    signature: signature
                        .try_into()
                        .map_err(|_| corrupt("cosignature of another length than 64"))?,
                },
            ))
        })
        .collect()
}

/// The newest checkpoint seq of `node_id` that `witness_name` cosigned, if any.
pub async fn last_cosigned_seq(
    client: &tokio_postgres::Client,
    node_id: &str,
    witness_name: &str,
) -> Result<Option<u64>, StoreError> {
    let row = client
        .query_one(
            "SELECT max(checkpoint_seq) FROM audit_cosignatures WHERE node_id = $1 AND witness_name = $2",
            &[&node_id, &witness_name],
        )
        .await?;
    row.get::<_, Option<i64>>(0).map(to_seq).transpose()
}
