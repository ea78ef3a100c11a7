//! `{{ … }}` templates in a step's `with:` parameters.
//!
//! The syntax is deliberately tiny: `{{ subject.NAME }}`, `{{ decision.FIELD }}` or
//! `{{ execution.id }}`, spaces inside the braces optional. There are no filters, no
//! expressions and no code: a template names one value and rendering copies that value, so a
//! decision can never make the daemon evaluate anything it sends.
//!
//! A string that is exactly one template takes the referenced value with its JSON type (an
//! integer stays an integer); a template inside a longer string is interpolated as text.
//! Object keys are never templated.

use serde_json::Value;
use uuid::Uuid;

/// One value a template (or a `when` expression) names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reference {
    /// `subject.NAME`: a field of the decision's subject; must be a declared input.
    Subject(String),
    /// `decision.FIELD`: a field of the decision itself.
    Decision(DecisionField),
    /// `execution.id`: the run's UUID.
    ExecutionId,
}

/// The decision fields a template may name (the documented built-ins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DecisionField {
    DecisionId,
    Policy,
    Outcome,
    OrgId,
    Severity,
}

impl DecisionField {
    /// Every built-in decision field, by the name used after `decision.`.
    pub const ALL: [(&'static str, DecisionField); 5] = [
        ("decision_id", DecisionField::DecisionId),
        ("policy", DecisionField::Policy),
        ("outcome", DecisionField::Outcome),
        ("org_id", DecisionField::OrgId),
        ("severity", DecisionField::Severity),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DecisionField::DecisionId => "decision_id",
            DecisionField::Policy => "policy",
            DecisionField::Outcome => "outcome",
            DecisionField::OrgId => "org_id",
            DecisionField::Severity => "severity",
        }
    }

    fn parse(name: &str) -> Option<DecisionField> {
        DecisionField::ALL
            .iter()
            .find(|(known, _)| *known == name)
            .map(|(_, field)| *field)
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Subject(name) => write!(f, "subject.{name}"),
            Reference::Decision(field) => write!(f, "decision.{}", field.as_str()),
            Reference::ExecutionId => f.write_str("execution.id"),
        }
    }
}

impl Reference {
    /// Parses a dotted name such as `subject.pid` or `decision.severity`.
    pub fn parse(name: &str) -> Result<Reference, TemplateError> {
        let unknown = || TemplateError::UnknownName(name.to_owned());
        let (scope, field) = name.split_once('.').ok_or_else(unknown)?;
        match scope {
            "subject" if is_field_name(field) => Ok(Reference::Subject(field.to_owned())),
            "decision" => DecisionField::parse(field)
                .map(Reference::Decision)
                .ok_or_else(unknown),
            "execution" if field == "id" => Ok(Reference::ExecutionId),
            _ => Err(unknown()),
        }
    }

    /// The referenced value in `ctx`; a subject field the decision lacks is an error.
    pub fn resolve(&self, ctx: &TemplateContext<'_>) -> Result<Value, TemplateError> {
        match self {
            Reference::Subject(name) => ctx
                .subject
                .get(name)
                .cloned()
                .ok_or_else(|| TemplateError::MissingSubjectField(name.clone())),
            Reference::Decision(field) => Ok(Value::String(ctx.decision.get(*field).to_owned())),
            Reference::ExecutionId => Ok(Value::String(ctx.execution_id.to_string())),
        }
    }
}

/// What a template may read when a step runs.
#[derive(Debug, Clone, Copy)]
pub struct TemplateContext<'a> {
    /// The decision's `subject` object, exactly as received.
    pub subject: &'a serde_json::Map<String, Value>,
    pub decision: DecisionFields<'a>,
    pub execution_id: Uuid,
}

/// The decision's own fields, as the policy engine sent them.
#[derive(Debug, Clone, Copy)]
pub struct DecisionFields<'a> {
    pub decision_id: &'a str,
    pub policy: &'a str,
    pub outcome: &'a str,
    pub org_id: &'a str,
    pub severity: &'a str,
}

impl DecisionFields<'_> {
    pub fn get(&self, field: DecisionField) -> &str {
        match field {
            DecisionField::DecisionId => self.decision_id,
            DecisionField::Policy => self.policy,
            DecisionField::Outcome => self.outcome,
            DecisionField::OrgId => self.org_id,
            DecisionField::Severity => self.severity,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("`{{{{` without a matching `}}}}` in `{0}`")]
    Unclosed(String),
    #[error(
        "unknown template name `{0}` (use subject.NAME, decision.decision_id|policy|outcome|org_id|severity or execution.id)"
    )]
    UnknownName(String),
    #[error("the decision's subject has no field `{0}`")]
    MissingSubjectField(String),
    #[error("`{0}` is {1}, which cannot be interpolated into text")]
    NotText(String, &'static str),
}

/// One piece of a templated string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Text(String),
    Template(Reference),
}

/// Splits a string into literal text and template references.
pub fn segments(text: &str) -> Result<Vec<Segment>, TemplateError> {
    let mut segments = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            segments.push(Segment::Text(rest[..open].to_owned()));
        }
        let after_open = &rest[open + 2..];
        let close = after_open
            .find("}}")
            .ok_or_else(|| TemplateError::Unclosed(text.to_owned()))?;
        segments.push(Segment::Template(Reference::parse(
            after_open[..close].trim(),
        )?));
        rest = &after_open[close + 2..];
    }
    if !rest.is_empty() {
        segments.push(Segment::Text(rest.to_owned()));
    }
    Ok(segments)
}

/// If `text` is exactly one template (nothing around it), the reference it names.
pub fn standalone(text: &str) -> Result<Option<Reference>, TemplateError> {
    match segments(text)?.as_slice() {
        [Segment::Template(reference)] => Ok(Some(reference.clone())),
        _ => Ok(None),
    }
}

/// Every reference in `value` (strings anywhere inside arrays and object values), in order.
pub fn references(value: &Value) -> Result<Vec<Reference>, TemplateError> {
    let mut found = Vec::new();
    visit_strings(value, &mut |text| {
        for segment in segments(text)? {
            if let Segment::Template(reference) = segment {
                found.push(reference);
            }
        }
        Ok(())
    })?;
    Ok(found)
}

/// Replaces every template in `value` with what it names in `ctx`.
pub fn render(value: &Value, ctx: &TemplateContext<'_>) -> Result<Value, TemplateError> {
    match value {
        Value::String(text) => render_string(text, ctx),
        Value::Array(items) => items
            .iter()
            .map(|item| render(item, ctx))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => map
            .iter()
            .map(|(key, item)| Ok((key.clone(), render(item, ctx)?)))
            .collect::<Result<serde_json::Map<_, _>, TemplateError>>()
            .map(Value::Object),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(value.clone()),
    }
}

fn render_string(text: &str, ctx: &TemplateContext<'_>) -> Result<Value, TemplateError> {
    let segments = segments(text)?;
    if let [Segment::Template(reference)] = segments.as_slice() {
        return reference.resolve(ctx);
    }
    let mut out = String::with_capacity(text.len());
    for segment in segments {
        match segment {
            Segment::Text(literal) => out.push_str(&literal),
            Segment::Template(reference) => match reference.resolve(ctx)? {
                Value::String(s) => out.push_str(&s),
                Value::Number(n) => out.push_str(&n.to_string()),
                Value::Bool(b) => out.push_str(if b { "true" } else { "false" }),
                Value::Null => return Err(TemplateError::NotText(reference.to_string(), "null")),
                Value::Array(_) => {
                    return Err(TemplateError::NotText(reference.to_string(), "a list"));
                }
                Value::Object(_) => {
                    return Err(TemplateError::NotText(reference.to_string(), "an object"));
                }
            },
        }
    }
    Ok(Value::String(out))
}

fn visit_strings(
    value: &Value,
    f: &mut dyn FnMut(&str) -> Result<(), TemplateError>,
) -> Result<(), TemplateError> {
    match value {
        Value::String(text) => f(text),
        Value::Array(items) => items.iter().try_for_each(|item| visit_strings(item, f)),
        Value::Object(map) => map.values().try_for_each(|item| visit_strings(item, f)),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// Input and subject field names: `[A-Za-z_][A-Za-z0-9_]*`, at most 64 characters.
pub fn is_field_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

/// Calls `f` with the context of a test decision (`d-1` of org `acme`, policy
/// `ransomware.burst`, outcome `contain`, `severity`, execution 7) about `subject`, an object.
#[cfg(test)]
pub(crate) fn with_test_context<T>(
    subject: Value,
    severity: &str,
    f: impl FnOnce(&TemplateContext<'_>) -> T,
) -> T {
    let Value::Object(subject) = subject else {
        panic!("subject must be an object")
    };
    let ctx = TemplateContext {
        subject: &subject,
        decision: DecisionFields {
            decision_id: "d-1",
            policy: "ransomware.burst",
            outcome: "contain",
            org_id: "acme",
            severity,
        },
        execution_id: Uuid::from_u128(7),
    };
    f(&ctx)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn with_ctx<T>(subject: Value, f: impl FnOnce(&TemplateContext<'_>) -> T) -> T {
        with_test_context(subject, "high", f)
    }

    #[test]
    fn a_standalone_template_keeps_the_json_type() {
        let rendered = with_ctx(json!({"pid": 4242}), |ctx| {
            render(&json!({"pid": "{{ subject.pid }}", "signal": "KILL"}), ctx)
        })
        .unwrap();
        assert_eq!(rendered, json!({"pid": 4242, "signal": "KILL"}));
    }

    #[test]
    fn templates_inside_text_are_interpolated() {
        let rendered = with_ctx(json!({"user": "alice", "count": 3}), |ctx| {
            render(
                &json!([
                    "{{subject.user}} failed {{ subject.count }}x in {{ decision.org_id }}",
                    "run {{ execution.id }}"
                ]),
                ctx,
            )
        })
        .unwrap();
        assert_eq!(
            rendered,
            json!([
                "alice failed 3x in acme",
                format!("run {}", Uuid::from_u128(7))
            ])
        );
    }

    #[test]
    fn a_missing_subject_field_is_an_error() {
        let error =
            with_ctx(json!({}), |ctx| render(&json!("{{ subject.pid }}"), ctx)).unwrap_err();
        assert_eq!(error, TemplateError::MissingSubjectField("pid".into()));
    }

    #[test]
    fn an_object_cannot_be_interpolated_into_text() {
        let error = with_ctx(json!({"o": {"a": 1}}), |ctx| {
            render(&json!("x {{ subject.o }}"), ctx)
        })
        .unwrap_err();
        assert!(matches!(error, TemplateError::NotText(name, _) if name == "subject.o"));
    }

    #[test]
    fn references_are_found_in_nested_values_but_not_keys() {
        let refs = references(&json!({
            "{{ subject.key }}": ["a {{ decision.severity }}", {"x": "{{ subject.path }}"}],
            "n": 5
        }))
        .unwrap();
        assert_eq!(
            refs,
            vec![
                Reference::Decision(DecisionField::Severity),
                Reference::Subject("path".into())
            ]
        );
    }

    #[test]
    fn unknown_names_and_unclosed_braces_are_refused() {
        for (text, expect_unclosed) in [
            ("{{ subject.pid ", true),
            ("{{ decision.secret }}", false),
            ("{{ env.HOME }}", false),
            ("{{ subject.pid | upper }}", false),
            ("{{ subject. }}", false),
            ("{{ execution.started }}", false),
        ] {
            let error = references(&json!(text)).unwrap_err();
            assert_eq!(
                matches!(error, TemplateError::Unclosed(_)),
                expect_unclosed,
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn rendering_never_evaluates_the_substituted_value() {
        let rendered = with_ctx(json!({"user": "{{ decision.org_id }}"}), |ctx| {
            render(&json!("u={{ subject.user }}"), ctx)
        })
        .unwrap();
        assert_eq!(rendered, json!("u={{ decision.org_id }}"));
    }
}
