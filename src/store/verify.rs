//! Re-verification of audit chains: recomputes every hash from the stored rows and checks the
//! links, the sequence and the signed checkpoints. Used by `playbookd audit verify`.
//!
//! The rows are streamed in seq order and checked against the hash recomputed so far; the first
//! row that does not fit stops the stream. Only then, a few targeted queries work out what
//! happened to it (modified, deleted, inserted or reordered), so a clean chain costs one pass.

use std::collections::BTreeSet;

use futures::TryStreamExt;
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;

use crate::store::StoreError;
use crate::store::audit::{canonical_bytes, chain_hash};
use crate::store::chain::GENESIS_HASH;
use crate::store::checkpoint::{SignatureFault, verify_checkpoint};

/// What is wrong at the first bad seq of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Breach {
    /// The row is where it belongs but its content (or its `prev_hash`) no longer matches its
    /// stored hash.
    Modified,
    /// The row at this seq is gone: a gap in the sequence, or rows after it were renumbered so
    /// that the next one links to a row that is no longer stored.
    Deleted,
    /// The row at this seq does not belong to the chain: the genuine successor of the previous
    /// row comes after it, it copies an earlier row, or a later row links across it.
    Inserted,
    /// The row at this seq links to a row stored at a later seq: rows were moved.
    Reordered,
    /// The chain ends before a signed checkpoint: its tail was cut off.
    Truncated { checkpoint_seq: i64, last_seq: i64 },
    /// The checkpoint at this seq signed a different hash than the chain now has there.
    CheckpointMismatch,
    /// The checkpoint at this seq is not validly signed by the key stored with it.
    BadCheckpointSignature(SignatureFault),
    /// The checkpoint at this seq is signed by a key that is not among the pinned node keys.
    UntrustedCheckpointKey { key_id: String },
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Breach::Modified => f.write_str("modified: the row does not match its hash"),
            Breach::Deleted => f.write_str("deleted: the row at this seq is missing"),
            Breach::Inserted => f.write_str("inserted: the row does not belong to the chain"),
            Breach::Reordered => {
                f.write_str("reordered: the row links to a row stored at a later seq")
            }
            Breach::Truncated {
                checkpoint_seq,
                last_seq,
            } => write!(
                f,
                "truncated: a checkpoint covers seq {checkpoint_seq} but the chain ends at seq {last_seq}"
            ),
            Breach::CheckpointMismatch => {
                f.write_str("checkpoint mismatch: the signed hash differs from the chain's")
            }
            Breach::BadCheckpointSignature(fault) => {
                write!(f, "forged checkpoint: {fault}")
            }
            Breach::UntrustedCheckpointKey { key_id } => write!(
                f,
                "untrusted checkpoint key: signed by {key_id}, not a pinned node key"
            ),
        }
    }
}

/// Outcome of verifying one node's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct ChainReport {
    pub node_id: String,
    /// Rows checked before the first bad row (all of them when the rows are intact).
    pub rows: u64,
    /// The last seq verified.
    pub last_seq: i64,
    /// Checkpoints stored for this node.
    pub checkpoints: u64,
    /// Rows stored for this node, verified or not.
    pub stored_rows: u64,
    /// The highest seq stored (0 for none).
    pub stored_last_seq: i64,
    /// The first problem found (lowest seq) and the seq it was found at.
    pub breach: Option<(i64, Breach)>,
}

/// Every node id that has a chain or a checkpoint (a chain deleted whole still has checkpoints).
pub async fn nodes(client: &tokio_postgres::Client) -> Result<Vec<String>, StoreError> {
    let rows = client
        .query(
            "SELECT node_id FROM playbook_audit_log UNION SELECT node_id FROM audit_checkpoints \
             ORDER BY node_id",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Verifies `node_id`'s chain, accepting checkpoints signed by any key stored with them.
pub async fn verify_chain(
    client: &tokio_postgres::Client,
    node_id: &str,
) -> Result<ChainReport, StoreError> {
    verify_chain_with(client, node_id, None).await
}

/// Verifies `node_id`'s chain; when `pinned` is given, a checkpoint must also be signed by one of
/// those key ids. Without pinning, whoever can write the database could re-sign a shortened
/// chain with a key of their own: pin the node's public key to rule that out.
pub async fn verify_chain_with(
    client: &tokio_postgres::Client,
    node_id: &str,
    pinned: Option<&BTreeSet<String>>,
) -> Result<ChainReport, StoreError> {
    // Before the row stream opens: a second query on the same connection would wait behind it.
    let checkpoints = load_checkpoints(client, node_id).await?;
    let stored = client
        .query_one(
            "SELECT count(*), coalesce(max(seq), 0) FROM playbook_audit_log WHERE node_id = $1",
            &[&node_id],
        )
        .await?;
    let stored_rows: i64 = stored.get(0);
    let mut found: Vec<(i64, Breach)> = Vec::new();
    if let Some(breach) = checkpoints
        .iter()
        .find_map(|checkpoint| checkpoint.signature_breach(node_id, pinned))
    {
        found.push(breach);
    }

    let mut report = ChainReport {
        node_id: node_id.to_owned(),
        rows: 0,
        last_seq: 0,
        checkpoints: checkpoints.len() as u64,
        stored_rows: u64::try_from(stored_rows).unwrap_or(0),
        stored_last_seq: stored.get(1),
        breach: None,
    };
    let mut prev_hash = GENESIS_HASH;
    let mut hashes_at_checkpoints: Vec<(i64, [u8; 32])> = Vec::new();
    let mut suspect: Option<Suspect> = None;
    {
        let params: [&(dyn ToSql + Sync); 1] = [&node_id];
        let rows = client
            .query_raw(
                "SELECT seq, prev_hash, hash, event_type, event_data, created_at \
                 FROM playbook_audit_log WHERE node_id = $1 ORDER BY seq",
                params,
            )
            .await?;
        futures::pin_mut!(rows);
        while let Some(row) = rows.try_next().await? {
            let seq: i64 = row.get(0);
            let stored_prev: Vec<u8> = row.get(1);
            let stored_hash: Vec<u8> = row.get(2);
            let event_type: String = row.get(3);
            let event_data: serde_json::Value = row.get(4);
            let created_at: OffsetDateTime = row.get(5);
            let expected = report.last_seq + 1;
            if seq != expected {
                found.push((expected, Breach::Deleted));
                break;
            }
            let canonical = canonical_bytes(node_id, seq, &event_type, &event_data, created_at);
            let hash = chain_hash(&prev_hash, &canonical);
            if stored_prev != prev_hash || stored_hash != hash {
                suspect = Some(Suspect {
                    seq,
                    stored_prev,
                    stored_hash,
                    recomputed: hash,
                });
                break;
            }
            if checkpoints.iter().any(|cp| cp.seq == seq) {
                hashes_at_checkpoints.push((seq, hash));
            }
            prev_hash = hash;
            report.last_seq = seq;
            report.rows += 1;
        }
    }
    let rows_intact = suspect.is_none() && !found.iter().any(|(_, b)| is_row_breach(b));
    if let Some(suspect) = suspect {
        found.push(diagnose(client, node_id, &suspect, &prev_hash).await?);
    }

    for checkpoint in &checkpoints {
        if checkpoint.seq <= report.last_seq {
            let matches = hashes_at_checkpoints
                .iter()
                .any(|(seq, hash)| *seq == checkpoint.seq && hash.as_slice() == checkpoint.hash);
            if !matches {
                found.push((checkpoint.seq, Breach::CheckpointMismatch));
            }
        } else if rows_intact {
            // The rows end cleanly before this signed head: the tail was cut off.
            found.push((
                report.last_seq + 1,
                Breach::Truncated {
                    checkpoint_seq: checkpoint.seq,
                    last_seq: report.last_seq,
                },
            ));
        }
    }
    // The lowest seq is the first bad one; at the same seq a row breach explains a checkpoint one.
    report.breach = found
        .into_iter()
        .min_by_key(|(seq, breach)| (*seq, !is_row_breach(breach)));
    Ok(report)
}

/// A row that does not fit where it is stored.
struct Suspect {
    seq: i64,
    stored_prev: Vec<u8>,
    stored_hash: Vec<u8>,
    /// SHA-256(true previous hash ‖ canonical bytes of the row as stored now).
    recomputed: [u8; 32],
}

/// Works out what happened at the first row that does not fit. Every row before it is verified,
/// so their stored hashes are the true ones, and `prev` is the hash of the row before `suspect`.
async fn diagnose(
    client: &tokio_postgres::Client,
    node_id: &str,
    suspect: &Suspect,
    prev: &[u8; 32],
) -> Result<(i64, Breach), StoreError> {
    let r = suspect.seq;
    let links_to_prev = suspect.stored_prev == prev;
    if !links_to_prev && suspect.stored_hash == suspect.recomputed {
        // The content still hashes right from the true predecessor: only prev_hash was edited.
        return Ok((r, Breach::Modified));
    }
    if !links_to_prev
        && seqs_with_hash(client, node_id, &suspect.stored_prev, r)
            .await?
            .iter()
            .any(|&j| j > r)
    {
        return Ok((r, Breach::Reordered));
    }
    let next_prev: Option<Vec<u8>> = client
        .query_opt(
            "SELECT prev_hash FROM playbook_audit_log WHERE node_id = $1 AND seq = $2",
            &[&node_id, &(r + 1)],
        )
        .await?
        .map(|row| row.get(0));
    if next_prev.as_deref() == Some(prev.as_slice()) {
        // The genuine successor of r-1 comes right after r.
        return Ok((r, Breach::Inserted));
    }
    if links_to_prev {
        return Ok((r, Breach::Modified));
    }
    if seqs_with_hash(client, node_id, &suspect.stored_hash, r)
        .await?
        .iter()
        .any(|&j| j < r)
    {
        // A copy of an earlier row.
        return Ok((r, Breach::Inserted));
    }
    if let Some(j) = seqs_with_hash(client, node_id, &suspect.stored_prev, r)
        .await?
        .into_iter()
        .filter(|&j| j < r - 1)
        .min()
    {
        // Rows j+1 … r-1 form a consistent forged segment; r is the genuine successor of j.
        return Ok((j + 1, Breach::Inserted));
    }
    Ok((r, Breach::Deleted))
}

/// Seqs (other than `except`) whose stored hash is `hash`. No index on hash: this runs once,
/// after a breach is found, never on a clean chain.
async fn seqs_with_hash(
    client: &tokio_postgres::Client,
    node_id: &str,
    hash: &[u8],
    except: i64,
) -> Result<Vec<i64>, StoreError> {
    let rows = client
        .query(
            "SELECT seq FROM playbook_audit_log WHERE node_id = $1 AND hash = $2 AND seq <> $3",
            &[&node_id, &hash, &except],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

fn is_row_breach(breach: &Breach) -> bool {
    match breach {
        Breach::Modified
        | Breach::Deleted
        | Breach::Inserted
        | Breach::Reordered
        | Breach::Truncated { .. } => true,
        Breach::CheckpointMismatch
        | Breach::BadCheckpointSignature(_)
        | Breach::UntrustedCheckpointKey { .. } => false,
    }
}

struct StoredCheckpoint {
    seq: i64,
    hash: Vec<u8>,
    key_id: String,
    public_key: Option<Vec<u8>>,
    signature: Vec<u8>,
}

impl StoredCheckpoint {
    fn signature_breach(
        &self,
        node_id: &str,
        pinned: Option<&BTreeSet<String>>,
    ) -> Option<(i64, Breach)> {
        if let Err(fault) = verify_checkpoint(
            node_id,
            self.seq,
            &self.hash,
            &self.key_id,
            self.public_key.as_deref(),
            &self.signature,
        ) {
            return Some((self.seq, Breach::BadCheckpointSignature(fault)));
        }
        if let Some(pinned) = pinned
            && !pinned.contains(&self.key_id)
        {
            return Some((
                self.seq,
                Breach::UntrustedCheckpointKey {
                    key_id: self.key_id.clone(),
                },
            ));
        }
        None
    }
}

async fn load_checkpoints(
    client: &tokio_postgres::Client,
    node_id: &str,
) -> Result<Vec<StoredCheckpoint>, StoreError> {
    let rows = client
        .query(
            "SELECT seq, hash, key_id, public_key, signature FROM audit_checkpoints \
             WHERE node_id = $1 ORDER BY seq",
            &[&node_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| StoredCheckpoint {
            seq: row.get(0),
            hash: row.get(1),
            key_id: row.get(2),
            public_key: row.get(3),
            signature: row.get(4),
        })
        .collect())
}
