//! The status API against its own OpenAPI document (schemas/openapi.yaml), checked by a
//! third-party property-based tester: schemathesis (from PyPI, installed by
//! scripts/lib/install-test-tools.sh) generates valid and invalid requests for every operation
//! and checks every response (status codes, content types, bodies against their schemas, no
//! 5xx) against the real daemon. A fixed seed and a bounded number of examples keep it quick
//! and repeatable.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::NOOP_3;
use crate::helpers::{ChildDaemon, DaemonDir, TestDb};

/// Where install-test-tools.sh links schemathesis, unless PLAYBOOKD_SCHEMATHESIS names another.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("PLAYBOOKD_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    cache.join("playbookd-test-tools/bin/schemathesis")
}

#[tokio::test]
async fn the_status_api_conforms_to_its_openapi_document() {
    let tool = schemathesis();
    assert!(
        tool.exists(),
        "{} not found: run scripts/lib/install-test-tools.sh (scripts/test does)",
        tool.display()
    );
    let db = TestDb::new().await;
    let dir = DaemonDir::new();
    dir.write_signed("playbooks/noop-3.yaml", NOOP_3, false);
    dir.write_bindings(&crate::harness::bindings(&[(
        "bench.noop",
        "run",
        "noop-3",
    )]));
    let config = dir.write_config(&db, "node-api", "");
    let daemon = ChildDaemon::serve(&config);
    // A few executions, so list and detail responses carry rows to check against the schemas.
    for _ in 0..3 {
        let decision = crate::harness::decision("bench.noop", "run", serde_json::json!({}));
        let reply = crate::harness::send_json(&dir.path("run/decisions.sock"), &decision).await;
        assert_eq!(reply["status"], "accepted", "{reply}");
    }
    let endpoint = daemon.status_endpoint();
    let url = endpoint.to_string();
    let (ok, output) = run(&tool, &url, &dir.path("report-all"), &[]).await;
    assert!(
        ok,
        "schemathesis found problems:\n{output}\n--- daemon log ---\n{}",
        daemon.log_text()
    );

    // The one documented 5xx: /v1/health answers 503 while a SAFE-HALT is active. Every other
    // check still holds for it (the status code and the body are the documented ones).
    let client = db.client().await;
    crate::status::insert_halt_of(&client, "node-api", None, true).await;
    let health = playbookd::cli::status::request(&endpoint, "GET", "/v1/health")
        .await
        .unwrap();
    assert_eq!(health.status, 503);
    let (ok, output) = run(
        &tool,
        &url,
        &dir.path("report-halted"),
        &[
            "--include-path",
            "/v1/health",
            "--exclude-checks",
            "not_a_server_error",
        ],
    )
    .await;
    assert!(ok, "during SAFE-HALT:\n{output}");
}

/// Runs schemathesis over the whole document against `url`: every check, a fixed seed and a
/// bounded number of examples per operation. Returns whether it found nothing, and its output.
async fn run(
    tool: &std::path::Path,
    url: &str,
    report: &std::path::Path,
    extra: &[&str],
) -> (bool, String) {
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/openapi.yaml");
    let mut command = Command::new(tool);
    command
        .args(["run", schema, "--url", url])
        .args(["--checks", "all"])
        .args(["--seed", "20261125", "--max-examples", "25"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--workers", "2", "--request-timeout", "10"])
        .args(["--generation-database", "none", "--no-color"])
        .arg("--report-dir")
        .arg(report)
        .args(extra)
        // It keeps a `.schemathesis/` cache in its working directory: the test's own, not the
        // source tree.
        .current_dir(report.parent().expect("report dir has a parent"));
    let output = tokio::task::spawn_blocking(move || command.output().expect("run schemathesis"))
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}
