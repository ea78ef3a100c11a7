//! Redaction of secret-bearing keys in JSON shown to people (approval contexts, the status API).

use serde_json::Value;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Replaces, at any depth, the value of every key whose lowercase name contains one of
/// `key_parts` by [`REDACTED`]; the key itself stays, so readers see that something was there.
pub fn redact(value: Value, key_parts: &[&str]) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    let lowered = key.to_ascii_lowercase();
                    if key_parts.iter().any(|part| lowered.contains(part)) {
                        (key, Value::String(REDACTED.into()))
                    } else {
                        (key, redact(value, key_parts))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|item| redact(item, key_parts))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_keys_are_redacted_by_name_part() {
        let value = serde_json::json!({"a": [{"Api_Token": "t"}], "keep": 1});
        assert_eq!(
            redact(value, &["token"]),
            serde_json::json!({"a": [{"Api_Token": REDACTED}], "keep": 1})
        );
    }
}
