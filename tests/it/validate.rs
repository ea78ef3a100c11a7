//! `playbookd validate FILE…`, through the real binary.

use std::path::PathBuf;

use crate::helpers::{assert_contains, run_cli};

fn path(relative: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(relative)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn validate_accepts_samples_and_names_each_summary() {
    let playbook = path("playbooks/contain-ransomware.yaml");
    let bindings = path("playbooks/bindings.yaml");
    let (status, stdout, stderr) = run_cli(&["validate", &playbook, &bindings], &[]);
    assert!(status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert_contains(
        &stdout,
        &format!("{playbook}: ok (contain-ransomware@1, 4 steps)"),
    );
    assert_contains(&stdout, &format!("{bindings}: ok (bindings, 5 bindings)"));
}

#[test]
fn validate_fails_with_the_reason_per_file_and_keeps_checking_the_rest() {
    let bad = path("tests/fixtures/playbooks/invalid/missing-param.yaml");
    let good = path("playbooks/noop-3.yaml");
    let missing = path("tests/fixtures/playbooks/invalid/does-not-exist.yaml");
    let (status, stdout, stderr) = run_cli(&["validate", &bad, &good, &missing], &[]);
    // 66 (EX_NOINPUT): one could not be read at all.
    assert_eq!(
        status.code(),
        Some(66),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_contains(
        &stdout,
        &format!("{bad}: step `block`, with.address: `net.block_ip` requires `address`"),
    );
    assert_contains(&stdout, &format!("{good}: ok (noop-3@1, 3 steps)"));
    assert_contains(&stdout, &format!("{missing}: cannot read:"));
    assert_contains(&stderr, "2 of 3 file(s) failed validation");
}

#[test]
fn validate_refuses_an_oversized_file_without_parsing_it() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, vec![b'#'; 10 * 1024 * 1024]).unwrap();
    let big = big.to_string_lossy().into_owned();
    let (status, stdout, _) = run_cli(&["validate", &big], &[]);
    assert!(!status.success());
    assert_contains(
        &stdout,
        &format!("{big}: document is 10485760 bytes; the limit is 1048576"),
    );
}

#[test]
fn validate_exits_65_on_an_invalid_file_and_66_on_an_unreadable_one() {
    let bad = path("tests/fixtures/playbooks/invalid/missing-param.yaml");
    let (status, _, stderr) = run_cli(&["validate", &bad], &[]);
    assert_eq!(status.code(), Some(65), "{stderr}");
    let missing = path("tests/fixtures/playbooks/invalid/does-not-exist.yaml");
    let (status, _, stderr) = run_cli(&["validate", &missing], &[]);
    assert_eq!(status.code(), Some(66), "{stderr}");
}
