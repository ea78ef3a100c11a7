//! The one place where bytes from outside become text that can be stored and logged.
//!
//! Process output, error messages (which may quote a peer's input), peer input and rendered
//! parameters can hold bytes PostgreSQL refuses (NUL in `text` and `jsonb`), bytes that are not
//! UTF-8, terminal escape sequences that rewrite what an operator reads in journald, and any
//! length at all. Recording what happened must never fail because of what it says, so every
//! such string passes through [`storable`] (or [`storable_bytes`], [`storable_json`]) before it
//! reaches a query parameter, an audit event or a log field.
//!
//! The rules, in order:
//! - invalid UTF-8 becomes U+FFFD (the Unicode replacement character);
//! - NUL, every other C0 and C1 control character except `\t`, `\n` and `\r`, DEL, and the
//!   bidirectional and zero-width format characters (which make text read differently from
//!   what it holds) are written as `\u{XX}` escapes;
//! - the result is cut to a byte bound at a character boundary and ends in
//!   `…[N bytes cut]` when something was cut.
//!
//! The mapping is not reversible (a literal `\u{0}` in the input stays as it is): where the
//! exact bytes matter as evidence, record their SHA-256 beside the storable text.

use serde_json::{Map, Value};

/// The default bound for one free-text field (an error message, a reason, an excerpt).
pub const MAX_FIELD_BYTES: usize = 4 * 1024;

/// `input` made storable and bounded to `max_bytes` (plus the short cut marker).
pub fn storable(input: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(input.len().min(max_bytes) + 16);
    for (offset, ch) in input.char_indices() {
        let before = out.len();
        push_escaped(&mut out, ch);
        if out.len() > max_bytes {
            out.truncate(before);
            let cut = input.len() - offset;
            out.push_str(&format!("…[{cut} bytes cut]"));
            break;
        }
    }
    out
}

/// Bytes of unknown encoding (process output, a peer's line) made storable.
pub fn storable_bytes(input: &[u8], max_bytes: usize) -> String {
    storable(&String::from_utf8_lossy(input), max_bytes)
}

/// A JSON value with every string (object keys included) made storable with
/// [`MAX_FIELD_BYTES`] each. Numbers, booleans and structure are kept.
pub fn storable_json(value: Value) -> Value {
    match value {
        Value::String(text) => Value::String(storable_owned(text)),
        Value::Array(items) => Value::Array(items.into_iter().map(storable_json).collect()),
        Value::Object(map) => Value::Object(storable_map(map)),
        other @ (Value::Null | Value::Bool(_) | Value::Number(_)) => other,
    }
}

/// [`storable_json`] over the fields of an object.
pub fn storable_map(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .map(|(key, value)| (storable_owned(key), storable_json(value)))
        .collect()
}

/// `value` as it is when its JSON text is at most `max_bytes` long; otherwise what stands for it:
/// `{"truncated": true, "bytes": N, <head_key>: …}`, with N the text's length and the head
/// `head(text, max_bytes)`. The one shape of a cut JSON value, stored or served.
pub fn capped_json(
    value: Value,
    max_bytes: usize,
    head_key: &str,
    head: impl FnOnce(&str, usize) -> String,
) -> Value {
    let text = value.to_string();
    if text.len() <= max_bytes {
        return value;
    }
    serde_json::json!({
        "truncated": true,
        "bytes": text.len(),
        head_key: head(&text, max_bytes),
    })
}

/// Whether `input` is already storable as it is (no escape, no cut needed).
pub fn is_storable(input: &str, max_bytes: usize) -> bool {
    input.len() <= max_bytes && !input.chars().any(needs_escape)
}

/// Free text typed by a person (a reason, a name): printable characters and spaces only.
/// Refuses, rather than escapes, so that what an approver typed is exactly what is stored.
pub fn check_operator_text(input: &str, max_bytes: usize) -> Result<(), OperatorTextError> {
    if input.len() > max_bytes {
        return Err(OperatorTextError::TooLong { max_bytes });
    }
    match input
        .chars()
        .find(|&ch| needs_escape(ch) || ch.is_control())
    {
        Some(ch) => Err(OperatorTextError::Forbidden {
            code_point: u32::from(ch),
        }),
        None => Ok(()),
    }
}

/// Why operator text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorTextError {
    #[error("longer than {max_bytes} bytes")]
    TooLong { max_bytes: usize },
    #[error(
        "contains the non-printable character U+{code_point:04X} (control, bidirectional or zero-width)"
    )]
    Forbidden { code_point: u32 },
}

fn storable_owned(text: String) -> String {
    if is_storable(&text, MAX_FIELD_BYTES) {
        text
    } else {
        storable(&text, MAX_FIELD_BYTES)
    }
}

fn push_escaped(out: &mut String, ch: char) {
    if needs_escape(ch) {
        out.push_str(&format!("\\u{{{:x}}}", u32::from(ch)));
    } else {
        out.push(ch);
    }
}

/// Characters written as escapes: controls other than tab and line breaks, and the format
/// characters that reorder or hide text (Trojan Source, CVE-2021-42574).
fn needs_escape(ch: char) -> bool {
    match ch {
        '\t' | '\n' | '\r' => false,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        // Zero-width space/joiners, LRM/RLM, bidi embeddings/overrides/isolates, word joiner
        // and invisible operators, the BOM.
        '\u{200b}'..='\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}'
        | '\u{061c}'
        | '\u{feff}' => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_and_escape_bytes_are_escaped() {
        assert_eq!(storable("a\0b\x1b[2Jc", 100), "a\\u{0}b\\u{1b}[2Jc");
    }

    #[test]
    fn tabs_and_newlines_are_kept() {
        assert_eq!(storable("a\tb\nc\r\n", 100), "a\tb\nc\r\n");
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(storable_bytes(b"ok\xff\xfe!", 100), "ok\u{fffd}\u{fffd}!");
    }

    #[test]
    fn bidi_and_zero_width_are_escaped() {
        assert_eq!(storable("a\u{202e}b\u{200b}", 100), "a\\u{202e}b\\u{200b}");
    }

    #[test]
    fn long_text_is_cut_at_a_char_boundary_with_a_marker() {
        let text = "é".repeat(10); // 20 bytes
        let cut = storable(&text, 5);
        assert_eq!(cut, "éé…[16 bytes cut]");
    }

    #[test]
    fn json_keys_and_nested_strings_are_made_storable() {
        let value = serde_json::json!({"\u{0}": ["x\u{0}", 1, true, null, {"k": "\u{1}"}]});
        let stored = storable_json(value);
        assert_eq!(
            stored,
            serde_json::json!({"\\u{0}": ["x\\u{0}", 1, true, null, {"k": "\\u{1}"}]})
        );
    }

    #[test]
    fn operator_text_refuses_controls_and_bidi() {
        assert!(check_operator_text("approved: host is ours", 100).is_ok());
        assert_eq!(
            check_operator_text("ok\u{202e}", 100),
            Err(OperatorTextError::Forbidden { code_point: 0x202e })
        );
        assert!(check_operator_text("line\nbreak", 100).is_err());
        assert!(check_operator_text("x".repeat(101).as_str(), 100).is_err());
    }
}
