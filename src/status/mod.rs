//! The read-only status API: HTTP on its own listener, GET and HEAD only.
//!
//! Nothing here changes state: every handler reads PostgreSQL through the pool or the runtime
//! snapshot the daemon publishes. Operators change things through control.sock, never here.
//!
//! - [`bind`] opens the listener (`host:port` or `unix:/path`) so a bad address fails at start.
//! - [`serve`] answers until the shutdown token fires.
//! - [`routes`]: the router, built from [`routes::ROUTES`] (also what the OpenAPI test checks).
//! - [`queries`]: the SQL, selecting only columns that are secret-free by design.
//! - [`metrics`]: the Prometheus recorder and the names of every metric the daemon emits.

pub mod cursor;
pub mod metrics;
pub mod queries;
pub mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "invalid status.listen `{listen}`: expected host:port (e.g. 127.0.0.1:9470) or unix:/absolute/path"
    )]
    Address { listen: String },
    #[error("cannot listen for the status API on {address}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
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

/// Where a status listener is (what `status.listen` resolved to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for StatusAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusAddr::Tcp(addr) => write!(f, "{addr}"),
            StatusAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// `status.listen` parsed: `unix:/abs/path` or a numeric `ip:port` (no DNS: a name could
/// resolve to a public address and expose the API).
pub fn parse_listen(listen: &str) -> Result<StatusAddr, StatusError> {
    let bad = || StatusError::Address {
        listen: listen.to_owned(),
    };
    if let Some(path) = listen.strip_prefix(UNIX_PREFIX) {
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(bad());
        }
        return Ok(StatusAddr::Unix(path));
    }
    listen
        .parse::<SocketAddr>()
        .map(StatusAddr::Tcp)
        .map_err(|_| bad())
}

/// Binds `status.listen`. A stale Unix socket file left by a crash is replaced; any other
/// file at that path is refused (never delete what is not ours).
pub async fn bind(listen: &str) -> Result<StatusListener, StatusError> {
    match parse_listen(listen)? {
        StatusAddr::Tcp(addr) => TcpListener::bind(addr)
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
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                use std::os::unix::fs::FileTypeExt;
                if !meta.file_type().is_socket() {
                    return Err(bind_error(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "a file that is not a socket is in the way",
                    )));
                }
                std::fs::remove_file(&path).map_err(bind_error)?;
            }
            let listener = UnixListener::bind(&path).map_err(bind_error)?;
            Ok(StatusListener::Unix { listener, path })
        }
    }
}

/// Takes the TCP listener systemd passed for the status API (`playbookd-status.socket`); it must
/// listen where `status.listen` says, so the documented address stays true.
pub fn from_activated(
    listener: std::net::TcpListener,
    listen: &str,
) -> Result<StatusListener, StatusError> {
    let configured = parse_listen(listen)?;
    let passed = listener.local_addr().map_err(StatusError::Serve)?;
    let matches = match &configured {
        StatusAddr::Tcp(addr) => *addr == passed || (addr.port() == 0 && addr.ip() == passed.ip()),
        StatusAddr::Unix(_) => false,
    };
    if !matches {
        return Err(StatusError::Activated {
            passed: passed.to_string(),
            listen: listen.to_owned(),
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
pub async fn serve(
    listener: StatusListener,
    state: StatusState,
    shutdown: CancellationToken,
) -> Result<(), StatusError> {
    let address = listener.local_addr()?;
    let router = routes::router(state);
    tracing::info!("status API listening on {address}");
    let stopped = shutdown.clone();
    let result = match listener {
        StatusListener::Tcp(listener) => {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
        }
        StatusListener::Unix { listener, path } => {
            let result = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(error = %error, path = %path.display(), "status socket not removed");
            }
            result
        }
    };
    result.map_err(StatusError::Serve)
}

const UNIX_PREFIX: &str = "unix:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_accepts_ip_port_and_unix_path() {
        assert_eq!(
            parse_listen("127.0.0.1:9470").unwrap(),
            StatusAddr::Tcp("127.0.0.1:9470".parse().unwrap())
        );
        assert_eq!(
            parse_listen("[::1]:0").unwrap(),
            StatusAddr::Tcp("[::1]:0".parse().unwrap())
        );
        assert_eq!(
            parse_listen("unix:/run/playbookd/status.sock").unwrap(),
            StatusAddr::Unix("/run/playbookd/status.sock".into())
        );
    }

    #[test]
    fn listen_refuses_names_and_relative_paths() {
        for listen in ["localhost:9470", "unix:status.sock", "9470", ""] {
            let error = parse_listen(listen).unwrap_err().to_string();
            assert!(error.contains("status.listen"), "{listen}: {error}");
        }
    }
}
