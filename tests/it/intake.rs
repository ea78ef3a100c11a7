//! Decision intake over the real socket: every refusal path, replay under concurrency and
//! across restarts, and service under a barrage of garbage.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::harness::{NOOP_3, TestDaemon, bindings, decision};
use crate::helpers::{count_events, insert_unnotified_fleet_halt, query_value};

const WITH_INPUTS: &str = r#"
id: kill-pid
version: 2
name: Needs a pid
owners: {technical: a@example.org, operational: b@example.org}
inputs:
  pid: {type: integer}
steps:
  - {id: one, action: noop, rollback: none}
"#;

/// A cooldown is per host (and address, when given); nothing else of the subject counts.
const COOL_HOST: &str = r#"
id: cool-host
version: 1
name: One run per host and cooldown
owners: {technical: a@example.org, operational: b@example.org}
inputs:
  host: {type: string}
  address: {type: ip, required: false}
steps:
  - {id: one, action: noop, rollback: none}
"#;

fn standard_bindings() -> String {
    let mut text = bindings(&[
        ("bench.noop", "run", "noop-3"),
        ("needs.pid", "run", "kill-pid"),
        ("gone", "run", "not-loaded"),
    ]);
    text.push_str("  - {policy: cool, outcome: run, playbook: cool-host, cooldown_seconds: 60}\n");
    text
}

async fn start() -> TestDaemon {
    TestDaemon::start("", &[NOOP_3, WITH_INPUTS, COOL_HOST], &standard_bindings()).await
}

/// A playbook whose one step holds its executor slot for `seconds`.
fn naps(seconds: u32) -> String {
    format!(
        r#"
id: naps
version: 1
name: A step that holds the only executor slot
owners: {{technical: a@example.org, operational: b@example.org}}
steps:
  - {{id: nap, action: exec, with: {{command: /bin/sleep, args: ["{seconds}"]}}, risk: low, timeout: 30s, rollback: none}}
"#
    )
}

fn reason(reply: &serde_json::Value) -> &str {
    reply["reason"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn each_malformed_message_gets_its_own_reason() {
    let daemon = start().await;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "malformed JSON"),
        (vec![0xff, 0xfe, 0x00, 0x01], "not valid UTF-8"),
        (b"[1,2,3]".to_vec(), "invalid decision"),
        (
            json!({"nonce": "x"}).to_string().into_bytes(),
            "missing field",
        ),
        (
            {
                let mut d = decision("bench.noop", "run", json!({}));
                d["issued_at"] = json!("last tuesday");
                d.to_string().into_bytes()
            },
            "RFC 3339",
        ),
        (
            {
                let mut d = decision("bench.noop", "run", json!({}));
                d["org_id"] = json!(42);
                d.to_string().into_bytes()
            },
            "`org_id`",
        ),
        (
            {
                let mut d = decision("bench.noop", "run", json!({}));
                d["nonce"] = json!("abc");
                d.to_string().into_bytes()
            },
            "nonce",
        ),
    ];
    for (line, expected) in cases {
        let reply = daemon.send(&line).await;
        assert_eq!(reply["status"], "rejected", "{reply}");
        assert!(reason(&reply).contains(expected), "{expected}: {reply}");
    }
    let big = vec![b'a'; 1024 * 1024];
    let reply = daemon.send(&big).await;
    assert!(reason(&reply).contains("longer than"), "{reply}");
    daemon.stop().await;
}

#[tokio::test]
async fn stale_and_future_decisions_are_rejected() {
    let daemon = start().await;
    for offset in [-301i64, 301] {
        let mut d = decision("bench.noop", "run", json!({}));
        let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(offset);
        d["issued_at"] = json!(
            at.format(&time::format_description::well_known::Rfc3339)
                .unwrap()
        );
        let reply = daemon.send_decision(&d).await;
        assert!(reason(&reply).starts_with("stale"), "{reply}");
    }
    daemon.stop().await;
}

#[tokio::test]
async fn bindings_decide_what_runs() {
    let daemon = start().await;
    let reply = daemon
        .send_decision(&decision("unknown.policy", "run", json!({})))
        .await;
    assert_eq!(reply["status"], "no_action");
    assert!(reason(&reply).starts_with("no binding"), "{reply}");

    let reply = daemon
        .send_decision(&decision("gone", "run", json!({})))
        .await;
    assert_eq!(reply["status"], "no_action");
    assert!(
        reason(&reply).contains("no active version of playbook `not-loaded`"),
        "{reply}"
    );

    let mut d = decision("bench.noop", "run", json!({}));
    d["playbook"] = json!("kill-pid");
    let reply = daemon.send_decision(&d).await;
    assert!(reason(&reply).starts_with("binding mismatch"), "{reply}");

    let reply = daemon
        .send_decision(&decision(
            "needs.pid",
            "run",
            json!({"pid": "not a number"}),
        ))
        .await;
    assert_eq!(reply["status"], "rejected");
    assert!(reason(&reply).contains("subject.pid"), "{reply}");
    let reply = daemon
        .send_decision(&decision("needs.pid", "run", json!({})))
        .await;
    assert!(reason(&reply).contains("subject.pid"), "{reply}");

    let reply = daemon
        .send_decision(&decision("needs.pid", "run", json!({"pid": 4242})))
        .await;
    assert_eq!(reply["status"], "accepted", "{reply}");
    assert_eq!(reply["playbook"], "kill-pid@2");

    let client = daemon.db.client().await;
    let refusals = count_events(&client, "decision.received").await;
    assert_eq!(refusals, 5, "every refusal is audited");
    daemon.stop().await;
}

#[tokio::test]
async fn a_cooldown_suppresses_repeats_for_the_same_subject() {
    let daemon = start().await;
    let first = daemon
        .send_decision(&decision("cool", "run", json!({"host": "a"})))
        .await;
    assert_eq!(first["status"], "accepted", "{first}");
    let again = daemon
        .send_decision(&decision("cool", "run", json!({"host": "a"})))
        .await;
    assert_eq!(again["status"], "no_action");
    assert!(reason(&again).starts_with("suppressed"), "{again}");
    let other = daemon
        .send_decision(&decision("cool", "run", json!({"host": "b"})))
        .await;
    assert_eq!(other["status"], "accepted", "{other}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_nonce_is_accepted_once_even_across_a_restart() {
    let daemon = start().await;
    let d = decision("bench.noop", "run", json!({}));
    assert_eq!(daemon.send_decision(&d).await["status"], "accepted");
    let replay = daemon.send_decision(&d).await;
    assert!(reason(&replay).starts_with("replay"), "{replay}");
    let daemon = daemon.restart().await;
    let replay = daemon.send_decision(&d).await;
    assert!(reason(&replay).starts_with("replay"), "{replay}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_thousand_concurrent_sends_of_one_nonce_accept_exactly_one() {
    let daemon = TestDaemon::start(
        "[intake]\nmax_accepted_per_second = 100000\n",
        &[NOOP_3],
        &standard_bindings(),
    )
    .await;
    let line = format!("{}\n", decision("bench.noop", "run", json!({})));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let socket = daemon.socket.clone();
            let line = line.clone();
            tokio::spawn(async move {
                let stream = UnixStream::connect(&socket).await.unwrap();
                let (read, mut write) = stream.into_split();
                write.write_all(line.repeat(10).as_bytes()).await.unwrap();
                let mut lines = BufReader::new(read).lines();
                let mut replies = Vec::new();
                for _ in 0..10 {
                    let reply = lines.next_line().await.unwrap().unwrap();
                    replies.push(serde_json::from_str::<serde_json::Value>(&reply).unwrap());
                }
                replies
            })
        })
        .collect();
    let mut accepted = 0;
    let mut replays = 0;
    for task in tasks {
        for reply in task.await.unwrap() {
            match reply["status"].as_str().unwrap() {
                "accepted" => accepted += 1,
                _ if reason(&reply).starts_with("replay") => replays += 1,
                _ => panic!("unexpected reply {reply}"),
            }
        }
    }
    assert_eq!((accepted, replays), (1, 999));
    daemon.stop().await;
}

#[tokio::test]
async fn after_a_barrage_of_garbage_a_valid_decision_is_answered_within_a_second() {
    let daemon = start().await;
    let mut half_open = Vec::new();
    for _ in 0..200 {
        let mut stream = UnixStream::connect(&daemon.socket).await.unwrap();
        stream.write_all(b"{\"decision_id\": \"half").await.unwrap();
        half_open.push(stream);
    }
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20 {
        let mut stream = UnixStream::connect(&daemon.socket).await.unwrap();
        let garbage: Vec<u8> = (0..4096)
            .map(|_| {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                rng_state.to_le_bytes()[0]
            })
            .collect();
        let _ = stream.write_all(&garbage).await;
        let _ = stream.write_all(b"\n").await;
    }
    let mut big = UnixStream::connect(&daemon.socket).await.unwrap();
    let _ = big.write_all(&vec![b'x'; 1024 * 1024]).await;
    let started = Instant::now();
    let reply = daemon
        .send_decision(&decision("bench.noop", "run", json!({})))
        .await;
    assert_eq!(reply["status"], "accepted", "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    drop(half_open);
    daemon.stop().await;
}

#[tokio::test]
async fn a_peer_with_a_disallowed_uid_is_refused_and_audited() {
    if !crate::actions_support::root_for("connecting as another uid") {
        return;
    }
    let daemon = start().await;
    std::fs::set_permissions(
        daemon.dir.path("."),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(
        daemon.dir.path("run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(
        &daemon.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let socket = daemon.socket.clone();
    let reply = tokio::task::spawn_blocking(move || {
        use std::os::unix::process::CommandExt;
        let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n\
                      s.sendall(b'{}\\n')\nprint(s.makefile().readline(), end='')";
        std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&socket)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&reply.stdout);
    let reply: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?} {e}"));
    assert_eq!(reply["status"], "rejected");
    assert!(reason(&reply).contains("uid 65534"), "{reply}");
    // The refusal is recorded beside the connection (which never held a slot): wait for it.
    let client = daemon.db.client().await;
    let started = Instant::now();
    loop {
        let refused: i64 = client
            .query_one(
                "SELECT count(*) FROM playbook_audit_log WHERE event_type = 'decision.peer_refused' \
                 AND event_data->>'actor' = 'uid:65534'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if refused == 1 {
            break;
        }
        assert_eq!(refused, 0);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refusal not recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.stop().await;
}

#[tokio::test]
async fn the_daemons_own_uid_may_send_decisions_only_when_allowed() {
    // The test process is the daemon (same uid). With allowed_uids empty, it is refused.
    let daemon = TestDaemon::start(
        "[intake]\nallowed_uids = []\n",
        &[NOOP_3],
        &standard_bindings(),
    )
    .await;
    let uid = nix::unistd::geteuid().as_raw();
    let reply = daemon
        .send_decision(&decision("bench.noop", "run", json!({})))
        .await;
    assert_eq!(reply["status"], "rejected", "{reply}");
    assert!(
        reason(&reply).contains(&format!("peer uid {uid}"))
            && reason(&reply).contains("intake.allowed_uids"),
        "{reply}"
    );
    daemon.stop().await;
    // Listed, it is served like any policy engine.
    let daemon = TestDaemon::start(
        &format!("[intake]\nallowed_uids = [{uid}]\n"),
        &[NOOP_3],
        &standard_bindings(),
    )
    .await;
    daemon
        .accepted(&decision("bench.noop", "run", json!({})))
        .await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_blank_line_gets_a_malformed_reply_and_the_connection_keeps_serving() {
    let daemon = start().await;
    let stream = UnixStream::connect(&daemon.socket).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"\n  \r\n").await.unwrap();
    for _ in 0..2 {
        let reply: serde_json::Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(reply["status"], "rejected", "{reply}");
        assert!(
            reason(&reply).starts_with("malformed: empty line"),
            "{reply}"
        );
    }
    let line = format!("{}\n", decision("bench.noop", "run", json!({})));
    write.write_all(line.as_bytes()).await.unwrap();
    let reply: serde_json::Value =
        serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(reply["status"], "accepted", "{reply}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_resend_after_a_lost_reply_is_a_replay_naming_the_first_execution() {
    let daemon = start().await;
    let d = decision("bench.noop", "run", json!({}));
    // The engine sends, and its connection dies before the reply arrives.
    {
        let mut stream = UnixStream::connect(&daemon.socket).await.unwrap();
        stream.write_all(format!("{d}\n").as_bytes()).await.unwrap();
    }
    // The first attempt is committed (its reply was lost): a resend racing it could come first.
    let client = daemon.db.client().await;
    let start = std::time::Instant::now();
    while client
        .query_one("SELECT count(*) FROM playbook_nonces", &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "first attempt never recorded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // It resends the same line: told it is a replay, and which execution the first started.
    let replay = daemon.send_decision(&d).await;
    assert_eq!(replay["status"], "rejected", "{replay}");
    assert!(reason(&replay).starts_with("replay"), "{replay}");
    let first = replay["execution_id"]
        .as_str()
        .expect("execution_id in the reply");
    let ids: Vec<uuid::Uuid> = client
        .query(
            "SELECT execution_id FROM playbook_executions WHERE policy_decision_id = $1",
            &[&d["decision_id"].as_str().unwrap()],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(ids, vec![first.parse::<uuid::Uuid>().unwrap()]);
    // Also after a restart; and a different decision reusing the nonce learns nothing.
    let daemon = daemon.restart().await;
    let again = daemon.send_decision(&d).await;
    assert_eq!(again["execution_id"].as_str(), Some(first), "{again}");
    let mut other = decision("bench.noop", "run", json!({}));
    other["nonce"] = d["nonce"].clone();
    let reused = daemon.send_decision(&other).await;
    assert!(reason(&reused).starts_with("replay"), "{reused}");
    assert!(reused.get("execution_id").is_none(), "{reused}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_replay_during_a_cooldown_is_a_replay_not_suppressed() {
    let daemon = start().await;
    let d = decision("cool", "run", json!({"host": "a"}));
    let first = daemon.send_decision(&d).await;
    assert_eq!(first["status"], "accepted", "{first}");
    let replay = daemon.send_decision(&d).await;
    assert_eq!(replay["status"], "rejected", "{replay}");
    assert!(reason(&replay).starts_with("replay"), "{replay}");
    assert_eq!(replay["execution_id"], first["execution_id"]);
    // A new decision for the same subject is what the cooldown holds back.
    let fresh = daemon
        .send_decision(&decision("cool", "run", json!({"host": "a"})))
        .await;
    assert!(reason(&fresh).starts_with("suppressed"), "{fresh}");
    daemon.stop().await;
}

/// The admitting transaction reads the nonce's first use itself (no lookup before it): a
/// replay must still be told so, and which execution, while a SAFE-HALT refuses everything
/// new, whether the halt is known only to the database (refused inside that transaction) or
/// also in memory (refused before it).
#[tokio::test]
async fn a_replay_during_a_safe_halt_is_a_replay_naming_the_first_execution() {
    let daemon = start().await;
    let d = decision("bench.noop", "run", json!({}));
    let first = daemon.send_decision(&d).await;
    assert_eq!(first["status"], "accepted", "{first}");
    let client = daemon.db.client().await;
    // Known only in the database: no notification reaches the daemon.
    insert_unnotified_fleet_halt(&client, "fleet halt for the test").await;
    let replay = daemon.send_decision(&d).await;
    assert!(reason(&replay).starts_with("replay"), "{replay}");
    assert_eq!(replay["execution_id"], first["execution_id"], "{replay}");
    let fresh = daemon
        .send_decision(&decision("bench.noop", "run", json!({})))
        .await;
    assert!(reason(&fresh).starts_with("safe_halt"), "{fresh}");
    // Again, now that the refused admission has told the daemon of the halt (refused before
    // the admitting transaction).
    let again = daemon.send_decision(&d).await;
    assert!(reason(&again).starts_with("replay"), "{again}");
    assert_eq!(again["execution_id"], first["execution_id"], "{again}");
    let runs: i64 = query_value(&client, "SELECT count(*) FROM playbook_executions", &[]).await;
    assert_eq!(runs, 1, "nothing new was admitted during the halt");
    // Each refusal is recorded as one `decision.received`, and none of the refused runs' own
    // records (sent behind their admission) was written: only the first run's.
    assert_eq!(count_events(&client, "decision.received").await, 3);
    assert_eq!(count_events(&client, "decision.accepted").await, 1);
    assert_eq!(count_events(&client, "execution.started").await, 1);
    daemon.stop().await;
}

#[tokio::test]
async fn a_nonce_written_another_way_is_still_a_replay() {
    use base64::Engine;
    let daemon = start().await;
    let d = decision("bench.noop", "run", json!({}));
    let first = daemon.send_decision(&d).await;
    assert_eq!(first["status"], "accepted", "{first}");
    let nonce = d["nonce"].as_str().unwrap();
    let bytes = hex::decode(nonce).unwrap();
    for variant in [
        nonce.to_uppercase(),
        base64::engine::general_purpose::STANDARD.encode(&bytes),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes),
    ] {
        let mut resent = d.clone();
        resent["nonce"] = json!(variant);
        let reply = daemon.send_decision(&resent).await;
        assert!(reason(&reply).starts_with("replay"), "{variant}: {reply}");
        assert_eq!(reply["execution_id"], first["execution_id"], "{variant}");
    }
    // What is stored under the UNIQUE constraint is the canonical form.
    let client = daemon.db.client().await;
    let stored: String = query_value(&client, "SELECT nonce FROM playbook_nonces", &[]).await;
    assert_eq!(stored, nonce.to_lowercase());
    daemon.stop().await;
}

#[tokio::test]
async fn the_cooldown_holds_when_extra_subject_keys_are_added() {
    let daemon = start().await;
    let first = daemon
        .send_decision(&decision(
            "cool",
            "run",
            json!({"host": "a", "note": "first"}),
        ))
        .await;
    assert_eq!(first["status"], "accepted", "{first}");
    // Undeclared keys are reported, and not stored.
    assert_eq!(first["ignored_subject_keys"], json!(["note"]), "{first}");
    let client = daemon.db.client().await;
    let id: uuid::Uuid = first["execution_id"].as_str().unwrap().parse().unwrap();
    let stored: serde_json::Value = query_value(
        &client,
        "SELECT subject FROM playbook_executions WHERE execution_id = $1",
        &[&id],
    )
    .await;
    assert_eq!(stored, json!({"host": "a"}));
    // Adding keys the playbook does not declare does not make another subject.
    for extra in [
        json!({"host": "a", "event_ts": "2026-11-25T10:00:00Z"}),
        json!({"host": "a", "nonce2": 1, "\u{0}": true}),
    ] {
        let reply = daemon.send_decision(&decision("cool", "run", extra)).await;
        assert_eq!(reply["status"], "no_action", "{reply}");
        assert!(
            reason(&reply).starts_with("suppressed: cooldown"),
            "{reply}"
        );
    }
    // A declared input does; and spelling it another way does not evade its cooldown.
    let with_address = daemon
        .send_decision(&decision(
            "cool",
            "run",
            json!({"host": "a", "address": "2001:db8::1"}),
        ))
        .await;
    assert_eq!(with_address["status"], "accepted", "{with_address}");
    let respelled = daemon
        .send_decision(&decision(
            "cool",
            "run",
            json!({"host": "a", "address": "2001:0db8:0::1", "event_ts": "x"}),
        ))
        .await;
    assert!(
        reason(&respelled).starts_with("suppressed: cooldown"),
        "{respelled}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_signature_is_refused_when_no_policy_key_can_check_it() {
    let daemon = start().await;
    let mut d = decision("bench.noop", "run", json!({}));
    d["signature"] = json!("c2lnbmVk");
    let reply = daemon.send_decision(&d).await;
    assert_eq!(reply["status"], "rejected", "{reply}");
    assert!(
        reason(&reply).starts_with("unexpected signature")
            && reason(&reply).contains("intake.policy_keys"),
        "{reply}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn an_input_starting_with_a_dash_is_refused_unless_the_playbook_put_end_of_options_before_it()
{
    use std::os::unix::fs::PermissionsExt;
    let scratch = tempfile::tempdir().unwrap();
    // exec children run as `actions.exec.run_as` (nobody): they must reach the script and
    // append to the record.
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let argv = scratch.path().join("argv");
    std::fs::write(&argv, "").unwrap();
    std::fs::set_permissions(&argv, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = scratch.path().join("show-args");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nprintf '%s\\n' \"$@\" >> {}\n", argv.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let playbook = |id: &str, args: &str| {
        format!(
            "id: {id}\nversion: 1\nname: Show args\n\
             owners: {{technical: a@example.org, operational: b@example.org}}\n\
             inputs:\n  user: {{type: string}}\nsteps:\n\
             \x20 - {{id: show, action: exec, with: {{command: {}, args: {args}}}, risk: low, rollback: none}}\n",
            script.display()
        )
    };
    let exposed = playbook("exposed", r#"["--name", "{{ subject.user }}"]"#);
    let operand = playbook("operand", r#"["--name", "--", "{{ subject.user }}"]"#);
    let daemon = TestDaemon::start(
        &format!(
            "[actions.exec]\nallowed_commands = [\"{}\"]\n",
            script.display()
        ),
        &[&exposed, &operand],
        &bindings(&[
            ("show", "exposed", "exposed"),
            ("show", "operand", "operand"),
        ]),
    )
    .await;

    // The decision would choose an option of the program: refused before anything runs.
    for hostile in ["--version", "-i", "-"] {
        let reply = daemon
            .send_decision(&decision("show", "exposed", json!({"user": hostile})))
            .await;
        assert_eq!(reply["status"], "rejected", "{reply}");
        assert!(
            reason(&reply).starts_with("subject.user: starts with `-`")
                && reason(&reply).contains("step `show`")
                && reason(&reply).contains("\"--\""),
            "{reply}"
        );
    }
    let plain = daemon
        .send_decision(&decision("show", "exposed", json!({"user": "alice"})))
        .await;
    assert_eq!(plain["status"], "accepted", "{plain}");
    let id = plain["execution_id"].as_str().unwrap();
    assert_eq!(
        daemon.wait_terminal(id, Duration::from_secs(20)).await,
        "completed"
    );

    // After a literal `--`, the same value is an operand: accepted and passed as one argument.
    let reply = daemon
        .send_decision(&decision("show", "operand", json!({"user": "-i"})))
        .await;
    assert_eq!(reply["status"], "accepted", "{reply}");
    let id = reply["execution_id"].as_str().unwrap();
    assert_eq!(
        daemon.wait_terminal(id, Duration::from_secs(20)).await,
        "completed"
    );
    let seen = std::fs::read_to_string(&argv).unwrap();
    assert_eq!(seen, "--name\nalice\n--name\n--\n-i\n");
    daemon.stop().await;
}

#[tokio::test]
async fn every_reply_shape_matches_the_decision_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/decision.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let reply_schema = jsonschema::validator_for(&schema["$defs"]["reply"]).unwrap();
    let daemon = start().await;
    let d = decision("cool", "run", json!({"host": "z", "extra": 1}));
    let mut replies = vec![daemon.send_decision(&d).await];
    replies.push(daemon.send_decision(&d).await); // replay, with execution_id
    replies.push(
        daemon
            .send_decision(&decision("cool", "run", json!({"host": "z"})))
            .await,
    ); // suppressed
    replies.push(daemon.send(b"\n").await); // malformed
    assert!(
        replies[0]["ignored_subject_keys"].is_array(),
        "{}",
        replies[0]
    );
    assert!(replies[1]["execution_id"].is_string(), "{}", replies[1]);
    for reply in &replies {
        let errors: Vec<String> = reply_schema
            .iter_errors(reply)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{reply}: {errors:?}");
    }
    daemon.stop().await;
}

/// Admission control: with one run allowed at a time and one allowed to wait, a third decision
/// gets `busy` with the backlog size, audited; nothing of it is recorded as a run, and its
/// nonce stays unused (the same decision is accepted once the backlog has drained).
#[tokio::test]
async fn a_decision_beyond_the_backlog_bound_gets_busy_and_is_audited() {
    let config = format!(
        "{}\n[intake]\nmax_backlog = 1\n",
        crate::harness::exec_config(&[], "max_concurrent_runs = 1", "")
    );
    let daemon = TestDaemon::bound(&config, &naps(1)).await;
    let first = daemon.send_decision(&decision("p", "o", json!({}))).await;
    assert_eq!(first["status"], "accepted", "{first}");
    daemon
        .wait_state(
            first["execution_id"].as_str().unwrap(),
            "running",
            Duration::from_secs(5),
        )
        .await;
    let second = daemon.send_decision(&decision("p", "o", json!({}))).await;
    assert_eq!(second["status"], "accepted", "{second}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while daemon.executor.backlog() != 1 {
        assert!(Instant::now() < deadline, "the second run never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let third = decision("p", "o", json!({}));
    let busy = daemon.send_decision(&third).await;
    assert_eq!(busy["status"], "busy", "{busy}");
    assert_eq!(busy["backlog"], 1, "{busy}");
    assert!(
        busy["reason"]
            .as_str()
            .unwrap()
            .contains("intake.max_backlog = 1"),
        "{busy}"
    );
    let client = daemon.db.client().await;
    let audited = client
        .query_one(
            "SELECT event_data FROM playbook_audit_log WHERE event_type = 'decision.received' \
             AND event_data ->> 'nonce' = $1",
            &[&third["nonce"].as_str().unwrap()],
        )
        .await
        .unwrap();
    let data: serde_json::Value = audited.get(0);
    assert_eq!(data["status"], "busy", "{data}");
    assert_eq!(data["backlog"], 1, "{data}");
    let runs: i64 = query_value(&client, "SELECT count(*) FROM playbook_executions", &[]).await;
    assert_eq!(runs, 2);
    assert!(
        playbookd::status::metrics::install()
            .render()
            .contains("playbookd_runs_backlog"),
        "the backlog is reported as a metric"
    );

    // Once the backlog drains, the very same decision is accepted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.executor.backlog() != 0 {
        assert!(Instant::now() < deadline, "the backlog never drained");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = daemon.send_decision(&third).await;
    assert_eq!(again["status"], "accepted", "{again}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_busy_executor_still_answers_a_decision_at_once() {
    let config = crate::harness::exec_config(&[], "max_concurrent_runs = 1", "");
    let daemon = TestDaemon::bound(&config, &naps(5)).await;
    let first = daemon.accepted(&decision("p", "o", json!({}))).await;
    daemon
        .wait_state(first, "running", Duration::from_secs(5))
        .await;
    // The only slot is taken for 5 s: the second run waits for it, its admission does not.
    let sent = Instant::now();
    let d = decision("p", "o", json!({}));
    let second = daemon.accepted(&d).await;
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        sent.elapsed()
    );
    assert_eq!(daemon.state(second).await, "pending");
    // A replay is answered as promptly, and its run's task does not wait for a slot either.
    let replay = daemon.send_decision(&d).await;
    assert!(reason(&replay).starts_with("replay"), "{replay}");
    while daemon.executor.backlog() != 1 {
        assert!(
            sent.elapsed() < Duration::from_secs(3),
            "backlog {} after {:?}",
            daemon.executor.backlog(),
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    daemon
        .wait_state(second, "completed", Duration::from_secs(20))
        .await;
    daemon.stop().await;
}
