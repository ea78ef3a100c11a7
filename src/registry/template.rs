//! `{{ … }}` templates in step parameters (placeholder: standalone references only).

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template `{0}` does not resolve")]
    Unresolved(String),
}

#[derive(Debug, Clone)]
pub struct DecisionFields {
    pub decision_id: String,
    pub policy: String,
    pub outcome: String,
    pub org_id: String,
    pub severity: String,
}

pub struct TemplateContext<'a> {
    pub subject: &'a serde_json::Map<String, Value>,
    pub decision: DecisionFields,
    pub execution_id: uuid::Uuid,
}

pub fn render(value: &Value, ctx: &TemplateContext<'_>) -> Result<Value, TemplateError> {
    Ok(match value {
        Value::String(text) => render_string(text, ctx)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| render(item, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render(v, ctx)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

fn render_string(text: &str, ctx: &TemplateContext<'_>) -> Result<Value, TemplateError> {
    let trimmed = text.trim();
    let Some(inner) = trimmed
        .strip_prefix("{{")
        .and_then(|rest| rest.strip_suffix("}}"))
    else {
        return Ok(Value::String(text.to_owned()));
    };
    let name = inner.trim();
    if let Some(field) = name.strip_prefix("subject.") {
        return ctx
            .subject
            .get(field)
            .cloned()
            .ok_or_else(|| TemplateError::Unresolved(name.to_owned()));
    }
    match name {
        "execution.id" => Ok(Value::String(ctx.execution_id.to_string())),
        "decision.org_id" => Ok(Value::String(ctx.decision.org_id.clone())),
        _ => Err(TemplateError::Unresolved(name.to_owned())),
    }
}
