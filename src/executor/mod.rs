//! The executor: one task per execution, bounded globally and per org, that does exactly what
//! the pinned playbook says, once, and rolls back when it cannot finish.
//!
//! Every transition is persisted (with its audit event) before the next thing happens, so a
//! restart resumes each non-terminal execution where it stood: a step that was running is run
//! again with the same idempotency key, a rollback continues, a gate keeps waiting.
//! Database or audit failures stop the task and leave the execution resumable; the periodic
//! sweep picks it up again once the database answers.

// A new state must fail to compile wherever something is decided about it.
#![deny(clippy::wildcard_enum_match_arm)]

mod run;

/// Run and step states, as decoded at the database boundary (they live in
/// [`crate::store::model`]; re-exported here for the modules that read them through the executor).
pub mod state {
    pub use crate::store::model::{RollbackCause, RunState, StepState};
}

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

pub use crate::store::executions::{DecisionInfo, ExecutionRecord};
pub use crate::store::model::{RollbackCause, RunState, StepState};
pub use crate::store::steps::{params_hash, step_key, undo_key};

use crate::actions::Actions;
use crate::approvals::Approvals;
use crate::registry::{ActivePlaybook, Registry};
use crate::safe_halt::SafeHalt;
use crate::store::audit::{AppendError, AuditHandle, Unavailable};
use crate::store::executions::AdmissionAhead;
use crate::store::halts::HaltCause;
use crate::store::{Store, StoreError, executions};

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
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    #[error("daemon shutting down; the run will resume at the next start")]
    ShuttingDown,
    #[error("pinned playbook {id}@{version} cannot be loaded: {reason}")]
    Pinned {
        id: String,
        version: u32,
        reason: String,
    },
    /// The run cannot be continued safely; SAFE-HALT was entered for it.
    #[error("execution stopped in SAFE-HALT: {0}")]
    Halted(String),
}

impl From<StoreError> for RunError {
    fn from(error: StoreError) -> RunError {
        RunError::Unavailable(Unavailable::Store(error))
    }
}

impl From<AppendError> for RunError {
    fn from(error: AppendError) -> RunError {
        RunError::Unavailable(Unavailable::Audit(error))
    }
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
    /// Runs submitted here that have not yet had their first slot (see [`Executor::backlog`]).
    backlog: AtomicUsize,
    /// Actions started in this process whose outcome is not recorded yet, by (run, step, phase):
    /// a count that keeps growing means the outcome cannot be recorded, and the action must not
    /// be started again and again (see `run::MAX_UNRECORDED_OUTCOMES`).
    owed: Mutex<HashMap<OwedKey, u32>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// One action whose outcome is owed: (run, step index, is it the step's undo).
type OwedKey = (Uuid, usize, bool);

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

/// Why a cancel was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no such execution")]
    NotFound,
    #[error("execution already finished ({0})")]
    Finished(String),
    #[error("a reason is required")]
    NoReason,
    /// A host acts only for its own runs.
    #[error(
        "execution {execution_id} belongs to node `{owner}`; this node does not act for it: \
         send the cancel to node `{owner}`"
    )]
    OtherNode { execution_id: Uuid, owner: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit log unavailable; not cancelled")]
    Audit(#[source] AppendError),
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
    /// An executor with nothing running yet; `shutdown` pauses every run at a resumable point.
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
                backlog: AtomicUsize::new(0),
                owed: Mutex::new(HashMap::new()),
                shutdown,
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Starts (or continues) one execution, unless it already runs here.
    pub fn submit(&self, execution_id: Uuid) {
        self.spawn_run(execution_id, None);
    }

    /// Starts a run intake is admitting: `admission` (not sent yet) goes ahead of the run's
    /// first records, in the transaction of its first step's start (one COMMIT for the
    /// admission, the run's move to `running` and that start), or alone, at once, whenever the
    /// run cannot start its first step at once (no free slot, a gate, a SAFE-HALT, an early
    /// stop), so intake's reply, which waits for the admission's COMMIT, is never held up by
    /// the run. Nothing is read back before the first step (a `pending` run has no step rows
    /// yet). `admitted` says whether the admission committed: when it did not, the run's
    /// records were not attempted and the task ends quietly.
    pub fn submit_admitting(
        &self,
        record: ExecutionRecord,
        admission: AdmissionAhead,
        admitted: oneshot::Receiver<bool>,
    ) {
        let admitting = Admitting {
            record,
            admission,
            admitted,
        };
        self.spawn_run(admitting.record.id, Some(admitting));
    }

    fn spawn_run(&self, execution_id: Uuid, admitting: Option<Admitting>) {
        let handle = {
            let mut active = lock(&self.inner.active);
            if active.contains_key(&execution_id) || self.inner.shutdown.is_cancelled() {
                if let Some(admitting) = admitting {
                    // Not run here now (it is resumed later), but admitted all the same.
                    let audit = self.inner.audit.clone();
                    tokio::spawn(async move {
                        let _ = audit.flush(vec![admitting.admission.alone()]).await;
                    });
                }
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
        let waiting = Waiting::new(inner.clone());
        self.inner.tasks.spawn(async move {
            let outcome = inner
                .clone()
                .drive(execution_id, admitting, handle, waiting)
                .await;
            if let Err(error) = outcome {
                log_stop(execution_id, error);
            }
            lock(&inner.active).remove(&execution_id);
        });
    }

    /// Submits every non-terminal execution of this node (at start, then periodically).
    pub async fn resume_all(&self) -> Result<usize, StoreError> {
        let ids = executions::resumable(&self.inner.store, self.inner.audit.node_id()).await?;
        let count = ids.len();
        for id in ids {
            self.submit(id);
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
    /// Only this node's runs: another node's is refused, naming its owner.
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
        let logged = crate::text::storable(&reason, 256);
        executions::request_cancel(&self.inner.audit, execution_id, uid, reason)
            .await
            .map_err(|error| match error {
                AppendError::Effect(StoreError::NotFound { .. }) => CancelError::NotFound,
                AppendError::Effect(StoreError::OtherNode { owner, .. }) => {
                    CancelError::OtherNode {
                        execution_id,
                        owner,
                    }
                }
                AppendError::Effect(StoreError::Transition { from, .. }) => {
                    CancelError::Finished(from)
                }
                other @ (AppendError::Effect(_)
                | AppendError::Unavailable(_)
                | AppendError::Stopped) => CancelError::Audit(other),
            })?;
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

    /// Accepted runs waiting to start: submitted, not yet holding a slot for the first time
    /// (what intake's admission control bounds, `intake.max_backlog`). A run parked at a gate
    /// has started and does not count.
    pub fn backlog(&self) -> usize {
        self.inner.backlog.load(Ordering::Acquire)
    }

    /// Executions running in this process right now.
    pub fn running(&self) -> usize {
        lock(&self.inner.active).len()
    }
}

/// A run intake is admitting ([`Executor::submit_admitting`]).
struct Admitting {
    record: ExecutionRecord,
    /// Not sent yet: it goes ahead of the run's first records.
    admission: AdmissionAhead,
    /// Whether the admission committed, once intake knows.
    admitted: oneshot::Receiver<bool>,
}

/// True when intake was told that the admission it awaits was refused (a replay, a SAFE-HALT):
/// intake answers and records that, and the run's records sent behind it were not attempted.
/// Waits for intake to know; call only once the admission was sent or dropped. False when
/// intake went away without saying.
async fn admission_refused(admitted: &mut Option<oneshot::Receiver<bool>>) -> bool {
    match admitted.take() {
        Some(admitted) => admitted.await == Ok(false),
        None => false,
    }
}

/// Logs why a run's task stopped without finishing.
fn log_stop(execution_id: Uuid, error: RunError) {
    match error {
        RunError::ShuttingDown => {
            tracing::info!(execution_id = %execution_id, "run paused for shutdown");
        }
        other @ (RunError::Unavailable(_) | RunError::Pinned { .. } | RunError::Halted(_)) => {
            tracing::error!(
                execution_id = %execution_id,
                error = %crate::store::audit::error_chain(&other),
                "run stopped; it stays resumable"
            )
        }
    }
}

impl Inner {
    async fn drive(
        self: Arc<Self>,
        id: Uuid,
        admitting: Option<Admitting>,
        run: RunHandle,
        waiting: Waiting,
    ) -> Result<(), RunError> {
        let perf_t0 = std::time::Instant::now();
        let fresh = admitting.is_some();
        let (loaded, mut admission, mut admitted) = match admitting {
            Some(admitting) => (
                Ok(admitting.record),
                Some(admitting.admission),
                Some(admitting.admitted),
            ),
            None => (
                executions::load(&self.store, id, self.audit.node_id()).await,
                None,
                None,
            ),
        };
        let record = match loaded {
            Ok(record) => record,
            Err(StoreError::Corrupt { what, detail }) => {
                // A row that does not decode cannot be continued (nor rolled back) safely.
                let reason = format!("its stored {what} is invalid: {detail}");
                return Err(self.halt_unusable(id, reason).await);
            }
            Err(other) => return Err(other.into()),
        };
        if record.state.is_terminal() {
            return Ok(());
        }
        let playbook = match self.active_version(&record) {
            Some(playbook) => playbook,
            None => {
                // Read from the database (another version was activated meanwhile): the
                // admission, which intake's reply waits for, goes first, alone.
                self.send_alone(admission.take()).await?;
                if admission_refused(&mut admitted).await {
                    return Ok(());
                }
                self.pinned_playbook(&record).await?
            }
        };
        if record.cancel_requested {
            run.cancel_requested.store(true, Ordering::SeqCst);
            run.token.cancel();
        }
        let perf_load = perf_t0.elapsed().as_micros();
        let slot = match self.try_slot(&record.org_id) {
            Some(slot) => slot,
            None => {
                // No waiting for a slot with the admission held: intake's reply waits for it.
                // Nor for a run whose admission is refused.
                self.send_alone(admission.take()).await?;
                if admission_refused(&mut admitted).await {
                    return Ok(());
                }
                self.acquire_slot(&record.org_id).await?
            }
        };
        drop(waiting);
        let perf_slot = perf_t0.elapsed().as_micros();
        let mut runner = run::Runner::new(&self, record, playbook, run, slot, fresh, admission);
        let outcome = runner.run().await;
        tracing::debug!(target: "perf", load_us = perf_load, slot_us = perf_slot, total_us = perf_t0.elapsed().as_micros(), "run");
        // The runner sent (or dropped) the admission with its first records.
        if outcome.is_err() && admission_refused(&mut admitted).await {
            tracing::debug!(execution_id = %id, "admission refused; the run never started");
            return Ok(());
        }
        outcome
    }

    /// Stops run `id` in SAFE-HALT because it cannot be continued safely.
    async fn halt_unusable(&self, id: Uuid, reason: String) -> RunError {
        tracing::error!(execution_id = %id, reason = %reason, "execution cannot be continued safely");
        self.safe_halt
            .enter(HaltCause::UnusableRun {
                execution_id: id,
                reason: reason.clone(),
            })
            .await;
        RunError::Halted(reason)
    }

    /// Notes that an action starts whose outcome is not recorded yet; returns how many such
    /// starts in a row there have been.
    fn owe(&self, key: OwedKey) -> u32 {
        let mut owed = lock(&self.owed);
        let count = owed.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    /// How many starts in a row of this action have no recorded outcome.
    fn owed(&self, key: OwedKey) -> u32 {
        lock(&self.owed).get(&key).copied().unwrap_or(0)
    }

    /// The outcome of this action is recorded.
    fn settle(&self, key: OwedKey) {
        lock(&self.owed).remove(&key);
    }

    /// Sends a run's admission on its own (its outcome goes to intake, not waited for here).
    async fn send_alone(&self, admission: Option<AdmissionAhead>) -> Result<(), RunError> {
        if let Some(admission) = admission {
            self.audit.flush(vec![admission.alone()]).await?;
        }
        Ok(())
    }

    /// A place among the runs allowed at once, if one is free now (see [`Self::acquire_slot`]).
    fn try_slot(&self, org: &str) -> Option<RunSlot> {
        let global = self.global.clone().try_acquire_owned().ok()?;
        let org = self.org_semaphore(org).try_acquire_owned().ok()?;
        Some(RunSlot {
            _global: global,
            _org: org,
        })
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

    /// The version the run started with, if it is still the active one (nothing to read).
    fn active_version(&self, record: &ExecutionRecord) -> Option<Arc<ActivePlaybook>> {
        self.registry
            .catalog()
            .active(&record.playbook_id)
            .filter(|active| active.sha256() == record.sha256)
    }

    /// The exact version the run started with: from the catalog when it is still active,
    /// otherwise from the bytes stored when it was accepted, verified again against today's
    /// trust store. Stored bytes that no longer verify run nothing: SAFE-HALT, naming the
    /// version.
    async fn pinned_playbook(
        &self,
        record: &ExecutionRecord,
    ) -> Result<Arc<ActivePlaybook>, RunError> {
        if let Some(active) = self.active_version(record) {
            return Ok(active);
        }
        let catalog = self.registry.catalog();
        let client = self.store.client().await?;
        let loaded = crate::registry::load_pinned(
            &**client,
            catalog.keys(),
            &record.playbook_id,
            record.version,
            &record.sha256,
        )
        .await;
        drop(client);
        match loaded {
            Ok(playbook) => Ok(Arc::new(playbook)),
            Err(error) if error.is_untrusted() => {
                let reason = format!(
                    "its pinned playbook {}@{} (sha256 {}) was not run: {}",
                    record.playbook_id,
                    record.version,
                    hex::encode(record.sha256),
                    crate::store::audit::error_chain(&error)
                );
                Err(self.halt_unusable(record.id, reason).await)
            }
            Err(error) => Err(RunError::Pinned {
                id: record.playbook_id.clone(),
                version: record.version,
                reason: crate::store::audit::error_chain(&error),
            }),
        }
    }
}

/// Gauge of accepted runs waiting for an executor slot (bounded by `intake.max_backlog`:
/// beyond it a decision gets `busy`). Defined here, not in `status::metrics`, so that the
/// executor does not import the status API that reads it.
pub const RUNS_BACKLOG: &str = "playbookd_runs_backlog";

/// One run counted in the backlog until dropped (it got its slot, or its task ended).
struct Waiting(Arc<Inner>);

impl Waiting {
    fn new(inner: Arc<Inner>) -> Waiting {
        inner.backlog.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!(RUNS_BACKLOG).increment(1.0);
        Waiting(inner)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.backlog.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(RUNS_BACKLOG).decrement(1.0);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these maps inconsistent (single inserts/removes).
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
