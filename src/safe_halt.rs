//! SAFE-HALT: the persisted "stop acting" state of this node, entered when a rollback fails
//! (or a run cannot be continued safely).
//!
//! The rows belong to [`crate::store::halts`]; this module keeps the node's in-memory copy
//! ([`HaltWatch`]) and says so to operators: journald (critical priority), systemd `STATUS=`,
//! the `playbookd_safe_halt_active` gauge. Every message names the command that clears it.
//!
//! Entering is in memory first, at once, so nothing starts on this node even while the row
//! cannot be written; the row is then written, and if that fails it is retried in the
//! background until the database takes it (the full record first, then the bare halt row).

// A new state must fail to compile wherever something is decided about it.
#![deny(clippy::wildcard_enum_match_arm)]

use std::time::Duration;

use crate::store::audit::{AppendError, AuditHandle, error_chain, format_timestamp};
use crate::store::halts::{self, ActiveHalt, CLEAR_COMMAND, HaltCause, HaltWatch};
use crate::store::model::HaltScope;
use crate::store::{Store, StoreError};
use crate::systemd;

/// This node's SAFE-HALT. Cloning is shallow.
#[derive(Clone)]
pub struct SafeHalt {
    watch: HaltWatch,
    audit: AuditHandle,
}

/// Why a halt could not be cleared.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no SAFE-HALT is active on node `{node_id}`")]
    NotActive { node_id: String },
    #[error(
        "the SAFE-HALT of node `{node_id}` is not written to the database yet (the daemon keeps \
         trying); retry once it is"
    )]
    NotWrittenYet { node_id: String },
    #[error("a reason is required to clear a SAFE-HALT")]
    NoReason,
    #[error("the audit log is unavailable; SAFE-HALT stays active")]
    Audit(#[source] AppendError),
}

/// Whether a halt entered by [`SafeHalt::enter`] is written yet.
#[derive(Debug, Clone, PartialEq)]
pub enum Entered {
    /// The halt row (and everything the cause implies) is durable.
    Written(ActiveHalt),
    /// Known in memory only; a background task keeps writing it.
    InMemoryOnly(ActiveHalt),
}

impl SafeHalt {
    /// Reads this node's active halt (if any) from the database: a halt survives restarts.
    pub async fn load(store: &Store, audit: AuditHandle) -> Result<SafeHalt, StoreError> {
        let halt = halts::load_active(store, audit.node_id())
            .await?
            .filter(|halt| is_own(halt, audit.node_id()));
        metrics::gauge!("playbookd_safe_halt_active").set(if halt.is_some() { 1.0 } else { 0.0 });
        if let Some(halt) = &halt {
            tracing::error!(halt_id = ?halt.halt_id, error = %halt.message, priority = "critical",
                "SAFE-HALT is active: nothing will run until an admin clears it with `{CLEAR_COMMAND}`");
            systemd::notify_status(&status_line(halt));
        }
        Ok(SafeHalt {
            watch: HaltWatch::new(halt),
            audit,
        })
    }

    /// The in-memory watch the store's transactions read.
    pub fn watch(&self) -> &HaltWatch {
        &self.watch
    }

    /// This node's halt, if one is in force.
    pub fn active(&self) -> Option<ActiveHalt> {
        self.watch.current()
    }

    /// Whether this node is halted.
    pub fn is_active(&self) -> bool {
        self.watch.is_active()
    }

    /// Resolves once no halt of this node is in force.
    pub async fn wait_clear(&self) {
        self.watch.wait_clear().await;
    }

    /// Takes note of a halt found in the database (a start was refused by it). This node's own
    /// halt is kept in memory from then on; a fleet halt is re-read by whoever meets it.
    pub fn observe(&self, halt: ActiveHalt) {
        if is_own(&halt, self.audit.node_id()) && self.watch.set(halt.clone()) {
            announce(&halt, "SAFE-HALT found in the database");
        }
    }

    /// Enters SAFE-HALT for `cause`: in memory at once, then written with everything the cause
    /// implies. When the write fails, a background task retries until it succeeds; meanwhile
    /// the in-memory halt refuses every start on this node.
    pub async fn enter(&self, cause: HaltCause) -> Entered {
        let unwritten = cause.unwritten(self.audit.node_id());
        if self.watch.set(unwritten.clone()) {
            announce(&unwritten, "SAFE-HALT entered");
        }
        match halts::enter(&self.audit, cause.clone()).await {
            Ok(halt) => {
                self.watch.set(halt.clone());
                tracing::error!(halt_id = ?halt.halt_id, execution_id = ?halt.execution_id, "SAFE-HALT written");
                Entered::Written(halt)
            }
            Err(error) => {
                tracing::error!(error = %error_chain(&error), priority = "critical",
                    "SAFE-HALT not written yet: it holds in memory (nothing starts) and is retried");
                let halt = self.active().unwrap_or(unwritten);
                tokio::spawn(persist_until_written(
                    self.audit.clone(),
                    self.watch.clone(),
                    cause,
                    halt.clone(),
                ));
                Entered::InMemoryOnly(halt)
            }
        }
    }

    /// Enters SAFE-HALT in memory when the audit writer finds that the database lost rows this
    /// node committed. That halt cannot be written to the cut database: the writer records it in
    /// the chain anchor and refuses every append (so every decision and step) until an admin
    /// stops the daemon and accepts the cut with `playbookd audit accept-cut`.
    pub fn follow_chain_loss(&self) {
        let mut losses = self.audit.watch_chain_loss();
        let watch = self.watch.clone();
        let node_id = self.audit.node_id().to_owned();
        tokio::spawn(async move {
            let Ok(loss) = losses.wait_for(Option::is_some).await else {
                return;
            };
            let Some(loss) = loss.clone() else {
                return;
            };
            let halt = ActiveHalt {
                halt_id: None,
                scope: HaltScope::Node,
                node_id,
                execution_id: None,
                message: format!(
                    "{loss}; the halt is kept in the chain anchor, not in the cut database; stop the \
                     daemon and run `{}`",
                    crate::store::anchor::ACCEPT_COMMAND
                ),
                entered_at: crate::store::audit::now_micros(),
            };
            if watch.set(halt.clone()) {
                tracing::error!(node_id = %halt.node_id, missing_seqs = %loss.seqs(), error = %halt.message,
                    priority = "critical",
                    "SAFE-HALT entered: the audit chain was cut; every new decision, step and undo is refused \
                     until an admin stops the daemon and runs `{}`", crate::store::anchor::ACCEPT_COMMAND);
                systemd::notify_status(&status_line(&halt));
                metrics::gauge!("playbookd_safe_halt_active").set(1.0);
            }
        });
    }

    /// Clears this node's halt, with the admin's uid and reason, audited in the same
    /// transaction; fails unless exactly one active row of this node was cleared.
    pub async fn resolve(&self, admin_uid: u32, reason: &str) -> Result<i64, ResolveError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(ResolveError::NoReason);
        }
        let node_id = self.audit.node_id().to_owned();
        match halts::resolve(&self.audit, admin_uid, reason).await {
            Ok(halt_id) => {
                tracing::warn!(halt_id, admin_uid, reason = %crate::text::storable(reason, 256),
                    "SAFE-HALT cleared");
                metrics::gauge!("playbookd_safe_halt_active").set(0.0);
                systemd::notify_status("ready: SAFE-HALT cleared");
                self.watch.clear();
                Ok(halt_id)
            }
            Err(halts::ResolveError::NotActive { .. }) => match self.active() {
                Some(halt) if halt.halt_id.is_none() => {
                    Err(ResolveError::NotWrittenYet { node_id })
                }
                Some(_) | None => {
                    // The database has none (cleared elsewhere, or never written): memory follows it.
                    self.watch.clear();
                    Err(ResolveError::NotActive { node_id })
                }
            },
            Err(halts::ResolveError::Audit(error)) => Err(ResolveError::Audit(error)),
        }
    }
}

/// `SAFE-HALT since <time>: <message>` (the message ends with how to clear it), one line.
pub fn status_line(halt: &ActiveHalt) -> String {
    let message = halt.message.replace(['\n', '\r'], " ");
    format!(
        "SAFE-HALT since {}: {message}",
        format_timestamp(halt.entered_at)
    )
}

fn is_own(halt: &ActiveHalt, node_id: &str) -> bool {
    match halt.scope {
        HaltScope::Node => halt.node_id == node_id,
        HaltScope::Fleet => false,
    }
}

fn announce(halt: &ActiveHalt, what: &'static str) {
    tracing::error!(
        halt_id = ?halt.halt_id,
        execution_id = ?halt.execution_id,
        error = %halt.message,
        priority = "critical",
        "{what}: every new decision, step and undo of node `{}` is refused until an admin clears it with `{CLEAR_COMMAND}`",
        halt.node_id
    );
    systemd::notify_status(&status_line(halt));
    metrics::gauge!("playbookd_safe_halt_active").set(1.0);
}

/// Writes a halt known only in memory, as soon as the database takes it: the full record
/// first; when that keeps failing, the bare halt row (a content or state problem in the full
/// record must not keep the halt unwritten).
async fn persist_until_written(
    audit: AuditHandle,
    watch: HaltWatch,
    cause: HaltCause,
    halt: ActiveHalt,
) {
    let mut attempt: u32 = 0;
    loop {
        tokio::time::sleep(PERSIST_RETRY).await;
        attempt = attempt.saturating_add(1);
        let written = if attempt <= FULL_RECORD_ATTEMPTS {
            halts::enter(&audit, cause.clone()).await
        } else {
            halts::enter_row_only(&audit, &halt).await
        };
        match written {
            Ok(halt) => {
                tracing::error!(halt_id = ?halt.halt_id, attempt, "SAFE-HALT written");
                watch.set(halt);
                return;
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), attempt, "SAFE-HALT still not written; retrying");
            }
        }
    }
}

/// Pause between attempts to write a halt known only in memory.
const PERSIST_RETRY: Duration = Duration::from_secs(1);
/// Attempts with the full record before falling back to the bare halt row.
const FULL_RECORD_ATTEMPTS: u32 = 3;
