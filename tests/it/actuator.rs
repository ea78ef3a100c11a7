//! The daemon holds no privilege: run with no capability at all (and as `nobody`), it kills a
//! root-owned process and blocks an address only through the actuator; with the actuator
//! stopped the same playbook rolls back with a clear reason and the daemon keeps serving. Its
//! `exec` children get no capability, cannot read the node key and cannot send a decision.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::actions_net::NetNs;
use crate::actions_support::{as_nobody_with_nothing, is_root};
use crate::harness::{TestDaemon, accepted_id, bindings, decision, send_json, wait_run_terminal};
use crate::helpers::{
    ChildDaemon, DaemonDir, TestDb, assert_contains, binary, query_pairs, query_value,
};

const CONTAIN: &str = r#"
id: contain-no-caps
version: 1
name: Kill a process and block an address, through the actuator
owners: {technical: a@example.org, operational: b@example.org}
inputs:
  pid: {type: integer}
  start_time: {type: integer}
  address: {type: ip}
steps:
  - id: kill
    action: process.kill
    with: {pid: "{{ subject.pid }}", start_time: "{{ subject.start_time }}", signal: KILL}
    risk: low
    timeout: 5s
    retry: {attempts: 2, backoff: 100ms}
    rollback: none
  - id: block
    action: net.block_ip
    with: {address: "{{ subject.address }}", timeout: 10m}
    risk: low
    timeout: 10s
    retry: {attempts: 2, backoff: 100ms}
    rollback: {action: net.unblock_ip, with: {address: "{{ subject.address }}"}}
"#;

#[tokio::test]
async fn a_daemon_with_no_capability_acts_through_the_actuator_and_rolls_back_without_it() {
    assert!(
        is_root(),
        "this test needs root: it drops the daemon's privileges and makes a network namespace"
    );
    let ns = NetNs::create();
    let db = TestDb::new().await;
    let dir = DaemonDir::new();
    dir.write_signed("playbooks/contain-no-caps.yaml", CONTAIN, true);
    dir.write_bindings(&bindings(&[("contain", "now", "contain-no-caps")]));
    let nft: Vec<String> = ns.nft_command().iter().map(|a| format!("{a:?}")).collect();
    let config = dir.write_config(
        &db,
        "node-no-caps",
        &format!(
            "[intake]\nallowed_uids = [0]\n[actions.net]\nnft_command = [{}]\n\
             [actuator]\nsocket = {:?}\ndaemon_user = \"nobody\"\n",
            nft.join(", "),
            dir.path("run/actuator.sock").display().to_string()
        ),
    );
    // The daemon runs as nobody: it may read its configuration and write its own files only.
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    for (path, mode) in [
        ("", 0o755),
        ("run", 0o755),
        ("playbooks", 0o755),
        ("trusted-keys", 0o755),
    ] {
        std::fs::set_permissions(dir.path(path), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    for path in ["", "run"] {
        nix::unistd::chown(&dir.path(path), Some(nobody.uid), None).unwrap();
    }
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut actuator = start_actuator(&config, &dir);
    let daemon_child = start(
        &binary(),
        &["serve"],
        &config,
        &dir.path("daemon.log"),
        true,
    );
    let mut daemon = ChildDaemon {
        child: daemon_child,
        log: dir.path("daemon.log"),
    };
    daemon.wait_for_log("playbookd ready", Duration::from_secs(30));
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id())).unwrap();
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            status
                .lines()
                .any(|l| l == format!("{set}:\t0000000000000000")),
            "{set} of the daemon is not empty:\n{status}"
        );
    }
    assert_contains(&status, &format!("Uid:\t{0}\t{0}", nobody.uid));
    assert!(
        ns.reachable(),
        "the namespace is not reachable before the block"
    );

    // 1. With the actuator: the root-owned victim is killed and the address blocked.
    let mut victim = Command::new("/bin/sleep").arg("60").spawn().unwrap();
    let execution = send(&dir, &victim, &ns).await;
    assert_eq!(
        wait_terminal(&db, &execution).await,
        "completed",
        "{:?}",
        step_errors(&db, &execution).await
    );
    assert_eq!(
        victim.wait().unwrap().signal(),
        Some(9),
        "the victim was not killed"
    );
    assert!(
        !ns.reachable(),
        "packets from the blocked address still arrive"
    );
    assert_contains(&ns.ruleset(), &ns.host.to_string());

    // 2. Without it: the same playbook rolls back, saying why; the victim lives.
    actuator.kill().unwrap();
    actuator.wait().unwrap();
    let mut victim = Command::new("/bin/sleep").arg("60").spawn().unwrap();
    let execution = send(&dir, &victim, &ns).await;
    assert_eq!(wait_terminal(&db, &execution).await, "rolled_back");
    let error = kill_error(&db, &execution).await;
    assert_contains(&error, "actuator unavailable");
    assert_contains(&error, "actuator.sock");
    assert!(
        victim.try_wait().unwrap().is_none(),
        "the victim was signalled without the actuator"
    );
    victim.kill().unwrap();
    victim.wait().unwrap();
    // Nothing else broke: the daemon still serves.
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "{}",
        daemon.log_text()
    );
    let mut other = Command::new("/bin/sleep").arg("60").spawn().unwrap();
    let _ = send(&dir, &other, &ns).await;
    other.kill().unwrap();
    other.wait().unwrap();
}

#[tokio::test]
async fn process_kill_of_a_daemon_thread_the_actuator_or_its_database_backend_is_refused_and_the_daemon_lives()
 {
    let db = TestDb::new().await;
    let dir = DaemonDir::new();
    let actuator_config = format!(
        "[intake]\nallowed_uids = [0]\n[actuator]\nsocket = {:?}\ndaemon_user = \"root\"\n",
        dir.path("run/actuator.sock").display().to_string()
    );
    let config = dir.write_config(&db, "node-protect", &actuator_config);
    dir.write_signed("playbooks/contain-no-caps.yaml", CONTAIN, true);
    dir.write_bindings(&bindings(&[("contain", "now", "contain-no-caps")]));
    let mut actuator = start_actuator(&config, &dir);
    let mut daemon = ChildDaemon::serve(&config);
    let daemon_pid = daemon.child.id();
    let thread = std::fs::read_dir(format!("/proc/{daemon_pid}/task"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .parse::<u32>()
                .unwrap()
        })
        .find(|tid| *tid != daemon_pid)
        .expect("a thread of the daemon");
    let backend: i32 = db
        .client()
        .await
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'playbookd' LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let backend = u32::try_from(backend).unwrap();
    for (pid, expected) in [
        (thread, "a thread of the daemon"),
        (actuator.id(), "the actuator"),
        (backend, "protected user postgres"),
    ] {
        let start_time = playbookd::sys::process_start_time(pid).unwrap().unwrap();
        let d = decision(
            "contain",
            "now",
            json!({"pid": pid, "start_time": start_time, "address": "203.0.113.7"}),
        );
        let execution = send_raw(&dir, &d).await;
        assert_eq!(wait_terminal(&db, &execution).await, "rolled_back");
        let error = kill_error(&db, &execution).await;
        assert!(
            error.contains("refused by the actuator") && error.contains(expected),
            "{pid}: {error}"
        );
    }
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon died:\n{}",
        daemon.log_text()
    );
    assert!(actuator.try_wait().unwrap().is_none(), "the actuator died");
    actuator.kill().unwrap();
    actuator.wait().unwrap();
}

#[tokio::test]
async fn an_exec_child_gets_no_capability_no_node_key_and_cannot_send_a_decision() {
    // World-readable script, outside the daemon's private directory.
    let scripts = crate::helpers::tempdir_with_mode("pbd-probe-", 0o755);
    let probe = scripts.path().join("probe");
    let playbook = format!(
        "id: probe\nversion: 1\nname: Probe what a child can do\n\
         owners: {{technical: a@example.org, operational: b@example.org}}\nsteps:\n\
         \x20 - {{id: probe, action: exec, with: {{command: {}}}, risk: low, rollback: none}}\n",
        probe.display()
    );
    let running = TestDaemon::start(
        &format!(
            "[intake]\nallowed_uids = [0]\n[actions.exec]\nallowed_commands = [{:?}]\nrun_as = \"nobody\"\n",
            probe.display().to_string()
        ),
        &[&playbook],
        &bindings(&[("probe", "run", "probe")]),
    )
    .await;
    let key = running.dir.path("node.key");
    let socket = running.socket.clone();
    std::fs::write(
        &probe,
        format!(
            "#!/bin/sh\ngrep -E '^(Uid|Cap[A-Za-z]+|NoNewPrivs):' /proc/self/status\n\
             if cat {key} >/dev/null 2>&1; then echo KEY-READ; else echo KEY-REFUSED; fi\n\
             if python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b\"{{}}\\n\"); print(s.recv(4096).decode())' {socket} 2>/dev/null; \
             then echo DECISION-SENT; else echo DECISION-REFUSED; fi\n",
            key = key.display(),
            socket = socket.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(key.exists(), "the daemon has a node key");
    let reply = running
        .send_decision(&decision("probe", "run", json!({})))
        .await;
    let execution = reply["execution_id"].as_str().unwrap().to_owned();
    assert_eq!(
        running
            .wait_terminal(&execution, Duration::from_secs(20))
            .await,
        "completed"
    );
    let output: serde_json::Value = query_value(
        &running.db.client().await,
        "SELECT output FROM playbook_step_runs WHERE execution_id = $1::text::uuid",
        &[&execution],
    )
    .await;
    let text = output["stdout"]["text"].as_str().unwrap().to_owned();
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            text.lines()
                .any(|l| l == format!("{set}:\t0000000000000000")),
            "{set} not empty: {text}"
        );
    }
    assert_contains(&text, "NoNewPrivs:\t1");
    assert_contains(&text, "KEY-REFUSED");
    assert_contains(&text, "DECISION-REFUSED");
    running.stop().await;
}

/// Starts `playbookd VERB --config CONFIG`, as root or, with `drop`, as nobody with no
/// capability at all (setpriv).
/// `playbookd actuator --config CONFIG` (as this test's user), logging to `actuator.log` in
/// `dir`, once it is ready.
fn start_actuator(config: &Path, dir: &DaemonDir) -> Child {
    let log = dir.path("actuator.log");
    let mut actuator = start(&binary(), &["actuator"], config, &log, false);
    wait_for_log(&mut actuator, &log, "playbookd actuator ready");
    actuator
}

fn start(binary: &Path, verb: &[&str], config: &Path, log: &Path, drop: bool) -> Child {
    let log = std::fs::File::create(log).unwrap();
    let mut command = if drop {
        as_nobody_with_nothing(binary)
    } else {
        Command::new(binary)
    };
    command
        .args(verb)
        .arg("--config")
        .arg(config)
        .env_remove("PLAYBOOKD_DATABASE_URL")
        .env_remove("NOTIFY_SOCKET")
        .env("PLAYBOOKD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn")
}

fn wait_for_log(child: &mut Child, log: &Path, needle: &str) {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("exited ({status}) before `{needle}`:\n{text}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no `{needle}`:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn send(dir: &DaemonDir, victim: &Child, ns: &NetNs) -> uuid::Uuid {
    let pid = victim.id();
    let start_time = playbookd::sys::process_start_time(pid).unwrap().unwrap();
    let d = decision(
        "contain",
        "now",
        json!({"pid": pid, "start_time": start_time, "address": ns.host.to_string()}),
    );
    send_raw(dir, &d).await
}

/// Sends `decision` to the daemon in `dir`; it must be accepted.
async fn send_raw(dir: &DaemonDir, decision: &serde_json::Value) -> uuid::Uuid {
    let reply = send_json(&dir.path("run/decisions.sock"), decision).await;
    accepted_id(&reply).parse().unwrap()
}

async fn wait_terminal(db: &TestDb, execution: &uuid::Uuid) -> String {
    wait_run_terminal(&db.client().await, execution, Duration::from_secs(60)).await
}

/// Why the `kill` step of `execution` failed.
async fn kill_error(db: &TestDb, execution: &uuid::Uuid) -> String {
    step_errors(db, execution)
        .await
        .into_iter()
        .find(|(step, _)| step == "kill")
        .and_then(|(_, error)| error)
        .unwrap_or_else(|| panic!("no error recorded for step kill of {execution}"))
}

async fn step_errors(db: &TestDb, execution: &uuid::Uuid) -> Vec<(String, Option<String>)> {
    query_pairs(
        &db.client().await,
        "SELECT step_id, error FROM playbook_step_runs WHERE execution_id = $1 ORDER BY step_index",
        &[execution],
    )
    .await
}

#[test]
fn an_actuator_configured_with_an_unknown_protected_user_refuses_to_start_with_78() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("playbookd.toml");
    std::fs::write(
        &config,
        format!(
            "[actuator]\nsocket = {:?}\ndaemon_user = \"root\"\nprotected_users = [\"pbd-no-such-user\"]\n",
            dir.path().join("actuator.sock").display().to_string()
        ),
    )
    .unwrap();
    let output = Command::new(binary())
        .args(["actuator", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert_contains(&stderr, "actuator.protected_users");
    assert_contains(&stderr, "pbd-no-such-user");
}
