//! Used nonces (`playbook_nonces`): fleet-wide replay protection.
//!
//! The caller's nonce is inserted under a UNIQUE constraint in the same transaction as the
//! execution row it admits ([`super::executions::admit`]), so of two concurrent decisions with
//! one nonce exactly one commits, on any node, across restarts.

use tokio_postgres::Transaction;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::store::StoreError;

/// Records `nonce` as used by `execution_id`; [`StoreError::Replay`] when it was used before.
pub async fn insert(
    tx: &Transaction<'_>,
    nonce: &str,
    execution_id: Uuid,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO playbook_nonces (nonce, used_at, execution_id) VALUES ($1, now(), $2)",
        &[&nonce, &execution_id],
    )
    .await
    .map_err(replay_or_query)?;
    Ok(())
}

/// A unique violation on a nonce is a replay; anything else is a failed query.
pub(crate) fn replay_or_query(error: tokio_postgres::Error) -> StoreError {
    if error.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        StoreError::Replay
    } else {
        StoreError::Query(error)
    }
}
