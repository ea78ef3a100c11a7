//! The load-time half of the configuration's limits on step parameters: every literal value a
//! step (or its undo) gives to a parameter the configuration constrains goes through the same
//! function the action runs before it acts ([`crate::actions::limits`]).
//!
//! What a template leaves open is checked as far as its literal text decides it: the scheme
//! and host of a templated URL (the playbook validator already requires them to be literal)
//! and the directory of a templated path. An `exec` command must be literal: the decision
//! must never choose which program runs, and a literal is what the allowlist can be checked
//! against. The rest of a templated value is checked when the step runs.

use std::path::Path;

use reqwest::Url;
use serde_json::Value;

use super::model::{Playbook, Rollback};
use super::template::{self, Segment};
use crate::actions::limits::{ActionLimits, Limit, Refusal};
use crate::actions::nft;

/// A step parameter the configuration does not allow: where, and which limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {detail} (allowed by `{key}`)", key = self.limit.key())]
pub struct LimitViolation {
    /// `step `block`, with.address` or `step `run`, rollback.with.command`.
    pub at: String,
    pub limit: Limit,
    pub detail: String,
}

/// Checks every step of `playbook`, and every undo, against `limits`.
pub fn check_playbook_limits(
    playbook: &Playbook,
    limits: &ActionLimits,
) -> Result<(), LimitViolation> {
    for step in &playbook.steps {
        check_action(&step.id, "with", &step.action, &step.params, limits)?;
        match &step.rollback {
            Rollback::None => {}
            Rollback::Action { action, params } => {
                check_action(&step.id, "rollback.with", action, params, limits)?;
            }
        }
    }
    Ok(())
}

fn check_action(
    step: &str,
    field: &str,
    action: &str,
    params: &Value,
    limits: &ActionLimits,
) -> Result<(), LimitViolation> {
    let violation = |name: &str, refusal: Refusal| LimitViolation {
        at: format!("step `{step}`, {field}.{name}"),
        limit: refusal.limit,
        detail: refusal.detail,
    };
    let param = |name: &str| params.get(name).and_then(Value::as_str);
    match action {
        "exec" => {
            if let Some(command) = param("command") {
                check_command(command, limits).map_err(|r| violation("command", r))?;
            }
        }
        "http.post" => {
            if let Some(url) = param("url") {
                check_url(url, limits).map_err(|r| violation("url", r))?;
            }
        }
        "notify" => {
            if let Some(url) = param("webhook") {
                check_url(url, limits).map_err(|r| violation("webhook", r))?;
            }
        }
        "file.quarantine" | "file.restore" => {
            if let Some(path) = param("path") {
                check_path(path, limits).map_err(|r| violation("path", r))?;
            }
        }
        "net.block_ip" | "net.unblock_ip" => {
            if let Some(address) = param("address") {
                check_address(address, limits).map_err(|r| violation("address", r))?;
            }
        }
        // Nothing the configuration decides: process.kill (its target comes from the
        // decision and is checked against the live process), noop.
        _ => {}
    }
    Ok(())
}

/// The literal text before the first template, and whether there was a template at all.
fn literal_prefix(text: &str) -> (String, bool) {
    // Unparseable templates were refused by the validator before this runs; treat them as
    // wholly templated so nothing unchecked passes as a literal.
    let Ok(segments) = template::segments(text) else {
        return (String::new(), true);
    };
    let templated = segments
        .iter()
        .any(|segment| matches!(segment, Segment::Template(_)));
    let prefix = match segments.first() {
        Some(Segment::Text(text)) => text.clone(),
        _ => String::new(),
    };
    (prefix, templated)
}

fn check_command(command: &str, limits: &ActionLimits) -> Result<(), Refusal> {
    let (_, templated) = literal_prefix(command);
    if templated {
        return Err(Refusal {
            limit: Limit::ExecCommand,
            detail: format!(
                "the command must be written literally, never taken from the decision, so it \
                 can be checked against {}",
                Limit::ExecCommand.key()
            ),
        });
    }
    limits.check_exec_command(Path::new(command))
}

fn check_url(url: &str, limits: &ActionLimits) -> Result<(), Refusal> {
    let (prefix, templated) = literal_prefix(url);
    let literal = if templated {
        // The validator made the prefix spell `scheme://host` and then `/`, `?` or `#`:
        // what the decision fills in cannot change the destination, so check that.
        match prefix.find("://").and_then(|start| {
            prefix[start + 3..]
                .find(['/', '?', '#'])
                .map(|end| &prefix[..start + 3 + end])
        }) {
            Some(origin) => format!("{origin}/"),
            None => return Ok(()),
        }
    } else {
        url.to_owned()
    };
    // A URL the parser refuses was already refused by the validator's literal check.
    match Url::parse(&literal) {
        Ok(parsed) => limits.check_http_url(&parsed).map(drop),
        Err(_) => Ok(()),
    }
}

fn check_path(path: &str, limits: &ActionLimits) -> Result<(), Refusal> {
    let (prefix, templated) = literal_prefix(path);
    if !templated {
        return limits.check_outside_quarantine(Path::new(path));
    }
    // `/var/lib/playbookd/quarantine/{{ subject.name }}`: the literal directory already says
    // where it goes.
    match prefix.rfind('/') {
        Some(end) if end > 0 => limits.check_outside_quarantine(Path::new(&prefix[..end])),
        _ => Ok(()),
    }
}

fn check_address(address: &str, limits: &ActionLimits) -> Result<(), Refusal> {
    let (_, templated) = literal_prefix(address);
    if templated {
        return Ok(());
    }
    // The same parser the action uses; the validator already refused a literal it cannot parse.
    match nft::parse_target(address) {
        Ok(target) => limits.check_network_target(&target),
        Err(_) => Ok(()),
    }
}
