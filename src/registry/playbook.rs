//! Strict parsing and semantic validation of playbook and bindings documents.
//!
//! Both documents arrive as the exact bytes whose signature was checked, and go through the
//! same reader: at most 1 MiB, UTF-8 text only, one YAML document, no duplicate keys, no merge
//! keys, bounded anchors/aliases (billion laughs), no unknown fields. Then every rule the
//! model types cannot express is checked here, and each failure names the step and field
//! ([`Invalid`]), so an author can fix the file from the message alone.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_saphyr::options::{DuplicateKeyPolicy, MergeKeyPolicy};

use super::model::{
    Binding, BindingsFile, DurationSpec, InputSpec, InputType, Playbook, RiskTier, Rollback, Step,
};
use super::template::{self, Reference, Segment};
use super::when;
use crate::actions::{self, ActionSpec, ParamKind, Undo};
use crate::actuator::nft;
use crate::actuator::protocol::SignalName;

/// The largest document accepted, checked before any parsing.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Why a document was refused.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("document is {size} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes (1 MiB)")]
    TooLarge { size: usize },
    #[error("not UTF-8 text: {0}")]
    NotUtf8(String),
    #[error("binary data, not YAML text: {0}")]
    Binary(String),
    #[error("{0}")]
    DuplicateKey(String),
    #[error("anchors/aliases over the limit (alias-expansion guard): {0}")]
    AliasLimit(String),
    #[error("{0}")]
    UnknownField(String),
    #[error("{0}")]
    MissingField(String),
    #[error("not valid YAML for this document: {0}")]
    Syntax(String),
    #[error("{0}")]
    Invalid(Invalid),
}

impl DocumentError {
    /// The semantic rule broken, if the document parsed but failed validation.
    pub fn rule(&self) -> Option<Rule> {
        match self {
            DocumentError::Invalid(invalid) => Some(invalid.rule),
            DocumentError::TooLarge { .. }
            | DocumentError::NotUtf8(_)
            | DocumentError::Binary(_)
            | DocumentError::DuplicateKey(_)
            | DocumentError::AliasLimit(_)
            | DocumentError::UnknownField(_)
            | DocumentError::MissingField(_)
            | DocumentError::Syntax(_) => None,
        }
    }
}

/// A semantic rule violation: where (`step `kill`, with.pid`), which rule, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub at: String,
    pub rule: Rule,
    pub detail: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.detail)
    }
}

/// Every semantic rule, one variant each, so tests and tools can tell failures apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    BadId,
    BadVersion,
    EmptyField,
    BadInputName,
    NoSteps,
    BadStepId,
    DuplicateStepId,
    UnknownAction,
    WithNotMapping,
    UnknownParam,
    MissingParam,
    BadParamValue,
    NotUndoable,
    WrongRollbackAction,
    BadTemplate,
    UnknownTemplateRef,
    TemplateTypeMismatch,
    TemplateNotAllowed,
    BadWhen,
    UnknownWhenName,
    WhenTypeMismatch,
    TimeoutOutOfBounds,
    RetryOutOfBounds,
    ApprovalOutOfBounds,
    BadPlaybookRef,
    CooldownTooLong,
    DuplicateBinding,
}

/// Either document, told apart by its top-level `bindings` key (for `validate`).
#[derive(Debug, Clone)]
pub enum Document {
    Playbook(Playbook),
    Bindings(BindingsFile),
}

/// Parses and validates one playbook from its exact verified bytes.
pub fn parse_playbook(bytes: &[u8]) -> Result<Playbook, DocumentError> {
    let playbook: Playbook = read_strict(bytes)?;
    validate_playbook(&playbook).map_err(DocumentError::Invalid)?;
    Ok(playbook)
}

/// Parses and validates the bindings file from its exact verified bytes.
pub fn parse_bindings(bytes: &[u8]) -> Result<BindingsFile, DocumentError> {
    let bindings: BindingsFile = read_strict(bytes)?;
    validate_bindings(&bindings).map_err(DocumentError::Invalid)?;
    Ok(bindings)
}

impl Document {
    /// A one-line summary for `validate`: `id@version, N steps` or `bindings, N bindings`.
    pub fn summary(&self) -> String {
        match self {
            Document::Playbook(playbook) => format!(
                "{}@{}, {} step{}",
                playbook.id,
                playbook.version,
                playbook.steps.len(),
                if playbook.steps.len() == 1 { "" } else { "s" }
            ),
            Document::Bindings(file) => format!(
                "bindings, {} binding{}",
                file.bindings.len(),
                if file.bindings.len() == 1 { "" } else { "s" }
            ),
        }
    }
}

/// Why `validate` could not accept a file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Document(#[from] DocumentError),
}

/// Reads a document file (never more than [`MAX_DOCUMENT_BYTES`] + 1 bytes of it) and parses
/// it with [`parse_document`]. For offline checks: it verifies no signature.
pub fn load_document(path: &std::path::Path) -> Result<Document, LoadError> {
    use std::io::Read;

    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    if size > MAX_DOCUMENT_BYTES as u64 {
        return Err(DocumentError::TooLarge {
            size: usize::try_from(size).unwrap_or(usize::MAX),
        }
        .into());
    }
    let mut bytes = Vec::new();
    // Bounded even if the file grows between the size check and the read.
    file.take(MAX_DOCUMENT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(parse_document(&bytes)?)
}

/// Parses either document: bindings when the top-level mapping has a `bindings` key.
pub fn parse_document(bytes: &[u8]) -> Result<Document, DocumentError> {
    let value = parse_value(bytes)?;
    if value.get("bindings").is_some() {
        parse_bindings(bytes).map(Document::Bindings)
    } else {
        parse_playbook(bytes).map(Document::Playbook)
    }
}

/// The document as a JSON value, through the same strict reader (size, UTF-8, duplicate keys,
/// alias limits) but without the model's shape: what the JSON Schemas in `schemas/` check.
pub fn parse_value(bytes: &[u8]) -> Result<Value, DocumentError> {
    read_strict(bytes)
}

/// The risk tier a step runs at: its own, or its action's default; `None` for an action this
/// build does not have. The one rule: the gate, dual control and the simulator all ask here.
pub fn effective_risk(step: &Step) -> Option<RiskTier> {
    step.risk
        .or_else(|| actions::spec(&step.action).map(|spec| spec.default_risk))
}

/// True when a step runs at critical risk (its own tier or its action's default), so the
/// playbook needs two signers.
pub fn has_critical_step(playbook: &Playbook) -> bool {
    playbook
        .steps
        .iter()
        .any(|step| effective_risk(step) == Some(RiskTier::Critical))
}

/// Checks one parameter value that no template touched against its kind. Also usable by
/// actions on rendered values.
pub fn check_literal(kind: ParamKind, value: &Value) -> Result<(), String> {
    let text = || {
        value
            .as_str()
            .ok_or_else(|| format!("must be a string, not {}", json_kind(value)))
    };
    match kind {
        ParamKind::String => text().map(drop),
        ParamKind::Integer => match value.as_i64() {
            Some(_) => Ok(()),
            None => Err(format!("must be an integer, not {}", json_kind(value))),
        },
        ParamKind::AbsolutePath => check_absolute_path(text()?),
        ParamKind::StringList => match value {
            Value::Array(items) if items.iter().all(Value::is_string) => Ok(()),
            _ => Err("must be a list of strings".into()),
        },
        // The parser `net.*` use when they run: a literal it refuses (host bits set, an
        // IPv4-mapped IPv6 address) is refused now rather than at incident time.
        ParamKind::IpOrCidr => nft::parse_target(text()?).map(drop),
        ParamKind::Url => check_url(text()?),
        ParamKind::Signal => {
            let name = text()?;
            // The actuator's own list: a name it would refuse at run time is refused now.
            match SignalName::parse(name) {
                Some(_) => Ok(()),
                None => Err(format!(
                    "`{name}` is not a known signal ({})",
                    SignalName::names()
                )),
            }
        }
        ParamKind::Priority => {
            let name = text()?;
            if PRIORITIES.contains(&name) {
                Ok(())
            } else {
                Err(format!(
                    "`{name}` is not a syslog priority ({})",
                    PRIORITIES.join(", ")
                ))
            }
        }
        ParamKind::Duration => DurationSpec::parse(text()?).map(drop),
        ParamKind::SecretName => {
            let name = text()?;
            let ok = !name.is_empty()
                && name.len() <= 128
                && !name.starts_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "`{name}` is not a secret name ([A-Za-z0-9_.-], no leading dot)"
                ))
            }
        }
        ParamKind::Json => Ok(()),
    }
}

/// Syslog priority names `notify` accepts.
pub const PRIORITIES: &[&str] = &[
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

// Bounds, each a guard against a typo turning into a run that never ends or hammers a host.
const STEP_TIMEOUT: Bounds = Bounds::seconds(1, 3600);
const PLAYBOOK_TIMEOUT: Bounds = Bounds::seconds(1, 24 * 3600);
const RETRY_ATTEMPTS_MAX: u32 = 10;
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(600);
const APPROVAL_EXPIRES: Bounds = Bounds::seconds(60, 24 * 3600);
/// The longest `cooldown_seconds` a binding may ask for: one day.
pub const COOLDOWN_MAX_SECONDS: u64 = 24 * 3600;
pub const MAX_ID_LEN: usize = 64;

/// The durations a field may take, inclusive.
struct Bounds {
    min: Duration,
    max: Duration,
}

impl Bounds {
    const fn seconds(min: u64, max: u64) -> Bounds {
        Bounds {
            min: Duration::from_secs(min),
            max: Duration::from_secs(max),
        }
    }

    /// `field` of `at` is refused under `rule` when `value` (if given) is out of bounds.
    fn check(
        &self,
        at: &At<'_>,
        field: &str,
        rule: Rule,
        value: Option<DurationSpec>,
    ) -> Result<(), Invalid> {
        match value {
            Some(DurationSpec(value)) if value < self.min || value > self.max => Err(at.invalid(
                field,
                rule,
                format!(
                    "{} is outside {}..{}",
                    human(value),
                    human(self.min),
                    human(self.max)
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Reads one YAML document into `T` with every structural guard on.
fn read_strict<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DocumentError> {
    // Size first: nothing of an oversized document is looked at.
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(DocumentError::TooLarge { size: bytes.len() });
    }
    let text = decode_text(bytes)?;
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 1,
            max_depth: 32,
            max_nodes: 100_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_recorded_anchor_events: 100_000,
        },
        duplicate_keys: DuplicateKeyPolicy::Error,
        // `<<` merges can silently override keys the reader of the file sees; refuse them.
        merge_keys: MergeKeyPolicy::Error,
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 10_000,
            max_replay_stack_depth: 16,
            max_alias_expansions_per_anchor: 100,
        },
        // `yes`/`no`/`on` are strings, not booleans: no Norway problem in a security file.
        strict_booleans: true,
        // A tag the reader ignores (`!shell`, `!include`) would mean something to a human
        // reviewer and nothing to us: refuse it rather than drop it silently.
        reject_unsupported_tags: true,
        reject_tagged_field_names: true,
        with_snippet: false,
    };
    serde_saphyr::from_str_with_options(text, options).map_err(classify)
}

fn decode_text(bytes: &[u8]) -> Result<&str, DocumentError> {
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(DocumentError::NotUtf8(
            "UTF-16 byte order mark; save the file as UTF-8".into(),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        DocumentError::NotUtf8(format!(
            "invalid byte sequence at offset {}; save the file as UTF-8",
            e.valid_up_to()
        ))
    })?;
    // Valid UTF-8 can still be a binary blob (zeros, control bytes): YAML text has none of
    // those, so say "binary" rather than letting the YAML scanner report something obscure.
    if let Some((offset, c)) = text
        .char_indices()
        .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(DocumentError::Binary(format!(
            "control character U+{:04X} at offset {offset}",
            u32::from(c)
        )));
    }
    Ok(text.strip_prefix('\u{FEFF}').unwrap_or(text))
}

fn classify(error: serde_saphyr::Error) -> DocumentError {
    use serde_saphyr::Error as E;
    use serde_saphyr::budget::BudgetBreach as B;

    let message = error.to_string();
    let mut inner = &error;
    while let E::WithSnippet { error, .. } | E::AliasError { error, .. } = inner {
        inner = error;
    }
    match inner {
        // The library's own message suggests relaxing the policy; authors need the key.
        E::DuplicateMappingKey { key, location } => DocumentError::DuplicateKey(format!(
            "duplicate key `{}` at line {}, column {}",
            key.as_deref().unwrap_or("?"),
            location.line(),
            location.column()
        )),
        E::SerdeUnknownField { .. } => DocumentError::UnknownField(message),
        E::SerdeMissingField { .. } => DocumentError::MissingField(message),
        E::AliasReplayCounterOverflow { .. }
        | E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. }
        | E::Budget {
            breach: B::Aliases { .. } | B::Anchors { .. } | B::AliasAnchorRatio { .. },
            ..
        } => DocumentError::AliasLimit(message),
        _ => DocumentError::Syntax(message),
    }
}

/// Where a problem is, for messages (`step `kill`, with.pid`), and the inputs the templates
/// checked there may name.
struct At<'a> {
    step: Option<&'a str>,
    inputs: &'a BTreeMap<String, InputSpec>,
}

impl At<'_> {
    fn field(&self, field: &str) -> String {
        match self.step {
            Some(step) => format!("step `{step}`, {field}"),
            None => field.to_owned(),
        }
    }

    fn invalid(&self, field: &str, rule: Rule, detail: impl Into<String>) -> Invalid {
        Invalid {
            at: self.field(field),
            rule,
            detail: detail.into(),
        }
    }
}

fn validate_playbook(playbook: &Playbook) -> Result<(), Invalid> {
    let top = At {
        step: None,
        inputs: &playbook.inputs,
    };
    check_id(&playbook.id).map_err(|detail| top.invalid("id", Rule::BadId, detail))?;
    if playbook.version < 1 {
        return Err(top.invalid("version", Rule::BadVersion, "must be 1 or more"));
    }
    for (field, value) in [
        ("name", &playbook.name),
        ("owners.technical", &playbook.owners.technical),
        ("owners.operational", &playbook.owners.operational),
    ] {
        if value.trim().is_empty() {
            return Err(top.invalid(field, Rule::EmptyField, "must not be empty"));
        }
    }
    for name in playbook.inputs.keys() {
        if !template::is_field_name(name) {
            return Err(top.invalid(
                &format!("inputs.{name}"),
                Rule::BadInputName,
                "input names are [A-Za-z_][A-Za-z0-9_]*, at most 64 characters",
            ));
        }
    }
    PLAYBOOK_TIMEOUT.check(&top, "timeout", Rule::TimeoutOutOfBounds, playbook.timeout)?;
    APPROVAL_EXPIRES.check(
        &top,
        "approval.expires",
        Rule::ApprovalOutOfBounds,
        playbook.approval.and_then(|approval| approval.expires),
    )?;
    if playbook.steps.is_empty() {
        return Err(top.invalid("steps", Rule::NoSteps, "a playbook needs at least one step"));
    }
    let mut seen = HashSet::new();
    for (index, step) in playbook.steps.iter().enumerate() {
        if let Err(detail) = check_id(&step.id) {
            return Err(top.invalid(&format!("steps[{index}].id"), Rule::BadStepId, detail));
        }
        if !seen.insert(step.id.as_str()) {
            return Err(top.invalid(
                &format!("steps[{index}].id"),
                Rule::DuplicateStepId,
                format!("step id `{}` is used twice", step.id),
            ));
        }
        validate_step(step, &top)?;
    }
    Ok(())
}

fn validate_step(step: &Step, top: &At<'_>) -> Result<(), Invalid> {
    let at = At {
        step: Some(&step.id),
        inputs: top.inputs,
    };
    let spec = actions::spec(&step.action).ok_or_else(|| {
        at.invalid(
            "action",
            Rule::UnknownAction,
            format!(
                "unknown action `{}` (known: {})",
                step.action,
                action_names()
            ),
        )
    })?;
    check_params(&at, "with", spec, &step.params)?;

    match (&step.rollback, spec.undo) {
        (Rollback::None, _) => {}
        (Rollback::Action { .. }, Undo::NotUndoable) => {
            return Err(at.invalid(
                "rollback",
                Rule::NotUndoable,
                format!("`{}` cannot be undone: say `rollback: none`", spec.name),
            ));
        }
        (Rollback::Action { action, params }, undo) => {
            let undo_spec = actions::spec(action).ok_or_else(|| {
                at.invalid(
                    "rollback.action",
                    Rule::UnknownAction,
                    format!("unknown action `{action}` (known: {})", action_names()),
                )
            })?;
            if let Undo::By(natural) = undo
                && natural != action
            {
                return Err(at.invalid(
                    "rollback.action",
                    Rule::WrongRollbackAction,
                    format!(
                        "`{}` is undone by `{natural}` (or `none`), not `{action}`",
                        spec.name
                    ),
                ));
            }
            check_params(&at, "rollback.with", undo_spec, params)?;
        }
    }

    if let Some(text) = &step.when {
        check_when(&at, text)?;
    }
    STEP_TIMEOUT.check(&at, "timeout", Rule::TimeoutOutOfBounds, step.timeout)?;
    if let Some(retry) = step.retry {
        if !(1..=RETRY_ATTEMPTS_MAX).contains(&retry.attempts) {
            return Err(at.invalid(
                "retry.attempts",
                Rule::RetryOutOfBounds,
                format!("{} is outside 1..={RETRY_ATTEMPTS_MAX}", retry.attempts),
            ));
        }
        if retry.backoff.0 > RETRY_BACKOFF_MAX {
            return Err(at.invalid(
                "retry.backoff",
                Rule::RetryOutOfBounds,
                format!("{} is over 10m", human(retry.backoff.0)),
            ));
        }
    }
    Ok(())
}

fn check_params(
    at: &At<'_>,
    field: &str,
    spec: &ActionSpec,
    params: &Value,
) -> Result<(), Invalid> {
    let Value::Object(params) = params else {
        return Err(at.invalid(
            field,
            Rule::WithNotMapping,
            format!("must be a mapping of parameters, not {}", json_kind(params)),
        ));
    };
    for name in params.keys() {
        if !spec.params.iter().any(|param| param.name == name) {
            let known: Vec<_> = spec.params.iter().map(|param| param.name).collect();
            return Err(at.invalid(
                &format!("{field}.{name}"),
                Rule::UnknownParam,
                format!(
                    "`{}` takes no parameter `{name}` (it takes: {})",
                    spec.name,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
    }
    for param in spec.params {
        let path = format!("{field}.{}", param.name);
        match params.get(param.name) {
            None if param.required => {
                return Err(at.invalid(
                    &path,
                    Rule::MissingParam,
                    format!("`{}` requires `{}`", spec.name, param.name),
                ));
            }
            None => {}
            Some(value) => check_param(at, &path, param.kind, value)?,
        }
    }
    Ok(())
}

/// Checks one parameter: a literal by its kind, a template by what it names.
fn check_param(at: &At<'_>, path: &str, kind: ParamKind, value: &Value) -> Result<(), Invalid> {
    match (kind, value) {
        // A webhook body is free JSON: templates anywhere, each must resolve.
        (ParamKind::Json, _) => {
            let references = template::references(value)
                .map_err(|e| at.invalid(path, Rule::BadTemplate, e.to_string()))?;
            for reference in references {
                reference_type(at, path, &reference)?;
            }
            Ok(())
        }
        (ParamKind::StringList, Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                check_param(at, &format!("{path}[{index}]"), ParamKind::String, item)?;
            }
            Ok(())
        }
        (_, Value::String(text)) => check_string_param(at, path, kind, text),
        _ => check_literal(kind, value).map_err(|e| at.invalid(path, Rule::BadParamValue, e)),
    }
}

fn check_string_param(at: &At<'_>, path: &str, kind: ParamKind, text: &str) -> Result<(), Invalid> {
    let segments =
        template::segments(text).map_err(|e| at.invalid(path, Rule::BadTemplate, e.to_string()))?;
    let references: Vec<&Reference> = segments
        .iter()
        .filter_map(|segment| match segment {
            Segment::Template(reference) => Some(reference),
            Segment::Text(_) => None,
        })
        .collect();
    if references.is_empty() {
        return check_literal(kind, &Value::String(text.to_owned()))
            .map_err(|e| at.invalid(path, Rule::BadParamValue, e));
    }
    // The decision must never choose which secret is sent where.
    if kind == ParamKind::SecretName {
        return Err(at.invalid(
            path,
            Rule::TemplateNotAllowed,
            "a secret name must be written literally, not taken from the decision",
        ));
    }
    let mut types = Vec::new();
    for reference in &references {
        types.push(reference_type(at, path, reference)?);
    }
    if let [Segment::Template(reference)] = segments.as_slice() {
        // Standalone: the rendered value has the input's JSON type, which must fit the kind.
        let input = types[0];
        if !input_fits(kind, input) {
            return Err(at.invalid(
                path,
                Rule::TemplateTypeMismatch,
                format!(
                    "`{reference}` is a {} input, which does not fit a parameter of kind {kind:?}",
                    input_type_name(input)
                ),
            ));
        }
        return Ok(());
    }
    // Interpolated: the result is text. The literal prefix must pin down what the decision
    // cannot be allowed to choose: the root of a path, the scheme and host of a URL.
    let prefix = match segments.first() {
        Some(Segment::Text(prefix)) => prefix.as_str(),
        _ => "",
    };
    let problem = match kind {
        ParamKind::Integer => Some("an integer parameter cannot be built from text".to_owned()),
        ParamKind::StringList => Some("a list must be written as a list".to_owned()),
        ParamKind::AbsolutePath if !prefix.starts_with('/') => {
            Some("a templated path must start with a literal `/…`".to_owned())
        }
        ParamKind::Url if !url_prefix_fixes_host(prefix) => Some(
            "a templated URL must spell its scheme and host literally (`https://host/…{{ }}`)"
                .to_owned(),
        ),
        _ => None,
    };
    match problem {
        Some(detail) => Err(at.invalid(path, Rule::TemplateTypeMismatch, detail)),
        None => Ok(()),
    }
}

/// The type a reference has at run time; a subject field must be a declared input.
fn reference_type(at: &At<'_>, path: &str, reference: &Reference) -> Result<InputType, Invalid> {
    match reference {
        Reference::Subject(name) => at.inputs.get(name).map(|input| input.kind).ok_or_else(|| {
            at.invalid(
                path,
                Rule::UnknownTemplateRef,
                format!("`{reference}` is not a declared input (declare `inputs.{name}`)"),
            )
        }),
        Reference::Decision(_) | Reference::ExecutionId => Ok(InputType::String),
    }
}

fn input_fits(kind: ParamKind, input: InputType) -> bool {
    use InputType as I;
    match kind {
        ParamKind::Json => true,
        ParamKind::Integer => input == I::Integer,
        ParamKind::String => matches!(input, I::String | I::Ip | I::Path),
        ParamKind::AbsolutePath => matches!(input, I::String | I::Path),
        ParamKind::IpOrCidr => matches!(input, I::String | I::Ip),
        ParamKind::Url | ParamKind::Signal | ParamKind::Priority | ParamKind::Duration => {
            input == I::String
        }
        // A list must be written as a list; each element is checked on its own.
        ParamKind::StringList | ParamKind::SecretName => false,
    }
}

fn check_when(at: &At<'_>, text: &str) -> Result<(), Invalid> {
    let expr = when::parse(text).map_err(|e| at.invalid("when", Rule::BadWhen, e.to_string()))?;
    for name in expr.names() {
        if let Reference::Subject(field) = name
            && !at.inputs.contains_key(field)
        {
            return Err(at.invalid(
                "when",
                Rule::UnknownWhenName,
                format!("`{name}` is not a declared input (declare `inputs.{field}`)"),
            ));
        }
    }
    for (field, literal) in expr.subject_comparisons() {
        let Some(input) = at.inputs.get(field) else {
            continue;
        };
        let fits = matches!(
            (input.kind, literal),
            (InputType::Integer, when::Literal::Integer(_))
                | (InputType::Boolean, when::Literal::Bool(_))
                | (
                    InputType::String | InputType::Ip | InputType::Path,
                    when::Literal::Text(_)
                )
        );
        if !fits {
            return Err(at.invalid(
                "when",
                Rule::WhenTypeMismatch,
                format!(
                    "`subject.{field}` is a {} input, compared with {}",
                    input_type_name(input.kind),
                    literal.kind()
                ),
            ));
        }
    }
    Ok(())
}

fn validate_bindings(file: &BindingsFile) -> Result<(), Invalid> {
    let mut seen = HashSet::new();
    for (index, binding) in file.bindings.iter().enumerate() {
        let at = |field: &str, rule, detail: String| Invalid {
            at: format!("bindings[{index}].{field}"),
            rule,
            detail,
        };
        validate_binding(binding).map_err(|(field, rule, detail)| at(field, rule, detail))?;
        let key = (&binding.policy, &binding.outcome, &binding.org_id);
        if !seen.insert(key) {
            return Err(at(
                "policy",
                Rule::DuplicateBinding,
                format!(
                    "({}, {}, org {}) is already bound above",
                    binding.policy,
                    binding.outcome,
                    binding.org_id.as_deref().unwrap_or("any")
                ),
            ));
        }
    }
    Ok(())
}

fn validate_binding(binding: &Binding) -> Result<(), (&'static str, Rule, String)> {
    let empty = |field| (field, Rule::EmptyField, "must not be empty".to_owned());
    if binding.policy.trim().is_empty() {
        return Err(empty("policy"));
    }
    if binding.outcome.trim().is_empty() {
        return Err(empty("outcome"));
    }
    if binding
        .org_id
        .as_deref()
        .is_some_and(|org| org.trim().is_empty())
    {
        return Err(empty("org_id"));
    }
    check_id(&binding.playbook).map_err(|detail| ("playbook", Rule::BadPlaybookRef, detail))?;
    if let Some(cooldown) = binding.cooldown_seconds
        && cooldown > COOLDOWN_MAX_SECONDS
    {
        return Err((
            "cooldown_seconds",
            Rule::CooldownTooLong,
            format!("{cooldown} is over one day ({COOLDOWN_MAX_SECONDS})"),
        ));
    }
    Ok(())
}

/// Playbook and step ids: `[a-z0-9][a-z0-9-]*`, at most [`MAX_ID_LEN`] characters. The one
/// rule: the status API and the console check their `playbook` filter with [`is_id`].
fn check_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let well_formed = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !well_formed {
        return Err(format!("`{id}` must match [a-z0-9][a-z0-9-]*"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("`{id}` is longer than {MAX_ID_LEN} characters"));
    }
    Ok(())
}

/// Whether `id` is a playbook or step id the registry accepts (the rule of `check_id`).
pub fn is_id(id: &str) -> bool {
    check_id(id).is_ok()
}

fn check_absolute_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` is not an absolute path"));
    }
    // `..` would let a literal path escape what a reviewer reads it to be.
    if path.split('/').any(|part| part == "..") {
        return Err(format!("`{path}` must not contain `..`"));
    }
    Ok(())
}

/// An IPv4/IPv6 address, or one with a prefix length that fits it (`10.0.0.0/8`, `2001:db8::/32`).
pub(crate) fn check_ip_or_cidr(text: &str) -> Result<(), String> {
    let bad = || format!("`{text}` is not an IP address or CIDR");
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let address: IpAddr = address.parse().map_err(|_| bad())?;
    if let Some(prefix) = prefix {
        let bits: u8 = prefix.parse().map_err(|_| bad())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return Err(bad());
        }
    }
    Ok(())
}

/// The rule `http.post` applies to the rendered URL, applied to a literal one now.
fn check_url(text: &str) -> Result<(), String> {
    actions::http_url(text)
        .map(drop)
        .map_err(|error| format!("`{text}` {error}"))
}

/// True if the literal text before the first template already fixes the scheme and host.
fn url_prefix_fixes_host(prefix: &str) -> bool {
    let rest = prefix
        .strip_prefix("https://")
        .or_else(|| prefix.strip_prefix("http://"));
    match rest.and_then(|rest| rest.find(['/', '?', '#']).map(|end| &rest[..end])) {
        Some(host) => check_url(&format!("https://{host}")).is_ok(),
        None => false,
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn input_type_name(kind: InputType) -> &'static str {
    match kind {
        InputType::Integer => "integer",
        InputType::String => "string",
        InputType::Boolean => "boolean",
        InputType::Ip => "ip",
        InputType::Path => "path",
    }
}

fn action_names() -> String {
    actions::specs()
        .iter()
        .map(|spec| spec.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A duration in the largest unit that divides it, as authors write them (`90s`, `2h`).
fn human(duration: Duration) -> String {
    let millis = duration.as_millis();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

#[cfg(test)]
mod tests;
