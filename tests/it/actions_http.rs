//! `http.post` (and `notify`'s webhook) against a real local HTTP server.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use playbookd::actions::{ActionError, Actions};
use playbookd::config::{ActionsConfig, Count, Seconds};
use serde_json::json;

use crate::actions_support::{Fails, assert_fails, ctx};
use crate::helpers::assert_contains;

#[derive(Default)]
struct Receiver {
    headers: Mutex<Vec<HeaderMap>>,
    failing: AtomicBool,
    flaky_hits: AtomicUsize,
}

async fn ok(State(receiver): State<Arc<Receiver>>, headers: HeaderMap) -> StatusCode {
    receiver.headers.lock().unwrap().push(headers);
    StatusCode::OK
}

async fn redirect() -> impl IntoResponse {
    (StatusCode::FOUND, [(header::LOCATION, "/ok")])
}

async fn flaky(State(receiver): State<Arc<Receiver>>) -> StatusCode {
    receiver.flaky_hits.fetch_add(1, Ordering::SeqCst);
    if receiver.failing.load(Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

/// Starts the receiver on 127.0.0.1:0; returns its port.
async fn start_receiver() -> (u16, Arc<Receiver>) {
    let receiver = Arc::new(Receiver::default());
    let app = Router::new()
        .route("/ok", post(ok))
        .route("/redirect", post(redirect))
        .route("/flaky", post(flaky))
        .with_state(Arc::clone(&receiver));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, receiver)
}

fn config(allowed: &[&str], loopback: &[&str]) -> ActionsConfig {
    let set = |hosts: &[&str]| hosts.iter().map(|h| h.to_string()).collect::<BTreeSet<_>>();
    let mut config = ActionsConfig::default();
    config.http.allowed_hosts = set(allowed);
    config.http.allowed_loopback = set(loopback);
    config.http.timeout_seconds = Seconds::new(5);
    config
}

async fn post_to(
    actions: &Actions,
    params: serde_json::Value,
) -> Result<serde_json::Value, ActionError> {
    actions
        .get("http.post")
        .unwrap()
        .execute(&params, &ctx(Duration::from_secs(10)))
        .await
        .map(|output| output.summary)
}

/// `{"url": "http://127.0.0.1:PORT/PATH"}`: the receiver's PATH.
fn local(port: u16, path: &str) -> serde_json::Value {
    json!({"url": format!("http://127.0.0.1:{port}/{path}")})
}

#[tokio::test]
async fn the_idempotency_key_header_is_sent_to_an_allowlisted_loopback_receiver() {
    let (port, receiver) = start_receiver().await;
    let actions = Actions::from_config(&config(&["127.0.0.1"], &["127.0.0.1"])).unwrap();
    let step = ctx(Duration::from_secs(10));
    let summary = actions
        .get("http.post")
        .unwrap()
        .execute(
            &json!({"url": format!("http://127.0.0.1:{port}/ok?token=abc"), "body": {"a": 1}}),
            &step,
        )
        .await
        .unwrap()
        .summary;
    assert_eq!(summary["status"], 200);
    assert!(!summary.to_string().contains("token=abc"), "{summary}");
    let headers = receiver.headers.lock().unwrap();
    assert_eq!(headers.len(), 1);
    assert_eq!(
        headers[0]["idempotency-key"],
        step.idempotency_key_hex().as_str()
    );
    assert_eq!(headers[0]["content-type"], "application/json");
}

#[tokio::test]
async fn a_host_not_allowlisted_is_refused_without_a_request() {
    let (port, receiver) = start_receiver().await;
    let actions = Actions::from_config(&config(&["hooks.example.org"], &[])).unwrap();
    assert_fails(
        post_to(&actions, local(port, "ok")).await,
        Fails::Permanent,
        &["not in actions.http.allowed_hosts"],
    );
    assert!(receiver.headers.lock().unwrap().is_empty());
}

#[tokio::test]
async fn loopback_is_refused_unless_allowlisted_for_it() {
    let (port, receiver) = start_receiver().await;
    let actions = Actions::from_config(&config(&["127.0.0.1", "localhost"], &[])).unwrap();
    // Plain http needs the loopback allowlist.
    assert_fails(
        post_to(&actions, local(port, "ok")).await,
        Fails::Permanent,
        &["https only"],
    );
    // https to a loopback literal, or to a name that resolves to loopback: refused before connecting.
    for url in [
        format!("https://127.0.0.1:{port}/ok"),
        format!("https://localhost:{port}/ok"),
    ] {
        let error = post_to(&actions, json!({"url": url})).await.unwrap_err();
        assert!(
            matches!(&error, ActionError::Permanent(m) if m.contains("loopback")),
            "{url}: {error}"
        );
    }
    assert!(receiver.headers.lock().unwrap().is_empty());
    // The same request, allowlisted, goes through.
    let actions = Actions::from_config(&config(&["127.0.0.1"], &["127.0.0.1"])).unwrap();
    post_to(&actions, local(port, "ok")).await.unwrap();
    assert_eq!(receiver.headers.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_redirect_is_refused_and_not_followed() {
    let (port, receiver) = start_receiver().await;
    let actions = Actions::from_config(&config(&["127.0.0.1"], &["127.0.0.1"])).unwrap();
    assert_fails(
        post_to(&actions, local(port, "redirect")).await,
        Fails::Permanent,
        &["redirect refused"],
    );
    assert!(
        receiver.headers.lock().unwrap().is_empty(),
        "the redirect was followed"
    );
    assert_fails(
        post_to(&actions, local(port, "missing")).await,
        Fails::Permanent,
        &["404"],
    );
}

/// Collects everything the tracing subscriber writes.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_secret_is_sent_as_a_bearer_header_and_never_logged_or_returned() {
    const SECRET: &str = "s3cr3t-0f-the-day";
    let logs = LogCapture::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (port, receiver) = start_receiver().await;
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("webhook-token");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut config = config(&["127.0.0.1"], &["127.0.0.1"]);
    config.http.secrets_dir = secrets.path().to_owned();
    let actions = Actions::from_config(&config).unwrap();

    let url = format!("http://127.0.0.1:{port}/ok");
    let summary = post_to(&actions, json!({"url": url, "secret": "webhook-token"}))
        .await
        .unwrap();
    assert_eq!(
        receiver.headers.lock().unwrap()[0]["authorization"],
        format!("Bearer {SECRET}").as_str()
    );
    assert!(!summary.to_string().contains(SECRET));
    // A failing request with the secret: not in the error either.
    let error = post_to(
        &actions,
        json!({"url": format!("http://127.0.0.1:{port}/missing"), "secret": "webhook-token"}),
    )
    .await
    .unwrap_err();
    assert!(!error.to_string().contains(SECRET), "{error}");
    // notify goes through the same sender and logs its record.
    let notify = actions.get("notify").unwrap();
    notify
        .execute(
            &json!({"message": "host contained", "priority": "crit", "webhook": url}),
            &ctx(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(receiver.headers.lock().unwrap().len(), 2);

    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert_contains(&logged, "host contained");
    assert_contains(&logged, "playbookd::notify");
    assert_contains(&logged, "execution_id");
    assert_contains(&logged, "org_id=acme");
    assert!(!logged.contains(SECRET), "the secret reached the logs");

    // A secret file others can read is refused, and named only by its name.
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let error = post_to(&actions, json!({"url": url, "secret": "webhook-token"}))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ActionError::Permanent(m) if m.contains("0600")),
        "{error}"
    );
    assert!(!error.to_string().contains(SECRET));
}

#[tokio::test]
async fn the_circuit_opens_after_consecutive_failures_and_recovers_after_the_reset_time() {
    let (port, receiver) = start_receiver().await;
    let mut config = config(&["127.0.0.1"], &["127.0.0.1"]);
    config.http.breaker_failures = Count::new(3);
    config.http.breaker_reset_seconds = 1;
    let actions = Actions::from_config(&config).unwrap();
    let url = local(port, "flaky");
    receiver.failing.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert_fails(
            post_to(&actions, url.clone()).await,
            Fails::Transient,
            &["503"],
        );
    }
    assert_fails(
        post_to(&actions, url.clone()).await,
        Fails::Transient,
        &["circuit open"],
    );
    assert_eq!(
        receiver.flaky_hits.load(Ordering::SeqCst),
        3,
        "an open circuit still sent"
    );

    // Half-open after the reset time: a failed trial opens it again at once.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    post_to(&actions, url.clone()).await.unwrap_err();
    assert_eq!(receiver.flaky_hits.load(Ordering::SeqCst), 4);
    let error = post_to(&actions, url.clone()).await.unwrap_err();
    assert!(error.to_string().contains("circuit open"), "{error}");

    // The destination recovers: the next trial closes the circuit.
    receiver.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    post_to(&actions, url.clone()).await.unwrap();
    post_to(&actions, url.clone()).await.unwrap();
    assert_eq!(receiver.flaky_hits.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn a_connection_refused_is_transient() {
    // Bind then drop: nothing listens on that port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let actions = Actions::from_config(&config(&["127.0.0.1"], &["127.0.0.1"])).unwrap();
    let error = post_to(&actions, local(port, "ok")).await.unwrap_err();
    assert!(error.is_transient(), "{error}");
}
