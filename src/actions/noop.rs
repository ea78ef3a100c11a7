//! `noop`: does nothing and succeeds; for tests and benchmarks.

use super::{Action, ActionContext, ActionFuture, ActionOutput, ActionSpec, Undo};
use crate::registry::model::RiskTier;

pub static SPEC: ActionSpec = ActionSpec {
    name: "noop",
    params: &[],
    undo: Undo::By("noop"),
    default_risk: RiskTier::Low,
};

pub struct Noop;

impl Action for Noop {
    fn spec(&self) -> &'static ActionSpec {
        &SPEC
    }

    fn execute<'a>(
        &'a self,
        _params: &'a serde_json::Value,
        _ctx: &'a ActionContext,
    ) -> ActionFuture<'a> {
        Box::pin(async { Ok(ActionOutput::new(serde_json::json!({}))) })
    }
}
