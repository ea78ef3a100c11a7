//! The JSON Schemas in `schemas/` and the strict parser agree: every sample passes both,
//! every invalid fixture fails the parser with its own reason, and the schema catches exactly
//! the fixtures the table below says it can (the rest are semantic: templates, `when`, value
//! formats, bounds the schema cannot express).

use std::collections::BTreeSet;

use crate::helpers::json_keys;
use std::path::{Path, PathBuf};

use playbookd::actions::{self, Undo};
use playbookd::registry::playbook::{DocumentError, parse_bindings, parse_playbook, parse_value};
use serde_json::Value;

/// What the schema does with a fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schema {
    /// The fixture converts to JSON and the schema rejects it.
    Rejects,
    /// The fixture converts to JSON and the schema accepts it: only the parser's semantic
    /// checks catch it.
    Accepts,
    /// The strict reader refuses the bytes before there is any JSON to check (size, UTF-8,
    /// duplicate keys, aliases, merge keys).
    NoJson,
}

/// (file, expected error kind (variant or rule), part of the message, schema behaviour).
const PLAYBOOK_FIXTURES: &[(&str, &str, &str, Schema)] = &[
    (
        "alias-bomb.yaml",
        "AliasLimit",
        "alias replay limit",
        Schema::NoJson,
    ),
    (
        "approval-out-of-bounds.yaml",
        "ApprovalOutOfBounds",
        "approval.expires",
        Schema::Accepts,
    ),
    ("bad-duration.yaml", "Syntax", "5 minutes", Schema::Rejects),
    ("bad-id.yaml", "BadId", "Contain_Host", Schema::Rejects),
    (
        "bad-input-name.yaml",
        "BadInputName",
        "inputs.user-name",
        Schema::Rejects,
    ),
    (
        "bad-param-value.yaml",
        "BadParamValue",
        "with.address",
        Schema::Accepts,
    ),
    ("bad-risk.yaml", "Syntax", "extreme", Schema::Rejects),
    (
        "bad-step-id.yaml",
        "BadStepId",
        "Kill Process",
        Schema::Rejects,
    ),
    (
        "bad-template-ref.yaml",
        "UnknownTemplateRef",
        "subject.pid",
        Schema::Accepts,
    ),
    (
        "bad-template-syntax.yaml",
        "BadTemplate",
        "without a matching",
        Schema::Accepts,
    ),
    ("bad-version.yaml", "BadVersion", "version", Schema::Rejects),
    (
        "bad-when.yaml",
        "BadWhen",
        "step `one`, when",
        Schema::Accepts,
    ),
    (
        "binary-blob.yaml",
        "Binary",
        "control character",
        Schema::NoJson,
    ),
    (
        "duplicate-key.yaml",
        "DuplicateKey",
        "action",
        Schema::NoJson,
    ),
    (
        "duplicate-step-id.yaml",
        "DuplicateStepId",
        "used twice",
        Schema::Accepts,
    ),
    ("empty-name.yaml", "EmptyField", "name", Schema::Rejects),
    ("merge-key.yaml", "Syntax", "merge", Schema::NoJson),
    (
        "missing-param.yaml",
        "MissingParam",
        "with.address",
        Schema::Rejects,
    ),
    (
        "missing-rollback.yaml",
        "MissingField",
        "rollback",
        Schema::Rejects,
    ),
    (
        "no-steps.yaml",
        "NoSteps",
        "at least one step",
        Schema::Rejects,
    ),
    (
        "not-undoable.yaml",
        "NotUndoable",
        "rollback: none",
        Schema::Rejects,
    ),
    ("not-utf8.yaml", "NotUtf8", "offset 22", Schema::NoJson),
    (
        "retry-out-of-bounds.yaml",
        "RetryOutOfBounds",
        "retry.attempts",
        Schema::Rejects,
    ),
    ("rollback-word.yaml", "Syntax", "never", Schema::Rejects),
    (
        "secret-from-template.yaml",
        "TemplateNotAllowed",
        "with.secret",
        Schema::Rejects,
    ),
    (
        "template-type-mismatch.yaml",
        "TemplateTypeMismatch",
        "with.pid",
        Schema::Accepts,
    ),
    (
        "timeout-too-long.yaml",
        "TimeoutOutOfBounds",
        "2h",
        Schema::Accepts,
    ),
    (
        "unknown-action.yaml",
        "UnknownAction",
        "shell",
        Schema::Rejects,
    ),
    (
        "unknown-field-in-rollback.yaml",
        "UnknownField",
        "when",
        Schema::Rejects,
    ),
    (
        "unknown-field.yaml",
        "UnknownField",
        "descripton",
        Schema::Rejects,
    ),
    (
        "unknown-param.yaml",
        "UnknownParam",
        "with.force",
        Schema::Rejects,
    ),
    (
        "unknown-rollback-action.yaml",
        "UnknownAction",
        "rollback.action",
        Schema::Rejects,
    ),
    (
        "unknown-when-name.yaml",
        "UnknownWhenName",
        "subject.score",
        Schema::Accepts,
    ),
    (
        "when-type-mismatch.yaml",
        "WhenTypeMismatch",
        "an integer",
        Schema::Accepts,
    ),
    (
        "with-not-mapping.yaml",
        "WithNotMapping",
        "not a list",
        Schema::Rejects,
    ),
    (
        "wrong-rollback-action.yaml",
        "WrongRollbackAction",
        "file.restore",
        Schema::Rejects,
    ),
];

const BINDINGS_FIXTURES: &[(&str, &str, &str, Schema)] = &[
    (
        "bad-playbook-ref.yaml",
        "BadPlaybookRef",
        "bindings[0].playbook",
        Schema::Rejects,
    ),
    (
        "cooldown-too-long.yaml",
        "CooldownTooLong",
        "86401",
        Schema::Rejects,
    ),
    (
        "duplicate-binding.yaml",
        "DuplicateBinding",
        "bindings[1]",
        Schema::Accepts,
    ),
    (
        "empty-policy.yaml",
        "EmptyField",
        "bindings[0].policy",
        Schema::Rejects,
    ),
    (
        "unknown-field.yaml",
        "UnknownField",
        "priority",
        Schema::Rejects,
    ),
];

#[test]
fn every_sample_passes_the_parser_and_the_schema() {
    let playbook_schema = schema("playbook.schema.json");
    let bindings_schema = schema("bindings.schema.json");
    let samples = yaml_files(&root().join("playbooks"));
    assert!(
        samples.len() >= 6,
        "expected the samples in playbooks/, found {samples:?}"
    );
    for path in samples {
        let bytes = std::fs::read(&path).unwrap();
        let json = parse_value(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (schema, parsed) = if path.ends_with("bindings.yaml") {
            (&bindings_schema, parse_bindings(&bytes).map(drop))
        } else {
            (&playbook_schema, parse_playbook(&bytes).map(drop))
        };
        parsed.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let errors: Vec<String> = schema.iter_errors(&json).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{}: schema says {errors:#?}",
            path.display()
        );
    }
}

#[test]
fn every_invalid_playbook_fails_with_its_own_reason() {
    check_fixtures(
        "playbooks",
        PLAYBOOK_FIXTURES,
        "playbook.schema.json",
        |bytes| parse_playbook(bytes).map(drop),
    );
}

#[test]
fn every_invalid_bindings_file_fails_with_its_own_reason() {
    check_fixtures(
        "bindings",
        BINDINGS_FIXTURES,
        "bindings.schema.json",
        |bytes| parse_bindings(bytes).map(drop),
    );
}

#[test]
fn the_schema_knows_every_action_its_parameters_and_its_undo() {
    let schema: Value = serde_json::from_slice(
        &std::fs::read(root().join("schemas/playbook.schema.json")).unwrap(),
    )
    .unwrap();
    let defs = &schema["$defs"];
    let names: Vec<&str> = actions::specs().iter().map(|spec| spec.name).collect();
    let in_schema: Vec<&str> = defs["step"]["properties"]["action"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(in_schema, names, "$defs.step action enum");
    for spec in actions::specs() {
        let with = &defs[format!("with.{}", spec.name)];
        let properties = json_keys(&with["properties"]);
        let params: BTreeSet<&str> = spec.params.iter().map(|p| p.name).collect();
        assert_eq!(properties, params, "with.{} properties", spec.name);
        let required: BTreeSet<&str> = with["required"]
            .as_array()
            .map(|r| r.iter().map(|v| v.as_str().unwrap()).collect())
            .unwrap_or_default();
        let spec_required: BTreeSet<&str> = spec
            .params
            .iter()
            .filter(|p| p.required)
            .map(|p| p.name)
            .collect();
        assert_eq!(required, spec_required, "with.{} required", spec.name);

        let rule = defs["step"]["allOf"]
            .as_array()
            .unwrap()
            .iter()
            .find(|rule| rule["if"]["properties"]["action"]["const"] == spec.name)
            .unwrap_or_else(|| panic!("no step rule for {}", spec.name));
        let rollback = &rule["then"]["properties"]["rollback"];
        match spec.undo {
            Undo::NotUndoable => assert_eq!(rollback["const"], "none", "{}", spec.name),
            Undo::By(natural) => assert_eq!(
                rollback["oneOf"][1]["allOf"][1]["properties"]["action"]["const"], natural,
                "{}",
                spec.name
            ),
            Undo::PlaybookDefined => assert!(rollback.is_null(), "{}", spec.name),
        }
    }
}

#[test]
fn the_schema_states_the_end_of_options_rule_for_exec_args() {
    let schema: Value = serde_json::from_slice(
        &std::fs::read(root().join("schemas/playbook.schema.json")).unwrap(),
    )
    .unwrap();
    let args = &schema["$defs"]["with.exec"]["properties"]["args"];
    let description = args["description"].as_str().unwrap_or_default();
    let marker = format!("\"{}\"", playbookd::actions::exec::END_OF_OPTIONS);
    assert!(
        description.contains(&marker) && description.contains("`-`"),
        "with.exec.args must say how a `-` from the decision is handled: {description}"
    );
}

fn check_fixtures(
    kind: &str,
    table: &[(&str, &str, &str, Schema)],
    schema_file: &str,
    parse: impl Fn(&[u8]) -> Result<(), DocumentError>,
) {
    let dir = root().join("tests/fixtures").join(kind).join("invalid");
    let on_disk: Vec<String> = yaml_files(&dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let listed: Vec<String> = table.iter().map(|(file, ..)| (*file).to_owned()).collect();
    assert_eq!(
        on_disk,
        listed,
        "the table must list exactly the fixtures in {}",
        dir.display()
    );

    let schema = schema(schema_file);
    let mut seen_kinds = BTreeSet::new();
    for (file, expected, message_part, schema_verdict) in table {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let error = parse(&bytes).expect_err(&format!("{file} must be refused by the parser"));
        assert_eq!(error_kind(&error), *expected, "{file}: {error}");
        let message = error.to_string();
        assert!(
            message.contains(message_part),
            "{file}: `{message}` lacks `{message_part}`"
        );
        seen_kinds.insert((*expected, *message_part));

        let verdict = match parse_value(&bytes) {
            Err(_) => Schema::NoJson,
            Ok(json) if schema.is_valid(&json) => Schema::Accepts,
            Ok(_) => Schema::Rejects,
        };
        assert_eq!(verdict, *schema_verdict, "{file}: schema verdict");
    }
    assert_eq!(
        seen_kinds.len(),
        table.len(),
        "two fixtures expect the same failure"
    );
}

/// The error's variant, or for a semantic failure its rule, as a name.
fn error_kind(error: &DocumentError) -> String {
    match error {
        DocumentError::Invalid(invalid) => format!("{:?}", invalid.rule),
        DocumentError::TooLarge { .. } => "TooLarge".into(),
        DocumentError::NotUtf8(_) => "NotUtf8".into(),
        DocumentError::Binary(_) => "Binary".into(),
        DocumentError::DuplicateKey(_) => "DuplicateKey".into(),
        DocumentError::AliasLimit(_) => "AliasLimit".into(),
        DocumentError::UnknownField(_) => "UnknownField".into(),
        DocumentError::MissingField(_) => "MissingField".into(),
        DocumentError::Syntax(_) => "Syntax".into(),
    }
}

fn schema(file: &str) -> jsonschema::Validator {
    let text = std::fs::read(root().join("schemas").join(file)).unwrap();
    let schema: Value = serde_json::from_slice(&text).unwrap();
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
