//! Witnesses (issue #24): `playbookd witness`, a minimal C2SP tlog-witness
//! (<https://c2sp.org/tlog-witness>) that another host or team runs, and the daemon's side that
//! submits each new checkpoint to the configured witnesses ([`submit`]).
//!
//! The witness keeps, per log origin it is configured for, the latest checkpoint it cosigned
//! (size and root hash) in a state file, and cosigns a new checkpoint only if it is signed by
//! the log's key and provably extends that one. The state is written atomically (temporary
//! file, fsync, rename, fsync of the directory) before the cosignature is returned, under one
//! lock, so two concurrent submissions cannot roll it back (the race the spec describes).

pub mod protocol;
pub mod state;
pub mod submit;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use self::protocol::{Refusal, Submission};
use self::state::{StateError, StateFile};
use crate::cosignature::Cosignature;
use crate::note::{KeyType, VerifierKey};
use crate::store::checkpoint::{NodeKey, NodeKeyError};

/// A request larger than this is refused (413): a checkpoint note and 63 proof lines fit.
const MAX_BODY_BYTES: usize = 64 * 1024;
const DEFAULT_LISTEN: &str = "127.0.0.1:7380";

/// `witness.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// The witness's key name, e.g. `witness.example.org/w1` (a schema-less URL by convention).
    pub name: String,
    /// Ed25519 PKCS#8 PEM private key; created 0600 on first start, refused if others can read it.
    pub key: PathBuf,
    /// The latest cosigned checkpoint per log (JSON).
    pub state: PathBuf,
    /// `host:port`; loopback by default.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The logs this witness cosigns, by origin.
    #[serde(default)]
    pub logs: Vec<LogConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// The checkpoint origin line, e.g. `playbookd/host-1`.
    pub origin: String,
    /// The log's signed-note verifier key (`audit checkpoint-text --vkey` prints it).
    pub vkey: VerifierKey,
}

fn default_listen() -> SocketAddr {
    // A constant that parses.
    DEFAULT_LISTEN
        .parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7380)))
}

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("failed to read witness config {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid witness config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("cannot use the witness key")]
    Key(#[source] NodeKeyError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot listen on {address}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the witness server failed")]
    Serve(#[source] std::io::Error),
}

impl WitnessError {
    /// 78 (EX_CONFIG) for what an operator must fix (config, key file, state file); 1 otherwise.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            WitnessError::ReadConfig { .. }
            | WitnessError::Config { .. }
            | WitnessError::Key(_)
            | WitnessError::State(_) => ExitCode::from(crate::config::EXIT_CONFIG),
            WitnessError::Listen { .. } | WitnessError::Serve(_) => ExitCode::FAILURE,
        }
    }
}

impl WitnessConfig {
    pub fn load(path: &Path) -> Result<WitnessConfig, WitnessError> {
        let text = std::fs::read_to_string(path).map_err(|source| WitnessError::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |message: String| WitnessError::Config {
            path: path.to_owned(),
            message,
        };
        let config: WitnessConfig =
            toml::from_str(&text).map_err(|error| invalid(error.to_string()))?;
        if config.name.is_empty() || config.name.contains(['+', ' ', '\n', '\t']) {
            return Err(invalid(
                "`name` must be non-empty, without spaces or `+`".into(),
            ));
        }
        let mut origins = std::collections::BTreeSet::new();
        for log in &config.logs {
            if log.vkey.key_type != KeyType::Ed25519 {
                return Err(invalid(format!(
                    "log `{}`: `vkey` must be an Ed25519 signed-note key (type 0x01)",
                    log.origin
                )));
            }
            if !origins.insert(log.origin.as_str()) {
                return Err(invalid(format!("log `{}` is listed twice", log.origin)));
            }
        }
        Ok(config)
    }
}

/// A witness ready to serve: key loaded, state read, listener bound.
pub struct Witness {
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
}

struct Shared {
    key: NodeKey,
    me: VerifierKey,
    logs: BTreeMap<String, VerifierKey>,
    /// Check-and-persist happens under this lock: no rollback race.
    state: tokio::sync::Mutex<StateFile>,
}

impl Witness {
    pub async fn build(config: &WitnessConfig) -> Result<Witness, WitnessError> {
        let key = NodeKey::load_or_generate(&config.key).map_err(WitnessError::Key)?;
        let me = cosigner_key(&config.name, &key);
        let state = StateFile::load(&config.state)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| WitnessError::Listen {
                address: config.listen,
                source,
            })?;
        Ok(Witness {
            listener,
            shared: Arc::new(Shared {
                key,
                me,
                logs: config
                    .logs
                    .iter()
                    .map(|log| (log.origin.clone(), log.vkey.clone()))
                    .collect(),
                state: tokio::sync::Mutex::new(state),
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The witness's verifier key (type 0x04), for the logs' `[[audit.witnesses]]`.
    pub fn verifier_key(&self) -> &VerifierKey {
        &self.shared.me
    }

    pub async fn run_until_stopped(self, stop: CancellationToken) -> Result<(), WitnessError> {
        let router = axum::Router::new()
            .route("/add-checkpoint", axum::routing::post(add_checkpoint))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.shared.clone());
        tracing::info!(
            address = %self.listener.local_addr().map_err(WitnessError::Serve)?,
            vkey = %self.shared.me,
            logs = self.shared.logs.len(),
            "witness listening"
        );
        axum::serve(self.listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .map_err(WitnessError::Serve)
    }
}

/// The verifier key of `name`'s cosignatures under `key`.
pub fn cosigner_key(name: &str, key: &NodeKey) -> VerifierKey {
    VerifierKey {
        name: name.to_owned(),
        key_type: KeyType::CosignatureV1,
        key: key.verifying_key(),
    }
}

/// `POST /add-checkpoint`.
async fn add_checkpoint(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match cosign(&shared, &body).await {
        Ok(cosignature) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            cosignature.line(),
        )
            .into_response(),
        Err(Refusal::Conflict { latest, .. }) => (
            StatusCode::CONFLICT,
            [(header::CONTENT_TYPE, "text/x.tlog.size")],
            format!("{latest}\n"),
        )
            .into_response(),
        Err(refusal) => {
            let status =
                StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (
                status,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("{refusal}\n"),
            )
                .into_response()
        }
    }
}

/// Persisting failed: the witness must not cosign what it could not record.
const STATE_WRITE_FAILED: &str = "the witness could not persist its state";

async fn cosign(shared: &Shared, body: &[u8]) -> Result<Cosignature, Refusal> {
    let body = std::str::from_utf8(body)
        .map_err(|_| Refusal::Malformed("the body is not UTF-8".into()))?;
    let submission: Submission = protocol::parse(body)?;
    let origin = &submission.checkpoint.origin;
    let log_key = shared
        .logs
        .get(origin)
        .ok_or_else(|| Refusal::UnknownOrigin(origin.clone()))?;
    protocol::check_log_signature(&submission, log_key)?;
    let mut state = shared.state.lock().await;
    let latest = state.latest(origin);
    let cosigned = match protocol::check_consistency(&submission, latest) {
        Ok(cosigned) => cosigned,
        Err(refusal) => {
            // Validly signed by the log yet inconsistent: possible evidence of misbehaviour.
            tracing::warn!(origin = %origin, size = submission.checkpoint.size, refusal = %refusal, "checkpoint refused");
            return Err(refusal);
        }
    };
    if let Err(error) = state.record(origin, cosigned) {
        tracing::error!(error = %crate::store::audit::error_chain(&error), "{STATE_WRITE_FAILED}");
        return Err(Refusal::Unavailable(STATE_WRITE_FAILED));
    }
    drop(state);
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    // The clock is past 1970 on any host that runs this; 1 keeps the spec's "never zero".
    let timestamp = u64::try_from(timestamp).unwrap_or(1).max(1);
    let cosignature = Cosignature::sign(
        &shared.me,
        &submission.checkpoint.text,
        timestamp,
        |message| shared.key.sign_note_text(message),
    );
    tracing::info!(origin = %origin, size = cosigned.size, "checkpoint cosigned");
    Ok(cosignature)
}

/// `playbookd witness --config FILE --vkey`: the witness's verifier key (creating its key
/// on first use), for the logs' configuration.
pub fn verifier_key_of(config: &Path) -> Result<VerifierKey, WitnessError> {
    let config = WitnessConfig::load(config)?;
    let key = NodeKey::load_or_generate(&config.key).map_err(WitnessError::Key)?;
    Ok(cosigner_key(&config.name, &key))
}

/// `playbookd witness --config FILE`: serves until SIGTERM or SIGINT.
pub async fn run(config: &Path) -> Result<(), WitnessError> {
    let config = WitnessConfig::load(config)?;
    let witness = Witness::build(&config).await?;
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(WitnessError::Serve)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        on_signal.cancel();
    });
    witness.run_until_stopped(stop).await
}
