//! Audit log throughput, measured in one run against a database of its own:
//!
//! - baseline: plain single-row `INSERT` + COMMIT per row on one connection, into a table shaped
//!   like the audit log but with no chain, no trigger and no lock;
//! - audit appends/s with 1 and with 64 concurrent writers (group commit batches the latter);
//! - the latency of a lone request of two records, each changing a row, as a step's end with the
//!   next step's start does: foreseen (written as one statement: the checked changes and the
//!   audit INSERT, its own transaction) and not (BEGIN with its effects, then the INSERT with
//!   COMMIT), alternating request by request on one writer, so that both meet the same server;
//! - `verify_chain` rows/s over everything appended.
//!
//! `cargo bench --bench audit [-- --quick]` (3 s per phase, 0.5 s with `--quick`; under
//! `cargo test --all-targets`, a 0.1 s smoke run). The server is `PLAYBOOKD_TEST_DATABASE_URL` (default
//! postgres://postgres@127.0.0.1:5432/postgres); the bench creates `pbd_bench_<pid>_<uuid>`
//! and drops it at the end, also when a phase fails.
#![allow(clippy::unwrap_used)] // a benchmark that cannot reach its database should just stop

use std::time::{Duration, Instant};

use playbookd::store::audit::{self, Actor, AuditEvent, AuditHandle, Scope};
use playbookd::store::verify::verify_chain;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

const DATABASE_URL_ENV: &str = "PLAYBOOKD_TEST_DATABASE_URL";
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const NODE: &str = "bench-node";

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and then a short smoke run proves the benchmark still works without slowing the tests.
    let args: Vec<String> = std::env::args().collect();
    let phase = if !args.iter().any(|arg| arg == "--bench") {
        Duration::from_millis(100)
    } else if args.iter().any(|arg| arg == "--quick") {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(3)
    };
    let url = std::env::var(DATABASE_URL_ENV).unwrap_or_else(|_| DEFAULT_DATABASE_URL.into());
    let admin_config: tokio_postgres::Config = url
        .parse()
        .unwrap_or_else(|e| panic!("{DATABASE_URL_ENV} is not a PostgreSQL URL: {e}"));
    let admin = connect(&admin_config).await;
    let name = format!(
        "pbd_bench_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let mut config = admin_config.clone();
    config.dbname(&name);

    let outcome = tokio::spawn(run(config, phase)).await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
}

async fn run(config: tokio_postgres::Config, phase: Duration) {
    let mut client = connect(&config).await;
    playbookd::store::migrate::migrate(&mut client)
        .await
        .unwrap();
    println!("audit benchmark: {} s per phase", phase.as_secs_f64());

    let baseline = plain_inserts(&client, phase).await;
    println!("plain INSERT+COMMIT, 1 connection: {baseline:>10.0} rows/s");

    let shutdown = CancellationToken::new();
    let (handle, writer) = audit::start_writer(config.clone(), NODE.into(), shutdown.clone())
        .await
        .unwrap();
    for writers in [1, 64] {
        let rate = appends(&handle, writers, phase).await;
        println!(
            "audit append, {writers:>2} writer(s):       {rate:>10.0} appends/s  ({:.2}x baseline)",
            rate / baseline
        );
    }
    client
        .batch_execute(
            "CREATE TABLE bench_rows (k int PRIMARY KEY, v bigint NOT NULL); \
             INSERT INTO bench_rows VALUES (1, 0), (2, 0)",
        )
        .await
        .unwrap();
    let (foreseen, ordinary) = lone_requests(&handle, phase).await;
    let (foreseen, ordinary) = (percentiles(foreseen), percentiles(ordinary));
    println!(
        "lone request of 2 records, p50 / p90: one flight {:.3} / {:.3} ms, two flights {:.3} / {:.3} ms  ({:.2}x at p50)",
        foreseen.0,
        foreseen.1,
        ordinary.0,
        ordinary.1,
        foreseen.0 / ordinary.0
    );
    shutdown.cancel();
    writer.await.unwrap();

    let started = Instant::now();
    let report = verify_chain(&client, NODE).await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(report.breach, None, "the benchmark chain must verify");
    println!(
        "verify_chain:                      {:>10.0} rows/s  ({} rows in {elapsed:.2} s)",
        report.rows as f64 / elapsed,
        report.rows
    );
}

/// One autocommitted single-row INSERT after another: each is its own transaction and fsync.
async fn plain_inserts(client: &tokio_postgres::Client, phase: Duration) -> f64 {
    client
        .batch_execute(
            "CREATE TABLE bench_plain (seq bigint PRIMARY KEY, prev_hash bytea NOT NULL, \
             hash bytea NOT NULL, event_type text NOT NULL, event_data jsonb NOT NULL, \
             created_at timestamptz NOT NULL)",
        )
        .await
        .unwrap();
    let insert = client
        .prepare("INSERT INTO bench_plain VALUES ($1, $2, $3, $4, $5, now())")
        .await
        .unwrap();
    let hash = [7u8; 32];
    let started = Instant::now();
    let mut seq: i64 = 0;
    while started.elapsed() < phase {
        seq += 1;
        let data = serde_json::json!({"actor": "system", "i": seq});
        client
            .execute(
                &insert,
                &[
                    &seq,
                    &hash.as_slice(),
                    &hash.as_slice(),
                    &"bench.event",
                    &data,
                ],
            )
            .await
            .unwrap();
    }
    seq as f64 / started.elapsed().as_secs_f64()
}

/// `writers` tasks appending back to back for `phase`.
async fn appends(handle: &AuditHandle, writers: u32, phase: Duration) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|writer| {
            let handle = handle.clone();
            tokio::spawn(async move {
                let mut count: u64 = 0;
                while started.elapsed() < phase {
                    handle
                        .append(
                            AuditEvent::new("bench.event", Actor::Uid(writer))
                                .with("writer", writer)
                                .with("i", count),
                        )
                        .await
                        .unwrap();
                    count += 1;
                }
                count
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// One lone request after another for `phase`, alternately foreseen and not: the latency of
/// each kind, in ms.
async fn lone_requests(handle: &AuditHandle, phase: Duration) -> (Vec<f64>, Vec<f64>) {
    let (mut foreseen, mut ordinary) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let mut i: u64 = 0;
    while started.elapsed() < phase {
        let one_flight = i.is_multiple_of(2);
        let sent = Instant::now();
        let earlier = handle.defer_in(
            Scope::Execution(uuid::Uuid::nil()),
            row_change(1, one_flight),
        );
        handle
            .append_after_in(
                Scope::Execution(uuid::Uuid::nil()),
                vec![earlier],
                row_change(2, one_flight),
            )
            .await
            .unwrap();
        let ms = sent.elapsed().as_secs_f64() * 1e3;
        if one_flight {
            foreseen.push(ms);
        } else {
            ordinary.push(ms);
        }
        i += 1;
    }
    (foreseen, ordinary)
}

/// The checked change of row `$1`, twice: a request's changes go in one statement, each
/// under a name of its own.
const ROW_CHANGES: [audit::CheckedSql; 2] = [
    audit::CheckedSql {
        with: "first AS (UPDATE bench_rows SET v = v + 1 WHERE k = $1 RETURNING 1)",
        expect: "EXISTS (SELECT 1 FROM first)",
        what: "bench row",
    },
    audit::CheckedSql {
        with: "second AS (UPDATE bench_rows SET v = v + 1 WHERE k = $1 RETURNING 1)",
        expect: "EXISTS (SELECT 1 FROM second)",
        what: "bench row",
    },
];

/// A record of row `k` (1 or 2) of `bench_rows` changing, foreseen or not.
fn row_change(k: i32, foreseen: bool) -> audit::Body<()> {
    let checked = if k == 1 {
        &ROW_CHANGES[0]
    } else {
        &ROW_CHANGES[1]
    };
    let effect: audit::Effect<()> = Box::new(move |tx| {
        Box::pin(async move {
            let changed = tx
                .execute("UPDATE bench_rows SET v = v + 1 WHERE k = $1", &[&k])
                .await
                .map_err(playbookd::store::StoreError::Query)?;
            assert_eq!(changed, 1);
            Ok((AuditEvent::new("bench.row", Actor::System).with("k", k), ()))
        })
    });
    let body = audit::Body::from(effect);
    if !foreseen {
        return body;
    }
    body.foreseen(Box::new(move || {
        Some(audit::Foreseen {
            records: AuditEvent::new("bench.row", Actor::System)
                .with("k", k)
                .into(),
            value: (),
            checked: vec![audit::Checked::new(checked, vec![Box::new(k)])],
        })
    }))
}

/// The p50 and p90 of `values`.
fn percentiles(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let Some(last) = values.len().checked_sub(1) else {
        return (f64::NAN, f64::NAN);
    };
    (values[last / 2], values[last * 9 / 10])
}

async fn connect(config: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, connection) = config.connect(NoTls).await.unwrap_or_else(|e| {
        panic!("cannot connect to PostgreSQL ({DATABASE_URL_ENV}): {e}");
    });
    tokio::spawn(connection);
    client
}
