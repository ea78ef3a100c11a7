//! `playbookd bench`: the real daemon, over its real sockets, against real PostgreSQL.
//!
//! One run creates a database of its own (`pbd_bench_<pid>`) on the server given by
//! `--database-url` (or `PLAYBOOKD_TEST_DATABASE_URL`), a private temporary directory with two
//! freshly generated Ed25519 author keys, two playbooks and a bindings file signed by both, and a
//! config; then starts this same executable as `serve` in a child process and measures, phase by
//! phase:
//!
//! 1. baseline: single-row `INSERT` + COMMIT on the same server, one connection (rate and
//!    latency) and 16 connections (before the daemon starts, so nothing competes with it);
//! 2. accepted decisions/s and reply latency at 1 and at `--connections` connections, each
//!    connection sending its next decision as soon as the previous reply arrives (the runs
//!    execute meanwhile, as they would in production);
//! 3. end-to-end: `--concurrency` clients each send a decision for the 3-step `noop-3` playbook
//!    and wait until its execution is `completed` before sending the next; completed runs/s,
//!    decision-to-completed latency measured by the client (send → the completion's NOTIFY,
//!    from a trigger the bench adds to its own database: no polling), audit rows appended
//!    per second, and the CPU the daemon, the audit writer's backend, the other backends and
//!    the bench itself took meanwhile (`/proc`, when PostgreSQL runs on this machine);
//! 4. open loop: decisions offered at a fixed `--open-rate` (100/s) whatever the replies do,
//!    decision-to-completed latency from each decision's scheduled send time;
//! 5. memory and idle cost: `--parked` decisions for a playbook whose only step is `risk: high`,
//!    so every run stops at its approval gate; the daemon's RSS once all of them wait, its peak
//!    RSS, and the transactions per second the daemon makes while nothing happens
//!    (`pg_stat_database` xact_commit + xact_rollback, read from another database, with
//!    autovacuum switched off on the bench database's tables so that only the daemon counts).
//!
//! Then the daemon gets SIGTERM, and the database and directory are removed, also when a
//! phase fails. Nothing is mocked: a refused decision or a run that does not complete stops the
//! benchmark with the reason.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::DATABASE_URL_ENV;
use crate::registry::signature::{self, Algorithm, KeyError, Signer};
use crate::store::model::RunState;
use crate::store::scratch::{OwnerLogin, ScratchDb};

mod cpu;

/// Server used when neither `--database-url` nor `PLAYBOOKD_TEST_DATABASE_URL` is given.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Short phases (3 s) and 2,000 parked runs: the whole run takes under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Connections of the second intake phase (the first always uses one).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub connections: u16,
    /// Runs in flight at once in the end-to-end phase.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub concurrency: u16,
    /// Seconds per measured phase (default 10; 3 with --quick). Fractions are allowed.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    /// Executions left waiting at an approval gate for the memory figure (default 10000;
    /// 2000 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub parked: Option<u32>,
    /// Decisions per second offered in the open-loop phase.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub open_rate: u32,
    /// PostgreSQL server (superuser URL) on which the bench creates and drops its database.
    #[arg(
        long,
        env = "PLAYBOOKD_TEST_DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("failed to start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("--database-url: expected a postgres:// or postgresql:// URL")]
    BadUrl,
    #[error("PostgreSQL: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("failed to prepare the bench database")]
    Store(#[from] crate::store::StoreError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("the daemon did not become ready within {0:?}")]
    NotReady(Duration),
    #[error("the daemon exited ({0})")]
    DaemonExited(String),
    #[error("decision not accepted: {0}")]
    Refused(String),
    #[error("execution {execution_id} ended `{state}`, not `completed`")]
    NotCompleted { execution_id: Uuid, state: String },
    #[error("{what}: still not done after {limit:?}")]
    Timeout { what: String, limit: Duration },
}

/// Runs the whole benchmark and prints its table on stdout.
pub fn run(args: BenchArgs) -> Result<(), BenchError> {
    let plan = Plan::from_args(args);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    let report = runtime.block_on(bench(&plan))?;
    print!("{report}");
    Ok(())
}

/// The parameters of one run, defaults applied.
#[derive(Debug, Clone)]
struct Plan {
    url: String,
    phase: Duration,
    connections: usize,
    concurrency: usize,
    parked: usize,
    open_rate: u32,
    quick: bool,
}

impl Plan {
    fn from_args(args: BenchArgs) -> Plan {
        let (phase, parked) = if args.quick {
            (Duration::from_secs(3), 2_000)
        } else {
            (Duration::from_secs(10), 10_000)
        };
        Plan {
            url: args.database_url,
            phase: args.duration.unwrap_or(phase),
            connections: usize::from(args.connections),
            concurrency: usize::from(args.concurrency),
            parked: args.parked.map_or(parked, |n| n as usize),
            open_rate: args.open_rate,
            quick: args.quick,
        }
    }
}

async fn bench(plan: &Plan) -> Result<String, BenchError> {
    let admin_config: tokio_postgres::Config = plan.url.parse().map_err(|_| BenchError::BadUrl)?;
    // Two roles, as installed: the schema belongs to the owner, the daemon runs as the runtime role.
    let scratch = ScratchDb::named(format!("pbd_bench_{}", std::process::id()));
    // Checked before anything is created: the daemon is given this URL.
    let daemon_url = with_user(&with_database(&plan.url, &scratch.name)?, &scratch.runtime);
    let admin = connect(&admin_config).await?;
    // A database or roles of these names can only be left over by a dead process that had our pid.
    scratch.drop_all(&admin).await?;
    scratch.create(&admin, OwnerLogin::NoLogin).await?;
    let mut db_config = admin_config.clone();
    db_config.dbname(&scratch.name);
    let migrated = async {
        let mut migrator = connect(&db_config).await?;
        let roles = crate::store::migrate::Roles {
            owner: Some(&scratch.owner),
            runtime: Some(&scratch.runtime),
        };
        crate::store::migrate::migrate_with_roles(&mut migrator, &roles).await?;
        Ok::<(), BenchError>(())
    }
    .await;
    let outcome = match migrated {
        Ok(()) => phases(plan, &admin_config, &scratch.name, &daemon_url).await,
        Err(error) => Err(error),
    };
    let dropped = scratch.drop_all(&admin).await;
    let report = outcome?;
    dropped?;
    Ok(report)
}

async fn phases(
    plan: &Plan,
    admin_config: &tokio_postgres::Config,
    name: &str,
    daemon_url: &str,
) -> Result<String, BenchError> {
    let mut db_config = admin_config.clone();
    db_config.dbname(name);
    let client = connect(&db_config).await?;
    let server_version: String = client.query_one("SHOW server_version", &[]).await?.get(0);

    eprintln!("bench: baseline ({:.1} s)", plan.phase.as_secs_f64());
    let baseline = baseline(&client, plan.phase).await?;
    eprintln!("bench: baseline, {BASELINE_CONNECTIONS} connections");
    let baseline_many = baseline_many(&db_config, BASELINE_CONNECTIONS, plan.phase).await?;

    let dir = BenchDir::create()?;
    let setup = dir.write_setup(plan, &db_config)?;
    let mut daemon = ChildDaemon::spawn(&setup, daemon_url)?;
    let admin = connect(admin_config).await?;
    let outcome = measure(plan, &setup, &daemon, &client, &admin, name).await;
    if outcome.is_err() {
        eprintln!("bench: daemon log (last lines):\n{}", daemon.log_tail(30));
    }
    daemon.stop().await;
    let measured = outcome?;

    let mut table = Table::new(baseline.rate());
    table.millis(
        "  INSERT+COMMIT latency p50, 1 connection",
        baseline.percentile(50),
    );
    table.rate(
        &format!("PostgreSQL single-row INSERT+COMMIT, {BASELINE_CONNECTIONS} connections"),
        baseline_many,
        "rows/s",
    );
    let one = &measured.intake_one;
    let many = &measured.intake_many;
    let n = plan.connections;
    table.rate(
        "accepted decisions/s, 1 connection",
        one.rate(),
        "decisions/s",
    );
    table.millis("  reply latency p50, 1 connection", one.percentile(50));
    table.millis("  reply latency p99, 1 connection", one.percentile(99));
    table.rate(
        &format!("accepted decisions/s, {n} connections"),
        many.rate(),
        "decisions/s",
    );
    table.millis(
        &format!("  reply latency p50, {n} connections"),
        many.percentile(50),
    );
    table.millis(
        &format!("  reply latency p99, {n} connections"),
        many.percentile(99),
    );
    let runs = &measured.runs;
    let c = plan.concurrency;
    table.rate(
        &format!("completed runs/s, noop-3 (3 steps), {c} in flight"),
        runs.samples.rate(),
        "runs/s",
    );
    for p in [50, 95, 99] {
        table.millis(
            &format!("  decision-to-completed p{p}"),
            runs.samples.percentile(p),
        );
    }
    let appends = runs.audit_rows as f64 / runs.samples.elapsed.as_secs_f64();
    table.rate(
        "audit appends/s during the runs phase",
        appends,
        "appends/s",
    );
    table.ratio(
        &format!("  audit appends/s ÷ {BASELINE_CONNECTIONS}-connection INSERT+COMMIT rate"),
        appends / baseline_many,
    );
    if let Some(cpu) = &runs.cpu {
        table.cpu(cpu);
    }
    let merkle = merkle_cost();
    table.micros(
        "  Merkle work per audit row (frontier update)",
        merkle.per_row_us,
    );
    table.micros(
        &format!(
            "  Merkle work per checkpoint (root + note signature), {} rows",
            MERKLE_ROWS
        ),
        merkle.per_checkpoint_us,
    );
    // The writer does the per-row work after COMMIT, on its own task: the share of each
    // append's time it takes bounds how much it can lower the audit rate.
    table.percent(
        "  Merkle work per row ÷ time per audit append",
        100.0 * merkle.per_row_us * appends / 1e6,
    );
    table.ratio(
        "  1-connection reply p50 ÷ INSERT+COMMIT latency p50",
        one.percentile(50) / baseline.percentile(50),
    );
    let open = &measured.open_loop;
    table.rate(
        &format!(
            "open loop: completed runs/s, noop-3, {} offered/s",
            plan.open_rate
        ),
        open.rate(),
        "runs/s",
    );
    for p in [50, 99] {
        table.millis(
            &format!("  open loop decision-to-completed p{p}"),
            open.percentile(p),
        );
    }
    table.mebibytes("daemon peak RSS (VmHWM)", measured.peak_rss_kib);
    table.mebibytes(
        "daemon RSS, idle before parking runs",
        measured.idle_rss_kib,
    );
    table.mebibytes(
        &format!("daemon RSS, {} runs awaiting approval", plan.parked),
        measured.parked_rss_kib,
    );
    table.plain(
        &format!(
            "daemon transactions/s, {} runs parked, nothing happening",
            plan.parked
        ),
        measured.parked_xacts_per_second,
        "xact/s",
    );

    let mut report = String::new();
    let _ = writeln!(
        report,
        "playbookd bench{}: {} ({} CPUs), PostgreSQL {server_version}, {:.1} s per phase, \
         {} parked runs",
        if plan.quick { " --quick" } else { "" },
        cpu_model(),
        std::thread::available_parallelism().map_or(0, usize::from),
        plan.phase.as_secs_f64(),
        plan.parked,
    );
    report.push('\n');
    report.push_str(&table.render());
    let per_run_kib =
        (measured.parked_rss_kib as f64 - measured.idle_rss_kib as f64) / plan.parked as f64;
    let _ = writeln!(
        report,
        "\nRSS grew by about {:.1} KiB per run awaiting approval; {} runs completed in all \
         phases; latencies are measured by the client (completion seen through a NOTIFY at its \
         COMMIT; open-loop latencies count from each decision's scheduled send time).",
        per_run_kib, measured.completed_total,
    );
    Ok(report)
}

/// Everything measured while the daemon ran.
struct Measured {
    intake_one: Samples,
    intake_many: Samples,
    runs: RunsPhase,
    idle_rss_kib: u64,
    parked_rss_kib: u64,
    peak_rss_kib: u64,
    completed_total: i64,
    open_loop: Samples,
    parked_xacts_per_second: f64,
}

async fn measure(
    plan: &Plan,
    setup: &Setup,
    daemon: &ChildDaemon,
    client: &tokio_postgres::Client,
    admin: &tokio_postgres::Client,
    db_name: &str,
) -> Result<Measured, BenchError> {
    daemon.wait_ready(&setup.socket, READY_LIMIT).await?;
    // The daemon has migrated the schema: completions now NOTIFY the bench (its own database).
    client.batch_execute(COMPLETION_TRIGGER).await?;
    let drain_limit = Duration::from_secs(120);

    eprintln!("bench: intake, 1 connection");
    let intake_one = intake_phase(&setup.socket, 1, plan.phase, NOOP_POLICY).await?;
    wait_all_terminal(client, drain_limit).await?;

    eprintln!("bench: intake, {} connections", plan.connections);
    let intake_many =
        intake_phase(&setup.socket, plan.connections, plan.phase, NOOP_POLICY).await?;
    wait_all_terminal(client, drain_limit).await?;

    eprintln!("bench: end-to-end runs, {} in flight", plan.concurrency);
    let audit_before = audit_rows(client).await?;
    let processes = cpu::Processes::find(admin, db_name, BENCH_NODE, daemon.pid()).await?;
    let cpu_before = cpu::Snapshot::take(&processes);
    let samples = runs_phase(setup, plan.concurrency, plan.phase).await?;
    let cpu_after = cpu::Snapshot::take(&processes);
    let runs = RunsPhase {
        samples,
        audit_rows: audit_rows(client).await? - audit_before,
        cpu: cpu_before
            .zip(cpu_after)
            .and_then(|(before, after)| cpu::Shares::between(&before, &after, &processes)),
    };
    wait_all_terminal(client, drain_limit).await?;

    eprintln!("bench: open loop, {} decisions/s offered", plan.open_rate);
    let open_loop = open_loop_phase(setup, plan.open_rate, plan.phase).await?;
    wait_all_terminal(client, drain_limit).await?;
    let completed_total: i64 = client
        .query_one(
            "SELECT count(*) FROM playbook_executions WHERE state = 'completed'",
            &[],
        )
        .await?
        .get(0);

    let idle_rss_kib = daemon.memory_kib("VmRSS")?;
    eprintln!("bench: parking {} runs at an approval gate", plan.parked);
    park(&setup.socket, plan.connections, plan.parked).await?;
    let limit = Duration::from_secs(60) + Duration::from_millis(20) * to_u32(plan.parked);
    wait_parked(client, plan.parked, limit).await?;
    let parked_rss_kib = daemon.memory_kib("VmRSS")?;
    let peak_rss_kib = daemon.memory_kib("VmHWM")?;
    eprintln!("bench: transactions while {} runs are parked", plan.parked);
    let parked_xacts_per_second = idle_transactions(client, admin, db_name).await?;
    Ok(Measured {
        intake_one,
        intake_many,
        runs,
        idle_rss_kib,
        parked_rss_kib,
        peak_rss_kib,
        completed_total,
        open_loop,
        parked_xacts_per_second,
    })
}

/// Latencies of one phase and how long it lasted.
#[derive(Debug, Default)]
struct Samples {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Samples {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Nearest-rank percentile, in milliseconds.
    fn percentile(&self, percent: usize) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = (percent * sorted.len()).div_ceil(100).max(1);
        sorted[rank.min(sorted.len()) - 1].as_secs_f64() * 1000.0
    }

    fn merge(parts: Vec<Vec<Duration>>, elapsed: Duration) -> Samples {
        Samples {
            latencies: parts.into_iter().flatten().collect(),
            elapsed,
        }
    }
}

/// `connections` clients, each sending its next decision when the previous reply arrives.
async fn intake_phase(
    socket: &Path,
    connections: usize,
    phase: Duration,
    policy: &'static str,
) -> Result<Samples, BenchError> {
    closed_loop(socket, connections, phase, move |mut conn| async move {
        let sent = Instant::now();
        conn.submit(policy).await?;
        Ok((conn, sent.elapsed()))
    })
    .await
}

/// What the end-to-end phase measured.
struct RunsPhase {
    samples: Samples,
    audit_rows: i64,
    /// `None` where `/proc` could not be read.
    cpu: Option<cpu::Shares>,
}

/// `concurrency` clients, each sending its next decision when the previous run has completed.
async fn runs_phase(
    setup: &Setup,
    concurrency: usize,
    phase: Duration,
) -> Result<Samples, BenchError> {
    with_completions(&setup.db_config, |waiters| {
        closed_loop(&setup.socket, concurrency, phase, move |mut conn| {
            let waiters = waiters.clone();
            async move {
                let sent = Instant::now();
                let execution_id = conn.submit(NOOP_POLICY).await?;
                let at = waiters.completed(execution_id).await?;
                Ok((conn, at.saturating_duration_since(sent)))
            }
        })
    })
    .await
}

/// Runs `phase` with a completion listener ([`Completions`]) started before it and stopped
/// after it, whatever the phase returned.
async fn with_completions<T, Fut>(
    db_config: &tokio_postgres::Config,
    phase: impl FnOnce(Waiters) -> Fut,
) -> Result<T, BenchError>
where
    Fut: Future<Output = Result<T, BenchError>>,
{
    let completions = Completions::start(db_config).await?;
    let result = phase(completions.waiters.clone()).await;
    completions.stop().await?;
    result
}

/// The closed loop both phases above run: `clients` connections, each doing one `round` (send
/// a decision, wait for what the phase measures, return the latency) after the other until
/// `phase` has passed.
async fn closed_loop<F, Fut>(
    socket: &Path,
    clients: usize,
    phase: Duration,
    round: F,
) -> Result<Samples, BenchError>
where
    F: Fn(Conn) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(Conn, Duration), BenchError>> + Send + 'static,
{
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let socket = socket.to_owned();
        let round = round.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&socket).await?;
            let mut latencies = Vec::new();
            while started.elapsed() < phase {
                let (next, latency) = round(conn).await?;
                conn = next;
                latencies.push(latency);
            }
            Ok::<_, BenchError>(latencies)
        }));
    }
    let parts = join_all(tasks).await;
    let elapsed = started.elapsed();
    Ok(Samples::merge(parts?, elapsed))
}

/// One phase's completion listener: the waiters it wakes, and how to stop it.
struct Completions {
    waiters: Waiters,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), BenchError>>,
}

impl Completions {
    /// Starts [`listen_completions`] and returns once its LISTEN is in effect, so no completion
    /// of the phase's first run is missed.
    async fn start(db_config: &tokio_postgres::Config) -> Result<Completions, BenchError> {
        let waiters = Waiters::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(listen_completions(
            db_config.clone(),
            waiters.clone(),
            stop.clone(),
        ));
        waiters.ready().await?;
        Ok(Completions {
            waiters,
            stop,
            task,
        })
    }

    /// Stops the listener; the error it ended with, if any.
    async fn stop(self) -> Result<(), BenchError> {
        self.stop.cancel();
        self.task
            .await
            .map_err(|e| BenchError::DaemonExited(format!("listener task failed: {e}")))?
    }
}

/// Executions the clients wait for, each with the channel that wakes its client; completions
/// heard before their client asked (a run can finish before its reply is read) are kept.
#[derive(Clone, Default)]
struct Waiters {
    inner: Arc<Mutex<WaiterState>>,
    listening: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct WaiterState {
    waiting: HashMap<Uuid, oneshot::Sender<(String, Instant)>>,
    early: HashMap<Uuid, (String, Instant)>,
    listening: bool,
    failed: Option<String>,
}

impl Waiters {
    /// Waits until `execution_id` is terminal; when its COMMIT was heard, or an error when it
    /// ended in another state than `completed` (a measured run must have run to its end).
    async fn completed(&self, execution_id: Uuid) -> Result<Instant, BenchError> {
        let (state, at) = self.wait(execution_id).await?;
        if state != "completed" {
            return Err(BenchError::NotCompleted {
                execution_id,
                state,
            });
        }
        Ok(at)
    }

    /// Waits until `execution_id` is terminal; its state and when its COMMIT was heard.
    async fn wait(&self, execution_id: Uuid) -> Result<(String, Instant), BenchError> {
        let rx = {
            let mut state = lock(&self.inner);
            if let Some(done) = state.early.remove(&execution_id) {
                return Ok(done);
            }
            if let Some(failed) = &state.failed {
                return Err(BenchError::DaemonExited(failed.clone()));
            }
            let (tx, rx) = oneshot::channel();
            state.waiting.insert(execution_id, tx);
            rx
        };
        rx.await.map_err(|_| {
            BenchError::DaemonExited(
                "the completion listener stopped (database unreachable?)".into(),
            )
        })
    }

    fn finish(&self, execution_id: Uuid, run_state: String, at: Instant) {
        let mut state = lock(&self.inner);
        match state.waiting.remove(&execution_id) {
            Some(tx) => {
                let _ = tx.send((run_state, at));
            }
            None => {
                state.early.insert(execution_id, (run_state, at));
            }
        }
    }

    /// Resolves once LISTEN is in effect (or the listener failed).
    async fn ready(&self) -> Result<(), BenchError> {
        loop {
            let notified = self.listening.notified();
            {
                let state = lock(&self.inner);
                if let Some(failed) = &state.failed {
                    return Err(BenchError::DaemonExited(failed.clone()));
                }
                if state.listening {
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    fn set_listening(&self, failed: Option<String>) {
        let mut state = lock(&self.inner);
        match failed {
            None => state.listening = true,
            Some(reason) => {
                state.failed = Some(reason);
                // Dropping the senders wakes every waiting client with the error.
                state.waiting.clear();
            }
        }
        drop(state);
        self.listening.notify_waiters();
    }
}

/// LISTENs for the completion trigger's NOTIFY and wakes the waiting clients, each with the
/// instant its notification arrived (no polling interval in the measured latency).
async fn listen_completions(
    db_config: tokio_postgres::Config,
    waiters: Waiters,
    stop: CancellationToken,
) -> Result<(), BenchError> {
    use futures::StreamExt;
    let (client, mut connection) = match db_config.connect(NoTls).await {
        Ok(pair) => pair,
        Err(error) => {
            waiters.set_listening(Some(format!(
                "the completion listener cannot connect: {error}"
            )));
            return Err(error.into());
        }
    };
    let (notes, mut received) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(note)) => {
                    let at = Instant::now();
                    if notes.send((note, at)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    if let Err(error) = client
        .batch_execute(&format!("LISTEN {COMPLETION_CHANNEL}"))
        .await
    {
        waiters.set_listening(Some(format!("LISTEN failed: {error}")));
        driver.abort();
        return Err(error.into());
    }
    waiters.set_listening(None);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            note = received.recv() => match note {
                Some((note, at)) => {
                    let Some((id, state)) = note.payload().split_once(' ') else { continue };
                    if let Ok(id) = id.parse::<Uuid>() {
                        waiters.finish(id, state.to_owned(), at);
                    }
                }
                None => {
                    waiters.set_listening(Some("the completion listener's connection closed".into()));
                    break;
                }
            }
        }
    }
    driver.abort();
    drop(client);
    Ok(())
}

/// Open loop: one decision every `1/rate` s for `phase`, sent at its scheduled time whatever
/// the earlier ones do (each on a connection of its own pool slot, so a slow reply does not
/// delay the next send); latency from the scheduled time to the completion's NOTIFY.
///
/// The send times come from a thread that sleeps on the kernel's high-resolution timer: tokio's
/// timer wheel has 1 ms ticks and wakes up to a tick late, which would add about 0.5 ms to
/// every measured latency, as much as the daemon's whole budget at this rate.
async fn open_loop_phase(setup: &Setup, rate: u32, phase: Duration) -> Result<Samples, BenchError> {
    let (parts, started) = with_completions(&setup.db_config, |waiters| async move {
        open_loop(&setup.socket, waiters, rate, phase).await
    })
    .await?;
    Ok(Samples::merge(parts, started.elapsed()))
}

/// [`open_loop_phase`] while its completion listener runs: the latencies by slot, and when the
/// first send was scheduled.
async fn open_loop(
    socket: &Path,
    waiters: Waiters,
    rate: u32,
    phase: Duration,
) -> Result<(Vec<Vec<Duration>>, Instant), BenchError> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let millis = u64::try_from(phase.as_millis()).unwrap_or(u64::MAX);
    let count =
        usize::try_from(millis.saturating_mul(u64::from(rate)).div_ceil(1000).max(1)).unwrap_or(1);
    // Enough connections that each waits ~50 ms between its sends.
    let slots = (rate as usize / 20).clamp(1, 64);
    let mut senders = Vec::with_capacity(slots);
    let mut tasks = Vec::with_capacity(slots);
    for _ in 0..slots {
        let (send, mut scheduled_sends) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        senders.push(send);
        let mut conn = Conn::open(socket).await?;
        let waiters = waiters.clone();
        tasks.push(tokio::spawn(async move {
            let mut pending = Vec::new();
            while let Some(scheduled) = scheduled_sends.recv().await {
                let execution_id = conn.submit(NOOP_POLICY).await?;
                let waiters = waiters.clone();
                pending.push(tokio::spawn(async move {
                    let at = waiters.completed(execution_id).await?;
                    Ok::<_, BenchError>(at.saturating_duration_since(scheduled))
                }));
            }
            let mut latencies = Vec::with_capacity(pending.len());
            for waiting in pending {
                latencies.push(waiting.await.map_err(|e| {
                    BenchError::DaemonExited(format!("an open-loop waiter failed: {e}"))
                })??);
            }
            Ok::<_, BenchError>(latencies)
        }));
    }
    let started = Instant::now() + Duration::from_millis(100);
    let ticker = std::thread::spawn(move || {
        for index in 0..count {
            let scheduled = started + interval * to_u32(index);
            let now = Instant::now();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            // A slot that failed has dropped its receiver; its error is reported below.
            let _ = senders[index % senders.len()].send(scheduled);
        }
    });
    let parts = join_all(tasks).await;
    let _ = tokio::task::spawn_blocking(move || ticker.join()).await;
    Ok((parts?, started))
}

/// Transactions per second the daemon commits (or rolls back) while it has runs parked and
/// nothing happens: `pg_stat_database` of the bench database, read from another database so
/// the reading is not counted, with autovacuum switched off on the bench database's tables
/// first (and any running worker waited out): autovacuum's transactions are counted there too,
/// and the tables the parking phase just filled would otherwise be what the figure measures.
/// The daemon is then the only client of that database. The window starts [`STATS_SETTLE`]
/// after the parking phase, once every counter of that phase has reached the view.
async fn idle_transactions(
    client: &tokio_postgres::Client,
    admin: &tokio_postgres::Client,
    db_name: &str,
) -> Result<f64, BenchError> {
    client.batch_execute(PAUSE_AUTOVACUUM).await?;
    let started = Instant::now();
    loop {
        let workers: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE backend_type = 'autovacuum worker' AND datname = $1",
                &[&db_name],
            )
            .await?
            .get(0);
        if workers == 0 {
            break;
        }
        if started.elapsed() > AUTOVACUUM_LIMIT {
            return Err(BenchError::Timeout {
                what: format!("{workers} autovacuum workers still busy on the bench database"),
                limit: AUTOVACUUM_LIMIT,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let read = || async move {
        let row = admin
            .query_one(
                "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database WHERE datname = $1",
                &[&db_name],
            )
            .await?;
        Ok::<i64, BenchError>(row.get(0))
    };
    tokio::time::sleep(STATS_SETTLE).await;
    let before = read().await?;
    let started = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let after = read().await?;
    // Both reads lag the daemon alike (an idle backend reports up to STATS_LAG late): the lag
    // shifts the stretch whose transactions are counted but does not change its length, the
    // time between the reads. Dividing by less overstates the rate: until stop 36 the bench
    // counted about 21 s of transactions and divided by 10 s.
    Ok((after - before).max(0) as f64 / started.elapsed().as_secs_f64())
}

/// Sends `count` decisions for the gated playbook over `connections` connections.
async fn park(socket: &Path, connections: usize, count: usize) -> Result<(), BenchError> {
    let connections = connections.min(count).max(1);
    let mut tasks = Vec::with_capacity(connections);
    for index in 0..connections {
        let share = count / connections + usize::from(index < count % connections);
        let socket = socket.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&socket).await?;
            for _ in 0..share {
                conn.submit(GATED_POLICY).await?;
            }
            Ok::<_, BenchError>(Vec::new())
        }));
    }
    join_all(tasks).await.map(|_| ())
}

async fn wait_parked(
    client: &tokio_postgres::Client,
    count: usize,
    limit: Duration,
) -> Result<(), BenchError> {
    let waiting = "SELECT count(*) FROM playbook_executions \
                   WHERE playbook_id = 'bench-gated' AND state = 'awaiting_approval'";
    let wait = CountWait {
        every: Duration::from_millis(200),
        limit,
    };
    wait.until(client, waiting, &[], |waiting| {
        (usize::try_from(waiting).unwrap_or(0) >= count)
            .then_some(())
            .ok_or_else(|| format!("{waiting} of {count} runs waiting for approval"))
    })
    .await
}

/// Waits until no execution is left unfinished, so one phase's backlog does not run into the next.
async fn wait_all_terminal(
    client: &tokio_postgres::Client,
    limit: Duration,
) -> Result<(), BenchError> {
    let terminal: Vec<&str> = RunState::ALL
        .iter()
        .filter(|state| state.is_terminal())
        .map(|state| state.as_str())
        .collect();
    let open = "SELECT count(*) FROM playbook_executions WHERE NOT (state = ANY($1))";
    let wait = CountWait {
        every: Duration::from_millis(50),
        limit,
    };
    wait.until(client, open, &[&terminal], |open| {
        (open == 0)
            .then_some(())
            .ok_or_else(|| format!("{open} executions unfinished"))
    })
    .await
}

/// Polls a `count(*)` query until a condition holds, or gives up after a limit.
struct CountWait {
    every: Duration,
    limit: Duration,
}

impl CountWait {
    /// Runs `query` every `self.every` until `done` accepts its count; `done` says what is still
    /// missing otherwise, which is the error after `self.limit`.
    async fn until(
        &self,
        client: &tokio_postgres::Client,
        query: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        done: impl Fn(i64) -> Result<(), String>,
    ) -> Result<(), BenchError> {
        let started = Instant::now();
        loop {
            let count: i64 = client.query_one(query, params).await?.get(0);
            let Err(missing) = done(count) else {
                return Ok(());
            };
            if started.elapsed() > self.limit {
                return Err(BenchError::Timeout {
                    what: missing,
                    limit: self.limit,
                });
            }
            tokio::time::sleep(self.every).await;
        }
    }
}

async fn audit_rows(client: &tokio_postgres::Client) -> Result<i64, BenchError> {
    Ok(client
        .query_one("SELECT count(*) FROM playbook_audit_log", &[])
        .await?
        .get(0))
}

/// One autocommitted single-row INSERT after another: each its own transaction and WAL flush.
async fn baseline(client: &tokio_postgres::Client, phase: Duration) -> Result<Samples, BenchError> {
    client
        .batch_execute(
            "CREATE TABLE bench_baseline (id bigint PRIMARY KEY, event_type text NOT NULL, \
             event_data jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let insert = client
        .prepare("INSERT INTO bench_baseline (id, event_type, event_data) VALUES ($1, $2, $3)")
        .await?;
    let started = Instant::now();
    let mut rows: i64 = 0;
    let mut latencies = Vec::new();
    while started.elapsed() < phase {
        rows += 1;
        let data = json!({"actor": "system", "row": rows});
        let sent = Instant::now();
        client
            .execute(&insert, &[&rows, &"bench.baseline", &data])
            .await?;
        latencies.push(sent.elapsed());
    }
    let elapsed = started.elapsed();
    client.batch_execute("DROP TABLE bench_baseline").await?;
    Ok(Samples { latencies, elapsed })
}

/// The same from `connections` connections at once (pgbench-style clients): rows/s in all.
async fn baseline_many(
    db_config: &tokio_postgres::Config,
    connections: usize,
    phase: Duration,
) -> Result<f64, BenchError> {
    let setup = connect(db_config).await?;
    setup
        .batch_execute(
            "CREATE TABLE bench_baseline_many (id bigint PRIMARY KEY, event_type text NOT NULL, \
             event_data jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(connect(db_config).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for (index, client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let insert = client
                .prepare("INSERT INTO bench_baseline_many (id, event_type, event_data) VALUES ($1, $2, $3)")
                .await?;
            let mut latencies = Vec::new();
            let mut id = i64::try_from(index).unwrap_or(0) << 40;
            while started.elapsed() < phase {
                id += 1;
                let data = json!({"actor": "system", "row": id});
                let sent = Instant::now();
                client.execute(&insert, &[&id, &"bench.baseline", &data]).await?;
                latencies.push(sent.elapsed());
            }
            Ok::<_, BenchError>(latencies)
        }));
    }
    let parts = join_all(tasks).await?;
    let elapsed = started.elapsed();
    setup
        .batch_execute("DROP TABLE bench_baseline_many")
        .await?;
    Ok(Samples::merge(parts, elapsed).rate())
}

/// One connection to decisions.sock: a line out, a line back.
struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    reply: String,
}

impl Conn {
    async fn open(socket: &Path) -> Result<Conn, BenchError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| BenchError::Io {
                what: format!("connect {}", socket.display()),
                source,
            })?;
        let (read, writer) = stream.into_split();
        Ok(Conn {
            reader: BufReader::new(read),
            writer,
            reply: String::with_capacity(256),
        })
    }

    /// Sends a fresh decision for `policy` and returns the accepted execution id.
    async fn submit(&mut self, policy: &str) -> Result<Uuid, BenchError> {
        let mut line = decision(policy);
        line.push(b'\n');
        let io = |source| BenchError::Io {
            what: "decisions.sock".into(),
            source,
        };
        self.writer.write_all(&line).await.map_err(io)?;
        self.reply.clear();
        let read = tokio::time::timeout(REPLY_LIMIT, self.reader.read_line(&mut self.reply))
            .await
            .map_err(|_| BenchError::Timeout {
                what: "reply on decisions.sock".into(),
                limit: REPLY_LIMIT,
            })?
            .map_err(io)?;
        if read == 0 {
            return Err(BenchError::DaemonExited(
                "decisions.sock closed the connection".into(),
            ));
        }
        let reply: Value = serde_json::from_str(&self.reply)
            .map_err(|_| BenchError::Refused(self.reply.trim().to_owned()))?;
        match (
            reply.get("status").and_then(Value::as_str),
            reply
                .get("execution_id")
                .and_then(Value::as_str)
                .and_then(|id| id.parse::<Uuid>().ok()),
        ) {
            (Some("accepted"), Some(id)) => Ok(id),
            _ => Err(BenchError::Refused(self.reply.trim().to_owned())),
        }
    }
}

/// A fresh decision (new nonce, issued now) for `policy`.
fn decision(policy: &str) -> Vec<u8> {
    let issued_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    json!({
        "decision_id": format!("bench-{}", Uuid::new_v4().simple()),
        "nonce": Uuid::new_v4().simple().to_string(),
        "issued_at": issued_at,
        "policy": policy,
        "outcome": "run",
        "org_id": "bench",
        "severity": "low",
        "subject": {},
    })
    .to_string()
    .into_bytes()
}

/// The bench's private directory; removed on drop.
struct BenchDir {
    path: PathBuf,
}

/// What the daemon was given: paths the bench needs again.
struct Setup {
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    db_config: tokio_postgres::Config,
}

impl BenchDir {
    fn create() -> Result<BenchDir, BenchError> {
        let path = std::env::temp_dir().join(format!(
            "pbd-bench-{}-{}",
            std::process::id(),
            Uuid::new_v4().simple()
        ));
        // 0700: the registry refuses playbook and key directories other users could write to.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| BenchError::Io {
                what: format!("create {}", path.display()),
                source,
            })?;
        Ok(BenchDir { path })
    }

    /// Keys, signed playbooks and bindings, and the daemon's config.
    fn write_setup(
        &self,
        plan: &Plan,
        db_config: &tokio_postgres::Config,
    ) -> Result<Setup, BenchError> {
        for sub in ["playbooks", "trusted-keys", "keys", "quarantine", "run"] {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(self.path.join(sub))
                .map_err(|source| self.io_error(sub, source))?;
        }
        let mut signers = Vec::new();
        for author in ["author-a", "author-b"] {
            let prefix = self.path.join("keys").join(author);
            Signer::keygen(Algorithm::Ed25519, &prefix)?;
            let key_path = signature::with_suffix(&prefix, ".key");
            let pem = std::fs::read_to_string(&key_path)
                .map_err(|source| self.io_error("keys", source))?;
            let signer = Signer::load(&pem, &key_path)?;
            self.write(
                &format!("trusted-keys/{author}.pub"),
                signer.public_key_pem().as_bytes(),
            )?;
            signers.push(signer);
        }
        // Dual-signed, as bindings (and critical playbooks) require.
        for (relative, text) in [
            ("playbooks/noop-3.yaml", NOOP_3),
            ("playbooks/bench-gated.yaml", GATED),
            ("bindings.yaml", BINDINGS),
        ] {
            self.write(relative, text.as_bytes())?;
            self.write(
                &format!("{relative}.sig"),
                &signers[0].sign(text.as_bytes()),
            )?;
            self.write(
                &format!("{relative}.sig.2"),
                &signers[1].sign(text.as_bytes()),
            )?;
        }
        let config = format!(
            r#"# Written by `playbookd bench`; the database URL comes from {DATABASE_URL_ENV}.
node_id = "{BENCH_NODE}"
[database]
url = "postgres://bench@127.0.0.1/overridden"
pool_size = 16
[paths]
playbooks = "{dir}/playbooks"
trusted_keys = "{dir}/trusted-keys"
bindings = "{dir}/bindings.yaml"
decision_socket = "{dir}/run/decisions.sock"
control_socket = "{dir}/run/control.sock"
node_key = "{dir}/node.key"
[status]
listen = "127.0.0.1:0"
[intake]
allowed_uids = [{uid}]
max_accepted_per_second = 1000000
max_backlog = 1000000
max_connections = 2048
max_connections_per_uid = 2048
[executor]
max_concurrent_runs = {runs}
[actions.file]
quarantine_dir = "{dir}/quarantine"
[control]
"#,
            dir = self.path.display(),
            // The bench drives decisions.sock from this process: it is the policy engine.
            uid = nix::unistd::geteuid().as_raw(),
            // Every parked run holds an executor slot while it waits at its gate.
            runs = plan.parked + 1024,
        );
        self.write("playbookd.toml", config.as_bytes())?;
        Ok(Setup {
            config: self.path.join("playbookd.toml"),
            socket: self.path.join("run/decisions.sock"),
            log: self.path.join("playbookd.log"),
            db_config: db_config.clone(),
        })
    }

    fn write(&self, relative: &str, bytes: &[u8]) -> Result<(), BenchError> {
        std::fs::write(self.path.join(relative), bytes)
            .map_err(|source| self.io_error(relative, source))
    }

    fn io_error(&self, relative: &str, source: std::io::Error) -> BenchError {
        BenchError::Io {
            what: format!("write {}", self.path.join(relative).display()),
            source,
        }
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `playbookd serve` as a child process; killed on drop if `stop` was not reached.
struct ChildDaemon {
    child: Child,
    log: PathBuf,
}

impl ChildDaemon {
    fn spawn(setup: &Setup, database_url: &str) -> Result<ChildDaemon, BenchError> {
        let exe = std::env::current_exe().map_err(|source| BenchError::Io {
            what: "locate the playbookd executable".into(),
            source,
        })?;
        let log = std::fs::File::create(&setup.log).map_err(|source| BenchError::Io {
            what: format!("create {}", setup.log.display()),
            source,
        })?;
        let child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(&setup.config)
            // Through the environment, never the config file: the URL may carry a password.
            .env(DATABASE_URL_ENV, database_url)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| BenchError::Io {
                what: "start playbookd serve".into(),
                source,
            })?;
        Ok(ChildDaemon {
            child,
            log: setup.log.clone(),
        })
    }

    /// Ready once decisions.sock answers: an empty object must come back `rejected`.
    async fn wait_ready(&self, socket: &Path, limit: Duration) -> Result<(), BenchError> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.exit_status() {
                return Err(BenchError::DaemonExited(format!(
                    "{status}; log:\n{}",
                    self.log_tail(30)
                )));
            }
            if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(2), probe(socket)).await
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(BenchError::NotReady(limit))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A line of /proc/PID/status (`VmRSS`, `VmHWM`), in KiB.
    fn memory_kib(&self, field: &str) -> Result<u64, BenchError> {
        let path = format!("/proc/{}/status", self.child.id());
        let text = std::fs::read_to_string(&path).map_err(|source| BenchError::Io {
            what: format!("read {path}"),
            source,
        })?;
        text.lines()
            .find_map(|line| {
                let rest = line.strip_prefix(field)?.strip_prefix(':')?;
                rest.trim().strip_suffix("kB")?.trim().parse().ok()
            })
            .ok_or_else(|| BenchError::Io {
                what: format!("no {field} in {path}"),
                source: std::io::Error::from(std::io::ErrorKind::InvalidData),
            })
    }

    fn exit_status(&self) -> Option<String> {
        let path = format!("/proc/{}/stat", self.child.id());
        // A zombie still has its /proc entry; its state letter is Z.
        match std::fs::read_to_string(path) {
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z')) =>
            {
                Some("exited".into())
            }
            Ok(_) => None,
            Err(_) => Some("gone".into()),
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then SIGKILL if it has not stopped within `STOP_LIMIT`.
    async fn stop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let started = Instant::now();
        while started.elapsed() < STOP_LIMIT {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("bench: the daemon did not stop within {STOP_LIMIT:?} of SIGTERM; killing it");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn probe(socket: &Path) -> std::io::Result<bool> {
    let mut stream = UnixStream::connect(socket).await?;
    stream.write_all(b"{}\n").await?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).await?;
    Ok(reply.contains("\"rejected\""))
}

/// The result table: one number per row, with its ratio to the baseline where it is a rate.
struct Table {
    baseline: f64,
    rows: Vec<(String, String, &'static str, String)>,
}

impl Table {
    fn new(baseline: f64) -> Table {
        let mut table = Table {
            baseline,
            rows: Vec::new(),
        };
        table.rate(
            "PostgreSQL single-row INSERT+COMMIT, 1 connection (baseline)",
            baseline,
            "rows/s",
        );
        table
    }

    fn rate(&mut self, label: &str, value: f64, unit: &'static str) {
        let ratio = format!("{:.2}x", value / self.baseline);
        self.rows
            .push((label.to_owned(), format!("{value:.0}"), unit, ratio));
    }

    /// A ratio of two figures measured in this run (a target in issue #16).
    fn ratio(&mut self, label: &str, value: f64) {
        self.rows.push((
            label.to_owned(),
            format!("{value:.2}"),
            "ratio",
            String::new(),
        ));
    }

    /// A figure without a baseline ratio.
    fn plain(&mut self, label: &str, value: f64, unit: &'static str) {
        self.rows
            .push((label.to_owned(), format!("{value:.1}"), unit, String::new()));
    }

    /// The CPU of the runs phase, in cores, by process.
    fn cpu(&mut self, cpu: &cpu::Shares) {
        let busy = format!("  CPU busy during the runs phase, of {} cores", cpu.cores);
        let figures = [
            (busy.as_str(), Some(cpu.busy)),
            ("    daemon (playbookd serve)", Some(cpu.daemon)),
            ("    audit writer's chain connection's backend", cpu.writer),
            ("    audit writer's spare connection's backend", cpu.spare),
            ("    the bench database's other backends", cpu.backends),
            ("    PostgreSQL background processes", cpu.background),
            ("    bench client (this process)", Some(cpu.bench)),
        ];
        for (label, value) in figures {
            self.rows.push(match value {
                Some(value) => (
                    label.to_owned(),
                    format!("{value:.2}"),
                    "cores",
                    String::new(),
                ),
                None => (
                    label.to_owned(),
                    "n/a".into(),
                    "",
                    "server not on this machine".into(),
                ),
            });
        }
    }

    fn micros(&mut self, label: &str, value: f64) {
        self.rows
            .push((label.to_owned(), format!("{value:.3}"), "µs", String::new()));
    }

    fn percent(&mut self, label: &str, value: f64) {
        self.rows
            .push((label.to_owned(), format!("{value:.4}"), "%", String::new()));
    }

    fn millis(&mut self, label: &str, value: f64) {
        self.rows
            .push((label.to_owned(), format!("{value:.2}"), "ms", String::new()));
    }

    fn mebibytes(&mut self, label: &str, kib: u64) {
        self.rows.push((
            label.to_owned(),
            format!("{:.1}", kib as f64 / 1024.0),
            "MiB",
            String::new(),
        ));
    }

    /// A Markdown table (it pastes into the README as is).
    fn render(&self) -> String {
        let width = self
            .rows
            .iter()
            .map(|row| row.0.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = format!(
            "| {:width$} | {:>10} | {:<11} | {:>11} |\n|{}|{}:|{}|{}:|\n",
            "metric",
            "value",
            "unit",
            "vs baseline",
            "-".repeat(width + 2),
            "-".repeat(11),
            "-".repeat(13),
            "-".repeat(12),
        );
        for (label, value, unit, ratio) in &self.rows {
            let _ = writeln!(
                out,
                "| {label:width$} | {value:>10} | {unit:<11} | {ratio:>11} |"
            );
        }
        out
    }
}

/// Chain length the in-process Merkle measurement runs over.
const MERKLE_ROWS: u64 = 1_000_000;

struct MerkleCost {
    per_row_us: f64,
    per_checkpoint_us: f64,
}

/// The audit writer's Merkle work, measured in process with the daemon's own code: the frontier
/// update each committed row costs ([`crate::merkle::Frontier::push`]) over a chain of
/// [`MERKLE_ROWS`] rows, and what each checkpoint adds (the root from the frontier and the
/// Ed25519 signature of the C2SP note).
fn merkle_cost() -> MerkleCost {
    use crate::merkle::{Frontier, Hash};
    use ed25519_dalek::Signer;
    let mut frontier = Frontier::new();
    let mut hash: Hash = [7; 32];
    let started = Instant::now();
    for i in 0..MERKLE_ROWS {
        hash[..8].copy_from_slice(&i.to_be_bytes());
        frontier.push(&hash);
    }
    let per_row_us = started.elapsed().as_secs_f64() * 1e6 / MERKLE_ROWS as f64;
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let verifying = key.verifying_key();
    const CHECKPOINTS: u32 = 200;
    let started = Instant::now();
    let mut notes = 0;
    for _ in 0..CHECKPOINTS {
        let head = crate::note::TreeHead {
            origin: crate::note::origin("bench"),
            size: frontier.size(),
            root: frontier.root(),
            chain_head: hash,
        };
        notes += crate::note::signed_note(&head, &verifying, |text| key.sign(text)).len();
    }
    let per_checkpoint_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(CHECKPOINTS);
    // Keeps the notes from being optimized away.
    debug_assert!(notes > 0);
    MerkleCost {
        per_row_us,
        per_checkpoint_us,
    }
}

/// `url` with its database name replaced by `name`; the rest (user, password, host, options)
/// is kept byte for byte.
fn with_database(url: &str, name: &str) -> Result<String, BenchError> {
    let scheme_end = ["postgres://", "postgresql://"]
        .iter()
        .find(|scheme| url.starts_with(*scheme))
        .map(|scheme| scheme.len())
        .ok_or(BenchError::BadUrl)?;
    let rest = &url[scheme_end..];
    let (before_query, query) = match rest.find('?') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    let authority = before_query.split('/').next().unwrap_or_default();
    Ok(format!("{}{authority}/{name}{query}", &url[..scheme_end]))
}

/// `url` connecting as `user` (a `user=` parameter overrides the URL's user name).
fn with_user(url: &str, user: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}user={user}")
}

async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client, BenchError> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("bench: database connection lost: {error}");
        }
    });
    Ok(client)
}

async fn join_all(
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<Duration>, BenchError>>>,
) -> Result<Vec<Vec<Duration>>, BenchError> {
    let mut parts = Vec::with_capacity(tasks.len());
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(latencies)) => parts.push(latencies),
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(join) => {
                first_error.get_or_insert(BenchError::DaemonExited(format!(
                    "a client task failed: {join}"
                )));
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(parts),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned map only means another client task panicked; its entries are still valid.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(0.1..=3600.0).contains(&seconds) {
        return Err("expected 0.1 to 3600 seconds".into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

const NOOP_POLICY: &str = "bench.noop";
/// The daemon's node id.
const BENCH_NODE: &str = "bench";
const GATED_POLICY: &str = "bench.gated";
/// Clients of the many-connection baseline (issue #16 compares with 16).
const BASELINE_CONNECTIONS: usize = 16;
/// Channel of [`COMPLETION_TRIGGER`].
const COMPLETION_CHANNEL: &str = "bench_completed";
/// Added by the bench to its own database once the daemon has created the schema: a run that
/// reaches a terminal state NOTIFYs its id and state at its COMMIT.
const COMPLETION_TRIGGER: &str = "\
    CREATE FUNCTION bench_notify_terminal() RETURNS trigger LANGUAGE plpgsql AS $$ \
    BEGIN PERFORM pg_notify('bench_completed', NEW.execution_id::text || ' ' || NEW.state); RETURN NULL; END $$; \
    CREATE TRIGGER bench_terminal AFTER UPDATE OF state ON playbook_executions FOR EACH ROW \
    WHEN (NEW.state IN ('completed', 'rolled_back', 'safe_halted', 'cancelled', 'timed_out', 'rejected')) \
    EXECUTE FUNCTION bench_notify_terminal();";
/// Switches autovacuum off on every table of the bench database (as the superuser that owns
/// the run): its transactions would count as the daemon's in the idle window.
const PAUSE_AUTOVACUUM: &str = "\
    DO $$ DECLARE t regclass; BEGIN \
    FOR t IN SELECT c.oid::regclass FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg_toast%' LOOP \
      EXECUTE format('ALTER TABLE %s SET (autovacuum_enabled = off, toast.autovacuum_enabled = off)', t); \
    END LOOP; END $$";
/// How long the idle phase waits for running autovacuum workers to finish.
const AUTOVACUUM_LIMIT: Duration = Duration::from_secs(120);
/// How long PostgreSQL may keep an idle backend's statistics before they reach pg_stat_database.
const STATS_LAG: Duration = Duration::from_secs(10);
/// How long the idle phase counts: twice [`STATS_LAG`], and a whole number of the idle
/// daemon's periods (node heartbeat every 5 s, resume sweep every 10 s).
const IDLE_WINDOW: Duration = Duration::from_secs(2 * STATS_LAG.as_secs());
/// How long PostgreSQL 15 may keep a busy backend's statistics: it reports them within a
/// second when it can, but while the shared entries are contended it retries every 10 s and
/// forces them out only after 60 s (`PGSTAT_MAX_INTERVAL`). After the parking phase's thousands
/// of transactions on a loaded machine, counters kept arriving for 20 s and more (sampled every
/// second: 42, 118, 30, 13, 19 transactions, then 1-4/s), which an 11 s pause
/// counted as the idle daemon's.
const STATS_SETTLE: Duration = Duration::from_secs(61);
const READY_LIMIT: Duration = Duration::from_secs(60);
const REPLY_LIMIT: Duration = Duration::from_secs(30);
const STOP_LIMIT: Duration = Duration::from_secs(60);

const NOOP_3: &str = include_str!("../../playbooks/noop-3.yaml");
/// Its only step is `risk: high`: every run stops at the approval gate and waits there.
const GATED: &str = "\
id: bench-gated
version: 1
name: One high-risk no-op step behind an approval gate
owners: {technical: sec-eng@example.org, operational: soc@example.org}
steps:
  - {id: gated, action: noop, risk: high, rollback: {action: noop}}
";
const BINDINGS: &str = "\
bindings:
  - {policy: bench.noop, outcome: run, playbook: noop-3}
  - {policy: bench.gated, outcome: run, playbook: bench-gated}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced_and_the_rest_kept() {
        for (url, name, expected) in [
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                "pbd_bench_1",
                "postgres://postgres@127.0.0.1:5432/pbd_bench_1",
            ),
            (
                "postgresql://u:p@h/db?sslmode=disable",
                "x",
                "postgresql://u:p@h/x?sslmode=disable",
            ),
            (
                "postgres://playbookd@/playbookd?host=/run/postgresql",
                "x",
                "postgres://playbookd@/x?host=/run/postgresql",
            ),
            ("postgres://h:5432", "x", "postgres://h:5432/x"),
        ] {
            assert_eq!(with_database(url, name).unwrap(), expected, "{url}");
        }
        assert!(matches!(
            with_database("host=/tmp dbname=x", "y"),
            Err(BenchError::BadUrl)
        ));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples = Samples {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            elapsed: Duration::from_secs(2),
        };
        assert_eq!(samples.percentile(50), 50.0);
        assert_eq!(samples.percentile(99), 99.0);
        assert_eq!(samples.percentile(100), 100.0);
        assert_eq!(samples.rate(), 50.0);
    }

    #[test]
    fn the_gated_playbook_parks_at_a_gate_and_the_bindings_parse() {
        let gated = crate::registry::playbook::parse_playbook(GATED.as_bytes()).unwrap();
        assert_eq!(
            crate::registry::playbook::effective_risk(&gated.steps[0]),
            Some(crate::registry::model::RiskTier::High)
        );
        let bindings = crate::registry::playbook::parse_bindings(BINDINGS.as_bytes()).unwrap();
        assert_eq!(bindings.bindings.len(), 2);
    }
}
