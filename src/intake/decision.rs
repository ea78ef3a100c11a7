//! The decision message: strict decoding and the checks that need no database.

use ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::actions::{exec, specs};
use crate::registry::model::{InputSpec, InputType, Playbook, Rollback};
use crate::registry::template::{DecisionFields, Reference, TemplateContext};
use crate::text;

/// One decision as the policy engine sends it (see `schemas/decision.schema.json`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub decision_id: String,
    /// After [`decode`], the nonce's canonical form ([`canonical_nonce`]): what is compared
    /// and stored under the UNIQUE constraint.
    pub nonce: String,
    pub issued_at: String,
    pub policy: String,
    pub outcome: String,
    pub org_id: String,
    pub severity: String,
    pub subject: Map<String, Value>,
    #[serde(default)]
    pub playbook: Option<String>,
    /// Base64 Ed25519 signature over the canonical (RFC 8785) bytes of the decision without
    /// this field; required when `intake.policy_keys` is set.
    #[serde(default)]
    pub signature: Option<String>,
}

impl Decision {
    /// What templates read, before the decision is accepted: the execution id is not known
    /// yet and reads as the nil UUID (for checks and dry runs only).
    pub fn template_context(&self) -> TemplateContext<'_> {
        TemplateContext {
            subject: &self.subject,
            decision: DecisionFields {
                decision_id: &self.decision_id,
                policy: &self.policy,
                outcome: &self.outcome,
                org_id: &self.org_id,
                severity: &self.severity,
            },
            execution_id: uuid::Uuid::nil(),
        }
    }
}

pub const SEVERITIES: [&str; 5] = ["low", "medium", "moderate", "high", "critical"];
const MAX_TEXT: usize = 256;
/// 128 bits.
const MIN_NONCE_BYTES: usize = 16;
const MAX_NONCE_CHARS: usize = 256;

/// Decodes one line; the error is the reason given to the sender.
pub fn decode(line: &[u8]) -> Result<(Decision, Value), String> {
    let text = std::str::from_utf8(line).map_err(|_| "malformed: not valid UTF-8".to_owned())?;
    let value: Value = serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
    let decision: Decision = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("invalid decision: {inner}")
        } else {
            format!("invalid decision: `{path}`: {inner}")
        }
    })?;
    let mut decision = decision;
    check_fields(&decision)?;
    decision.nonce = canonical_nonce(&decision.nonce)?;
    Ok((decision, value))
}

fn check_fields(decision: &Decision) -> Result<(), String> {
    for (name, value) in [
        ("decision_id", &decision.decision_id),
        ("policy", &decision.policy),
        ("outcome", &decision.outcome),
        ("org_id", &decision.org_id),
    ] {
        // Identifiers end up in the journal, the audit log and the console: refuse (rather than
        // escape) control, bidirectional and zero-width characters, so what is shown is what was sent.
        if value.is_empty() || text::check_operator_text(value, MAX_TEXT).is_err() {
            return Err(format!(
                "invalid decision: `{name}` must be 1-{MAX_TEXT} bytes of printable characters (no control, bidirectional or zero-width characters)"
            ));
        }
    }
    if !SEVERITIES.contains(&decision.severity.as_str()) {
        return Err(format!(
            "invalid decision: `severity` must be one of {}",
            SEVERITIES.join(", ")
        ));
    }
    Ok(())
}

/// The nonce's canonical form: the lowercase hex of its bytes, so that one nonce written two
/// ways (`ABCD…` and `abcd…`, or base64 with and without padding, URL-safe or standard, with
/// stray low bits in its last character) is one nonce.
///
/// A nonce of an even number of hex digits is read as hex; any other nonce must be base64
/// (standard or URL-safe alphabet, padding optional) and is decoded to its bytes. Either way
/// it must carry at least 128 bits (16 bytes), and be at most 256 characters long.
pub fn canonical_nonce(nonce: &str) -> Result<String, String> {
    let refused = || {
        "invalid decision: `nonce` must carry at least 128 bits: 32+ hex digits, or 22+ base64 characters".to_owned()
    };
    if nonce.len() > MAX_NONCE_CHARS {
        return Err(refused());
    }
    let bytes = if nonce.len().is_multiple_of(2) && nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(nonce).map_err(|_| refused())?
    } else {
        decode_base64(nonce).ok_or_else(refused)?
    };
    if bytes.len() < MIN_NONCE_BYTES {
        return Err(refused());
    }
    Ok(hex::encode(bytes))
}

/// Standard or URL-safe base64, padding optional, trailing bits ignored.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let unpadded = text.trim_end_matches('=');
    if text.len() - unpadded.len() > 2 {
        return None;
    }
    let standard: String = unpadded
        .chars()
        .map(|c| match c {
            '-' => Some('+'),
            '_' => Some('/'),
            c if c.is_ascii_alphanumeric() || c == '+' || c == '/' => Some(c),
            _ => None,
        })
        .collect::<Option<String>>()?;
    LENIENT.decode(standard).ok()
}

pub fn issued_at(decision: &Decision) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(
        &decision.issued_at,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|_| {
        format!(
            "invalid decision: `issued_at` is not an RFC 3339 time: \"{}\"",
            text::storable(&decision.issued_at, 64)
        )
    })
}

/// `|now - issued_at| <= window`.
pub fn is_fresh(issued_at: OffsetDateTime, now: OffsetDateTime, window_seconds: u64) -> bool {
    let skew = (now - issued_at).abs();
    skew <= time::Duration::seconds(i64::try_from(window_seconds).unwrap_or(i64::MAX))
}

/// Checks the decision's signature against the configured policy keys.
pub fn verify_signature(raw: &Value, keys: &[VerifyingKey]) -> Result<(), String> {
    let Some(signature) = raw.get("signature").and_then(Value::as_str) else {
        return Err("unsigned: decisions must be signed by a policy key".into());
    };
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .map_err(|_| "bad signature: not base64".to_owned())?;
    let signature = ed25519_dalek::Signature::from_slice(&bytes)
        .map_err(|_| "bad signature: wrong length".to_owned())?;
    let mut unsigned = raw.clone();
    if let Some(object) = unsigned.as_object_mut() {
        object.remove("signature");
    }
    let canonical = serde_json_canonicalizer::to_vec(&unsigned)
        .map_err(|_| "bad signature: cannot canonicalize".to_owned())?;
    if keys
        .iter()
        .any(|key| key.verify_strict(&canonical, &signature).is_ok())
    {
        Ok(())
    } else {
        Err("bad signature: no policy key verifies it".into())
    }
}

/// Checks the subject against the playbook's declared inputs; the error names the field.
pub fn check_subject(
    subject: &Map<String, Value>,
    inputs: &std::collections::BTreeMap<String, InputSpec>,
) -> Result<(), String> {
    for (name, spec) in inputs {
        let Some(value) = subject.get(name) else {
            if spec.required {
                return Err(format!(
                    "subject.{name}: required by the playbook but missing"
                ));
            }
            continue;
        };
        let fits = match spec.kind {
            InputType::Integer => value.is_i64(),
            // NUL is the one character PostgreSQL cannot store in the execution row.
            InputType::String => value
                .as_str()
                .is_some_and(|s| s.len() <= 4096 && !s.contains('\0')),
            InputType::Boolean => value.is_boolean(),
            InputType::Ip => value.as_str().is_some_and(is_ip_or_cidr),
            InputType::Path => value
                .as_str()
                .is_some_and(|s| s.starts_with('/') && !s.contains('\0')),
        };
        if !fits {
            return Err(format!("subject.{name}: expected {}", describe(spec.kind)));
        }
    }
    Ok(())
}

/// Refuses a decision that would make an `exec` step or undo of `playbook` start an argument
/// with `-` (see [`crate::actions::exec`]): the run would hand the decision an option. Checked
/// here, before the decision is accepted, with the same values the run will render (the
/// subject and decision are stored with the execution and never change).
pub fn check_exec_arguments(decision: &Decision, playbook: &Playbook) -> Result<(), String> {
    // The execution id is not known yet (nil here); a UUID never starts with `-`.
    let ctx = decision.template_context();
    for step in &playbook.steps {
        let undo = match &step.rollback {
            Rollback::Action { action, params } if action == specs::EXEC.name => Some(params),
            Rollback::Action { .. } | Rollback::None => None,
        };
        let runs = (step.action == specs::EXEC.name)
            .then_some(("", &step.params))
            .into_iter()
            .chain(undo.map(|params| (" (its undo)", params)));
        for (which, params) in runs {
            let Some(hit) = exec::find_option_injection(params.get("args"), &ctx) else {
                continue;
            };
            let subject = hit.references.iter().find_map(|reference| match reference {
                Reference::Subject(name) => Some(name.as_str()),
                Reference::Decision(_) | Reference::ExecutionId => None,
            });
            let prefix = match subject {
                Some(name) => format!("subject.{name}"),
                None => "invalid decision".to_owned(),
            };
            return Err(format!(
                "{prefix}: starts with `-`: step `{}`{which} runs `exec` and its {hit}",
                step.id
            ));
        }
    }
    Ok(())
}

fn describe(kind: InputType) -> &'static str {
    match kind {
        InputType::Integer => "an integer",
        InputType::String => "a string of at most 4096 bytes without NUL",
        InputType::Boolean => "true or false",
        InputType::Ip => "an IP address or CIDR",
        InputType::Path => "an absolute path",
    }
}

fn is_ip_or_cidr(text: &str) -> bool {
    crate::registry::playbook::check_ip_or_cidr(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(overrides: &[(&str, Value)]) -> Vec<u8> {
        let mut value = serde_json::json!({
            "decision_id": "d-1", "nonce": "0123456789abcdef0123456789abcdef",
            "issued_at": "2026-11-25T10:00:00Z", "policy": "p", "outcome": "contain",
            "org_id": "acme", "severity": "high", "subject": {"pid": 42}
        });
        for (key, v) in overrides {
            value[*key] = v.clone();
        }
        value.to_string().into_bytes()
    }

    #[test]
    fn a_good_decision_decodes() {
        let (decision, _) = decode(&line(&[])).unwrap();
        assert_eq!(decision.policy, "p");
    }

    #[test]
    fn each_bad_field_gets_its_own_reason() {
        assert!(decode(b"\xff\xfe").unwrap_err().contains("UTF-8"));
        assert!(decode(b"{not json").unwrap_err().contains("malformed JSON"));
        assert!(
            decode(&line(&[("nonce", "short".into())]))
                .unwrap_err()
                .contains("nonce")
        );
        assert!(
            decode(&line(&[("severity", "urgent".into())]))
                .unwrap_err()
                .contains("severity")
        );
        assert!(
            decode(&line(&[("org_id", 7.into())]))
                .unwrap_err()
                .contains("org_id")
        );
        assert!(
            decode(&line(&[("extra", 1.into())]))
                .unwrap_err()
                .contains("unknown field")
        );
        let (decision, _) = decode(&line(&[("issued_at", "yesterday".into())])).unwrap();
        assert!(issued_at(&decision).unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn freshness_is_symmetric() {
        let now = OffsetDateTime::now_utc();
        assert!(is_fresh(now - time::Duration::seconds(299), now, 300));
        assert!(!is_fresh(now - time::Duration::seconds(301), now, 300));
        assert!(!is_fresh(now + time::Duration::seconds(301), now, 300));
    }

    #[test]
    fn ip_inputs_accept_addresses_and_cidrs_only() {
        assert!(is_ip_or_cidr("10.0.0.1"));
        assert!(is_ip_or_cidr("2001:db8::/32"));
        assert!(!is_ip_or_cidr("10.0.0.1/33"));
        assert!(!is_ip_or_cidr("example.org"));
    }

    #[test]
    fn identifiers_with_bidi_or_zero_width_characters_are_refused() {
        for hidden in ["acme\u{202e}", "ac\u{200b}me", "acme\u{0}"] {
            let reason = decode(&line(&[("org_id", hidden.into())])).unwrap_err();
            assert!(reason.contains("`org_id`"), "{reason}");
        }
    }

    #[test]
    fn a_string_input_holding_nul_is_refused() {
        let inputs = std::collections::BTreeMap::from([(
            "user".to_owned(),
            InputSpec {
                kind: InputType::String,
                required: true,
            },
        )]);
        let subject = |value: &str| {
            serde_json::json!({ "user": value })
                .as_object()
                .cloned()
                .unwrap()
        };
        assert!(check_subject(&subject("alice"), &inputs).is_ok());
        let reason = check_subject(&subject("al\u{0}ice"), &inputs).unwrap_err();
        assert!(
            reason.contains("subject.user") && reason.contains("NUL"),
            "{reason}"
        );
    }

    #[test]
    fn one_nonce_written_several_ways_has_one_canonical_form() {
        let hex = "0123456789abcdef0123456789abcdef";
        let canonical = canonical_nonce(hex).unwrap();
        assert_eq!(canonical, hex);
        assert_eq!(canonical_nonce(&hex.to_uppercase()).unwrap(), canonical);
        // The same 16 bytes in base64: padded or not, standard or URL-safe.
        use base64::Engine;
        let bytes = hex::decode(hex).unwrap();
        let padded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        assert_eq!(canonical_nonce(&padded).unwrap(), canonical);
        assert_eq!(canonical_nonce(&url).unwrap(), canonical);
        assert_eq!(
            canonical_nonce(padded.trim_end_matches('=')).unwrap(),
            canonical
        );
        // Stray low bits in the last character do not make a new nonce: "…w==" and "…x==".
        let last = padded.trim_end_matches('=').chars().last().unwrap();
        assert_eq!(last, 'w');
        let stray = padded.replacen("w==", "x==", 1);
        assert_eq!(canonical_nonce(&stray).unwrap(), canonical);
        let bytes = [0xfbu8; 18];
        assert_eq!(
            canonical_nonce(&base64::engine::general_purpose::STANDARD.encode(bytes)).unwrap(),
            canonical_nonce(&base64::engine::general_purpose::URL_SAFE.encode(bytes)).unwrap(),
        );
    }

    #[test]
    fn a_nonce_under_128_bits_or_not_hex_or_base64_is_refused() {
        for bad in [
            "0123456789abcdef0123456789abcd",     // 120 bits of hex
            "AAAAAAAAAAAAAAAAAAAA",               // 20 base64 characters: 120 bits
            "0123456789abcdef0123456789abcdef!!", // not base64
            "AAAA=AAAAAAAAAAAAAAAAAAAAAA",        // padding inside
            "AAAAAAAAAAAAAAAAAAAAAA====",         // too much padding
        ] {
            assert!(canonical_nonce(bad).is_err(), "{bad}");
        }
        assert!(canonical_nonce(&"a".repeat(257)).is_err());
    }
}
