//! This node's part in the fleet: its heartbeat row, nonce retention, and learning of the fleet
//! SAFE-HALT.
//!
//! Two tasks, both stopped by the daemon's task shutdown:
//! - every `fleet.heartbeat_interval_seconds`: write the heartbeat ([`nodes::beat`]), prune
//!   nonces that can never be accepted again ([`nonces::prune`], in bounded batches), and re-read
//!   the fleet halt (the backstop for a missed notification);
//! - a dedicated connection that `LISTEN`s on `playbookd_halt` (announced by a trigger at every
//!   commit that changes a halt row, migration V8) and re-reads the fleet halt at once, so every
//!   node learns of it within a second. The step-start transaction reads the halt rows itself, so
//!   a node that has not heard yet still refuses the start: this only makes waiting runs, intake
//!   and the status line follow promptly.

use std::time::Duration;

use futures::StreamExt;
use time::OffsetDateTime;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::safe_halt::SafeHalt;
use crate::store::audit::{AuditHandle, error_chain};
use crate::store::{Store, halts, nodes, nonces};

/// The notification channel of SAFE-HALT changes (migration V8).
pub const HALT_CHANNEL: &str = "playbookd_halt";

/// At most this many prune batches per heartbeat, so a large backlog drains over several beats
/// instead of holding a connection.
const PRUNE_BATCHES_PER_BEAT: u32 = 10;

/// Pause before the listener reconnects after its connection failed.
const RELISTEN_DELAY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct FleetParts {
    pub store: Store,
    pub audit: AuditHandle,
    pub safe_halt: SafeHalt,
    pub pg: tokio_postgres::Config,
    pub heartbeat_interval: Duration,
    pub freshness_seconds: u64,
    pub prune_batch: u32,
    pub started_at: OffsetDateTime,
}

/// Writes the first heartbeat (at start, before serving, so a node is listed from then on and
/// its freshness window counts for retention before it accepts a nonce).
pub async fn first_beat(parts: &FleetParts) -> Result<(), crate::store::StoreError> {
    nodes::beat(&parts.store, &heartbeat(parts)).await
}

/// Starts the heartbeat and the halt listener; both stop with `shutdown`.
pub fn spawn(parts: FleetParts, shutdown: CancellationToken) {
    tokio::spawn(heartbeat_loop(parts.clone(), shutdown.clone()));
    tokio::spawn(listen_loop(parts, shutdown));
}

/// Marks this node stopped (a clean shutdown), so it shows as stale at once.
pub async fn mark_stopped(parts: &FleetParts) {
    if let Err(error) = nodes::mark_stopped(&parts.store, parts.audit.node_id()).await {
        tracing::warn!(error = %error_chain(&error), "node stop not recorded in the node list");
    }
}

fn heartbeat(parts: &FleetParts) -> nodes::Heartbeat<'_> {
    nodes::Heartbeat {
        node_id: parts.audit.node_id(),
        version: env!("CARGO_PKG_VERSION"),
        started_at: parts.started_at,
        head: parts.audit.head(),
        freshness_seconds: parts.freshness_seconds,
    }
}

async fn heartbeat_loop(parts: FleetParts, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(parts.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        refresh_fleet_halt(&parts).await;
        if let Err(error) = nodes::beat(&parts.store, &heartbeat(&parts)).await {
            tracing::warn!(error = %error_chain(&error), "heartbeat not written");
        }
        prune(&parts).await;
    }
}

/// Deletes nonces that can never be accepted again, a bounded batch at a time.
async fn prune(parts: &FleetParts) {
    let mut total = 0u64;
    for _ in 0..PRUNE_BATCHES_PER_BEAT {
        match nonces::prune(&parts.store, parts.freshness_seconds, parts.prune_batch).await {
            Ok(pruned) => {
                total += pruned;
                if pruned < u64::from(parts.prune_batch) {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "nonce retention failed");
                break;
            }
        }
    }
    if total > 0 {
        tracing::debug!(pruned = total, "expired nonces pruned");
        metrics::counter!(crate::status::metrics::NONCES_PRUNED_TOTAL).increment(total);
    }
}

async fn refresh_fleet_halt(parts: &FleetParts) {
    match halts::load_fleet(&parts.store).await {
        Ok(fleet) => parts.safe_halt.sync_fleet(fleet),
        // Unknown is not "cleared": keep what is known; the step start reads the rows anyway.
        Err(error) => tracing::warn!(error = %error_chain(&error), "fleet halt not re-read"),
    }
}

async fn listen_loop(parts: FleetParts, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = listen_once(&parts) => {
                if let Err(error) = result {
                    tracing::warn!(error = %error_chain(&error), "SAFE-HALT listener lost its connection; reconnecting");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RELISTEN_DELAY) => {}
        }
    }
}

/// One connection: LISTEN, then re-read the fleet halt on every notification (and once right
/// after LISTEN, to cover what changed while not listening).
async fn listen_once(parts: &FleetParts) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = parts.pg.connect(tokio_postgres::NoTls).await?;
    let (sender, mut notified) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let driver = tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if sender.send(()).is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    });
    client
        .batch_execute(&format!("LISTEN {HALT_CHANNEL}"))
        .await?;
    refresh_fleet_halt(parts).await;
    while notified.recv().await.is_some() {
        // Several notifications may be queued; one re-read covers them all.
        while notified.try_recv().is_ok() {}
        refresh_fleet_halt(parts).await;
    }
    drop(client);
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}
