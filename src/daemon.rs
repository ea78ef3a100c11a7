//! Wires the subsystems together and runs them until a stop signal.
//!
//! `Daemon::build` does everything that can fail at start (database, schema, audit chain) so that
//! `run_until_stopped` only serves; tests build a daemon, read its addresses, then run it.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::store::audit::{self, Actor, AuditEvent, AuditHandle, AuditStartError};
use crate::store::checkpoint::{CheckpointError, Checkpointer, NodeKey, NodeKeyError};
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
    #[error("failed to install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    NodeKey(#[from] NodeKeyError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

impl DaemonError {
    /// 78 (EX_CONFIG) when an operator must fix something, so systemd's
    /// `RestartPreventExitStatus=78` stops a restart loop; 1 when a restart may help.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            DaemonError::Config(_)
            | DaemonError::NodeKey(_)
            | DaemonError::Checkpoint(CheckpointError::ChainTruncated { .. })
            | DaemonError::Audit(AuditStartError::ChainLocked { .. }) => {
                ExitCode::from(EXIT_CONFIG)
            }
            DaemonError::Store(_)
            | DaemonError::Audit(AuditStartError::Store { .. })
            | DaemonError::Checkpoint(CheckpointError::Store { .. })
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
    /// Signs the chain head periodically (spawned by `run_until_stopped`) and at shutdown.
    checkpointer: Checkpointer,
    /// Cancels every background task; fired by `run_until_stopped` on the way out.
    tasks_shutdown: CancellationToken,
    started: Instant,
}

impl Daemon {
    /// Connects, migrates, opens the audit chain and records the start.
    pub async fn build(config: Config) -> Result<Daemon, DaemonError> {
        // First: a bad key file is an operator error, found before touching the database.
        let node_key = Arc::new(NodeKey::load_or_generate(&config.paths.node_key)?);
        tracing::info!(key_id = %node_key.key_id(), "node key loaded");
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
        let checkpointer = Checkpointer::new(audit.clone(), store.clone(), node_key);
        checkpointer.ensure_not_truncated().await?;
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
        Ok(Daemon {
            config,
            store,
            audit,
            audit_task,
            checkpointer,
            tasks_shutdown,
            started: Instant::now(),
        })
    }

    /// Serves until SIGTERM/SIGINT or `stop` fires; SIGHUP reloads.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> Result<(), DaemonError> {
        let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
        let mut hangup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
        let checkpoints = self.checkpointer.clone().spawn(
            self.config.audit.checkpoint_interval(),
            self.tasks_shutdown.clone(),
        );
        systemd::notify_ready(&self.status_line());
        tracing::info!(node_id = %self.config.node_id, "playbookd ready");
        loop {
            tokio::select! {
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                () = stop.cancelled() => break,
                _ = hangup.recv() => self.reload().await,
            }
        }
        self.shutdown(checkpoints).await;
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

    async fn shutdown(self, checkpoints: tokio::task::JoinHandle<()>) {
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
        // After the last append: the signed head covers the whole run, so cutting off its
        // tail (up to and including `daemon.stop`) is detectable.
        if let Err(error) = self.checkpointer.checkpoint().await {
            tracing::warn!(error = %audit::error_chain(&error), "final audit checkpoint failed");
        }
        self.tasks_shutdown.cancel();
        if tokio::time::timeout(DRAIN_LIMIT, checkpoints)
            .await
            .is_err()
        {
            tracing::warn!("checkpoint task did not stop in time");
        }
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
