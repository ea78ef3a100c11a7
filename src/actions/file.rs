//! `file.quarantine` asks the actuator to move a regular file into its quarantine directory
//! (see [`crate::actuator::quarantine`]), keeping owner, mode and hash; only files under
//! `actions.file.roots`; idempotent under the step's key. `file.restore`, its undo and
//! inverse, asks it to put the quarantined file back where it came from, found by its original
//! path, with its mode and owner, after checking its sha256; already restored → success with
//! the same summary. Each is the other's undo, and both name the file the same way.

use std::path::PathBuf;

use serde_json::Value;

use super::{ActionContext, ActionError, params};
use crate::actuator::protocol::{QuarantineKey, QuarantineRequest, Request, RestoreRequest};

/// The parameters of `file.quarantine` and `file.restore`, read once for both.
struct FileParams {
    /// `path`: absolute, without NUL (the actuator checks the roots).
    path: PathBuf,
}

impl FileParams {
    fn read(params: &Value) -> Result<FileParams, ActionError> {
        Ok(FileParams {
            path: params::absolute_path(params, "path")?,
        })
    }
}

/// `file.quarantine`'s request: the file, and the step's key naming its place in quarantine.
pub fn quarantine_request(params: &Value, ctx: &ActionContext) -> Result<Request, ActionError> {
    let FileParams { path } = FileParams::read(params)?;
    let key = QuarantineKey::try_from(ctx.idempotency_key_hex()).map_err(ActionError::Permanent)?;
    Ok(Request::Quarantine(QuarantineRequest { path, key }))
}

/// `file.restore`'s request: the file, found in quarantine by its original path.
pub fn restore_request(params: &Value, _ctx: &ActionContext) -> Result<Request, ActionError> {
    let FileParams { path } = FileParams::read(params)?;
    Ok(Request::Restore(RestoreRequest { path }))
}
