//! `/v1/executions` throughput and latency with 100,000 executions in a fresh database.
//!
//! `cargo bench --bench status` runs the full benchmark; without `--bench` (as `cargo test
//! --all-targets` runs it) a small smoke run proves it still works. Needs the PostgreSQL named
//! by `PLAYBOOKD_TEST_DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/postgres).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: a panic is a failed run

use std::time::{Duration, Instant};

use playbookd::status::{self, RuntimeSnapshot, StatusAddr, StatusState};
use playbookd::status_client::{Endpoint, request};
use playbookd::store::{self, Store};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let (rows, walkers, pages_each) = if full {
        (100_000, 4, 250)
    } else {
        (2_000, 2, 10)
    };

    let admin_url = std::env::var("PLAYBOOKD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin_config: tokio_postgres::Config = admin_url.parse().expect("database URL");
    let admin = store::connect_single(&admin_config)
        .await
        .expect("admin connection (PLAYBOOKD_TEST_DATABASE_URL)");
    let name = format!(
        "pbd_test_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let mut config = admin_config.clone();
    config.dbname(&name);

    let result = run(&config, rows, walkers, pages_each).await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
    let report = result.expect("benchmark");
    println!(
        "status bench: {rows} executions, {} requests of /v1/executions (limit 50, keyset pages) from {walkers} clients: \
         {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
        report.requests,
        report.requests as f64 / report.elapsed.as_secs_f64(),
        ms(report.p50),
        ms(report.p99),
        ms(report.max),
        if full {
            ""
        } else {
            " (smoke run; use cargo bench for the real one)"
        },
    );
}

struct Report {
    requests: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

async fn run(
    config: &tokio_postgres::Config,
    rows: i64,
    walkers: usize,
    pages_each: usize,
) -> Result<Report, String> {
    let mut client = store::connect_single(config)
        .await
        .map_err(|e| e.to_string())?;
    store::migrate::migrate(&mut client)
        .await
        .map_err(|e| e.to_string())?;
    let loading = Instant::now();
    client
        .batch_execute(
            "INSERT INTO playbook_versions (playbook_id, version, sha256, signer_key_ids, content, first_seen) \
             VALUES ('bench', 1, decode(repeat('07', 32), 'hex'), ARRAY['key-1'], 'x', now())",
        )
        .await
        .map_err(|e| e.to_string())?;
    client
        .execute(
            "INSERT INTO playbook_executions (execution_id, node_id, playbook_id, playbook_version, \
               playbook_sha256, state, current_step, nonce, policy_decision_id, policy, outcome, org_id, \
               severity, subject, requested_by_uid, started_at, updated_at, completed_at) \
             SELECT gen_random_uuid(), 'bench-node', 'bench', 1, decode(repeat('07', 32), 'hex'), \
               (ARRAY['completed', 'running', 'rolled_back', 'pending'])[1 + i % 4], 0, 'nonce-' || i, \
               'decision-' || i, 'ransomware.burst', 'contain', 'org-' || (i % 10), 'high', \
               jsonb_build_object('pid', i), 1000, now() - i * interval '1 second', now(), NULL \
             FROM generate_series(1, $1::bigint) AS i",
            &[&rows],
        )
        .await
        .map_err(|e| e.to_string())?;
    client
        .batch_execute("ANALYZE playbook_executions")
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("loaded {rows} executions in {:?}", loading.elapsed());

    let shutdown = CancellationToken::new();
    let store = Store::connect(config, 8, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    let (audit, _task) =
        store::audit::start_writer(config.clone(), "bench-node".into(), shutdown.clone())
            .await
            .map_err(|e| e.to_string())?;
    let (_runtime, receiver) = tokio::sync::watch::channel(RuntimeSnapshot {
        registry_loaded: true,
        ..RuntimeSnapshot::default()
    });
    let listener = status::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let StatusAddr::Tcp(addr) = listener.local_addr().map_err(|e| e.to_string())? else {
        return Err("expected a TCP listener".into());
    };
    tokio::spawn(status::serve(
        listener,
        StatusState::new(store, audit, receiver),
        shutdown.clone(),
    ));
    let endpoint = Endpoint::Tcp(addr);

    let started = Instant::now();
    let mut tasks = Vec::new();
    for walker in 0..walkers {
        let endpoint = endpoint.clone();
        tasks.push(tokio::spawn(async move {
            // Half the clients walk everything, half walk one org: both index paths are timed.
            let filter = if walker % 2 == 0 {
                String::new()
            } else {
                format!("&org=org-{walker}")
            };
            let mut latencies = Vec::with_capacity(pages_each);
            let mut cursor: Option<String> = None;
            for _ in 0..pages_each {
                let path = match &cursor {
                    Some(c) => format!("/v1/executions?limit=50{filter}&cursor={c}"),
                    None => format!("/v1/executions?limit=50{filter}"),
                };
                let sent = Instant::now();
                let response = request(&endpoint, "GET", &path)
                    .await
                    .map_err(|e| e.to_string())?;
                latencies.push(sent.elapsed());
                if response.status != 200 {
                    return Err(format!("GET {path}: {}", response.status));
                }
                let body = response.json().map_err(|e| e.to_string())?;
                cursor = body["next_cursor"].as_str().map(str::to_owned);
                if cursor.is_none() {
                    break;
                }
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.map_err(|e| e.to_string())??);
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    latencies.sort();
    // Nearest-rank percentile: index ceil(n * percent / 100) - 1.
    let at = |percent: usize| latencies[(latencies.len() * percent).div_ceil(100).max(1) - 1];
    Ok(Report {
        requests: latencies.len(),
        elapsed,
        p50: at(50),
        p99: at(99),
        max: at(100),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
