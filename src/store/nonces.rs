//! Used nonces (`playbook_nonces`): fleet-wide replay protection.
//!
//! The caller's nonce is inserted under a UNIQUE constraint in the same transaction as the
//! execution row it admits ([`super::executions::admit`]), so of two concurrent decisions with
//! one nonce exactly one commits, on any node, across restarts.

use tokio_postgres::Transaction;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::store::StoreError;

/// Records `nonce` as used by `execution_id` unless a SAFE-HALT of `node_id` (or the fleet) is
/// active, read in the same statement: `Ok(false)` when a halt refused it.
/// [`StoreError::Replay`] when the nonce was used before.
pub async fn insert_unless_halted(
    tx: &Transaction<'_>,
    nonce: &str,
    execution_id: Uuid,
    node_id: &str,
) -> Result<bool, StoreError> {
    let inserted = tx
        .execute(
            "INSERT INTO playbook_nonces (nonce, used_at, execution_id) \
             SELECT $1::text, now(), $2::uuid \
             WHERE NOT EXISTS (SELECT 1 FROM playbook_safe_halt_state \
                               WHERE is_active AND (node_id = $3 OR scope = 'fleet'))",
            &[&nonce, &execution_id, &node_id],
        )
        .await
        .map_err(replay_or_query)?;
    Ok(inserted == 1)
}

/// A unique violation on a nonce is a replay; anything else is a failed query.
pub(crate) fn replay_or_query(error: tokio_postgres::Error) -> StoreError {
    if error.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        StoreError::Replay
    } else {
        StoreError::Query(error)
    }
}
