//! The playbook and bindings documents as typed values.
//!
//! These types are the contract between the registry (which builds them from verified bytes),
//! the intake (bindings, inputs) and the executor (steps). Parsing is strict: unknown fields
//! are refused everywhere.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// One playbook version, as written by its authors and verified by the registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    pub id: String,
    pub version: u32,
    pub name: String,
    pub owners: Owners,
    #[serde(default)]
    pub inputs: BTreeMap<String, InputSpec>,
    pub steps: Vec<Step>,
    /// Whole-run deadline; past it the run is `timed_out` and rolls back.
    #[serde(default)]
    pub timeout: Option<DurationSpec>,
    #[serde(default)]
    pub approval: Option<ApprovalPolicy>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owners {
    pub technical: String,
    pub operational: String,
}

/// A field the decision's `subject` must carry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    #[serde(rename = "type")]
    pub kind: InputType,
    /// Inputs are required unless marked otherwise.
    #[serde(default = "yes")]
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    Integer,
    String,
    Boolean,
    /// An IPv4/IPv6 address or CIDR.
    Ip,
    /// An absolute path.
    Path,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub id: String,
    pub action: String,
    /// Parameters; strings may hold `{{ … }}` templates (see `registry::template`).
    #[serde(default = "empty_map", rename = "with")]
    pub params: serde_json::Value,
    /// Optional condition (see `registry::when`); false → the step is skipped, with the reason.
    #[serde(default)]
    pub when: Option<String>,
    #[serde(default)]
    pub timeout: Option<DurationSpec>,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub risk: Option<RiskTier>,
    pub rollback: Rollback,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub backoff: DurationSpec,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPolicy {
    /// How long a gate waits before it expires and the run rolls back (default 15 min).
    #[serde(default)]
    pub expires: Option<DurationSpec>,
}

/// Low → no gate; moderate → a gate only when the binding asks; high → one approval;
/// critical → two approvals from distinct uids (and two signatures on the playbook).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RiskTier {
    Low,
    Moderate,
    High,
    Critical,
}

impl RiskTier {
    pub fn as_str(self) -> &'static str {
        match self {
            RiskTier::Low => "low",
            RiskTier::Moderate => "moderate",
            RiskTier::High => "high",
            RiskTier::Critical => "critical",
        }
    }
}

/// How a step is undone: `rollback: none` (said explicitly) or another action.
#[derive(Debug, Clone)]
pub enum Rollback {
    None,
    Action {
        action: String,
        params: serde_json::Value,
    },
}

impl<'de> Deserialize<'de> for Rollback {
    // A hand-written visitor rather than `#[serde(untagged)]`: untagged enums buffer the
    // input and replace every inner error (an unknown field, a duplicate key) with "did not
    // match any variant", which hides the actual reason from the author.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct UndoAction {
            action: String,
            #[serde(default = "empty_map", rename = "with")]
            params: serde_json::Value,
        }

        struct RollbackVisitor;

        impl<'de> serde::de::Visitor<'de> for RollbackVisitor {
            type Value = Rollback;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`none` or {action, with}")
            }

            fn visit_str<E: serde::de::Error>(self, word: &str) -> Result<Rollback, E> {
                if word == "none" {
                    Ok(Rollback::None)
                } else {
                    Err(E::custom(format!(
                        "rollback must be `none` or {{action, with}}, not `{word}`"
                    )))
                }
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Rollback, A::Error> {
                let undo =
                    UndoAction::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Rollback::Action {
                    action: undo.action,
                    params: undo.params,
                })
            }
        }

        deserializer.deserialize_any(RollbackVisitor)
    }
}

/// A duration written as `500ms`, `5s`, `2m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationSpec(pub Duration);

impl DurationSpec {
    pub fn parse(text: &str) -> Result<DurationSpec, String> {
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("duration `{text}` needs a unit (ms, s, m, h)"))?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("duration `{text}` must start with a whole number"))?;
        let millis_per_unit = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(format!("duration `{text}`: unit must be ms, s, m or h")),
        };
        number
            .checked_mul(millis_per_unit)
            .map(|ms| DurationSpec(Duration::from_millis(ms)))
            .ok_or_else(|| format!("duration `{text}` is too large"))
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        DurationSpec::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

/// The signed bindings file: which decision runs which playbook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingsFile {
    pub bindings: Vec<Binding>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub policy: String,
    pub outcome: String,
    pub playbook: String,
    /// When set, the decision's org must equal it.
    #[serde(default)]
    pub org_id: Option<String>,
    /// Storm control: the same (binding, subject) is suppressed for this long after a run.
    #[serde(default)]
    pub cooldown_seconds: Option<u64>,
    /// Gate `moderate` steps behind one approval too.
    #[serde(default)]
    pub require_approval: bool,
}

fn yes() -> bool {
    true
}

fn empty_map() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_each_unit() {
        assert_eq!(
            DurationSpec::parse("500ms").unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(DurationSpec::parse("5s").unwrap().0, Duration::from_secs(5));
        assert_eq!(
            DurationSpec::parse("2m").unwrap().0,
            Duration::from_secs(120)
        );
        assert_eq!(
            DurationSpec::parse("1h").unwrap().0,
            Duration::from_secs(3600)
        );
        assert!(DurationSpec::parse("5").is_err());
        assert!(DurationSpec::parse("5 s").is_err());
        assert!(DurationSpec::parse("s").is_err());
    }
}
