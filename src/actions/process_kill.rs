//! `process.kill`: sends a signal to one process, only if it is still the process the decision
//! named (`start_time` and/or `executable` must match when given), never to pid 1 or the daemon.
//! A process that is already gone counts as success. Not undoable.
//!
//! A pid could still be reused between the check and the signal; the window is a few
//! microseconds and needs a full pid wrap-around inside it.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::{Action, ActionContext, ActionError, ActionFuture, ActionOutput, ActionSpec, params};
use crate::sys::{self, SignalOutcome};

pub struct ProcessKill;

impl ProcessKill {
    fn run(&self, params: &Value) -> Result<ActionOutput, ActionError> {
        let pid = params::u64(params, "pid")?;
        let pid = u32::try_from(pid)
            .ok()
            .filter(|pid| i32::try_from(*pid).is_ok())
            .ok_or_else(|| ActionError::Permanent(format!("pid {pid} is out of range")))?;
        if pid <= 1 {
            return Err(ActionError::Permanent(format!(
                "refusing to signal pid {pid}"
            )));
        }
        if pid == sys::own_pid() {
            return Err(ActionError::Permanent(
                "refusing to signal the daemon itself".into(),
            ));
        }
        let signal_name = params::optional_string(params, "signal")?.unwrap_or("TERM");
        let signal = sys::parse_signal(signal_name).ok_or_else(|| {
            ActionError::Permanent(format!(
                "signal `{signal_name}` is not one of KILL, TERM, INT, HUP, STOP, QUIT, USR1, USR2"
            ))
        })?;
        let expected_start = params::optional_u64(params, "start_time")?;
        let expected_exe = params::optional_string(params, "executable")?.map(PathBuf::from);
        let gone = || Ok(ActionOutput::new(json!({"pid": pid, "already_gone": true})));

        if let Some(expected) = expected_start {
            let actual = sys::process_start_time(pid).map_err(|e| {
                ActionError::Transient(format!("cannot read the start time of pid {pid}: {e}"))
            })?;
            match actual {
                None => return gone(),
                Some(actual) if actual != expected => {
                    return Err(ActionError::Permanent(format!(
                        "pid reused: pid {pid} started at tick {actual}, not {expected}"
                    )));
                }
                Some(_) => {}
            }
        }
        if let Some(expected) = &expected_exe {
            let actual = sys::process_executable(pid).map_err(|e| {
                ActionError::Permanent(format!("cannot read the executable of pid {pid}: {e}"))
            })?;
            match actual {
                None => return gone(),
                Some(actual) if &actual != expected => {
                    return Err(ActionError::Permanent(format!(
                        "pid reused: pid {pid} runs {}, not {}",
                        actual.display(),
                        expected.display()
                    )));
                }
                Some(_) => {}
            }
        }
        match sys::send_signal(pid, signal) {
            Ok(SignalOutcome::Delivered) => Ok(ActionOutput::new(json!({
                "pid": pid,
                "signal": signal_name,
                "already_gone": false,
            }))),
            Ok(SignalOutcome::NoSuchProcess) => gone(),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                Err(ActionError::Permanent(format!(
                    "not permitted to signal pid {pid} (another user's process needs CAP_KILL)"
                )))
            }
            Err(e) => Err(ActionError::Permanent(format!(
                "cannot signal pid {pid}: {e}"
            ))),
        }
    }
}

impl Action for ProcessKill {
    fn spec(&self) -> &'static ActionSpec {
        &super::specs::PROCESS_KILL
    }

    fn execute<'a>(&'a self, params: &'a Value, _ctx: &'a ActionContext) -> ActionFuture<'a> {
        Box::pin(async move { self.run(params) })
    }
}
