//! The operator console (`/ui/`): over plain HTTP, and in a real browser (Debian's Chromium
//! driven by Playwright for Python, tests/browser/console_test.py) against the daemon with
//! runs seeded through decisions.sock and control.sock.

use std::path::Path;
use std::time::Duration;

use playbookd::cli::status::{Endpoint, HttpResponse, request};
use playbookd::status::StatusAddr;
use playbookd::status::console::{CONTENT_SECURITY_POLICY, PAGES};
use serde_json::{Value, json};

use crate::harness::{TestDaemon, UNDO_FAILS, decision};
use crate::helpers::{assert_contains, assert_lacks, binary, query_value};

/// `one` and `two` succeed and are undone by `noop`; `three` fails: the rollback runs two, one.
/// Its subject carries a note, where the hostile strings go.
const ROLLS_BACK: &str = r#"
id: rolls-back
version: 1
name: Fails at the third step
owners: {technical: a@example.org, operational: b@example.org}
inputs:
  note: {type: string}
steps:
  - {id: one, action: noop, rollback: {action: noop}}
  - {id: two, action: noop, rollback: {action: noop}}
  - {id: three, action: exec, with: {command: /bin/false}, risk: low, rollback: none}
"#;

/// A critical step: waits for two approvals from distinct uids.
const GATED: &str = r#"
id: gated
version: 1
name: Waits for two approvers
owners: {technical: a@example.org, operational: b@example.org}
approval: {expires: 30m}
steps:
  - {id: prepare, action: noop, rollback: {action: noop}}
  - id: contain
    action: http.post
    with: {url: "https://hooks.example.org/contain", body: {api_token: "s3cr3t-token-value", host: "web-1"}}
    risk: critical
    rollback: none
"#;

const CONFIG: &str = r#"
[audit]
checkpoint_interval_seconds = 1
[actions.exec]
allowed_commands = ["/bin/true", "/bin/false"]
[actions.http]
allowed_hosts = ["hooks.example.org"]
"#;

const BINDINGS: &str = "bindings:
  - {policy: p.rollback, outcome: run, playbook: rolls-back}
  - {policy: p.gate, outcome: run, playbook: gated}
  - {policy: p.halt, outcome: run, playbook: undo-fails}
";

const SCRIPT_SCRIPT: &str = "<script>window.__pwned = 1; alert(1)</script>";
const IMG_ATTRIBUTE: &str = r#""><img src=x onerror="window.__pwned = 2; alert(2)">"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser_shows_runs_gates_halt_and_escapes_everything() {
    let chromium = Path::new("/usr/bin/chromium");
    assert!(
        chromium.exists(),
        "/usr/bin/chromium is missing: scripts/lib/install-test-tools.sh installs Debian's `chromium`"
    );
    let daemon = TestDaemon::start(CONFIG, &[ROLLS_BACK, GATED, UNDO_FAILS], BINDINGS).await;
    let control = daemon.dir.path("run/control.sock");
    // `expected` is the exit status: 0, or 65 for a reload that refused a file.
    let ctl = |args: Vec<String>, expected: i32| {
        let control = control.clone();
        async move {
            let output = tokio::process::Command::new(binary())
                .arg("ctl")
                .arg("--socket")
                .arg(&control)
                .args(&args)
                .env_remove("PLAYBOOKD_DATABASE_URL")
                .output()
                .await
                .unwrap();
            assert_eq!(
                output.status.code(),
                Some(expected),
                "ctl {args:?}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    };

    // A file the registry refuses (no signature), picked up by a reload through control.sock.
    std::fs::write(
        daemon.dir.path("playbooks/unsigned-v1.yaml"),
        ROLLS_BACK.replace("rolls-back", "unsigned"),
    )
    .unwrap();
    ctl(vec!["reload".into()], 65).await;

    let accepted = |reply: Value| {
        assert_eq!(reply["status"], "accepted", "{reply}");
        reply["execution_id"].as_str().unwrap().to_owned()
    };
    let rolled_back = accepted(
        daemon
            .send_decision(&decision(
                "p.rollback",
                "run",
                json!({"note": "an ordinary note"}),
            ))
            .await,
    );
    assert_eq!(
        daemon
            .wait_terminal(&rolled_back, Duration::from_secs(20))
            .await,
        "rolled_back"
    );
    let xss = accepted(
        daemon
            .send_decision(&decision(
                "p.rollback",
                "run",
                json!({"note": format!("{SCRIPT_SCRIPT} {IMG_ATTRIBUTE}"), IMG_ATTRIBUTE: SCRIPT_SCRIPT}),
            ))
            .await,
    );
    daemon.wait_terminal(&xss, Duration::from_secs(20)).await;

    let gated = accepted(
        daemon
            .send_decision(&decision("p.gate", "run", json!({})))
            .await,
    );
    wait_for_state(&daemon, &gated, "awaiting_approval").await;
    ctl(
        vec![
            "approve".into(),
            gated.clone(),
            "contain".into(),
            "--reason".into(),
            "host isolated by hand first".into(),
        ],
        0,
    )
    .await;

    let halted = accepted(
        daemon
            .send_decision(&decision("p.halt", "run", json!({})))
            .await,
    );
    assert_eq!(
        daemon.wait_terminal(&halted, Duration::from_secs(30)).await,
        "safe_halted"
    );

    // The checkpointer signs the chain head every second: the first runs' events are covered.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let StatusAddr::Tcp(address) = daemon.status.clone() else {
        panic!("the harness listens on TCP");
    };
    let base = format!("http://{address}");
    let sample = uuid::Uuid::new_v4().to_string();
    let pages: Vec<String> = PAGES.iter().map(|p| p.replace("{id}", &sample)).collect();
    let screenshots = std::env::var("PLAYBOOKD_CONSOLE_SCREENSHOTS").ok();
    let spec = json!({
        "base": base,
        "csp": CONTENT_SECURITY_POLICY,
        "rolled_back": rolled_back,
        "xss": xss,
        "gated": gated,
        "gated_step": "contain",
        "vote_reason": "host isolated by hand first",
        "secret": "s3cr3t-token-value",
        "halted": halted,
        "halt_undo_step": "one",
        "hostile": [SCRIPT_SCRIPT, IMG_ATTRIBUTE],
        "playbooks": ["rolls-back", "gated", "undo-fails"],
        "refused_file": "unsigned-v1.yaml",
        "ctl": [binary(), "ctl", "--socket", control],
        "pages": pages,
        "screenshots": screenshots,
    });
    let spec_path = daemon.dir.path("browser-spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/console_test.py");
    let run = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("python3")
            .arg(script)
            .arg(&spec_path)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser test finished within 3 minutes")
    .expect("python3 runs (scripts/lib/install-test-tools.sh installs Playwright for Python)");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "browser checks failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}\n{stderr}");
    daemon.stop().await;
}

#[tokio::test]
async fn every_console_page_refuses_writes_and_carries_the_policy() {
    let daemon = TestDaemon::start(CONFIG, &[ROLLS_BACK], BINDINGS).await;
    let id = {
        let reply = daemon
            .send_decision(&decision(
                "p.rollback",
                "run",
                json!({"note": SCRIPT_SCRIPT}),
            ))
            .await;
        reply["execution_id"].as_str().unwrap().to_owned()
    };
    daemon.wait_terminal(&id, Duration::from_secs(20)).await;
    let endpoint = endpoint(&daemon);
    for page in PAGES {
        let path = page.replace("{id}", &id);
        for method in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            let response = request(&endpoint, method, &path).await.unwrap();
            assert_eq!(response.status, 405, "{method} {path}");
            assert_eq!(
                response.header("allow"),
                Some("GET, HEAD"),
                "{method} {path}"
            );
            assert_policy(&response, &format!("{method} {path}"));
        }
        let get = request(&endpoint, "GET", &path).await.unwrap();
        let expected = if path == "/ui" { 308 } else { 200 };
        assert_eq!(get.status, expected, "GET {path}");
        assert_policy(&get, &format!("GET {path}"));
        let head = request(&endpoint, "HEAD", &path).await.unwrap();
        assert_eq!(head.status, expected, "HEAD {path}");
        assert!(head.body.is_empty(), "HEAD {path} sent a body");
    }

    // Escaped by the template engine: the text is there, the markup is not.
    let page = request(&endpoint, "GET", &format!("/ui/runs/{id}"))
        .await
        .unwrap();
    let html = String::from_utf8(page.body).unwrap();
    assert_contains(
        &html,
        "&#60;script&#62;window.__pwned = 1; alert(1)&#60;/script&#62;",
    );
    assert_lacks(&html, "<script>window");
    assert_eq!(html.matches("<script").count(), 1, "{html}");

    // Errors are pages too, naming what was wrong.
    for (path, status, needle) in [
        ("/ui/runs/not-a-uuid", 400, "`id`"),
        ("/ui/?state=exploded", 400, "`state`"),
        ("/ui/?colour=red", 400, "`colour`"),
        ("/ui/?since=yesterday", 400, "`since`"),
        ("/ui/no-such-page", 404, "no such console page"),
    ] {
        let response = request(&endpoint, "GET", path).await.unwrap();
        assert_eq!(response.status, status, "{path}");
        assert_policy(&response, path);
        let text = String::from_utf8_lossy(&response.body);
        assert!(text.contains(needle), "{path}: {text}");
    }
    let missing = request(
        &endpoint,
        "GET",
        &format!("/ui/runs/{}", uuid::Uuid::new_v4()),
    )
    .await
    .unwrap();
    assert_eq!(missing.status, 404);
    // The JSON API is untouched by the console's layers.
    let health = request(&endpoint, "POST", "/v1/health").await.unwrap();
    assert_eq!(health.json().unwrap()["error"], "method_not_allowed");
    daemon.stop().await;
}

#[tokio::test]
async fn runs_page_filters_and_pages_newest_first() {
    let daemon = TestDaemon::start(CONFIG, &[ROLLS_BACK], BINDINGS).await;
    let mut ids = Vec::new();
    for i in 0..55 {
        let reply = daemon
            .send_decision(&decision(
                "p.rollback",
                "run",
                json!({"note": format!("run {i}")}),
            ))
            .await;
        ids.push(reply["execution_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        daemon.wait_terminal(id, Duration::from_secs(30)).await;
    }
    let endpoint = endpoint(&daemon);
    let listed = |html: &str| -> Vec<String> {
        html.split("class=\"run-link\" href=\"/ui/runs/")
            .skip(1)
            .map(|rest| rest[..36].to_owned())
            .collect()
    };
    let first = request(&endpoint, "GET", "/ui/?node=node-a&playbook=rolls-back")
        .await
        .unwrap();
    let html = String::from_utf8(first.body).unwrap();
    let page_one = listed(&html);
    assert_eq!(page_one.len(), 50, "{html}");
    let newest: Vec<String> = ids.iter().rev().take(50).cloned().collect();
    assert_eq!(page_one, newest, "newest first");
    let older = html
        .split("id=\"older\"")
        .next()
        .and_then(|before| before.rsplit("href=\"").next())
        .map(|link| link.trim_end_matches("\" ").replace("&#38;", "&"))
        .unwrap();
    assert!(
        older.contains("node=node-a") && older.contains("playbook=rolls-back"),
        "the next page keeps the filters: {older}"
    );
    let second = request(&endpoint, "GET", &older).await.unwrap();
    let html = String::from_utf8(second.body).unwrap();
    let page_two = listed(&html);
    let oldest: Vec<String> = ids.iter().rev().skip(50).cloned().collect();
    assert_eq!(page_two, oldest);
    assert!(!html.contains("id=\"older\""), "no page after the last");

    let other_node = request(&endpoint, "GET", "/ui/?node=node-b").await.unwrap();
    let html = String::from_utf8(other_node.body).unwrap();
    assert!(listed(&html).is_empty() && html.contains("No run matches these filters"));
    daemon.stop().await;
}

fn endpoint(daemon: &TestDaemon) -> Endpoint {
    Endpoint(daemon.status.clone())
}

fn assert_policy(response: &HttpResponse, what: &str) {
    assert_eq!(
        response.header("content-security-policy"),
        Some(CONTENT_SECURITY_POLICY),
        "{what}"
    );
    assert!(response.header("set-cookie").is_none(), "{what}");
    assert_eq!(response.header("x-frame-options"), Some("DENY"), "{what}");
}

async fn wait_for_state(daemon: &TestDaemon, id: &str, want: &str) {
    let client = daemon.db.client().await;
    let id: uuid::Uuid = id.parse().unwrap();
    for _ in 0..400 {
        let state: String = query_value(
            &client,
            "SELECT state FROM playbook_executions WHERE execution_id = $1",
            &[&id],
        )
        .await;
        if state == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{id} never reached {want}");
}

#[tokio::test]
async fn without_the_database_the_banner_says_the_halt_state_is_unknown() {
    use playbookd::status::{self, RuntimeSnapshot, StatusState};
    use playbookd::store::{Store, audit};

    let db = crate::helpers::TestDb::new().await;
    let store = Store::connect(&db.config, 2, Duration::from_secs(2))
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (writer, _task) = audit::start_writer(db.config.clone(), "node-u".into(), shutdown.clone())
        .await
        .unwrap();
    let (_runtime, receiver) = tokio::sync::watch::channel(RuntimeSnapshot::default());
    let listener = status::bind(&"127.0.0.1:0".parse().unwrap()).await.unwrap();
    let StatusAddr::Tcp(address) = listener.local_addr().unwrap() else {
        panic!("TCP listener expected");
    };
    tokio::spawn(status::serve(
        listener,
        StatusState::new(store, writer, receiver),
        shutdown.clone(),
    ));
    let endpoint = Endpoint(StatusAddr::Tcp(address));
    let fine = request(&endpoint, "GET", "/ui/").await.unwrap();
    assert_eq!(fine.status, 200);
    assert!(!String::from_utf8_lossy(&fine.body).contains("SAFE-HALT state unknown"));

    // The database goes away under the console: no page may claim there is no halt.
    crate::helpers::connect(&crate::helpers::admin_config())
        .await
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", db.name))
        .await
        .unwrap();
    for path in ["/ui/", "/ui/approvals", "/ui/registry"] {
        let response = request(&endpoint, "GET", path).await.unwrap();
        assert_eq!(response.status, 503, "{path}");
        let html = String::from_utf8_lossy(&response.body);
        assert!(html.contains("SAFE-HALT state unknown"), "{path}: {html}");
        assert!(html.contains("Database unavailable"), "{path}: {html}");
    }
    shutdown.cancel();
}

/// A run page links each checkpointed event to its checkpoint's signed note and to its
/// inclusion proof; both links answer (issue 24).
#[tokio::test]
async fn run_page_links_each_event_to_its_checkpoint_note_and_proof() {
    let daemon = TestDaemon::start(CONFIG, &[ROLLS_BACK], BINDINGS).await;
    let reply = daemon
        .send_decision(&decision("p.rollback", "run", json!({"note": "evidence"})))
        .await;
    let id = reply["execution_id"].as_str().unwrap().to_owned();
    daemon.wait_terminal(&id, Duration::from_secs(30)).await;
    let endpoint = endpoint(&daemon);
    // The checkpointer signs every second; wait until every event of the run is covered.
    let mut html = String::new();
    for _ in 0..40 {
        let page = request(&endpoint, "GET", &format!("/ui/runs/{id}"))
            .await
            .unwrap();
        assert_eq!(page.status, 200);
        html = String::from_utf8(page.body).unwrap();
        if !html.contains("not yet checkpointed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_lacks(&html, "not yet checkpointed");
    let links = |class: &str| -> Vec<String> {
        html.split(&format!("class=\"{class}\" href=\""))
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap().replace("&#38;", "&"))
            .collect()
    };
    let notes = links("checkpoint-note");
    let proofs = links("inclusion-proof");
    let events = html.matches("<td class=\"evidence\">").count();
    assert!(events >= 5, "{html}");
    assert_eq!((notes.len(), proofs.len()), (events, events), "{html}");
    for link in &notes {
        assert!(
            link.starts_with("/v1/checkpoint?node=node-a&size="),
            "{link}"
        );
        let note = request(&endpoint, "GET", link).await.unwrap();
        assert_eq!(note.status, 200, "{link}");
        let text = String::from_utf8(note.body).unwrap();
        assert!(text.starts_with("playbookd/node-a\n"), "{text}");
    }
    for link in &proofs {
        let proof = request(&endpoint, "GET", link).await.unwrap();
        assert_eq!(proof.status, 200, "{link}");
        let body = proof.json().unwrap();
        assert!(body["inclusion_proof"].is_array(), "{body}");
    }
    // No witness has cosigned yet; once one cosigns the newest checkpoint, every event it
    // covers says so.
    assert_lacks(&html, "cosigned by");
    let client = daemon.db.client().await;
    client
        .execute(
            "INSERT INTO audit_cosignatures \
             (node_id, checkpoint_seq, witness_name, key_id, timestamp, signature, created_at) \
             SELECT 'node-a', max(seq), 'witness.test/w1', '0000abcd', 1, $1, now() \
             FROM audit_checkpoints WHERE node_id = 'node-a'",
            &[&vec![7u8; 64]],
        )
        .await
        .unwrap();
    let page = request(&endpoint, "GET", &format!("/ui/runs/{id}"))
        .await
        .unwrap();
    let html = String::from_utf8(page.body).unwrap();
    assert_eq!(
        html.matches("cosigned by 1 witness<").count(),
        events,
        "{html}"
    );
    daemon.stop().await;
}
