//! The daemon's side of the actuator: `process.kill`, `net.*` and `file.*` send one typed
//! request per step to `playbookd actuator` (see [`crate::actuator`]) and map its typed reply.
//!
//! The actuator absent, down or not answering in time is a transient error naming the socket:
//! the step is retried and, when its retries run out, the run is rolled back as usual. Nothing
//! falls back to acting with the daemon's own rights.

use std::path::PathBuf;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{ActionContext, ActionError};
use crate::actuator::protocol::{self, Reply, Request};

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

    /// Sends `request` and returns the actuator's reply: a refusal is a permanent error, a
    /// failure transient or permanent as the actuator says, and the result itself `Ok`.
    pub async fn call(&self, request: &Request, ctx: &ActionContext) -> Result<Reply, ActionError> {
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
        match reply {
            Reply::Refused { reason } => Err(ActionError::Permanent(format!(
                "refused by the actuator: {reason}"
            ))),
            Reply::Failed {
                reason,
                transient: true,
            } => Err(ActionError::Transient(format!("actuator: {reason}"))),
            Reply::Failed {
                reason,
                transient: false,
            } => Err(ActionError::Permanent(format!("actuator: {reason}"))),
            done @ (Reply::Signalled { .. }
            | Reply::Blocked { .. }
            | Reply::Unblocked { .. }
            | Reply::Quarantined { .. }
            | Reply::Restored { .. }) => Ok(done),
        }
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

/// The error for a reply of the wrong kind (a protocol bug, never expected).
pub fn unexpected(request: &str, reply: &Reply) -> ActionError {
    ActionError::Permanent(format!("the actuator answered `{request}` with {reply:?}"))
}
