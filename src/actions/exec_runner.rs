//! The exec runner: how `exec` children start under systemd without the daemon holding any
//! privilege.
//!
//! `playbookd-exec.socket` (`Accept=yes`) listens on `actions.exec.runner_socket`; for each
//! connection systemd starts `playbookd exec-runner` as the unit's own user (`playbookd-exec`),
//! with no capability and `no_new_privs`, the connection on stdin and stdout. The runner checks
//! all of that, serves only the daemon's uid (SO_PEERCRED), reads one [`RunRequest`], runs the
//! allowlisted command (the daemon checked the allowlist; the runner holds less privilege than
//! the daemon, so it has nothing to protect by checking again) in its own process group, and
//! answers one [`RunReply`]. When the daemon hangs up (deadline, cancel, crash), the runner
//! kills the group; when the runner exits, systemd removes whatever is left in its cgroup.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use super::child::{Captured, Finished, run_captured};
use super::{ActionContext, ActionError};
use crate::sys;
use crate::unix_socket::{self, Line};

/// One command to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Absolute path (allowlisted by the daemon).
    pub command: PathBuf,
    pub args: Vec<String>,
    /// Only `PLAYBOOKD_*` variables; the runner adds a fixed `PATH`.
    pub env: BTreeMap<String, String>,
    /// The step's remaining time; the runner kills the group after it.
    pub timeout_ms: u64,
}

/// How it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunReply {
    /// The command ran; `wait_status` as `waitpid(2)` reports it.
    Finished {
        wait_status: i32,
        stdout: String,
        stdout_total: u64,
        stderr: String,
        stderr_total: u64,
    },
    /// It could not run or did not finish in time.
    Failed { reason: String, transient: bool },
    /// The runner will not run it (a peer other than the daemon, a malformed request).
    Refused { reason: String },
}

/// Why the runner could not serve at all.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(
        "the exec runner must run with no capability and no_new_privs (as playbookd-exec@.service sets up): {detail}"
    )]
    Privileged { detail: String },
    #[error("actions.exec runner: no user `{0}` on this host")]
    UnknownUser(String),
    #[error("the exec runner runs as the daemon's own uid {0}: children must not share it")]
    DaemonUid(u32),
    #[error(
        "the exec runner's stdin is not a connected Unix socket (start it from playbookd-exec.socket)"
    )]
    NotASocket(#[source] std::io::Error),
}

impl RunnerError {
    /// Every one of these needs an operator: 78.
    pub fn exit_code(&self) -> std::process::ExitCode {
        std::process::ExitCode::from(crate::config::EXIT_CONFIG)
    }
}

/// The daemon's side: runs `request` through the runner at `socket`, bounded by the step's
/// deadline and cancel. Hanging up on the runner kills the command's group.
pub(crate) async fn run_via(
    socket: &Path,
    request: &RunRequest,
    ctx: &ActionContext,
) -> Result<Finished, ActionError> {
    let unavailable = |what: &str, error: std::io::Error| {
        ActionError::Transient(format!(
            "exec runner unavailable at {} ({what}: {error}); is playbookd-exec.socket listening?",
            socket.display()
        ))
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| unavailable("connect", e))?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)
        .map_err(|e| ActionError::Permanent(format!("cannot encode the run request: {e}")))?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .map_err(|e| unavailable("send", e))?;
    let command = request.command.display().to_string();
    let mut reply = Vec::new();
    let mut reader = BufReader::new(read).take(MAX_REPLY_BYTES);
    let received = tokio::select! {
        received = tokio::time::timeout_at(ctx.deadline, reader.read_until(b'\n', &mut reply)) => received,
        () = ctx.cancel.cancelled() => {
            return Err(ActionError::Transient(format!("{command} was cancelled and killed")));
        }
    };
    // `write` is dropped on return: the runner sees the hangup and kills the group.
    drop(write);
    match received {
        Err(_) => {
            return Err(ActionError::Transient(format!(
                "{command} timed out and was killed"
            )));
        }
        Ok(Err(error)) => return Err(unavailable("receive", error)),
        Ok(Ok(_)) => {}
    }
    if reply.pop() != Some(b'\n') {
        return Err(ActionError::Transient(format!(
            "the exec runner closed the connection without a reply for {command}"
        )));
    }
    match serde_json::from_slice::<RunReply>(&reply) {
        Ok(RunReply::Finished {
            wait_status,
            stdout,
            stdout_total,
            stderr,
            stderr_total,
        }) => Ok(Finished {
            status: std::process::ExitStatus::from_raw(wait_status),
            stdout: Captured {
                bytes: stdout.into_bytes(),
                total: stdout_total,
            },
            stderr: Captured {
                bytes: stderr.into_bytes(),
                total: stderr_total,
            },
        }),
        Ok(RunReply::Failed { reason, transient }) => Err(if transient {
            ActionError::Transient(format!("exec runner: {reason}"))
        } else {
            ActionError::Permanent(format!("exec runner: {reason}"))
        }),
        Ok(RunReply::Refused { reason }) => Err(ActionError::Permanent(format!(
            "refused by the exec runner: {reason}"
        ))),
        Err(error) => Err(ActionError::Permanent(format!(
            "the exec runner's reply is malformed: {error}"
        ))),
    }
}

/// `playbookd exec-runner`: serves the one connection on stdin/stdout, for `daemon_user` only.
pub async fn serve_stdin(daemon_user: &str) -> Result<(), RunnerError> {
    let privileges = sys::own_privileges().map_err(|e| RunnerError::Privileged {
        detail: e.to_string(),
    })?;
    let sets = [
        ("inheritable", privileges.inheritable),
        ("permitted", privileges.permitted),
        ("effective", privileges.effective),
        ("bounding", privileges.bounding),
        ("ambient", privileges.ambient),
    ];
    if let Some((name, bits)) = sets.iter().find(|(_, bits)| *bits != 0) {
        return Err(RunnerError::Privileged {
            detail: format!("its {name} capability set is {bits:016x}"),
        });
    }
    if !privileges.no_new_privs {
        return Err(RunnerError::Privileged {
            detail: "no_new_privs is not set".into(),
        });
    }
    let daemon_uid = nix::unistd::User::from_name(daemon_user)
        .ok()
        .flatten()
        .ok_or_else(|| RunnerError::UnknownUser(daemon_user.to_owned()))?
        .uid
        .as_raw();
    if sys::effective_uid() == daemon_uid {
        return Err(RunnerError::DaemonUid(daemon_uid));
    }
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(RunnerError::NotASocket)?;
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream
        .set_nonblocking(true)
        .map_err(RunnerError::NotASocket)?;
    let stream = UnixStream::from_std(stream).map_err(RunnerError::NotASocket)?;
    let peer = stream.peer_cred().map_err(RunnerError::NotASocket)?;
    let (read, mut write) = stream.into_split();
    let reply = if peer.uid() == daemon_uid {
        serve(read).await
    } else {
        RunReply::Refused {
            reason: format!(
                "peer uid {} is not the daemon's uid {daemon_uid}",
                peer.uid()
            ),
        }
    };
    let mut line = serde_json::to_vec(&reply).unwrap_or_else(|_| {
        br#"{"result":"failed","reason":"cannot encode","transient":false}"#.to_vec()
    });
    line.push(b'\n');
    let _ = write.write_all(&line).await;
    Ok(())
}

async fn serve(read: tokio::net::unix::OwnedReadHalf) -> RunReply {
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    match unix_socket::read_line(&mut reader, &mut line, MAX_REQUEST_BYTES, IDLE).await {
        Ok(Line::Complete) => {}
        Ok(Line::TooLong) => {
            return RunReply::Refused {
                reason: "request too long".into(),
            };
        }
        Ok(Line::Closed | Line::TimedOut { .. }) | Err(_) => {
            return RunReply::Refused {
                reason: "no request".into(),
            };
        }
    }
    let request: RunRequest = match serde_json::from_slice(&line) {
        Ok(request) => request,
        Err(error) => {
            return RunReply::Refused {
                reason: format!("malformed request: {error}"),
            };
        }
    };
    if !request.command.is_absolute()
        || request.args.iter().any(|a| a.contains('\0'))
        || request
            .env
            .iter()
            .any(|(k, v)| !k.starts_with("PLAYBOOKD_") || k.contains('=') || v.contains('\0'))
    {
        return RunReply::Refused {
            reason: "the command must be an absolute path, arguments without NUL, and only PLAYBOOKD_* variables".into(),
        };
    }
    // The daemon hanging up is the cancel: keep reading until EOF.
    let cancel = CancellationToken::new();
    let hangup = cancel.clone();
    tokio::spawn(async move {
        let mut rest = [0u8; 256];
        loop {
            match reader.read(&mut rest).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        hangup.cancel();
    });
    let mut cmd = Command::new(&request.command);
    cmd.args(&request.args).envs(&request.env);
    let ctx = ActionContext {
        execution_id: uuid::Uuid::nil(),
        step_id: String::new(),
        org_id: String::new(),
        idempotency_key: [0; 32],
        deadline: tokio::time::Instant::now() + Duration::from_millis(request.timeout_ms),
        cancel,
    };
    match run_captured(cmd, None, &ctx).await {
        Ok(finished) => RunReply::Finished {
            wait_status: finished.status.into_raw(),
            stdout: String::from_utf8_lossy(&finished.stdout.bytes).into_owned(),
            stdout_total: finished.stdout.total,
            stderr: String::from_utf8_lossy(&finished.stderr.bytes).into_owned(),
            stderr_total: finished.stderr.total,
        },
        Err(ActionError::Transient(reason)) => RunReply::Failed {
            reason,
            transient: true,
        },
        Err(ActionError::Permanent(reason)) => RunReply::Failed {
            reason,
            transient: false,
        },
    }
}

const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// Two captured streams of 64 KiB, escaped as JSON, with room to spare.
const MAX_REPLY_BYTES: u64 = 1024 * 1024;
const IDLE: Duration = Duration::from_secs(10);
