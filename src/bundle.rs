//! Evidence bundles: one run's audit rows, each with an RFC 6962 inclusion proof against one
//! signed checkpoint note, checkable offline with nothing but the node's public key.
//!
//! ```json
//! {
//!   "format": "playbookd-evidence-bundle/1",
//!   "node_id": "host-1",
//!   "execution_id": "…uuid…",
//!   "checkpoint": "playbookd/host-1\n1234\n…\n\n— playbookd/host-1 …\n",
//!   "rows": [
//!     {"seq": 17, "prev_hash": "<hex>", "hash": "<hex>", "event_type": "…", "event_data": {…},
//!      "created_at": "2026-11-24T14:54:15.123456Z", "inclusion_proof": ["<base64>", …]}
//!   ],
//!   "consistency": [
//!     {"checkpoint": "<an earlier signed note of the same node>", "proof": ["<base64>", …]}
//!   ]
//! }
//! ```
//!
//! `consistency` (optional, since stored notes, migration V9) holds RFC 6962 consistency proofs
//! from earlier checkpoints of the node to `checkpoint`: at least from the first checkpoint that
//! covered the run's last row. Whoever saw (or a witness cosigned) that earlier note can check
//! that the bundle's tree extends it: same rows, nothing rewritten, nothing cut off.
//!
//! [`verify`] checks, in this order, and stops at the first failure with its reason: the note is
//! signed by the trusted key under the node's origin; every row belongs to the named run, comes in
//! seq order and lies inside the signed tree; each row's chain hash, recomputed from its content
//! and `prev_hash`, equals the hash it carries; that hash is the leaf at `seq - 1` under the signed
//! root (the inclusion proof); a row at the tree's last seq equals the signed chain head; and
//! every earlier note is signed by the same key and its tree is a prefix of the bundle's
//! (a smaller tree is "truncated", a proof that fails is a "forked" tree).
//! It cannot show that no row of the run was left out: it proves that every row shown is in the
//! node's signed history, unchanged, at its seq.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::merkle::{self, Hash, ProofError, Tree};
use crate::note::{self, NoteError};
use crate::store::audit::{canonical_bytes, chain_hash, format_timestamp};

pub const FORMAT: &str = "playbookd-evidence-bundle/1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub format: String,
    pub node_id: String,
    pub execution_id: uuid::Uuid,
    /// The C2SP signed checkpoint note every proof is against.
    pub checkpoint: String,
    pub rows: Vec<BundleRow>,
    /// Consistency proofs from earlier checkpoints to `checkpoint`, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consistency: Vec<ConsistencyStep>,
}

/// An earlier checkpoint of the same node and the proof that the bundle's tree extends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyStep {
    /// The earlier C2SP signed note, as stored.
    pub checkpoint: String,
    /// RFC 6962 `PROOF(old size, tree)`, base64 hashes.
    pub proof: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleRow {
    pub seq: u64,
    /// Hex, as in the audit API.
    pub prev_hash: String,
    pub hash: String,
    pub event_type: String,
    pub event_data: Value,
    /// UTC, six fractional digits: the form the chain hash covers.
    pub created_at: String,
    /// RFC 6962 audit path of leaf `seq - 1`, leaf to root, base64 as in CT's get-proof-by-hash.
    pub inclusion_proof: Vec<String>,
}

/// One audit row as stored (see [`crate::store::audit`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub seq: u64,
    pub prev_hash: Hash,
    pub hash: Hash,
    pub event_type: String,
    pub event_data: Value,
    pub created_at: OffsetDateTime,
}

/// What a verified bundle shows.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Verified {
    pub node_id: String,
    pub execution_id: uuid::Uuid,
    pub rows: usize,
    pub tree_size: u64,
    pub root: Hash,
    /// Sizes of the earlier checkpoints the tree was proved to extend.
    pub extends: Vec<u64>,
    /// The bundle's checkpoint note, with any witness cosignature lines.
    pub checkpoint: String,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BundleError {
    #[error("not an evidence bundle: {0}")]
    Decode(String),
    #[error("unknown bundle format `{0}` (expected `{FORMAT}`)")]
    Format(String),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] NoteError),
    #[error("the bundle holds no rows")]
    Empty,
    #[error("row seq {seq}: rows must be in increasing seq order, from 1")]
    OutOfOrder { seq: u64 },
    #[error("row seq {seq} lies outside the signed tree of {size} rows")]
    NotCovered { seq: u64, size: u64 },
    #[error("row seq {seq} belongs to another run (its execution_id is not the bundle's)")]
    ForeignRow { seq: u64 },
    #[error("row seq {seq}: {field} is not {expected}")]
    BadField {
        seq: u64,
        field: &'static str,
        expected: &'static str,
    },
    #[error("row seq {seq} was tampered with: its content does not hash to the hash it carries")]
    TamperedRow { seq: u64 },
    #[error("row seq {seq}: inclusion proof fails: {source}")]
    Proof {
        seq: u64,
        #[source]
        source: ProofError,
    },
    #[error("row seq {seq} is the signed tree's last row but differs from the signed chain head")]
    ChainHeadMismatch { seq: u64 },
    #[error("earlier checkpoint #{index}: {source}")]
    EarlierCheckpoint {
        index: usize,
        #[source]
        source: NoteError,
    },
    #[error(
        "truncated tree: an earlier checkpoint signed {old_size} rows, the bundle's checkpoint only {size}"
    )]
    Truncated { old_size: u64, size: u64 },
    #[error(
        "forked tree: the checkpoint of {size} rows does not extend the earlier one of {old_size} rows ({source})"
    )]
    Forked {
        old_size: u64,
        size: u64,
        #[source]
        source: ProofError,
    },
    #[error("checkpoint cosignature: {0}")]
    Cosignature(crate::cosignature::CosignatureError),
}

/// The consistency proof from `tree`'s prefix of `old_note`'s size to the whole `tree`, with
/// the earlier note it starts from.
pub fn consistency_step(
    tree: &Tree,
    old_size: u64,
    old_note: String,
) -> Result<ConsistencyStep, ProofError> {
    let proof = tree.consistency_proof(old_size)?;
    Ok(ConsistencyStep {
        checkpoint: old_note,
        proof: proof.iter().map(|h| BASE64.encode(h)).collect(),
    })
}

/// Builds the bundle of `rows` (one run, one node, seq order) against `tree`, whose head `note`
/// signs. The caller has verified the chain the tree was built from.
pub fn build(
    node_id: &str,
    execution_id: uuid::Uuid,
    rows: &[AuditRow],
    tree: &Tree,
    checkpoint_note: String,
) -> Result<Bundle, ProofError> {
    let rows = rows
        .iter()
        .map(|row| {
            let proof = tree.inclusion_proof(row.seq.wrapping_sub(1))?;
            Ok(BundleRow {
                seq: row.seq,
                prev_hash: hex::encode(row.prev_hash),
                hash: hex::encode(row.hash),
                event_type: row.event_type.clone(),
                event_data: row.event_data.clone(),
                created_at: format_timestamp(row.created_at),
                inclusion_proof: proof.iter().map(|h| BASE64.encode(h)).collect(),
            })
        })
        .collect::<Result<Vec<_>, ProofError>>()?;
    Ok(Bundle {
        format: FORMAT.to_owned(),
        node_id: node_id.to_owned(),
        execution_id,
        checkpoint: checkpoint_note,
        rows,
        consistency: Vec::new(),
    })
}

/// Verifies a serialized bundle against the trusted node key. No database, no network.
pub fn verify(json: &[u8], trusted: &VerifyingKey) -> Result<Verified, BundleError> {
    let bundle: Bundle =
        serde_json::from_slice(json).map_err(|e| BundleError::Decode(e.to_string()))?;
    verify_bundle(&bundle, trusted)
}

pub fn verify_bundle(bundle: &Bundle, trusted: &VerifyingKey) -> Result<Verified, BundleError> {
    if bundle.format != FORMAT {
        return Err(BundleError::Format(bundle.format.clone()));
    }
    if !crate::config::is_valid_node_id(&bundle.node_id) {
        return Err(BundleError::Decode(format!(
            "node_id `{}` is not a valid node id",
            bundle.node_id
        )));
    }
    let head = note::verify(&bundle.checkpoint, &note::origin(&bundle.node_id), trusted)?;
    if bundle.rows.is_empty() {
        return Err(BundleError::Empty);
    }
    let execution_id = Value::String(bundle.execution_id.to_string());
    let mut last_seq = 0;
    for row in &bundle.rows {
        let seq = row.seq;
        if seq <= last_seq {
            return Err(BundleError::OutOfOrder { seq });
        }
        last_seq = seq;
        if seq > head.size {
            return Err(BundleError::NotCovered {
                seq,
                size: head.size,
            });
        }
        if row.event_data.get("execution_id") != Some(&execution_id) {
            return Err(BundleError::ForeignRow { seq });
        }
        let bad = |field, expected| BundleError::BadField {
            seq,
            field,
            expected,
        };
        let prev_hash = decode_hex(&row.prev_hash).ok_or(bad("prev_hash", "32 bytes of hex"))?;
        let hash = decode_hex(&row.hash).ok_or(bad("hash", "32 bytes of hex"))?;
        let created_at = OffsetDateTime::parse(&row.created_at, &Rfc3339)
            .ok()
            .filter(|at| format_timestamp(*at) == row.created_at)
            .ok_or(bad("created_at", "UTC RFC 3339 with six fractional digits"))?;
        let proof = row
            .inclusion_proof
            .iter()
            .map(|h| BASE64.decode(h).ok().and_then(|b| Hash::try_from(b).ok()))
            .collect::<Option<Vec<Hash>>>()
            .ok_or(bad("inclusion_proof", "a list of 32-byte base64 hashes"))?;
        let seq_i64 = i64::try_from(seq).map_err(|_| BundleError::OutOfOrder { seq })?;
        let canonical = canonical_bytes(
            &bundle.node_id,
            seq_i64,
            &row.event_type,
            &row.event_data,
            created_at,
        );
        if chain_hash(&prev_hash, &canonical) != hash {
            return Err(BundleError::TamperedRow { seq });
        }
        merkle::verify_inclusion(
            &merkle::leaf_hash(&hash),
            seq - 1,
            head.size,
            &proof,
            &head.root,
        )
        .map_err(|source| BundleError::Proof { seq, source })?;
        if seq == head.size && hash != head.chain_head {
            return Err(BundleError::ChainHeadMismatch { seq });
        }
    }
    let mut extends = Vec::with_capacity(bundle.consistency.len());
    for (index, step) in bundle.consistency.iter().enumerate() {
        let old = note::verify(&step.checkpoint, &note::origin(&bundle.node_id), trusted)
            .map_err(|source| BundleError::EarlierCheckpoint { index, source })?;
        if old.size > head.size {
            return Err(BundleError::Truncated {
                old_size: old.size,
                size: head.size,
            });
        }
        let proof = step
            .proof
            .iter()
            .map(|h| BASE64.decode(h).ok().and_then(|b| Hash::try_from(b).ok()))
            .collect::<Option<Vec<Hash>>>()
            .ok_or_else(|| {
                BundleError::Decode(format!(
                    "consistency step #{index}: proof is not a list of 32-byte base64 hashes"
                ))
            })?;
        merkle::verify_consistency(old.size, head.size, &old.root, &head.root, &proof).map_err(
            |source| BundleError::Forked {
                old_size: old.size,
                size: head.size,
                source,
            },
        )?;
        extends.push(old.size);
    }
    Ok(Verified {
        node_id: bundle.node_id.clone(),
        execution_id: bundle.execution_id,
        rows: bundle.rows.len(),
        tree_size: head.size,
        root: head.root,
        extends,
        checkpoint: bundle.checkpoint.clone(),
    })
}

fn decode_hex(text: &str) -> Option<Hash> {
    hex::decode(text).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::TreeHead;
    use crate::store::chain::GENESIS_HASH;
    use ed25519_dalek::{Signer, SigningKey};
    use std::time::Instant;

    /// A synthetic chain of `runs` runs of `rows_per_run` rows each, hashed exactly as the writer
    /// does; returns the rows and the execution id of run `wanted`.
    fn chain(runs: usize, rows_per_run: usize, wanted: usize) -> (Vec<AuditRow>, uuid::Uuid) {
        let node = "host-1";
        let start = OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
        let mut prev = GENESIS_HASH;
        let mut rows = Vec::with_capacity(runs * rows_per_run);
        let mut wanted_id = uuid::Uuid::nil();
        for run in 0..runs {
            let id = uuid::Uuid::from_u128(0x5eed_0000 + run as u128);
            if run == wanted {
                wanted_id = id;
            }
            for step in 0..rows_per_run {
                let seq = rows.len() as u64 + 1;
                let event_data = serde_json::json!({
                    "actor": "system",
                    "execution_id": id.to_string(),
                    "step": step,
                    "playbook": "contain-host@3",
                    "detail": "process 4242 killed with SIGKILL after 3 attempts; quarantine of /srv/x ok",
                });
                let created_at = start + time::Duration::microseconds(seq as i64 * 1_234);
                let canonical =
                    canonical_bytes(node, seq as i64, "step.finished", &event_data, created_at);
                let hash = chain_hash(&prev, &canonical);
                rows.push(AuditRow {
                    seq,
                    prev_hash: prev,
                    hash,
                    event_type: "step.finished".into(),
                    event_data,
                    created_at,
                });
                prev = hash;
            }
        }
        (rows, wanted_id)
    }

    fn bundle_of(rows: &[AuditRow], execution_id: uuid::Uuid, key: &SigningKey) -> (Bundle, Tree) {
        let (tree, signed) = signed_tree(rows, key);
        let run: Vec<AuditRow> = rows
            .iter()
            .filter(|r| r.event_data["execution_id"] == execution_id.to_string())
            .cloned()
            .collect();
        (
            build("host-1", execution_id, &run, &tree, signed).unwrap(),
            tree,
        )
    }

    /// The signed note of the tree over `rows`.
    fn note_over(rows: &[AuditRow], key: &SigningKey) -> String {
        signed_tree(rows, key).1
    }

    /// The tree over `rows` and its signed note by `key` as node `host-1`.
    fn signed_tree(rows: &[AuditRow], key: &SigningKey) -> (Tree, String) {
        let tree = Tree::new(rows.iter().map(|r| merkle::leaf_hash(&r.hash)).collect());
        let head = TreeHead {
            origin: note::origin("host-1"),
            size: tree.size(),
            root: tree.root(),
            chain_head: rows.last().unwrap().hash,
        };
        let signed = note::signed_note(&head, &key.verifying_key(), |t| key.sign(t));
        (tree, signed)
    }

    #[test]
    fn consistency_with_earlier_checkpoints_verifies_and_a_fork_or_truncation_is_named() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let (rows, id) = chain(40, 5, 20);
        let (mut bundle, tree) = bundle_of(&rows, id, &key);
        bundle.consistency = vec![
            consistency_step(&tree, 105, note_over(&rows[..105], &key)).unwrap(),
            consistency_step(&tree, 128, note_over(&rows[..128], &key)).unwrap(),
        ];
        let ok = verify_bundle(&bundle, &key.verifying_key()).unwrap();
        assert_eq!(ok.extends, vec![105, 128]);
        let check = |bundle: &Bundle| verify_bundle(bundle, &key.verifying_key()).unwrap_err();

        // Forked: the earlier checkpoint signed another row 50 than the bundle's tree holds.
        let mut forked_rows = rows[..105].to_vec();
        forked_rows[49].hash[0] ^= 1;
        let mut forked = bundle.clone();
        forked.consistency[0].checkpoint = note_over(&forked_rows, &key);
        assert!(matches!(
            check(&forked),
            BundleError::Forked {
                old_size: 105,
                size: 200,
                ..
            }
        ));
        // Truncated: the bundle's checkpoint is smaller than one signed before it.
        let short_tree = Tree::new(tree.leaves()[..150].to_vec());
        let mut truncated = bundle.clone();
        truncated.checkpoint = note_over(&rows[..150], &key);
        for row in &mut truncated.rows {
            row.inclusion_proof = short_tree
                .inclusion_proof(row.seq - 1)
                .unwrap()
                .iter()
                .map(|h| BASE64.encode(h))
                .collect();
        }
        truncated.consistency = vec![ConsistencyStep {
            checkpoint: note_over(&rows, &key),
            proof: Vec::new(),
        }];
        assert_eq!(
            check(&truncated),
            BundleError::Truncated {
                old_size: 200,
                size: 150
            }
        );
        // An earlier checkpoint signed by another key.
        let other = SigningKey::from_bytes(&[4; 32]);
        let mut foreign = bundle.clone();
        foreign.consistency[1].checkpoint = note_over(&rows[..128], &other);
        assert!(matches!(
            check(&foreign),
            BundleError::EarlierCheckpoint {
                index: 1,
                source: NoteError::NotSignedByTrustedKey { .. }
            }
        ));
        // A proof hash changed in transit.
        let mut bad_proof = bundle.clone();
        bad_proof.consistency[1].proof[0] = BASE64.encode([9u8; 32]);
        assert!(matches!(
            check(&bad_proof),
            BundleError::Forked { old_size: 128, .. }
        ));
    }

    #[test]
    fn a_bundle_verifies_and_each_kind_of_damage_is_named() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let (rows, id) = chain(40, 5, 39);
        let (bundle, _) = bundle_of(&rows, id, &key);
        let ok = verify_bundle(&bundle, &key.verifying_key()).unwrap();
        assert_eq!((ok.rows, ok.tree_size), (5, 200));

        let check = |bundle: &Bundle| verify_bundle(bundle, &key.verifying_key()).unwrap_err();
        let mut tampered = bundle.clone();
        tampered.rows[1].event_data["detail"] = "nothing happened".into();
        assert_eq!(check(&tampered), BundleError::TamperedRow { seq: 197 });

        let mut bad_proof = bundle.clone();
        bad_proof.rows[0].inclusion_proof[2] = BASE64.encode([9u8; 32]);
        assert!(matches!(
            check(&bad_proof),
            BundleError::Proof {
                seq: 196,
                source: ProofError::RootMismatch
            }
        ));

        let other = SigningKey::from_bytes(&[4; 32]);
        assert!(matches!(
            verify_bundle(&bundle, &other.verifying_key()).unwrap_err(),
            BundleError::Checkpoint(NoteError::NotSignedByTrustedKey { .. })
        ));

        let mut foreign = bundle.clone();
        foreign.execution_id = uuid::Uuid::nil();
        assert_eq!(check(&foreign), BundleError::ForeignRow { seq: 196 });

        let mut reordered = bundle.clone();
        reordered.rows.swap(0, 1);
        assert_eq!(check(&reordered), BundleError::OutOfOrder { seq: 196 });

        // A row rehashed to match its new content is not in the signed tree.
        let mut rehashed = bundle.clone();
        let row = &mut rehashed.rows[1];
        row.event_data["detail"] = "nothing happened".into();
        let canonical = canonical_bytes(
            "host-1",
            197,
            &row.event_type,
            &row.event_data,
            OffsetDateTime::parse(&row.created_at, &Rfc3339).unwrap(),
        );
        row.hash = hex::encode(chain_hash(&decode_hex(&row.prev_hash).unwrap(), &canonical));
        assert!(matches!(
            check(&rehashed),
            BundleError::Proof { seq: 197, .. }
        ));

        // A note whose chain head is not the last row's hash.
        let mut wrong_head = bundle.clone();
        let tree = Tree::new(rows.iter().map(|r| merkle::leaf_hash(&r.hash)).collect());
        let head = TreeHead {
            origin: note::origin("host-1"),
            size: 200,
            root: tree.root(),
            chain_head: [0; 32],
        };
        wrong_head.checkpoint = note::signed_note(&head, &key.verifying_key(), |t| key.sign(t));
        assert_eq!(
            check(&wrong_head),
            BundleError::ChainHeadMismatch { seq: 200 }
        );

        let mut swapped_head = bundle.clone();
        swapped_head.checkpoint = swapped_head.checkpoint.replace("200\n", "201\n");
        assert!(matches!(
            check(&swapped_head),
            BundleError::Checkpoint(NoteError::BadSignature { .. })
        ));
        let mut bad_time = bundle.clone();
        bad_time.rows[0].created_at = bad_time.rows[0].created_at.replace('Z', "+00:00");
        assert!(matches!(
            check(&bad_time),
            BundleError::BadField {
                field: "created_at",
                ..
            }
        ));
        assert!(matches!(
            verify(b"{\"format\":1}", &key.verifying_key()),
            Err(BundleError::Decode(_))
        ));
    }

    /// The issue's target: one run of a 10,000-run chain (60,000 rows) bundles under 64 KiB and
    /// verifies in under 100 ms, even unoptimized, with consistency proofs from the checkpoint
    /// that first covered the run (size 25,932) and from one in between (size 40,000).
    #[test]
    fn one_run_of_a_ten_thousand_run_chain_is_small_and_fast_to_verify() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let (rows, id) = chain(10_000, 6, 4_321);
        let (mut bundle, tree) = bundle_of(&rows, id, &key);
        let first_cover = 4_322 * 6;
        bundle.consistency = [first_cover, 40_000]
            .into_iter()
            .map(|size| {
                consistency_step(&tree, size as u64, note_over(&rows[..size], &key)).unwrap()
            })
            .collect();
        let json = serde_json::to_vec(&bundle).unwrap();
        let started = Instant::now();
        let verified = verify(&json, &key.verifying_key()).unwrap();
        let elapsed = started.elapsed();
        assert_eq!((verified.rows, verified.tree_size), (6, 60_000));
        assert_eq!(verified.extends, vec![first_cover as u64, 40_000]);
        eprintln!(
            "bundle of 6 rows in a 60,000-row chain with 2 consistency proofs: {} bytes, verified in {:?}",
            json.len(),
            elapsed
        );
        assert!(json.len() < 64 * 1024, "{} bytes", json.len());
        assert!(elapsed.as_millis() < 100, "{elapsed:?}");
    }
}
