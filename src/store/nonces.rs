//! Used nonces (`playbook_nonces`): fleet-wide replay protection.
//!
//! The caller's nonce is inserted under a UNIQUE constraint in the same transaction as the
//! execution row it admits ([`super::executions::admit`]), so of two concurrent decisions with
//! one nonce exactly one commits, on any node, across restarts. Outside that transaction this
//! module only answers "was this nonce used, and by which execution?", so that intake can tell a
//! policy engine that resends a decision after a lost reply which execution its first attempt
//! started.

use crate::store::audit::Tx;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::{Store, StoreError};

/// A nonce's first use: the execution and the decision that used it.
const FIRST_USE: &str = "SELECT n.execution_id, e.policy_decision_id FROM playbook_nonces n \
     JOIN playbook_executions e ON e.execution_id = n.execution_id \
     WHERE n.nonce = $1";

/// The execution a nonce was first used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstUse {
    pub execution_id: Uuid,
    /// The `decision_id` of the decision that used the nonce first.
    pub decision_id: String,
}

impl FirstUse {
    /// A row of [`FIRST_USE`].
    fn from_row(row: &tokio_postgres::Row) -> FirstUse {
        FirstUse {
            execution_id: row.get(0),
            decision_id: row.get(1),
        }
    }
}

/// The first use of `nonce` (in its canonical form, as stored), if any, on any node.
pub async fn first_use(store: &Store, nonce: &str) -> Result<Option<FirstUse>, StoreError> {
    let client = store.client().await?;
    // Prepared once per pooled connection, not on each call.
    let statement = client.prepare_cached(FIRST_USE).await?;
    let row = client.query_opt(&statement, &[&nonce]).await?;
    Ok(row.as_ref().map(FirstUse::from_row))
}

/// The first use of `nonce` as the admitting transaction sees it: read by the effect that
/// found the nonce taken, so that a replay learns its first execution without another round
/// trip on the pool. A nonce whose use committed meanwhile is seen (each statement reads what
/// committed before it started).
pub(crate) async fn first_use_in(tx: &Tx<'_>, nonce: &str) -> Result<Option<FirstUse>, StoreError> {
    let row = tx.query_opt(FIRST_USE, &[&nonce]).await?;
    Ok(row.as_ref().map(FirstUse::from_row))
}

/// A unique violation on a nonce is a replay; anything else is a failed query.
pub(crate) fn replay_or_query(error: tokio_postgres::Error) -> StoreError {
    if error.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        StoreError::Replay(None)
    } else {
        StoreError::Query(error)
    }
}

/// Deletes at most `batch` nonces that can never be accepted again: used more than twice the
/// widest freshness window of any node (or `window_seconds`, if wider) ago, so their decisions
/// are refused as stale before the nonce table is read. Returns how many were deleted.
///
/// Runs through `playbook_prune_nonces` (migration V8), the only delete on this table the
/// daemon's role may make.
pub async fn prune(store: &Store, window_seconds: u64, batch: u32) -> Result<u64, StoreError> {
    let (window, batch) = prune_params(window_seconds, batch)?;
    let client = store.client().await?;
    let row = client
        .query_one("SELECT playbook_prune_nonces($1, $2)", &[&window, &batch])
        .await?;
    let pruned: i32 = row.get(0);
    Ok(u64::try_from(pruned).unwrap_or(0))
}

/// The arguments of `playbook_prune_nonces` as the database's integers.
pub(crate) fn prune_params(window_seconds: u64, batch: u32) -> Result<(i32, i32), StoreError> {
    let window = i32::try_from(window_seconds).map_err(|_| StoreError::Corrupt {
        what: "freshness window",
        detail: format!("{window_seconds} s does not fit the database's integer"),
    })?;
    let batch = i32::try_from(batch).map_err(|_| StoreError::Corrupt {
        what: "nonce prune batch",
        detail: format!("{batch} does not fit the database's integer"),
    })?;
    Ok((window, batch))
}
