//! Which decision runs which playbook, and storm control.
//!
//! A decision runs a playbook only when the signed bindings file maps its (policy, outcome,
//! org) to it. A binding that names an org wins over one that does not. Storm control keeps
//! a flood of identical decisions from starting a flood of runs: a per-(binding, subject)
//! cooldown and a global cap on accepted decisions per second. Both are in memory (a restart
//! forgets them); replay protection, which must never forget, is the nonce table.
//!
//! The cooldown's "same subject" means the same values of the playbook's declared inputs
//! ([`CooldownKey`]), written the same way: keys the playbook does not declare are not part of
//! it, so adding one (`event_ts`) cannot evade a cooldown, nor can spelling an address or a
//! path differently.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::registry::model::{Binding, InputSpec, InputType};
use crate::registry::playbook::COOLDOWN_MAX_SECONDS;

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
    /// When each (binding, subject) last ran, for bindings with a cooldown only: a binding
    /// without one keeps no entry however many subjects it sees.
    last_run: HashMap<[u8; 32], Instant>,
    /// The size at which entries past the longest cooldown allowed are next forgotten: twice
    /// what was left the last time, so forgetting costs O(1) per admission whatever the load.
    forget_at: usize,
}

/// The fewest entries [`StormState::last_run`] holds before old ones are looked for.
const FORGET_AT_LEAST: usize = 4_096;

impl StormState {
    /// Forgets the runs no cooldown can still hold back (none is longer than a day, so the
    /// outcome is that of keeping them all), once the map has doubled since the last time.
    fn forget_expired(&mut self, now: Instant, longest: Duration) {
        if self.last_run.len() < self.forget_at {
            return;
        }
        self.last_run
            .retain(|_, at| now.duration_since(*at) < longest);
        if self.last_run.len() < self.last_run.capacity() / 4 {
            self.last_run.shrink_to_fit();
        }
        self.forget_at = (self.last_run.len() * 2).max(FORGET_AT_LEAST);
    }
}

impl StormControl {
    pub fn new(max_per_second: u32) -> StormControl {
        StormControl {
            max_per_second,
            state: Mutex::new(StormState {
                window_start: Instant::now(),
                accepted_in_window: 0,
                last_run: HashMap::new(),
                forget_at: FORGET_AT_LEAST,
            }),
        }
    }

    /// Admits one decision (counting it) or says why not.
    pub fn admit(&self, binding: &Binding, key: &CooldownKey) -> Result<(), Suppressed> {
        let now = Instant::now();
        let key = key.0;
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cooldown = binding
            .cooldown_seconds
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        if let Some(cooldown) = cooldown
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
        if cooldown.is_some() {
            state.last_run.insert(key, now);
            state.forget_expired(now, Duration::from_secs(COOLDOWN_MAX_SECONDS));
        }
        Ok(())
    }

    /// Gives back an admission whose decision was not accepted after all (replay, database).
    pub fn release(&self, key: &CooldownKey) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.last_run.remove(&key.0);
        state.accepted_in_window = state.accepted_in_window.saturating_sub(1);
    }
}

/// What a cooldown is keyed on: the binding, and the value of each input the playbook declares
/// (absent ones included, as absent), in a canonical spelling. Nothing else of the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CooldownKey([u8; 32]);

impl CooldownKey {
    /// The key of `subject` (already checked against `inputs`) under `binding`.
    pub fn new(
        binding: &Binding,
        inputs: &BTreeMap<String, InputSpec>,
        subject: &Map<String, Value>,
    ) -> CooldownKey {
        let mut hasher = Sha256::new();
        let mut part = |bytes: &[u8]| {
            // Length-prefixed, so that no two sequences of parts hash alike.
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        for field in [&binding.policy, &binding.outcome, &binding.playbook] {
            part(field.as_bytes());
        }
        part(binding.org_id.as_deref().unwrap_or("").as_bytes());
        for (name, spec) in inputs {
            part(name.as_bytes());
            match subject.get(name) {
                None => part(b"\0absent"),
                Some(value) => part(canonical_value(spec.kind, value).as_bytes()),
            }
        }
        CooldownKey(hasher.finalize().into())
    }
}

/// One spelling per value: an address as the standard library prints it (`::1`, not
/// `0:0::1`), a path without repeated `/` or `.` components, a number in decimal.
fn canonical_value(kind: InputType, value: &Value) -> String {
    match (kind, value) {
        (InputType::Ip, Value::String(text)) => canonical_ip(text),
        (InputType::Path, Value::String(text)) => canonical_path(text),
        (_, Value::String(text)) => text.clone(),
        // Integers and booleans print one way already; anything else was refused by the
        // subject check, and is keyed by its JSON text all the same.
        (_, other) => other.to_string(),
    }
}

fn canonical_ip(text: &str) -> String {
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let Ok(address) = address.parse::<IpAddr>() else {
        return text.to_owned();
    };
    match prefix.map(str::parse::<u8>) {
        None => address.to_string(),
        Some(Ok(prefix)) => format!("{address}/{prefix}"),
        Some(Err(_)) => text.to_owned(),
    }
}

fn canonical_path(text: &str) -> String {
    let parts: Vec<&str> = text
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    format!("/{}", parts.join("/"))
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

    fn inputs(fields: &[(&str, InputType)]) -> BTreeMap<String, InputSpec> {
        fields
            .iter()
            .map(|(name, kind)| {
                (
                    (*name).to_owned(),
                    InputSpec {
                        kind: *kind,
                        required: false,
                    },
                )
            })
            .collect()
    }

    fn key(b: &Binding, inputs: &BTreeMap<String, InputSpec>, subject: Value) -> CooldownKey {
        CooldownKey::new(b, inputs, subject.as_object().unwrap())
    }

    #[test]
    fn cooldown_suppresses_the_same_subject_only() {
        let storm = StormControl::new(100);
        let b = binding(None, "x", Some(60));
        let pid = inputs(&[("pid", InputType::Integer)]);
        let one = key(&b, &pid, serde_json::json!({"pid": 1}));
        assert_eq!(storm.admit(&b, &one), Ok(()));
        assert!(matches!(
            storm.admit(&b, &one),
            Err(Suppressed::Cooldown { .. })
        ));
        let two = key(&b, &pid, serde_json::json!({"pid": 2}));
        assert_eq!(storm.admit(&b, &two), Ok(()));
        storm.release(&one);
        assert_eq!(storm.admit(&b, &one), Ok(()));
    }

    #[test]
    fn undeclared_keys_and_other_spellings_are_the_same_subject() {
        let b = binding(None, "x", Some(60));
        let declared = inputs(&[
            ("address", InputType::Ip),
            ("path", InputType::Path),
            ("user", InputType::String),
        ]);
        let base = key(
            &b,
            &declared,
            serde_json::json!({"address": "2001:db8::1", "path": "/srv/x", "user": "a"}),
        );
        let noisy = key(
            &b,
            &declared,
            serde_json::json!({"address": "2001:0db8:0:0::1", "path": "//srv/./x", "user": "a",
                               "event_ts": "2026-11-25T10:00:00Z", "\u{0}": 1}),
        );
        assert_eq!(base, noisy);
        let other_user = key(
            &b,
            &declared,
            serde_json::json!({"address": "2001:db8::1", "path": "/srv/x", "user": "b"}),
        );
        assert_ne!(base, other_user);
        // An absent optional input differs from any value, and bindings do not share keys.
        let absent = key(
            &b,
            &declared,
            serde_json::json!({"path": "/srv/x", "user": "a"}),
        );
        assert_ne!(base, absent);
        let other_binding = binding(Some("acme"), "x", Some(60));
        assert_ne!(
            base,
            key(
                &other_binding,
                &declared,
                serde_json::json!({"address": "2001:db8::1", "path": "/srv/x", "user": "a"})
            )
        );
    }

    #[test]
    fn only_bindings_with_a_cooldown_remember_subjects() {
        let storm = StormControl::new(u32::MAX);
        let without = binding(None, "x", None);
        let with = binding(None, "y", Some(60));
        let n = inputs(&[("n", InputType::Integer)]);
        for i in 0..10_000 {
            let subject = serde_json::json!({ "n": i });
            assert_eq!(storm.admit(&without, &key(&without, &n, subject)), Ok(()));
        }
        let remembered = |storm: &StormControl| storm.state.lock().unwrap().last_run.len();
        assert_eq!(remembered(&storm), 0);
        // Within the day no entry may go: every one still holds its subject back.
        for i in 0..10_000 {
            let subject = serde_json::json!({ "n": i });
            assert_eq!(storm.admit(&with, &key(&with, &n, subject)), Ok(()));
        }
        assert_eq!(remembered(&storm), 10_000);
        let first = key(&with, &n, serde_json::json!({ "n": 0 }));
        assert!(matches!(
            storm.admit(&with, &first),
            Err(Suppressed::Cooldown { .. })
        ));
    }

    #[test]
    fn runs_older_than_the_longest_cooldown_are_forgotten_once_the_map_has_doubled() {
        let storm = StormControl::new(u32::MAX);
        let mut state = storm.state.lock().unwrap();
        let longest = Duration::from_secs(60);
        let now = Instant::now();
        let old = now.checked_sub(longest).unwrap();
        let entry = |i: usize| -> [u8; 32] { Sha256::digest(i.to_le_bytes()).into() };
        for i in 0..FORGET_AT_LEAST - 1 {
            let at = if i % 2 == 0 { old } else { now };
            state.last_run.insert(entry(i), at);
        }
        state.forget_expired(now, longest);
        assert_eq!(state.last_run.len(), FORGET_AT_LEAST - 1, "not yet");
        state.last_run.insert(entry(FORGET_AT_LEAST), now);
        state.forget_expired(now, longest);
        assert_eq!(state.last_run.len(), FORGET_AT_LEAST / 2);
        assert_eq!(state.forget_at, FORGET_AT_LEAST);
    }

    #[test]
    fn the_global_cap_counts_per_second() {
        let storm = StormControl::new(2);
        let b = binding(None, "x", None);
        let n = inputs(&[("n", InputType::Integer)]);
        assert!(
            storm
                .admit(&b, &key(&b, &n, serde_json::json!({"n": 1})))
                .is_ok()
        );
        assert!(
            storm
                .admit(&b, &key(&b, &n, serde_json::json!({"n": 2})))
                .is_ok()
        );
        assert_eq!(
            storm.admit(&b, &key(&b, &n, serde_json::json!({"n": 3}))),
            Err(Suppressed::RateLimit)
        );
    }
}
