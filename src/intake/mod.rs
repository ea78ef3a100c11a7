//! Decision intake on decisions.sock: peer credentials, strict decoding, freshness,
//! bindings, storm control, and the one transaction that records the nonce, the execution
//! and its audit event. The reply is written only after that transaction committed.

pub mod decision;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::decision::Decision;
use crate::bindings::{self, StormControl, Suppressed};
use crate::executor::Executor;
use crate::registry::model::Binding;
use crate::registry::{ActivePlaybook, Registry};
use crate::safe_halt::SafeHalt;
use crate::store::audit::{Actor, AuditEvent, AuditHandle};
use crate::store::executions::{self, AdmitError, BindingRecord, NewExecution};
use crate::store::halts::{ActiveHalt, CLEAR_COMMAND};
use crate::store::model::Severity;
use crate::unix_socket::{self, Request};

/// Longest accepted line, newline excluded.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The reply to one decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    Accepted {
        execution_id: Uuid,
        playbook: String,
    },
    NoAction {
        reason: String,
    },
    Rejected {
        reason: String,
    },
}

impl Reply {
    fn rejected(reason: impl Into<String>) -> Reply {
        Reply::Rejected {
            reason: reason.into(),
        }
    }

    fn no_action(reason: impl Into<String>) -> Reply {
        Reply::NoAction {
            reason: reason.into(),
        }
    }

    fn status(&self) -> &'static str {
        match self {
            Reply::Accepted { .. } => "accepted",
            Reply::NoAction { .. } => "no_action",
            Reply::Rejected { .. } => "rejected",
        }
    }

    /// The metric label: the reason's first words, bounded in cardinality.
    fn reason_label(&self) -> &'static str {
        let reason = match self {
            Reply::Accepted { .. } => return "accepted",
            Reply::NoAction { reason } | Reply::Rejected { reason } => reason.as_str(),
        };
        const LABELS: [&str; 14] = [
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
    pub allowed_uids: BTreeSet<u32>,
    pub freshness_seconds: u64,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub max_accepted_per_second: u32,
    pub policy_keys: Vec<VerifyingKey>,
}

#[derive(Clone)]
pub struct Intake {
    inner: Arc<Inner>,
}

struct Inner {
    settings: IntakeSettings,
    audit: AuditHandle,
    registry: Registry,
    safe_halt: SafeHalt,
    executor: Executor,
    storm: StormControl,
    own_uid: u32,
}

pub struct IntakeParts {
    pub settings: IntakeSettings,
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
                audit: parts.audit,
                registry: parts.registry,
                safe_halt: parts.safe_halt,
                executor: parts.executor,
                storm,
                own_uid: nix::unistd::geteuid().as_raw(),
            }),
        }
    }

    /// Accepts connections until `shutdown`; each connection is served by its own task.
    pub async fn serve(self, listener: UnixListener, shutdown: CancellationToken) {
        let max_connections = self.inner.settings.max_connections;
        let stop = shutdown.clone();
        unix_socket::accept_loop(
            listener,
            max_connections,
            shutdown,
            Reply::rejected("busy: too many connections; retry").to_line(),
            move |stream| {
                let intake = self.clone();
                let stop = stop.clone();
                async move { intake.connection(stream, stop).await }
            },
        )
        .await;
    }

    async fn connection(&self, stream: UnixStream, shutdown: CancellationToken) {
        let peer = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(error) => {
                tracing::warn!(error = %error, "no peer credentials; connection dropped");
                return;
            }
        };
        let (read, mut write) = stream.into_split();
        if let Err(reason) = self.check_peer(peer.uid(), peer.gid()).await {
            let _ = write.write_all(&Reply::rejected(reason).to_line()).await;
            return;
        }
        let uid = peer.uid();
        let idle = self.inner.settings.idle_timeout;
        unix_socket::answer_lines(
            read,
            write,
            MAX_LINE_BYTES,
            idle,
            &shutdown,
            |request| async move {
                let reply = match request {
                    Request::Line(line) => self.handle(&line, uid).await,
                    Request::TooLong => {
                        let reason = format!("malformed: line longer than {MAX_LINE_BYTES} bytes");
                        self.refuse(reason, uid, None).await
                    }
                };
                reply.to_line()
            },
        )
        .await;
    }

    async fn check_peer(&self, uid: u32, gid: u32) -> Result<(), String> {
        if uid == self.inner.own_uid || self.inner.settings.allowed_uids.contains(&uid) {
            return Ok(());
        }
        let reason = format!("peer uid {uid} (gid {gid}) is not allowed to send decisions");
        tracing::warn!(uid, gid, "decision peer refused");
        let event = AuditEvent::new("decision.peer_refused", Actor::Uid(uid)).with("gid", gid);
        if let Err(error) = self.inner.audit.append(event).await {
            tracing::warn!(error = %error, "peer refusal not recorded");
        }
        metrics::counter!("playbookd_decisions_total", "status" => "rejected", "reason" => "peer")
            .increment(1);
        Err(reason)
    }

    /// Processes one line and returns its reply; every outcome is audited.
    pub async fn handle(&self, line: &[u8], peer_uid: u32) -> Reply {
        let (decision, raw) = match decision::decode(line) {
            Ok(decoded) => decoded,
            Err(reason) => return self.refuse(reason, peer_uid, None).await,
        };
        let reply = match self.evaluate(&decision, &raw) {
            Ok((binding, playbook)) => self.accept(&decision, &binding, &playbook, peer_uid).await,
            Err(reply) => reply,
        };
        if !matches!(reply, Reply::Accepted { .. }) {
            self.record_refusal(&reply, peer_uid, Some(&decision)).await;
        }
        count(&reply);
        reply
    }

    /// Every check that needs no database, in the order a reason is most useful.
    fn evaluate(
        &self,
        decision: &Decision,
        raw: &Value,
    ) -> Result<(Binding, Arc<ActivePlaybook>), Reply> {
        let settings = &self.inner.settings;
        if !settings.policy_keys.is_empty() {
            decision::verify_signature(raw, &settings.policy_keys).map_err(Reply::rejected)?;
        }
        let issued_at = decision::issued_at(decision).map_err(Reply::rejected)?;
        if !decision::is_fresh(
            issued_at,
            OffsetDateTime::now_utc(),
            settings.freshness_seconds,
        ) {
            return Err(Reply::rejected(format!(
                "stale: issued_at is more than {} s from now",
                settings.freshness_seconds
            )));
        }
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
                "no binding for policy `{}`, outcome `{}`, org `{}`",
                decision.policy, decision.outcome, decision.org_id
            ))
        })?;
        if let Some(expected) = &decision.playbook
            && expected != &binding.playbook
        {
            return Err(Reply::rejected(format!(
                "binding mismatch: the decision names `{expected}`, the local binding `{}`",
                binding.playbook
            )));
        }
        let playbook = snapshot.active(&binding.playbook).ok_or_else(|| {
            Reply::no_action(format!(
                "no active version of playbook `{}`",
                binding.playbook
            ))
        })?;
        decision::check_subject(&decision.subject, &playbook.playbook().inputs)
            .map_err(Reply::rejected)?;
        let subject = Value::Object(decision.subject.clone());
        self.inner
            .storm
            .admit(&binding, &subject)
            .map_err(|suppressed| {
                metrics::counter!("playbookd_decisions_suppressed_total").increment(1);
                Reply::no_action(match suppressed {
                    Suppressed::Cooldown { seconds_left } => {
                        format!("suppressed: cooldown for this subject, {seconds_left} s left")
                    }
                    Suppressed::RateLimit => "suppressed: too many decisions per second".to_owned(),
                })
            })?;
        Ok((binding, playbook))
    }

    /// Records nonce, execution and event in one transaction, then hands the run over.
    async fn accept(
        &self,
        decision: &Decision,
        binding: &Binding,
        playbook: &Arc<ActivePlaybook>,
        peer_uid: u32,
    ) -> Reply {
        let execution_id = Uuid::new_v4();
        let label = format!("{}@{}", playbook.playbook().id, playbook.version());
        let Ok(severity) = Severity::decode(&decision.severity) else {
            return Reply::rejected(format!(
                "invalid decision: severity `{}` is not one of low, medium, moderate, high, critical",
                decision.severity
            ));
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
        };
        let outcome = executions::admit(&self.inner.audit, new, self.inner.safe_halt.watch()).await;
        match outcome {
            Ok(()) => {
                self.inner.executor.submit(execution_id);
                tracing::info!(execution_id = %execution_id, playbook_id = %playbook.playbook().id,
                    org_id = %decision.org_id, decision_id = %decision.decision_id, "decision accepted");
                Reply::Accepted {
                    execution_id,
                    playbook: label,
                }
            }
            Err(error) => {
                self.inner
                    .storm
                    .release(binding, &Value::Object(decision.subject.clone()));
                match error {
                    AdmitError::Replay => {
                        Reply::rejected("replay: this nonce has been used before")
                    }
                    AdmitError::Halted(halt) => {
                        self.inner.safe_halt.observe(*halt.clone());
                        Reply::rejected(halted_reason(&halt))
                    }
                    AdmitError::Unavailable(error) => {
                        tracing::error!(error = %crate::store::audit::error_chain(&error), "decision not recorded");
                        Reply::rejected("audit log unavailable: nothing was started")
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
        let (Reply::NoAction { reason } | Reply::Rejected { reason }) = reply else {
            return;
        };
        let mut event = AuditEvent::new("decision.received", Actor::Uid(peer_uid))
            .with("status", reply.status())
            .with("reason", reason.as_str());
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

fn count(reply: &Reply) {
    metrics::counter!("playbookd_decisions_total", "status" => reply.status(), "reason" => reply.reason_label())
        .increment(1);
}

/// The refusal reason while a SAFE-HALT is in force: what, since when, and how it is cleared.
fn halted_reason(halt: &ActiveHalt) -> String {
    format!("safe_halt: {halt}; nothing new runs until an admin clears it with `{CLEAR_COMMAND}`")
}
