//! A database failover under a running daemon (issue #18): a real primary and a streaming
//! standby started by the test (`pg_basebackup -R`), the primary killed as a crash would, the
//! standby promoted with `pg_ctl promote` (what an HA manager does). The daemon's URL names both
//! servers with `target_session_attrs=read-write`, so its next connection lands on the promoted
//! one. With synchronous replication nothing accepted is lost and the chain verifies there;
//! with asynchronous replication and rows lost, the writer's off-database chain head (the
//! anchor of issue #21) finds the gap: nothing is appended, SAFE-HALT names the missing seqs.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::harness::{NOOP_3, bindings, decision, poke_until_logged, try_send_line};
use crate::helpers::cluster::{Cluster, DATABASE, multi_host_url};
use crate::helpers::{
    ChildDaemon, DaemonDir, accept_cut, assert_cut_reported, audit_verify, audit_verify_anchor,
    chain_head, query_value,
};

const LIMIT: Duration = Duration::from_secs(30);
const NODE: &str = "node-a";
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// A daemon directory for `url`, with noop-3 bound to (p, o).
fn daemon_dir(url: &str) -> (DaemonDir, std::path::PathBuf) {
    let dir = DaemonDir::new();
    dir.write_signed("playbooks/noop-3-v1.yaml", NOOP_3, true);
    dir.write_bindings(&bindings(&[("p", "o", "noop-3")]));
    // Pace the resume sweep so runs cut by the failover go on soon after it.
    let config = dir.write_config_url(url, NODE, "[executor]\nresume_interval_seconds = 1\n");
    (dir, config)
}

/// Decisions from `senders` concurrent policy engines until `stop`; the accepted runs' ids.
fn load(
    socket: &Path,
    senders: usize,
    stop: &CancellationToken,
) -> (Arc<Mutex<Vec<String>>>, Vec<tokio::task::JoinHandle<()>>) {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let tasks = (0..senders)
        .map(|_| {
            let (socket, stop, accepted) = (socket.to_owned(), stop.clone(), accepted.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    match try_send_line(
                        &socket,
                        decision("p", "o", json!({})).to_string().as_bytes(),
                    )
                    .await
                    {
                        Some(reply) if reply["status"] == "accepted" => accepted
                            .lock()
                            .unwrap()
                            .push(reply["execution_id"].as_str().unwrap().to_owned()),
                        // Refused while no primary answers: the daemon says so and goes on.
                        Some(_) | None => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        })
        .collect();
    (accepted, tasks)
}

async fn wait_accepted(accepted: &Mutex<Vec<String>>, count: usize, daemon: &ChildDaemon) {
    let start = Instant::now();
    while accepted.lock().unwrap().len() < count {
        assert!(
            start.elapsed() < LIMIT,
            "{} accepted, not {count}:\n{}",
            accepted.lock().unwrap().len(),
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a decision for (`policy`, `outcome`): the daemon must answer, with `status`.
async fn assert_reply(socket: &Path, policy: &str, outcome: &str, status: &str) {
    let line = decision(policy, outcome, json!({})).to_string();
    let reply = try_send_line(socket, line.as_bytes()).await;
    assert_eq!(
        reply.as_ref().map(|r| &r["status"]),
        Some(&json!(status)),
        "{reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_synchronous_replication_a_failover_loses_nothing_and_the_chain_verifies() {
    let primary = Cluster::primary(&[("synchronous_commit", "on")]);
    primary.create_playbookd_database().await;
    let standby = Cluster::standby_of(&primary, &[]);
    // Synchronous from here on: a commit returns once the standby has flushed it. (Only on the
    // primary: once promoted, the standby has no standby of its own to wait for.)
    primary.set("synchronous_standby_names", "*").await;
    primary
        .wait_until(
            "postgres",
            "SELECT EXISTS (SELECT FROM pg_stat_replication WHERE sync_state = 'sync' AND state = 'streaming')",
            LIMIT,
        )
        .await;
    let (dir, config) = daemon_dir(&multi_host_url(&[&primary, &standby]));
    let mut daemon = ChildDaemon::serve(&config);

    let stop_load = CancellationToken::new();
    let (accepted, senders) = load(&dir.path("run/decisions.sock"), 3, &stop_load);
    wait_accepted(&accepted, 15, &daemon).await;
    // Under load: the primary dies as in a crash, the standby is promoted.
    primary.kill();
    let before = accepted.lock().unwrap().len();
    standby.promote();
    // The daemon reconnects to the promoted server and goes on accepting.
    wait_accepted(&accepted, before + 15, &daemon).await;
    stop_load.cancel();
    for sender in senders {
        sender.await.unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();

    let client = standby.client(DATABASE).await;
    // Nothing accepted is lost: every accepted run's decision.accepted row is on the new primary.
    let rows = client
        .query(
            "SELECT event_data->>'execution_id' FROM playbook_audit_log \
             WHERE node_id = $1 AND event_type = 'decision.accepted'",
            &[&NODE],
        )
        .await
        .unwrap();
    let stored: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let lost: Vec<&String> = accepted.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} accepted runs lost: {lost:?}",
        lost.len(),
        accepted.len()
    );
    // Every run, also those cut mid-step by the failover, ends (resumed on the new primary).
    let start = Instant::now();
    loop {
        let open: i64 = client
            .query_one(
                "SELECT count(*) FROM playbook_executions WHERE node_id = $1 \
                 AND state NOT IN ('completed', 'rolled_back', 'cancelled', 'timed_out', 'rejected')",
                &[&NODE],
            )
            .await
            .unwrap()
            .get(0);
        if open == 0 {
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "{open} runs still open:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = daemon.get_json("/v1/health");
    assert_eq!(health["ready"], true, "{health}");
    assert!(health["chain_cut"].is_null(), "{health}");
    let halt = daemon.get_json("/v1/safe-halt");
    assert!(halt["active"].is_null(), "{halt}");
    daemon.stop_within(STOP_LIMIT);

    // The chain verifies on the promoted server, also against the daemon's anchor.
    let (status, stdout, stderr) = audit_verify(&config, &[]);
    assert!(status.success(), "{stdout}{stderr}");
    let (status, stdout, stderr) = audit_verify_anchor(&config, &dir);
    assert!(status.success(), "{stdout}{stderr}");
    assert_eq!(
        dir.chain_anchor()["head"]["seq"],
        chain_head(&client, NODE).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_asynchronous_replication_rows_lost_in_a_failover_halt_the_daemon_and_nothing_forks() {
    let primary = Cluster::primary(&[]);
    primary.create_playbookd_database().await;
    let standby = Cluster::standby_of(&primary, &[]);
    let (dir, config) = daemon_dir(&multi_host_url(&[&primary, &standby]));
    let mut daemon = ChildDaemon::serve(&config);
    let socket = dir.path("run/decisions.sock");
    for _ in 0..3 {
        assert_reply(&socket, "p", "o", "accepted").await;
    }

    // Replication stops (the standby is down), the primary goes on committing.
    standby.stop();
    for _ in 0..3 {
        assert_reply(&socket, "unbound", "x", "no_action").await;
    }
    let primary_client = primary.client(DATABASE).await;
    let committed = chain_head(&primary_client, NODE).await;
    // The anchor holds what the daemon committed last (it follows each commit, off the writer's path).
    let start = Instant::now();
    while dir.chain_anchor()["head"]["seq"] != committed {
        assert!(start.elapsed() < LIMIT, "{}", dir.chain_anchor());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(primary_client);

    // The primary crashes; the lagging standby comes back and is promoted.
    primary.kill();
    standby.start();
    standby.promote();
    let client = standby.client(DATABASE).await;
    let kept = chain_head(&client, NODE).await;
    assert!(kept < committed, "no row was lost: {kept} {committed}");

    // The writer reconnects for the next append, to the promoted server, and finds the gap.
    let missing = format!("seq {}..={committed} are missing", kept + 1);
    poke_until_logged(&daemon, &socket, &missing, LIMIT).await;
    daemon.wait_for_log("SAFE-HALT entered: the audit chain was cut", LIMIT);
    // Nothing goes on top of the gap, whatever arrives.
    let reply = try_send_line(
        &socket,
        decision("p", "o", json!({})).to_string().as_bytes(),
    )
    .await;
    assert_eq!(
        reply.as_ref().map(|r| &r["status"]),
        Some(&json!("rejected")),
        "{reply:?}"
    );
    assert_cut_reported(
        &mut daemon,
        &dir,
        &client,
        (NODE, kept, committed),
        STOP_LIMIT,
    )
    .await;

    // The operator's way out (README "Running a fleet"): accept the cut with a reason; the
    // next start appends again, first of all the acknowledgment, and the chain verifies.
    accept_cut(
        &config,
        "failover to a lagging standby; lost rows preserved from the old primary",
    );
    let mut daemon = ChildDaemon::start(&config, &dir.path("after.log"));
    daemon.wait_for_log("playbookd ready", LIMIT);
    let event_type: String = query_value(
        &client,
        "SELECT event_type FROM playbook_audit_log WHERE node_id = $1 AND seq = $2",
        &[&NODE, &(kept + 1)],
    )
    .await;
    assert_eq!(event_type, "audit.cut_accepted");
    daemon.stop_within(STOP_LIMIT);
    let (status, stdout, stderr) = audit_verify_anchor(&config, &dir);
    assert!(status.success(), "{stdout}{stderr}");
}
