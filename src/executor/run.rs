//! One execution's life: steps in order, then (if needed) rollback in reverse order.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;
use serde_json::Value;
use tokio::time::Instant;

use super::record::{self, StepEnd, StepStart, UndoState};
use super::state::{RollbackCause, RunState, StepState};
use super::{ExecutionRecord, Inner, RunError, RunHandle, RunSlot};
use crate::actions::{ActionContext, ActionError, ActionOutput};
use crate::approvals::{GateRequest, Verdict};
use crate::registry::ActivePlaybook;
use crate::registry::model::{Rollback, Step};
use crate::registry::template::{self, TemplateContext};
use crate::registry::when;
use crate::store::audit::{Actor, AuditEvent};

/// Stored step outputs are cut to this many bytes of JSON.
const MAX_OUTPUT_BYTES: usize = 8 * 1024;
/// Undo actions get at least this many attempts before the daemon halts.
const MIN_UNDO_ATTEMPTS: u32 = 3;
const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);
/// Past the step deadline the executor stops waiting even if the action has not.
const DEADLINE_GRACE: Duration = Duration::from_millis(500);

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

pub(super) struct Runner<'a> {
    inner: &'a Inner,
    record: ExecutionRecord,
    playbook: Arc<ActivePlaybook>,
    run: RunHandle,
    deadline: Option<Instant>,
    /// None while parked at an approval gate.
    slot: Option<RunSlot>,
}

impl<'a> Runner<'a> {
    pub(super) fn new(
        inner: &'a Inner,
        record: ExecutionRecord,
        playbook: Arc<ActivePlaybook>,
        run: RunHandle,
        slot: RunSlot,
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
        }
    }

    pub(super) async fn run(&mut self) -> Result<(), RunError> {
        let cause = match self.record.state {
            RunState::RollingBack => self.record.rollback_cause.unwrap_or(RollbackCause::Failed),
            _ => {
                if self.record.state == RunState::Pending {
                    self.set_state(RunState::Running, "execution.started")
                        .await?;
                }
                match self.forward().await? {
                    Forward::Completed => {
                        self.set_state(RunState::Completed, "execution.completed")
                            .await?;
                        return Ok(());
                    }
                    Forward::RollBack(cause, reason) => {
                        record::begin_rollback(&self.inner.audit, self.record.id, cause, reason)
                            .await?;
                        cause
                    }
                }
            }
        };
        if self.roll_back().await? {
            let state = cause.terminal_state();
            self.set_state(state, "execution.rolled_back").await?;
        }
        Ok(())
    }

    async fn set_state(&self, state: RunState, event_type: &'static str) -> Result<(), RunError> {
        let event = AuditEvent::new(event_type, Actor::System).with(
            "playbook",
            format!(
                "{}@{}",
                self.playbook.playbook().id,
                self.playbook.version()
            ),
        );
        record::set_run_state(&self.inner.audit, self.record.id, state, event).await?;
        if state.is_terminal() {
            metrics::counter!("playbookd_executions_total",
                "state" => state.as_str(), "playbook" => self.playbook.playbook().id.clone())
            .increment(1);
            tracing::info!(execution_id = %self.record.id, playbook_id = %self.playbook.playbook().id,
                org_id = %self.record.org_id, state = state.as_str(), "execution finished");
        }
        Ok(())
    }

    async fn forward(&mut self) -> Result<Forward, RunError> {
        let steps = record::load_steps(&self.inner.store, self.record.id).await?;
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
            if let Some(reason) = self.skip_reason(step) {
                self.end_step(index, step, StepEnd::Skipped { reason })
                    .await?;
                continue;
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

    /// Waits out a SAFE-HALT; reports a cancel or an expired playbook deadline.
    async fn interruption(&self) -> Result<Option<Forward>, RunError> {
        if self.inner.safe_halt.is_active() {
            tracing::warn!(execution_id = %self.record.id, "SAFE-HALT active: the next step waits");
            tokio::select! {
                () = self.inner.safe_halt.wait_clear() => {}
                () = self.run.token.cancelled() => {}
            }
        }
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

    /// `Some(reason)` when the step's `when:` is false (or cannot be evaluated: fail closed).
    fn skip_reason(&self, step: &Step) -> Option<String> {
        let condition = step.when.as_deref()?;
        let outcome = when::parse(condition).and_then(|expr| expr.eval(&self.template_context()));
        match outcome {
            Ok(true) => None,
            Ok(false) => Some(format!("when `{condition}` is false")),
            Err(error) => Some(format!(
                "when `{condition}` could not be evaluated: {error}"
            )),
        }
    }

    async fn pass_gate(&mut self, index: usize, step: &Step) -> Result<Option<Forward>, RunError> {
        let Some(spec) = crate::actions::spec(&step.action) else {
            return Ok(Some(self.fail_unknown_action(index, step).await?));
        };
        let risk = step.risk.unwrap_or(spec.default_risk);
        let Some(required) =
            crate::approvals::required_approvals(risk, self.record.require_approval)
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
            playbook: format!(
                "{}@{}",
                self.playbook.playbook().id,
                self.playbook.version()
            ),
            params,
            expires_after: self
                .playbook
                .playbook()
                .approval
                .and_then(|a| a.expires)
                .map_or(crate::approvals::DEFAULT_EXPIRY, |d| d.0),
        };
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
            class: "permanent",
            error: reason.clone(),
        };
        self.end_step(index, step, end).await?;
        Ok(Some(Forward::RollBack(RollbackCause::Rejected, reason)))
    }

    async fn fail_unknown_action(&self, index: usize, step: &Step) -> Result<Forward, RunError> {
        let error = format!("action `{}` is not available", step.action);
        self.end_step(
            index,
            step,
            StepEnd::Failed {
                class: "permanent",
                error: error.clone(),
            },
        )
        .await?;
        Ok(Forward::RollBack(RollbackCause::Failed, error))
    }

    /// Runs one step to success or final failure, retrying transient errors.
    async fn run_step(
        &self,
        index: usize,
        step: &Step,
        prior_attempts: i32,
    ) -> Result<Option<Forward>, RunError> {
        let params = match template::render(&step.params, &self.template_context()) {
            Ok(params) => params,
            Err(error) => {
                let error = format!("parameters: {error}");
                self.end_step(
                    index,
                    step,
                    StepEnd::Failed {
                        class: "permanent",
                        error: error.clone(),
                    },
                )
                .await?;
                return Ok(Some(Forward::RollBack(RollbackCause::Failed, error)));
            }
        };
        let max_attempts = step.retry.map_or(1, |r| r.attempts.max(1));
        let backoff = step.retry.map_or(DEFAULT_BACKOFF, |r| r.backoff.0);
        let key = record::step_key(self.record.id, &step.id);
        for (attempt_here, attempt) in (1..=max_attempts).zip(prior_attempts + 1..) {
            let start = StepStart {
                execution_id: self.record.id,
                index,
                step_id: step.id.clone(),
                action: step.action.clone(),
                attempt,
                idempotency_key: key,
                params: params.clone(),
            };
            record::record_step_start(&self.inner.audit, start).await?;
            let outcome = self.invoke(&step.action, &params, step, key).await;
            let (class, error) = match outcome {
                Invocation::Finished(Ok(output)) => {
                    let end = StepEnd::Succeeded {
                        output: bounded(output.summary),
                    };
                    self.end_step(index, step, end).await?;
                    return Ok(None);
                }
                Invocation::ShuttingDown => return Err(RunError::ShuttingDown),
                Invocation::Cancelled => {
                    self.end_step(
                        index,
                        step,
                        StepEnd::Failed {
                            class: "cancelled",
                            error: "cancelled".into(),
                        },
                    )
                    .await?;
                    return Ok(Some(Forward::RollBack(
                        RollbackCause::Cancelled,
                        "cancelled".into(),
                    )));
                }
                Invocation::PlaybookTimeout => {
                    let error = "playbook timeout exceeded".to_owned();
                    self.end_step(
                        index,
                        step,
                        StepEnd::Failed {
                            class: "timeout",
                            error: error.clone(),
                        },
                    )
                    .await?;
                    return Ok(Some(Forward::RollBack(RollbackCause::TimedOut, error)));
                }
                Invocation::StepTimeout => ("timeout", "step timed out".to_owned()),
                Invocation::Finished(Err(ActionError::Transient(error))) => ("transient", error),
                Invocation::Finished(Err(ActionError::Permanent(error))) => ("permanent", error),
            };
            if class != "permanent" && attempt_here < max_attempts {
                let delay = retry_delay(backoff, attempt_here);
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
                if let Some(stop) = self.interruption().await? {
                    return Ok(Some(stop));
                }
                continue;
            }
            let reason = format!("step `{}` failed ({class}): {error}", step.id);
            self.end_step(index, step, StepEnd::Failed { class, error })
                .await?;
            return Ok(Some(Forward::RollBack(RollbackCause::Failed, reason)));
        }
        Ok(None)
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

    async fn end_step(&self, index: usize, step: &Step, end: StepEnd) -> Result<(), RunError> {
        record::record_step_end(
            &self.inner.audit,
            self.record.id,
            index,
            step.id.clone(),
            step.action.clone(),
            end,
        )
        .await?;
        Ok(())
    }

    /// Undoes completed steps in reverse order. `Ok(false)` when the daemon entered SAFE-HALT.
    async fn roll_back(&self) -> Result<bool, RunError> {
        let steps = record::load_steps(&self.inner.store, self.record.id).await?;
        let undone = record::load_undo_states(&self.inner.store, self.record.id).await?;
        let playbook = self.playbook.clone();
        for (index, step) in playbook.playbook().steps.iter().enumerate().rev() {
            if steps.get(&index).map(|s| s.state) != Some(StepState::Succeeded) {
                continue;
            }
            match undone.get(&index) {
                Some(UndoState::Succeeded | UndoState::NotUndoable) => continue,
                Some(UndoState::Failed) => return Ok(false),
                Some(UndoState::Running) | None => {}
            }
            let Rollback::Action { action, params } = &step.rollback else {
                record::record_undo(
                    &self.inner.audit,
                    self.record.id,
                    index,
                    step.id.clone(),
                    UndoState::NotUndoable,
                    None,
                )
                .await?;
                continue;
            };
            if !self.undo_step(index, step, action, params).await? {
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
    ) -> Result<bool, RunError> {
        let attempts = step
            .retry
            .map_or(MIN_UNDO_ATTEMPTS, |r| r.attempts.max(MIN_UNDO_ATTEMPTS));
        let backoff = step.retry.map_or(DEFAULT_BACKOFF, |r| r.backoff.0);
        let key = record::undo_key(self.record.id, &step.id);
        let mut last_error = String::new();
        for attempt in 1..=attempts {
            if self.inner.safe_halt.is_active() {
                tokio::select! {
                    () = self.inner.safe_halt.wait_clear() => {}
                    () = self.inner.shutdown.cancelled() => return Err(RunError::ShuttingDown),
                }
            }
            if self.inner.shutdown.is_cancelled() {
                return Err(RunError::ShuttingDown);
            }
            record::record_undo(
                &self.inner.audit,
                self.record.id,
                index,
                step.id.clone(),
                UndoState::Running,
                None,
            )
            .await?;
            let outcome = match template::render(params, &self.template_context()) {
                Ok(rendered) => self.invoke_undo(action, &rendered, step, key).await?,
                Err(error) => Err(format!("parameters: {error}")),
            };
            match outcome {
                Ok(()) => {
                    record::record_undo(
                        &self.inner.audit,
                        self.record.id,
                        index,
                        step.id.clone(),
                        UndoState::Succeeded,
                        None,
                    )
                    .await?;
                    return Ok(true);
                }
                Err(error) => last_error = error,
            }
            if attempt < attempts {
                tokio::time::sleep(retry_delay(backoff, attempt)).await;
            }
        }
        self.enter_safe_halt(index, step, last_error).await?;
        Ok(false)
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

    async fn enter_safe_halt(
        &self,
        index: usize,
        step: &Step,
        error: String,
    ) -> Result<(), RunError> {
        let halt = crate::safe_halt::enter(
            &self.inner.audit,
            self.record.id,
            index,
            &step.id,
            format!(
                "rollback of step `{}` in execution {} failed: {error}",
                step.id, self.record.id
            ),
        )
        .await?;
        self.inner.safe_halt.entered(halt);
        metrics::counter!("playbookd_executions_total",
            "state" => RunState::SafeHalted.as_str(), "playbook" => self.playbook.playbook().id.clone())
        .increment(1);
        Ok(())
    }
}

/// Exponential backoff with jitter: base·2^(n-1) plus up to 25 %.
fn retry_delay(base: Duration, attempt: u32) -> Duration {
    let exponential = base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
    let jitter_ms = rand::thread_rng().gen_range(0..=exponential.as_millis() / 4 + 1);
    exponential + Duration::from_millis(u64::try_from(jitter_ms).unwrap_or(0))
}

/// Keeps stored outputs small: a large summary is replaced by its size and head.
fn bounded(summary: Value) -> Value {
    let text = summary.to_string();
    if text.len() <= MAX_OUTPUT_BYTES {
        return summary;
    }
    let mut cut = MAX_OUTPUT_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    serde_json::json!({"truncated": true, "bytes": text.len(), "head": &text[..cut]})
}
