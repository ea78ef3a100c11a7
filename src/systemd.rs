//! systemd integration: where logs go (journald or stderr) and readiness notifications.
//!
//! Nothing is sent to systemd when `NOTIFY_SOCKET` is unset (sd-notify checks it).

use std::path::Path;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Environment variable holding the log filter (`info` by default; tracing-subscriber syntax).
pub const LOG_FILTER_ENV: &str = "PLAYBOOKD_LOG";

const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Installs the global subscriber: journald when its socket exists, otherwise stderr.
/// Safe to call more than once (later calls do nothing).
pub fn init_logging() {
    let filter = EnvFilter::try_from_env(LOG_FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if Path::new(JOURNAL_SOCKET).exists()
        && let Ok(journald) = tracing_journald::layer()
    {
        let _ = registry
            .with(journald.with_syslog_identifier("playbookd".into()))
            .try_init();
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

/// Tells systemd the daemon is stopping.
pub fn notify_stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

/// Tells systemd the daemon is reloading; call [`notify_ready`] when done.
pub fn notify_reloading() {
    notify(&[sd_notify::NotifyState::Reloading]);
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::warn!(error = %error, "sd_notify failed");
    }
}
