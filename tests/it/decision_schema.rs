//! `schemas/decision.schema.json` and the intake's decoder agree on what a decision is.

use playbookd::intake::decision::decode;
use serde_json::{Value, json};

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/decision.schema.json"
    ))
    .unwrap();
    jsonschema::validator_for(&serde_json::from_str::<Value>(&text).unwrap()).unwrap()
}

fn valid() -> Value {
    json!({
        "decision_id": "d-1", "nonce": "0123456789abcdef0123456789abcdef",
        "issued_at": "2026-11-25T10:00:00Z", "policy": "p", "outcome": "o",
        "org_id": "acme", "severity": "high", "subject": {"pid": 1}, "playbook": "noop-3"
    })
}

#[test]
fn valid_decisions_pass_both() {
    let schema = schema();
    for decision in [valid(), {
        let mut d = valid();
        d.as_object_mut().unwrap().remove("playbook");
        d["nonce"] = json!("base64url_nonce-ABCDEFG");
        d
    }] {
        assert!(schema.is_valid(&decision), "{decision}");
        assert!(
            decode(decision.to_string().as_bytes()).is_ok(),
            "{decision}"
        );
    }
}

/// One way to break a valid decision.
type Mutation = Box<dyn Fn(&mut Value)>;

#[test]
fn invalid_decisions_fail_both() {
    let schema = schema();
    let mutations: Vec<(&str, Mutation)> = vec![
        (
            "missing nonce",
            Box::new(|d| {
                d.as_object_mut().unwrap().remove("nonce");
            }),
        ),
        ("short nonce", Box::new(|d| d["nonce"] = json!("abc"))),
        ("unknown field", Box::new(|d| d["extra"] = json!(1))),
        ("org as number", Box::new(|d| d["org_id"] = json!(7))),
        (
            "unknown severity",
            Box::new(|d| d["severity"] = json!("urgent")),
        ),
        (
            "subject not an object",
            Box::new(|d| d["subject"] = json!([1])),
        ),
        ("empty policy", Box::new(|d| d["policy"] = json!(""))),
    ];
    for (name, mutate) in mutations {
        let mut decision = valid();
        mutate(&mut decision);
        assert!(!schema.is_valid(&decision), "schema accepted {name}");
        assert!(
            decode(decision.to_string().as_bytes()).is_err(),
            "decoder accepted {name}"
        );
    }
}
