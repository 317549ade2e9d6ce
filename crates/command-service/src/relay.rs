//! The outbox relay: appends each pending event to the Redis Stream,
//! PUBLISHes it on the channel named after its type (for tutorial-era
//! listeners), then clears it from its book's outbox.
//!
//! New events arrive through a channel from the request that wrote them and
//! go out at once, batched into one Redis pipeline and one MongoDB update.
//! A periodic sweep finds whatever is still pending: events of a process that
//! crashed, events that could not be published while Redis was down, events
//! dropped when the channel was full. A crash between the append and the
//! clear re-sends the event: delivery is at-least-once, and the query side
//! is idempotent.
//!
//! With several replicas, only the holder of a lease in Redis sweeps, so a
//! backlog is published once rather than once per replica. The lease
//! expires when its holder stops renewing it (a crash), and another replica
//! takes the sweep over; each replica still publishes its own new events at
//! once.

use std::time::Duration;

use tokio::time::Instant;

use bson::oid::ObjectId;
use chrono::Utc;
use platform::lease::Lease;
use redis::aio::ConnectionManager;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::{self, Via},
    store::{BookStore, PendingBook, Published},
};

/// Most events handled in one pipeline.
const BATCH: usize = 256;
/// Capacity of the channel from handlers to the relay. When it is full the
/// event simply waits in MongoDB for the next sweep.
const CHANNEL_CAPACITY: usize = 4096;
/// How old a pending event must be before the sweep takes it, so the sweep
/// does not race the immediate path for events it is about to publish.
const SWEEP_GRACE: Duration = Duration::from_secs(2);
/// The longest wait between sweeps while Redis or MongoDB keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Which pending events a sweep takes.
#[derive(Debug, Clone, Copy)]
enum Cutoff {
    /// Those added before this time.
    Before(chrono::DateTime<Utc>),
    /// Those added longer than this ago.
    OlderThan(Duration),
}

/// A freshly written event, handed to the relay by the request that wrote it.
#[derive(Debug)]
pub struct Outgoing {
    pub book_id: ObjectId,
    pub event_type: &'static str,
    pub json: String,
    /// When the event was written (just before the insert, like its
    /// `outboxAt`); past the sweep's grace the sweep owns it.
    pub stored_at: Instant,
}

/// The handlers' end of the relay.
#[derive(Clone)]
pub struct OutboxNotifier(mpsc::Sender<Outgoing>);

impl OutboxNotifier {
    /// Asks the relay to publish now. Never blocks and never fails the
    /// request: the event is already stored, and the sweep will publish it
    /// if the relay cannot take it now.
    pub fn notify(&self, outgoing: Outgoing) {
        if let Err(error) = self.0.try_send(outgoing) {
            tracing::debug!(%error, "relay busy; the sweep will publish the event");
        }
    }
}

pub struct Relay {
    store: BookStore,
    redis: ConnectionManager,
    stream: String,
    sweep_interval: Duration,
    receiver: mpsc::Receiver<Outgoing>,
    lease: Lease,
}

impl Relay {
    /// A relay whose sweep holds the lease `<stream>:relay-lease` for
    /// `lease_ttl` at a time.
    pub fn new(
        store: BookStore,
        redis: ConnectionManager,
        stream: String,
        sweep_interval: Duration,
        lease_ttl: Duration,
    ) -> (Self, OutboxNotifier) {
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        let lease = Lease::new(
            format!("{stream}:relay-lease"),
            ObjectId::new().to_hex(),
            lease_ttl,
        );
        let relay = Self {
            store,
            redis,
            stream,
            sweep_interval,
            receiver,
            lease,
        };
        (relay, OutboxNotifier(sender))
    }

    /// Runs until `shutdown` is cancelled. Sweeps once at start (everything
    /// pending from before this process started), then publishes new events
    /// as they come and sweeps on a timer, backing off while a dependency
    /// is down. Only the holder of the lease sweeps.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = self.sweep_interval;
        let mut next_sweep = Instant::now();
        // The first sweep takes what was pending before this process
        // started, however recent; later ones what is older than the grace.
        let mut cutoff = Cutoff::Before(Utc::now());
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                // The sweep comes before new events so that a steady stream
                // of requests cannot starve it.
                biased;
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(next_sweep) => {
                    match self.sweep(cutoff).await {
                        Ok(()) => backoff = self.sweep_interval,
                        Err(error) => {
                            tracing::warn!(error = format!("{error:#}"), retry_in = ?backoff, "outbox sweep failed");
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                    cutoff = Cutoff::OlderThan(SWEEP_GRACE);
                    next_sweep = Instant::now() + backoff;
                }
                received = self.receiver.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        break;
                    }
                    if let Err(error) = self.publish_new(&mut batch).await {
                        tracing::warn!(error = format!("{error:#}"), "publishing new events failed; the sweep will retry");
                    }
                }
            }
        }
        // Publish what the handlers already handed over; the rest waits in
        // MongoDB for the next start.
        self.receiver.close();
        while self.receiver.recv_many(&mut batch, BATCH).await > 0 {
            if self.publish_new(&mut batch).await.is_err() {
                break;
            }
        }
        // Another replica need not wait for the lease to expire.
        self.lease.release(&mut self.redis).await;
        tracing::info!("outbox relay stopped");
    }

    /// Publishes and clears a batch of new events. The batch is always
    /// emptied: whatever fails here stays pending in MongoDB for the sweep.
    async fn publish_new(&mut self, batch: &mut Vec<Outgoing>) -> anyhow::Result<()> {
        // Events that waited in the channel longer than the sweep's grace
        // may already be taken by the sweep: leave them to it rather than
        // publish them twice.
        let fresh: Vec<Outgoing> = batch
            .drain(..)
            .filter(|o| o.stored_at.elapsed() < SWEEP_GRACE)
            .collect();
        let events: Vec<(&str, &str)> = fresh
            .iter()
            .map(|o| (o.event_type, o.json.as_str()))
            .collect();
        self.append(&events).await?;
        for (event_type, _) in &events {
            metrics::event_published(event_type, Via::Immediate);
        }
        let published: Vec<Published> = fresh
            .into_iter()
            .map(|o| Published {
                id: o.book_id,
                events: vec![o.json],
            })
            .collect();
        self.store.clear(&published).await?;
        Ok(())
    }

    /// Publishes every event pending since before the cutoff, in batches,
    /// oldest first, while this replica holds the lease (renewed before
    /// each batch, so a long backlog is not swept by two replicas at once).
    async fn sweep(&mut self, cutoff: Cutoff) -> anyhow::Result<()> {
        loop {
            if !self.lease.hold(&mut self.redis).await? {
                return Ok(());
            }
            let cutoff = match cutoff {
                Cutoff::Before(at) => at,
                Cutoff::OlderThan(grace) => Utc::now() - grace,
            };
            let pending = self.store.pending(cutoff, BATCH as i64).await?;
            let full = pending.len() == BATCH;
            if pending.is_empty() {
                return Ok(());
            }
            let events: Vec<(&str, &str)> = pending
                .iter()
                .flat_map(|p| {
                    p.events
                        .iter()
                        .map(|json| (event_type_of(json), json.as_str()))
                })
                .collect();
            let count = events.len();
            self.append(&events).await?;
            for (event_type, _) in &events {
                metrics::event_published(event_type, Via::Sweep);
            }
            let published: Vec<Published> = pending
                .into_iter()
                .map(PendingBook::into_published)
                .collect();
            self.store.clear(&published).await?;
            tracing::info!(events = count, "published events left pending");
            if !full {
                return Ok(());
            }
        }
    }

    /// XADD and PUBLISH each event, in order, in one pipeline.
    async fn append(&mut self, events: &[(&str, &str)]) -> redis::RedisResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (event_type, json) in events {
            platform::stream::append(&mut pipe, &self.stream, event_type, json);
            pipe.cmd("PUBLISH").arg(*event_type).arg(*json).ignore();
        }
        pipe.query_async::<()>(&mut self.redis).await
    }
}

impl PendingBook {
    fn into_published(self) -> Published {
        Published {
            id: self.id,
            events: self.events,
        }
    }
}

/// The `type` of a stored event. Stored events are written by this service,
/// so an unreadable one is a bug; it still goes out, typed `unknown`, so
/// that it cannot block the outbox and the consumer dead-letters it.
fn event_type_of(json: &str) -> &'static str {
    #[derive(Deserialize)]
    struct TypeOnly {
        #[serde(rename = "type")]
        event_type: domain::EventType,
    }
    match serde_json::from_str::<TypeOnly>(json) {
        Ok(t) => t.event_type.as_str(),
        Err(error) => {
            tracing::error!(%error, "stored event has no readable type");
            "unknown"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_is_read_from_the_stored_json() {
        assert_eq!(
            event_type_of(r#"{"type":"bookCreated","version":1}"#),
            "bookCreated"
        );
        assert_eq!(event_type_of(r#"{"type":"bookDeleted"}"#), "bookDeleted");
    }

    #[test]
    fn unreadable_stored_event_is_typed_unknown() {
        assert_eq!(event_type_of("{}"), "unknown");
        assert_eq!(event_type_of("not json"), "unknown");
    }
}
