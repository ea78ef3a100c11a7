//! The parsers that read untrusted bytes, under attack: no input may panic them or hold them
//! for long.
//!
//! Targets: the playbook and bindings parsers (`registry::playbook::parse_playbook`,
//! `parse_bindings`), the decision decoder of decisions.sock (`intake::decision::decode`) and
//! the request decoder of control.sock (`control::protocol::decode`). Each gets three kinds of
//! input: arbitrary bytes; a seed from `fuzz/corpus/<target>/` (sample documents, the invalid
//! fixtures, example lines) mutated by byte flips, insertions of format tokens, deletions,
//! duplications, truncations and splices with other seeds; and documents built field by field
//! with plausible and implausible values, so that the later checks (templates, `when`
//! expressions, durations, UUIDs, nonces) are reached and not only the tokenizer. Where a
//! parser accepts an input, the test also checks what acceptance promises (a playbook has
//! steps, a decision's nonce carries 128 bits, …).
//!
//! A plain `cargo test` runs [`DEFAULT_INPUTS`] inputs per target, split over its three
//! kinds. The long campaign (a million inputs per target; see fuzz/README.md):
//!
//! ```text
//! PLAYBOOKD_FUZZ_INPUTS=1000000 cargo test --release --test prop -- --nocapture
//! ```
//!
//! Each property prints how many inputs it ran and how fast; a failure prints the smallest
//! failing input proptest could shrink to.
#![allow(clippy::unwrap_used)] // a test that cannot read its corpus should just fail

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use serde_json::{Map, Value, json};

use playbookd::control::protocol;
use playbookd::intake::decision;
use playbookd::registry::playbook::{parse_bindings, parse_playbook};
use playbookd::text;

/// Inputs per target in a default `cargo test` run (four targets: a few thousand in all).
const DEFAULT_INPUTS: u32 = 900;
/// Environment variable that sets the inputs per target.
const INPUTS_ENV: &str = "PLAYBOOKD_FUZZ_INPUTS";
/// Longest any single input may take. Generous, for unoptimised builds on a busy machine; a
/// super-linear blow-up (alias expansion, backtracking) on these sizes takes far longer.
const TIME_LIMIT: Duration = Duration::from_secs(2);
/// Mutated inputs are cut to this size (the documents' own limit is 1 MiB, a line's 64 KiB).
const MAX_MUTATED: usize = 256 * 1024;

// ---- playbook ----

#[test]
fn playbook_parser_survives_arbitrary_bytes() {
    campaign("playbook/arbitrary", arbitrary_bytes(), check_playbook);
}

#[test]
fn playbook_parser_survives_mutated_seeds() {
    campaign(
        "playbook/mutated",
        mutated(seeds("playbook")),
        check_playbook,
    );
}

#[test]
fn playbook_parser_survives_structured_documents() {
    // Half the documents are near-valid (no junk values), so that the checks behind the
    // type-level ones (templates, `when`, parameters, rollback rules) see many inputs.
    let documents = prop_oneof![
        playbook_document(Noise::Some),
        playbook_document(Noise::None)
    ];
    campaign("playbook/structured", documents, check_playbook);
}

fn check_playbook(bytes: &[u8]) -> Result<bool, TestCaseError> {
    if let Ok(playbook) = parse_playbook(bytes) {
        prop_assert!(
            !playbook.steps.is_empty(),
            "accepted a playbook without steps"
        );
        prop_assert!(
            is_identifier(&playbook.id),
            "accepted playbook id {:?}",
            playbook.id
        );
        prop_assert!(playbook.version > 0, "accepted version 0");
        return Ok(true);
    }
    Ok(false)
}

// ---- bindings ----

#[test]
fn bindings_parser_survives_arbitrary_bytes() {
    campaign("bindings/arbitrary", arbitrary_bytes(), check_bindings);
}

#[test]
fn bindings_parser_survives_mutated_seeds() {
    campaign(
        "bindings/mutated",
        mutated(seeds("bindings")),
        check_bindings,
    );
}

#[test]
fn bindings_parser_survives_structured_documents() {
    campaign("bindings/structured", bindings_document(), check_bindings);
}

fn check_bindings(bytes: &[u8]) -> Result<bool, TestCaseError> {
    if let Ok(file) = parse_bindings(bytes) {
        for binding in &file.bindings {
            prop_assert!(
                !binding.policy.is_empty() && !binding.outcome.is_empty(),
                "accepted an empty policy or outcome: {binding:?}"
            );
            prop_assert!(
                is_identifier(&binding.playbook),
                "accepted playbook reference {:?}",
                binding.playbook
            );
        }
        return Ok(true);
    }
    Ok(false)
}

// ---- decision (decisions.sock) ----

#[test]
fn decision_decoder_survives_arbitrary_bytes() {
    campaign("decision/arbitrary", arbitrary_bytes(), check_decision);
}

#[test]
fn decision_decoder_survives_mutated_seeds() {
    campaign(
        "decision/mutated",
        mutated(seeds("decision")),
        check_decision,
    );
}

#[test]
fn decision_decoder_survives_structured_lines() {
    campaign("decision/structured", decision_line(), check_decision);
}

fn check_decision(bytes: &[u8]) -> Result<bool, TestCaseError> {
    if let Ok((decided, _raw)) = decision::decode(bytes) {
        // The nonce comes out canonical: the lowercase hex of at least 16 bytes.
        prop_assert!(
            decided.nonce.len() >= 32
                && decided.nonce.len().is_multiple_of(2)
                && decided
                    .nonce
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "nonce not canonical: {:?}",
            decided.nonce
        );
        prop_assert_eq!(
            decision::canonical_nonce(&decided.nonce).ok(),
            Some(decided.nonce.clone())
        );
        prop_assert!(
            decision::SEVERITIES.contains(&decided.severity.as_str()),
            "accepted severity {:?}",
            decided.severity
        );
        prop_assert!(
            !decided.policy.is_empty() && text::check_operator_text(&decided.policy, 256).is_ok(),
            "accepted policy {:?}",
            decided.policy
        );
        // A time that does not parse is refused later with its own reason; it must not panic.
        let _ = decision::issued_at(&decided);
        return Ok(true);
    }
    Ok(false)
}

// ---- control.sock ----

#[test]
fn control_decoder_survives_arbitrary_bytes() {
    campaign("control/arbitrary", arbitrary_bytes(), check_control);
}

#[test]
fn control_decoder_survives_mutated_seeds() {
    campaign("control/mutated", mutated(seeds("control")), check_control);
}

#[test]
fn control_decoder_survives_structured_requests() {
    campaign("control/structured", control_line(), check_control);
}

fn check_control(bytes: &[u8]) -> Result<bool, TestCaseError> {
    let decoded = protocol::decode(bytes);
    match &decoded {
        Ok(
            protocol::Request::Approve { step, reason, .. }
            | protocol::Request::Deny { step, reason, .. },
        ) => {
            prop_assert!(!step.is_empty() && text::check_operator_text(step, 1024).is_ok());
            prop_assert!(text::check_operator_text(reason, 4096).is_ok());
        }
        Ok(
            protocol::Request::Cancel { reason, .. }
            | protocol::Request::HaltResolve { reason }
            | protocol::Request::HaltFleet { reason }
            | protocol::Request::HaltResolveFleet { reason },
        ) => {
            prop_assert!(text::check_operator_text(reason, 4096).is_ok());
        }
        Ok(protocol::Request::Pending | protocol::Request::Reload) => {}
        // The reason quotes the peer: it must be storable as it is (no NUL, no escape bytes).
        Err(malformed) => {
            prop_assert!(
                text::is_storable(&malformed.reason, text::MAX_FIELD_BYTES),
                "reason not storable: {:?}",
                malformed.reason
            );
        }
    }
    Ok(decoded.is_ok())
}

// ---- the runner ----

/// Runs `check` on `inputs_per_property()` inputs from `strategy`, each within `TIME_LIMIT`.
fn campaign(
    name: &str,
    strategy: impl Strategy<Value = Vec<u8>>,
    check: fn(&[u8]) -> Result<bool, TestCaseError>,
) {
    let cases = inputs_per_property();
    let mut runner = TestRunner::new(Config {
        cases,
        // A direct TestRunner has no source file to persist regressions next to; the failure
        // message below carries the input instead.
        failure_persistence: None,
        max_shrink_iters: 10_000,
        ..Config::default()
    });
    // Inputs the parser accepted: a sign of how deep the generated inputs reach.
    let accepted = AtomicU64::new(0);
    let started = Instant::now();
    let outcome = runner.run(&strategy, |bytes| {
        let start = Instant::now();
        if check(&bytes)? {
            accepted.fetch_add(1, Ordering::Relaxed);
        }
        let took = start.elapsed();
        prop_assert!(
            took < TIME_LIMIT,
            "took {took:?} on {} bytes (limit {TIME_LIMIT:?})",
            bytes.len()
        );
        Ok(())
    });
    let elapsed = started.elapsed().as_secs_f64();
    match outcome {
        Ok(()) => eprintln!(
            "{name}: {cases} inputs in {elapsed:.1} s ({:.0} inputs/s), {} accepted, no failure",
            f64::from(cases) / elapsed,
            accepted.load(Ordering::Relaxed)
        ),
        Err(TestError::Fail(reason, bytes)) => panic!(
            "{name}: {reason}\nminimal input ({} bytes): {:?}\nas text: {:?}",
            bytes.len(),
            bytes,
            String::from_utf8_lossy(&bytes)
        ),
        Err(error) => panic!("{name}: {error}"),
    }
}

/// Every target has three properties; the per-target budget is split evenly.
fn inputs_per_property() -> u32 {
    let per_target = match std::env::var(INPUTS_ENV) {
        Ok(text) => text
            .parse::<u32>()
            .unwrap_or_else(|_| panic!("{INPUTS_ENV} must be a positive integer, got {text:?}")),
        Err(_) => DEFAULT_INPUTS,
    };
    per_target.div_ceil(3).max(1)
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(seeds.len() >= 3, "{} holds too few seeds", dir.display());
    seeds
}

fn is_identifier(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

// ---- strategies: arbitrary and mutated bytes ----

fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..2048),
        // Mostly printable text, which gets further into YAML and JSON than random bytes.
        prop::collection::vec(prop::sample::select(TEXTISH.as_bytes().to_vec()), 0..1024),
    ]
}

const TEXTISH: &str = "abcdefghijklmnopqrstuvwxyz0123456789 \n\t:-_{}[]\"',.#&*!|>%@`?=<\\/+";

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit {
        at: usize,
        bit: u8,
    },
    SetByte {
        at: usize,
        byte: u8,
    },
    InsertToken {
        at: usize,
        token: usize,
    },
    InsertBytes {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Duplicate {
        at: usize,
        len: usize,
        to: usize,
    },
    Truncate {
        at: usize,
    },
    Splice {
        at: usize,
        seed: usize,
        from: usize,
        len: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        1 => (at, 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        1 => (at, any::<u8>()).prop_map(|(at, byte)| Mutation::SetByte { at, byte }),
        3 => (at, 0..TOKENS.len()).prop_map(|(at, token)| Mutation::InsertToken { at, token }),
        1 => (at, prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::InsertBytes { at, bytes }),
        2 => (at, 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => (at, 1usize..4096, any::<usize>())
            .prop_map(|(at, len, to)| Mutation::Duplicate { at, len, to }),
        1 => at.prop_map(|at| Mutation::Truncate { at }),
        1 => (at, any::<usize>(), any::<usize>(), 1usize..512)
            .prop_map(|(at, seed, from, len)| Mutation::Splice { at, seed, from, len }),
    ]
}

/// A seed with one to eight mutations applied.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let count = seeds.len();
    (0..count, prop::collection::vec(mutation(), 1..8)).prop_map(move |(index, mutations)| {
        let mut bytes = seeds[index].clone();
        for mutation in mutations {
            apply(&mut bytes, &mutation, &seeds);
            bytes.truncate(MAX_MUTATED);
        }
        bytes
    })
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation, seeds: &[Vec<u8>]) {
    let position = |at: usize, len: usize| at % (len + 1);
    match *mutation {
        Mutation::FlipBit { at, bit } => {
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] ^= 1 << bit;
            }
        }
        Mutation::SetByte { at, byte } => {
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] = byte;
            }
        }
        Mutation::InsertToken { at, token } => {
            let i = position(at, bytes.len());
            bytes.splice(i..i, TOKENS[token].bytes());
        }
        Mutation::InsertBytes {
            at,
            bytes: ref inserted,
        } => {
            let i = position(at, bytes.len());
            bytes.splice(i..i, inserted.iter().copied());
        }
        Mutation::Delete { at, len } => {
            let i = position(at, bytes.len());
            let end = (i + len).min(bytes.len());
            bytes.drain(i..end);
        }
        Mutation::Duplicate { at, len, to } => {
            let i = position(at, bytes.len());
            let end = (i + len).min(bytes.len());
            let chunk: Vec<u8> = bytes[i..end].to_vec();
            let j = position(to, bytes.len());
            bytes.splice(j..j, chunk);
        }
        Mutation::Truncate { at } => {
            let i = position(at, bytes.len());
            bytes.truncate(i);
        }
        Mutation::Splice {
            at,
            seed,
            from,
            len,
        } => {
            let other = &seeds[seed % seeds.len()];
            let start = position(from, other.len());
            let end = (start + len).min(other.len());
            let i = position(at, bytes.len());
            bytes.splice(i..i, other[start..end].iter().copied());
        }
    }
}

/// Fragments of YAML, JSON, templates and `when` expressions, and known-troublesome values.
const TOKENS: &[&str] = &[
    "\n",
    "\n  ",
    "\n- ",
    ": ",
    "- ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\"",
    "'",
    "#",
    "&a ",
    "*a",
    "&b [*a, *a, *a, *a]",
    "<<: *a",
    "!!str ",
    "!!binary ",
    "!tag ",
    "? ",
    "|\n  ",
    ">-\n  ",
    "---\n",
    "...\n",
    "%YAML 1.2\n",
    "~",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "4294967296",
    "18446744073709551616",
    "1e999",
    "-0",
    "0x1F",
    ".nan",
    ".inf",
    "{{",
    "}}",
    "{{ subject.pid }}",
    "{{ subject. }}",
    "{{ secret.x }}",
    "{{{{",
    "severity >= high",
    " and ",
    " or ",
    "not ",
    "(",
    ")",
    "==",
    "!=",
    "\\u0000",
    "\\ud800",
    "\u{feff}",
    "\u{202e}",
    "\0",
    "\r\n",
    "\t",
    "steps",
    "id",
    "version",
    "action",
    "rollback",
    "none",
    "risk",
    "critical",
    "when",
    "with",
    "timeout",
    "retry",
    "attempts",
    "backoff",
    "99999999h",
    "0s",
    "1ms",
    "approval",
    "inputs",
    "type",
    "bindings",
    "policy",
    "outcome",
    "playbook",
    "org_id",
    "cooldown_seconds",
    "require_approval",
    "verb",
    "approve",
    "halt-resolve",
    "execution_id",
    "reason",
    "nonce",
    "issued_at",
    "subject",
    "2026-11-25T12:00:00Z",
    "2026-13-45T99:99:99Z",
    "00000000-0000-0000-0000-000000000000",
];

// ---- strategies: structured documents ----

/// A string of up to `max` arbitrary characters.
fn any_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(|chars| chars.into_iter().collect())
}

/// Whether generated fields may hold junk (any text, any JSON) or only listed values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Noise {
    Some,
    None,
}

/// Mostly the first (valid) value of `choices`, often another of them, sometimes anything.
fn plausible(choices: &'static [&'static str]) -> BoxedStrategy<Value> {
    plausible_with(choices, Noise::Some)
}

fn plausible_with(choices: &'static [&'static str], noise: Noise) -> BoxedStrategy<Value> {
    if noise == Noise::None {
        return prop_oneof![
            19 => Just(Value::from(choices[0])),
            1 => prop::sample::select(choices).prop_map(Value::from),
        ]
        .boxed();
    }
    prop_oneof![
        24 => Just(Value::from(choices[0])),
        6 => prop::sample::select(choices).prop_map(Value::from),
        1 => any_text(24).prop_map(Value::from),
        1 => json_value(),
    ]
    .boxed()
}

/// Any JSON value, nested a little.
fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(TOKENS).prop_map(Value::from),
        any_text(16).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(TOKENS).prop_map(str::to_owned),
                inner,
                0..4
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
    .boxed()
}

/// An object from (key, value) pairs where `None` leaves the key out; an unknown key may follow.
fn object(fields: Vec<(&'static str, Option<Value>)>, extra: Option<(String, Value)>) -> Value {
    let mut map = Map::new();
    for (key, value) in fields {
        if let Some(value) = value {
            map.insert(key.to_owned(), value);
        }
    }
    if let Some((key, value)) = extra {
        map.insert(key, value);
    }
    Value::Object(map)
}

fn maybe(strategy: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop::option::weighted(0.95, strategy).boxed()
}

fn extra_field() -> BoxedStrategy<Option<(String, Value)>> {
    prop::option::weighted(0.05, (any_text(8), json_value())).boxed()
}

/// JSON is YAML: a document built as JSON exercises every check after the tokenizer.
fn playbook_document(noise: Noise) -> BoxedStrategy<Vec<u8>> {
    let plausible = |choices| plausible_with(choices, noise);
    let json_value = || match noise {
        Noise::Some => json_value(),
        Noise::None => Just(json!({})).boxed(),
    };
    let extra_field = || match noise {
        Noise::Some => extra_field(),
        Noise::None => Just(None).boxed(),
    };
    let ids = &["contain-host", "noop-3", "a", "0", "Bad_Id", "-x", ""];
    let maybe = |strategy: BoxedStrategy<Value>| match noise {
        Noise::Some => maybe(strategy),
        Noise::None => strategy.prop_map(Some).boxed(),
    };
    let versions = prop_oneof![
        20 => (1u32..10).prop_map(Value::from),
        1 => Just(json!(0)),
        1 => Just(json!(-1)),
        1 => Just(json!("3")),
        1 => Just(json!(4_294_967_296u64)),
    ]
    .boxed();
    let owners = prop_oneof![
        20 => Just(json!({"technical": "sec-eng@example.org", "operational": "soc@example.org"})),
        1 => json_value(),
    ]
    .boxed();
    let inputs = prop::collection::btree_map(
        prop::sample::select(&["pid", "path", "host", "ip", "Bad Name", "x"][..]),
        (
            plausible(&["integer", "string", "boolean", "ip", "path", "float"]),
            prop::option::of(any::<bool>()),
        ),
        0..4,
    )
    .prop_map(|map| {
        Value::Object(
            map.into_iter()
                .map(|(name, (kind, required))| {
                    let mut spec = json!({"type": kind});
                    if let Some(required) = required {
                        spec["required"] = json!(required);
                    }
                    (name.to_owned(), spec)
                })
                .collect(),
        )
    })
    .boxed();
    (
        (
            maybe(plausible(ids)),
            maybe(versions),
            maybe(plausible(&["Contain a host", "", "x"])),
            maybe(owners),
        ),
        (
            maybe(inputs),
            maybe(
                prop::collection::vec(step(noise), 0..4)
                    .prop_map(Value::Array)
                    .boxed(),
            ),
            maybe(plausible(DURATIONS)),
            extra_field(),
        ),
    )
        .prop_map(
            |((id, version, name, owners), (inputs, mut steps, timeout, extra))| {
                // Step ids must be unique; keep the generated ones only where they are junk.
                if let Some(Value::Array(list)) = &mut steps {
                    for (index, step) in list.iter_mut().enumerate() {
                        if step.get("id") == Some(&json!("kill")) {
                            step["id"] = json!(format!("step-{index}"));
                        }
                    }
                }
                let document = object(
                    vec![
                        ("id", id),
                        ("version", version),
                        ("name", name),
                        ("owners", owners),
                        ("inputs", inputs),
                        ("steps", steps),
                        ("timeout", timeout),
                    ],
                    extra,
                );
                serde_json::to_vec(&document).unwrap()
            },
        )
        .boxed()
}

const ACTIONS: &[&str] = &[
    "noop",
    "exec",
    "http.post",
    "notify",
    "file.quarantine",
    "file.restore",
    "process.kill",
    "net.block_ip",
    "net.unblock_ip",
    "shell",
];
const DURATIONS: &[&str] = &[
    "5s",
    "1m",
    "250ms",
    "2h",
    "0s",
    "99999999h",
    "5",
    "s",
    "-1s",
    "1.5s",
];
const PARAM_NAMES: &[&str] = &[
    "command",
    "args",
    "url",
    "body",
    "secret",
    "message",
    "priority",
    "path",
    "pid",
    "signal",
    "start_time",
    "address",
    "timeout",
    "unknown",
];
const PARAM_VALUES: &[&str] = &[
    "{{ subject.pid }}",
    "{{ subject.path }}",
    "{{ subject.missing }}",
    "{{ severity }}",
    "{{ subject.pid",
    "/bin/true",
    "relative/path",
    "https://hooks.example.org/x",
    "KILL",
    "TERM",
    "10.0.0.1",
    "10.0.0.0/8",
    "::1",
    "hello",
];
const WHEN_PARTS: &[&str] = &[
    "severity",
    ">=",
    "high",
    "subject.pid",
    ">",
    "0",
    "==",
    "'x'",
    "\"y\"",
    "and",
    "or",
    "not",
    "(",
    ")",
    "true",
    "org_id",
    "!=",
    "subject.path",
    "in",
    "[",
    "]",
    "999999999999999999999",
];

fn step(noise: Noise) -> BoxedStrategy<Value> {
    let plausible = |choices| plausible_with(choices, noise);
    let json_value = || match noise {
        Noise::Some => json_value(),
        Noise::None => Just(json!("none")).boxed(),
    };
    let extra_field = || match noise {
        Noise::Some => extra_field(),
        Noise::None => Just(None).boxed(),
    };
    let maybe = |strategy: BoxedStrategy<Value>| match noise {
        Noise::Some => maybe(strategy),
        Noise::None => strategy.prop_map(Some).boxed(),
    };
    let with = prop::collection::btree_map(
        prop::sample::select(PARAM_NAMES),
        prop_oneof![
            4 => plausible(PARAM_VALUES),
            1 => (0i64..100_000).prop_map(Value::from),
            1 => prop::collection::vec(plausible(PARAM_VALUES), 0..3).prop_map(Value::Array),
        ],
        0..3,
    )
    .prop_map(|map| Value::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    .boxed();
    let rollback = prop_oneof![
        Just(json!("none")),
        plausible(ACTIONS).prop_map(|action| json!({"action": action})),
        (plausible(ACTIONS), with.clone())
            .prop_map(|(action, with)| json!({"action": action, "with": with})),
        json_value(),
    ]
    .boxed();
    let when = prop::collection::vec(prop::sample::select(WHEN_PARTS), 1..7)
        .prop_map(|parts| Value::from(parts.join(" ")))
        .boxed();
    let retry = (
        prop_oneof![(0i64..20).prop_map(Value::from), json_value()],
        plausible(DURATIONS),
    )
        .prop_map(|(attempts, backoff)| json!({"attempts": attempts, "backoff": backoff}))
        .boxed();
    (
        (
            maybe(plausible(&["kill", "quarantine", "notify", "Bad Step", ""])),
            maybe(plausible(ACTIONS)),
            maybe(with),
            maybe(rollback),
        ),
        (
            maybe(plausible(&[
                "low", "moderate", "high", "critical", "extreme",
            ])),
            prop::option::weighted(0.3, when),
            prop::option::weighted(0.3, plausible(DURATIONS)),
            prop::option::weighted(0.3, retry),
            extra_field(),
        ),
    )
        .prop_map(
            |((id, action, with, rollback), (risk, when, timeout, retry, extra))| {
                object(
                    vec![
                        ("id", id),
                        ("action", action),
                        ("with", with),
                        ("rollback", rollback),
                        ("risk", risk),
                        ("when", when),
                        ("timeout", timeout),
                        ("retry", retry),
                    ],
                    extra,
                )
            },
        )
        .boxed()
}

fn bindings_document() -> impl Strategy<Value = Vec<u8>> {
    let binding = (
        (
            maybe(plausible(&[
                "ransomware.encryption_burst",
                "p",
                "",
                "\u{7}",
            ])),
            maybe(plausible(&["contain", "run", ""])),
            maybe(plausible(&["contain-host", "noop-3", "Bad_Id", ""])),
        ),
        (
            prop::option::weighted(0.4, plausible(&["acme", "", "x"])),
            prop::option::weighted(
                0.4,
                prop_oneof![
                    (0u64..100_000).prop_map(Value::from),
                    Just(json!(u64::MAX)),
                    Just(json!(-5)),
                    json_value()
                ]
                .boxed(),
            ),
            prop::option::weighted(0.3, any::<bool>().prop_map(Value::from).boxed()),
            extra_field(),
        ),
    )
        .prop_map(
            |((policy, outcome, playbook), (org, cooldown, approval, extra))| {
                object(
                    vec![
                        ("policy", policy),
                        ("outcome", outcome),
                        ("playbook", playbook),
                        ("org_id", org),
                        ("cooldown_seconds", cooldown),
                        ("require_approval", approval),
                    ],
                    extra,
                )
            },
        );
    (
        maybe(
            prop::collection::vec(binding, 0..6)
                .prop_map(Value::Array)
                .boxed(),
        ),
        extra_field(),
    )
        .prop_map(|(bindings, extra)| {
            serde_json::to_vec(&object(vec![("bindings", bindings)], extra)).unwrap()
        })
}

fn decision_line() -> impl Strategy<Value = Vec<u8>> {
    let nonce = prop_oneof![
        3 => Just(json!("5f0c9d7e2b8a4c1e9f6d3b2a1c0e8f7d")),
        1 => Just(json!("Zm9vYmFyYmF6cXV4cXV1eHl5enp6")),
        1 => Just(json!("short")),
        1 => prop::collection::vec(prop::sample::select(b"0123456789abcdef+/=-_ xyz".to_vec()), 0..300)
            .prop_map(|b| Value::from(String::from_utf8(b).unwrap())),
        1 => json_value(),
    ]
    .boxed();
    let issued_at = plausible(&[
        "2026-11-25T12:00:00Z",
        "2026-11-25T12:00:00.999999999+14:00",
        "2026-02-29T12:00:00Z",
        "9999-12-31T23:59:60Z",
        "-0001-01-01T00:00:00Z",
        "2026-11-25 12:00:00",
        "yesterday",
    ]);
    let subject = prop_oneof![
        3 => prop::collection::btree_map(
            prop::sample::select(&["pid", "path", "host", "ip"][..]),
            json_value(),
            0..4
        )
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        1 => json_value(),
    ]
    .boxed();
    (
        (
            maybe(plausible(&["d-1", "", "\u{0}"])),
            maybe(nonce),
            maybe(issued_at),
            maybe(plausible(&[
                "ransomware.encryption_burst",
                "bench.noop",
                "",
            ])),
            maybe(plausible(&["contain", "run", ""])),
        ),
        (
            maybe(plausible(&["acme", "bench", ""])),
            maybe(plausible(&[
                "low", "medium", "moderate", "high", "critical", "HIGH",
            ])),
            maybe(subject),
            prop::option::weighted(0.2, plausible(&["noop-3", "Bad_Id"])),
            prop::option::weighted(0.1, plausible(&["AAAA", "!!!", ""])),
            extra_field(),
        ),
    )
        .prop_map(
            |(
                (id, nonce, issued, policy, outcome),
                (org, severity, subject, playbook, sig, extra),
            )| {
                let line = object(
                    vec![
                        ("decision_id", id),
                        ("nonce", nonce),
                        ("issued_at", issued),
                        ("policy", policy),
                        ("outcome", outcome),
                        ("org_id", org),
                        ("severity", severity),
                        ("subject", subject),
                        ("playbook", playbook),
                        ("signature", sig),
                    ],
                    extra,
                );
                serde_json::to_vec(&line).unwrap()
            },
        )
}

fn control_line() -> impl Strategy<Value = Vec<u8>> {
    let execution_id = plausible(&[
        "6f1c2a0e-8b9d-4c3e-a1f2-0d9e8c7b6a54",
        "6f1c2a0e8b9d4c3ea1f20d9e8c7b6a54",
        "{6f1c2a0e-8b9d-4c3e-a1f2-0d9e8c7b6a54}",
        "urn:uuid:6f1c2a0e-8b9d-4c3e-a1f2-0d9e8c7b6a54",
        "00000000-0000-0000-0000-000000000000",
        "6f1c2a0e-8b9d-4c3e-a1f2-0d9e8c7b6a5",
        "",
    ]);
    let reason = prop_oneof![
        3 => plausible(&["confirmed", "", "  ", "\u{7}", "line\nbreak"]),
        1 => (0usize..2000).prop_map(|n| Value::from("r".repeat(n))),
    ]
    .boxed();
    (
        maybe(plausible(&[
            "pending",
            "approve",
            "deny",
            "cancel",
            "halt-resolve",
            "halt-fleet",
            "halt-resolve-fleet",
            "reload",
            "APPROVE",
            "halt_resolve",
        ])),
        prop::option::weighted(0.6, execution_id),
        prop::option::weighted(0.6, plausible(&["kill", "", "\u{1b}[31m", "quarantine"])),
        prop::option::weighted(0.6, reason),
        extra_field(),
    )
        .prop_map(|(verb, execution_id, step, reason, extra)| {
            let line = object(
                vec![
                    ("verb", verb),
                    ("execution_id", execution_id),
                    ("step", step),
                    ("reason", reason),
                ],
                extra,
            );
            serde_json::to_vec(&line).unwrap()
        })
}
