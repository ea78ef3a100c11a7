//! `process.kill` against real child processes.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use playbookd::actions::ActionError;
use playbookd::config::ActionsConfig;
use serde_json::json;

use crate::actions_support::{ctx, run};

async fn kill(params: serde_json::Value) -> Result<serde_json::Value, ActionError> {
    run(
        &ActionsConfig::default(),
        "process.kill",
        params,
        &ctx(Duration::from_secs(5)),
    )
    .await
    .map(|output| output.summary)
}

#[tokio::test]
async fn a_spawned_child_is_killed_when_its_start_time_matches() {
    let mut child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    let start = playbookd::sys::process_start_time(pid).unwrap().unwrap();
    let exe = playbookd::sys::process_executable(pid).unwrap().unwrap();
    assert!(exe.ends_with("sleep"), "{}", exe.display());
    let summary =
        kill(json!({"pid": pid, "signal": "KILL", "start_time": start, "executable": exe}))
            .await
            .unwrap();
    assert_eq!(summary["already_gone"], false);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9));

    // Reaped: now it is gone, which is success.
    let summary = kill(json!({"pid": pid, "start_time": start}))
        .await
        .unwrap();
    assert_eq!(summary["already_gone"], true);
    let summary = kill(json!({"pid": pid})).await.unwrap();
    assert_eq!(summary["already_gone"], true);
}

#[tokio::test]
async fn a_reused_pid_is_refused_and_left_alone() {
    let mut child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    let start = playbookd::sys::process_start_time(pid).unwrap().unwrap();
    let error = kill(json!({"pid": pid, "signal": "KILL", "start_time": start + 1}))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ActionError::Permanent(m) if m.contains("pid reused")),
        "{error}"
    );
    let error = kill(json!({"pid": pid, "signal": "KILL", "executable": "/usr/sbin/sshd"}))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ActionError::Permanent(m) if m.contains("pid reused")),
        "{error}"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the child was signalled"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn init_the_daemon_itself_and_unknown_signals_are_refused() {
    for pid in [0, 1, std::process::id()] {
        let error = kill(json!({"pid": pid})).await.unwrap_err();
        assert!(
            matches!(&error, ActionError::Permanent(m) if m.contains("refusing")),
            "{pid}: {error}"
        );
    }
    let error = kill(json!({"pid": 999_999, "signal": "SEGV"}))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("SEGV"), "{error}");
}
