//! What the modules of a run's rows share, written once:
//! - a node acts only on its own runs ([`require_own`], [`require_open_run`]);
//! - a guarded change that matched no row says why ([`explain_refusal`]);
//! - a step index is stored as an `integer` ([`index_to_db`], [`index_from_db`]);
//! - each change is an effect run as this node ([`as_node`]), most of them appended at once
//!   ([`append_as_node`]);
//! - a JSON value (parameters, outputs, subjects) is hashed one way ([`params_hash`]);
//! - what a step's start writes ([`StepStart`]), by a statement of [`super::steps`] or, for a
//!   run's first step, by the run's admission ([`super::executions::AdmissionAhead`]).
//!
//! These only read `playbook_executions`; [`super::executions`] writes it.

use futures::future::BoxFuture;
use uuid::Uuid;

use crate::store::StoreError;
use crate::store::audit::{AppendError, AuditEvent, AuditHandle, Effect, Params, Scope, Tx};
use crate::store::model::{RunState, StepState};

/// What is written when a step (or an attempt of it) starts.
#[derive(Debug, Clone)]
pub struct StepStart {
    pub execution_id: Uuid,
    pub index: usize,
    pub step_id: String,
    pub action: String,
    pub attempt: i32,
    pub idempotency_key: [u8; 32],
    /// SHA-256 of the rendered parameters (what ran, without storing secrets).
    pub params_sha256: [u8; 32],
}

impl StepStart {
    /// The step's row as its start writes it, `running`: step id, action, state, attempt,
    /// idempotency key, parameters' SHA-256, in that order (the admission's statement with its
    /// first step and the start's own statement take them so).
    pub(crate) fn running_row(&self) -> Params {
        vec![
            Box::new(self.step_id.clone()),
            Box::new(self.action.clone()),
            Box::new(StepState::Running.as_str()),
            Box::new(self.attempt),
            Box::new(self.idempotency_key.to_vec()),
            Box::new(self.params_sha256.to_vec()),
        ]
    }
}

/// Refuses unless run `id` is this node's and has not ended; its state when it has not.
pub(crate) async fn require_open_run(
    tx: &Tx<'_>,
    id: Uuid,
    node_id: &str,
) -> Result<RunState, StoreError> {
    let state = RunState::decode(&own_run_state(tx, id, node_id).await?)?;
    if state.is_terminal() {
        return Err(StoreError::Transition {
            what: "execution",
            id: id.to_string(),
            from: state.as_str().to_owned(),
            to: "a step change",
        });
    }
    Ok(state)
}

/// Why a guarded change of run `id` (to `to`) matched no row: no such run, another node's, or
/// a state the transition table does not allow it from.
pub(crate) async fn explain_refusal(
    tx: &Tx<'_>,
    id: Uuid,
    node_id: &str,
    to: &'static str,
) -> StoreError {
    match own_run_state(tx, id, node_id).await {
        Ok(from) => StoreError::Transition {
            what: "execution",
            id: id.to_string(),
            from,
            to,
        },
        Err(error) => error,
    }
}

/// The stored state of run `id`, as text, once it is known to be this node's.
async fn own_run_state(tx: &Tx<'_>, id: Uuid, node_id: &str) -> Result<String, StoreError> {
    let row = tx
        .query_opt(
            "SELECT node_id, state FROM playbook_executions WHERE execution_id = $1",
            &[&id],
        )
        .await?
        .ok_or_else(|| not_found(id))?;
    require_own(id, row.get(0), node_id)?;
    Ok(row.get(1))
}

/// Refuses unless run `id`, whose row names `owner`, is this node's (`node_id`): a node acts
/// only on its own runs.
pub(crate) fn require_own(id: Uuid, owner: String, node_id: &str) -> Result<(), StoreError> {
    if owner == node_id {
        Ok(())
    } else {
        Err(StoreError::OtherNode {
            execution_id: id,
            owner,
            node_id: node_id.to_owned(),
        })
    }
}

/// No run `id`.
pub(crate) fn not_found(id: Uuid) -> StoreError {
    StoreError::NotFound {
        what: "execution",
        detail: id.to_string(),
    }
}

/// A step index as stored (`integer`).
pub(crate) fn index_to_db(index: usize) -> i32 {
    i32::try_from(index).unwrap_or(i32::MAX)
}

/// A stored step index; negative is corrupt.
pub(crate) fn index_from_db(index: i32) -> Result<usize, StoreError> {
    usize::try_from(index).map_err(|_| StoreError::Corrupt {
        what: "step index",
        detail: format!("negative index {index}"),
    })
}

/// An effect ([`Effect`]) run as this node (`audit`'s): `body` gets the transaction, this node's
/// id and a fresh clone of `captured` each time the writer runs it (it may run an effect more
/// than once).
pub(crate) fn as_node<C, T, F>(audit: &AuditHandle, captured: C, body: F) -> Effect<T>
where
    C: Clone + Send + Sync + 'static,
    F: for<'t> Fn(&'t Tx<'t>, String, C) -> BoxFuture<'t, Result<(AuditEvent, T), StoreError>>
        + Send
        + Sync
        + 'static,
{
    let node_id = audit.node_id().to_owned();
    Box::new(move |tx| body(tx, node_id.clone(), captured.clone()))
}

/// [`as_node`]'s effect appended in `scope` ([`AuditHandle::append_in`]): what `body` returned,
/// once it committed.
pub(crate) async fn append_as_node<C, T, F>(
    audit: &AuditHandle,
    scope: Scope,
    captured: C,
    body: F,
) -> Result<T, AppendError>
where
    C: Clone + Send + Sync + 'static,
    T: Send + 'static,
    F: for<'t> Fn(&'t Tx<'t>, String, C) -> BoxFuture<'t, Result<(AuditEvent, T), StoreError>>
        + Send
        + Sync
        + 'static,
{
    let (_, result) = audit
        .append_in(scope, as_node(audit, captured, body))
        .await?;
    Ok(result)
}

/// SHA-256 of the RFC 8785 bytes of a JSON value (rendered parameters, outputs, subjects): proves
/// what was used without storing it.
pub fn params_hash(params: &serde_json::Value) -> [u8; 32] {
    use sha2::Digest;
    // JCS cannot fail on a Value (no NaN or infinity can be in one).
    let canonical = serde_json_canonicalizer::to_vec(params).unwrap_or_default();
    sha2::Sha256::digest(&canonical).into()
}
