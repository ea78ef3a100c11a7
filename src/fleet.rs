//! This node's part in the fleet: its heartbeat row, nonce retention, and learning of the fleet
//! SAFE-HALT.
//!
//! One task, stopped by the daemon's task shutdown, on a dedicated connection (not pooled) that
//! `LISTEN`s on `playbookd_halt` (announced by a trigger at every commit that changes a halt row,
//! migration V8):
//! - on every notification, and right after each (re)connection, it re-reads the fleet halt, so
//!   every node learns of it within a second;
//! - every `fleet.heartbeat_interval_seconds`, one prepared statement ([`nodes::PERIODIC`])
//!   writes the heartbeat, prunes a batch of nonces that can never be accepted again and
//!   re-reads the fleet halt (the backstop for a missed notification). That is all an idle node
//!   sends, whatever number of runs it has parked (issue #16), and running it on the listening
//!   connection proves that connection alive at every beat: a connection that died quietly is
//!   replaced within one interval, not left deaf to halts.
//!
//! While the dedicated connection is down, the beat goes through the pool instead, so that the
//! node's heartbeat (which other nodes judge it by) does not depend on that one connection. The
//! step-start transaction reads the halt rows itself, so a node that has not heard of a halt yet
//! still refuses the start: this only makes waiting runs, intake and the status line follow
//! promptly.

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

/// Starts the fleet task (heartbeat, nonce retention, halt listener); it stops with `shutdown`.
pub fn spawn(parts: FleetParts, shutdown: CancellationToken) {
    tokio::spawn(fleet_loop(parts, shutdown));
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

async fn fleet_loop(parts: FleetParts, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(parts.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; `first_beat` has just written the row.
    ticks.tick().await;
    let mut link: Option<Link> = None;
    let mut relisten_at = tokio::time::Instant::now();
    loop {
        if link.is_none() && tokio::time::Instant::now() >= relisten_at {
            match bounded(&parts, Link::open(&parts)).await {
                Some(Ok(opened)) => link = Some(opened),
                Some(Err(error)) => {
                    tracing::warn!(error = %error_chain(&error),
                        "SAFE-HALT listener cannot connect; the heartbeat goes through the pool meanwhile");
                    relisten_at = tokio::time::Instant::now() + RELISTEN_DELAY;
                }
                None => {
                    tracing::warn!(
                        "SAFE-HALT listener did not connect within a heartbeat interval; the heartbeat goes through the pool meanwhile"
                    );
                    relisten_at = tokio::time::Instant::now() + RELISTEN_DELAY;
                }
            }
        }
        let reconnecting = link.is_none();
        let notified = async {
            match link.as_mut() {
                Some(link) => link.notified.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {
                let lost = match &link {
                    Some(link) => bounded(&parts, link.beat(&parts)).await.unwrap_or_else(silent),
                    None => {
                        beat_through_pool(&parts).await;
                        false
                    }
                };
                if lost {
                    link = None;
                    relisten_at = tokio::time::Instant::now() + RELISTEN_DELAY;
                }
            }
            note = notified => {
                let lost = match (note, link.as_mut()) {
                    (Some(()), Some(open)) => {
                        // Several notifications may be queued; one re-read covers them all.
                        while open.notified.try_recv().is_ok() {}
                        bounded(&parts, open.refresh(&parts)).await.unwrap_or_else(silent)
                    }
                    (None, _) | (Some(()), None) => {
                        tracing::warn!("SAFE-HALT listener lost its connection; reconnecting");
                        true
                    }
                };
                if lost {
                    link = None;
                    relisten_at = tokio::time::Instant::now() + RELISTEN_DELAY;
                }
            }
            () = tokio::time::sleep_until(relisten_at), if reconnecting => {}
        }
    }
}

/// `work` on the dedicated connection, given one heartbeat interval: `None` when it did not
/// finish. A connection that went half-open (no reset after a failover) would otherwise hold
/// this loop, and with it the heartbeat, nonce retention and the fleet-halt re-read, until TCP
/// gives up, minutes to hours later.
async fn bounded<T>(parts: &FleetParts, work: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(parts.heartbeat_interval, work)
        .await
        .ok()
}

/// A beat or re-read that did not finish in time: the connection counts as lost (dropping
/// the link stops its driver), and the pool takes the beat over until a new one is open.
fn silent() -> bool {
    tracing::warn!("SAFE-HALT listener did not answer within a heartbeat interval; reconnecting");
    true
}

/// The dedicated connection: LISTENing on [`HALT_CHANNEL`], with [`nodes::PERIODIC`] prepared.
struct Link {
    client: tokio_postgres::Client,
    periodic: tokio_postgres::Statement,
    /// One `()` per notification; closed when the connection ends.
    notified: tokio::sync::mpsc::UnboundedReceiver<()>,
    driver: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Connects, LISTENs, prepares the beat, then re-reads the fleet halt (what changed while
    /// nobody listened was not heard).
    async fn open(parts: &FleetParts) -> Result<Link, crate::store::StoreError> {
        let (client, mut connection) = parts
            .pg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(crate::store::StoreError::Query)?;
        let (sender, notified) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        let driver = tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => {
                        if sender.send(()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(error = %error, "SAFE-HALT listener connection closed");
                        return;
                    }
                }
            }
        });
        let link = async {
            client
                .batch_execute(&format!("LISTEN {HALT_CHANNEL}"))
                .await?;
            let periodic = client.prepare(nodes::PERIODIC).await?;
            Ok::<_, tokio_postgres::Error>(periodic)
        }
        .await;
        let periodic = match link {
            Ok(periodic) => periodic,
            Err(error) => {
                driver.abort();
                return Err(crate::store::StoreError::Query(error));
            }
        };
        let link = Link {
            client,
            periodic,
            notified,
            driver,
        };
        // Nothing to reconnect for yet if only the read failed: the next beat tells.
        link.refresh(parts).await;
        Ok(link)
    }

    /// One beat on this connection; `true` when the connection is gone (the caller replaces it;
    /// the halt as last known stays, as it does for any failed read).
    async fn beat(&self, parts: &FleetParts) -> bool {
        let result = nodes::periodic(
            &self.client,
            &self.periodic,
            &heartbeat(parts),
            parts.freshness_seconds,
            parts.prune_batch,
        )
        .await;
        match result {
            Ok(periodic) => {
                parts.safe_halt.sync_fleet(periodic.fleet_halt);
                pruned(parts, periodic.pruned).await;
                false
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "heartbeat not written");
                if self.client.is_closed() {
                    return true;
                }
                // A failed statement on a live connection: the halt backstop must not depend on
                // the heartbeat's own success.
                self.refresh(parts).await
            }
        }
    }

    /// Re-reads the fleet halt; `true` when the connection is gone.
    async fn refresh(&self, parts: &FleetParts) -> bool {
        match halts::fleet_in(&self.client).await {
            Ok(fleet) => {
                parts.safe_halt.sync_fleet(fleet);
                false
            }
            Err(error) => {
                // Unknown is not "cleared": keep what is known; the step start reads the rows anyway.
                tracing::warn!(error = %error_chain(&error), "fleet halt not re-read");
                self.client.is_closed()
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The beat while the dedicated connection is down: the same statement through the pool
/// (prepared once per pooled connection).
async fn beat_through_pool(parts: &FleetParts) {
    let result = async {
        let client = parts.store.client().await?;
        let statement = client.prepare_cached(nodes::PERIODIC).await?;
        nodes::periodic(
            &**client,
            &statement,
            &heartbeat(parts),
            parts.freshness_seconds,
            parts.prune_batch,
        )
        .await
    }
    .await;
    match result {
        Ok(periodic) => {
            parts.safe_halt.sync_fleet(periodic.fleet_halt);
            pruned(parts, periodic.pruned).await;
        }
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "heartbeat not written");
            refresh_fleet_halt(parts).await;
        }
    }
}

/// After a beat's prune batch: a full batch means a backlog, drained by further batches (at
/// most [`PRUNE_BATCHES_PER_BEAT`] in all per beat, so a large backlog drains over several beats
/// instead of holding a connection). An idle node's batch is not full: no further statement.
async fn pruned(parts: &FleetParts, first: u64) {
    let mut total = first;
    if first >= u64::from(parts.prune_batch) {
        for _ in 1..PRUNE_BATCHES_PER_BEAT {
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
