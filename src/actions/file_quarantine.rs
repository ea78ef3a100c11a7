//! `file.quarantine`: asks the actuator to move a regular file into its quarantine directory
//! (see [`crate::actuator::quarantine`]), keeping owner, mode and hash; only files under
//! `actions.file.roots`. Undo: `file.restore`. Idempotent under the step's key.

use serde_json::{Value, json};

use super::actuator_client::{ActuatorClient, unexpected};
use super::{Action, ActionContext, ActionError, ActionFuture, ActionOutput, ActionSpec, params};
use crate::actuator::protocol::{QuarantineKey, QuarantineRequest, Reply, Request};

/// `file.quarantine`, a client of the actuator.
pub struct FileQuarantine {
    actuator: ActuatorClient,
}

impl FileQuarantine {
    /// Sends its requests to `actuator`.
    pub fn new(actuator: ActuatorClient) -> FileQuarantine {
        FileQuarantine { actuator }
    }
}

impl Action for FileQuarantine {
    fn spec(&self) -> &'static ActionSpec {
        &super::specs::FILE_QUARANTINE
    }

    fn execute<'a>(&'a self, params: &'a Value, ctx: &'a ActionContext) -> ActionFuture<'a> {
        Box::pin(async move {
            let path = params::absolute_path(params, "path")?;
            let key = QuarantineKey::try_from(ctx.idempotency_key_hex())
                .map_err(ActionError::Permanent)?;
            let request = Request::Quarantine(QuarantineRequest { path, key });
            match self.actuator.call(&request, ctx).await? {
                Reply::Quarantined {
                    path,
                    stored_as,
                    sha256,
                    size,
                } => Ok(ActionOutput::new(json!({
                    "path": path,
                    "quarantined_as": stored_as,
                    "sha256": sha256,
                    "size": size,
                }))),
                other => Err(unexpected("quarantine", &other)),
            }
        })
    }
}
