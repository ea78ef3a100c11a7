//! `file.quarantine`: moves a regular file into the quarantine directory (see
//! [`super::quarantine`]). Undo: `file.restore`. Idempotent under the step's key.

use std::sync::Arc;

use serde_json::Value;

use super::quarantine::QuarantineStore;
use super::{Action, ActionContext, ActionError, ActionFuture, ActionOutput, ActionSpec, params};

pub struct FileQuarantine {
    store: Arc<QuarantineStore>,
}

impl FileQuarantine {
    pub fn new(store: Arc<QuarantineStore>) -> FileQuarantine {
        FileQuarantine { store }
    }
}

impl Action for FileQuarantine {
    fn spec(&self) -> &'static ActionSpec {
        &super::specs::FILE_QUARANTINE
    }

    fn execute<'a>(&'a self, params: &'a Value, ctx: &'a ActionContext) -> ActionFuture<'a> {
        Box::pin(async move {
            let path = params::absolute_path(params, "path")?;
            let key = ctx.idempotency_key_hex();
            let store = Arc::clone(&self.store);
            // Copies and hashes can take a while: off the async threads.
            tokio::task::spawn_blocking(move || store.quarantine(&path, &key))
                .await
                .map_err(|e| ActionError::Transient(format!("quarantine task failed: {e}")))?
                .map(ActionOutput::new)
        })
    }
}
