//! `playbookd simulate --decision FILE PLAYBOOK`: the path a decision would take through a
//! playbook, with parameters rendered and the approvals each step would wait for. Nothing is
//! executed and nothing is written anywhere: this module has no access to actions or the store.

use std::path::Path;

use serde_json::{Value, json};

use crate::approvals::required_approvals;
use crate::intake::decision;
use crate::registry::model::{Playbook, Rollback};
use crate::registry::playbook::{self, Document};
use crate::registry::template::{self, TemplateContext};
use crate::registry::when;

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The file could not be read at all (exit 66, as opposed to an invalid one).
    #[error("cannot read {path}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Decision { path: String, reason: String },
    #[error("{path}: {reason}")]
    Playbook { path: String, reason: String },
}

/// 66 when a file could not be read, 65 when it is invalid.
impl crate::cli::VerbError for SimulateError {
    fn exit_code(&self) -> std::process::ExitCode {
        std::process::ExitCode::from(match self {
            SimulateError::Unreadable { .. } => crate::cli::EXIT_NOINPUT,
            SimulateError::Decision { .. } | SimulateError::Playbook { .. } => {
                crate::cli::EXIT_DATAERR
            }
        })
    }
}

/// The plan as JSON: one entry per step, in order.
pub fn plan(
    decision_path: &Path,
    playbook_path: &Path,
    require_approval: bool,
) -> Result<Value, SimulateError> {
    let decision_error = |reason: String| SimulateError::Decision {
        path: decision_path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(decision_path).map_err(|source| SimulateError::Unreadable {
        path: decision_path.display().to_string(),
        source,
    })?;
    let (decision, _) = decision::decode(bytes.trim_ascii()).map_err(decision_error)?;
    let playbook = match playbook::load_document(playbook_path) {
        Ok(Document::Playbook(playbook)) => playbook,
        Ok(Document::Bindings(_)) => {
            return Err(SimulateError::Playbook {
                path: playbook_path.display().to_string(),
                reason: "this is a bindings file, not a playbook".into(),
            });
        }
        Err(playbook::LoadError::Io(source)) => {
            return Err(SimulateError::Unreadable {
                path: playbook_path.display().to_string(),
                source,
            });
        }
        Err(error @ playbook::LoadError::Document(_)) => {
            return Err(SimulateError::Playbook {
                path: playbook_path.display().to_string(),
                reason: error.to_string(),
            });
        }
    };
    decision::check_subject(&decision.subject, &playbook.inputs).map_err(decision_error)?;
    decision::check_exec_arguments(&decision, &playbook).map_err(decision_error)?;
    let context = decision.template_context();
    Ok(json!({
        "playbook": format!("{}@{}", playbook.id, playbook.version),
        "org_id": decision.org_id,
        "executed": false,
        "steps": steps(&playbook, &context, require_approval),
    }))
}

fn steps(playbook: &Playbook, context: &TemplateContext<'_>, require_approval: bool) -> Vec<Value> {
    playbook
        .steps
        .iter()
        .map(|step| {
            let condition = step.when.as_deref().map(|text| when::parse(text).and_then(|expr| expr.eval(context)));
            let decision = match &condition {
                None | Some(Ok(true)) => "run".to_owned(),
                Some(Ok(false)) => format!("skip: when `{}` is false", step.when.as_deref().unwrap_or_default()),
                Some(Err(error)) => format!("fail: {error}"),
            };
            let risk = playbook::effective_risk(step);
            let approvals = risk.and_then(|risk| required_approvals(risk, require_approval)).unwrap_or(0);
            let params = template::render(&step.params, context).unwrap_or_else(|e| json!({"error": e.to_string()}));
            let rollback = match &step.rollback {
                Rollback::None => json!("none"),
                Rollback::Action { action, params } => json!({
                    "action": action,
                    "with": template::render(params, context).unwrap_or_else(|e| json!({"error": e.to_string()})),
                }),
            };
            json!({
                "step": step.id,
                "action": step.action,
                "decision": decision,
                "risk": risk.map(|r| r.as_str()),
                "approvals_needed": approvals,
                "with": params,
                "rollback": rollback,
            })
        })
        .collect()
}

/// The plan for people: one line per step.
pub fn render_text(plan: &Value) -> String {
    let mut out = format!(
        "dry run of {} for org {} (nothing is executed)\n",
        plan["playbook"].as_str().unwrap_or_default(),
        plan["org_id"].as_str().unwrap_or_default()
    );
    for step in plan["steps"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<16} {:<16} {:<10} approvals: {}  with: {}  rollback: {}\n  {:<16} -> {}\n",
            step["step"].as_str().unwrap_or_default(),
            step["action"].as_str().unwrap_or_default(),
            step["risk"].as_str().unwrap_or("?"),
            step["approvals_needed"],
            step["with"],
            step["rollback"],
            "",
            step["decision"].as_str().unwrap_or_default(),
        ));
    }
    out
}
