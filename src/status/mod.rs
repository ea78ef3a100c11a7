//! The read-only status API: HTTP on its own listener, GET and HEAD only.
//!
//! Nothing here changes state: every handler reads PostgreSQL through the pool or the runtime
//! snapshot the daemon publishes. Operators change things through control.sock, never here.
//!
//! - [`bind`] opens the listener on `status.listen` (`host:port` or `unix:/path`, a
//!   [`StatusAddr`] the configuration decoded, so a malformed address never reaches here).
//! - [`serve`] answers until the shutdown token fires.
//! - [`routes`]: the router, built from [`routes::ROUTES`] (also what the OpenAPI test checks).
//! - [`queries`]: the SQL, selecting only columns that are secret-free by design.
//! - [`metrics`]: the Prometheus recorder and the names of every metric the daemon emits.
//! - [`console`]: the operator console, server-rendered HTML under `/ui/` on the same listener.

pub mod console;
pub mod cursor;
pub mod json;
pub mod metrics;
pub mod queries;
pub mod routes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::future::BoxFuture;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::Store;
use crate::store::audit::AuditHandle;

/// What the daemon knows in memory that the database does not: published by the daemon
/// through a `watch` channel every time the registry or the bindings change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuntimeSnapshot {
    /// False until the first registry load finished; the daemon is not ready before.
    pub registry_loaded: bool,
    /// The active (verified) version of each playbook.
    pub playbooks: Vec<PlaybookSummary>,
    /// How many bindings the verified bindings file holds (0 when unsigned or invalid).
    pub bindings: usize,
    /// Bindings whose playbook has no active version (their decisions get `no_action`).
    pub unresolved_bindings: Vec<UnresolvedBinding>,
    /// The bindings in force, for the console's registry page (not served by the JSON API).
    pub binding_rules: Vec<BindingSummary>,
    /// Files the last load or reload refused, with the reason (console only).
    pub refused_files: Vec<RefusedFile>,
    /// When the registry last finished a load or reload.
    pub loaded_at: Option<queries::Timestamp>,
}

/// One binding of the verified bindings file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindingSummary {
    pub policy: String,
    pub outcome: String,
    /// When set, only decisions of this org match.
    pub org_id: Option<String>,
    pub playbook: String,
    pub cooldown_seconds: Option<u64>,
    pub require_approval: bool,
}

/// A file the registry refused at its last load: a playbook, the bindings or a trusted key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedFile {
    pub path: String,
    /// A short, stable name for the reason (as in `playbookd_registry_rejections_total`).
    pub label: String,
    /// The whole reason, with its causes.
    pub reason: String,
}

/// A binding whose playbook has no active version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnresolvedBinding {
    pub policy: String,
    pub outcome: String,
    pub org_id: Option<String>,
    pub playbook: String,
}

/// One active playbook version, as verified by the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlaybookSummary {
    pub id: String,
    pub version: u64,
    /// SHA-256 of the exact signed bytes, lowercase hex.
    pub sha256_hex: String,
    /// Key ids of the trusted keys whose signatures verified.
    pub signers: Vec<String>,
}

/// `fleet.stale_after_seconds` when none is given.
const DEFAULT_STALE_AFTER_SECONDS: u64 = 30;

/// Everything a handler may read. Cheap to clone (handles and an `Arc`-backed receiver).
#[derive(Clone)]
pub struct StatusState {
    pub store: Store,
    /// Read for `is_available()` and the node id (this node's chain); never written here.
    pub audit: AuditHandle,
    pub started: Instant,
    pub version: &'static str,
    pub runtime: watch::Receiver<RuntimeSnapshot>,
    /// Renders `/metrics`; the recorder is process-global (see [`metrics::install`]).
    pub metrics: PrometheusHandle,
    /// `fleet.stale_after_seconds`: `/v1/nodes` marks older heartbeats stale.
    pub stale_after_seconds: u64,
}

impl StatusState {
    /// State for a daemon that started now, with this crate's version; installs the recorder.
    pub fn new(
        store: Store,
        audit: AuditHandle,
        runtime: watch::Receiver<RuntimeSnapshot>,
    ) -> StatusState {
        StatusState {
            store,
            audit,
            started: Instant::now(),
            version: env!("CARGO_PKG_VERSION"),
            runtime,
            metrics: metrics::install(),
            stale_after_seconds: DEFAULT_STALE_AFTER_SECONDS,
        }
    }

    /// With `fleet.stale_after_seconds` from the configuration.
    pub fn with_stale_after(mut self, seconds: u64) -> StatusState {
        self.stale_after_seconds = seconds;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot listen for the status API on {address}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen for the status API")]
    UnixSocket(#[from] crate::unix_socket::BindError),
    #[error("the status API server failed")]
    Serve(#[source] std::io::Error),
    #[error(
        "systemd passed the status socket on {passed}, but status.listen is `{listen}`; make playbookd-status.socket and status.listen agree"
    )]
    Activated { passed: String, listen: String },
}

/// A bound status listener: TCP, or a Unix socket whose file is removed when it is dropped.
pub enum StatusListener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
}

/// Where a status listener is: `status.listen` as the configuration decoded it, or the address
/// actually bound (with the real port when `:0` was asked for).
pub use crate::config::StatusAddr;

/// Binds `status.listen`. A Unix socket path follows [`crate::unix_socket::remove_stale`]: a
/// stale socket left by a crash is replaced, a live one (another instance is serving) or a
/// file that is not a socket is refused. Status binds before the chain lock, so this is what
/// keeps a second daemon started by mistake from unlinking the first one's socket.
pub async fn bind(listen: &StatusAddr) -> Result<StatusListener, StatusError> {
    match listen {
        StatusAddr::Tcp(addr) => TcpListener::bind(*addr)
            .await
            .map(StatusListener::Tcp)
            .map_err(|source| StatusError::Bind {
                address: addr.to_string(),
                source,
            }),
        StatusAddr::Unix(path) => {
            let bind_error = |source| StatusError::Bind {
                address: format!("unix:{}", path.display()),
                source,
            };
            crate::unix_socket::remove_stale(path)?;
            let listener = UnixListener::bind(path).map_err(bind_error)?;
            Ok(StatusListener::Unix {
                listener,
                path: path.clone(),
            })
        }
    }
}

/// Takes the TCP listener systemd passed for the status API (`playbookd-status.socket`); it must
/// listen where `status.listen` says, so the documented address stays true.
pub fn from_activated(
    listener: std::net::TcpListener,
    listen: &StatusAddr,
) -> Result<StatusListener, StatusError> {
    let passed = listener.local_addr().map_err(StatusError::Serve)?;
    let matches = match listen {
        StatusAddr::Tcp(addr) => *addr == passed || (addr.port() == 0 && addr.ip() == passed.ip()),
        StatusAddr::Unix(_) => false,
    };
    if !matches {
        return Err(StatusError::Activated {
            passed: passed.to_string(),
            listen: listen.to_string(),
        });
    }
    listener.set_nonblocking(true).map_err(StatusError::Serve)?;
    TcpListener::from_std(listener)
        .map(StatusListener::Tcp)
        .map_err(StatusError::Serve)
}

impl StatusListener {
    /// The bound address (with the real port when `:0` was asked for).
    pub fn local_addr(&self) -> Result<StatusAddr, StatusError> {
        match self {
            StatusListener::Tcp(listener) => listener
                .local_addr()
                .map(StatusAddr::Tcp)
                .map_err(StatusError::Serve),
            StatusListener::Unix { path, .. } => Ok(StatusAddr::Unix(path.clone())),
        }
    }
}

/// Serves the status API on `listener` until `shutdown` fires, then finishes in-flight requests.
///
/// Every connection costs the daemon a file descriptor, and the same process needs descriptors
/// for decisions, the database and running actions, so the listener bounds them:
/// - at most [`MAX_CONNECTIONS`] at once; when a new connection arrives at the cap, the oldest
///   connection that is not inside a request (idle, or still sending its headers) is closed
///   to make room, so thousands of idle or slow-header connections cannot keep `/v1/health`
///   from answering; when every connection is inside a request, the new one is closed;
/// - request headers must arrive within [`HEADER_TIMEOUT`] (a slow-header client is cut off);
/// - a handler gets [`REQUEST_TIMEOUT`], then the request is answered 503.
pub async fn serve(
    listener: StatusListener,
    state: StatusState,
    shutdown: CancellationToken,
) -> Result<(), StatusError> {
    let address = listener.local_addr()?;
    let router = routes::router(state);
    tracing::info!("status API listening on {address}");
    match listener {
        StatusListener::Tcp(listener) => serve_connections(&listener, router, shutdown).await,
        StatusListener::Unix { listener, path } => {
            serve_connections(&listener, router, shutdown).await;
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(error = %error, path = %path.display(), "status socket not removed");
            }
        }
    }
    Ok(())
}

/// A listener the status API can accept connections from.
trait Accept: Sync {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_one(&self) -> BoxFuture<'_, std::io::Result<Self::Io>>;
}

impl Accept for TcpListener {
    type Io = TcpStream;
    fn accept_one(&self) -> BoxFuture<'_, std::io::Result<TcpStream>> {
        Box::pin(async move { self.accept().await.map(|(stream, _)| stream) })
    }
}

impl Accept for UnixListener {
    type Io = UnixStream;
    fn accept_one(&self) -> BoxFuture<'_, std::io::Result<UnixStream>> {
        Box::pin(async move { self.accept().await.map(|(stream, _)| stream) })
    }
}

async fn serve_connections<L: Accept>(
    listener: &L,
    router: axum::Router,
    shutdown: CancellationToken,
) {
    let table = Arc::new(Connections::new(MAX_CONNECTIONS));
    let tasks = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true);
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept_one() => match accepted {
                Ok(stream) => stream,
                Err(error) => {
                    // EMFILE and friends: pause rather than spin.
                    tracing::warn!(error = %error, "status API: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = Connections::open(&table) else {
            tracing::debug!("status API: every connection is inside a request; new one closed");
            continue;
        };
        let service = RequestService {
            inner: TowerToHyperService::new(router.clone()),
            busy: Arc::clone(&slot.busy),
        };
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = slot.evict.cancelled() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, connection).await;
                }
            }
            drop(slot);
        });
    }
    tasks.close();
    if tokio::time::timeout(REQUEST_TIMEOUT, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("status API: requests still running at shutdown were dropped");
    }
}

/// Marks its connection busy while a request is being handled (not evictable then), and
/// answers 503 when the handler takes longer than [`REQUEST_TIMEOUT`].
#[derive(Clone)]
struct RequestService {
    inner: TowerToHyperService<axum::Router>,
    busy: Arc<AtomicBool>,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for RequestService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        self.busy.store(true, Ordering::SeqCst);
        let busy = Arc::clone(&self.busy);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match tokio::time::timeout(REQUEST_TIMEOUT, response).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    use axum::response::IntoResponse;
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(serde_json::json!({
                            "error": format!("the request took longer than {} s", REQUEST_TIMEOUT.as_secs())
                        })),
                    )
                        .into_response()
                }
            };
            busy.store(false, Ordering::SeqCst);
            Ok(response)
        })
    }
}

/// The open connections, oldest first, so the oldest idle one can be closed to make room.
struct Connections {
    max: usize,
    table: Mutex<ConnectionTable>,
}

#[derive(Default)]
struct ConnectionTable {
    next_id: u64,
    open: BTreeMap<u64, (Arc<AtomicBool>, CancellationToken)>,
}

/// One open connection's place in the table; dropping it removes it.
struct ConnectionSlot {
    id: u64,
    busy: Arc<AtomicBool>,
    /// Cancelled when the connection is evicted to make room for a newer one.
    evict: CancellationToken,
    table: Arc<Connections>,
}

impl Connections {
    fn new(max: usize) -> Connections {
        Connections {
            max,
            table: Mutex::new(ConnectionTable::default()),
        }
    }

    /// Registers a new connection, closing the oldest idle one when at the cap; `None` when
    /// every open connection is inside a request.
    fn open(this: &Arc<Connections>) -> Option<ConnectionSlot> {
        let mut table = this.lock();
        if table.open.len() >= this.max {
            let oldest_idle = table
                .open
                .iter()
                .find(|(_, (busy, _))| !busy.load(Ordering::SeqCst))
                .map(|(id, _)| *id)?;
            if let Some((_, evict)) = table.open.remove(&oldest_idle) {
                evict.cancel();
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let busy = Arc::new(AtomicBool::new(false));
        let evict = CancellationToken::new();
        table.open.insert(id, (Arc::clone(&busy), evict.clone()));
        Some(ConnectionSlot {
            id,
            busy,
            evict,
            table: Arc::clone(this),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnectionTable> {
        // Only ids and flags: a panic elsewhere cannot leave the table half-updated.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.table.lock().open.remove(&self.id);
    }
}

/// Connections the status listener holds at once (see [`serve`]).
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a handler has before the request is answered 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The rule the API and the console share: anything but GET and HEAD is answered with
/// `refusal()` (405, in the caller's format) and `Allow: GET, HEAD`, and no response is cached
/// or content-sniffed.
pub(crate) fn read_only(response: Response, refusal: impl FnOnce() -> Response) -> Response {
    let mut response = if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        let mut refused = refusal();
        refused
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        refused
    } else {
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let table = Arc::new(Connections::new(2));
        let first = Connections::open(&table).unwrap();
        let second = Connections::open(&table).unwrap();
        first.busy.store(true, Ordering::SeqCst);
        // The first is inside a request: the second (idle) is the one closed.
        let third = Connections::open(&table).unwrap();
        assert!(!first.evict.is_cancelled());
        assert!(second.evict.is_cancelled());
        drop(second);
        third.busy.store(true, Ordering::SeqCst);
        // Everything open is inside a request: the newcomer is refused, nobody evicted.
        assert!(Connections::open(&table).is_none());
        assert!(!first.evict.is_cancelled() && !third.evict.is_cancelled());
        drop(first);
        assert!(Connections::open(&table).is_some());
    }
}
