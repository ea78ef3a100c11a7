//! Issue #16: runs parked at an approval gate cost no periodic queries, and a decision with its
//! run costs a known number of round trips. The daemon reaches PostgreSQL through a proxy in
//! this test that counts, on the wire, every statement the daemon sends (simple `Query` and
//! extended-protocol `Execute` messages, on every connection it opens, pooled or dedicated) and,
//! per connection, the flights (what the client sends after the server last answered): exact,
//! and independent of when PostgreSQL publishes its statistics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use playbookd::config::Config;
use playbookd::daemon::Daemon;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::harness::{GATED_NOOP, NOOP_3, bindings, decision, send_json, wait_run_state};
use crate::helpers::{DaemonDir, TestDb, query_value};

/// Runs left waiting at their gate.
const PARKED: i64 = 200;
/// The counted window: more than two heartbeats (5 s) and one resume sweep (10 s).
const WINDOW: Duration = Duration::from_secs(12);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_runs_make_no_periodic_queries_of_their_own() {
    let db = TestDb::new().await;
    let wire = WireCounter::start(&db.runtime_config()).await;
    let executor = "[executor]\nmax_concurrent_runs = 1000\nmax_runs_per_org = 1000\n";
    let daemon = Proxied::serve(&wire, &db, executor, "gated-noop", GATED_NOOP).await;
    let socket = daemon.dir.path("run/decisions.sock");
    for _ in 0..PARKED {
        let reply = send_json(&socket, &decision("p", "o", json!({}))).await;
        assert_eq!(reply["status"], "accepted", "{reply}");
    }
    let client = db.client().await;
    let started = Instant::now();
    loop {
        let waiting: i64 = query_value(
            &client,
            "SELECT count(*) FROM playbook_executions WHERE state = 'awaiting_approval'",
            &[],
        )
        .await;
        if waiting == PARKED {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{waiting} of {PARKED} runs parked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The last gates' openings (and their replies) are on the wire by now.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let before = wire.statements.load(Ordering::SeqCst);
    tokio::time::sleep(WINDOW).await;
    let counted = wire.statements.load(Ordering::SeqCst) - before;
    // The heartbeat statement every 5 s, the resume sweep every 10 s (with the pool's check of
    // the connection it hands out): about 7 in the window. One re-read per parked run would be
    // 200 at least; the daemon before issue #16's fix sent about 19 (three statements and three
    // pool checks per heartbeat).
    let bound = WINDOW.as_secs();
    assert!(
        counted <= bound,
        "{counted} statements in {WINDOW:?} with {PARKED} runs parked (at most {bound}, one a \
         second); first statements seen: {:?}",
        wire.seen()
    );
    println!("idle: {counted} statements in {WINDOW:?} with {PARKED} runs parked");
    daemon.stop().await;
}

/// A decision with its noop-3 run, one at a time: on the audit writer's connection, one round
/// trip for each of 4 transactions (the records' checked changes and their audit INSERT as one
/// statement: `store::audit::write_in_one_flight`): the admission with the run's start and its
/// first step's, the reply after that commit; then each step's end with the next one's start,
/// the last with the run's completion; 4 commits. The proxy may count a flight too many when
/// the server answers part of a flight before the rest reached it, never one too few: the
/// fewest of several runs is the cost. (Before one-flight writes: 8.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_with_its_noop_run_costs_four_round_trips_on_the_writers_connection() {
    let db = TestDb::new().await;
    let wire = WireCounter::start(&db.runtime_config()).await;
    let daemon = Proxied::serve(&wire, &db, "", "noop-3", NOOP_3).await;
    let socket = daemon.dir.path("run/decisions.sock");
    let client = db.client().await;
    let mut costs = Vec::new();
    for _ in 0..12 {
        let before = wire.writer();
        let reply = send_json(&socket, &decision("p", "o", json!({}))).await;
        assert_eq!(reply["status"], "accepted", "{reply}");
        let id = reply["execution_id"].as_str().unwrap().to_owned();
        wait_run_state(&client, &id, "completed", Duration::from_secs(30)).await;
        // The completion's reply reaches the daemon after the state is visible.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = wire.writer();
        costs.push((after.0 - before.0, after.1 - before.1));
    }
    let fewest = costs.iter().map(|&(flights, _)| flights).min().unwrap();
    println!(
        "decision with its noop-3 run: (round trips, commits) on the writer's connection {costs:?}"
    );
    assert!(fewest <= 4, "{costs:?}");
    assert!(costs.iter().all(|&(_, commits)| commits == 4), "{costs:?}");
    daemon.stop().await;
}

/// A daemon reaching its database through a [`WireCounter`].
struct Proxied {
    dir: DaemonDir,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), playbookd::daemon::DaemonError>>,
}

impl Proxied {
    /// Serves `playbook` (its id `id`), bound to policy `p` and outcome `o`, with `executor`
    /// added to the configuration.
    async fn serve(
        wire: &WireCounter,
        db: &TestDb,
        executor: &str,
        id: &str,
        playbook: &str,
    ) -> Proxied {
        let dir = DaemonDir::new();
        let config = dir.write_config_url(&wire.url(db), "node-a", executor);
        dir.write_signed(&format!("playbooks/{id}-v1.yaml"), playbook, true);
        dir.write_signed("bindings.yaml", &bindings(&[("p", "o", id)]), true);
        let daemon = Daemon::build(Config::load(&config).expect("config"))
            .await
            .expect("daemon builds");
        let stop = CancellationToken::new();
        let task = tokio::spawn(daemon.run_until_stopped(stop.clone()));
        Proxied { dir, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().expect("clean stop");
    }
}

/// A TCP proxy to the test server that counts the statements its clients send.
struct WireCounter {
    port: u16,
    statements: Arc<AtomicU64>,
    /// The first bytes of each counted statement's message, for the failure message.
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    connections: Arc<std::sync::Mutex<Vec<Arc<WireConnection>>>>,
}

/// What one proxied connection carried.
#[derive(Default)]
struct WireConnection {
    /// The server sent something since the client's last bytes.
    server_spoke: AtomicBool,
    flights: AtomicU64,
    commits: AtomicU64,
    /// It prepared the audit INSERT: the audit writer's connection.
    writer: AtomicBool,
}

impl WireCounter {
    async fn start(target: &tokio_postgres::Config) -> WireCounter {
        let upstream = match target.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => {
                format!(
                    "{host}:{}",
                    target.get_ports().first().copied().unwrap_or(5432)
                )
            }
            other => panic!("the counting proxy needs a TCP test server, not {other:?}"),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let statements = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (counter, log, all) = (statements.clone(), seen.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let outbound = TcpStream::connect(&upstream).await.unwrap();
                let (counter, log) = (counter.clone(), log.clone());
                let connection = Arc::new(WireConnection::default());
                all.lock().unwrap().push(connection.clone());
                tokio::spawn(async move {
                    let (mut from_client, mut to_client) = inbound.into_split();
                    let (mut from_server, mut to_server) = outbound.into_split();
                    let answers = connection.clone();
                    tokio::spawn(async move {
                        let mut chunk = vec![0; 64 * 1024];
                        while let Ok(n @ 1..) = from_server.read(&mut chunk).await {
                            answers.server_spoke.store(true, Ordering::SeqCst);
                            if to_client.write_all(&chunk[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                    let count = Counted {
                        statements: &counter,
                        seen: &log,
                        connection: &connection,
                    };
                    let _ = forward_counting(&mut from_client, &mut to_server, count).await;
                });
            }
        });
        WireCounter {
            port,
            statements,
            seen,
            connections,
        }
    }

    /// The URL of `db` through this proxy.
    fn url(&self, db: &TestDb) -> String {
        let runtime = db.runtime_config();
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            runtime.get_user().unwrap(),
            self.port,
            db.name
        )
    }

    /// The flights and commits so far on the audit writer's connections.
    fn writer(&self) -> (u64, u64) {
        let connections = self.connections.lock().unwrap();
        let writers = connections
            .iter()
            .filter(|c| c.writer.load(Ordering::SeqCst));
        writers.fold((0, 0), |(flights, commits), c| {
            (
                flights + c.flights.load(Ordering::SeqCst),
                commits + c.commits.load(Ordering::SeqCst),
            )
        })
    }

    fn seen(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .take(20)
            .cloned()
            .collect()
    }
}

/// Where [`forward_counting`] counts.
struct Counted<'a> {
    statements: &'a AtomicU64,
    seen: &'a std::sync::Mutex<Vec<String>>,
    connection: &'a WireConnection,
}

/// Copies client → server as it comes (a read is what the client sent together, or part of
/// it), counting a flight for each read after the server spoke, and reading the messages: the
/// untyped start-up messages (an SSL or GSS request first, answered with one byte, then the
/// start-up packet), then typed messages, of which `Q` (simple query) and `E` (execute) are
/// counted. A commit is a `Q` holding COMMIT, or the execution of the audit INSERT outside
/// BEGIN … COMMIT (its own transaction, committed at its Sync). A `P` (parse) of the audit
/// INSERT marks the writer's connection.
async fn forward_counting(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    count: Counted<'_>,
) -> std::io::Result<()> {
    const SSL_REQUEST: u32 = 80_877_103;
    const GSS_REQUEST: u32 = 80_877_104;
    let connection = count.connection;
    let mut chunk = vec![0; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut started = false;
    // Prepared statements by name, the statement of the portal last bound, and whether a
    // `Q` BEGIN opened a transaction block that no `Q` COMMIT or ROLLBACK closed yet.
    let mut parsed: std::collections::HashMap<String, String> = Default::default();
    let mut bound = String::new();
    let mut in_block = false;
    loop {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        if connection.server_spoke.swap(false, Ordering::SeqCst) {
            connection.flights.fetch_add(1, Ordering::SeqCst);
        }
        pending.extend_from_slice(&chunk[..n]);
        loop {
            // A start-up message is its length then its body; a typed one its kind first.
            let head = usize::from(started);
            let Some(length) = pending.get(head..head + 4) else {
                break;
            };
            let length = u32::from_be_bytes(length.try_into().unwrap()) as usize;
            let Some(message) = pending.get(..head + length) else {
                break;
            };
            let body = &message[(head + 4).min(message.len())..];
            if !started {
                let code = body
                    .get(..4)
                    .map(|b| u32::from_be_bytes(b.try_into().unwrap()));
                started = !matches!(code, Some(SSL_REQUEST | GSS_REQUEST));
            } else {
                // Parse: name, query; Bind: portal, statement name (NUL-terminated).
                let mut fields = body.split(|&b| b == 0).map(String::from_utf8_lossy);
                match message[0] {
                    b'P' => {
                        let name = fields.next().unwrap_or_default().into_owned();
                        let query = fields.next().unwrap_or_default().into_owned();
                        if query.contains("INSERT INTO playbook_audit_log") {
                            connection.writer.store(true, Ordering::SeqCst);
                        }
                        parsed.insert(name, query);
                    }
                    b'B' => {
                        let statement = fields.nth(1).unwrap_or_default();
                        bound = parsed.get(statement.as_ref()).cloned().unwrap_or_default();
                    }
                    kind @ (b'Q' | b'E') => {
                        count.statements.fetch_add(1, Ordering::SeqCst);
                        let text = if kind == b'Q' {
                            format!("Q {}", printable(body))
                        } else {
                            format!("E {}", printable(bound.as_bytes()))
                        };
                        let commits = if kind == b'Q' {
                            let commits = text.contains("COMMIT");
                            let ends = commits
                                || (text.starts_with("Q ROLLBACK")
                                    && !text.contains("ROLLBACK TO"));
                            in_block = text.starts_with("Q BEGIN") || (in_block && !ends);
                            commits
                        } else {
                            !in_block && bound.contains("INSERT INTO playbook_audit_log")
                        };
                        if commits {
                            connection.commits.fetch_add(1, Ordering::SeqCst);
                        }
                        count.seen.lock().unwrap().push(text);
                    }
                    _ => {}
                }
            }
            pending.drain(..head + length);
        }
        to.write_all(&chunk[..n]).await?;
    }
}

fn printable(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(120)])
        .replace('\0', " ")
        .trim()
        .to_owned()
}
