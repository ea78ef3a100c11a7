//! Reads of `playbook_nonces` outside the accepting transaction.
//!
//! The nonce row itself is written only by the transaction that accepts a decision (nonce,
//! execution and audit event together); this module only answers "was this nonce used, and
//! by which execution?", so that intake can tell a policy engine that resends a decision after
//! a lost reply which execution its first attempt started.

use uuid::Uuid;

use super::{Store, StoreError};

/// The execution a nonce was first used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstUse {
    pub execution_id: Uuid,
    /// The `decision_id` of the decision that used the nonce first.
    pub decision_id: String,
}

/// The first use of `nonce` (in its canonical form, as stored), if any, on any node.
pub async fn first_use(store: &Store, nonce: &str) -> Result<Option<FirstUse>, StoreError> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            "SELECT n.execution_id, e.policy_decision_id FROM playbook_nonces n \
             JOIN playbook_executions e ON e.execution_id = n.execution_id \
             WHERE n.nonce = $1",
            &[&nonce],
        )
        .await?;
    Ok(row.map(|row| FirstUse {
        execution_id: row.get(0),
        decision_id: row.get(1),
    }))
}
