//! `process.kill` through a real actuator against real child processes, and the actuator's own
//! refusals (raw protocol, so the daemon-side checks in front of it are bypassed).

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use playbookd::actions::ActionError;
use playbookd::config::ActionsConfig;
use serde_json::json;

use crate::actions_support::{ActuatorSetup, Fails, TestActuator, assert_fails, ctx};
use crate::helpers::{assert_contains, query_value};

async fn kill(
    actuator: &TestActuator,
    params: serde_json::Value,
) -> Result<serde_json::Value, ActionError> {
    actuator
        .run(
            &ActionsConfig::default(),
            "process.kill",
            params,
            &ctx(Duration::from_secs(5)),
        )
        .await
        .map(|output| output.summary)
}

/// A child that sleeps for 30 s: (child, pid, start time).
fn sleeping_child() -> (std::process::Child, u32, u64) {
    let child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    let start = playbookd::sys::process_start_time(pid).unwrap().unwrap();
    (child, pid, start)
}

fn signal_line(pid: u32, start_time: Option<u64>) -> String {
    json!({"signal": {"pid": pid, "signal": "KILL", "start_time": start_time, "executable": null}})
        .to_string()
}

#[tokio::test]
async fn a_spawned_child_is_killed_when_its_start_time_matches() {
    let actuator = TestActuator::start(ActuatorSetup::default());
    let (mut child, pid, start) = sleeping_child();
    let summary = kill(
        &actuator,
        json!({"pid": pid, "signal": "KILL", "start_time": start}),
    )
    .await
    .unwrap();
    assert_eq!(summary["already_gone"], false);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9));

    // Reaped: now it is gone, which is success.
    let summary = kill(&actuator, json!({"pid": pid, "start_time": start}))
        .await
        .unwrap();
    assert_eq!(summary["already_gone"], true);
}

#[tokio::test]
async fn a_pid_whose_start_time_changed_is_refused_by_the_actuator_and_left_alone() {
    let actuator = TestActuator::start(ActuatorSetup::default());
    let (mut child, pid, start) = sleeping_child();
    let reply = actuator.raw(signal_line(pid, Some(start + 1)).as_bytes());
    assert_contains(&reply, "\"refused\"");
    assert_contains(&reply, "pid reused");
    assert_fails(
        kill(
            &actuator,
            json!({"pid": pid, "signal": "KILL", "start_time": start + 1}),
        )
        .await,
        Fails::Permanent,
        &["refused by the actuator", "pid reused"],
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the child was signalled"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn the_actuator_refuses_pid_1_itself_and_the_callers_threads() {
    let actuator = TestActuator::start(ActuatorSetup::default());
    // This test process is the "daemon" here: its pid and every thread id are refused.
    let threads: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    assert!(threads.len() > 1, "expected a multi-threaded test process");
    let mut targets = vec![
        (1, "init"),
        (actuator.pid(), "the actuator"),
        (std::process::id(), "the daemon"),
    ];
    for tid in threads.iter().filter(|t| **t != std::process::id()) {
        targets.push((*tid, "a thread of the daemon"));
    }
    for (pid, expected) in targets {
        let reply = actuator.raw(signal_line(pid, None).as_bytes());
        assert!(
            reply.contains("\"refused\"") && reply.contains(expected),
            "{pid}: {reply}"
        );
    }
    assert!(
        actuator.child.id() > 0
            && std::path::Path::new(&format!("/proc/{}", actuator.pid())).exists()
    );
}

#[tokio::test]
async fn the_daemons_postgresql_backend_is_refused() {
    let actuator = TestActuator::start(ActuatorSetup::default());
    let db = crate::helpers::TestDb::new().await;
    let client = db.client().await;
    let backend: i32 = query_value(&client, "SELECT pg_backend_pid()", &[]).await;
    let pid = u32::try_from(backend).unwrap();
    assert_fails(
        kill(&actuator, json!({"pid": pid, "signal": "KILL"})).await,
        Fails::Permanent,
        &["protected user postgres"],
    );
    // The backend still answers.
    client.query_one("SELECT 1", &[]).await.unwrap();
}

#[tokio::test]
async fn a_peer_that_is_not_the_daemons_uid_is_refused() {
    let actuator = TestActuator::start(ActuatorSetup {
        daemon_user: "nobody",
        ..ActuatorSetup::default()
    });
    let mut child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    assert_fails(
        kill(&actuator, json!({"pid": child.id(), "signal": "KILL"})).await,
        Fails::Permanent,
        &["is not the daemon's uid"],
    );
    assert!(child.try_wait().unwrap().is_none());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_contains(&actuator.log_text(), "refused a peer");
}

#[tokio::test]
async fn malformed_and_unknown_requests_are_refused() {
    let actuator = TestActuator::start(ActuatorSetup::default());
    for line in [
        "not json",
        r#"{"exec":{"command":"/bin/sh","args":["-c","id"]}}"#,
        r#"{"signal":{"pid":4242,"signal":"KILL","start_time":null,"executable":null,"as_root":true}}"#,
        r#"{"signal":{"pid":"{{ subject.pid }}","signal":"KILL","start_time":null,"executable":null}}"#,
        r#"{"quarantine":{"path":"/etc/shadow","key":"../../x"}}"#,
    ] {
        let reply = actuator.raw(line.as_bytes());
        assert!(
            reply.contains("\"refused\"") && reply.contains("malformed request"),
            "{line}: {reply}"
        );
    }
    let long = vec![b'x'; 20_000];
    let reply = actuator.raw(&long);
    assert_contains(&reply, "longer than");
}

#[tokio::test]
async fn without_an_actuator_process_kill_fails_transiently_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let actions =
        playbookd::actions::Actions::with_actuator(&ActionsConfig::default(), &socket).unwrap();
    assert_fails(
        actions
            .get("process.kill")
            .unwrap()
            .execute(&json!({"pid": 4242}), &ctx(Duration::from_secs(5)))
            .await,
        Fails::Transient,
        &["actuator unavailable", "absent.sock"],
    );
}

#[tokio::test]
async fn init_the_daemon_itself_and_unknown_signals_are_refused_before_the_actuator() {
    let dir = tempfile::tempdir().unwrap();
    let actions = playbookd::actions::Actions::with_actuator(
        &ActionsConfig::default(),
        &dir.path().join("absent.sock"),
    )
    .unwrap();
    for (params, expected) in [
        (json!({"pid": 0}), "refusing"),
        (json!({"pid": 1}), "refusing"),
        (json!({"pid": std::process::id()}), "refusing"),
        (json!({"pid": 999_999, "signal": "SEGV"}), "SEGV"),
    ] {
        let error = actions
            .get("process.kill")
            .unwrap()
            .execute(&params, &ctx(Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ActionError::Permanent(m) if m.contains(expected)),
            "{params}: {error}"
        );
    }
}
