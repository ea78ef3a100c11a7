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
use crate::store::halts::{self, ActiveHalt, CLEAR_COMMAND, HaltCause, HaltRecord, HaltWatch};
use crate::store::model::HaltScope;
use crate::store::{Store, StoreError, joint};
use crate::systemd;

/// This node's SAFE-HALT. Cloning is shallow.
#[derive(Clone)]
pub struct SafeHalt {
    watch: HaltWatch,
    audit: AuditHandle,
    /// `fleet.halt_fleet_on_rollback_failure`: this node's own halt also halts the fleet.
    halts_fleet: bool,
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
    #[error("no fleet SAFE-HALT is active")]
    FleetNotActive,
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
    /// With `halts_fleet`, a halt this node enters also halts the fleet.
    pub async fn load(
        store: &Store,
        audit: AuditHandle,
        halts_fleet: bool,
    ) -> Result<SafeHalt, StoreError> {
        let halt = halts::load_active(store, audit.node_id())
            .await?
            .filter(|halt| is_own(halt, audit.node_id()));
        let fleet = halts::load_fleet(store).await?;
        metrics::gauge!("playbookd_safe_halt_active").set(if halt.is_some() { 1.0 } else { 0.0 });
        if let Some(halt) = &halt {
            tracing::error!(halt_id = ?halt.halt_id, error = %halt.message, priority = "critical",
                "SAFE-HALT is active: nothing will run until an admin clears it with `{CLEAR_COMMAND}`");
            systemd::notify_status(&status_line(halt));
        }
        let watch = HaltWatch::new(halt);
        if let Some(fleet) = fleet {
            watch.set_fleet(Some(fleet.clone()));
            announce(&fleet, "fleet SAFE-HALT is active");
        }
        Ok(SafeHalt {
            watch,
            audit,
            halts_fleet,
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
        match halt.scope {
            HaltScope::Fleet => self.sync_fleet(Some(halt)),
            HaltScope::Node => {
                if is_own(&halt, self.audit.node_id()) && self.watch.set(halt.clone()) {
                    announce(&halt, "SAFE-HALT found in the database");
                }
            }
        }
    }

    /// Takes the fleet halt as the database has it now (`None`: none active): from a
    /// `playbookd_halt` notification or the heartbeat's periodic re-read.
    pub fn sync_fleet(&self, fleet: Option<ActiveHalt>) {
        if !self.watch.set_fleet(fleet.clone()) {
            return;
        }
        match &fleet {
            Some(halt) => announce(halt, "fleet SAFE-HALT"),
            None => {
                tracing::warn!("fleet SAFE-HALT cleared");
                if self.watch.own().is_none() {
                    metrics::gauge!("playbookd_safe_halt_active").set(0.0);
                    systemd::notify_status("ready: fleet SAFE-HALT cleared");
                }
            }
        }
    }

    /// Halts every node of the fleet, for an admin with a reason.
    pub async fn halt_fleet(
        &self,
        admin_uid: u32,
        reason: &str,
    ) -> Result<ActiveHalt, ResolveError> {
        let reason = required_reason(reason)?;
        let halt = halts::enter_fleet(
            &self.audit,
            halts::FleetHaltCause::Admin {
                uid: admin_uid,
                reason: reason.to_owned(),
            },
        )
        .await
        .map_err(ResolveError::Audit)?;
        self.sync_fleet(Some(halt.clone()));
        Ok(halt)
    }

    /// Enters SAFE-HALT for `cause`: in memory at once, then written with everything the cause
    /// implies. When the write fails, a background task retries until it succeeds; meanwhile
    /// the in-memory halt refuses every start on this node.
    pub async fn enter(&self, cause: HaltCause) -> Entered {
        let unwritten = cause.unwritten(self.audit.node_id());
        if self.watch.set(unwritten.clone()) {
            announce(&unwritten, "SAFE-HALT entered");
        }
        if self.halts_fleet {
            self.spread_to_fleet(&unwritten).await;
        }
        match joint::enter_safe_halt(&self.audit, cause.clone()).await {
            Ok(halt) => {
                self.watch.set(halt.clone());
                tracing::error!(halt_id = ?halt.halt_id, execution_id = ?halt.execution_id, "SAFE-HALT written");
                Entered::Written(halt)
            }
            Err(error) => {
                tracing::error!(error = %error_chain(&error), priority = "critical",
                    "SAFE-HALT not written yet: it holds in memory (nothing starts) and is retried");
                let halt = self.watch.own().unwrap_or(unwritten);
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

    /// `fleet.halt_fleet_on_rollback_failure`: halts the fleet for this node's halt. Written
    /// before the node's own row, so the other nodes stop as early as possible; if it cannot be
    /// written the node's own halt still holds (and is retried), and the failure is logged.
    async fn spread_to_fleet(&self, halt: &ActiveHalt) {
        let cause = halts::FleetHaltCause::NodeHalt {
            halt_id: halt.halt_id,
            message: halt.message.clone(),
        };
        match halts::enter_fleet(&self.audit, cause).await {
            Ok(fleet) => self.sync_fleet(Some(fleet)),
            Err(error) => tracing::error!(error = %error_chain(&error), priority = "critical",
                "this node's SAFE-HALT could not halt the fleet (fleet.halt_fleet_on_rollback_failure)"),
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
                entered_at: crate::store::chain::now_micros(),
                record: HaltRecord::ChainAnchor,
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

    /// Clears this node's halt (`scope` node) or the fleet's (nodes' own halts stay), for an
    /// admin with a reason, audited in the same transaction; fails unless exactly one active row
    /// of that scope was cleared. Memory follows the database either way.
    pub async fn resolve(
        &self,
        scope: HaltScope,
        admin_uid: u32,
        reason: &str,
    ) -> Result<i64, ResolveError> {
        let reason = required_reason(reason)?;
        let what = match scope {
            HaltScope::Node => "SAFE-HALT",
            HaltScope::Fleet => "fleet SAFE-HALT",
        };
        match halts::resolve(&self.audit, scope, admin_uid, reason).await {
            Ok(halt_id) => {
                tracing::warn!(halt_id, admin_uid, reason = %crate::text::storable(reason, 256),
                    "{what} cleared");
                self.forget(scope);
                Ok(halt_id)
            }
            Err(halts::ResolveError::NotActive { .. } | halts::ResolveError::FleetNotActive) => {
                let node_id = self.audit.node_id().to_owned();
                match (scope, self.watch.own()) {
                    (HaltScope::Node, Some(halt)) if halt.halt_id.is_none() => {
                        Err(ResolveError::NotWrittenYet { node_id })
                    }
                    // The database has none (cleared elsewhere, or never written): memory
                    // follows it.
                    (HaltScope::Node, Some(_) | None) => {
                        self.watch.clear();
                        Err(ResolveError::NotActive { node_id })
                    }
                    (HaltScope::Fleet, _) => {
                        self.sync_fleet(None);
                        Err(ResolveError::FleetNotActive)
                    }
                }
            }
            Err(halts::ResolveError::Audit(error)) => Err(ResolveError::Audit(error)),
        }
    }

    /// Drops the halt of `scope` from memory, and says so, once its row was cleared.
    fn forget(&self, scope: HaltScope) {
        match scope {
            HaltScope::Node => {
                metrics::gauge!("playbookd_safe_halt_active").set(0.0);
                systemd::notify_status("ready: SAFE-HALT cleared");
                self.watch.clear();
            }
            HaltScope::Fleet => self.sync_fleet(None),
        }
    }
}

/// An admin's reason, trimmed; entering or clearing a halt by hand needs one.
fn required_reason(reason: &str) -> Result<&str, ResolveError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(ResolveError::NoReason);
    }
    Ok(reason)
}

/// `SAFE-HALT since <time>: <message>` (the message ends with how to clear it), one line.
pub fn status_line(halt: &ActiveHalt) -> String {
    let message = halt.message.replace(['\n', '\r'], " ");
    if halt.scope == HaltScope::Fleet {
        return format!(
            "fleet SAFE-HALT since {}: {message}",
            format_timestamp(halt.entered_at)
        );
    }
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
        "{what}: every new decision, step and undo of {} is refused until an admin clears it with `{}`",
        match halt.scope {
            HaltScope::Node => format!("node `{}`", halt.node_id),
            HaltScope::Fleet => "every node".to_owned(),
        },
        halt.clear_command()
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
            joint::enter_safe_halt(&audit, cause.clone()).await
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
