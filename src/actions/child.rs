//! One child process as a step runs it, whichever side starts it (the daemon for `exec`, or the
//! exec runner it asks): a clean environment, its own process group killed at the deadline,
//! on cancel and after the leader exits, and bounded captured output.

use std::process::{ExitStatus, Stdio};

use nix::sys::signal::Signal;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{ActionContext, ActionError};
use crate::sys;

/// What a program printed on one stream: the first [`CAPTURE_LIMIT`] bytes and the total.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    pub bytes: Vec<u8>,
    pub total: u64,
}

impl Captured {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "text": String::from_utf8_lossy(&self.bytes),
            "bytes": self.total,
            "truncated": self.total > self.bytes.len() as u64,
        })
    }

    /// The start of the stream for an error message, kept short.
    pub fn excerpt(&self) -> String {
        const MAX: usize = 512;
        let text = String::from_utf8_lossy(&self.bytes[..self.bytes.len().min(MAX)]);
        let text = text.trim();
        if text.is_empty() {
            String::new()
        } else {
            format!(": {text}")
        }
    }
}

pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: Captured,
    pub stderr: Captured,
}

/// Runs `cmd` with a clean environment (a fixed `PATH` plus what the caller set), cwd `/`,
/// `stdin` (or nothing), captured output, in a new process group. The whole group is killed
/// with SIGKILL at `ctx.deadline`, on `ctx.cancel`, and after the leader exits (so nothing it
/// started outlives the step). Deadline or cancel → a transient error.
pub(crate) async fn run_captured(
    mut cmd: Command,
    stdin: Option<Vec<u8>>,
    ctx: &ActionContext,
) -> Result<Finished, ActionError> {
    // Keep only what the caller set explicitly (`envs` before this call), plus PATH.
    let explicit: Vec<(std::ffi::OsString, std::ffi::OsString)> = cmd
        .as_std()
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned())))
        .collect();
    cmd.env_clear()
        .env("PATH", FIXED_PATH)
        .envs(explicit)
        .current_dir("/")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .spawn()
        .map_err(|e| ActionError::Permanent(format!("cannot start {program}: {e}")))?;
    let Some(pgid) = child.id() else {
        return Err(ActionError::Transient(format!("{program} exited at once")));
    };
    // From here on, every path out kills the group.
    let group = GroupGuard(pgid);

    let stdout = tokio::spawn(capture(child.stdout.take()));
    let stderr = tokio::spawn(capture(child.stderr.take()));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A program that does not read its input must not block us: write in the background.
        tokio::spawn(async move {
            let _ = pipe.write_all(&input).await;
        });
    }

    let status = tokio::select! {
        status = child.wait() => status.map_err(|e| ActionError::Transient(format!("waiting for {program}: {e}")))?,
        () = tokio::time::sleep_until(ctx.deadline) => {
            drop(group);
            let _ = child.wait().await;
            return Err(ActionError::Transient(format!("{program} timed out and was killed")));
        }
        () = ctx.cancel.cancelled() => {
            drop(group);
            let _ = child.wait().await;
            return Err(ActionError::Transient(format!("{program} was cancelled and killed")));
        }
    };
    drop(group);
    // The group is dead, so the pipes close; bound the wait anyway (a grandchild that moved to
    // another group could hold them open).
    let collect = async { (stdout.await, stderr.await) };
    let (stdout, stderr) = tokio::time::timeout_at(ctx.deadline, collect)
        .await
        .map_err(|_| {
            ActionError::Transient(format!("{program}: output still open at the deadline"))
        })?;
    Ok(Finished {
        status,
        stdout: stdout.unwrap_or_default(),
        stderr: stderr.unwrap_or_default(),
    })
}

/// Kills the process group when dropped.
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Err(error) = sys::kill_process_group(self.0, Signal::SIGKILL) {
            tracing::warn!(pgid = self.0, %error, "could not kill process group");
        }
    }
}

/// Keeps the first [`CAPTURE_LIMIT`] bytes and counts (then discards) the rest, so a program
/// that prints without end costs a fixed amount of memory.
async fn capture(stream: Option<impl AsyncRead + Unpin>) -> Captured {
    let mut captured = Captured::default();
    let Some(mut stream) = stream else {
        return captured;
    };
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return captured,
            Ok(n) => {
                let room = CAPTURE_LIMIT.saturating_sub(captured.bytes.len());
                captured.bytes.extend_from_slice(&buffer[..n.min(room)]);
                captured.total += n as u64;
            }
        }
    }
}

/// The only `PATH` a child sees.
pub(crate) const FIXED_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// Bytes kept of each of stdout and stderr.
pub const CAPTURE_LIMIT: usize = 64 * 1024;
