//! The fleet benchmark (issue #18): NODES daemons (own node ids, sockets, directories) on one
//! throwaway server with room for their connections; each gets RUNS noop-3 decisions from a
//! policy engine of its own, all at once. Prints aggregate completed runs/s, per-node p99
//! (accept → completed, from the rows), connections in use (pg_stat_activity) and whether each
//! node's chain verifies (`playbookd audit verify --node`). By default a smoke run (20 nodes ×
//! 3 runs); `PLAYBOOKD_FLEET_BENCH_RUNS=N` for a real one:
//! `PLAYBOOKD_FLEET_BENCH_RUNS=50 cargo test --test it fleet_bench -- --nocapture`.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{NOOP_3, bindings, decision, send_json};
use crate::helpers::cluster::{Cluster, DATABASE, multi_host_url};
use crate::helpers::{ChildDaemon, DaemonDir, audit_cli, query_value};

const NODES: usize = 20;
const LIMIT: Duration = Duration::from_secs(120);

fn runs_per_node() -> usize {
    std::env::var("PLAYBOOKD_FLEET_BENCH_RUNS")
        .ok()
        .map(|v| v.parse().expect("PLAYBOOKD_FLEET_BENCH_RUNS is a number"))
        .unwrap_or(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_bench_twenty_daemons_on_one_server() {
    let runs = runs_per_node();
    let server = Cluster::primary(&[("max_connections", "400")]);
    server.create_playbookd_database().await;
    let url = multi_host_url(&[&server]);
    let mut nodes = Vec::new();
    for i in 0..NODES {
        let dir = DaemonDir::new();
        dir.write_signed("playbooks/noop-3-v1.yaml", NOOP_3, true);
        dir.write_bindings(&bindings(&[("p", "o", "noop-3")]));
        let node = format!("node-{i:02}");
        let config = dir.write_config_url(&url, &node, "");
        let daemon = ChildDaemon::start(&config, &dir.path("daemon.log"));
        nodes.push((node, dir, config, daemon));
    }
    for (_, _, _, daemon) in &mut nodes {
        daemon.wait_for_log("playbookd ready", LIMIT);
    }

    let start = Instant::now();
    let senders: Vec<_> = nodes
        .iter()
        .map(|(_, dir, _, _)| {
            let socket = dir.path("run/decisions.sock");
            tokio::spawn(async move {
                for _ in 0..runs {
                    let reply = send_json(&socket, &decision("p", "o", json!({}))).await;
                    assert_eq!(reply["status"], "accepted", "{reply}");
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    let client = server.client(DATABASE).await;
    let total = i64::try_from(NODES * runs).unwrap();
    loop {
        let done: i64 = query_value(
            &client,
            "SELECT count(*) FROM playbook_executions WHERE state = 'completed'",
            &[],
        )
        .await;
        if done == total {
            break;
        }
        assert!(start.elapsed() < LIMIT, "{done} of {total} completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let connections: i64 = query_value(
        &client,
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'playbookd_rt'",
        &[],
    )
    .await;
    let p99s = client
        .query(
            "SELECT node_id, percentile_cont(0.99) WITHIN GROUP \
             (ORDER BY extract(epoch FROM completed_at - started_at)) * 1000 \
             FROM playbook_executions GROUP BY node_id ORDER BY node_id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(p99s.len(), NODES);
    let p99s: Vec<(String, f64)> = p99s.iter().map(|r| (r.get(0), r.get(1))).collect();

    let mut verified = 0;
    for (node, _, config, daemon) in &mut nodes {
        daemon.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(daemon.wait_exit(LIMIT).is_some_and(|s| s.success()));
        let (status, stdout, stderr) = audit_cli("verify", config, &["--node", node]);
        assert!(status.success(), "{node}: {stdout}{stderr}");
        verified += 1;
    }
    let worst = p99s.iter().map(|(_, p)| *p).fold(0.0, f64::max);
    let best = p99s.iter().map(|(_, p)| *p).fold(f64::MAX, f64::min);
    println!("| metric | value |");
    println!("| nodes | {NODES} |");
    println!("| runs per node | {runs} |");
    println!(
        "| completed runs/s (all nodes) | {:.1} |",
        f64::from(u32::try_from(total).unwrap()) / elapsed
    );
    println!("| per-node p99 accept→completed, ms (min..max) | {best:.1}..{worst:.1} |");
    println!("| connections used (pg_stat_activity, runtime role) | {connections} |");
    println!("| chains verifying | {verified}/{NODES} |");
    for (node, p99) in &p99s {
        println!("| p99 {node} ms | {p99:.1} |");
    }
}
