//! The executor: one task per execution, bounded globally and per org, that does exactly what
//! the pinned playbook says, once, and rolls back when it cannot finish.
//!
//! Every transition is persisted (with its audit event) before the next thing happens, so a
//! restart resumes each non-terminal execution where it stood: a step that was running is run
//! again with the same idempotency key, a rollback continues, a gate keeps waiting.
//! Database or audit failures stop the task and leave the execution resumable; the periodic
//! sweep picks it up again once the database answers.

mod record;
mod run;
pub mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use record::{ExecutionRecord, params_hash, step_key, undo_key};
pub use state::{RollbackCause, RunState, StepState};

use crate::actions::Actions;
use crate::approvals::Approvals;
use crate::registry::{ActivePlaybook, Registry};
use crate::safe_halt::SafeHalt;
use crate::store::audit::{Actor, AppendError, AuditEvent, AuditHandle};
use crate::store::{Store, StoreError};

/// Limits and defaults from `[executor]`.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    pub max_concurrent_runs: usize,
    pub max_runs_per_org: usize,
    /// A step without its own `timeout:` gets this one.
    pub default_step_timeout: Duration,
    /// How often non-terminal executions not running here are picked up again.
    pub resume_interval: Duration,
}

/// Why a task stopped without finishing; the execution stays resumable.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("database unavailable")]
    Store(#[from] StoreError),
    #[error("audit log unavailable; nothing further was done")]
    Audit(#[from] AppendError),
    #[error("daemon shutting down; the run will resume at the next start")]
    ShuttingDown,
    #[error("pinned playbook {id}@{version} cannot be loaded: {reason}")]
    Pinned {
        id: String,
        version: i64,
        reason: String,
    },
}

#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    audit: AuditHandle,
    actions: Actions,
    registry: Registry,
    safe_halt: SafeHalt,
    approvals: Approvals,
    settings: ExecutorSettings,
    global: Arc<Semaphore>,
    per_org: Mutex<HashMap<String, Arc<Semaphore>>>,
    active: Mutex<HashMap<Uuid, RunHandle>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Held while a run may act; dropped to release its place.
struct RunSlot {
    _global: tokio::sync::OwnedSemaphorePermit,
    _org: tokio::sync::OwnedSemaphorePermit,
}

/// The in-process handle of one running execution.
#[derive(Clone)]
struct RunHandle {
    /// Fires on cancel and on shutdown; `cancel_requested` tells which.
    token: CancellationToken,
    cancel_requested: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no such execution")]
    NotFound,
    #[error("execution already finished ({0})")]
    Finished(&'static str),
    #[error("a reason is required")]
    NoReason,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit log unavailable; not cancelled")]
    Audit(#[from] AppendError),
}

/// Everything the executor needs from the rest of the daemon.
pub struct ExecutorParts {
    pub store: Store,
    pub audit: AuditHandle,
    pub actions: Actions,
    pub registry: Registry,
    pub safe_halt: SafeHalt,
    pub approvals: Approvals,
    pub settings: ExecutorSettings,
}

impl Executor {
    pub fn new(parts: ExecutorParts, shutdown: CancellationToken) -> Executor {
        let global = Arc::new(Semaphore::new(parts.settings.max_concurrent_runs));
        Executor {
            inner: Arc::new(Inner {
                store: parts.store,
                audit: parts.audit,
                actions: parts.actions,
                registry: parts.registry,
                safe_halt: parts.safe_halt,
                approvals: parts.approvals,
                settings: parts.settings,
                global,
                per_org: Mutex::new(HashMap::new()),
                active: Mutex::new(HashMap::new()),
                shutdown,
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Starts (or continues) one execution, unless it already runs here.
    pub fn submit(&self, execution_id: Uuid) {
        let handle = {
            let mut active = lock(&self.inner.active);
            if active.contains_key(&execution_id) || self.inner.shutdown.is_cancelled() {
                return;
            }
            let handle = RunHandle {
                token: self.inner.shutdown.child_token(),
                cancel_requested: Arc::new(AtomicBool::new(false)),
            };
            active.insert(execution_id, handle.clone());
            handle
        };
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move {
            if let Err(error) = inner.clone().drive(execution_id, handle).await {
                match error {
                    RunError::ShuttingDown => {
                        tracing::info!(execution_id = %execution_id, "run paused for shutdown");
                    }
                    other => tracing::error!(
                        execution_id = %execution_id,
                        error = %crate::store::audit::error_chain(&other),
                        "run stopped; it stays resumable"
                    ),
                }
            }
            lock(&inner.active).remove(&execution_id);
        });
    }

    /// Submits every non-terminal execution of this node (at start, then periodically).
    pub async fn resume_all(&self) -> Result<usize, StoreError> {
        let client = self.inner.store.client().await?;
        let rows = client
            .query(
                "SELECT execution_id FROM playbook_executions \
                 WHERE node_id = $1 AND state IN ('pending', 'running', 'awaiting_approval', 'rolling_back') \
                 ORDER BY started_at",
                &[&self.inner.audit.node_id()],
            )
            .await?;
        let count = rows.len();
        for row in rows {
            self.submit(row.get(0));
        }
        Ok(count)
    }

    /// Runs the periodic resume sweep until shutdown.
    /// Also beats `heartbeat`: the systemd watchdog stops pinging when this loop stalls.
    pub async fn resume_loop(self, heartbeat: crate::systemd::Heartbeat) {
        let mut ticker = tokio::time::interval(self.inner.settings.resume_interval);
        let mut beats = tokio::time::interval(crate::systemd::HEARTBEAT_PERIOD);
        loop {
            tokio::select! {
                () = self.inner.shutdown.cancelled() => return,
                _ = beats.tick() => heartbeat.beat(),
                _ = ticker.tick() => {
                    if let Err(error) = self.resume_all().await {
                        tracing::warn!(error = %crate::store::audit::error_chain(&error), "resume sweep failed");
                    }
                }
            }
        }
    }

    /// Records a cancel request durably, then stops the run if it is here; the run rolls back.
    pub async fn cancel(
        &self,
        execution_id: Uuid,
        uid: u32,
        reason: &str,
    ) -> Result<(), CancelError> {
        let reason = reason.trim().to_owned();
        if reason.is_empty() {
            return Err(CancelError::NoReason);
        }
        let client = self.inner.store.client().await?;
        let row = client
            .query_opt(
                "SELECT state FROM playbook_executions WHERE execution_id = $1",
                &[&execution_id],
            )
            .await
            .map_err(StoreError::from)?
            .ok_or(CancelError::NotFound)?;
        let state: RunState = row.get::<_, String>(0).parse()?;
        if state.is_terminal() {
            return Err(CancelError::Finished(state.as_str()));
        }
        let logged = reason.clone();
        self.inner
            .audit
            .append_with(Box::new(move |tx| {
                Box::pin(async move {
                    tx.execute(
                        "UPDATE playbook_executions SET cancel_requested_at = now(), \
                         end_reason = COALESCE(end_reason, $2), updated_at = now() WHERE execution_id = $1",
                        &[&execution_id, &format!("cancelled by uid {uid}: {reason}")],
                    )
                    .await?;
                    Ok((AuditEvent::new("execution.cancel_requested", Actor::Uid(uid))
                        .execution(execution_id)
                        .with("reason", reason), ()))
                })
            }))
            .await?;
        tracing::warn!(execution_id = %execution_id, uid, reason = %logged, "cancel requested");
        let handle = lock(&self.inner.active).get(&execution_id).cloned();
        match handle {
            Some(handle) => {
                handle.cancel_requested.store(true, Ordering::SeqCst);
                handle.token.cancel();
            }
            None => self.submit(execution_id),
        }
        Ok(())
    }

    /// Stops taking work and waits (bounded) for tasks to reach a resumable point.
    pub async fn drain(&self, limit: Duration) -> bool {
        self.inner.tasks.close();
        tokio::time::timeout(limit, self.inner.tasks.wait())
            .await
            .is_ok()
    }

    /// Executions running in this process right now.
    pub fn running(&self) -> usize {
        lock(&self.inner.active).len()
    }
}

impl Inner {
    async fn drive(self: Arc<Self>, id: Uuid, run: RunHandle) -> Result<(), RunError> {
        let record = record::load_execution(&self.store, id).await?;
        if record.state.is_terminal() {
            return Ok(());
        }
        let playbook = self.pinned_playbook(&record).await?;
        if record.cancel_requested {
            run.cancel_requested.store(true, Ordering::SeqCst);
            run.token.cancel();
        }
        let slot = self.acquire_slot(&record.org_id).await?;
        let mut runner = run::Runner::new(&self, record, playbook, run, slot);
        runner.run().await
    }

    /// A place among the runs allowed at once, globally and for `org`. A run gives it back
    /// while it waits for approval, so parked runs never starve the others.
    async fn acquire_slot(&self, org: &str) -> Result<RunSlot, RunError> {
        let global = self
            .global
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RunError::ShuttingDown)?;
        let org = self
            .org_semaphore(org)
            .acquire_owned()
            .await
            .map_err(|_| RunError::ShuttingDown)?;
        Ok(RunSlot {
            _global: global,
            _org: org,
        })
    }

    fn org_semaphore(&self, org: &str) -> Arc<Semaphore> {
        lock(&self.per_org)
            .entry(org.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.max_runs_per_org)))
            .clone()
    }

    /// The exact version the run started with: from the catalog when it is still active,
    /// otherwise from the verified bytes stored when it was accepted.
    async fn pinned_playbook(
        &self,
        record: &ExecutionRecord,
    ) -> Result<Arc<ActivePlaybook>, RunError> {
        if let Some(active) = self.registry.active(&record.playbook_id)
            && active.sha256() == record.sha256
        {
            return Ok(active);
        }
        let pinned_error = |reason: String| RunError::Pinned {
            id: record.playbook_id.clone(),
            version: record.version,
            reason,
        };
        let version = u32::try_from(record.version)
            .map_err(|_| pinned_error("version out of range".into()))?;
        let client = self.store.client().await?;
        crate::registry::load_pinned(&**client, &record.playbook_id, version, &record.sha256)
            .await
            .map(Arc::new)
            .map_err(|error| pinned_error(crate::store::audit::error_chain(&error)))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these maps inconsistent (single inserts/removes).
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
