//! Response actions: what a step can do to the host, behind one interface.
//!
//! Each action declares its parameters, whether and how it can be undone, and its default risk
//! tier ([`ActionSpec`], checked when a playbook loads), and executes with an
//! [`ActionContext`] (execution, step, org, idempotency key, deadline). Errors are classed
//! transient (worth a retry) or permanent; the executor imposes the deadline and records the
//! outcome before and after.

pub mod actuator_client;
pub mod breaker;
pub mod child;
pub mod exec;
pub mod exec_runner;
pub mod file;
pub mod http_post;
pub mod limits;
pub mod net;
pub mod noop;
pub mod notify;
mod params;
pub mod process_kill;
pub mod specs;

pub use params::{UrlError, http_url};

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::ActionsConfig;
use crate::registry::model::RiskTier;
use actuator_client::ActuatorAction;

/// The future an action returns.
pub type ActionFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ActionOutput, ActionError>> + Send + 'a>>;

/// One kind of response action (`exec`, `file.quarantine`, …).
pub trait Action: Send + Sync {
    fn spec(&self) -> &'static ActionSpec;

    /// Does the thing. `params` are the step's `with:` after template rendering and were
    /// checked against [`ActionSpec::params`] at load. Must be idempotent under
    /// `ctx.idempotency_key`: a resumed run calls it again with the same key.
    fn execute<'a>(
        &'a self,
        params: &'a serde_json::Value,
        ctx: &'a ActionContext,
    ) -> ActionFuture<'a>;
}

/// What the executor hands an action.
#[derive(Debug, Clone)]
pub struct ActionContext {
    pub execution_id: uuid::Uuid,
    pub step_id: String,
    pub org_id: String,
    /// SHA-256(execution_id ‖ step_id), or of the rollback's id for an undo.
    pub idempotency_key: [u8; 32],
    /// The action must have finished (and killed what it started) by then.
    pub deadline: tokio::time::Instant,
    /// Fired on cancel or shutdown; the action stops and cleans up.
    pub cancel: CancellationToken,
}

impl ActionContext {
    pub fn idempotency_key_hex(&self) -> String {
        hex::encode(self.idempotency_key)
    }
}

/// A bounded, secret-free summary of what an action did (stored and shown in the status API).
#[derive(Debug, Clone, PartialEq)]
pub struct ActionOutput {
    pub summary: serde_json::Value,
}

impl ActionOutput {
    pub fn new(summary: serde_json::Value) -> ActionOutput {
        ActionOutput { summary }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// Might succeed if tried again (timeouts, 5xx, a busy resource).
    #[error("transient: {0}")]
    Transient(String),
    /// Will fail again (bad input, 4xx, refused by policy).
    #[error("permanent: {0}")]
    Permanent(String),
}

impl ActionError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ActionError::Transient(_))
    }
}

/// The static description of an action, used to validate playbooks at load.
#[derive(Debug)]
pub struct ActionSpec {
    pub name: &'static str,
    pub params: &'static [ParamSpec],
    pub undo: Undo,
    pub default_risk: RiskTier,
}

#[derive(Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub kind: ParamKind,
    pub required: bool,
}

/// The type a rendered parameter must have. A template that stands alone (`"{{ subject.pid }}"`)
/// takes the type of the input it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    String,
    Integer,
    AbsolutePath,
    /// A list of strings (argv); each element is one argument, never split.
    StringList,
    /// An IPv4/IPv6 address or CIDR.
    IpOrCidr,
    Url,
    /// A signal name such as `KILL` or `TERM`.
    Signal,
    /// A duration such as `10m` (see `registry::model::DurationSpec`).
    Duration,
    /// A syslog priority name: `emerg` … `debug`.
    Priority,
    /// The name of a secret (a credential file), never its value.
    SecretName,
    /// Any JSON value (a webhook body).
    Json,
}

/// What a step using the action may say under `rollback:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// Nothing can undo it: the step must say `rollback: none`.
    NotUndoable,
    /// Its natural undo is this action (the step may still say `rollback: none`).
    By(&'static str),
    /// Only the playbook knows (exec, webhooks): any rollback action, or `none`.
    PlaybookDefined,
}

/// Every action this build knows, whether or not it is enabled on this host. The registry
/// validates playbooks against this table; an unknown name is a load-time error.
pub fn specs() -> &'static [&'static ActionSpec] {
    specs::ALL
}

pub fn spec(name: &str) -> Option<&'static ActionSpec> {
    specs().iter().copied().find(|spec| spec.name == name)
}

/// The enabled actions, built from configuration.
#[derive(Clone)]
pub struct Actions {
    by_name: HashMap<&'static str, Arc<dyn Action>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActionSetupError {
    #[error("action `{action}`: {reason}")]
    Invalid {
        action: &'static str,
        reason: String,
    },
}

impl Actions {
    /// [`Actions::with_actuator`] with the actuator at its default socket.
    pub fn from_config(config: &ActionsConfig) -> Result<Actions, ActionSetupError> {
        Actions::with_actuator(config, &crate::config::ActuatorConfig::default().socket)
    }

    /// Builds every action. Nothing touches the host here; `process.kill`, `net.*` and
    /// `file.*` are clients of the actuator at `actuator_socket` (connected per step).
    pub fn with_actuator(
        config: &ActionsConfig,
        actuator_socket: &std::path::Path,
    ) -> Result<Actions, ActionSetupError> {
        let mut actions = Actions {
            by_name: HashMap::new(),
        };
        if config.net.nft_command.is_empty() {
            return Err(ActionSetupError::Invalid {
                action: "net.block_ip",
                reason: "actions.net.nft_command is empty".into(),
            });
        }
        let http = Arc::new(http_post::HttpSender::new(&config.http));
        let actuator = actuator_client::ActuatorClient::new(actuator_socket.to_owned());
        let never_block = Arc::<[ipnet::IpNet]>::from(config.net.never_block.as_slice());
        actions.insert(Arc::new(noop::Noop));
        actions.insert(Arc::new(exec::Exec::new(&config.exec)));
        actions.insert(Arc::new(http_post::HttpPost::new(Arc::clone(&http))));
        actions.insert(Arc::new(notify::Notify::new(http)));
        let by_actuator = |spec, request: actuator_client::RequestFn| {
            ActuatorAction::new(spec, actuator.clone(), request)
        };
        actions.insert(Arc::new(by_actuator(
            &specs::FILE_QUARANTINE,
            file::quarantine_request,
        )));
        actions.insert(Arc::new(by_actuator(
            &specs::FILE_RESTORE,
            file::restore_request,
        )));
        actions.insert(Arc::new(by_actuator(
            &specs::PROCESS_KILL,
            process_kill::request,
        )));
        let blocked = Arc::clone(&never_block);
        actions.insert(Arc::new(ActuatorAction::new(
            &specs::NET_BLOCK_IP,
            actuator.clone(),
            move |params, _| net::block_request(params, &blocked),
        )));
        actions.insert(Arc::new(ActuatorAction::new(
            &specs::NET_UNBLOCK_IP,
            actuator,
            move |params, _| net::unblock_request(params, &never_block),
        )));
        Ok(actions)
    }

    /// Adds or replaces one action (tests use this to inject counting actions).
    pub fn insert(&mut self, action: Arc<dyn Action>) {
        self.by_name.insert(action.spec().name, action);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Action>> {
        self.by_name.get(name)
    }
}
