//! systemd integration: where logs go (journald or stderr), readiness and status notifications,
//! and the watchdog.
//!
//! # Notifications
//! Nothing is sent to systemd when `NOTIFY_SOCKET` is unset (sd-notify checks it), so the same
//! binary runs unchanged outside systemd. The daemon sends `READY=1` only once it can serve
//! (see `Daemon::run_until_stopped`), `STATUS=` lines in plain words, `STOPPING=1` when asked to
//! stop, and `WATCHDOG=1` only while [`Liveness::check`] passes, so a stuck daemon is restarted.
//!
//! # journald
//! With a journal socket, events go to journald natively: `SYSLOG_IDENTIFIER=playbookd`, the
//! priority mapped from the level, and every field of the event and its spans as a journal field
//! of the same name in upper case with no prefix, so `execution_id` becomes `EXECUTION_ID` and
//! `journalctl -u playbookd EXECUTION_ID=…` finds one run. tracing-journald always talks to
//! `/run/systemd/journal/socket` (the path is fixed in the crate); the tests reach it with a
//! private mount namespace instead of a path override, so no environment variable can redirect
//! the daemon's logs.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing_journald::Priority;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::store::StoreError;

/// Environment variable holding the log filter (`info` by default; tracing-subscriber syntax).
pub const LOG_FILTER_ENV: &str = "PLAYBOOKD_LOG";

/// The `SYSLOG_IDENTIFIER=` of every journal entry, whatever the binary is called.
pub const SYSLOG_IDENTIFIER: &str = "playbookd";

/// How often the executor loop is expected to call [`Heartbeat::beat`] while it is healthy.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_millis(500);

/// Installs the global subscriber: journald when its socket answers, otherwise stderr.
/// Safe to call more than once (later calls do nothing).
pub fn init_logging() {
    let filter = EnvFilter::try_from_env(LOG_FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if Path::new(JOURNAL_SOCKET).exists()
        && let Ok(journald) = journald_layer()
    {
        let _ = registry.with(journald).try_init();
        return;
    }
    let _ = registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .try_init();
}

/// The journald layer exactly as the daemon uses it; fails when journald does not answer.
pub fn journald_layer() -> std::io::Result<tracing_journald::Layer> {
    // No field prefix: the default `F_` would turn `execution_id` into `F_EXECUTION_ID`, and
    // operators search by the documented names. tracing-journald drops leading underscores, so
    // an event field can never forge a trusted `_PID`-style field.
    //
    // Priorities follow syslog usage (info is 6, as `journalctl -p info` expects); the crate's
    // default shifts every level one step up (info as notice).
    let priorities = tracing_journald::PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    };
    Ok(tracing_journald::layer()?
        .with_syslog_identifier(SYSLOG_IDENTIFIER.into())
        .with_field_prefix(None)
        .with_priority_mappings(priorities))
}

/// Tells systemd the daemon is ready, with a one-line status.
pub fn notify_ready(status: &str) {
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// Updates the one-line status shown by `systemctl status`.
pub fn notify_status(status: &str) {
    notify(&[sd_notify::NotifyState::Status(status)]);
}

/// Shows a SAFE-HALT in `systemctl status`: `SAFE-HALT since <RFC 3339>: <reason>`.
pub fn notify_safe_halt(since: OffsetDateTime, reason: &str) {
    notify_status(&safe_halt_status(since, reason));
}

/// Tells systemd the daemon is stopping.
pub fn notify_stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

/// Tells systemd the daemon is reloading; call [`notify_ready`] when done.
pub fn notify_reloading() {
    notify(&[sd_notify::NotifyState::Reloading]);
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if any.
///
/// Follows `sd_watchdog_enabled(3)`: `WATCHDOG_USEC` sets the interval and `WATCHDOG_PID`, when
/// present, must name this process (so a child that inherited the variables stays quiet).
/// `sd_notify::watchdog_enabled` is used when it agrees; it additionally insists on
/// `WATCHDOG_PID`, which systemd always sets but a test harness cannot know before the spawn.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) {
        return (usec > 0).then(|| Duration::from_micros(usec));
    }
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// A cheap, cloneable "I am still turning" signal from a loop that must never stall.
///
/// The executor loop calls [`beat`](Heartbeat::beat) at least every [`HEARTBEAT_PERIOD`]; the
/// watchdog reads [`age`](Heartbeat::age). Time is monotonic (an `Instant` base), so a wall-clock
/// jump neither fakes a beat nor kills a healthy daemon.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    base: Instant,
    /// Milliseconds since `base` at the last beat.
    last_ms: Arc<AtomicU64>,
}

impl Heartbeat {
    /// A heartbeat that has just beaten.
    pub fn new() -> Heartbeat {
        Heartbeat {
            base: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records that the loop is alive now.
    pub fn beat(&self) {
        self.last_ms
            .fetch_max(millis_since(self.base), Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let now = millis_since(self.base);
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat::new()
    }
}

/// What the watchdog checks before it tells systemd the daemon is alive.
#[derive(Clone)]
pub struct Liveness {
    pool: deadpool_postgres::Pool,
    heartbeat: Heartbeat,
    /// `SELECT 1` must answer within this, or the database counts as stuck.
    database_bound: Duration,
    /// A heartbeat older than this means the executor loop is stuck.
    heartbeat_limit: Duration,
}

/// Why the daemon does not count as alive.
#[derive(Debug, thiserror::Error)]
pub enum LivenessError {
    #[error("database did not answer SELECT 1 within {bound:?}")]
    DatabaseTimeout { bound: Duration },
    /// No pooled connection, or `SELECT 1` failed: the store's own errors.
    #[error("database liveness check failed")]
    Database(#[source] StoreError),
    #[error("executor loop silent for {age:?} (limit {limit:?})")]
    ExecutorStalled { age: Duration, limit: Duration },
}

impl Liveness {
    /// Checks sized for a watchdog `interval`: the database must answer within a quarter of it
    /// (0.2 to 5 s) and the heartbeat must be younger than the interval (at least four beats).
    pub fn new(pool: deadpool_postgres::Pool, heartbeat: Heartbeat, interval: Duration) -> Self {
        Liveness {
            pool,
            heartbeat,
            database_bound: (interval / 4)
                .clamp(Duration::from_millis(200), Duration::from_secs(5)),
            heartbeat_limit: interval.max(HEARTBEAT_PERIOD * 4),
        }
    }

    /// Passes when the executor heartbeat is recent and the pool answers `SELECT 1` in time.
    pub async fn check(&self) -> Result<(), LivenessError> {
        let age = self.heartbeat.age();
        if age > self.heartbeat_limit {
            return Err(LivenessError::ExecutorStalled {
                age,
                limit: self.heartbeat_limit,
            });
        }
        let probe = async {
            let client = self.pool.get().await.map_err(StoreError::Pool)?;
            client.simple_query("SELECT 1").await?;
            Ok::<_, StoreError>(())
        };
        tokio::time::timeout(self.database_bound, probe)
            .await
            .map_err(|_| LivenessError::DatabaseTimeout {
                bound: self.database_bound,
            })?
            .map_err(LivenessError::Database)
    }
}

/// Sends `WATCHDOG=1` every half `interval` while `liveness` passes, until `stop` fires.
///
/// A failed check sends nothing: systemd then kills and restarts the daemon once `interval`
/// passes without a ping, which is the point. Each change between healthy and unhealthy is
/// logged once, not every tick.
pub async fn run_watchdog(interval: Duration, liveness: Liveness, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(interval / 2);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match liveness.check().await {
            Ok(()) => {
                if !healthy {
                    tracing::info!("liveness restored; watchdog pings resumed");
                    healthy = true;
                }
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
            Err(error) => {
                if healthy {
                    tracing::error!(
                        error = %crate::store::audit::error_chain(&error),
                        "liveness check failed; withholding watchdog pings so systemd restarts playbookd"
                    );
                    healthy = false;
                }
            }
        }
    }
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(error = %error, "sd_notify failed");
    }
}

fn safe_halt_status(since: OffsetDateTime, reason: &str) -> String {
    let since = since
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| since.unix_timestamp().to_string());
    // STATUS= is one line: a newline in the reason would end the field early.
    let reason = reason.replace(['\n', '\r'], " ");
    format!("SAFE-HALT since {since}: {reason}")
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&usec| usec > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    Some(Duration::from_micros(usec))
}

fn millis_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_needs_a_positive_interval() {
        assert_eq!(watchdog_interval_from(None, None, 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, 7), None);
        assert_eq!(
            watchdog_interval_from(Some("1000000"), None, 7),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn watchdog_meant_for_another_process_is_ignored() {
        assert_eq!(watchdog_interval_from(Some("1000000"), Some("8"), 7), None);
        assert_eq!(
            watchdog_interval_from(Some("1000000"), Some("7"), 7),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn heartbeat_ages_until_it_beats_again() {
        let heartbeat = Heartbeat::new();
        std::thread::sleep(Duration::from_millis(30));
        assert!(heartbeat.age() >= Duration::from_millis(30));
        heartbeat.clone().beat();
        assert!(heartbeat.age() < Duration::from_millis(30));
    }

    #[test]
    fn safe_halt_status_is_one_line_with_time_and_reason() {
        let since = time::macros::datetime!(2026-11-24 14:54:15 UTC);
        assert_eq!(
            safe_halt_status(since, "rollback of step kill failed\nsecond line"),
            "SAFE-HALT since 2026-11-24T14:54:15Z: rollback of step kill failed second line"
        );
    }
}
