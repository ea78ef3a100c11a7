//! Shared fixtures for the action tests: a context, and the enabled actions from a config.

use std::time::Duration;

use playbookd::actions::{ActionContext, ActionError, ActionOutput, Actions};
use playbookd::config::ActionsConfig;
use tokio_util::sync::CancellationToken;

pub fn ctx(within: Duration) -> ActionContext {
    let execution_id = uuid::Uuid::new_v4();
    let mut idempotency_key = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut idempotency_key);
    ActionContext {
        execution_id,
        step_id: "step-1".into(),
        org_id: "acme".into(),
        idempotency_key,
        deadline: tokio::time::Instant::now() + within,
        cancel: CancellationToken::new(),
    }
}

pub async fn run(
    config: &ActionsConfig,
    action: &str,
    params: serde_json::Value,
    ctx: &ActionContext,
) -> Result<ActionOutput, ActionError> {
    let actions = Actions::from_config(config).expect("actions");
    actions
        .get(action)
        .unwrap_or_else(|| panic!("action {action} is not registered"))
        .execute(&params, ctx)
        .await
}

pub fn is_root() -> bool {
    playbookd::sys::effective_uid() == 0
}

/// Runs a setup command the test needs (ip, mount); panics with its stderr on failure.
pub fn must(argv: &[&str]) {
    let output = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    assert!(
        output.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
