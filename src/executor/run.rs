//! One execution's life: steps in order, then (if needed) rollback in reverse order.
//!
//! Nothing here writes SQL: each transition is one call into `store` (one audit transaction).
//! Records with no side effect between them share a transaction: a run's start is sent with its
//! first step's start (and written by the same statement, [`Held::RunStart`]), a step's success
//! (or skip) with the next step's start or the run's completion ([`Runner::defer`]). Anything
//! else sends what is held first ([`Runner::flush`]), so the chain keeps the order things
//! happened in.
//! Every action (a step's attempt, an undo's attempt) runs only after `store` recorded its
//! start; that transaction refuses the start while a SAFE-HALT is in force, and the run then
//! waits for the halt to be cleared (or for a cancel, the deadline, or shutdown).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::Value;
use tokio::time::Instant;

use super::{ExecutionRecord, Inner, OwedKey, RunError, RunHandle, RunSlot};
use crate::actions::{ActionContext, ActionError, ActionOutput};
use crate::approvals::{GateRequest, Verdict};
use crate::registry::ActivePlaybook;
use crate::registry::model::{Rollback, Step};
use crate::registry::template::{self, TemplateContext};
use crate::registry::when;
use crate::safe_halt::Entered;
use crate::store::audit::{Actor, AuditEvent, Deferred};
use crate::store::executions::{self, AdmissionAhead};
use crate::store::halts::{ActiveHalt, HaltCause};
use crate::store::joint;
use crate::store::model::{ErrorClass, RollbackCause, RunState, StepState, UndoState};
use crate::store::steps::{self, StartOutcome, StepEnd, StepEndRecord, StepRecord, StepStart};
use crate::store::undos::{self, UndoEnd};

/// Undo actions get at least this many attempts before the daemon halts.
const MIN_UNDO_ATTEMPTS: u32 = 3;
/// Starts in a row, in this process, of a step (or an undo) whose outcome could not be recorded
/// (the database refused or lost the end): the next one is not made; the run fails closed
/// instead (the step fails and is undone; an undo enters SAFE-HALT).
pub(super) const MAX_UNRECORDED_OUTCOMES: u32 = 3;
/// The same across restarts, from the persisted attempt counters: starts beyond a step's (or an
/// undo's) own attempt budget. Generous, because a restart in the middle of an action is
/// normal and its re-run with the same idempotency key is the design; this only ends a crash
/// loop that would otherwise act without end.
const MAX_RESTARTED_STARTS: u32 = 25;
const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);
/// Past the step deadline the executor stops waiting even if the action has not.
const DEADLINE_GRACE: Duration = Duration::from_millis(500);
/// While a SAFE-HALT known only from the database (a fleet halt) is in force, a refused start is
/// tried again this often.
const HALT_RECHECK: Duration = Duration::from_secs(5);

/// A record held to go with the next append.
enum Held {
    /// The run's admission, not sent yet: written with the run's start and its first step's
    /// when those are the next records ([`steps::record_admission_and_first_start`]), else alone.
    Admission(AdmissionAhead),
    /// Sent as it is; the action whose outcome it records (if any) is settled once it commits.
    Record(Deferred, Option<OwedKey>),
    /// The run's start (`pending -> running`): written by its first step's start when that is
    /// the next record, else as a record of its own ([`executions::defer_state`]).
    RunStart(AuditEvent),
}

/// What is held before a step's start, as [`Runner::take_deferred_before_start`] sorts it.
enum BeforeStart {
    /// The run's admission and start, nothing else.
    Admission(AdmissionAhead, AuditEvent),
    /// Records to send first, then the run's start.
    RunStart(Vec<Deferred>, Vec<OwedKey>, AuditEvent),
    /// Records to send first.
    Records(Vec<Deferred>, Vec<OwedKey>),
}

/// Where the forward pass ended.
enum Forward {
    Completed,
    RollBack(RollbackCause, String),
}

/// How one invocation of an action ended.
enum Invocation {
    Finished(Result<ActionOutput, ActionError>),
    StepTimeout,
    PlaybookTimeout,
    Cancelled,
    ShuttingDown,
}

/// How one attempt of a step came out.
enum Attempted {
    /// The step is over: `None` goes on to the next step, `Some` ends the forward pass.
    Over(Option<Forward>),
    /// The action failed (not recorded yet): retried if the class and the budget allow.
    Failed(ErrorClass, String),
}

/// Whether a start was recorded, or the run must stop going forward.
enum Start {
    Started,
    Stop(Forward),
}

pub(super) struct Runner<'a> {
    inner: &'a Inner,
    record: ExecutionRecord,
    playbook: Arc<ActivePlaybook>,
    run: RunHandle,
    deadline: Option<Instant>,
    /// None while parked at an approval gate.
    slot: Option<RunSlot>,
    /// Records not sent yet: they go with the next append, in its transaction.
    deferred: Mutex<Vec<Held>>,
    /// Admitted by intake in this process just now: no step of it has been recorded, so its
    /// steps are not read back.
    fresh: bool,
}

impl<'a> Runner<'a> {
    pub(super) fn new(
        inner: &'a Inner,
        record: ExecutionRecord,
        playbook: Arc<ActivePlaybook>,
        run: RunHandle,
        slot: RunSlot,
        fresh: bool,
        admission: Option<AdmissionAhead>,
    ) -> Runner<'a> {
        let deadline = playbook.playbook().timeout.map(|timeout| {
            let elapsed =
                (time::OffsetDateTime::now_utc() - record.started_at).max(time::Duration::ZERO);
            let elapsed = Duration::try_from(elapsed).unwrap_or_default();
            Instant::now() + timeout.0.saturating_sub(elapsed)
        });
        Runner {
            inner,
            record,
            playbook,
            run,
            deadline,
            slot: Some(slot),
            // The admission goes first, with the run's first records (see
            // [`super::Executor::submit_admitting`]).
            deferred: Mutex::new(admission.map(Held::Admission).into_iter().collect()),
            fresh,
        }
    }

    pub(super) async fn run(&mut self) -> Result<(), RunError> {
        let outcome = self.run_to_end().await;
        // Stopped between a deferred record and the next append (shutdown, a database error):
        // what is held did happen, so it is still written.
        if let Err(error) = self.flush().await {
            tracing::warn!(execution_id = %self.record.id,
                error = %crate::store::audit::error_chain(&error), "held records not written");
        }
        outcome
    }

    /// Holds `record` to be sent with the next append; `owed` is settled once it commits.
    fn defer(&self, record: Deferred, owed: Option<OwedKey>) {
        super::lock(&self.deferred).push(Held::Record(record, owed));
    }

    fn take_deferred(&self) -> (Vec<Deferred>, Vec<OwedKey>) {
        let held = std::mem::take(&mut *super::lock(&self.deferred));
        self.records(held)
    }

    /// [`Self::take_deferred`] for a step's start, with the run's start apart when it is the
    /// last record held (the step's start then writes it, [`steps::record_first_start_after`]),
    /// and the run's admission apart too when it is the only other one (its statement then
    /// writes all three, [`steps::record_admission_and_first_start`]).
    fn take_deferred_before_start(&self) -> BeforeStart {
        let mut held = std::mem::take(&mut *super::lock(&self.deferred));
        let run_start = match held.pop() {
            Some(Held::RunStart(started)) => Some(started),
            Some(other) => {
                held.push(other);
                None
            }
            None => None,
        };
        if let Some(started) = run_start {
            if let [Held::Admission(_)] = held.as_slice()
                && let Some(Held::Admission(admission)) = held.pop()
            {
                return BeforeStart::Admission(admission, started);
            }
            let (records, owed) = self.records(held);
            return BeforeStart::RunStart(records, owed, started);
        }
        let (records, owed) = self.records(held);
        BeforeStart::Records(records, owed)
    }

    /// What is held, as records to send, and the actions whose outcomes they record.
    fn records(&self, held: Vec<Held>) -> (Vec<Deferred>, Vec<OwedKey>) {
        let mut records = Vec::with_capacity(held.len());
        let mut owed = Vec::new();
        for held in held {
            match held {
                Held::Admission(admission) => records.push(admission.alone()),
                Held::Record(record, key) => {
                    records.push(record);
                    owed.extend(key);
                }
                Held::RunStart(started) => records.push(executions::defer_state(
                    &self.inner.audit,
                    self.record.id,
                    RunState::Running,
                    started,
                )),
            }
        }
        (records, owed)
    }

    fn settle_all(&self, owed: Vec<OwedKey>) {
        for key in owed {
            self.inner.settle(key);
        }
    }

    /// Sends what is held, alone: before an append that cannot carry it, or before waiting.
    async fn flush(&self) -> Result<(), RunError> {
        let (records, owed) = self.take_deferred();
        if records.is_empty() {
            return Ok(());
        }
        self.inner.audit.flush(records).await?;
        self.settle_all(owed);
        Ok(())
    }

    async fn run_to_end(&mut self) -> Result<(), RunError> {
        let cause = match self.record.state {
            RunState::RollingBack => match self.record.rollback_cause {
                Some(cause) => cause,
                // Written with the state in one transaction: missing means the row was changed.
                None => {
                    let reason = "its stored rollback cause is missing although it is rolling back";
                    return Err(self
                        .inner
                        .halt_unusable(self.record.id, reason.into())
                        .await);
                }
            },
            RunState::Pending | RunState::Running | RunState::AwaitingApproval => {
                if self.record.state == RunState::Pending {
                    let started = AuditEvent::new("execution.started", Actor::System)
                        .with("playbook", self.label());
                    super::lock(&self.deferred).push(Held::RunStart(started));
                }
                match self.forward().await? {
                    Forward::Completed => {
                        self.set_state(RunState::Completed, "execution.completed")
                            .await?;
                        return Ok(());
                    }
                    Forward::RollBack(cause, reason) => {
                        self.flush().await?;
                        joint::begin_rollback(&self.inner.audit, self.record.id, cause, reason)
                            .await?;
                        cause
                    }
                }
            }
            RunState::Completed
            | RunState::RolledBack
            | RunState::SafeHalted
            | RunState::Cancelled
            | RunState::TimedOut
            | RunState::Rejected => return Ok(()),
        };
        if self.roll_back().await? {
            let state = cause.terminal_state();
            self.set_state(state, "execution.rolled_back").await?;
        }
        Ok(())
    }

    async fn set_state(&self, state: RunState, event_type: &'static str) -> Result<(), RunError> {
        let event = AuditEvent::new(event_type, Actor::System).with("playbook", self.label());
        let (held, owed) = self.take_deferred();
        executions::set_state_after(&self.inner.audit, held, self.record.id, state, event).await?;
        self.settle_all(owed);
        if state.is_terminal() {
            metrics::counter!("playbookd_executions_total",
                "state" => state.as_str(), "playbook" => self.playbook.playbook().id.clone())
            .increment(1);
            tracing::info!(execution_id = %self.record.id, playbook_id = %self.playbook.playbook().id,
                org_id = %self.record.org_id, state = state.as_str(), "execution finished");
        }
        Ok(())
    }

    fn label(&self) -> String {
        format!(
            "{}@{}",
            self.playbook.playbook().id,
            self.playbook.version()
        )
    }

    async fn forward(&mut self) -> Result<Forward, RunError> {
        let perf_t0 = std::time::Instant::now();
        // A run admitted just now has no step rows (each is written with or after the run's
        // move to `running`, and the record says `pending`); any other is read back.
        let steps = if self.fresh && self.record.state == RunState::Pending {
            std::collections::HashMap::new()
        } else {
            steps::load(&self.inner.store, self.record.id).await?
        };
        tracing::debug!(target: "perf", us = perf_t0.elapsed().as_micros(), "steps_load");
        let playbook = self.playbook.clone();
        for (index, step) in playbook.playbook().steps.iter().enumerate() {
            let previous = steps.get(&index).copied();
            match previous.map(|s| s.state) {
                Some(StepState::Succeeded | StepState::Skipped) => continue,
                Some(StepState::Failed | StepState::RolledBack | StepState::RollbackFailed) => {
                    return Ok(Forward::RollBack(
                        RollbackCause::Failed,
                        format!("step `{}` failed", step.id),
                    ));
                }
                Some(StepState::Pending | StepState::Running) | None => {}
            }
            if let Some(stop) = self.interruption().await? {
                return Ok(stop);
            }
            match self.condition(step) {
                Condition::Run => {}
                Condition::Skip(reason) => {
                    self.defer_end(index, step, StepEnd::Skipped { reason });
                    continue;
                }
                Condition::Fail(error) => return self.fail_step(index, step, error).await,
            }
            if let Some(stop) = self.pass_gate(index, step).await? {
                return Ok(stop);
            }
            let prior_attempts = previous.map_or(0, |s| s.attempts);
            if let Some(stop) = self.run_step(index, step, prior_attempts).await? {
                return Ok(stop);
            }
        }
        Ok(Forward::Completed)
    }

    /// Reports a cancel or an expired playbook deadline; before the next step, waits out a
    /// SAFE-HALT of this node (the start itself is refused anyway; waiting here keeps a new
    /// gate from opening during the halt).
    async fn interruption(&self) -> Result<Option<Forward>, RunError> {
        if self.inner.safe_halt.is_active() {
            self.flush().await?;
            tracing::warn!(execution_id = %self.record.id, "SAFE-HALT active: the next step waits");
            tokio::select! {
                () = self.inner.safe_halt.wait_clear() => {}
                () = self.run.token.cancelled() => {}
                () = sleep_until_deadline(self.deadline) => {}
            }
        }
        self.stopped()
    }

    /// A cancel, a shutdown or the playbook deadline, if one came.
    fn stopped(&self) -> Result<Option<Forward>, RunError> {
        if self.run.token.is_cancelled() {
            return if self.run.cancel_requested.load(Ordering::SeqCst) {
                Ok(Some(Forward::RollBack(
                    RollbackCause::Cancelled,
                    "cancelled".into(),
                )))
            } else {
                Err(RunError::ShuttingDown)
            };
        }
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return Ok(Some(Forward::RollBack(
                RollbackCause::TimedOut,
                "playbook timeout exceeded".into(),
            )));
        }
        Ok(None)
    }

    fn template_context(&self) -> TemplateContext<'_> {
        TemplateContext {
            subject: &self.record.subject,
            decision: self.record.decision.fields(),
            execution_id: self.record.id,
        }
    }

    /// The step's `when:`: true runs it, false skips it (with the reason), and a condition
    /// that cannot be evaluated fails the step: skipping would let the run go on to the next,
    /// possibly destructive, step on a guess.
    fn condition(&self, step: &Step) -> Condition {
        let Some(condition) = step.when.as_deref() else {
            return Condition::Run;
        };
        match when::parse(condition).and_then(|expr| expr.eval(&self.template_context())) {
            Ok(true) => Condition::Run,
            Ok(false) => Condition::Skip(format!("when `{condition}` is false")),
            Err(error) => Condition::Fail(format!(
                "when `{condition}` could not be evaluated: {error}"
            )),
        }
    }

    async fn fail_step(
        &self,
        index: usize,
        step: &Step,
        error: String,
    ) -> Result<Forward, RunError> {
        let reason = format!("step `{}` failed: {error}", step.id);
        self.end_step(
            index,
            step,
            StepEnd::Failed {
                class: ErrorClass::Permanent,
                error,
            },
        )
        .await?;
        Ok(Forward::RollBack(RollbackCause::Failed, reason))
    }

    async fn pass_gate(&mut self, index: usize, step: &Step) -> Result<Option<Forward>, RunError> {
        let Some(risk) = crate::registry::playbook::effective_risk(step) else {
            let error = format!("action `{}` is not available", step.action);
            return Ok(Some(self.fail_step(index, step, error).await?));
        };
        let Some(required) =
            crate::approvals::required_approvals(risk, self.record.binding.require_approval)
        else {
            return Ok(None);
        };
        let params =
            template::render(&step.params, &self.template_context()).unwrap_or(Value::Null);
        let request = GateRequest {
            execution_id: self.record.id,
            step_index: index,
            step_id: step.id.clone(),
            action: step.action.clone(),
            risk,
            required,
            undoable: !matches!(step.rollback, Rollback::None),
            org_id: self.record.org_id.clone(),
            playbook: self.label(),
            params,
            expires_after: self
                .playbook
                .playbook()
                .approval
                .and_then(|a| a.expires)
                .map_or(crate::approvals::DEFAULT_EXPIRY, |d| d.0),
        };
        // Parked for as long as it takes: what happened before the gate is written first.
        self.flush().await?;
        self.slot = None;
        let verdict = self.inner.approvals.gate(request, &self.run.token).await?;
        self.slot = Some(self.inner.acquire_slot(&self.record.org_id).await?);
        let reason = match verdict {
            Verdict::Approved => return Ok(None),
            Verdict::Interrupted => {
                return self.interruption().await.map(|stop| {
                    stop.or(Some(Forward::RollBack(
                        RollbackCause::Cancelled,
                        "cancelled".into(),
                    )))
                });
            }
            Verdict::Denied(reason) => format!("approval denied: {reason}"),
            Verdict::Expired => "approval expired".to_owned(),
        };
        let end = StepEnd::Failed {
            class: ErrorClass::Permanent,
            error: reason.clone(),
        };
        self.end_step(index, step, end).await?;
        Ok(Some(Forward::RollBack(RollbackCause::Rejected, reason)))
    }

    /// Runs one step to success or final failure, retrying transient errors.
    async fn run_step(
        &self,
        index: usize,
        step: &Step,
        prior_attempts: i32,
    ) -> Result<Option<Forward>, RunError> {
        let max_attempts = step.retry.map_or(1, |r| r.attempts.max(1));
        if let Some(stop) = self
            .refuse_restart_loop(index, step, prior_attempts, max_attempts)
            .await?
        {
            return Ok(Some(stop));
        }
        let params = match template::render(&step.params, &self.template_context()) {
            Ok(params) => params,
            Err(error) => {
                return Ok(Some(
                    self.fail_step(index, step, format!("parameters: {error}"))
                        .await?,
                ));
            }
        };
        let backoff = step.retry.map_or(DEFAULT_BACKOFF, |r| r.backoff.0);
        let key = steps::step_key(self.record.id, &step.id);
        for (attempt_here, attempt) in (1..=max_attempts).zip(prior_attempts + 1..) {
            let (class, error) = match self.attempt(index, step, &params, key, attempt).await? {
                Attempted::Over(next) => return Ok(next),
                Attempted::Failed(class, error) => (class, error),
            };
            if class.is_retryable() && attempt_here < max_attempts {
                let delay = retry_delay(backoff, attempt_here);
                if let Some(stop) = self.retry_after(index, step, class, error, delay).await? {
                    return Ok(Some(stop));
                }
                continue;
            }
            let reason = format!(
                "step `{}` failed ({class}): {}",
                step.id,
                crate::text::storable(&error, crate::text::MAX_FIELD_BYTES)
            );
            self.end_step(index, step, StepEnd::Failed { class, error })
                .await?;
            return Ok(Some(Forward::RollBack(RollbackCause::Failed, reason)));
        }
        Ok(None)
    }

    /// A step started this often without its outcome being recorded (in this process, or
    /// across restarts beyond its attempt budget) is not started again: acting again could
    /// repeat forever. Fails closed: the step fails (counting as possibly done) and the run
    /// rolls back.
    async fn refuse_restart_loop(
        &self,
        index: usize,
        step: &Step,
        prior_attempts: i32,
        max_attempts: u32,
    ) -> Result<Option<Forward>, RunError> {
        let started_before = u32::try_from(prior_attempts).unwrap_or(0);
        let owed = self.inner.owed((self.record.id, index, false));
        if owed < MAX_UNRECORDED_OUTCOMES
            && started_before < max_attempts.saturating_add(MAX_RESTARTED_STARTS)
        {
            return Ok(None);
        }
        let error = format!(
            "started {} times without its outcome being recorded; not run again",
            owed.max(started_before)
        );
        self.end_step(
            index,
            step,
            StepEnd::Failed {
                class: ErrorClass::Cancelled,
                error: error.clone(),
            },
        )
        .await?;
        let reason = format!("step `{}` failed: {error}", step.id);
        Ok(Some(Forward::RollBack(RollbackCause::Failed, reason)))
    }

    /// One attempt: records its start (the action runs only once that is durable), runs the
    /// action, and records an outcome that ends the step; a failure that may be retried is
    /// returned unrecorded.
    async fn attempt(
        &self,
        index: usize,
        step: &Step,
        params: &Value,
        key: [u8; 32],
        attempt: i32,
    ) -> Result<Attempted, RunError> {
        let start = StepStart {
            execution_id: self.record.id,
            index,
            step_id: step.id.clone(),
            action: step.action.clone(),
            attempt,
            idempotency_key: key,
            params_sha256: steps::params_hash(params),
        };
        match self.start_step(start).await? {
            Start::Started => {}
            Start::Stop(stop) => return Ok(Attempted::Over(Some(stop))),
        }
        self.inner.owe((self.record.id, index, false));
        let outcome = self.invoke(&step.action, params, step, key).await;
        self.conclude(index, step, outcome).await
    }

    /// What an invocation's outcome means for the step: success is held to go with the next
    /// record; a cancel or the playbook deadline ends the step and the forward pass.
    async fn conclude(
        &self,
        index: usize,
        step: &Step,
        outcome: Invocation,
    ) -> Result<Attempted, RunError> {
        let (class, error, cause, reason) = match outcome {
            Invocation::Finished(Ok(output)) => {
                let end = StepEnd::Succeeded {
                    output: output.summary,
                };
                self.defer_end(index, step, end);
                return Ok(Attempted::Over(None));
            }
            Invocation::ShuttingDown => return Err(RunError::ShuttingDown),
            Invocation::StepTimeout => {
                return Ok(Attempted::Failed(
                    ErrorClass::Timeout,
                    "step timed out".to_owned(),
                ));
            }
            Invocation::Finished(Err(ActionError::Transient(error))) => {
                return Ok(Attempted::Failed(ErrorClass::Transient, error));
            }
            Invocation::Finished(Err(ActionError::Permanent(error))) => {
                return Ok(Attempted::Failed(ErrorClass::Permanent, error));
            }
            // The action was stopped while it ran: it may have acted, so the rollback undoes
            // this step too.
            Invocation::Cancelled => (
                ErrorClass::Cancelled,
                "cancelled while running",
                RollbackCause::Cancelled,
                "cancelled",
            ),
            Invocation::PlaybookTimeout => (
                ErrorClass::Timeout,
                "playbook timeout exceeded",
                RollbackCause::TimedOut,
                "playbook timeout exceeded",
            ),
        };
        let end = StepEnd::Failed {
            class,
            error: error.to_owned(),
        };
        self.end_step(index, step, end).await?;
        Ok(Attempted::Over(Some(Forward::RollBack(
            cause,
            reason.to_owned(),
        ))))
    }

    /// Records a failed attempt that will be retried, then waits out `delay` (or a cancel);
    /// a stop that came meanwhile ends the forward pass.
    async fn retry_after(
        &self,
        index: usize,
        step: &Step,
        class: ErrorClass,
        error: String,
        delay: Duration,
    ) -> Result<Option<Forward>, RunError> {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.end_step(
            index,
            step,
            StepEnd::Retrying {
                class,
                error,
                delay_ms,
            },
        )
        .await?;
        metrics::counter!("playbookd_step_retries_total", "action" => step.action.clone())
            .increment(1);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = self.run.token.cancelled() => {}
        }
        self.stopped()
    }

    /// Records a step's start; while a SAFE-HALT refuses it, waits for the halt to be cleared
    /// and tries again (or stops for a cancel, the deadline or shutdown).
    async fn start_step(&self, start: StepStart) -> Result<Start, RunError> {
        loop {
            let perf_t0 = std::time::Instant::now();
            let audit = &self.inner.audit;
            let watch = self.inner.safe_halt.watch();
            let (outcome, owed) = match self.take_deferred_before_start() {
                BeforeStart::Admission(admission, started) => {
                    let outcome = steps::record_admission_and_first_start(
                        audit,
                        admission,
                        started,
                        start.clone(),
                    )
                    .await?;
                    (outcome, Vec::new())
                }
                BeforeStart::RunStart(held, owed, started) => {
                    let outcome =
                        steps::record_first_start_after(audit, held, started, start.clone(), watch)
                            .await?;
                    (outcome, owed)
                }
                BeforeStart::Records(held, owed) => {
                    let outcome =
                        steps::record_start_after(audit, held, start.clone(), watch).await?;
                    (outcome, owed)
                }
            };
            tracing::debug!(target: "perf", us = perf_t0.elapsed().as_micros(), "start_step");
            self.settle_all(owed);
            match outcome {
                StartOutcome::Started => return Ok(Start::Started),
                StartOutcome::Refused(halt) => {
                    self.wait_for_halt(&halt, &start.step_id, true).await;
                    if let Some(stop) = self.stopped()? {
                        return Ok(Start::Stop(stop));
                    }
                }
            }
        }
    }

    /// Waits until `halt` may be over: this node's halt is cleared (in memory), or, for a halt
    /// known only from the database, [`HALT_RECHECK`] passed. A forward step also stops waiting
    /// for a cancel or the deadline; an undo waits through those (only shutdown ends it).
    async fn wait_for_halt(&self, halt: &ActiveHalt, step_id: &str, forward: bool) {
        tracing::warn!(execution_id = %self.record.id, step_id, halt = %halt,
            "start refused by SAFE-HALT; waiting for an admin to clear it");
        self.inner.safe_halt.observe(halt.clone());
        let cleared = async {
            if self.inner.safe_halt.is_active() {
                self.inner.safe_halt.wait_clear().await;
            } else {
                tokio::time::sleep(HALT_RECHECK).await;
            }
        };
        if forward {
            tokio::select! {
                () = cleared => {}
                () = self.run.token.cancelled() => {}
                () = sleep_until_deadline(self.deadline) => {}
            }
        } else {
            tokio::select! {
                () = cleared => {}
                () = self.inner.shutdown.cancelled() => {}
            }
        }
    }

    /// Calls the action under the step and playbook deadlines, watching for cancel/shutdown.
    async fn invoke(
        &self,
        action_name: &str,
        params: &Value,
        step: &Step,
        key: [u8; 32],
    ) -> Invocation {
        let Some(action) = self.inner.actions.get(action_name) else {
            return Invocation::Finished(Err(ActionError::Permanent(format!(
                "action `{action_name}` is not enabled on this host"
            ))));
        };
        let step_timeout = step
            .timeout
            .map_or(self.inner.settings.default_step_timeout, |t| t.0);
        let step_deadline = Instant::now() + step_timeout;
        let deadline = self
            .deadline
            .map_or(step_deadline, |d| d.min(step_deadline));
        let context = ActionContext {
            execution_id: self.record.id,
            step_id: step.id.clone(),
            org_id: self.record.org_id.clone(),
            idempotency_key: key,
            deadline,
            cancel: self.run.token.clone(),
        };
        let started = std::time::Instant::now();
        let outcome = tokio::select! {
            result = action.execute(params, &context) => {
                if Instant::now() >= deadline && result.as_ref().is_err_and(ActionError::is_transient) {
                    self.timeout_kind(deadline)
                } else {
                    Invocation::Finished(result)
                }
            }
            () = tokio::time::sleep_until(deadline + DEADLINE_GRACE) => self.timeout_kind(deadline),
            () = self.run.token.cancelled() => {
                if self.run.cancel_requested.load(Ordering::SeqCst) {
                    Invocation::Cancelled
                } else {
                    Invocation::ShuttingDown
                }
            }
        };
        metrics::histogram!("playbookd_step_duration_seconds", "action" => action_name.to_owned())
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    fn timeout_kind(&self, deadline: Instant) -> Invocation {
        if self.deadline == Some(deadline) {
            Invocation::PlaybookTimeout
        } else {
            Invocation::StepTimeout
        }
    }

    /// Holds the end of a step after which nothing acts before the next record.
    fn defer_end(&self, index: usize, step: &Step, end: StepEnd) {
        let deferred = steps::defer_end(&self.inner.audit, self.step_end(index, step, end));
        self.defer(deferred, Some((self.record.id, index, false)));
    }

    async fn end_step(&self, index: usize, step: &Step, end: StepEnd) -> Result<(), RunError> {
        self.flush().await?;
        steps::record_end(&self.inner.audit, self.step_end(index, step, end)).await?;
        self.inner.settle((self.record.id, index, false));
        Ok(())
    }

    /// The record of how step `index` of this run ended.
    fn step_end(&self, index: usize, step: &Step, end: StepEnd) -> StepEndRecord {
        StepEndRecord {
            execution_id: self.record.id,
            index,
            step_id: step.id.clone(),
            action: step.action.clone(),
            end,
        }
    }

    /// Undoes, in reverse order, every step that may have acted: succeeded, still `running`
    /// (interrupted by a crash), or stopped while it ran (cancelled, timed out). `Ok(false)`
    /// when the daemon entered SAFE-HALT.
    async fn roll_back(&self) -> Result<bool, RunError> {
        self.flush().await?;
        let steps = steps::load(&self.inner.store, self.record.id).await?;
        let undone = undos::load(&self.inner.store, self.record.id).await?;
        let playbook = self.playbook.clone();
        for (index, step) in playbook.playbook().steps.iter().enumerate().rev() {
            let Some(record) = steps.get(&index) else {
                continue;
            };
            if !possibly_acted(record) {
                continue;
            }
            let attempts_so_far = match undone.get(&index) {
                Some(undo) => match undo.state {
                    UndoState::Succeeded | UndoState::NotUndoable => continue,
                    UndoState::Failed => return Ok(false),
                    UndoState::Running | UndoState::Pending => undo.attempts,
                },
                None => 0,
            };
            let Rollback::Action { action, params } = &step.rollback else {
                self.end_undo(index, step, UndoEnd::NotUndoable).await?;
                continue;
            };
            if !self
                .undo_step(index, step, action, params, attempts_so_far)
                .await?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One undo with retries; on final failure, SAFE-HALT. Returns whether it succeeded.
    async fn undo_step(
        &self,
        index: usize,
        step: &Step,
        action: &str,
        params: &Value,
        attempts_so_far: i32,
    ) -> Result<bool, RunError> {
        let attempts = step
            .retry
            .map_or(MIN_UNDO_ATTEMPTS, |r| r.attempts.max(MIN_UNDO_ATTEMPTS));
        let started_before = u32::try_from(attempts_so_far).unwrap_or(0);
        let owed_key = (self.record.id, index, true);
        let owed = self.inner.owed(owed_key);
        if owed >= MAX_UNRECORDED_OUTCOMES
            || started_before >= attempts.saturating_add(MAX_RESTARTED_STARTS)
        {
            let error = format!(
                "the undo was started {} times without its outcome being recorded; not run again",
                owed.max(started_before)
            );
            return self.enter_safe_halt(index, step, error).await;
        }
        let backoff = step.retry.map_or(DEFAULT_BACKOFF, |r| r.backoff.0);
        let key = steps::undo_key(self.record.id, &step.id);
        let mut last_error = String::new();
        for attempt in 1..=attempts {
            self.start_undo(index, step).await?;
            // Owed from the recorded start on, as for a step: an undo whose start could not be
            // recorded (the audit writer unavailable, e.g. while a killed daemon's backend still
            // holds the chain) never ran, and counting it halted the node for nothing.
            if attempt == 1 {
                self.inner.owe(owed_key);
            }
            let outcome = match template::render(params, &self.template_context()) {
                Ok(rendered) => self.invoke_undo(action, &rendered, step, key).await?,
                Err(error) => Err(format!("parameters: {error}")),
            };
            match outcome {
                Ok(()) => {
                    self.end_undo(index, step, UndoEnd::Succeeded).await?;
                    self.inner.settle(owed_key);
                    return Ok(true);
                }
                Err(error) => last_error = error,
            }
            if attempt < attempts {
                tokio::select! {
                    () = tokio::time::sleep(retry_delay(backoff, attempt)) => {}
                    () = self.inner.shutdown.cancelled() => return Err(RunError::ShuttingDown),
                }
            }
        }
        self.enter_safe_halt(index, step, last_error).await
    }

    /// Records an undo's start; while a SAFE-HALT refuses it, waits for the clear. A cancel does
    /// not stop a rollback half-way; only shutdown does (the rollback resumes at the next start).
    async fn start_undo(&self, index: usize, step: &Step) -> Result<(), RunError> {
        loop {
            if self.inner.shutdown.is_cancelled() {
                return Err(RunError::ShuttingDown);
            }
            match undos::record_start(
                &self.inner.audit,
                self.record.id,
                index,
                step.id.clone(),
                self.inner.safe_halt.watch(),
            )
            .await?
            {
                StartOutcome::Started => return Ok(()),
                StartOutcome::Refused(halt) => self.wait_for_halt(&halt, &step.id, false).await,
            }
        }
    }

    async fn end_undo(&self, index: usize, step: &Step, end: UndoEnd) -> Result<(), RunError> {
        undos::record_end(
            &self.inner.audit,
            self.record.id,
            index,
            step.id.clone(),
            end,
        )
        .await?;
        Ok(())
    }

    async fn invoke_undo(
        &self,
        action: &str,
        params: &Value,
        step: &Step,
        key: [u8; 32],
    ) -> Result<Result<(), String>, RunError> {
        let Some(undo) = self.inner.actions.get(action) else {
            return Ok(Err(format!(
                "action `{action}` is not enabled on this host"
            )));
        };
        let timeout = step
            .timeout
            .map_or(self.inner.settings.default_step_timeout, |t| t.0);
        let deadline = Instant::now() + timeout;
        let context = ActionContext {
            execution_id: self.record.id,
            step_id: format!("{}:rollback", step.id),
            org_id: self.record.org_id.clone(),
            idempotency_key: key,
            deadline,
            // Only shutdown interrupts an undo: a cancel must not stop a rollback half-way.
            cancel: self.inner.shutdown.child_token(),
        };
        tokio::select! {
            result = undo.execute(params, &context) => Ok(result.map(|_| ()).map_err(|e| e.to_string())),
            () = tokio::time::sleep_until(deadline + DEADLINE_GRACE) => Ok(Err("rollback timed out".into())),
            () = self.inner.shutdown.cancelled() => Err(RunError::ShuttingDown),
        }
    }

    /// SAFE-HALT for a failed undo: always `Ok(false)` once the halt holds in memory; the
    /// halt's row is written now or, failing that, by a background task.
    async fn enter_safe_halt(
        &self,
        index: usize,
        step: &Step,
        error: String,
    ) -> Result<bool, RunError> {
        let cause = HaltCause::FailedUndo {
            execution_id: self.record.id,
            step_index: index,
            step_id: step.id.clone(),
            error,
        };
        let entered = self.inner.safe_halt.enter(cause).await;
        // The halt holds in memory either way: nothing starts this undo again.
        self.inner.settle((self.record.id, index, true));
        match entered {
            Entered::Written(_) => {
                metrics::counter!("playbookd_executions_total",
                    "state" => RunState::SafeHalted.as_str(), "playbook" => self.playbook.playbook().id.clone())
                .increment(1);
                Ok(false)
            }
            Entered::InMemoryOnly(halt) => Err(RunError::Halted(halt.message)),
        }
    }
}

/// What a step's `when:` decided.
enum Condition {
    Run,
    Skip(String),
    Fail(String),
}

/// Whether a step may have acted, so that the rollback must undo it.
fn possibly_acted(record: &StepRecord) -> bool {
    match record.state {
        StepState::Succeeded | StepState::Running => true,
        StepState::Failed => record.error_class.is_some_and(ErrorClass::possibly_done),
        StepState::Pending
        | StepState::Skipped
        | StepState::RolledBack
        | StepState::RollbackFailed => false,
    }
}

/// Sleeps until the playbook deadline (forever when there is none).
async fn sleep_until_deadline(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Exponential backoff with jitter: base·2^(n-1) plus up to 25 %.
fn retry_delay(base: Duration, attempt: u32) -> Duration {
    let exponential = base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
    let jitter_ms = rand::thread_rng().gen_range(0..=exponential.as_millis() / 4 + 1);
    exponential + Duration::from_millis(u64::try_from(jitter_ms).unwrap_or(0))
}
