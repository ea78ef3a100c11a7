//! Which decision runs which playbook, and storm control.
//!
//! A decision runs a playbook only when the signed bindings file maps its (policy, outcome,
//! org) to it. A binding that names an org wins over one that does not. Storm control keeps
//! a flood of identical decisions from starting a flood of runs: a per-(binding, subject)
//! cooldown and a global cap on accepted decisions per second. Both are in memory (a restart
//! forgets them); replay protection, which must never forget, is the nonce table.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::registry::model::Binding;

/// The binding for a decision, if any.
pub fn find<'a>(
    bindings: &'a [Binding],
    policy: &str,
    outcome: &str,
    org_id: &str,
) -> Option<&'a Binding> {
    let matches = |b: &&Binding| b.policy == policy && b.outcome == outcome;
    bindings
        .iter()
        .filter(matches)
        .find(|b| b.org_id.as_deref() == Some(org_id))
        .or_else(|| bindings.iter().filter(matches).find(|b| b.org_id.is_none()))
}

/// Why a decision was suppressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suppressed {
    Cooldown { seconds_left: u64 },
    RateLimit,
}

pub struct StormControl {
    max_per_second: u32,
    state: Mutex<StormState>,
}

struct StormState {
    window_start: Instant,
    accepted_in_window: u32,
    last_run: HashMap<[u8; 32], Instant>,
}

impl StormControl {
    pub fn new(max_per_second: u32) -> StormControl {
        StormControl {
            max_per_second,
            state: Mutex::new(StormState {
                window_start: Instant::now(),
                accepted_in_window: 0,
                last_run: HashMap::new(),
            }),
        }
    }

    /// Admits one decision (counting it) or says why not.
    pub fn admit(&self, binding: &Binding, subject: &serde_json::Value) -> Result<(), Suppressed> {
        let now = Instant::now();
        let key = cooldown_key(binding, subject);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cooldown) = binding
            .cooldown_seconds
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            && let Some(last) = state.last_run.get(&key)
        {
            let since = now.duration_since(*last);
            if since < cooldown {
                return Err(Suppressed::Cooldown {
                    seconds_left: (cooldown - since).as_secs().max(1),
                });
            }
        }
        if now.duration_since(state.window_start) >= Duration::from_secs(1) {
            state.window_start = now;
            state.accepted_in_window = 0;
        }
        if state.accepted_in_window >= self.max_per_second {
            return Err(Suppressed::RateLimit);
        }
        state.accepted_in_window += 1;
        state.last_run.insert(key, now);
        if state.last_run.len() > 100_000 {
            // Bounded memory: forget entries older than a day (the longest cooldown allowed).
            state
                .last_run
                .retain(|_, at| now.duration_since(*at) < Duration::from_secs(86_400));
        }
        Ok(())
    }

    /// Gives back an admission whose decision was not accepted after all (replay, database).
    pub fn release(&self, binding: &Binding, subject: &serde_json::Value) {
        let key = cooldown_key(binding, subject);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.last_run.remove(&key);
        state.accepted_in_window = state.accepted_in_window.saturating_sub(1);
    }
}

fn cooldown_key(binding: &Binding, subject: &serde_json::Value) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in [&binding.policy, &binding.outcome, &binding.playbook] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.update(binding.org_id.as_deref().unwrap_or("").as_bytes());
    hasher.update([0]);
    hasher.update(serde_json_canonicalizer::to_vec(subject).unwrap_or_default());
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(org: Option<&str>, playbook: &str, cooldown: Option<u64>) -> Binding {
        Binding {
            policy: "p".into(),
            outcome: "o".into(),
            playbook: playbook.into(),
            org_id: org.map(str::to_owned),
            cooldown_seconds: cooldown,
            require_approval: false,
        }
    }

    #[test]
    fn an_org_specific_binding_wins() {
        let bindings = [
            binding(None, "general", None),
            binding(Some("acme"), "acme-only", None),
        ];
        assert_eq!(
            find(&bindings, "p", "o", "acme").unwrap().playbook,
            "acme-only"
        );
        assert_eq!(
            find(&bindings, "p", "o", "other").unwrap().playbook,
            "general"
        );
        assert!(find(&bindings, "p", "x", "acme").is_none());
    }

    #[test]
    fn cooldown_suppresses_the_same_subject_only() {
        let storm = StormControl::new(100);
        let b = binding(None, "x", Some(60));
        let one = serde_json::json!({"pid": 1});
        assert_eq!(storm.admit(&b, &one), Ok(()));
        assert!(matches!(
            storm.admit(&b, &one),
            Err(Suppressed::Cooldown { .. })
        ));
        assert_eq!(storm.admit(&b, &serde_json::json!({"pid": 2})), Ok(()));
        storm.release(&b, &one);
        assert_eq!(storm.admit(&b, &one), Ok(()));
    }

    #[test]
    fn the_global_cap_counts_per_second() {
        let storm = StormControl::new(2);
        let b = binding(None, "x", None);
        assert!(storm.admit(&b, &serde_json::json!(1)).is_ok());
        assert!(storm.admit(&b, &serde_json::json!(2)).is_ok());
        assert_eq!(
            storm.admit(&b, &serde_json::json!(3)),
            Err(Suppressed::RateLimit)
        );
    }
}
