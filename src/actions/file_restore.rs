//! `file.restore`: puts a quarantined file back where it came from, found by its original
//! path, with its mode and owner, after checking its sha256 (see [`super::quarantine`]).
//! Undo: `file.quarantine`. Already restored → success with the same summary.

use std::sync::Arc;

use serde_json::Value;

use super::quarantine::QuarantineStore;
use super::{Action, ActionContext, ActionError, ActionFuture, ActionOutput, ActionSpec, params};

pub struct FileRestore {
    store: Arc<QuarantineStore>,
}

impl FileRestore {
    pub fn new(store: Arc<QuarantineStore>) -> FileRestore {
        FileRestore { store }
    }
}

impl Action for FileRestore {
    fn spec(&self) -> &'static ActionSpec {
        &super::specs::FILE_RESTORE
    }

    fn execute<'a>(&'a self, params: &'a Value, _ctx: &'a ActionContext) -> ActionFuture<'a> {
        Box::pin(async move {
            let path = params::absolute_path(params, "path")?;
            let store = Arc::clone(&self.store);
            tokio::task::spawn_blocking(move || store.restore(&path))
                .await
                .map_err(|e| ActionError::Transient(format!("restore task failed: {e}")))?
                .map(ActionOutput::new)
        })
    }
}
