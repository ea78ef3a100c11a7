//! control.sock: where operators approve, deny, cancel, clear a SAFE-HALT and reload.
//!
//! Who is asking comes from the kernel (SO_PEERCRED and the peer's groups), never from the
//! request. Every request is checked against the peer's roles (and org scope) before anything
//! happens, and every request, allowed or refused, is audited as `control.<verb>` with the
//! peer's uid and the result. The state changes themselves (a vote, a cancel, a halt cleared)
//! are committed together with their own audit events by the subsystem that owns them.

pub mod protocol;
pub mod roles;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use tokio::net::unix::UCred;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use self::protocol::{MAX_LINE_BYTES, Reply, Request};
use self::roles::{Grant, Peer, Role, Roles, Verb};
use crate::approvals::{Approvals, Vote, VoteError};
use crate::executor::{CancelError, Executor};
use crate::safe_halt::{ResolveError, SafeHalt};
use crate::store::audit::{
    Actor, AppendError, AuditEvent, AuditHandle, error_chain, format_timestamp,
};
use crate::store::model::HaltScope;
use crate::store::{Store, executions};
use crate::text;
use crate::unix_socket::{Admission, Busy, LineService, RefusalThrottle, SocketSettings};

/// A `reload` asked for on control.sock, handed to the daemon's main loop (which owns what a
/// reload swaps); the loop answers on `reply` with what the reload did or why it failed.
#[derive(Debug)]
pub struct ReloadRequest {
    pub uid: u32,
    pub reply: oneshot::Sender<Result<ReloadReport, String>>,
}

/// What a reload did, file by file: the `reload` reply on control.sock.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadReport {
    /// Playbook versions accepted.
    pub loaded: usize,
    /// Bindings in force after the reload.
    pub bindings: usize,
    /// Every playbook or bindings file refused, with its reason.
    pub refused: Vec<RefusedFile>,
    /// Every trusted-key file refused, with its reason.
    pub refused_keys: Vec<RefusedFile>,
    /// Versions that stayed active because their replacement was refused.
    pub kept: Vec<KeptVersion>,
}

impl ReloadReport {
    /// True when nothing at all was refused.
    pub fn is_clean(&self) -> bool {
        self.refused.is_empty() && self.refused_keys.is_empty()
    }
}

/// One refused file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RefusedFile {
    pub file: String,
    /// A short, stable name (the `playbookd_registry_rejections_total` label).
    pub reason: String,
    /// The whole reason, naming the step, key or signature concerned.
    pub detail: String,
}

impl RefusedFile {
    /// `file` refused for `error`, under the stable name `reason`.
    pub fn new(file: &std::path::Path, reason: &str, error: &dyn std::error::Error) -> RefusedFile {
        RefusedFile {
            file: file.display().to_string(),
            reason: reason.to_owned(),
            detail: crate::store::audit::error_chain(error),
        }
    }
}

/// One version kept active.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeptVersion {
    /// `playbook ID@VERSION` or `bindings`.
    pub what: String,
    pub file: String,
}

/// Everything the control server needs from the rest of the daemon.
pub struct ControlParts {
    /// `[control]`: the slots (admins' reserve included) and the line deadline.
    pub settings: SocketSettings,
    pub roles: Roles,
    pub store: Store,
    pub audit: AuditHandle,
    pub approvals: Approvals,
    pub executor: Executor,
    pub safe_halt: SafeHalt,
    pub reload: mpsc::Sender<ReloadRequest>,
}

#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

struct Inner {
    settings: SocketSettings,
    roles: Roles,
    store: Store,
    audit: AuditHandle,
    approvals: Approvals,
    executor: Executor,
    safe_halt: SafeHalt,
    reload: mpsc::Sender<ReloadRequest>,
    /// Peers with no role are recorded at most once per uid per interval.
    peer_refusals: RefusalThrottle,
}

impl Control {
    pub fn new(parts: ControlParts) -> Control {
        Control {
            inner: Arc::new(Inner {
                settings: parts.settings,
                roles: parts.roles,
                store: parts.store,
                audit: parts.audit,
                approvals: parts.approvals,
                executor: parts.executor,
                safe_halt: parts.safe_halt,
                reload: parts.reload,
                peer_refusals: RefusalThrottle::default(),
            }),
        }
    }
}

/// control.sock, served by [`crate::unix_socket::serve`]. The peer's roles are looked up at
/// connect: a uid with no role is refused before it can hold a slot, each uid holds at most
/// `max_connections_per_uid`, and `admin_reserved_connections` of the `max_connections` slots
/// are kept for admins.
impl LineService for Control {
    type Peer = (Peer, Grant);
    const MAX_LINE_BYTES: usize = MAX_LINE_BYTES;
    const LINE_HOLDS: &'static str = "JSON request";
    const LINE_DEADLINE_KEY: &'static str = "control.idle_timeout_seconds";

    fn socket(&self) -> SocketSettings {
        self.inner.settings
    }

    /// Looks the peer's roles up from its credentials; no role, no connection.
    fn admit(&self, credentials: UCred) -> Admission<(Peer, Grant)> {
        let peer = Peer::from_credentials(credentials.uid(), credentials.gid(), credentials.pid());
        let grant = self.inner.roles.grant(&peer);
        if !grant.roles.is_empty() {
            let privileged = grant.roles.contains(&Role::Admin);
            return Admission::Serve {
                peer: (peer, grant),
                privileged,
            };
        }
        let reply = Reply::Refused(format!(
            "{peer} has no role on control.sock: an admin grants one in [roles] of playbookd.toml (then restart playbookd)"
        ));
        tracing::warn!(uid = peer.uid, "control.sock: peer with no role refused");
        self.inner
            .peer_refusals
            .record(peer.uid, &self.inner.audit, |refusals| {
                AuditEvent::new("control.peer_refused", Actor::Uid(peer.uid))
                    .with("gids", peer.gids.iter().copied().collect::<Vec<u32>>())
                    .with("refusals", refusals)
            });
        Admission::Refuse(reply.to_line())
    }

    fn busy(&self, busy: Busy) -> Vec<u8> {
        Reply::Error(busy_reason(busy)).to_line()
    }

    async fn answer(&self, line: &[u8], (peer, grant): &(Peer, Grant)) -> Vec<u8> {
        self.handle(line, peer, grant).await.to_line()
    }

    async fn malformed(&self, reason: String, (peer, _): &(Peer, Grant)) -> Vec<u8> {
        let reply = Reply::Error(reason);
        self.record(None, None, peer, &reply).await;
        reply.to_line()
    }
}

impl Control {
    /// Decodes, authorizes, carries out and audits one request line from `peer`.
    pub async fn handle(&self, line: &[u8], peer: &Peer, grant: &Grant) -> Reply {
        let request = match protocol::decode(line) {
            Ok(request) => request,
            Err(malformed) => {
                let reply = Reply::Error(malformed.reason);
                self.record(malformed.verb, None, peer, &reply).await;
                return reply;
            }
        };
        let reply = match self.authorize(&request, peer, grant).await {
            Ok(()) => self.carry_out(&request, peer, grant).await,
            Err(refusal) => refusal,
        };
        let recorded = self
            .record(Some(request.verb()), Some(&request), peer, &reply)
            .await;
        // A read that cannot be audited is not served: every look at pending approvals leaves
        // a trace. (Changes were audited in their own transaction; their reply stands.)
        if !recorded && request.verb() == Verb::Pending && matches!(reply, Reply::Ok(_)) {
            return Reply::Error("audit log unavailable: request not served".into());
        }
        reply
    }

    /// The role check, then (for verbs that act on an execution) the org scope.
    async fn authorize(&self, request: &Request, peer: &Peer, grant: &Grant) -> Result<(), Reply> {
        let verb = request.verb();
        if !grant.permits(verb) {
            let needed = verb
                .allowed_roles()
                .iter()
                .map(|role| role.as_str())
                .collect::<Vec<_>>()
                .join(" or ");
            return Err(Reply::Refused(format!(
                "{peer} (roles: {}) may not {}: it needs the {needed} role (granted in [roles] of playbookd.toml)",
                grant.describe_roles(),
                verb.as_str()
            )));
        }
        let Some(execution_id) = request.execution_id() else {
            return Ok(());
        };
        let Some(allowed) = &grant.orgs else {
            return Ok(());
        };
        let org = self.execution_org(execution_id).await?;
        if !allowed.contains(&org) {
            return Err(Reply::Refused(format!(
                "{peer} may act only on executions of org(s) {} ([[roles.orgs]] of playbookd.toml); execution {execution_id} belongs to org `{org}`",
                allowed.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(())
    }

    async fn execution_org(&self, execution_id: Uuid) -> Result<String, Reply> {
        match executions::scope(&self.inner.store, execution_id).await {
            Ok(Some(scope)) => Ok(scope.org_id),
            Ok(None) => Err(Reply::Error(format!("no execution {execution_id}"))),
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "control.sock: cannot read the execution");
                Err(Reply::Error(
                    "database unavailable: nothing was done".into(),
                ))
            }
        }
    }

    async fn carry_out(&self, request: &Request, peer: &Peer, grant: &Grant) -> Reply {
        match request {
            Request::Pending => self.pending(grant).await,
            Request::Approve {
                execution_id,
                step,
                reason,
            } => {
                self.vote(*execution_id, step, peer, Vote::Approve, reason)
                    .await
            }
            Request::Deny {
                execution_id,
                step,
                reason,
            } => {
                if reason.is_empty() {
                    return Reply::Refused(
                        "a reason is required to deny: it is the evidence for the rollback".into(),
                    );
                }
                self.vote(*execution_id, step, peer, Vote::Deny, reason)
                    .await
            }
            Request::Cancel {
                execution_id,
                reason,
            } => self.cancel(*execution_id, peer, reason).await,
            Request::HaltResolve { reason } => {
                self.halt_resolve(peer, reason, HaltScope::Node).await
            }
            Request::HaltFleet { reason } => self.halt_fleet(peer, reason).await,
            Request::HaltResolveFleet { reason } => {
                self.halt_resolve(peer, reason, HaltScope::Fleet).await
            }
            Request::Reload => self.reload(peer).await,
        }
    }

    async fn pending(&self, grant: &Grant) -> Reply {
        match self.inner.approvals.pending().await {
            Ok(gates) => {
                let visible: Vec<Value> = gates
                    .into_iter()
                    .filter(|gate| {
                        gate.get("org_id")
                            .and_then(Value::as_str)
                            .is_some_and(|org| grant.may_act_on_org(org))
                    })
                    .collect();
                ok([("pending", Value::Array(visible))])
            }
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "control.sock: cannot list pending approvals");
                Reply::Error("database unavailable".into())
            }
        }
    }

    async fn vote(
        &self,
        execution_id: Uuid,
        step: &str,
        peer: &Peer,
        vote: Vote,
        reason: &str,
    ) -> Reply {
        let outcome = self
            .inner
            .approvals
            .vote(execution_id, step, peer.uid, vote, reason)
            .await;
        match outcome {
            Ok(outcome) => ok([
                ("execution_id", json!(execution_id)),
                ("step", json!(step)),
                ("gate_state", json!(outcome.gate_state.as_str())),
                ("approvals", json!(outcome.approvals)),
                ("required", json!(outcome.required)),
            ]),
            Err(
                error @ (VoteError::AlreadyVoted(_)
                | VoteError::ReasonRequired(_)
                | VoteError::OtherNode { .. }
                | VoteError::Halted(_)),
            ) => Reply::Refused(error.to_string()),
            Err(
                error @ (VoteError::NoPendingGate { .. }
                | VoteError::Expired
                | VoteError::Closed(_)),
            ) => Reply::Error(error.to_string()),
            Err(error @ (VoteError::Store(_) | VoteError::Audit(_))) => {
                tracing::error!(error = %error_chain(&error), "control.sock: vote not recorded");
                Reply::Error(format!("{error}: the vote was not recorded"))
            }
        }
    }

    async fn cancel(&self, execution_id: Uuid, peer: &Peer, reason: &str) -> Reply {
        match self
            .inner
            .executor
            .cancel(execution_id, peer.uid, reason)
            .await
        {
            Ok(()) => ok([
                ("execution_id", json!(execution_id)),
                ("cancel", json!("requested")),
            ]),
            Err(CancelError::NoReason) => {
                Reply::Refused("a reason is required to cancel an execution".into())
            }
            Err(CancelError::NotFound) => Reply::Error(format!("no execution {execution_id}")),
            Err(error @ CancelError::OtherNode { .. }) => Reply::Refused(error.to_string()),
            Err(error @ CancelError::Finished(_)) => Reply::Error(error.to_string()),
            Err(error @ (CancelError::Store(_) | CancelError::Audit(_))) => {
                tracing::error!(error = %error_chain(&error), "control.sock: cancel not recorded");
                Reply::Error(format!("{error}: not cancelled"))
            }
        }
    }

    async fn halt_resolve(&self, peer: &Peer, reason: &str, scope: HaltScope) -> Reply {
        let (cleared, what) = match scope {
            HaltScope::Node => ("cleared", "SAFE-HALT"),
            HaltScope::Fleet => ("fleet cleared", "fleet SAFE-HALT"),
        };
        match self.inner.safe_halt.resolve(scope, peer.uid, reason).await {
            Ok(halt_id) => ok([("halt_id", json!(halt_id)), ("safe_halt", json!(cleared))]),
            Err(error @ ResolveError::NoReason) => Reply::Refused(error.to_string()),
            Err(
                error @ (ResolveError::NotActive { .. }
                | ResolveError::NotWrittenYet { .. }
                | ResolveError::FleetNotActive),
            ) => Reply::Error(error.to_string()),
            Err(error @ ResolveError::Audit(_)) => {
                tracing::error!(error = %error_chain(&error), "control.sock: {what} not cleared");
                Reply::Error(error.to_string())
            }
        }
    }

    async fn halt_fleet(&self, peer: &Peer, reason: &str) -> Reply {
        match self.inner.safe_halt.halt_fleet(peer.uid, reason).await {
            Ok(halt) => ok([
                ("halt_id", json!(halt.halt_id)),
                ("safe_halt", json!("fleet")),
                ("entered_at", json!(format_timestamp(halt.entered_at))),
            ]),
            Err(ResolveError::NoReason) => {
                Reply::Refused("a reason is required to halt the fleet".into())
            }
            Err(
                error @ (ResolveError::NotActive { .. }
                | ResolveError::NotWrittenYet { .. }
                | ResolveError::FleetNotActive
                | ResolveError::Audit(_)),
            ) => {
                tracing::error!(error = %error_chain(&error), "control.sock: fleet SAFE-HALT not entered");
                Reply::Error(format!("{error}: the fleet is NOT halted"))
            }
        }
    }

    async fn reload(&self, peer: &Peer) -> Reply {
        let (reply, answer) = oneshot::channel();
        let request = ReloadRequest {
            uid: peer.uid,
            reply,
        };
        if self.inner.reload.send(request).await.is_err() {
            return Reply::Error("the daemon is stopping: not reloaded".into());
        }
        match tokio::time::timeout(RELOAD_LIMIT, answer).await {
            Ok(Ok(Ok(report))) => {
                let detail = format!(
                    "{} playbook versions loaded, {} files refused, {} bindings",
                    report.loaded,
                    report.refused.len() + report.refused_keys.len(),
                    report.bindings
                );
                ok([
                    (
                        "reload",
                        json!(if report.is_clean() {
                            "done"
                        } else {
                            "done_with_refusals"
                        }),
                    ),
                    ("detail", json!(detail)),
                    ("loaded", json!(report.loaded)),
                    ("bindings", json!(report.bindings)),
                    ("refused", json!(report.refused)),
                    ("refused_keys", json!(report.refused_keys)),
                    ("kept", json!(report.kept)),
                ])
            }
            Ok(Ok(Err(reason))) => Reply::Error(format!("reload failed: {reason}")),
            Ok(Err(_)) => Reply::Error("the daemon is stopping: not reloaded".into()),
            Err(_) => Reply::Error(format!(
                "reload did not finish within {} s; see the journal",
                RELOAD_LIMIT.as_secs()
            )),
        }
    }

    /// Appends `control.<verb>` (or `control.invalid`); returns whether it was recorded.
    async fn record(
        &self,
        verb: Option<Verb>,
        request: Option<&Request>,
        peer: &Peer,
        reply: &Reply,
    ) -> bool {
        let event_type = verb.map_or("control.invalid", Verb::event_type);
        let mut event = AuditEvent::new(event_type, Actor::Uid(peer.uid))
            .with("result", reply.status())
            .with("gids", peer.gids.iter().copied().collect::<Vec<u32>>());
        if let Some(reason) = reply.reason() {
            event = event.with("refusal", reason);
        }
        if let Some(request) = request {
            event = describe(event, request);
        }
        tracing::info!(
            uid = peer.uid,
            verb = verb.map_or("invalid", Verb::as_str),
            result = reply.status(),
            reason = %text::storable(reply.reason().unwrap_or(""), text::MAX_FIELD_BYTES),
            "control request"
        );
        match self.inner.audit.append(event).await {
            Ok(_) => true,
            Err(error) => {
                log_unrecorded(&error);
                false
            }
        }
    }
}

/// Adds what the request named to its audit event.
fn describe(event: AuditEvent, request: &Request) -> AuditEvent {
    match request {
        Request::Pending | Request::Reload => event,
        Request::Approve {
            execution_id,
            step,
            reason,
        }
        | Request::Deny {
            execution_id,
            step,
            reason,
        } => event
            .execution(*execution_id)
            .with("step_id", step.as_str())
            .with("reason", reason.as_str()),
        Request::Cancel {
            execution_id,
            reason,
        } => event
            .execution(*execution_id)
            .with("reason", reason.as_str()),
        Request::HaltResolve { reason }
        | Request::HaltFleet { reason }
        | Request::HaltResolveFleet { reason } => event.with("reason", reason.as_str()),
    }
}

fn busy_reason(busy: Busy) -> String {
    match busy {
        Busy::PerUid { uid, limit } => format!(
            "busy: uid {uid} already holds {limit} connections on control.sock (control.max_connections_per_uid); close one or retry"
        ),
        Busy::Full { limit } => format!(
            "busy: all {limit} connections on control.sock are in use (control.max_connections); retry"
        ),
    }
}

fn ok<const N: usize>(fields: [(&str, Value); N]) -> Reply {
    Reply::Ok(
        fields
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect::<Map<String, Value>>(),
    )
}

fn log_unrecorded(error: &AppendError) {
    tracing::warn!(error = %error_chain(error), "control request not recorded in the audit log");
}

/// How long a `reload` request waits for the daemon's main loop.
const RELOAD_LIMIT: Duration = Duration::from_secs(60);
