//! The daemon's side of the actuator: `process.kill`, `net.*` and `file.*` send one typed
//! request per step to `playbookd actuator` (see [`crate::actuator`]) and map its typed reply.
//! They differ only in how a step's parameters become a request, so they are one
//! [`ActuatorAction`] each, built from their spec and that function.
//!
//! The actuator absent, down or not answering in time is a transient error naming the socket:
//! the step is retried and, when its retries run out, the run is rolled back as usual. Nothing
//! falls back to acting with the daemon's own rights.

use std::path::PathBuf;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{Action, ActionContext, ActionError, ActionFuture, ActionOutput, ActionSpec};
use crate::actuator::protocol::{self, Reply, Request};

/// How an action that needs no more than its parameters and context makes its request.
pub type RequestFn = fn(&Value, &ActionContext) -> Result<Request, ActionError>;

/// An action the actuator carries out: `request` turns the step's rendered parameters into
/// the typed request (the daemon's own checks come first; the actuator repeats them).
pub struct ActuatorAction<F> {
    spec: &'static ActionSpec,
    actuator: ActuatorClient,
    request: F,
}

impl<F> ActuatorAction<F>
where
    F: Fn(&Value, &ActionContext) -> Result<Request, ActionError> + Send + Sync,
{
    /// The action `spec`, sending what `request` makes of its parameters to `actuator`.
    pub fn new(spec: &'static ActionSpec, actuator: ActuatorClient, request: F) -> Self {
        ActuatorAction {
            spec,
            actuator,
            request,
        }
    }
}

impl<F> Action for ActuatorAction<F>
where
    F: Fn(&Value, &ActionContext) -> Result<Request, ActionError> + Send + Sync,
{
    fn spec(&self) -> &'static ActionSpec {
        self.spec
    }

    fn execute<'a>(&'a self, params: &'a Value, ctx: &'a ActionContext) -> ActionFuture<'a> {
        Box::pin(async move {
            let request = (self.request)(params, ctx)?;
            self.actuator.call(&request, ctx).await
        })
    }
}

/// Where the actuator listens (`actuator.socket`). Cloning is cheap.
#[derive(Debug, Clone)]
pub struct ActuatorClient {
    socket: PathBuf,
}

impl ActuatorClient {
    /// A client of the actuator at `socket`; nothing is connected until a call.
    pub fn new(socket: PathBuf) -> ActuatorClient {
        ActuatorClient { socket }
    }

    /// Sends `request` and returns the step's summary of the actuator's reply: a refusal is a
    /// permanent error, a failure transient or permanent as the actuator says.
    pub async fn call(
        &self,
        request: &Request,
        ctx: &ActionContext,
    ) -> Result<ActionOutput, ActionError> {
        let exchange = self.exchange(request);
        let reply = tokio::select! {
            reply = tokio::time::timeout_at(ctx.deadline, exchange) => reply.map_err(|_| {
                ActionError::Transient(format!(
                    "the actuator at {} did not answer `{}` before the step's deadline",
                    self.socket.display(),
                    request.operation()
                ))
            })??,
            () = ctx.cancel.cancelled() => {
                return Err(ActionError::Transient(format!(
                    "`{}` cancelled while waiting for the actuator",
                    request.operation()
                )));
            }
        };
        outcome(request, reply)
    }

    async fn exchange(&self, request: &Request) -> Result<Reply, ActionError> {
        let unavailable = |what: &str, error: std::io::Error| {
            ActionError::Transient(format!(
                "actuator unavailable at {} ({what}: {error}); is playbookd-actuator running?",
                self.socket.display()
            ))
        };
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unavailable("connect", e))?;
        let (read, mut write) = stream.into_split();
        // The actuator may refuse (a peer it does not serve) before reading: its reply is still
        // there to read even when the send broke.
        let sent = write.write_all(&request.to_line()).await;
        let mut line = Vec::new();
        let mut reader = BufReader::new(read).take(protocol::MAX_LINE_BYTES as u64 + 1);
        let received = reader.read_until(b'\n', &mut line).await;
        if line.last() != Some(&b'\n') {
            if let Err(error) = sent {
                return Err(unavailable("send", error));
            }
            if let Err(error) = received {
                return Err(unavailable("receive", error));
            }
            return Err(ActionError::Transient(format!(
                "the actuator at {} closed the connection without a reply to `{}`",
                self.socket.display(),
                request.operation()
            )));
        }
        line.pop();
        protocol::decode_reply(&line).map_err(|error| {
            ActionError::Permanent(format!("the actuator's reply is malformed: {error}"))
        })
    }
}

/// What the actuator's `reply` to `request` means for the step: its summary (bounded and
/// secret-free, stored and shown by the status API) or its error. A reply of another kind than
/// the request is a protocol bug, never expected.
fn outcome(request: &Request, reply: Reply) -> Result<ActionOutput, ActionError> {
    let summary = match (request, reply) {
        (_, Reply::Refused { reason }) => {
            return Err(ActionError::Permanent(format!(
                "refused by the actuator: {reason}"
            )));
        }
        (_, Reply::Failed { reason, transient }) => {
            let reason = format!("actuator: {reason}");
            return Err(if transient {
                ActionError::Transient(reason)
            } else {
                ActionError::Permanent(reason)
            });
        }
        (
            Request::Signal(_),
            Reply::Signalled {
                pid,
                already_gone: true,
                ..
            },
        ) => json!({"pid": pid, "already_gone": true}),
        (Request::Signal(_), Reply::Signalled { pid, signal, .. }) => {
            json!({"pid": pid, "signal": signal.as_str(), "already_gone": false})
        }
        (
            Request::Block(_),
            Reply::Blocked {
                net,
                set,
                timeout_seconds,
            },
        ) => json!({
            "address": net.to_string(),
            "set": set,
            "timeout_seconds": timeout_seconds,
        }),
        (
            Request::Unblock(_),
            Reply::Unblocked {
                net,
                set,
                was_blocked,
            },
        ) => json!({
            "address": net.to_string(),
            "set": set,
            "was_blocked": was_blocked,
        }),
        (
            Request::Quarantine(_),
            Reply::Quarantined {
                path,
                stored_as,
                sha256,
                size,
            },
        ) => json!({
            "path": path,
            "quarantined_as": stored_as,
            "sha256": sha256,
            "size": size,
        }),
        (
            Request::Restore(_),
            Reply::Restored {
                path,
                restored_from,
                sha256,
                size,
            },
        ) => json!({
            "path": path,
            "restored_from": restored_from,
            "sha256": sha256,
            "size": size,
        }),
        (_, other) => {
            return Err(ActionError::Permanent(format!(
                "the actuator answered `{}` with {other:?}",
                request.operation()
            )));
        }
    };
    Ok(ActionOutput::new(summary))
}
