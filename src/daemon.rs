//! Wires the subsystems together and runs them until a stop signal.
//!
//! `Daemon::build` does everything that can fail at start (database, schema, audit chain) so that
//! `run_until_stopped` only serves; tests build a daemon, read its addresses, then run it.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use tokio::net::UnixListener;

use crate::actions::limits::ActionLimits;
use crate::actions::{ActionSetupError, Actions};
use crate::activation::{self, Activated, ActivationError};
use crate::approvals::Approvals;
use crate::config::{Config, ConfigError, EXIT_CONFIG};
use crate::control::{
    Control, ControlParts, KeptVersion, RefusedFile, ReloadReport, ReloadRequest, roles::Roles,
};
use crate::executor::{Executor, ExecutorParts, ExecutorSettings};
use crate::fleet::{self, FleetParts};
use crate::intake::{Intake, IntakeParts, IntakeSettings};
use crate::registry::secure_open::{DOCUMENT_LIMIT, TrustedDir};
use crate::registry::{LoadSummary, Registry, RegistryError, RegistryPaths};
use crate::safe_halt::SafeHalt;
use crate::status::{self, RuntimeSnapshot, StatusAddr, StatusError, StatusListener, StatusState};
use crate::store::anchor::{Anchor, AnchorError, LossKind, RecordedCut, anchor_path};
use crate::store::audit::{self, Actor, AuditEvent, AuditHandle, AuditStartError};
use crate::store::checkpoint::{CheckpointError, Checkpointer, NodeKey, NodeKeyError};
use crate::store::migrate::SchemaError;
use crate::store::privileges::PrivilegeError;
use crate::store::{self, Store, StoreError, chain};
use crate::systemd::{self, Heartbeat, Liveness};
use crate::unix_socket::{self, BindError, Limits, SocketSettings};
use crate::witness::submit::Submitter;

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
    #[error(transparent)]
    NodeKey(#[from] NodeKeyError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Anchor(#[from] AnchorError),
    #[error(transparent)]
    Actions(#[from] ActionSetupError),
    #[error("unix socket")]
    Socket(#[from] BindError),
    #[error("socket activation")]
    Activation(#[from] ActivationError),
    #[error(
        "systemd passed `{name}` listening on {passed}, but the configuration says {configured}; make the socket unit and {key} agree"
    )]
    ActivatedMismatch {
        name: &'static str,
        key: &'static str,
        passed: String,
        configured: String,
    },
    #[error("policy key {path}: {reason}")]
    PolicyKey {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("failed to load the playbook registry")]
    Registry(#[source] RegistryError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
}

impl DaemonError {
    /// 78 (EX_CONFIG) when an operator must fix something, so systemd's
    /// `RestartPreventExitStatus=78` stops a restart loop; 1 when a restart may help.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            DaemonError::Config(_)
            | DaemonError::NodeKey(_)
            | DaemonError::Checkpoint(CheckpointError::ChainTruncated { .. })
            | DaemonError::Audit(
                AuditStartError::ChainLocked { .. }
                | AuditStartError::ChainCut { .. }
                | AuditStartError::Anchor(_),
            )
            | DaemonError::Anchor(_)
            | DaemonError::Actions(_)
            | DaemonError::PolicyKey { .. }
            | DaemonError::Status(StatusError::Activated { .. })
            | DaemonError::Activation(_)
            | DaemonError::ActivatedMismatch { .. } => ExitCode::from(EXIT_CONFIG),
            DaemonError::Socket(error) | DaemonError::Status(StatusError::UnixSocket(error))
                if error.is_config() =>
            {
                ExitCode::from(EXIT_CONFIG)
            }
            DaemonError::Schema(error) if error.is_config() => ExitCode::from(EXIT_CONFIG),
            DaemonError::Privileges(PrivilegeError::Unsafe { .. }) => ExitCode::from(EXIT_CONFIG),
            DaemonError::Registry(error) if error.is_config() => ExitCode::from(EXIT_CONFIG),
            DaemonError::Store(_)
            | DaemonError::Status(
                StatusError::Bind { .. } | StatusError::Serve(_) | StatusError::UnixSocket(_),
            )
            | DaemonError::Audit(AuditStartError::Store { .. })
            | DaemonError::Checkpoint(
                CheckpointError::Store { .. } | CheckpointError::Anchor { .. },
            )
            | DaemonError::Socket(_)
            | DaemonError::Registry(_)
            | DaemonError::Schema(_)
            | DaemonError::Privileges(PrivilegeError::Query(_))
            | DaemonError::Signals(_) => ExitCode::FAILURE,
        }
    }
}

/// A daemon whose start-up checks have passed, ready to serve.
pub struct Daemon {
    config: Config,
    store: Store,
    chain: Chain,
    work: Subsystems,
    listeners: Listeners,
    status_addr: StatusAddr,
    status_state: StatusState,
    /// Publishes what the status API shows about the registry; keep it current on every reload.
    runtime: tokio::sync::watch::Sender<RuntimeSnapshot>,
    /// Stops the audit writer and the checkpoint task, last, once everything else has drained.
    tasks_shutdown: CancellationToken,
    /// Stops intake and executor first; unfinished runs stay resumable.
    work_shutdown: CancellationToken,
    /// `reload` requests from control.sock, run by the main loop like SIGHUP.
    reload_requests: tokio::sync::mpsc::Receiver<ReloadRequest>,
    started: Instant,
    /// Bumped by the executor's loop, which must never stall; the
    /// watchdog stops pinging systemd when it goes quiet.
    heartbeat: Heartbeat,
}

/// The audit chain and what seals it: the writer, the checkpoints and the witnesses.
struct Chain {
    audit: AuditHandle,
    /// The writer's task, awaited last, once everything else has drained.
    audit_task: tokio::task::JoinHandle<()>,
    /// Signs the chain head periodically (spawned by `run_until_stopped`) and at shutdown.
    checkpointer: Checkpointer,
    /// Submits each new checkpoint to the `[[audit.witnesses]]` (none configured: None).
    witness_submitter: Option<Submitter>,
}

/// What decides and acts, wired to the chain: from the registry to the operators' socket.
struct Subsystems {
    registry: Registry,
    safe_halt: SafeHalt,
    /// Heartbeat, nonce retention and the fleet halt listener (spawned by `run_until_stopped`).
    fleet: FleetParts,
    approvals: Approvals,
    executor: Executor,
    intake: Intake,
    control: Control,
}

/// The sockets bound (or taken from systemd) at build, so that a bad address is a start-up
/// error; each is taken out when it starts being served.
struct Listeners {
    decisions: Option<UnixListener>,
    /// Served by `start_work`, next to decisions.sock.
    control: Option<UnixListener>,
    /// Served by `run_until_stopped`.
    status: Option<StatusListener>,
    /// The socket files this process bound (and removes at shutdown); sockets passed by systemd
    /// belong to their socket units and stay.
    bound_paths: Vec<std::path::PathBuf>,
}

impl Daemon {
    /// Connects, checks the schema version and the database role, opens the audit chain and records the start; binds every socket
    /// itself (no socket activation).
    pub async fn build(config: Config) -> Result<Daemon, DaemonError> {
        Daemon::build_activated(config, Activated::default()).await
    }

    /// Like [`Daemon::build`], taking the sockets systemd passed (`playbookd.socket` and its
    /// siblings, by `FileDescriptorName=`) and binding only the ones it did not pass.
    pub async fn build_activated(
        config: Config,
        mut activated: Activated,
    ) -> Result<Daemon, DaemonError> {
        // Before anything emits a metric (a metric recorded without a recorder is lost), so
        // that a fresh /metrics shows every series at its true value or zero.
        status::metrics::install();
        status::metrics::register_http_hosts(&config.actions.http.allowed_hosts);
        // First: a bad key file is an operator error, found before touching the database.
        let node_key = Arc::new(NodeKey::load_or_generate(&config.paths.node_key)?);
        tracing::info!(key_id = %node_key.key_id(), "node key loaded");
        let status_listener = match activated.take_tcp(activation::STATUS)? {
            Some(listener) => status::from_activated(listener, &config.status.listen)?,
            None => status::bind(&config.status.listen).await?,
        };
        let status_addr = status_listener.local_addr()?;
        let store = connect_checked(&config).await?;
        let tasks_shutdown = CancellationToken::new();
        // LISTENs for changes made elsewhere (gates); its subscribers end when it stops.
        let wakeups =
            crate::store::wakeups::spawn(config.postgres_config(), tasks_shutdown.clone());
        let chain = Chain::open(&config, &store, node_key, &tasks_shutdown).await?;
        let (registry, summary) = Registry::load(
            RegistryPaths::from(&config.paths),
            Arc::new(ActionLimits::from_config(&config.actions)),
            chain.audit.clone(),
        )
        .await
        .map_err(DaemonError::Registry)?;
        tracing::info!(
            loaded = summary.loaded,
            rejected = summary.rejections.len(),
            bindings = summary.bindings,
            "registry loaded"
        );
        let work_shutdown = CancellationToken::new();
        let (reload_sender, reload_requests) = tokio::sync::mpsc::channel(4);
        let work = Subsystems::wire(
            &config,
            &store,
            &chain.audit,
            registry,
            &wakeups,
            &work_shutdown,
            reload_sender,
        )
        .await?;
        let mut listeners = Listeners::take_or_bind(&config, &mut activated)?;
        listeners.status = Some(status_listener);
        // Not loaded until `run_until_stopped` publishes the catalog; what this load refused is
        // kept from here on, until the next reload replaces it.
        let (runtime, runtime_receiver) = tokio::sync::watch::channel(RuntimeSnapshot {
            refused_files: refused_files(&reload_report(&summary)),
            loaded_at: Some(status::queries::Timestamp(chain::now_micros())),
            ..RuntimeSnapshot::default()
        });
        let status_state = StatusState::new(store.clone(), chain.audit.clone(), runtime_receiver)
            .with_stale_after(config.fleet.stale_after_seconds.as_secs());
        Ok(Daemon {
            config,
            store,
            chain,
            work,
            listeners,
            status_addr,
            status_state,
            runtime,
            tasks_shutdown,
            work_shutdown,
            reload_requests,
            started: Instant::now(),
            heartbeat: Heartbeat::new(),
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

    /// The playbook registry, for the subsystems that run playbooks (cloning is shallow).
    pub fn registry(&self) -> &Registry {
        &self.work.registry
    }

    pub fn executor(&self) -> &Executor {
        &self.work.executor
    }

    pub fn approvals(&self) -> &Approvals {
        &self.work.approvals
    }

    pub fn safe_halt(&self) -> &SafeHalt {
        &self.work.safe_halt
    }

    pub fn audit(&self) -> &AuditHandle {
        &self.chain.audit
    }

    /// Starts serving decisions and resumes unfinished executions.
    fn start_work(&mut self) {
        let shutdown = &self.work_shutdown;
        if let Some(listener) = self.listeners.decisions.take() {
            let intake = self.work.intake.clone();
            tokio::spawn(unix_socket::serve(intake, listener, shutdown.clone()));
        }
        if let Some(listener) = self.listeners.control.take() {
            let control = self.work.control.clone();
            tokio::spawn(unix_socket::serve(control, listener, shutdown.clone()));
        }
        let executor = self.work.executor.clone();
        let heartbeat = self.heartbeat.clone();
        tokio::spawn(async move {
            match executor.resume_all().await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "resuming unfinished executions"),
                Err(error) => {
                    tracing::error!(error = %audit::error_chain(&error), "cannot list unfinished executions")
                }
            }
            executor.resume_loop(heartbeat).await;
        });
    }

    /// The liveness heartbeat, for the executor loop to [`Heartbeat::beat`].
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// Serves until SIGTERM/SIGINT or `stop` fires; SIGHUP reloads.
    pub async fn run_until_stopped(mut self, stop: CancellationToken) -> Result<(), DaemonError> {
        let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
        let mut hangup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
        self.publish_runtime(None);
        // Stops with `tasks_shutdown`; shutdown signs the final head itself.
        self.chain.checkpointer.clone().spawn(
            self.config.audit.checkpoint_interval_seconds.duration(),
            self.tasks_shutdown.clone(),
        );
        // Off the audit write path: a witness that is down only delays its cosignature.
        if let Some(submitter) = self.chain.witness_submitter.clone() {
            tokio::spawn(submitter.run(
                self.config.audit.checkpoint_interval_seconds.duration(),
                self.tasks_shutdown.clone(),
            ));
        }
        fleet::spawn(self.work.fleet.clone(), self.tasks_shutdown.clone());
        status::metrics::spawn_upkeep(self.tasks_shutdown.clone());
        self.start_work();
        // READY=1 goes out here and nowhere earlier: `build` has checked the schema and the role, opened
        // the audit chain, loaded the registry and bound every socket (decisions, control,
        // status), so when systemd (and anything ordered After= us) hears READY, connections
        // are accepted. Anything that must be up before READY belongs in `build`.
        let mut status_task = match self.listeners.status.take() {
            Some(listener) => tokio::spawn(status::serve(
                listener,
                self.status_state.clone(),
                self.tasks_shutdown.clone(),
            )),
            None => tokio::spawn(async { Ok(()) }),
        };
        systemd::notify_ready(&self.status_line());
        tracing::info!(node_id = %self.config.node_id, "playbookd ready");
        if let Some(interval) = systemd::watchdog_interval() {
            let liveness = Liveness::new(self.store.pool().clone(), self.heartbeat(), interval);
            tokio::spawn(systemd::run_watchdog(
                interval,
                liveness,
                self.tasks_shutdown.clone(),
            ));
            tracing::info!(interval_ms = interval.as_millis(), "systemd watchdog armed");
        }
        loop {
            tokio::select! {
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
                () = stop.cancelled() => break,
                _ = hangup.recv() => {
                    let _ = self.reload().await;
                }
                Some(request) = self.reload_requests.recv() => {
                    tracing::info!(uid = request.uid, "reload requested on control.sock");
                    let _ = request.reply.send(self.reload().await);
                }
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

    /// Re-reads what can change without a restart (trusted keys, playbooks, bindings; never the
    /// configuration file); what it did, file by file (or why it failed), goes back to a
    /// `reload` caller on control.sock.
    async fn reload(&self) -> Result<ReloadReport, String> {
        systemd::notify_reloading();
        tracing::info!("reload requested");
        let mut refused = None;
        let (event, outcome) = match self.work.registry.reload().await {
            Ok(summary) => {
                let report = reload_report(&summary);
                if report.is_clean() {
                    tracing::info!(
                        loaded = report.loaded,
                        bindings = report.bindings,
                        "registry reloaded"
                    );
                } else {
                    tracing::error!(
                        loaded = report.loaded,
                        refused = report.refused.len() + report.refused_keys.len(),
                        kept = report.kept.len(),
                        bindings = report.bindings,
                        "registry reloaded with refused files; the last verified versions stay active"
                    );
                }
                refused = Some(refused_files(&report));
                let event = AuditEvent::new("daemon.reload", Actor::System)
                    .with("loaded", report.loaded)
                    .with("rejected", report.refused.len())
                    .with("refused_keys", report.refused_keys.len())
                    .with("kept", report.kept.len())
                    .with("bindings", report.bindings);
                (event, Ok(report))
            }
            Err(error) => {
                // The previous snapshot stays in force.
                let detail = audit::error_chain(&error);
                tracing::error!(error = %detail, "registry reload failed; previous playbooks stay active");
                let event =
                    AuditEvent::new("daemon.reload", Actor::System).with("error", detail.clone());
                (
                    event,
                    Err(format!(
                        "reload failed, previous playbooks stay active: {detail}"
                    )),
                )
            }
        };
        let recorded = self.chain.audit.append(event).await;
        self.publish_runtime(refused);
        systemd::notify_ready(&self.status_line());
        match recorded {
            Ok(_) => outcome,
            Err(error) => {
                tracing::error!(error = %audit::error_chain(&error), "reload not recorded");
                Err("audit log unavailable: reload not recorded".to_owned())
            }
        }
    }

    /// STOPPING=1 first, so systemd shows "deactivating" while we drain; then a drain bounded by
    /// [`DRAIN_LIMIT`] per stage, well inside the unit's `TimeoutStopSec=`. Nothing here marks an
    /// unfinished execution as finished: whatever is still running stays in its persisted state
    /// and startup recovery resumes it.
    async fn shutdown(self) {
        systemd::notify_stopping();
        tracing::info!("stopping");
        self.work_shutdown.cancel();
        if !self.work.executor.drain(EXECUTOR_DRAIN_LIMIT).await {
            tracing::warn!("some executions did not pause in time; they resume at the next start");
        }
        for path in &self.listeners.bound_paths {
            let _ = std::fs::remove_file(path);
        }
        let uptime = self.started.elapsed().as_secs();
        let stop_recorded = tokio::time::timeout(
            DRAIN_LIMIT,
            self.chain.audit.append(
                AuditEvent::new("daemon.stop", Actor::System).with("uptime_seconds", uptime),
            ),
        )
        .await;
        match stop_recorded {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(error = %audit::error_chain(&error), "stop not recorded");
            }
            Err(_) => tracing::warn!("stop not recorded: audit writer did not answer in time"),
        }
        // After the last append: the signed head covers the whole run, so cutting off its
        // tail (up to and including `daemon.stop`) is detectable.
        match tokio::time::timeout(DRAIN_LIMIT, self.chain.checkpointer.checkpoint()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(error = %audit::error_chain(&error), "final audit checkpoint failed");
            }
            Err(_) => tracing::warn!("final audit checkpoint timed out"),
        }
        if tokio::time::timeout(DRAIN_LIMIT, fleet::mark_stopped(&self.work.fleet))
            .await
            .is_err()
        {
            tracing::warn!("node stop not recorded: the database did not answer in time");
        }
        self.tasks_shutdown.cancel();
        if tokio::time::timeout(DRAIN_LIMIT, self.chain.audit_task)
            .await
            .is_err()
        {
            tracing::warn!("audit writer did not drain in time");
        }
        drop(self.store);
    }

    fn status_line(&self) -> String {
        if let Some(halt) = self.work.safe_halt.active() {
            return crate::safe_halt::status_line(&halt);
        }
        let catalog = self.work.registry.catalog();
        format!(
            "ready: {} playbooks, {} bindings",
            catalog.playbooks().count(),
            catalog.bindings().len()
        )
    }

    /// Tells the status API what the registry holds now; `refused` replaces the list of
    /// refused files after a (re)load, `None` keeps the one published before.
    fn publish_runtime(&self, refused: Option<Vec<status::RefusedFile>>) {
        let catalog = self.work.registry.catalog();
        status::metrics::register_playbooks(catalog.playbooks().map(|active| active.id()));
        let previous = self.runtime.borrow().clone();
        let (refused_files, loaded_at) = match refused {
            Some(files) => (files, Some(status::queries::Timestamp(chain::now_micros()))),
            None => (previous.refused_files, previous.loaded_at),
        };
        let playbooks = catalog
            .playbooks()
            .map(|active| status::PlaybookSummary {
                id: active.id().to_owned(),
                version: u64::from(active.version()),
                sha256_hex: hex::encode(active.sha256()),
                signers: active
                    .signers()
                    .iter()
                    .map(|k| k.as_str().to_owned())
                    .collect(),
            })
            .collect();
        let unresolved_bindings: Vec<status::UnresolvedBinding> = catalog
            .unresolved_bindings()
            .map(|binding| status::UnresolvedBinding {
                policy: binding.policy.clone(),
                outcome: binding.outcome.clone(),
                org_id: binding.org_id.clone(),
                playbook: binding.playbook.clone(),
            })
            .collect();
        for binding in &unresolved_bindings {
            tracing::warn!(
                policy = %binding.policy,
                outcome = %binding.outcome,
                playbook = %binding.playbook,
                "binding has no active playbook: its decisions get no_action"
            );
        }
        #[allow(clippy::cast_precision_loss)] // a count of bindings, far below 2^52
        metrics::gauge!(status::metrics::BINDINGS_WITHOUT_ACTIVE_PLAYBOOK)
            .set(unresolved_bindings.len() as f64);
        let binding_rules = catalog
            .bindings()
            .iter()
            .map(|binding| status::BindingSummary {
                policy: binding.policy.clone(),
                outcome: binding.outcome.clone(),
                org_id: binding.org_id.clone(),
                playbook: binding.playbook.clone(),
                cooldown_seconds: binding.cooldown_seconds,
                require_approval: binding.require_approval,
            })
            .collect();
        self.runtime.send_replace(RuntimeSnapshot {
            registry_loaded: true,
            playbooks,
            bindings: catalog.bindings().len(),
            unresolved_bindings,
            binding_rules,
            refused_files,
            loaded_at,
        });
    }
}

/// The reload reply: every refused file and key with its reason, and what stayed active.
fn reload_report(summary: &LoadSummary) -> ReloadReport {
    ReloadReport {
        loaded: summary.loaded,
        bindings: summary.bindings,
        refused: summary
            .rejections
            .iter()
            .map(|rejection| {
                RefusedFile::new(&rejection.file, rejection.reason.label(), &rejection.reason)
            })
            .collect(),
        refused_keys: summary
            .refused_keys
            .iter()
            .map(|refusal| RefusedFile::new(&refusal.path, "trusted_key_refused", &refusal.error))
            .collect(),
        kept: summary
            .kept
            .iter()
            .map(|kept| KeptVersion {
                what: kept.what.clone(),
                file: kept.file.display().to_string(),
            })
            .collect(),
    }
}

/// What a registry load refused, for the console: playbook and bindings files, then key files.
fn refused_files(report: &ReloadReport) -> Vec<status::RefusedFile> {
    report
        .refused
        .iter()
        .chain(&report.refused_keys)
        .map(|refused| status::RefusedFile {
            path: refused.file.clone(),
            label: refused.reason.clone(),
            reason: refused.detail.clone(),
        })
        .collect()
}

/// The first append after an admin accepted a cut: names the lost seqs, who accepted and why.
/// The anchor forgets the cut once this commits.
async fn record_accepted_cut(audit: &AuditHandle, cut: &RecordedCut) -> Result<(), DaemonError> {
    let Some(acceptance) = &cut.accepted else {
        return Ok(());
    };
    let (kind, first, last) = match cut.loss.kind {
        LossKind::Missing { first, last } => ("missing", first, last),
        LossKind::Differs { seq } => ("differs", seq, cut.loss.committed.seq),
    };
    let event = AuditEvent::new("audit.cut_accepted", Actor::Uid(acceptance.uid))
        .with("loss", kind)
        .with("first_lost_seq", first)
        .with("last_lost_seq", last)
        .with("committed_seq", cut.loss.committed.seq)
        .with("committed_hash", hex::encode(cut.loss.committed.hash))
        .with("database_seq", cut.loss.database.seq)
        .with("detected_at", audit::format_timestamp(cut.detected_at))
        .with("accepted_at", audit::format_timestamp(acceptance.at))
        .with("reason", acceptance.reason.clone());
    let appended = audit.append(event).await.map_err(chain_unavailable)?;
    tracing::warn!(seq = appended.seq, lost = %cut.loss.seqs(), uid = acceptance.uid,
        "accepted chain cut recorded; appending resumes");
    Ok(())
}

/// The pool, once the database has shown that it is fit to serve: the schema is the one this
/// binary knows (the daemon never migrates; its role cannot), and the role cannot erase the
/// evidence it writes. Checked before anything acts.
async fn connect_checked(config: &Config) -> Result<Store, DaemonError> {
    let store = Store::connect(
        &config.postgres_config(),
        config.database.pool_size.usize(),
        config.database.connect_timeout_seconds.duration(),
    )
    .await?;
    let client = store.pool().get().await.map_err(StoreError::Pool)?;
    let version = store::migrate::check_schema(&client).await?;
    let role = store::privileges::check_runtime_role(&client).await?;
    tracing::info!(version, role = %role, "schema current; the database role owns nothing and cannot alter the evidence");
    drop(client);
    Ok(store)
}

impl Chain {
    /// Opens the chain against its anchor (a cut found here stops the start: 78), checks that
    /// the signed head is still in the database, records an accepted cut and the start.
    async fn open(
        config: &Config,
        store: &Store,
        node_key: Arc<NodeKey>,
        tasks_shutdown: &CancellationToken,
    ) -> Result<Chain, DaemonError> {
        // The chain head kept outside the database.
        let anchor = Arc::new(Anchor::load(
            anchor_path(&config.paths.node_key),
            &config.node_id,
        )?);
        let (audit, audit_task, accepted_cut) = audit::start_writer_anchored(
            config.postgres_config(),
            config.node_id.to_string(),
            Some(anchor),
            tasks_shutdown.clone(),
        )
        .await?;
        let mut checkpointer = Checkpointer::new(audit.clone(), store.clone(), node_key.clone());
        let witness_submitter = (!config.audit.witnesses.is_empty()).then(|| {
            Submitter::new(
                config.audit.witnesses.clone(),
                store.clone(),
                node_key,
                config.node_id.to_string(),
            )
        });
        if let Some(submitter) = &witness_submitter {
            checkpointer = checkpointer.notify_on_checkpoint(submitter.wake_handle());
        }
        checkpointer.ensure_not_truncated().await?;
        if let Some(cut) = accepted_cut {
            record_accepted_cut(&audit, &cut).await?;
        }
        audit
            .append(
                AuditEvent::new("daemon.start", Actor::System)
                    .with("version", env!("CARGO_PKG_VERSION"))
                    .with("pid", std::process::id()),
            )
            .await
            .map_err(chain_unavailable)?;
        Ok(Chain {
            audit,
            audit_task,
            checkpointer,
            witness_submitter,
        })
    }
}

/// An append refused at start: the chain cannot record, so the daemon does not start.
fn chain_unavailable(error: crate::store::audit::AppendError) -> DaemonError {
    DaemonError::Store(StoreError::Corrupt {
        what: "audit log",
        detail: audit::error_chain(&error),
    })
}

impl Subsystems {
    /// The halt state, this node's fleet row, then the deciders and actors in data-flow order
    /// (approvals → executor → intake, control), each handed what it needs.
    async fn wire(
        config: &Config,
        store: &Store,
        audit: &AuditHandle,
        registry: Registry,
        wakeups: &tokio::sync::broadcast::Sender<crate::store::wakeups::Wakeup>,
        work_shutdown: &CancellationToken,
        reload: tokio::sync::mpsc::Sender<ReloadRequest>,
    ) -> Result<Subsystems, DaemonError> {
        let safe_halt = SafeHalt::load(
            store,
            audit.clone(),
            config.fleet.halt_fleet_on_rollback_failure,
        )
        .await?;
        safe_halt.follow_chain_loss();
        let fleet = FleetParts {
            store: store.clone(),
            audit: audit.clone(),
            safe_halt: safe_halt.clone(),
            pg: config.postgres_config(),
            heartbeat_interval: config.fleet.heartbeat_interval_seconds.duration(),
            freshness_seconds: config.intake.freshness_seconds.as_secs(),
            prune_batch: config.fleet.nonce_prune_batch.get(),
            started_at: chain::now_micros(),
        };
        // Listed (and its freshness window counted by nonce retention) before any decision.
        fleet::first_beat(&fleet).await?;
        let approvals = Approvals::new(store.clone(), audit.clone(), safe_halt.watch().clone());
        approvals.follow(wakeups.subscribe());
        let executor = Executor::new(
            ExecutorParts {
                store: store.clone(),
                audit: audit.clone(),
                actions: Actions::with_actuator(&config.actions, &config.actuator.socket)?,
                registry: registry.clone(),
                safe_halt: safe_halt.clone(),
                approvals: approvals.clone(),
                settings: executor_settings(config),
            },
            work_shutdown.clone(),
        );
        let intake = Intake::new(IntakeParts {
            settings: intake_settings(config)?,
            store: store.clone(),
            audit: audit.clone(),
            registry: registry.clone(),
            safe_halt: safe_halt.clone(),
            executor: executor.clone(),
        });
        let control = Control::new(ControlParts {
            settings: control_settings(config),
            roles: Roles::from_config(&config.roles),
            store: store.clone(),
            audit: audit.clone(),
            approvals: approvals.clone(),
            executor: executor.clone(),
            safe_halt: safe_halt.clone(),
            reload,
        });
        Ok(Subsystems {
            registry,
            safe_halt,
            fleet,
            approvals,
            executor,
            intake,
            control,
        })
    }
}

impl Listeners {
    /// decisions.sock and control.sock, from systemd or bound here (the status listener is
    /// bound first of all, before the database, and added by the caller).
    fn take_or_bind(config: &Config, activated: &mut Activated) -> Result<Listeners, DaemonError> {
        let mut bound_paths = Vec::new();
        let mut take = |name, path, group: &Option<String>| {
            take_or_bind(activated, name, path, group.as_deref(), &mut bound_paths)
        };
        let decisions = take(
            activation::DECISIONS,
            &config.paths.decision_socket,
            &config.intake.socket_group,
        )?;
        let control = take(
            activation::CONTROL,
            &config.paths.control_socket,
            &config.control.socket_group,
        )?;
        for name in activated.untaken() {
            tracing::warn!(name = %name, "systemd passed a socket the daemon does not use; check the socket units' FileDescriptorName=");
        }
        Ok(Listeners {
            decisions: Some(decisions),
            control: Some(control),
            status: None,
            bound_paths,
        })
    }
}

/// How long shutdown waits for queued audit appends before giving up.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long shutdown waits for executions to reach a resumable point.
const EXECUTOR_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// The Unix listener systemd passed under `name` (checked to be the configured path), or one
/// bound here at `path` (then recorded in `bound`, to be removed at shutdown).
fn take_or_bind(
    activated: &mut Activated,
    name: &'static str,
    path: &std::path::Path,
    group: Option<&str>,
    bound: &mut Vec<std::path::PathBuf>,
) -> Result<UnixListener, DaemonError> {
    let Some(listener) = activated.take_unix(name)? else {
        let listener = unix_socket::bind(path, group)?;
        bound.push(path.to_owned());
        return Ok(listener);
    };
    let passed = listener
        .local_addr()
        .ok()
        .and_then(|addr| addr.as_pathname().map(std::path::Path::to_owned));
    if passed.as_deref() != Some(path) {
        return Err(DaemonError::ActivatedMismatch {
            name,
            key: if name == activation::DECISIONS {
                "paths.decision_socket"
            } else {
                "paths.control_socket"
            },
            passed: passed.map_or_else(
                || "an unnamed socket".to_owned(),
                |p| p.display().to_string(),
            ),
            configured: path.display().to_string(),
        });
    }
    unix_socket::listener_from_std(listener)
        .map_err(|source| BindError::io(path, "take", source).into())
}

fn executor_settings(config: &Config) -> ExecutorSettings {
    let executor = &config.executor;
    let max_concurrent_runs = executor.max_concurrent_runs.usize();
    ExecutorSettings {
        max_concurrent_runs,
        max_runs_per_org: if executor.max_runs_per_org == 0 {
            max_concurrent_runs
        } else {
            executor.max_runs_per_org
        },
        default_step_timeout: executor.default_step_timeout_seconds.duration(),
        resume_interval: executor.resume_interval_seconds.duration(),
    }
}

fn intake_settings(config: &Config) -> Result<IntakeSettings, DaemonError> {
    let intake = &config.intake;
    let policy_keys = intake
        .policy_keys
        .iter()
        .map(|path| load_policy_key(path))
        .collect::<Result<_, _>>()?;
    Ok(IntakeSettings {
        allowed_uids: intake.allowed_uids.clone(),
        freshness_seconds: intake.freshness_seconds.as_secs(),
        socket: SocketSettings {
            limits: Limits {
                max_connections: intake.max_connections.usize(),
                max_per_uid: intake.max_connections_per_uid.usize(),
                reserved_for_privileged: 0,
            },
            line_deadline: intake.idle_timeout_seconds.duration(),
        },
        max_accepted_per_second: intake.max_accepted_per_second.get(),
        max_backlog: intake.max_backlog.usize(),
        policy_keys,
    })
}

fn control_settings(config: &Config) -> SocketSettings {
    let control = &config.control;
    SocketSettings {
        limits: Limits {
            max_connections: control.max_connections.usize(),
            max_per_uid: control.max_connections_per_uid.usize(),
            reserved_for_privileged: control.admin_reserved_connections,
        },
        line_deadline: control.idle_timeout_seconds.duration(),
    }
}

/// Reads a policy engine's public key through the registry's secure open: whoever can replace
/// this file can sign decisions, so it gets the same owner, mode, symlink and size checks as a
/// trusted playbook key.
fn load_policy_key(path: &std::path::Path) -> Result<ed25519_dalek::VerifyingKey, DaemonError> {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    let error = |reason: String| DaemonError::PolicyKey {
        path: path.to_owned(),
        reason,
    };
    let pem = TrustedDir::parent_of(path)
        .and_then(|dir| dir.read(path, DOCUMENT_LIMIT))
        .map_err(|e| error(crate::store::audit::error_chain(&e)))?;
    let pem = std::str::from_utf8(&pem).map_err(|_| error("not PEM text".into()))?;
    ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
        .map_err(|_| error("not an Ed25519 public key (SPKI PEM)".into()))
}
