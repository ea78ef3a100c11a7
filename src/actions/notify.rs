//! `notify`: a structured journald record (tracing target `playbookd::notify`) at the chosen
//! syslog priority, and optionally the same message posted to a webhook under `http.post`'s
//! rules (the same [`HttpSender`]).

use std::sync::Arc;

use serde_json::{Value, json};

use super::ActionError;
use super::http_post::HttpSender;
use super::{Action, ActionContext, ActionFuture, ActionOutput, ActionSpec, params};

pub struct Notify {
    sender: Arc<HttpSender>,
}

impl Notify {
    pub fn new(sender: Arc<HttpSender>) -> Notify {
        Notify { sender }
    }

    async fn run(&self, params: &Value, ctx: &ActionContext) -> Result<ActionOutput, ActionError> {
        let message = params::string(params, "message")?;
        if message.len() > MAX_MESSAGE_BYTES {
            return Err(ActionError::Permanent(format!(
                "parameter `message` is longer than {MAX_MESSAGE_BYTES} bytes"
            )));
        }
        let priority = params::optional_string(params, "priority")?.unwrap_or("notice");
        let level = Level::parse(priority).ok_or_else(|| {
            ActionError::Permanent(format!(
                "parameter `priority`: `{priority}` is not one of emerg, alert, crit, err, warning, notice, info, debug"
            ))
        })?;
        let execution_id = ctx.execution_id.to_string();
        // tracing needs the level at compile time: one call per level. The syslog name rides
        // along as PRIORITY_NAME because tracing has fewer levels than syslog.
        macro_rules! record {
            ($level:expr) => {
                tracing::event!(
                    target: "playbookd::notify",
                    $level,
                    execution_id = %execution_id,
                    step_id = %ctx.step_id,
                    org_id = %ctx.org_id,
                    priority_name = priority,
                    "{message}"
                )
            };
        }
        match level {
            Level::Error => record!(tracing::Level::ERROR),
            Level::Warn => record!(tracing::Level::WARN),
            Level::Info => record!(tracing::Level::INFO),
            Level::Debug => record!(tracing::Level::DEBUG),
        }
        let mut summary = json!({"priority": priority, "journald": true});
        if let Some(url) = params::optional_string(params, "webhook")? {
            let body = json!({
                "message": message,
                "priority": priority,
                "execution_id": execution_id,
                "step_id": ctx.step_id,
                "org_id": ctx.org_id,
            });
            summary["webhook"] = self.sender.post(url, &body, None, ctx).await?;
        }
        Ok(ActionOutput::new(summary))
    }
}

impl Action for Notify {
    fn spec(&self) -> &'static ActionSpec {
        &super::specs::NOTIFY
    }

    fn execute<'a>(&'a self, params: &'a Value, ctx: &'a ActionContext) -> ActionFuture<'a> {
        Box::pin(self.run(params, ctx))
    }
}

/// Syslog priorities folded onto tracing's levels (tracing-journald maps them back to
/// PRIORITY 3, 4, 5 and 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    fn parse(priority: &str) -> Option<Level> {
        Some(match priority {
            "emerg" | "alert" | "crit" | "err" => Level::Error,
            "warning" => Level::Warn,
            "notice" | "info" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }
}

const MAX_MESSAGE_BYTES: usize = 8 * 1024;
