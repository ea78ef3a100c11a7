//! control.sock wire format: one JSON request per line, one JSON reply per line.
//!
//! Request: `{"verb":"approve","execution_id":"…","step":"…","reason":"…"}` (fields a verb does
//! not take are refused, as are unknown fields). Reply: `{"status":"ok",…}` with the verb's
//! result, or `{"status":"refused"|"error","reason":"…"}`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::roles::Verb;
use crate::text;

/// Longest accepted request line, newline excluded.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Longest reason, in characters.
pub const MAX_REASON_CHARS: usize = 1024;
const MAX_STEP_CHARS: usize = 128;

/// A request as it travels; the client builds it, the server decodes it into a [`Request`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireRequest {
    pub verb: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A decoded, well-formed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Pending,
    Approve {
        execution_id: Uuid,
        step: String,
        reason: String,
    },
    Deny {
        execution_id: Uuid,
        step: String,
        reason: String,
    },
    Cancel {
        execution_id: Uuid,
        reason: String,
    },
    HaltResolve {
        reason: String,
    },
    /// Halt every node of the fleet (reason required).
    HaltFleet {
        reason: String,
    },
    /// Clear the fleet halt (reason required).
    HaltResolveFleet {
        reason: String,
    },
    Reload,
}

impl Request {
    pub fn verb(&self) -> Verb {
        match self {
            Request::Pending => Verb::Pending,
            Request::Approve { .. } => Verb::Approve,
            Request::Deny { .. } => Verb::Deny,
            Request::Cancel { .. } => Verb::Cancel,
            Request::HaltResolve { .. } => Verb::HaltResolve,
            Request::HaltFleet { .. } => Verb::HaltFleet,
            Request::HaltResolveFleet { .. } => Verb::HaltResolveFleet,
            Request::Reload => Verb::Reload,
        }
    }

    pub fn execution_id(&self) -> Option<Uuid> {
        match self {
            Request::Approve { execution_id, .. }
            | Request::Deny { execution_id, .. }
            | Request::Cancel { execution_id, .. } => Some(*execution_id),
            Request::Pending
            | Request::HaltResolve { .. }
            | Request::HaltFleet { .. }
            | Request::HaltResolveFleet { .. }
            | Request::Reload => None,
        }
    }
}

/// Why a line is not a request; `verb` is set when the verb itself was recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub verb: Option<Verb>,
    pub reason: String,
}

/// Decodes one line into a request, or says precisely what is wrong with it.
pub fn decode(line: &[u8]) -> Result<Request, Malformed> {
    let malformed = |verb, reason: String| Malformed { verb, reason };
    let text = std::str::from_utf8(line)
        .map_err(|_| malformed(None, "malformed: not valid UTF-8".into()))?;
    // serde's message quotes what the peer sent (an unknown field's name, NUL included).
    let wire: WireRequest = serde_json::from_str(text)
        .map_err(|error| malformed(None, echo(&format!("malformed request: {error}"))))?;
    let verb = Verb::parse(&wire.verb).ok_or_else(|| {
        malformed(
            None,
            format!(
                "unknown verb `{}`: expected pending, approve, deny, cancel, halt-resolve, halt-fleet, halt-resolve-fleet or reload",
                echo(&wire.verb)
            ),
        )
    })?;
    let fail = |reason: String| malformed(Some(verb), reason);
    let (takes_execution, takes_step, takes_reason) = match verb {
        Verb::Pending | Verb::Reload => (false, false, false),
        Verb::Approve | Verb::Deny => (true, true, true),
        Verb::Cancel => (true, false, true),
        Verb::HaltResolve | Verb::HaltFleet | Verb::HaltResolveFleet => (false, false, true),
    };
    for (name, present, taken) in [
        ("execution_id", wire.execution_id.is_some(), takes_execution),
        ("step", wire.step.is_some(), takes_step),
        ("reason", wire.reason.is_some(), takes_reason),
    ] {
        if present && !taken {
            return Err(fail(format!("`{}` takes no `{name}`", verb.as_str())));
        }
    }
    let execution_id = || -> Result<Uuid, Malformed> {
        let text = wire
            .execution_id
            .as_deref()
            .ok_or_else(|| fail(format!("`{}` needs `execution_id`", verb.as_str())))?;
        Uuid::parse_str(text)
            .map_err(|_| fail(format!("`execution_id` is not a UUID: \"{}\"", echo(text))))
    };
    let step = || -> Result<String, Malformed> {
        let step = wire
            .step
            .clone()
            .ok_or_else(|| fail(format!("`{}` needs `step`", verb.as_str())))?;
        if step.is_empty()
            || step.chars().count() > MAX_STEP_CHARS
            || text::check_operator_text(&step, MAX_STEP_CHARS * 4).is_err()
        {
            return Err(fail(format!(
                "`step` must be 1-{MAX_STEP_CHARS} printable characters"
            )));
        }
        Ok(step)
    };
    let reason = || -> Result<String, Malformed> {
        let reason = wire.reason.clone().unwrap_or_default();
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(fail(format!(
                "`reason` must be at most {MAX_REASON_CHARS} printable characters"
            )));
        }
        // A reason is evidence a person typed: refuse, rather than escape, anything that would
        // make it read differently from what it holds (controls, bidi overrides, zero-width).
        text::check_operator_text(&reason, MAX_REASON_CHARS * 4).map_err(|error| {
            fail(format!(
                "`reason` {error}; type it again with printable characters only"
            ))
        })?;
        Ok(reason.trim().to_owned())
    };
    Ok(match verb {
        Verb::Pending => Request::Pending,
        Verb::Reload => Request::Reload,
        Verb::Approve => Request::Approve {
            execution_id: execution_id()?,
            step: step()?,
            reason: reason()?,
        },
        Verb::Deny => Request::Deny {
            execution_id: execution_id()?,
            step: step()?,
            reason: reason()?,
        },
        Verb::Cancel => Request::Cancel {
            execution_id: execution_id()?,
            reason: reason()?,
        },
        Verb::HaltResolve => Request::HaltResolve { reason: reason()? },
        Verb::HaltFleet => Request::HaltFleet { reason: reason()? },
        Verb::HaltResolveFleet => Request::HaltResolveFleet { reason: reason()? },
    })
}

/// The reply to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Done; the fields carry the verb's result.
    Ok(Map<String, Value>),
    /// Not allowed: the peer's role or org, or a governance rule (dual control, a reason).
    Refused(String),
    /// Could not be done: malformed, nothing to act on, or the database is unavailable.
    Error(String),
}

impl Reply {
    pub fn status(&self) -> &'static str {
        match self {
            Reply::Ok(_) => "ok",
            Reply::Refused(_) => "refused",
            Reply::Error(_) => "error",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Reply::Ok(_) => None,
            Reply::Refused(reason) | Reply::Error(reason) => Some(reason),
        }
    }

    pub fn to_value(&self) -> Value {
        let mut object = match self {
            Reply::Ok(fields) => fields.clone(),
            Reply::Refused(reason) | Reply::Error(reason) => {
                Map::from_iter([("reason".to_owned(), Value::String(reason.clone()))])
            }
        };
        object.insert("status".into(), Value::String(self.status().into()));
        Value::Object(object)
    }

    pub fn to_line(&self) -> Vec<u8> {
        let mut line = self.to_value().to_string().into_bytes();
        line.push(b'\n');
        line
    }
}

/// Untrusted text quoted in a reason: made storable (see [`text::storable`]) and bounded.
fn echo(input: &str) -> String {
    text::storable(input, ECHO_BYTES)
}

/// How much of an untrusted value a reason quotes.
const ECHO_BYTES: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    fn reason_of(line: &str) -> String {
        decode(line.as_bytes()).unwrap_err().reason
    }

    #[test]
    fn decodes_each_verb() {
        let id = Uuid::new_v4();
        assert_eq!(decode(br#"{"verb":"pending"}"#), Ok(Request::Pending));
        assert_eq!(
            decode(
                format!(
                    r#"{{"verb":"approve","execution_id":"{id}","step":"kill","reason":" ok "}}"#
                )
                .as_bytes()
            ),
            Ok(Request::Approve {
                execution_id: id,
                step: "kill".into(),
                reason: "ok".into()
            })
        );
        assert_eq!(
            decode(format!(r#"{{"verb":"cancel","execution_id":"{id}"}}"#).as_bytes()),
            Ok(Request::Cancel {
                execution_id: id,
                reason: String::new()
            })
        );
        assert_eq!(
            decode(br#"{"verb":"halt-resolve","reason":"fixed"}"#),
            Ok(Request::HaltResolve {
                reason: "fixed".into()
            })
        );
    }

    #[test]
    fn refuses_what_a_verb_does_not_take_or_lacks() {
        assert!(reason_of(r#"{"verb":"reload","reason":"x"}"#).contains("takes no `reason`"));
        assert!(reason_of(r#"{"verb":"approve","step":"x"}"#).contains("needs `execution_id`"));
        assert!(
            reason_of(r#"{"verb":"approve","execution_id":"nope","step":"x"}"#)
                .contains("not a UUID")
        );
        assert!(reason_of(r#"{"verb":"pending","admin":true}"#).contains("unknown field `admin`"));
        assert!(reason_of(r#"{"verb":"sudo"}"#).contains("unknown verb `sudo`"));
        assert!(reason_of("not json").starts_with("malformed request"));
    }

    #[test]
    fn refuses_control_characters_in_a_reason() {
        let id = Uuid::new_v4();
        let line =
            format!(r#"{{"verb":"deny","execution_id":"{id}","step":"s","reason":"a\u001b[31m"}}"#);
        assert!(reason_of(&line).contains("printable"));
    }

    #[test]
    fn refuses_bidi_and_zero_width_characters_in_a_reason() {
        let id = Uuid::new_v4();
        for hidden in ["\\u202e", "\\u200b", "\\u2066", "\\ufeff"] {
            let line = format!(
                r#"{{"verb":"approve","execution_id":"{id}","step":"s","reason":"ok{hidden}evil"}}"#
            );
            let reason = reason_of(&line);
            assert!(reason.contains("bidirectional or zero-width"), "{reason}");
        }
    }

    #[test]
    fn a_nul_field_name_is_quoted_escaped() {
        let reason = reason_of(r#"{"verb":"pending","\u0000":1}"#);
        assert!(reason.contains("unknown field `\\u{0}`"), "{reason}");
        assert!(!reason.contains('\0'));
    }

    #[test]
    fn replies_carry_status_and_fields() {
        let ok = Reply::Ok(Map::from_iter([("n".to_owned(), Value::from(2))]));
        assert_eq!(
            String::from_utf8(ok.to_line()).unwrap(),
            "{\"n\":2,\"status\":\"ok\"}\n"
        );
        let refused = Reply::Refused("no".into()).to_value();
        assert_eq!(refused["status"], "refused");
        assert_eq!(refused["reason"], "no");
    }
}
