//! The registry checks every parameter the configuration constrains when a playbook loads: a
//! playbook that would fail at incident time on a rule the daemon already knew is refused at
//! load, with a reason naming the step and the key, counted in the rejections metric, and its
//! binding answers `no active version`.

use serde_json::json;

use crate::harness::{TestDaemon, bindings, decision};
use crate::helpers::query_column;

/// The configuration every case is judged against.
const LIMITS: &str = r#"
[actions.exec]
allowed_commands = ["/bin/true"]
[actions.http]
allowed_hosts = ["hooks.example.org", "127.0.0.1"]
allowed_loopback = ["127.0.0.1"]
[actions.net]
never_block = ["10.9.0.0/16"]
"#;

/// One playbook breaking one limit: (id, steps YAML, metric label, where the reason points).
struct Case {
    id: &'static str,
    steps: String,
    label: &'static str,
    at: &'static str,
    key: &'static str,
}

fn playbook(id: &str, steps: &str) -> String {
    format!(
        "id: {id}\nversion: 1\nname: Breaks one limit\nowners: {{technical: a@example.org, operational: b@example.org}}\n\
         inputs:\n  name: {{type: string}}\nsteps:\n{steps}"
    )
}

fn cases(quarantine: &str) -> Vec<Case> {
    vec![
        Case {
            id: "exec-command",
            steps: "  - {id: run, action: exec, with: {command: /bin/false}, risk: low, rollback: none}\n".into(),
            label: "command_not_allowed",
            at: "step `run`, with.command",
            key: "actions.exec.allowed_commands",
        },
        Case {
            id: "exec-templated-command",
            steps: "  - {id: run, action: exec, with: {command: \"/bin/{{ subject.name }}\"}, risk: low, rollback: none}\n".into(),
            label: "command_not_allowed",
            at: "step `run`, with.command",
            key: "actions.exec.allowed_commands",
        },
        Case {
            id: "undo-command",
            steps: "  - {id: run, action: exec, with: {command: /bin/true}, risk: low, rollback: {action: exec, with: {command: /bin/false}}}\n".into(),
            label: "command_not_allowed",
            at: "step `run`, rollback.with.command",
            key: "actions.exec.allowed_commands",
        },
        Case {
            id: "http-host",
            steps: "  - {id: post, action: http.post, with: {url: \"https://evil.example.org/hook\"}, risk: low, rollback: none}\n".into(),
            label: "host_not_allowed",
            at: "step `post`, with.url",
            key: "actions.http.allowed_hosts",
        },
        Case {
            id: "http-templated-host",
            steps: "  - {id: post, action: http.post, with: {url: \"https://evil.example.org/{{ subject.name }}\"}, risk: low, rollback: none}\n".into(),
            label: "host_not_allowed",
            at: "step `post`, with.url",
            key: "actions.http.allowed_hosts",
        },
        Case {
            id: "http-scheme",
            steps: "  - {id: post, action: http.post, with: {url: \"http://hooks.example.org/hook\"}, risk: low, rollback: none}\n".into(),
            label: "plain_http_not_allowed",
            at: "step `post`, with.url",
            key: "actions.http.allowed_loopback",
        },
        Case {
            id: "notify-webhook",
            steps: "  - {id: tell, action: notify, with: {message: hi, webhook: \"https://evil.example.org/\"}, rollback: none}\n".into(),
            label: "host_not_allowed",
            at: "step `tell`, with.webhook",
            key: "actions.http.allowed_hosts",
        },
        Case {
            id: "quarantine-dir",
            steps: format!("  - {{id: hide, action: file.quarantine, with: {{path: \"{quarantine}/other-run\"}}, risk: low, rollback: none}}\n"),
            label: "inside_quarantine_dir",
            at: "step `hide`, with.path",
            key: "actions.file.quarantine_dir",
        },
        Case {
            id: "quarantine-templated",
            steps: format!("  - {{id: hide, action: file.quarantine, with: {{path: \"{quarantine}/{{{{ subject.name }}}}\"}}, risk: low, rollback: none}}\n"),
            label: "inside_quarantine_dir",
            at: "step `hide`, with.path",
            key: "actions.file.quarantine_dir",
        },
        Case {
            id: "never-block",
            steps: "  - {id: block, action: net.block_ip, with: {address: 10.9.3.4}, risk: low, rollback: {action: net.unblock_ip, with: {address: 10.9.3.4}}}\n".into(),
            label: "address_never_blocked",
            at: "step `block`, with.address",
            key: "actions.net.never_block",
        },
        Case {
            id: "loopback",
            steps: "  - {id: block, action: net.block_ip, with: {address: 127.0.0.0/8}, risk: low, rollback: none}\n".into(),
            label: "address_loopback",
            at: "step `block`, with.address",
            key: "loopback",
        },
    ]
}

/// The value of `playbookd_registry_rejections_total{reason="LABEL"}` in this process.
fn rejections(label: &str) -> f64 {
    let text = playbookd::status::metrics::install().render();
    let prefix = format!("playbookd_registry_rejections_total{{reason=\"{label}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0.0, |value| value.parse().unwrap())
}

#[tokio::test]
async fn each_config_bound_parameter_is_refused_at_load_and_its_binding_has_no_active_version() {
    let good = playbook(
        "allowed",
        "  - {id: run, action: exec, with: {command: /bin/true}, risk: low, rollback: none}\n",
    );
    // The quarantine dir is `<daemon dir>/quarantine`: the cases are written once it exists.
    let running = TestDaemon::builder()
        .config(LIMITS)
        .documents(move |dir| {
            let quarantine = dir.path("quarantine").display().to_string();
            let cases = cases(&quarantine);
            let mut texts: Vec<String> = cases.iter().map(|c| playbook(c.id, &c.steps)).collect();
            texts.push(good.clone());
            let mut entries: Vec<(String, String, String)> = cases
                .iter()
                .map(|c| ("limits".to_owned(), c.id.to_owned(), c.id.to_owned()))
                .collect();
            entries.push(("limits".into(), "allowed".into(), "allowed".into()));
            let refs: Vec<(&str, &str, &str)> = entries
                .iter()
                .map(|(p, o, b)| (p.as_str(), o.as_str(), b.as_str()))
                .collect();
            (texts, bindings(&refs))
        })
        .start()
        .await;
    let quarantine = running.dir.path("quarantine").display().to_string();
    let cases = cases(&quarantine);

    // Audited with the reason label and a detail naming the step, the parameter and the key.
    let client = running.db.client().await;
    let events: Vec<serde_json::Value> = query_column(
        &client,
        "SELECT event_data FROM playbook_audit_log WHERE event_type = 'playbook.rejected'",
        &[],
    )
    .await;
    for case in &cases {
        let file_suffix = format!("{}-v1.yaml", case.id);
        let event = events
            .iter()
            .find(|e| e["file"].as_str().unwrap().ends_with(&file_suffix))
            .unwrap_or_else(|| panic!("no playbook.rejected for {}: {events:#?}", case.id));
        assert_eq!(event["reason"], case.label, "{}: {event}", case.id);
        let detail = event["detail"].as_str().unwrap();
        assert!(
            detail.contains(case.at) && detail.contains(case.key),
            "{}: the reason must name `{}` and `{}`: {detail}",
            case.id,
            case.at,
            case.key
        );
        // Its binding: nothing runs, and the engine is told why.
        let reply = running
            .send_decision(&decision("limits", case.id, json!({"name": "x"})))
            .await;
        assert_eq!(reply["status"], "no_action", "{}: {reply}", case.id);
        assert!(
            reply["reason"]
                .as_str()
                .unwrap()
                .starts_with("no active version"),
            "{}: {reply}",
            case.id
        );
    }
    // Every label was counted (other tests in this process may add to them, never subtract).
    for case in &cases {
        assert!(
            rejections(case.label) >= 1.0,
            "{} not counted in playbookd_registry_rejections_total",
            case.label
        );
    }
    // The playbook within the limits beside them loads and runs.
    let reply = running
        .send_decision(&decision("limits", "allowed", json!({"name": "x"})))
        .await;
    assert_eq!(reply["status"], "accepted", "{reply}");
    let id = reply["execution_id"].as_str().unwrap().to_owned();
    assert_eq!(
        running
            .wait_terminal(&id, std::time::Duration::from_secs(20))
            .await,
        "completed"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_refused_playbook_is_counted_once_more_per_load() {
    let before = rejections("command_not_allowed");
    let running = TestDaemon::start(
        LIMITS,
        &[&playbook(
            "counted",
            "  - {id: run, action: exec, with: {command: /bin/false}, risk: low, rollback: none}\n",
        )],
        &bindings(&[("limits", "counted", "counted")]),
    )
    .await;
    assert!(rejections("command_not_allowed") >= before + 1.0);
    running.stop().await;
}
