//! Wires the subsystems together and runs them until a stop signal.
//!
//! `Daemon::build` does everything that can fail at start (database, schema, audit chain) so that
//! `run_until_stopped` only serves; tests build a daemon, read its addresses, then run it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::status::{self, RuntimeSnapshot, StatusAddr, StatusError, StatusListener, StatusState};
use crate::store::audit::{self, Actor, AuditEvent, AuditHandle, AuditStartError};
use crate::store::{self, Store, StoreError};
use crate::systemd;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("database unavailable at start")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditStartError),
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error("failed to install signal handlers")]
    Signals(#[source] std::io::Error),
}

impl DaemonError {
    /// 78 (EX_CONFIG) when an operator must fix something, so systemd's
    /// `RestartPreventExitStatus=78` stops a restart loop; 1 when a restart may help.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            DaemonError::Config(_)
            | DaemonError::Audit(AuditStartError::ChainLocked { .. })
            | DaemonError::Status(StatusError::Address { .. }) => ExitCode::from(EXIT_CONFIG),
            DaemonError::Store(_)
            | DaemonError::Status(StatusError::Bind { .. } | StatusError::Serve(_))
            | DaemonError::Audit(AuditStartError::Store { .. })
            | DaemonError::Signals(_) => ExitCode::FAILURE,
        }
    }
}

/// Exit status for "the configuration (or what it points at) is wrong".
pub const EXIT_CONFIG: u8 = 78;

/// A daemon whose start-up checks have passed, ready to serve.
pub struct Daemon {
    config: Config,
    store: Store,
    audit: AuditHandle,
    audit_task: tokio::task::JoinHandle<()>,
    /// Cancels every background task; fired by `run_until_stopped` on the way out.
    tasks_shutdown: CancellationToken,
    started: Instant,
    /// Bound at build (so a bad address is a start-up error); served by `run_until_stopped`.
    status_listener: Option<StatusListener>,
    status_addr: StatusAddr,
    status_state: StatusState,
    /// Publishes what the status API shows about the registry; keep it current on every reload.
    runtime: tokio::sync::watch::Sender<RuntimeSnapshot>,
}

impl Daemon {
    /// Connects, migrates, opens the audit chain and records the start.
    pub async fn build(config: Config) -> Result<Daemon, DaemonError> {
        let status_listener = status::bind(&config.status.listen).await?;
        let status_addr = status_listener.local_addr()?;
        let pg = config.postgres_config();
        let store = Store::connect(
            &pg,
            config.database.pool_size,
            config.database.connect_timeout(),
        )
        .await?;
        let mut migrator = store::connect_single(&pg).await?;
        let report = store::migrate::migrate(&mut migrator).await?;
        drop(migrator);
        tracing::info!(applied = ?report.applied, "schema up to date");

        let tasks_shutdown = CancellationToken::new();
        let (audit, audit_task) =
            audit::start_writer(pg, config.node_id.clone(), tasks_shutdown.clone()).await?;
        audit
            .append(
                AuditEvent::new("daemon.start", Actor::System)
                    .with("version", env!("CARGO_PKG_VERSION"))
                    .with("pid", std::process::id()),
            )
            .await
            .map_err(|error| {
                DaemonError::Store(StoreError::Corrupt {
                    what: "audit log",
                    detail: audit::error_chain(&error),
                })
            })?;
        let (runtime, runtime_receiver) = tokio::sync::watch::channel(RuntimeSnapshot::default());
        let status_state = StatusState::new(store.clone(), audit.clone(), runtime_receiver);
        Ok(Daemon {
            config,
            store,
            audit,
            audit_task,
            tasks_shutdown,
            started: Instant::now(),
            status_listener: Some(status_listener),
            status_addr,
            status_state,
            runtime,
        })
    }

    /// Where the status API listens (the real port when `status.listen` asked for port 0).
    pub fn status_addr(&self) -> &StatusAddr {
        &self.status_addr
    }

    /// The sender through which the registry publishes what `/v1/health` and `/v1/playbooks` show.
    pub fn runtime_publisher(&self) -> tokio::sync::watch::Sender<RuntimeSnapshot> {
        self.runtime.clone()
    }

    /// Serves until SIGTERM/SIGINT or `stop` fires; SIGHUP reloads.
    pub async fn run_until_stopped(mut self, stop: CancellationToken) -> Result<(), DaemonError> {
        let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
        let mut hangup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
        let mut status_task = match self.status_listener.take() {
            Some(listener) => tokio::spawn(status::serve(
                listener,
                self.status_state.clone(),
                self.tasks_shutdown.clone(),
            )),
            None => tokio::spawn(async { Ok(()) }),
        };
        systemd::notify_ready(&self.status_line());
        tracing::info!(node_id = %self.config.node_id, "playbookd ready");
        loop {
            tokio::select! {
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                () = stop.cancelled() => break,
                _ = hangup.recv() => self.reload().await,
                served = &mut status_task => {
                    // The status API is how operators see the daemon: losing it is a failure.
                    let error = match served {
                        Ok(Ok(())) => StatusError::Serve(std::io::Error::other("stopped unexpectedly")),
                        Ok(Err(error)) => error,
                        Err(join) => StatusError::Serve(std::io::Error::other(join.to_string())),
                    };
                    tracing::error!(error = %audit::error_chain(&error), "status API failed");
                    self.shutdown().await;
                    return Err(DaemonError::Status(error));
                }
            }
        }
        self.shutdown().await;
        if tokio::time::timeout(DRAIN_LIMIT, status_task)
            .await
            .is_err()
        {
            tracing::warn!("status API did not stop in time");
        }
        Ok(())
    }

    /// Re-reads what can change without a restart.
    async fn reload(&self) {
        systemd::notify_reloading();
        tracing::info!("reload requested");
        if let Err(error) = self
            .audit
            .append(AuditEvent::new("daemon.reload", Actor::System))
            .await
        {
            tracing::error!(error = %audit::error_chain(&error), "reload not recorded");
        }
        systemd::notify_ready(&self.status_line());
    }

    async fn shutdown(self) {
        systemd::notify_stopping();
        tracing::info!("stopping");
        let uptime = self.started.elapsed().as_secs();
        if let Err(error) = self
            .audit
            .append(AuditEvent::new("daemon.stop", Actor::System).with("uptime_seconds", uptime))
            .await
        {
            tracing::warn!(error = %audit::error_chain(&error), "stop not recorded");
        }
        self.tasks_shutdown.cancel();
        if tokio::time::timeout(DRAIN_LIMIT, self.audit_task)
            .await
            .is_err()
        {
            tracing::warn!("audit writer did not drain in time");
        }
        drop(self.store);
    }

    fn status_line(&self) -> String {
        format!("ready: node {}", self.config.node_id)
    }
}

/// How long shutdown waits for queued audit appends before giving up.
const DRAIN_LIMIT: Duration = Duration::from_secs(3);
