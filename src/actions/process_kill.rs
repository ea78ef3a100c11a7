//! `process.kill`: asks the actuator to send a signal to one process, only if it is still the
//! process the decision named (`start_time` and/or `executable` must match when given). The
//! actuator checks again and refuses pid 1, itself, any thread of the daemon, the processes of
//! protected users (their PostgreSQL server), systemd and journald. A process that is already
//! gone counts as success. Not undoable.
//!
//! A pid could still be reused between the actuator's check and the signal; the window is a few
//! microseconds and needs a full pid wrap-around inside it.

use serde_json::Value;

use super::{ActionContext, ActionError, params};
use crate::actuator::protocol::{Request, SignalName, SignalRequest};
use crate::sys;

/// `process.kill`'s request.
pub fn request(params: &Value, _ctx: &ActionContext) -> Result<Request, ActionError> {
    signal_request(params).map(Request::Signal)
}

/// The typed request from the step's parameters; the daemon's own checks come first (the
/// actuator repeats them).
fn signal_request(params: &Value) -> Result<SignalRequest, ActionError> {
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
    let signal = SignalName::parse(signal_name).ok_or_else(|| {
        ActionError::Permanent(format!(
            "signal `{signal_name}` is not one of {}",
            SignalName::names()
        ))
    })?;
    let executable = match params::optional_string(params, "executable")? {
        Some(_) => Some(params::absolute_path(params, "executable")?),
        None => None,
    };
    Ok(SignalRequest {
        pid,
        signal,
        start_time: params::optional_u64(params, "start_time")?,
        executable,
    })
}
