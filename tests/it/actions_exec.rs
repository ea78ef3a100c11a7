//! `exec` against real binaries.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use playbookd::actions::{ActionError, ActionOutput};
use playbookd::config::ActionsConfig;
use serde_json::{Value, json};

use crate::actions_support::{Fails, assert_fails, run, within};
use crate::helpers::assert_contains;

fn config(commands: &[&str]) -> ActionsConfig {
    let mut config = ActionsConfig::default();
    config.exec.allowed_commands = commands.iter().map(PathBuf::from).collect();
    config
}

/// Runs `exec` with `params` under `config`, with `seconds` to finish.
async fn exec(
    config: &ActionsConfig,
    params: Value,
    seconds: u64,
) -> Result<ActionOutput, ActionError> {
    run(config, "exec", params, &within(seconds)).await
}

/// What the command printed on stdout (as summarised).
fn stdout_text(output: &ActionOutput) -> String {
    output.summary["stdout"]["text"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_command_past_its_deadline_is_killed_with_its_group() {
    let dir = tempfile::tempdir().unwrap();
    // The child runs as `nobody`: give it somewhere to write.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let pid_file = dir.path().join("grandchild.pid");
    let config = config(&["/bin/sleep", "/bin/sh"]);
    let started = Instant::now();
    let result = exec(&config, json!({"command": "/bin/sleep", "args": ["30"]}), 1).await;
    let elapsed = started.elapsed();
    assert_fails(result, Fails::Transient, &["timed out"]);
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");

    // A grandchild in the same group dies too.
    let script = format!("/bin/sleep 30 & echo $! > {}; wait", pid_file.display());
    let result = exec(
        &config,
        json!({"command": "/bin/sh", "args": ["-c", script]}),
        1,
    )
    .await;
    assert_fails(result, Fails::Transient, &[]);
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z"),
        "grandchild {pid} still alive: {state}"
    );
}

#[tokio::test]
async fn ten_megabytes_of_output_are_truncated_to_64_kib() {
    let params = json!({"command": "/usr/bin/head", "args": ["-c", "10485760", "/dev/zero"]});
    let output = exec(&config(&["/usr/bin/head"]), params, 20).await.unwrap();
    let stdout = &output.summary["stdout"];
    assert_eq!(stdout["bytes"], 10_485_760);
    assert_eq!(stdout["truncated"], true);
    assert_eq!(stdout["text"].as_str().unwrap().len(), 64 * 1024);
}

#[tokio::test]
async fn the_environment_is_scrubbed_to_path_and_playbookd_variables() {
    let config = config(&["/usr/bin/env"]);
    let ctx = within(5);
    let output = run(&config, "exec", json!({"command": "/usr/bin/env"}), &ctx)
        .await
        .unwrap();
    let text = output.summary["stdout"]["text"].as_str().unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    let key = format!("PLAYBOOKD_IDEMPOTENCY_KEY={}", ctx.idempotency_key_hex());
    let execution = format!("PLAYBOOKD_EXECUTION_ID={}", ctx.execution_id);
    let mut expected = vec![
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        execution.as_str(),
        key.as_str(),
        "PLAYBOOKD_STEP_ID=step-1",
    ];
    expected.sort_unstable();
    assert_eq!(lines, expected);
}

#[tokio::test]
async fn each_argument_stays_one_argument() {
    let params = json!({"command": "/usr/bin/printf", "args": ["%s|", "a b", "$(id)", "c;d"]});
    let output = exec(&config(&["/usr/bin/printf"]), params, 5)
        .await
        .unwrap();
    assert_eq!(output.summary["stdout"]["text"], "a b|$(id)|c;d|");
    assert_eq!(output.summary["exit_code"], 0);
}

#[tokio::test]
async fn a_command_not_allowlisted_is_refused() {
    let result = exec(
        &config(&["/bin/sleep"]),
        json!({"command": "/usr/bin/id"}),
        5,
    )
    .await;
    assert_fails(result, Fails::Permanent, &["allowed_commands"]);
}

#[tokio::test]
async fn exit_75_is_transient_and_other_failures_permanent() {
    let config = config(&["/bin/sh"]);
    for (script, class, says) in [
        (
            "echo busy >&2; exit 75",
            Fails::Transient,
            &["75", "busy"][..],
        ),
        ("exit 3", Fails::Permanent, &["status 3"][..]),
    ] {
        let result = exec(
            &config,
            json!({"command": "/bin/sh", "args": ["-c", script]}),
            5,
        )
        .await;
        assert_fails(result, class, says);
    }
}

#[tokio::test]
async fn cancel_kills_the_command() {
    let config = config(&["/bin/sleep"]);
    let ctx = within(30);
    let cancel = ctx.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    });
    let started = Instant::now();
    let result = run(
        &config,
        "exec",
        json!({"command": "/bin/sleep", "args": ["30"]}),
        &ctx,
    )
    .await;
    assert_fails(result, Fails::Transient, &["cancelled"]);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_child_runs_as_run_as_with_no_capability_and_no_new_privileges() {
    let params = json!({"command": "/bin/grep", "args": ["-E", "^(Uid|Gid|Groups|Cap[A-Za-z]+|NoNewPrivs):", "/proc/self/status"]});
    let text = stdout_text(&exec(&config(&["/bin/grep"]), params, 5).await.unwrap());
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(field("Uid"), vec![nobody.uid.to_string(); 4], "{text}");
    assert!(field("Groups").is_empty(), "{text}");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(set), vec!["0000000000000000"], "{set} in {text}");
    }
    assert_eq!(field("NoNewPrivs"), vec!["1"], "{text}");
}

#[tokio::test]
async fn run_as_the_daemons_own_uid_is_refused() {
    let mut config = config(&["/bin/true"]);
    config.exec.run_as = "root".parse().unwrap();
    let result = exec(&config, json!({"command": "/bin/true"}), 5).await;
    assert_fails(result, Fails::Permanent, &["daemon's own uid"]);
}

/// A configuration allowing `commands`, run through an exec runner ([`accept_once`]) on a
/// socket in a directory of its own: (directory, configuration, the runner's thread).
fn through_runner(
    commands: &[&str],
    unprivileged: bool,
) -> (
    tempfile::TempDir,
    ActionsConfig,
    std::thread::JoinHandle<std::process::Output>,
) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("exec.sock");
    let runner = accept_once(&socket, unprivileged);
    let mut config = config(commands);
    config.exec.runner_socket = Some(socket);
    (dir, config, runner)
}

/// Stands in for `playbookd-exec.socket` (`Accept=yes`): accepts one connection and starts
/// `playbookd exec-runner` on it, through `setpriv` as systemd would start the runner unit
/// (as `nobody`, no capability, `no_new_privs`), or as it is when `unprivileged` is false.
fn accept_once(
    socket: &std::path::Path,
    unprivileged: bool,
) -> std::thread::JoinHandle<std::process::Output> {
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut command = if unprivileged {
            crate::actions_support::as_nobody_with_nothing(&crate::helpers::binary())
        } else {
            std::process::Command::new(crate::helpers::binary())
        };
        let input = std::os::fd::OwnedFd::from(stream.try_clone().unwrap());
        command
            .args(["exec-runner", "--daemon-user", "root"])
            .stdin(std::process::Stdio::from(input))
            .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                stream,
            )))
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap()
    })
}

#[tokio::test]
async fn through_the_exec_runner_a_child_runs_as_the_runners_user_with_nothing() {
    let (_dir, config, runner) = through_runner(&["/bin/grep"], true);
    let params = json!({"command": "/bin/grep", "args": ["-E", "^(Uid|Cap[A-Za-z]+|NoNewPrivs):", "/proc/self/status"]});
    let output = exec(&config, params, 10).await.unwrap();
    let finished = runner.join().unwrap();
    assert!(finished.status.success(), "{finished:?}");
    let text = stdout_text(&output);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    assert_contains(&text, &format!("Uid:\t{0}\t{0}", nobody.uid));
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            text.contains(&format!("{set}:\t0000000000000000")),
            "{set}: {text}"
        );
    }
    assert_contains(&text, "NoNewPrivs:\t1");
    assert_eq!(output.summary["exit_code"], 0);
}

#[tokio::test]
async fn an_exec_runner_holding_capabilities_refuses_to_run_anything() {
    let (_dir, config, runner) = through_runner(&["/bin/true"], false);
    let result = exec(&config, json!({"command": "/bin/true"}), 10).await;
    assert_fails(result, Fails::Transient, &[]);
    let finished = runner.join().unwrap();
    assert_eq!(finished.status.code(), Some(78), "{finished:?}");
    let stderr = String::from_utf8_lossy(&finished.stderr);
    assert_contains(&stderr, "no capability");
}

#[tokio::test]
async fn without_the_exec_runner_an_exec_step_fails_transiently_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&["/bin/true"]);
    config.exec.runner_socket = Some(dir.path().join("absent.sock"));
    let result = exec(&config, json!({"command": "/bin/true"}), 5).await;
    assert_fails(
        result,
        Fails::Transient,
        &["exec runner unavailable", "absent.sock"],
    );
}
