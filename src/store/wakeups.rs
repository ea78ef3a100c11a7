//! Wake-ups from the database: a dedicated connection LISTENs for changes another process or
//! node can make (a gate's row, see `migrations/V7__gate_wakeups.sql`), so that waiting runs
//! need not re-read their rows on a timer. What changes in this process wakes its waiters
//! directly; this covers the rest.
//!
//! A notification is only a hint to re-read (it carries no state). While the connection is down
//! notifications are lost, so every (re)connection is announced as [`Wakeup::Resync`]: every
//! waiter re-reads once.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{broadcast, mpsc};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The channel `playbook_approval_gate_notify()` notifies.
pub const GATE_CHANNEL: &str = "playbookd_gate";

/// What a waiter should re-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// The gate of (execution, step index) changed state.
    Gate {
        execution_id: Uuid,
        step_index: usize,
    },
    /// Notifications may have been missed: re-read everything waited on.
    Resync,
}

/// Starts the listener; it reconnects until `shutdown`. Subscribe to the returned sender.
pub fn spawn(pg: tokio_postgres::Config, shutdown: CancellationToken) -> broadcast::Sender<Wakeup> {
    let (sender, _) = broadcast::channel(WAKEUP_BUFFER);
    tokio::spawn(listen(pg, sender.clone(), shutdown));
    sender
}

async fn listen(
    pg: tokio_postgres::Config,
    sender: broadcast::Sender<Wakeup>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = listen_once(&pg, &sender) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RECONNECT_PAUSE) => {}
        }
    }
}

/// One connection's life: LISTEN, announce a resync, forward notifications until it closes.
async fn listen_once(pg: &tokio_postgres::Config, sender: &broadcast::Sender<Wakeup>) {
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, pg.connect(tokio_postgres::NoTls)).await;
    let (client, mut connection) = match connected {
        Ok(Ok(pair)) => pair,
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "wake-up listener cannot connect; gates re-read when it can");
            return;
        }
        Err(_) => {
            tracing::warn!("wake-up listener connect timed out; gates re-read when it can");
            return;
        }
    };
    let (notes, mut received) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(note)) => {
                    if notes.send(note).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %error, "wake-up listener connection closed");
                    return;
                }
            }
        }
    });
    if let Err(error) = client
        .batch_execute(&format!("LISTEN {GATE_CHANNEL}"))
        .await
    {
        tracing::warn!(error = %error, "LISTEN failed; gates re-read when it works");
        driver.abort();
        return;
    }
    // Whatever changed before LISTEN took effect was not heard: every waiter re-reads.
    let _ = sender.send(Wakeup::Resync);
    while let Some(note) = received.recv().await {
        match parse_gate(note.payload()) {
            Some(wakeup) => {
                let _ = sender.send(wakeup);
            }
            None => tracing::warn!(
                channel = note.channel(),
                payload = %crate::text::storable(note.payload(), 128),
                "unexpected wake-up payload ignored"
            ),
        }
    }
    drop(client);
}

/// `EXECUTION_ID/STEP_INDEX`, as the trigger writes it.
fn parse_gate(payload: &str) -> Option<Wakeup> {
    let (id, index) = payload.split_once('/')?;
    Some(Wakeup::Gate {
        execution_id: Uuid::parse_str(id).ok()?,
        step_index: index.parse().ok()?,
    })
}

/// Wake-ups buffered per subscriber; one that falls behind resyncs instead.
const WAKEUP_BUFFER: usize = 1024;
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_payloads_parse_and_anything_else_is_refused() {
        let id = Uuid::new_v4();
        assert_eq!(
            parse_gate(&format!("{id}/3")),
            Some(Wakeup::Gate {
                execution_id: id,
                step_index: 3
            })
        );
        assert_eq!(parse_gate("nonsense"), None);
        assert_eq!(parse_gate(&format!("{id}/-1")), None);
        assert_eq!(parse_gate("x/1"), None);
    }
}
