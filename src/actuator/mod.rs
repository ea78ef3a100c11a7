//! `playbookd actuator`: the small privileged helper (its own unit, `playbookd-actuator.service`).
//!
//! The daemon parses everything that comes from outside and holds no privilege (DESIGN rule 9).
//! What needs privilege goes through here: signals to other users' processes (CAP_KILL), the
//! nftables set (CAP_NET_ADMIN), and moving other users' files into and out of quarantine
//! (confined to `actions.file.roots`). The actuator:
//! - serves one socket, and only the daemon's uid on it (SO_PEERCRED; anyone else gets a
//!   refusal and is logged);
//! - speaks a closed, typed protocol ([`protocol::Request`] → [`protocol::Reply`]), one request
//!   per connection; it reads no template, YAML or decision, and has no database and no
//!   internet socket;
//! - checks every request again on its own side: never pid 1, itself or any of its threads, any
//!   thread of the daemon that asks, the processes of protected users (their PostgreSQL
//!   server), systemd or journald; never loopback, unspecified or `never_block` addresses;
//!   never a path outside the file roots; a pid whose start time changed is left alone.
//!
//! - [`protocol`]: the wire types.
//! - [`nft`]: the nftables table.
//! - [`quarantine`]: the quarantine directory.

pub mod nft;
pub mod protocol;
pub mod quarantine;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use self::nft::Nft;
use self::protocol::{Reply, Request, SignalRequest};
use self::quarantine::QuarantineStore;
use crate::activation::{self, Activated, ActivationError};
use crate::config::{Config, ConfigError};
use crate::sys::{self, ProcessStatus, SignalOutcome};
use crate::unix_socket::{self, BindError, Line};

/// Why the actuator could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActuatorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{key}: no user `{user}` on this host (create it, or fix the configuration)")]
    UnknownUser { key: &'static str, user: String },
    #[error("socket activation")]
    Activation(#[from] ActivationError),
    #[error("actuator socket")]
    Socket(#[from] BindError),
    #[error("failed to install signal handlers")]
    Signals(#[source] std::io::Error),
}

impl ActuatorError {
    /// 78 (EX_CONFIG) when an operator must fix something; 1 otherwise.
    pub fn exit_code(&self) -> std::process::ExitCode {
        use crate::config::EXIT_CONFIG;
        match self {
            ActuatorError::Config(_)
            | ActuatorError::UnknownUser { .. }
            | ActuatorError::Activation(_) => std::process::ExitCode::from(EXIT_CONFIG),
            ActuatorError::Socket(error) if error.is_config() => {
                std::process::ExitCode::from(EXIT_CONFIG)
            }
            ActuatorError::Socket(_) | ActuatorError::Signals(_) => std::process::ExitCode::FAILURE,
        }
    }
}

/// The actuator's checks and operations, built from the configuration.
pub struct Actuator {
    /// The only uid served.
    daemon_uid: u32,
    guard: ProcessGuard,
    nft: Nft,
    quarantine: Arc<QuarantineStore>,
}

impl Actuator {
    /// Resolves the users named in `[actuator]` and builds the operations; touches nothing.
    pub fn from_config(config: &Config) -> Result<Actuator, ActuatorError> {
        let daemon_uid = uid_of("actuator.daemon_user", &config.actuator.daemon_user)?;
        let mut protected_uids = BTreeMap::new();
        match &config.actuator.protected_users {
            // Named by the operator: each must exist, or the protection they meant is missing.
            Some(users) => {
                for user in users {
                    let uid = uid_of("actuator.protected_users", user)?;
                    protected_uids.insert(uid, format!("protected user {user}"));
                }
            }
            // The default: the local PostgreSQL server, when there is one.
            None => match uid_of("actuator.protected_users", DEFAULT_PROTECTED_USER) {
                Ok(uid) => {
                    protected_uids.insert(uid, format!("protected user {DEFAULT_PROTECTED_USER}"));
                }
                Err(_) => tracing::info!(
                    user = DEFAULT_PROTECTED_USER,
                    "no such user here; no local PostgreSQL server to protect"
                ),
            },
        }
        // Root owns too much to protect by uid; the daemon and the actuator are also protected
        // by pid below, whatever their uid.
        if daemon_uid != 0 {
            protected_uids.insert(daemon_uid, "the daemon's user".to_owned());
        }
        let own_uid = sys::effective_uid();
        if own_uid != 0 {
            protected_uids.insert(own_uid, "the actuator's user".to_owned());
        }
        Ok(Actuator {
            daemon_uid,
            guard: ProcessGuard {
                own_pid: sys::own_pid(),
                protected_uids,
            },
            nft: Nft::new(&config.actions.net),
            quarantine: Arc::new(QuarantineStore::new(
                config.actions.file.quarantine_dir.clone(),
                config.actions.file.roots.clone(),
            )),
        })
    }

    /// Carries out one request from the daemon process `daemon_pid`.
    pub async fn handle(&self, request: Request, daemon_pid: u32) -> Reply {
        match request {
            Request::Signal(signal) => self.signal(&signal, daemon_pid),
            Request::Block(block) => self.nft.block(block.net, block.timeout_seconds).await,
            Request::Unblock(unblock) => self.nft.unblock(unblock.net).await,
            Request::Quarantine(request) => {
                let store = Arc::clone(&self.quarantine);
                blocking(move || store.quarantine(&request.path, request.key.as_str())).await
            }
            Request::Restore(request) => {
                let store = Arc::clone(&self.quarantine);
                blocking(move || store.restore(&request.path)).await
            }
        }
    }

    fn signal(&self, request: &SignalRequest, daemon_pid: u32) -> Reply {
        let pid = request.pid;
        let refused = |reason: String| Reply::Refused { reason };
        let gone = Reply::Signalled {
            pid,
            signal: request.signal,
            already_gone: true,
        };
        if pid == 1 {
            return refused("refusing to signal pid 1: it is init".into());
        }
        if pid == 0 || i32::try_from(pid).is_err() {
            return refused(format!("refusing to signal pid {pid}: not a process id"));
        }
        let status = match sys::process_status(pid) {
            Ok(Some(status)) => status,
            Ok(None) => return gone,
            Err(error) => {
                return Reply::transient(format!("cannot read /proc/{pid}/status: {error}"));
            }
        };
        if let Err(reason) = self.guard.check(pid, &status, daemon_pid) {
            return refused(reason);
        }
        if let Some(expected) = request.start_time {
            match sys::process_start_time(pid) {
                Ok(None) => return gone,
                Ok(Some(actual)) if actual != expected => {
                    return refused(format!(
                        "pid reused: pid {pid} started at tick {actual}, not {expected}"
                    ));
                }
                Ok(Some(_)) => {}
                Err(error) => {
                    return Reply::transient(format!(
                        "cannot read the start time of pid {pid}: {error}"
                    ));
                }
            }
        }
        if let Some(expected) = &request.executable {
            match sys::process_executable(pid) {
                Ok(None) => return gone,
                Ok(Some(actual)) if &actual != expected => {
                    return refused(format!(
                        "pid reused: pid {pid} runs {}, not {}",
                        actual.display(),
                        expected.display()
                    ));
                }
                Ok(Some(_)) => {}
                // Reading another user's exe link needs ptrace rights the actuator does not
                // hold: say so rather than signal an unverified process.
                Err(error) => {
                    return refused(format!(
                        "cannot verify the executable of pid {pid} ({error}); use start_time"
                    ));
                }
            }
        }
        match sys::send_signal(pid, request.signal.to_signal()) {
            Ok(SignalOutcome::Delivered) => Reply::Signalled {
                pid,
                signal: request.signal,
                already_gone: false,
            },
            Ok(SignalOutcome::NoSuchProcess) => gone,
            Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                Reply::permanent(format!(
                    "not permitted to signal pid {pid} (the actuator needs CAP_KILL for other users' processes)"
                ))
            }
            Err(error) => Reply::permanent(format!("cannot signal pid {pid}: {error}")),
        }
    }
}

/// The processes the actuator never signals, whoever asks.
struct ProcessGuard {
    own_pid: u32,
    /// uid → why its processes are protected.
    protected_uids: BTreeMap<u32, String>,
}

impl ProcessGuard {
    /// `Err(reason)` when `pid` (a process or a thread id) must not be signalled. Checked on
    /// the thread group, because `kill(2)` on a thread id signals the whole process.
    fn check(&self, pid: u32, status: &ProcessStatus, daemon_pid: u32) -> Result<(), String> {
        if status.tgid <= 1 {
            return Err(format!("refusing to signal pid {pid}: it is init (pid 1)"));
        }
        if status.tgid == self.own_pid {
            return Err(format!(
                "refusing to signal pid {pid}: it is the actuator (pid {})",
                self.own_pid
            ));
        }
        if status.tgid == daemon_pid {
            let what = if pid == daemon_pid {
                "the daemon"
            } else {
                "a thread of the daemon"
            };
            return Err(format!(
                "refusing to signal pid {pid}: it is {what} (pid {daemon_pid})"
            ));
        }
        if let Some(why) = self.protected_uids.get(&status.uid) {
            return Err(format!(
                "refusing to signal pid {pid}: it belongs to uid {} ({why})",
                status.uid
            ));
        }
        if PROTECTED_NAMES.contains(&status.name.as_str()) {
            return Err(format!(
                "refusing to signal pid {pid}: it is {} (systemd or journald)",
                status.name
            ));
        }
        Ok(())
    }
}

/// Command names never signalled: systemd (pid 1 and user managers) and journald. A process can
/// rename itself to one of these and so become unkillable here: a refusal, never a wrong kill.
const PROTECTED_NAMES: [&str; 3] = ["systemd", "systemd-journal", "systemd-journald"];

/// Serves the daemon on `listener` until `shutdown`, one task per connection.
pub async fn serve(actuator: Arc<Actuator>, listener: UnixListener, shutdown: CancellationToken) {
    let busy = Reply::transient("actuator busy").to_line();
    let limits = unix_socket::Limits {
        max_connections: MAX_CONNECTIONS,
        // One peer is allowed at all (the daemon's uid): it may use every slot.
        max_per_uid: MAX_CONNECTIONS,
        reserved_for_privileged: 0,
    };
    let daemon_uid = actuator.daemon_uid;
    unix_socket::accept_loop(
        listener,
        limits,
        shutdown,
        // Judged at connect from SO_PEERCRED: anyone but the daemon never holds a slot.
        // `connection` checks the credentials again (it also needs the peer's pid).
        move |credentials| {
            if credentials.uid() == daemon_uid {
                unix_socket::Admission::Serve {
                    peer: (),
                    privileged: false,
                }
            } else {
                tracing::warn!(
                    peer_uid = credentials.uid(),
                    peer_pid = credentials.pid(),
                    "refused a peer that is not the daemon's uid"
                );
                unix_socket::Admission::Refuse(
                    Reply::Refused {
                        reason: format!(
                            "peer uid {} is not the daemon's uid {daemon_uid}",
                            credentials.uid()
                        ),
                    }
                    .to_line(),
                )
            }
        },
        move |_| busy.clone(),
        move |stream, ()| connection(Arc::clone(&actuator), stream),
    )
    .await;
}

/// Runs the actuator: takes its socket from systemd (or binds `actuator.socket`), tells systemd
/// it is ready, serves until SIGTERM or SIGINT.
pub async fn run(config: Config, mut activated: Activated) -> Result<(), ActuatorError> {
    let actuator = Arc::new(Actuator::from_config(&config)?);
    let (listener, bound_path) = match activated.take_unix(activation::ACTUATOR)? {
        Some(listener) => (
            unix_socket::listener_from_std(listener)
                .map_err(|source| BindError::io(&config.actuator.socket, "take", source))?,
            None,
        ),
        None => {
            // Bound here (not by playbookd-actuator.socket): mode 0660 and the daemon user's
            // primary group, so the daemon, and only its group, can connect at all.
            let group = daemon_group(&config.actuator.daemon_user)?;
            (
                unix_socket::bind(&config.actuator.socket, Some(&group))?,
                Some(config.actuator.socket.clone()),
            )
        }
    };
    let mut terminate = signal(SignalKind::terminate()).map_err(ActuatorError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ActuatorError::Signals)?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(actuator.clone(), listener, shutdown.clone()));
    crate::systemd::notify_ready(&format!("serving uid {}", actuator.daemon_uid));
    tracing::info!(
        daemon_uid = actuator.daemon_uid,
        socket = %config.actuator.socket.display(),
        "playbookd actuator ready"
    );
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    crate::systemd::notify_stopping();
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    if let Some(path) = bound_path {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

async fn connection(actuator: Arc<Actuator>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let credentials = match read.as_ref().peer_cred() {
        Ok(credentials) => credentials,
        Err(error) => {
            tracing::warn!(%error, "no peer credentials; connection closed");
            return;
        }
    };
    let reply = match credentials.pid().and_then(|pid| u32::try_from(pid).ok()) {
        _ if credentials.uid() != actuator.daemon_uid => {
            tracing::warn!(
                peer_uid = credentials.uid(),
                peer_pid = credentials.pid(),
                "refused a peer that is not the daemon's uid"
            );
            Reply::Refused {
                reason: format!(
                    "peer uid {} is not the daemon's uid {}",
                    credentials.uid(),
                    actuator.daemon_uid
                ),
            }
        }
        None => Reply::Refused {
            reason: "the peer's pid is unknown".into(),
        },
        Some(daemon_pid) => {
            let mut reader = tokio::io::BufReader::new(read);
            let mut line = Vec::new();
            match unix_socket::read_line(&mut reader, &mut line, protocol::MAX_LINE_BYTES, IDLE)
                .await
            {
                Ok(Line::Complete) => match protocol::decode_request(&line) {
                    Ok(request) => {
                        let operation = request.operation();
                        let reply = actuator.handle(request.clone(), daemon_pid).await;
                        log_outcome(operation, &request, &reply);
                        reply
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "refused a malformed request");
                        Reply::Refused {
                            reason: format!("malformed request: {error}"),
                        }
                    }
                },
                Ok(Line::TooLong) => Reply::Refused {
                    reason: format!(
                        "malformed request: longer than {} bytes",
                        protocol::MAX_LINE_BYTES
                    ),
                },
                Ok(Line::Closed | Line::TimedOut { .. }) | Err(_) => return,
            }
        }
    };
    let _ = write.write_all(&reply.to_line()).await;
}

fn log_outcome(operation: &str, request: &Request, reply: &Reply) {
    match reply {
        Reply::Refused { reason } => {
            tracing::warn!(operation, ?request, reason = %reason, "request refused");
        }
        Reply::Failed { reason, transient } => {
            tracing::warn!(operation, ?request, reason = %reason, transient, "request failed");
        }
        Reply::Signalled { .. }
        | Reply::Blocked { .. }
        | Reply::Unblocked { .. }
        | Reply::Quarantined { .. }
        | Reply::Restored { .. } => {
            tracing::info!(operation, ?request, ?reply, "request done");
        }
    }
}

async fn blocking(
    work: impl FnOnce() -> Result<Reply, quarantine::ActionError> + Send + 'static,
) -> Reply {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => error.into_reply(),
        Err(error) => Reply::transient(format!("file task failed: {error}")),
    }
}

/// The name of `user`'s primary group.
fn daemon_group(user: &str) -> Result<String, ActuatorError> {
    let unknown = || ActuatorError::UnknownUser {
        key: "actuator.daemon_user",
        user: user.to_owned(),
    };
    let entry = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(unknown)?;
    nix::unistd::Group::from_gid(entry.gid)
        .ok()
        .flatten()
        .map(|group| group.name)
        .ok_or_else(unknown)
}

fn uid_of(key: &'static str, user: &str) -> Result<u32, ActuatorError> {
    match nix::unistd::User::from_name(user) {
        Ok(Some(entry)) => Ok(entry.uid.as_raw()),
        Ok(None) | Err(_) => Err(ActuatorError::UnknownUser {
            key,
            user: user.to_owned(),
        }),
    }
}

/// Whose processes are protected when `actuator.protected_users` is unset.
const DEFAULT_PROTECTED_USER: &str = "postgres";

/// Connections served at once (the daemon makes one per step; a few dozen in flight at most).
const MAX_CONNECTIONS: usize = 64;
/// A connection that sends no request within this is closed.
const IDLE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> ProcessGuard {
        ProcessGuard {
            own_pid: 500,
            protected_uids: BTreeMap::from([(110, "protected user postgres".to_owned())]),
        }
    }

    fn status(name: &str, tgid: u32, uid: u32) -> ProcessStatus {
        ProcessStatus {
            name: name.into(),
            tgid,
            uid,
        }
    }

    #[test]
    fn init_the_actuator_the_daemon_its_threads_and_protected_users_are_refused() {
        let guard = guard();
        let daemon = 700;
        for (pid, status, expected) in [
            (1, status("systemd", 1, 0), "init"),
            (501, status("tokio-runtime-w", 500, 0), "the actuator"),
            (700, status("playbookd", 700, 999), "is the daemon"),
            (
                703,
                status("tokio-runtime-w", 700, 999),
                "a thread of the daemon",
            ),
            (900, status("postgres", 900, 110), "protected user postgres"),
            (
                400,
                status("systemd-journal", 400, 0),
                "systemd or journald",
            ),
        ] {
            let reason = guard.check(pid, &status, daemon).unwrap_err();
            assert!(reason.contains(expected), "{pid}: {reason}");
        }
        assert!(
            guard
                .check(4242, &status("evil", 4242, 1000), daemon)
                .is_ok()
        );
    }
}
