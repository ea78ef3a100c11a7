//! `playbookd bench`: a short run of the real benchmark prints every row with a measured number.

use crate::helpers::{TEST_DATABASE_URL_ENV, admin_config, assert_contains, run_cli, url_of};

#[test]
fn bench_prints_every_row_with_a_positive_number() {
    let url = url_of(&admin_config());
    let (status, stdout, stderr) = run_cli(
        &[
            "bench",
            "--duration",
            "1",
            "--connections",
            "4",
            "--concurrency",
            "4",
            "--parked",
            "50",
            "--database-url",
            &url,
        ],
        &[(
            TEST_DATABASE_URL_ENV,
            "postgres://nobody@127.0.0.1:1/unused",
        )],
    );
    assert!(
        status.success(),
        "bench failed: {status}\n{stdout}\n{stderr}"
    );
    let rows: Vec<(String, f64)> = stdout
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| metric"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let value = cells[2]
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("not a number in {line:?}"));
            (cells[1].to_owned(), value)
        })
        .collect();
    let expected = [
        "PostgreSQL single-row INSERT+COMMIT, 1 connection (baseline)",
        "INSERT+COMMIT latency p50, 1 connection",
        "PostgreSQL single-row INSERT+COMMIT, 16 connections",
        "accepted decisions/s, 1 connection",
        "reply latency p50, 1 connection",
        "reply latency p99, 1 connection",
        "accepted decisions/s, 4 connections",
        "reply latency p50, 4 connections",
        "reply latency p99, 4 connections",
        "completed runs/s, noop-3 (3 steps), 4 in flight",
        "decision-to-completed p50",
        "decision-to-completed p95",
        "decision-to-completed p99",
        "audit appends/s during the runs phase",
        "audit appends/s ÷ 16-connection INSERT+COMMIT rate",
        "CPU busy during the runs phase, of 2 cores",
        "daemon (playbookd serve)",
        "audit writer's chain connection's backend",
        "audit writer's spare connection's backend",
        "the bench database's other backends",
        "PostgreSQL background processes",
        "bench client (this process)",
        "Merkle work per audit row (frontier update)",
        "Merkle work per checkpoint (root + note signature), 1000000 rows",
        "Merkle work per row ÷ time per audit append",
        "1-connection reply p50 ÷ INSERT+COMMIT latency p50",
        "open loop: completed runs/s, noop-3, 100 offered/s",
        "open loop decision-to-completed p50",
        "open loop decision-to-completed p99",
        "daemon peak RSS (VmHWM)",
        "daemon RSS, idle before parking runs",
        "daemon RSS, 50 runs awaiting approval",
        "daemon transactions/s, 50 runs parked, nothing happening",
    ];
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let busy = format!("CPU busy during the runs phase, of {cores} cores");
    let expected = expected.map(|label| {
        if label.starts_with("CPU busy") {
            &busy
        } else {
            label
        }
    });
    let labels: Vec<&str> = rows.iter().map(|(label, _)| label.as_str()).collect();
    assert_eq!(labels, expected, "table rows:\n{stdout}");
    // What may take no measurable CPU in a 1 s phase (10 ms ticks).
    let may_be_zero = [
        "audit writer's spare connection's backend",
        "the bench database's other backends",
        "PostgreSQL background processes",
        "bench client (this process)",
    ];
    for (label, value) in &rows {
        // Parked runs that cost no transaction at all are the goal, not a broken figure.
        if label.starts_with("daemon transactions/s") || may_be_zero.contains(&label.as_str()) {
            assert!(*value >= 0.0, "`{label}` is {value}:\n{stdout}");
        } else {
            assert!(*value > 0.0, "`{label}` is {value}:\n{stdout}");
        }
    }
    // Each run appends several audit rows (accepted, every step, completed), so the audit rate
    // must exceed the completed-run rate.
    let rate = |name: &str| rows.iter().find(|(l, _)| l.starts_with(name)).unwrap().1;
    // Issue 24: the Merkle work may lower the audit rate by at most 5 %.
    assert!(
        rate("Merkle work per row ÷") < 5.0,
        "Merkle work takes 5 % or more of an append:\n{stdout}"
    );
    assert!(
        rate("audit appends/s") > rate("completed runs/s"),
        "audit appends/s below runs/s:\n{stdout}"
    );
    // The processes' shares are parts of the machine's (a tick of slack each).
    let parts = rate("daemon (")
        + rate("audit writer's chain")
        + rate("audit writer's spare")
        + rate("bench client");
    assert!(
        parts <= rate("CPU busy") + 0.1,
        "the processes took more CPU than the machine was busy:\n{stdout}"
    );
}

#[test]
fn bench_refuses_a_database_url_it_cannot_use() {
    let (status, _stdout, stderr) = run_cli(
        &[
            "bench",
            "--duration",
            "1",
            "--database-url",
            "host=/tmp dbname=x",
        ],
        &[],
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_contains(&stderr, "expected a postgres:// or postgresql:// URL");
}
