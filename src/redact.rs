//! Redaction of secret-bearing keys in JSON shown to people (approval contexts, the status API).
//! One list of what bears a secret; the audiences differ in one named point only
//! ([`Audience`]).

use serde_json::Value;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Who reads the JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// People deciding on an approval gate: they see which secret a step would use (the
    /// `secret: NAME` parameter of `http.post` names a file, it never holds the secret), so
    /// they know what they approve; never a secret's value.
    Approvers,
    /// Readers of the status API and the console: every secret-bearing key is hidden,
    /// secret names too.
    StatusReaders,
}

/// A key whose lowercase name contains one of these holds a secret (or names one, see
/// [`SECRET_NAME_KEY`]).
const SECRET_KEY_PARTS: [&str; 9] = [
    "secret",
    "password",
    "passwd",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "credential",
    "private_key",
];

/// The key whose string value is a secret's name, not the secret: shown to approvers.
const SECRET_NAME_KEY: &str = "secret";

/// Replaces, at any depth, the value of every secret-bearing key by [`REDACTED`] as
/// `audience` may see it; the key itself stays, so readers see that something was there.
pub fn redact(value: Value, audience: Audience) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    if hidden(&key, &value, audience) {
                        (key, Value::String(REDACTED.into()))
                    } else {
                        (key, redact(value, audience))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|item| redact(item, audience))
                .collect(),
        ),
        other => other,
    }
}

fn hidden(key: &str, value: &Value, audience: Audience) -> bool {
    let lowered = key.to_ascii_lowercase();
    let names_a_secret = lowered == SECRET_NAME_KEY && value.is_string();
    match audience {
        Audience::Approvers if names_a_secret => false,
        Audience::Approvers | Audience::StatusReaders => {
            SECRET_KEY_PARTS.iter().any(|part| lowered.contains(part))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_keys_are_redacted_by_name_part() {
        let value = json!({"a": [{"Api_Token": "t"}], "keep": 1});
        for audience in [Audience::Approvers, Audience::StatusReaders] {
            assert_eq!(
                redact(value.clone(), audience),
                json!({"a": [{"Api_Token": REDACTED}], "keep": 1})
            );
        }
    }

    #[test]
    fn approvers_see_a_secrets_name_and_no_secret_value() {
        let params = json!({
            "url": "https://hooks.example.org/x",
            "secret": "soc-webhook.token",
            "headers": {"X-Api-Key": "k1", "api_key": "k2", "credential": "c",
                        "private_key": "p", "passwd": "w", "webhook_secret": "s"},
        });
        let shown = redact(params.clone(), Audience::Approvers).to_string();
        assert!(shown.contains("soc-webhook.token"), "{shown}");
        for value in ["\"k2\"", "\"c\"", "\"p\"", "\"w\"", "\"s\""] {
            assert!(
                !shown.contains(value),
                "{value} shown to approvers: {shown}"
            );
        }
        let status = redact(params, Audience::StatusReaders).to_string();
        assert!(!status.contains("soc-webhook.token"), "{status}");
    }

    #[test]
    fn a_secret_key_that_is_not_a_name_is_hidden_from_approvers() {
        let shown = redact(json!({"secret": {"value": "v"}}), Audience::Approvers);
        assert_eq!(shown, json!({"secret": REDACTED}));
    }
}
