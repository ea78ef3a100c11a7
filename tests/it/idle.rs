//! Issue #16: runs parked at an approval gate cost no periodic queries. The daemon reaches
//! PostgreSQL through a proxy in this test that counts, on the wire, every statement the daemon
//! sends (simple `Query` and extended-protocol `Execute` messages, on every connection it opens,
//! pooled or dedicated): exact, and independent of when PostgreSQL publishes its statistics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use playbookd::config::Config;
use playbookd::daemon::Daemon;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::harness::{GATED_NOOP, bindings, decision, send_json};
use crate::helpers::{DaemonDir, TestDb, query_value};

/// Runs left waiting at their gate.
const PARKED: i64 = 200;
/// The counted window: more than two heartbeats (5 s) and one resume sweep (10 s).
const WINDOW: Duration = Duration::from_secs(12);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_runs_make_no_periodic_queries_of_their_own() {
    let db = TestDb::new().await;
    let wire = WireCounter::start(&db.runtime_config()).await;
    let dir = DaemonDir::new();
    let runtime = db.runtime_config();
    let url = format!(
        "postgres://{}@127.0.0.1:{}/{}",
        runtime.get_user().unwrap(),
        wire.port,
        db.name
    );
    let config = dir.write_config_url(
        &url,
        "node-a",
        "[executor]\nmax_concurrent_runs = 1000\nmax_runs_per_org = 1000\n",
    );
    dir.write_signed("playbooks/gated-noop-v1.yaml", GATED_NOOP, true);
    dir.write_signed(
        "bindings.yaml",
        &bindings(&[("p", "o", "gated-noop")]),
        true,
    );
    let daemon = Daemon::build(Config::load(&config).expect("config"))
        .await
        .expect("daemon builds");
    let stop = CancellationToken::new();
    let task = tokio::spawn(daemon.run_until_stopped(stop.clone()));

    let socket = dir.path("run/decisions.sock");
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
    stop.cancel();
    task.await.unwrap().expect("clean stop");
}

/// A TCP proxy to the test server that counts the statements its clients send.
struct WireCounter {
    port: u16,
    statements: Arc<AtomicU64>,
    /// The first bytes of each counted statement's message, for the failure message.
    seen: Arc<std::sync::Mutex<Vec<String>>>,
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
        let (counter, log) = (statements.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let outbound = TcpStream::connect(&upstream).await.unwrap();
                let (counter, log) = (counter.clone(), log.clone());
                tokio::spawn(async move {
                    let (mut from_client, mut to_client) = inbound.into_split();
                    let (mut from_server, mut to_server) = outbound.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                    });
                    let _ =
                        forward_counting(&mut from_client, &mut to_server, &counter, &log).await;
                });
            }
        });
        WireCounter {
            port,
            statements,
            seen,
        }
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

/// Copies client → server message by message: the untyped start-up messages (an SSL or GSS
/// request first, answered with one byte, then the start-up packet), then typed messages, of
/// which `Q` (simple query) and `E` (execute) are counted.
async fn forward_counting(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    statements: &AtomicU64,
    seen: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    const SSL_REQUEST: u32 = 80_877_103;
    const GSS_REQUEST: u32 = 80_877_104;
    loop {
        let length = from.read_u32().await?;
        let mut body = vec![0; (length as usize).saturating_sub(4)];
        from.read_exact(&mut body).await?;
        to.write_u32(length).await?;
        to.write_all(&body).await?;
        let code = body
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if !matches!(code, Some(SSL_REQUEST | GSS_REQUEST)) {
            break;
        }
    }
    let mut last_parse = String::new();
    loop {
        let kind = from.read_u8().await?;
        let length = from.read_u32().await?;
        let mut body = vec![0; (length as usize).saturating_sub(4)];
        from.read_exact(&mut body).await?;
        match kind {
            b'P' => last_parse = printable(&body),
            b'Q' | b'E' => {
                statements.fetch_add(1, Ordering::SeqCst);
                let text = if kind == b'Q' {
                    format!("Q {}", printable(&body))
                } else {
                    format!("E {last_parse}")
                };
                seen.lock().unwrap().push(text);
            }
            _ => {}
        }
        to.write_u8(kind).await?;
        to.write_u32(length).await?;
        to.write_all(&body).await?;
    }
}

fn printable(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(120)])
        .replace('\0', " ")
        .trim()
        .to_owned()
}
