//! `playbookd simulate`: the plan a decision would get, with nothing executed or written.

use crate::helpers::{assert_contains, assert_lacks, run_cli};

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn decision(severity: &str) -> String {
    serde_json::json!({
        "decision_id": "d-sim", "nonce": "0123456789abcdef0123456789abcdef",
        "issued_at": "2026-11-25T10:00:00Z", "policy": "ransomware.encryption_burst",
        "outcome": "contain", "org_id": "acme", "severity": severity,
        "subject": {"host": "web-1", "pid": 4242, "start_time": 99, "path": "/srv/x.bin",
                    "c2_address": "203.0.113.9"}
    })
    .to_string()
}

/// The sample playbook every simulation here runs.
const RANSOMWARE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/playbooks/contain-ransomware.yaml"
);

#[test]
fn simulate_renders_every_step_and_executes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let decision = write(&dir, "d.json", &decision("high"));
    let playbook = RANSOMWARE;
    let (status, stdout, stderr) = run_cli(
        &["simulate", "--json", "--decision", &decision, playbook],
        &[],
    );
    assert!(status.success(), "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["executed"], false);
    let steps = plan["steps"].as_array().unwrap();
    let kill = &steps[0];
    assert_eq!(
        kill["with"]["pid"], 4242,
        "a standalone template keeps the integer type"
    );
    assert_eq!(kill["approvals_needed"], 1, "high risk: one approval");
    assert_eq!(steps[1]["decision"], "run");
    assert_eq!(steps[1]["rollback"]["action"], "file.restore");
    assert_eq!(steps[1]["rollback"]["with"]["path"], "/srv/x.bin");
}

#[test]
fn simulate_shows_a_skipped_step_and_refuses_a_bad_subject() {
    let dir = tempfile::tempdir().unwrap();
    let low = write(&dir, "low.json", &decision("low"));
    let playbook = RANSOMWARE;
    let (status, stdout, _) = run_cli(&["simulate", "--decision", &low, playbook], &[]);
    assert!(status.success());
    assert_contains(&stdout, "skip: when `severity >= high` is false");

    let bad = write(&dir, "bad.json", &decision("high").replace("4242", "\"x\""));
    let (status, _, stderr) = run_cli(&["simulate", "--decision", &bad, playbook], &[]);
    assert!(!status.success());
    assert_contains(&stderr, "subject.pid");
}

#[test]
fn simulate_exits_66_on_an_unreadable_file_and_65_on_an_invalid_one() {
    let dir = tempfile::tempdir().unwrap();
    let decision = write(&dir, "d.json", &decision("high"));
    let playbook = RANSOMWARE;
    let missing = dir.path().join("missing.json").display().to_string();
    let (status, _, stderr) = run_cli(&["simulate", "--decision", &missing, playbook], &[]);
    assert_eq!(status.code(), Some(66), "{stderr}");
    assert_contains(&stderr, "cannot read");
    let missing_playbook = dir.path().join("missing.yaml").display().to_string();
    let (status, _, stderr) = run_cli(
        &["simulate", "--decision", &decision, &missing_playbook],
        &[],
    );
    assert_eq!(status.code(), Some(66), "{stderr}");
    let invalid = write(&dir, "bad.yaml", "id: x\n");
    let (status, _, stderr) = run_cli(&["simulate", "--decision", &decision, &invalid], &[]);
    assert_eq!(status.code(), Some(65), "{stderr}");
}

#[test]
fn simulate_into_a_closed_pipe_ends_quietly_without_a_panic() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let decision = write(&dir, "d.json", &decision("high"));
    let playbook = RANSOMWARE;
    let mut child = Command::new(crate::helpers::binary())
        .args(["simulate", "--json", "--decision", &decision, playbook])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -c0`: the reader is gone before anything is written.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_lacks(&stderr, "panicked");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

#[test]
fn simulate_with_a_config_refuses_what_the_daemon_would_refuse_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let decision = write(&dir, "d.json", &decision("high"));
    let playbook = write(
        &dir,
        "p.yaml",
        "id: p\nversion: 1\nname: P\nowners: {technical: a@example.org, operational: b@example.org}\n\
         steps:\n  - {id: run, action: exec, with: {command: /bin/false}, risk: low, rollback: none}\n",
    );
    let config = write(
        &dir,
        "c.toml",
        "[actions.exec]\nallowed_commands = [\"/bin/true\"]\n",
    );
    let (status, _, stderr) = run_cli(&["simulate", "--decision", &decision, &playbook], &[]);
    assert!(status.success(), "without --config: {stderr}");
    let (status, _, stderr) = run_cli(
        &[
            "simulate",
            "--decision",
            &decision,
            &playbook,
            "--config",
            &config,
        ],
        &[],
    );
    assert_eq!(status.code(), Some(65), "{stderr}");
    assert_contains(&stderr, "step `run`, with.command");
    assert_contains(&stderr, "actions.exec.allowed_commands");
}
