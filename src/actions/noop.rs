//! `noop`: does nothing and succeeds; for tests and benchmarks.

use super::{Action, ActionContext, ActionFuture, ActionOutput, ActionSpec};

pub struct Noop;

impl Action for Noop {
    fn spec(&self) -> &'static ActionSpec {
        &super::specs::NOOP
    }

    fn execute<'a>(
        &'a self,
        _params: &'a serde_json::Value,
        _ctx: &'a ActionContext,
    ) -> ActionFuture<'a> {
        Box::pin(async { Ok(ActionOutput::new(serde_json::json!({}))) })
    }
}
