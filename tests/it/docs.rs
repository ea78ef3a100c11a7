//! The pages in docs/ cannot rot.
//!
//! - docs/walkthrough.md: every `sh` block of the page runs, in order, in one bash
//!   (`set -euo pipefail`), against a real daemon connected as the runtime role, with the page's
//!   variables pointed at a throwaway directory. The run must end `completed` with two votes
//!   from two uids, and `audit verify` must pass.
//! - docs/configuration.md names every key `Config` accepts, and nothing else. The keys are read
//!   from the parser itself: every table refuses unknown fields, and serde's refusal lists the
//!   fields the table has, so a key added to src/config.rs without a line here fails this test.
//! - README.md's state-ownership checks print nothing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeSet;

use playbookd::config::Config;

use crate::helpers::{ChildDaemon, DaemonDir, TestDb, binary};

const ALICE_UID: u32 = 2101;
const BOB_UID: u32 = 2102;
/// `users`: owns control.sock here, and is the approvers' primary group.
const APPROVERS_GID: u32 = 100;

/// The fenced ```` ```sh ```` blocks of a Markdown page, joined in order.
fn page(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(name),
    )
    .unwrap()
}

fn shell_blocks(markdown: &str) -> String {
    let mut script = String::new();
    let mut inside = false;
    for line in markdown.lines() {
        match (inside, line.trim_end()) {
            (false, "```sh") => inside = true,
            (true, "```") => inside = false,
            (true, _) => {
                script.push_str(line);
                script.push('\n');
            }
            (false, _) => {}
        }
    }
    script
}

#[tokio::test]
async fn walkthrough_page_runs_from_validate_to_completed_run_with_two_approvals() {
    let script = shell_blocks(&page("walkthrough.md"));
    assert!(
        script.contains("openssl pkeyutl -sign -rawin") && script.contains("approve"),
        "the page lost its signing or approval step:\n{script}"
    );

    let db = TestDb::new().await;
    let dir = DaemonDir::new();
    // The approvers (other uids) must reach control.sock.
    dir.open_to_other_uids();
    let config = dir.write_config(
        &db,
        "node-walkthrough",
        &format!(
            "[control]\nsocket_group = \"users\"\n[roles]\nadmin = {{ uids = [0] }}\n\
             approver = {{ uids = [{ALICE_UID}, {BOB_UID}] }}\n"
        ),
    );
    let mut daemon = ChildDaemon::serve(&config);
    let status_url = daemon.status_endpoint().to_string();

    let bin_dir = binary().parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let p = |relative: &str| dir.path(relative).display().to_string();
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PATH", path)
        .env("CONFIG", config.display().to_string())
        .env("PLAYBOOKS", p("playbooks"))
        .env("TRUSTED_KEYS", p("trusted-keys"))
        .env("BINDINGS", p("bindings.yaml"))
        .env("DECISIONS", p("run/decisions.sock"))
        .env("CONTROL", p("run/control.sock"))
        .env("STATUS_URL", status_url.trim_end_matches('/'))
        .env("WORK", p("work"))
        .env("ALICE_UID", ALICE_UID.to_string())
        .env("BOB_UID", BOB_UID.to_string())
        .env("APPROVERS_GID", APPROVERS_GID.to_string())
        .env_remove("PLAYBOOKD_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = format!(
        "stdout:\n{stdout}\nstderr:\n{stderr}\ndaemon log:\n{}",
        daemon.log_text()
    );
    assert!(output.status.success(), "{}: {context}", output.status);
    assert!(
        stdout.contains("state: completed"),
        "the run did not complete: {context}"
    );

    // What the page claims, read from the database: one completed run, two votes, two uids.
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT e.state, count(a.*), count(DISTINCT a.approver_uid)
               FROM playbook_executions e JOIN playbook_approvals a USING (execution_id)
              WHERE e.playbook_id = 'declare-incident' GROUP BY e.state",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "completed", "{context}");
    assert_eq!(row.get::<_, i64>(1), 2, "{context}");
    assert_eq!(row.get::<_, i64>(2), 2, "{context}");
    daemon.stop_within(Duration::from_secs(20));
}

/// The fields of the table at `path` (`[]` is the top level), from the parser's refusal of an
/// unknown one; `None` when `path` names a value, not a table.
fn table_fields(path: &[String]) -> Option<Vec<String>> {
    let header = path.join(".");
    let probes = if path.is_empty() {
        vec!["zz_probe = 1\n".to_owned()]
    } else {
        vec![
            format!("[{header}]\nzz_probe = 1\n"),
            format!("[[{header}]]\nzz_probe = 1\n"),
        ]
    };
    for text in probes {
        let error = Config::parse(Path::new("probe.toml"), &text, None)
            .expect_err("an unknown key must be refused")
            .to_string();
        if let Some((_, expected)) = error.split_once("unknown field `zz_probe`, expected ") {
            return Some(
                expected
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect(),
            );
        }
    }
    None
}

/// Every key `Config` accepts, dotted (`intake.max_backlog`, `roles.orgs.uids`).
fn config_keys(path: Vec<String>, keys: &mut BTreeSet<String>) {
    let fields = table_fields(&path).expect("a table");
    for field in fields {
        let mut child = path.clone();
        child.push(field);
        if table_fields(&child).is_some() {
            config_keys(child, keys);
        } else {
            keys.insert(child.join("."));
        }
    }
}

#[test]
fn configuration_reference_names_every_config_key_and_no_other() {
    let mut keys = BTreeSet::new();
    config_keys(Vec::new(), &mut keys);
    assert!(
        keys.contains("intake.max_backlog") && keys.contains("roles.orgs.orgs"),
        "the key probe is broken: {keys:?}"
    );
    let doc = page("configuration.md");
    // The reference rows: `| `key` | type | default | … |`.
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`'))
        .map(|(key, _)| key.to_owned())
        .collect();
    let missing: Vec<_> = keys.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&keys).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/configuration.md is out of date: keys without a row {missing:?}; rows naming no key {unknown:?}"
    );
}

/// The README's "State ownership" checks print nothing: each table is written by its owner
/// module only (but for the multi-table statements the block names), no SQL naming the tables
/// outside the store but for the readers it names, and the modules that decide states deny
/// wildcard arms. The block is run as the README shows it, from the repository's root.
#[test]
fn readme_state_ownership_checks_print_nothing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let heading = "Checks (each prints nothing";
    let after = &readme[readme.find(heading).expect("the README's checks")..];
    // Up to the next section: the checks are its only sh block.
    let block = shell_blocks(after.split("\n## ").next().unwrap_or(after));
    assert!(block.contains("grep"), "{block}");
    let output = Command::new("bash")
        .arg("-c")
        .arg(&block)
        .current_dir(root)
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        printed.is_empty(),
        "the README's checks printed:\n{printed}"
    );
}
