//! `file.restore`: asks the actuator to put a quarantined file back where it came from, found
//! by its original path, with its mode and owner, after checking its sha256 (see
//! [`crate::actuator::quarantine`]). Undo: `file.quarantine`. Already restored → success with
//! the same summary.

use serde_json::{Value, json};

use super::actuator_client::{ActuatorClient, unexpected};
use super::{Action, ActionContext, ActionFuture, ActionOutput, ActionSpec, params};
use crate::actuator::protocol::{Reply, Request, RestoreRequest};

/// `file.restore`, a client of the actuator.
pub struct FileRestore {
    actuator: ActuatorClient,
}

impl FileRestore {
    /// Sends its requests to `actuator`.
    pub fn new(actuator: ActuatorClient) -> FileRestore {
        FileRestore { actuator }
    }
}

impl Action for FileRestore {
    fn spec(&self) -> &'static ActionSpec {
        &super::specs::FILE_RESTORE
    }

    fn execute<'a>(&'a self, params: &'a Value, ctx: &'a ActionContext) -> ActionFuture<'a> {
        Box::pin(async move {
            let path = params::absolute_path(params, "path")?;
            let request = Request::Restore(RestoreRequest { path });
            match self.actuator.call(&request, ctx).await? {
                Reply::Restored {
                    path,
                    restored_from,
                    sha256,
                    size,
                } => Ok(ActionOutput::new(json!({
                    "path": path,
                    "restored_from": restored_from,
                    "sha256": sha256,
                    "size": size,
                }))),
                other => Err(unexpected("restore", &other)),
            }
        })
    }
}
