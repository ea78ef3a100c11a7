//! SAFE-HALT rows (`playbook_safe_halt_state`): entered, read and cleared, each with its audit
//! event in one transaction.
//!
//! A halt belongs to a node (`scope = 'node'`, at most one active per node, by a unique index);
//! the schema also holds a fleet-wide halt (`scope = 'fleet'`, at most one active), which every
//! node obeys. [`active_in`] is what the point of no return reads: the transaction that records
//! a step's (or an undo's) start calls it and refuses the start when it finds a halt.
//!
//! [`HaltWatch`] is the in-memory copy. It is set *before* a halt is written, so a halt whose
//! row cannot be written yet still stops this node at once; the transactions that start an
//! action read it too (see `steps::record_start`).

use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::store::audit::{
    Actor, AppendError, AuditEvent, AuditHandle, Scope, Tx, format_timestamp,
};
use crate::store::model::HaltScope;
use crate::store::rows::append_as_node;
use crate::store::{Store, StoreError};
use crate::text;

/// The command an admin runs to clear a node's SAFE-HALT; every halt message names it.
pub const CLEAR_COMMAND: &str = "playbookd ctl halt-resolve --reason …";

/// A SAFE-HALT that stops this node.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveHalt {
    /// The row's id; `None` while the halt is known in memory but not written yet.
    pub halt_id: Option<i64>,
    pub scope: HaltScope,
    /// The node that entered it (for a fleet halt, the node whose admin did).
    pub node_id: String,
    pub execution_id: Option<Uuid>,
    /// Why, made storable; ends with how to clear it.
    pub message: String,
    pub entered_at: OffsetDateTime,
    pub record: HaltRecord,
}

/// Where a halt is kept, which decides how an admin clears it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaltRecord {
    /// A row of `playbook_safe_halt_state` (or one about to be written): `ctl halt-resolve`.
    Database,
    /// The chain anchor: the database lost rows this node committed, so the halt cannot be
    /// written there; only `audit accept-cut`, with the daemon stopped, clears it.
    ChainAnchor,
}

impl ActiveHalt {
    /// The command that clears this halt: the node's, or the fleet's.
    pub fn clear_command(&self) -> &'static str {
        match (self.record, self.scope) {
            (HaltRecord::ChainAnchor, _) => crate::store::anchor::ACCEPT_COMMAND,
            (HaltRecord::Database, HaltScope::Node) => CLEAR_COMMAND,
            (HaltRecord::Database, HaltScope::Fleet) => CLEAR_FLEET_COMMAND,
        }
    }
}

impl std::fmt::Display for ActiveHalt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = format_timestamp(self.entered_at);
        match self.scope {
            HaltScope::Node => write!(f, "node `{}` is in SAFE-HALT since {since}", self.node_id),
            HaltScope::Fleet => write!(f, "the fleet is in SAFE-HALT since {since}"),
        }?;
        match (self.record, self.halt_id) {
            (HaltRecord::ChainAnchor, _) => {
                f.write_str(" (its audit chain was cut; the halt is kept in the chain anchor)")
            }
            (HaltRecord::Database, Some(id)) => write!(f, " (halt {id})"),
            (HaltRecord::Database, None) => f.write_str(" (not yet written to the database)"),
        }
    }
}

/// The in-memory SAFE-HALT of this node: its own halt (set before the row is written, cleared
/// only after the row was cleared) and the fleet's (as last read from the database or announced
/// on `playbookd_halt`). Cloning is shallow.
#[derive(Clone)]
pub struct HaltWatch {
    state: Arc<watch::Sender<Option<ActiveHalt>>>,
    fleet: Arc<watch::Sender<Option<ActiveHalt>>>,
}

impl HaltWatch {
    /// A watch holding `halt` (what was loaded at start), with no fleet halt known yet.
    pub fn new(halt: Option<ActiveHalt>) -> HaltWatch {
        HaltWatch {
            state: Arc::new(watch::channel(halt).0),
            fleet: Arc::new(watch::channel(None).0),
        }
    }

    /// The halt in force, if any: this node's own first (it names what failed here), else the
    /// fleet's.
    pub fn current(&self) -> Option<ActiveHalt> {
        self.own().or_else(|| self.fleet.borrow().clone())
    }

    /// This node's own halt, if any.
    pub fn own(&self) -> Option<ActiveHalt> {
        self.state.borrow().clone()
    }

    /// The fleet halt, as last known.
    pub fn fleet(&self) -> Option<ActiveHalt> {
        self.fleet.borrow().clone()
    }

    /// Whether a halt (own or fleet) is in force.
    pub fn is_active(&self) -> bool {
        self.state.borrow().is_some() || self.fleet.borrow().is_some()
    }

    /// Sets the halt. An active one is kept (the first cause stays visible), except that a
    /// written row replaces a halt known only in memory. Returns whether anything changed.
    pub fn set(&self, halt: ActiveHalt) -> bool {
        self.state.send_if_modified(|current| {
            let replace = match current {
                None => true,
                Some(existing) => existing.halt_id.is_none() && halt.halt_id.is_some(),
            };
            if replace {
                *current = Some(halt);
            }
            replace
        })
    }

    /// Replaces the known fleet halt with what the database says (`None`: cleared). Returns
    /// whether anything changed.
    pub fn set_fleet(&self, halt: Option<ActiveHalt>) -> bool {
        self.fleet.send_if_modified(|current| {
            let changed = current.as_ref().map(|h| h.halt_id) != halt.as_ref().map(|h| h.halt_id);
            if changed {
                *current = halt;
            }
            changed
        })
    }

    /// Clears this node's own halt (after its row was cleared).
    pub fn clear(&self) {
        self.state.send_replace(None);
    }

    /// Resolves once no halt (own or fleet) is in force.
    pub async fn wait_clear(&self) {
        let mut own = self.state.subscribe();
        let mut fleet = self.fleet.subscribe();
        loop {
            if own.borrow_and_update().is_none() && fleet.borrow_and_update().is_none() {
                return;
            }
            // An error means a sender is gone: nothing can change any more, so stop waiting.
            tokio::select! {
                changed = own.changed() => if changed.is_err() { return },
                changed = fleet.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// Why a halt was entered.
#[derive(Debug, Clone)]
pub enum HaltCause {
    /// The undo of step `step_index` (`step_id`) failed for good.
    FailedUndo {
        execution_id: Uuid,
        step_index: usize,
        step_id: String,
        error: String,
    },
    /// A run cannot be continued safely (its pinned playbook no longer verifies, its row is
    /// unreadable, an undo's outcome could not be recorded): it is stopped as `safe_halted`.
    UnusableRun { execution_id: Uuid, reason: String },
}

impl HaltCause {
    /// The run the halt names.
    pub(crate) fn execution_id(&self) -> Uuid {
        match self {
            HaltCause::FailedUndo { execution_id, .. }
            | HaltCause::UnusableRun { execution_id, .. } => *execution_id,
        }
    }

    /// The halt's message: why, then how to clear it; storable and bounded.
    pub fn message(&self) -> String {
        let why = match self {
            HaltCause::FailedUndo {
                execution_id,
                step_id,
                error,
                ..
            } => {
                format!("rollback of step `{step_id}` in execution {execution_id} failed: {error}")
            }
            HaltCause::UnusableRun {
                execution_id,
                reason,
            } => format!("execution {execution_id} stopped: {reason}"),
        };
        let why = text::storable(&why, text::MAX_FIELD_BYTES);
        format!("{why}; an admin clears it with `{CLEAR_COMMAND}`")
    }

    /// The halt as known in memory before (or without) its row.
    pub fn unwritten(&self, node_id: &str) -> ActiveHalt {
        ActiveHalt {
            halt_id: None,
            scope: HaltScope::Node,
            node_id: node_id.to_owned(),
            execution_id: Some(self.execution_id()),
            message: self.message(),
            entered_at: crate::store::chain::now_micros(),
            record: HaltRecord::Database,
        }
    }
}

/// Why a halt could not be cleared.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no SAFE-HALT of node `{node_id}` is active in the database")]
    NotActive { node_id: String },
    #[error("no fleet SAFE-HALT is active in the database")]
    FleetNotActive,
    #[error("the audit log is unavailable; SAFE-HALT stays active")]
    Audit(#[source] AppendError),
}

/// The condition on a `playbook_safe_halt_state` row that it is in force for the node whose id
/// is the SQL parameter `$node` (`"$1"`, `"$2::text"`): active, and that node's own or the
/// fleet's. The one place this rule is written: [`active_in`], [`resolve`], the statements that
/// admit a run and start a step, the heartbeat and the status API embed it (a macro, so that
/// their SQL stays static text).
macro_rules! in_force {
    ($node:literal) => {
        concat!("is_active AND (node_id = ", $node, " OR scope = 'fleet')")
    };
}
pub(crate) use in_force;

/// The halt in force for `node_id`: its own, or the fleet's. Read inside the transaction that
/// is about to start an action.
pub async fn active_in<C: GenericClient>(
    client: &C,
    node_id: &str,
) -> Result<Option<ActiveHalt>, StoreError> {
    let row = client
        .query_opt(
            concat!(
                "SELECT halt_id, scope, node_id, execution_id, error_message, entered_at \
                 FROM playbook_safe_halt_state WHERE ",
                in_force!("$1"),
                " ORDER BY scope = 'fleet' DESC, entered_at LIMIT 1"
            ),
            &[&node_id],
        )
        .await?;
    row.map(|row| {
        Ok(ActiveHalt {
            halt_id: Some(row.get(0)),
            scope: HaltScope::decode(row.get(1))?,
            node_id: row.get(2),
            execution_id: row.get(3),
            message: row.get(4),
            entered_at: row.get(5),
            record: HaltRecord::Database,
        })
    })
    .transpose()
}

/// [`active_in`] through the pool (at start, and for reads outside a transaction).
pub async fn load_active(store: &Store, node_id: &str) -> Result<Option<ActiveHalt>, StoreError> {
    let client = store.client().await?;
    active_in(&**client, node_id).await
}

/// Refuses when a halt is in force, in memory or in the database: the check at the point of
/// no return.
pub(crate) async fn refuse_if_halted<C: GenericClient>(
    client: &C,
    node_id: &str,
    watch: &HaltWatch,
) -> Result<Option<ActiveHalt>, StoreError> {
    if let Some(halt) = watch.current() {
        return Ok(Some(halt));
    }
    active_in(client, node_id).await
}

/// Writes only the halt row and its event: the fallback when entering the whole halt
/// (`joint::enter_safe_halt`) keeps failing, so that a halt known in memory is persisted as soon
/// as the database takes anything at all.
pub async fn enter_row_only(
    audit: &AuditHandle,
    halt: &ActiveHalt,
) -> Result<ActiveHalt, AppendError> {
    let execution_id = halt.execution_id;
    let message = text::storable(&halt.message, text::MAX_FIELD_BYTES);
    append_as_node(
        audit,
        Scope::Global,
        message,
        move |tx, node_id, message| {
            Box::pin(async move {
                let halt = insert_or_find(tx, &node_id, execution_id, None, &message).await?;
                let mut event = AuditEvent::new("safe_halt.entered", Actor::System)
                    .with("halt_id", halt.halt_id)
                    .with("error", message)
                    .with("clear_with", CLEAR_COMMAND)
                    .with("entered_at", format_timestamp(halt.entered_at));
                if let Some(id) = execution_id {
                    event = event.execution(id);
                }
                Ok((event, halt))
            })
        },
    )
    .await
}

/// Clears the active halt of `scope` (this node's own, or the fleet's: nodes' own halts stay),
/// with the admin's uid and reason, audited in this node's chain in the same transaction. Fails
/// unless exactly one active row of that scope was cleared.
pub async fn resolve(
    audit: &AuditHandle,
    scope: HaltScope,
    admin_uid: u32,
    reason: &str,
) -> Result<i64, ResolveError> {
    let reason = text::storable(reason, text::MAX_FIELD_BYTES);
    // The unique index of each scope allows at most one active row: this node's, or the fleet's.
    let (what, event_type) = match scope {
        HaltScope::Node => ("active SAFE-HALT of this node", "safe_halt.cleared"),
        HaltScope::Fleet => ("active fleet SAFE-HALT", "safe_halt.fleet_cleared"),
    };
    append_as_node(audit, Scope::Global, reason, move |tx, node_id, reason| {
        Box::pin(async move {
            let rows = tx
                .query(
                    concat!(
                        "UPDATE playbook_safe_halt_state \
                         SET is_active = false, resolved_at = now(), resolved_by = $3, reason = $4 \
                         WHERE scope = $1 AND ",
                        in_force!("$2"),
                        " RETURNING halt_id"
                    ),
                    &[&scope.as_str(), &node_id, &i64::from(admin_uid), &reason],
                )
                .await?;
            let [row] = rows.as_slice() else {
                // None (or, against the unique index, several): clear nothing.
                return Err(StoreError::NotFound {
                    what,
                    detail: format!("{} rows for node `{node_id}`", rows.len()),
                });
            };
            let halt_id: i64 = row.get(0);
            Ok((
                AuditEvent::new(event_type, Actor::Uid(admin_uid))
                    .with("halt_id", halt_id)
                    .with("node_id", node_id.as_str())
                    .with("reason", reason),
                halt_id,
            ))
        })
    })
    .await
    .map_err(|error| match (error, scope) {
        (AppendError::Effect(StoreError::NotFound { .. }), HaltScope::Node) => {
            ResolveError::NotActive {
                node_id: audit.node_id().to_owned(),
            }
        }
        (AppendError::Effect(StoreError::NotFound { .. }), HaltScope::Fleet) => {
            ResolveError::FleetNotActive
        }
        (
            other @ (AppendError::Effect(_) | AppendError::Unavailable(_) | AppendError::Stopped),
            _,
        ) => ResolveError::Audit(other),
    })
}

/// The command an admin runs to clear the fleet's SAFE-HALT.
pub const CLEAR_FLEET_COMMAND: &str = "playbookd ctl halt-resolve --fleet --reason …";

/// The columns [`fleet_from_row`] decodes, in order.
pub const FLEET_COLUMNS: &str = "halt_id, node_id, execution_id, error_message, entered_at";

/// The active fleet halt, if any.
pub async fn fleet_in<C: GenericClient>(client: &C) -> Result<Option<ActiveHalt>, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {FLEET_COLUMNS} FROM playbook_safe_halt_state WHERE is_active AND scope = 'fleet'"
            ),
            &[],
        )
        .await?;
    Ok(row.and_then(|row| fleet_from_row(&row, 0)))
}

/// The fleet halt in [`FLEET_COLUMNS`] from column `first` of `row` on; `None` when those
/// columns are NULL (no active fleet halt, in an outer join).
pub fn fleet_from_row(row: &tokio_postgres::Row, first: usize) -> Option<ActiveHalt> {
    let halt_id: Option<i64> = row.get(first);
    Some(ActiveHalt {
        halt_id: Some(halt_id?),
        scope: HaltScope::Fleet,
        node_id: row.get(first + 1),
        execution_id: row.get(first + 2),
        message: row.get(first + 3),
        entered_at: row.get(first + 4),
        record: HaltRecord::Database,
    })
}

/// [`fleet_in`] through the pool.
pub async fn load_fleet(store: &Store) -> Result<Option<ActiveHalt>, StoreError> {
    let client = store.client().await?;
    fleet_in(&**client).await
}

/// Who or what halts the fleet.
#[derive(Debug, Clone)]
pub enum FleetHaltCause {
    /// An admin, on this node's control socket, with a reason.
    Admin { uid: u32, reason: String },
    /// This node's own halt (a failed rollback), with `fleet.halt_fleet_on_rollback_failure`.
    NodeHalt {
        halt_id: Option<i64>,
        message: String,
    },
}

/// Enters the fleet halt (or joins the active one), audited in this node's chain. Every node
/// refuses its next step start from the commit on.
pub async fn enter_fleet(
    audit: &AuditHandle,
    cause: FleetHaltCause,
) -> Result<ActiveHalt, AppendError> {
    append_as_node(audit, Scope::Global, cause, |tx, node_id, cause| {
        Box::pin(async move {
            let (actor, why) = match &cause {
                FleetHaltCause::Admin { uid, reason } => (
                    Actor::Uid(*uid),
                    format!(
                        "fleet halted by an admin on node `{node_id}`: {}",
                        text::storable(reason, text::MAX_FIELD_BYTES)
                    ),
                ),
                FleetHaltCause::NodeHalt { halt_id, message } => (
                    Actor::System,
                    format!(
                        "fleet halted by the SAFE-HALT of node `{node_id}` (halt {}): {}",
                        halt_id.map_or_else(|| "not yet written".to_owned(), |id| id.to_string()),
                        text::storable(message, text::MAX_FIELD_BYTES)
                    ),
                ),
            };
            let message = format!(
                "{}; an admin clears it with `{CLEAR_FLEET_COMMAND}`",
                text::storable(&why, text::MAX_FIELD_BYTES)
            );
            let inserted = tx
                .query_opt(
                    "INSERT INTO playbook_safe_halt_state (is_active, scope, node_id, \
                            error_message, entered_at) VALUES (true, 'fleet', $1, $2, now()) \
                         ON CONFLICT (scope) WHERE is_active AND scope = 'fleet' DO NOTHING \
                         RETURNING halt_id",
                    &[&node_id, &message],
                )
                .await?;
            let joined = inserted.is_none();
            let halt = fleet_in(&**tx).await?.ok_or_else(|| StoreError::NotFound {
                what: "active fleet SAFE-HALT",
                detail: "after inserting it".into(),
            })?;
            let event = AuditEvent::new("safe_halt.fleet_entered", actor)
                .with("halt_id", halt.halt_id)
                .with("joined_existing", joined)
                .with("error", halt.message.clone())
                .with("clear_with", CLEAR_FLEET_COMMAND)
                .with("entered_at", format_timestamp(halt.entered_at));
            Ok((event, halt))
        })
    })
    .await
}

/// Inserts this node's active halt, or finds the one already active (a second failed undo
/// while halted joins the first halt).
pub(crate) async fn insert_or_find(
    tx: &Tx<'_>,
    node_id: &str,
    execution_id: Option<Uuid>,
    rollback_id: Option<&str>,
    message: &str,
) -> Result<ActiveHalt, StoreError> {
    let inserted = tx
        .query_opt(
            "INSERT INTO playbook_safe_halt_state (is_active, scope, node_id, execution_id, rollback_id, \
                error_message, entered_at) \
             VALUES (true, 'node', $1, $2, $3, $4, now()) \
             ON CONFLICT (node_id) WHERE is_active AND scope = 'node' DO NOTHING \
             RETURNING halt_id, execution_id, error_message, entered_at",
            &[&node_id, &execution_id, &rollback_id, &message],
        )
        .await?;
    let row = match inserted {
        Some(row) => row,
        None => {
            tx.query_one(
                "SELECT halt_id, execution_id, error_message, entered_at FROM playbook_safe_halt_state \
                 WHERE node_id = $1 AND scope = 'node' AND is_active",
                &[&node_id],
            )
            .await?
        }
    };
    Ok(ActiveHalt {
        halt_id: Some(row.get(0)),
        scope: HaltScope::Node,
        node_id: node_id.to_owned(),
        execution_id: row.get(1),
        message: row.get(2),
        entered_at: row.get(3),
        record: HaltRecord::Database,
    })
}
