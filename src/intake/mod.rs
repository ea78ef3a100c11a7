//! Decision intake on decisions.sock: peer credentials, strict decoding, freshness,
//! bindings, storm control, and the one transaction that records the nonce, the execution
//! and its audit event. The reply is written only after that transaction committed.

pub mod decision;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::net::unix::UCred;
use uuid::Uuid;

use self::decision::Decision;
use crate::bindings::{self, CooldownKey, StormControl, Suppressed};
use crate::executor::Executor;
use crate::registry::model::{Binding, InputSpec};
use crate::registry::{ActivePlaybook, Registry};
use crate::safe_halt::SafeHalt;
use crate::store::Store;
use crate::store::audit::{Actor, AuditEvent, AuditHandle};
use crate::store::executions::{self, AdmitError, BindingRecord, NewExecution};
use crate::store::halts::ActiveHalt;
use crate::store::model::Severity;
use crate::store::nonces::{self, FirstUse};
use crate::text;
use crate::unix_socket::{Admission, Busy, LineService, RefusalThrottle, SocketSettings};

/// Longest accepted line, newline excluded.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Undeclared subject keys named in a reply or an audit event.
pub const MAX_REPORTED_KEYS: usize = 16;

/// The reply to one decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    Accepted {
        execution_id: Uuid,
        playbook: String,
        /// Subject keys the playbook does not declare as inputs: not used, not stored, and
        /// not part of the cooldown; named here so the engine learns (at most
        /// [`MAX_REPORTED_KEYS`], each made storable).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        ignored_subject_keys: Vec<String>,
    },
    NoAction {
        reason: String,
    },
    Rejected {
        reason: String,
        /// On a replay of an accepted decision: the execution its first attempt started.
        #[serde(skip_serializing_if = "Option::is_none")]
        execution_id: Option<Uuid>,
    },
    /// Admission control: too many accepted runs wait to start (`intake.max_backlog`).
    /// Nothing was recorded but this refusal; the same decision may be sent again.
    Busy {
        reason: String,
        /// Accepted runs waiting to start when the decision arrived.
        backlog: usize,
    },
}

impl Reply {
    /// A rejection. The reason may quote the peer (a serde error names the field it sent), so
    /// it is made storable here, once: the reply, the audit event and the journal say the same.
    fn rejected(reason: impl AsRef<str>) -> Reply {
        Reply::Rejected {
            reason: text::storable(reason.as_ref(), text::MAX_FIELD_BYTES),
            execution_id: None,
        }
    }

    /// No action, with a reason made storable as for [`Reply::rejected`].
    fn no_action(reason: impl AsRef<str>) -> Reply {
        Reply::NoAction {
            reason: text::storable(reason.as_ref(), text::MAX_FIELD_BYTES),
        }
    }

    fn status(&self) -> &'static str {
        match self {
            Reply::Accepted { .. } => "accepted",
            Reply::NoAction { .. } => "no_action",
            Reply::Rejected { .. } => "rejected",
            Reply::Busy { .. } => "busy",
        }
    }

    /// The metric label: the reason's first words, bounded in cardinality.
    fn reason_label(&self) -> &'static str {
        let reason = match self {
            Reply::Accepted { .. } => return "accepted",
            Reply::Busy { .. } => return "backlog",
            Reply::NoAction { reason } | Reply::Rejected { reason, .. } => reason.as_str(),
        };
        const LABELS: [&str; 16] = [
            "malformed",
            "invalid decision",
            "stale",
            "replay",
            "safe_halt",
            "no binding",
            "binding mismatch",
            "no active version",
            "subject",
            "suppressed",
            "unsigned",
            "bad signature",
            "peer",
            "audit",
            "database",
            "unexpected signature",
        ];
        LABELS
            .into_iter()
            .find(|label| reason.starts_with(label))
            .unwrap_or("other")
    }

    pub fn to_line(&self) -> Vec<u8> {
        let mut line =
            serde_json::to_vec(self).unwrap_or_else(|_| b"{\"status\":\"rejected\"}".to_vec());
        line.push(b'\n');
        line
    }
}

/// `[intake]` settings, resolved.
#[derive(Debug, Clone)]
pub struct IntakeSettings {
    /// The only peers that may send decisions (SO_PEERCRED uid).
    pub allowed_uids: BTreeSet<u32>,
    pub freshness_seconds: u64,
    /// decisions.sock's slots (no reserve) and line deadline.
    pub socket: SocketSettings,
    pub max_accepted_per_second: u32,
    /// Accepted runs allowed to wait for an executor slot; beyond it, `busy`.
    pub max_backlog: usize,
    pub policy_keys: Vec<VerifyingKey>,
}

#[derive(Clone)]
pub struct Intake {
    inner: Arc<Inner>,
}

struct Inner {
    settings: IntakeSettings,
    store: Store,
    audit: AuditHandle,
    registry: Registry,
    safe_halt: SafeHalt,
    executor: Executor,
    storm: StormControl,
    /// Refused peers are recorded at most once per uid per interval.
    peer_refusals: RefusalThrottle,
}

pub struct IntakeParts {
    pub settings: IntakeSettings,
    /// Reads (the nonce table); every write goes through `audit`.
    pub store: Store,
    pub audit: AuditHandle,
    pub registry: Registry,
    pub safe_halt: SafeHalt,
    pub executor: Executor,
}

impl Intake {
    pub fn new(parts: IntakeParts) -> Intake {
        let storm = StormControl::new(parts.settings.max_accepted_per_second);
        Intake {
            inner: Arc::new(Inner {
                settings: parts.settings,
                store: parts.store,
                audit: parts.audit,
                registry: parts.registry,
                safe_halt: parts.safe_halt,
                executor: parts.executor,
                storm,
                peer_refusals: RefusalThrottle::default(),
            }),
        }
    }
}

/// decisions.sock, served by [`crate::unix_socket::serve`]: one decision per line, from the peers of
/// `intake.allowed_uids` only.
impl LineService for Intake {
    type Peer = u32;
    const MAX_LINE_BYTES: usize = MAX_LINE_BYTES;
    const LINE_HOLDS: &'static str = "JSON decision";
    const LINE_DEADLINE_KEY: &'static str = "intake.idle_timeout_seconds";

    fn socket(&self) -> SocketSettings {
        self.inner.settings.socket
    }

    /// Admits a peer whose uid is in `intake.allowed_uids`. The daemon's own uid is not
    /// implicitly allowed: a program the daemon runs (an `exec` step) would otherwise be a
    /// policy engine, able to start any bound playbook.
    fn admit(&self, credentials: UCred) -> Admission<u32> {
        let (uid, gid) = (credentials.uid(), credentials.gid());
        if self.inner.settings.allowed_uids.contains(&uid) {
            return Admission::Serve {
                peer: uid,
                privileged: false,
            };
        }
        let reason = format!(
            "peer uid {uid} (gid {gid}) is not allowed to send decisions: add it to intake.allowed_uids in playbookd.toml and restart playbookd"
        );
        tracing::warn!(uid, gid, "decision peer refused");
        metrics::counter!("playbookd_decisions_total", "status" => "rejected", "reason" => "peer")
            .increment(1);
        self.inner
            .peer_refusals
            .record(uid, &self.inner.audit, |refusals| {
                AuditEvent::new("decision.peer_refused", Actor::Uid(uid))
                    .with("gid", gid)
                    .with("refusals", refusals)
            });
        Admission::Refuse(Reply::rejected(reason).to_line())
    }

    fn busy(&self, busy: Busy) -> Vec<u8> {
        Reply::rejected(busy_reason(busy)).to_line()
    }

    async fn answer(&self, line: &[u8], uid: &u32) -> Vec<u8> {
        self.handle(line, *uid).await.to_line()
    }

    async fn malformed(&self, reason: String, uid: &u32) -> Vec<u8> {
        self.refuse(reason, *uid, None).await.to_line()
    }
}

impl Intake {
    /// Processes one line and returns its reply; every outcome is audited.
    pub async fn handle(&self, line: &[u8], peer_uid: u32) -> Reply {
        let (decision, raw) = match decision::decode(line) {
            Ok(decoded) => decoded,
            Err(reason) => return self.refuse(reason, peer_uid, None).await,
        };
        let reply = self.judge(&decision, &raw, peer_uid).await;
        if !matches!(reply, Reply::Accepted { .. }) {
            self.record_refusal(&reply, peer_uid, Some(&decision)).await;
        }
        count(&reply);
        reply
    }

    /// The checks in order; the first that fails gives the reply. Replay comes before SAFE-HALT
    /// and storm control: an engine that resends a decision after a lost reply must learn that
    /// its first attempt was accepted (and as which execution), not that a cooldown holds.
    ///
    /// A fresh decision pays no separate nonce lookup: the admitting transaction inserts the
    /// nonce only if it is unused and reads its first use when it is not, so a replay that
    /// passes every later check is answered from there. A decision that some later check
    /// refuses (or that the admitting transaction refuses for a SAFE-HALT or an unavailable
    /// log) has its nonce looked up before that reply is given, so the order above holds for
    /// every outcome.
    async fn judge(&self, decision: &Decision, raw: &Value, peer_uid: u32) -> Reply {
        let perf_t0 = std::time::Instant::now();
        if let Err(reply) = self.check_origin(decision, raw) {
            return reply;
        }
        let perf_origin = perf_t0.elapsed().as_micros();
        let verdict = match self.evaluate(decision) {
            Ok(bound) => self.accept(decision, bound, peer_uid).await,
            Err(refusal) => Err(refusal),
        };
        // Any refusal: unless the nonce was used before (the replay reply) or cannot be checked.
        let reply = match verdict {
            Ok(reply) => reply,
            Err(refusal) => self.check_replay(decision).await.unwrap_or(refusal),
        };
        tracing::debug!(target: "perf", origin_us = perf_origin, total_us = perf_t0.elapsed().as_micros(), "intake");
        reply
    }

    /// Signature (when policy keys are configured) and freshness.
    fn check_origin(&self, decision: &Decision, raw: &Value) -> Result<(), Reply> {
        let settings = &self.inner.settings;
        if !settings.policy_keys.is_empty() {
            decision::verify_signature(raw, &settings.policy_keys).map_err(Reply::rejected)?;
        } else if decision.signature.is_some() {
            // The engine signs because it expects its decisions to be authenticated; answering
            // as if they were would hide that this host checks nothing (fail closed).
            return Err(Reply::rejected(
                "unexpected signature: this host has no intake.policy_keys, so it cannot check it; configure intake.policy_keys with the policy engine's public key, or stop signing",
            ));
        }
        let issued_at = decision::issued_at(decision).map_err(Reply::rejected)?;
        if !decision::is_fresh(
            issued_at,
            OffsetDateTime::now_utc(),
            settings.freshness_seconds,
        ) {
            return Err(Reply::rejected(format!(
                "stale: issued_at is more than {} s from now (intake.freshness_seconds); send a new decision with a new nonce",
                settings.freshness_seconds
            )));
        }
        Ok(())
    }

    /// `Some(reply)` when the nonce was used before, or cannot be checked.
    async fn check_replay(&self, decision: &Decision) -> Option<Reply> {
        match nonces::first_use(&self.inner.store, &decision.nonce).await {
            Ok(None) => None,
            Ok(Some(first)) => Some(replay(decision, Some(first))),
            Err(error) => {
                tracing::error!(error = %crate::store::audit::error_chain(&error), "nonce not checked");
                Some(Reply::rejected(
                    "database unavailable: the nonce cannot be checked; nothing was started; retry the same line",
                ))
            }
        }
    }

    /// The checks against this node's state (SAFE-HALT, bindings, registry, storm control), in
    /// the order a reason is most useful. The admitting transaction reads the SAFE-HALT again.
    fn evaluate(&self, decision: &Decision) -> Result<Bound, Reply> {
        if let Some(halt) = self.inner.safe_halt.active() {
            return Err(Reply::rejected(halted_reason(&halt)));
        }
        let snapshot = self.inner.registry.catalog();
        let binding = bindings::find(
            snapshot.bindings(),
            &decision.policy,
            &decision.outcome,
            &decision.org_id,
        )
        .cloned()
        .ok_or_else(|| {
            Reply::no_action(format!(
                "no binding for policy `{}`, outcome `{}`, org `{}`: add one to the signed bindings file (paths.bindings) and run `playbookd ctl reload`",
                decision.policy, decision.outcome, decision.org_id
            ))
        })?;
        if let Some(expected) = &decision.playbook
            && expected != &binding.playbook
        {
            return Err(Reply::rejected(format!(
                "binding mismatch: the decision names `{expected}`, the local binding `{}`; the policy engine and the bindings file (paths.bindings) disagree",
                binding.playbook
            )));
        }
        let playbook = snapshot.active(&binding.playbook).ok_or_else(|| {
            Reply::no_action(format!(
                "no active version of playbook `{}`: `playbookd verify` says why its file was refused; install a signed version and run `playbookd ctl reload`",
                binding.playbook
            ))
        })?;
        let inputs = &playbook.playbook().inputs;
        decision::check_subject(&decision.subject, inputs).map_err(Reply::rejected)?;
        decision::check_exec_arguments(decision, playbook.playbook()).map_err(Reply::rejected)?;
        // Before storm control: a refused decision takes no cooldown or rate slot.
        let backlog = self.inner.executor.backlog();
        let limit = self.inner.settings.max_backlog;
        if backlog >= limit {
            return Err(Reply::Busy {
                reason: format!(
                    "busy: {backlog} accepted runs are waiting to start (intake.max_backlog = {limit}); nothing was recorded, retry later or escalate"
                ),
                backlog,
            });
        }
        let cooldown = CooldownKey::new(&binding, inputs, &decision.subject);
        self.inner
            .storm
            .admit(&binding, &cooldown)
            .map_err(|suppressed| {
                metrics::counter!("playbookd_decisions_suppressed_total").increment(1);
                Reply::no_action(match suppressed {
                    Suppressed::Cooldown { seconds_left } => {
                        format!(
                            "suppressed: cooldown for this subject (the binding's cooldown_seconds), {seconds_left} s left"
                        )
                    }
                    Suppressed::RateLimit => format!(
                        "suppressed: more than {} decisions accepted this second (intake.max_accepted_per_second); retry",
                        self.inner.settings.max_accepted_per_second
                    ),
                })
            })?;
        Ok(Bound {
            binding,
            playbook,
            cooldown,
        })
    }

    /// Records nonce, execution and event in one transaction, then hands the run over.
    ///
    /// Only the playbook's declared inputs are kept of the subject: they are all a run can use
    /// (templates and `when` name declared inputs only), and they were checked. Other keys are
    /// reported back (`ignored_subject_keys`) and in the journal, never stored, so a key the
    /// policy engine made up (a NUL byte included) cannot reach the execution row.
    ///
    /// `Ok` is the reply (accepted, or a replay the admitting transaction found); `Err` a
    /// refusal that [`Intake::judge`] answers only once the nonce is known to be unused.
    async fn accept(
        &self,
        decision: &Decision,
        bound: Bound,
        peer_uid: u32,
    ) -> Result<Reply, Reply> {
        let Bound {
            binding,
            playbook,
            cooldown,
        } = bound;
        let inputs = &playbook.playbook().inputs;
        let (kept, ignored) = split_subject(&decision.subject, inputs);
        let mut decision = decision.clone();
        decision.subject = kept;
        let execution_id = Uuid::new_v4();
        let label = format!("{}@{}", playbook.playbook().id, playbook.version());
        let Ok(severity) = Severity::decode(&decision.severity) else {
            return Err(Reply::rejected(format!(
                "invalid decision: severity `{}` is not one of low, medium, moderate, high, critical",
                decision.severity
            )));
        };
        let new = NewExecution {
            execution_id,
            playbook_id: playbook.playbook().id.clone(),
            version: playbook.version(),
            sha256: playbook.sha256(),
            nonce: decision.nonce.clone(),
            decision_id: decision.decision_id.clone(),
            policy: decision.policy.clone(),
            outcome: decision.outcome.clone(),
            org_id: decision.org_id.clone(),
            severity,
            subject: decision.subject.clone(),
            requested_by_uid: peer_uid,
            binding: BindingRecord {
                policy: binding.policy.clone(),
                outcome: binding.outcome.clone(),
                org_id: binding.org_id.clone(),
                playbook: binding.playbook.clone(),
                require_approval: binding.require_approval,
            },
            ignored_subject_keys: ignored.clone(),
        };
        // The executor sends the admission with the run's first records (one COMMIT), or alone
        // when the run cannot start at once; the reply waits for that COMMIT either way.
        let executions::Admission {
            record,
            ahead,
            admitted,
        } = executions::prepare_admit(&self.inner.audit, new, self.inner.safe_halt.watch());
        let (committed, run_admitted) = tokio::sync::oneshot::channel();
        self.inner
            .executor
            .submit_admitting(record, ahead, run_admitted);
        let outcome = admitted.outcome().await;
        let _ = committed.send(outcome.is_ok());
        match outcome {
            Ok(()) => {
                tracing::info!(execution_id = %execution_id, playbook_id = %playbook.playbook().id,
                    org_id = %decision.org_id, decision_id = %decision.decision_id,
                    ignored_subject_keys = %ignored.join(", "), "decision accepted");
                Ok(Reply::Accepted {
                    execution_id,
                    playbook: label,
                    ignored_subject_keys: ignored,
                })
            }
            Err(error) => {
                self.inner.storm.release(&cooldown);
                match error {
                    AdmitError::Replay(Some(first)) => Ok(replay(&decision, Some(first))),
                    AdmitError::Replay(None) => {
                        // A unique violation (a nonce still on a run but pruned from the nonce
                        // table): nothing could be read in that transaction.
                        let first = nonces::first_use(&self.inner.store, &decision.nonce)
                            .await
                            .ok()
                            .flatten();
                        Ok(replay(&decision, first))
                    }
                    AdmitError::Halted(halt) => {
                        self.inner.safe_halt.observe(*halt.clone());
                        Err(Reply::rejected(halted_reason(&halt)))
                    }
                    AdmitError::Unavailable(error) => {
                        tracing::error!(error = %crate::store::audit::error_chain(&error), "decision not recorded");
                        Err(Reply::rejected(
                            "audit log unavailable: nothing was started; retry the same line (/v1/health says when the database is back)",
                        ))
                    }
                }
            }
        }
    }

    async fn refuse(&self, reason: String, peer_uid: u32, decision: Option<&Decision>) -> Reply {
        let reply = Reply::rejected(reason);
        self.record_refusal(&reply, peer_uid, decision).await;
        count(&reply);
        reply
    }

    async fn record_refusal(&self, reply: &Reply, peer_uid: u32, decision: Option<&Decision>) {
        let (Reply::NoAction { reason }
        | Reply::Rejected { reason, .. }
        | Reply::Busy { reason, .. }) = reply
        else {
            return;
        };
        let mut event = AuditEvent::new("decision.received", Actor::Uid(peer_uid))
            .with("status", reply.status())
            .with("reason", reason.as_str());
        if let Reply::Busy { backlog, .. } = reply {
            event = event.with("backlog", *backlog);
        }
        if let Some(decision) = decision {
            event = event
                .with("decision_id", decision.decision_id.as_str())
                .with("policy", decision.policy.as_str())
                .with("outcome", decision.outcome.as_str())
                .with("org_id", decision.org_id.as_str())
                .with("nonce", decision.nonce.as_str());
        }
        if let Err(error) = self.inner.audit.append(event).await {
            tracing::warn!(error = %error, "refused decision not recorded in the audit log");
        }
        tracing::info!(status = reply.status(), reason = %reason, peer_uid, "decision refused");
    }
}

/// A decision that passed every check against this node's state, with its storm-control slot.
struct Bound {
    binding: Binding,
    playbook: Arc<ActivePlaybook>,
    cooldown: CooldownKey,
}

/// The subject's declared inputs, and the names of the other keys (bounded, storable).
fn split_subject(
    subject: &Map<String, Value>,
    inputs: &BTreeMap<String, InputSpec>,
) -> (Map<String, Value>, Vec<String>) {
    let mut kept = Map::new();
    let mut ignored = Vec::new();
    for (key, value) in subject {
        if inputs.contains_key(key) {
            kept.insert(key.clone(), value.clone());
        } else if ignored.len() < MAX_REPORTED_KEYS {
            ignored.push(text::storable(key, 64));
        }
    }
    (kept, ignored)
}

/// The reply to a used nonce. The first execution is named only to the same decision (same
/// `decision_id`): that is the engine retrying after a lost reply, and it may now stop
/// retrying; a different decision reusing the nonce learns nothing about the first.
fn replay(decision: &Decision, first: Option<FirstUse>) -> Reply {
    match first {
        Some(first) if first.decision_id == decision.decision_id => Reply::Rejected {
            reason: format!(
                "replay: this decision was accepted before as execution {}; nothing new was started",
                first.execution_id
            ),
            execution_id: Some(first.execution_id),
        },
        Some(_) | None => Reply::rejected(
            "replay: this nonce has been used before by another decision; send a fresh nonce",
        ),
    }
}

fn busy_reason(busy: Busy) -> String {
    match busy {
        Busy::PerUid { uid, limit } => format!(
            "busy: uid {uid} already holds {limit} connections (intake.max_connections_per_uid); reuse one or retry"
        ),
        Busy::Full { limit } => {
            format!("busy: all {limit} connections are in use (intake.max_connections); retry")
        }
    }
}

fn count(reply: &Reply) {
    metrics::counter!("playbookd_decisions_total", "status" => reply.status(), "reason" => reply.reason_label())
        .increment(1);
}

/// The refusal reason while a SAFE-HALT is in force: what, since when, and how it is cleared.
fn halted_reason(halt: &ActiveHalt) -> String {
    format!(
        "safe_halt: {halt}; nothing new runs until an admin clears it with `{}`",
        halt.clear_command()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_quoting_a_nul_field_name_is_stored_escaped() {
        let error = decision::decode(br#"{"\u0000": 1}"#).unwrap_err();
        assert!(
            error.contains('\0'),
            "serde quotes the field as sent: {error:?}"
        );
        let Reply::Rejected { reason, .. } = Reply::rejected(error) else {
            panic!("not a rejection");
        };
        assert!(reason.contains("unknown field `\\u{0}`"), "{reason}");
        assert!(text::is_storable(&reason, text::MAX_FIELD_BYTES));
    }
}
