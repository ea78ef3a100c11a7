//! Playbook versions (`playbook_versions`, `playbook_version_signatures`): every version ever
//! accepted, with its exact verified bytes and the signature bytes that verified them, so a run
//! resumes from what was verified and can be verified again (anti-rollback holds across
//! restarts, and a resumed run is checked against the trust store of the day).

use crate::store::audit::Tx;
use tokio_postgres::GenericClient;

use crate::store::StoreError;

/// A verified version to record.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub playbook_id: String,
    pub version: u32,
    pub sha256: [u8; 32],
    /// Hex key ids of the distinct trusted signers.
    pub signer_key_ids: Vec<String>,
    /// `(key id, signature bytes)` of every signature that verified.
    pub signatures: Vec<(String, Vec<u8>)>,
    pub content: Vec<u8>,
}

/// Why a version may not be recorded (anti-rollback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionConflict {
    /// This version was recorded with other bytes (hex sha256 of those).
    Equivocation { recorded: String },
    /// A higher version of the playbook is recorded.
    Downgrade { highest: i64 },
}

/// Runs the anti-rollback checks and records the version and its signatures (a version seen
/// before gets any signature it did not have yet: after a key rotation, or bytes recorded
/// before signatures were kept). `Ok(Ok(true))` when the version is new.
pub async fn check_and_record(
    tx: &Tx<'_>,
    new: &NewVersion,
) -> Result<Result<bool, VersionConflict>, StoreError> {
    let version = i64::from(new.version);
    let recorded = tx
        .query_opt(
            "SELECT sha256 FROM playbook_versions WHERE playbook_id = $1 AND version = $2",
            &[&new.playbook_id, &version],
        )
        .await?;
    if let Some(row) = &recorded {
        let stored: Vec<u8> = row.get(0);
        if stored.as_slice() != new.sha256 {
            return Ok(Err(VersionConflict::Equivocation {
                recorded: hex::encode(stored),
            }));
        }
    }
    let highest: Option<i64> = tx
        .query_one(
            "SELECT max(version) FROM playbook_versions WHERE playbook_id = $1",
            &[&new.playbook_id],
        )
        .await?
        .get(0);
    if let Some(highest) = highest.filter(|highest| *highest > version) {
        return Ok(Err(VersionConflict::Downgrade { highest }));
    }
    let mut first_seen = false;
    if recorded.is_none() {
        // ON CONFLICT: another node may record the same version between our SELECT and INSERT.
        let inserted = tx
            .execute(
                "INSERT INTO playbook_versions \
                 (playbook_id, version, sha256, signer_key_ids, content, first_seen) \
                 VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT (playbook_id, version) DO NOTHING",
                &[
                    &new.playbook_id,
                    &version,
                    &new.sha256.as_slice(),
                    &new.signer_key_ids,
                    &new.content,
                ],
            )
            .await?;
        if inserted == 1 {
            first_seen = true;
        } else {
            let stored: Vec<u8> = tx
                .query_one(
                    "SELECT sha256 FROM playbook_versions WHERE playbook_id = $1 AND version = $2",
                    &[&new.playbook_id, &version],
                )
                .await?
                .get(0);
            if stored.as_slice() != new.sha256 {
                return Ok(Err(VersionConflict::Equivocation {
                    recorded: hex::encode(stored),
                }));
            }
        }
    }
    for (key_id, signature) in &new.signatures {
        tx.execute(
            "INSERT INTO playbook_version_signatures (playbook_id, version, key_id, signature, recorded_at) \
             VALUES ($1, $2, $3, $4, now()) ON CONFLICT (playbook_id, version, key_id) DO NOTHING",
            &[&new.playbook_id, &version, key_id, signature],
        )
        .await?;
    }
    Ok(Ok(first_seen))
}

/// A recorded version as stored: to be checked (hash, signatures) before anything uses it.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub sha256: Vec<u8>,
    pub signer_key_ids: Vec<String>,
    pub content: Vec<u8>,
    /// `(key id, signature bytes)`; empty for a version recorded before signatures were kept.
    pub signatures: Vec<(String, Vec<u8>)>,
}

/// Reads version `version` of `playbook_id`, or `None` when it was never recorded.
pub async fn load<C: GenericClient>(
    client: &C,
    playbook_id: &str,
    version: u32,
) -> Result<Option<StoredVersion>, StoreError> {
    let version = i64::from(version);
    let Some(row) = client
        .query_opt(
            "SELECT sha256, signer_key_ids, content FROM playbook_versions \
             WHERE playbook_id = $1 AND version = $2",
            &[&playbook_id, &version],
        )
        .await?
    else {
        return Ok(None);
    };
    let signatures = client
        .query(
            "SELECT key_id, signature FROM playbook_version_signatures \
             WHERE playbook_id = $1 AND version = $2 ORDER BY key_id",
            &[&playbook_id, &version],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    Ok(Some(StoredVersion {
        sha256: row.get(0),
        signer_key_ids: row.get(1),
        content: row.get(2),
        signatures,
    }))
}
