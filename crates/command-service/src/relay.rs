//! The outbox relay: appends each pending event to the Redis Stream,
//! PUBLISHes it on the channel named after its type (for tutorial-era
//! listeners), then clears it from its book's outbox.
//!
//! New events arrive through a channel from the request that wrote them and
//! go out at once, batched into one Redis pipeline; their outboxes are
//! cleared in the background, so the next batch does not wait for MongoDB.
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

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::time::Instant;

use bson::oid::ObjectId;
use chrono::Utc;
use platform::lease::Lease;
use redis::aio::ConnectionManager;
use serde::Deserialize;
use tokio::sync::{mpsc, Semaphore};
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
/// The longest wait between sweeps that find nothing, in sweep intervals
/// (and below half the lease).
const IDLE_SWEEP_FACTOR: u32 = 16;
/// Batches of published events whose outboxes are cleared at once.
const CONCURRENT_CLEARS: usize = 4;
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

/// What one batch of a sweep did.
#[derive(Debug, Default)]
struct Swept {
    /// Events published.
    events: usize,
    /// Whether the batch was full: more may be waiting.
    full: bool,
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
pub struct OutboxNotifier {
    sender: mpsc::Sender<Outgoing>,
    missed: Arc<AtomicBool>,
}

impl OutboxNotifier {
    /// Asks the relay to publish now. Never blocks and never fails the
    /// request: the event is already stored, and the sweep will publish it
    /// if the relay cannot take it now.
    pub fn notify(&self, outgoing: Outgoing) {
        if let Err(error) = self.sender.try_send(outgoing) {
            self.missed.store(true, Ordering::Relaxed);
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
    /// One permit per clear of published events running in the background.
    clears: Arc<Semaphore>,
    /// Set when an event was left to the sweep (the channel was full, it
    /// waited past the grace, or publishing failed): the next sweep comes
    /// soon, however long the sweeps have found nothing.
    missed: Arc<AtomicBool>,
    /// The longest wait between sweeps while they find nothing.
    idle_max: Duration,
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
        let missed = Arc::new(AtomicBool::new(false));
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
            clears: Arc::new(Semaphore::new(CONCURRENT_CLEARS)),
            missed: Arc::clone(&missed),
            // Below the lease, so that the holder keeps it between sweeps.
            idle_max: (sweep_interval * IDLE_SWEEP_FACTOR)
                .min(lease_ttl / 2)
                .max(sweep_interval),
        };
        (relay, OutboxNotifier { sender, missed })
    }

    /// Runs until `shutdown` is cancelled. Sweeps once at start (everything
    /// pending from before this process started), then publishes new events
    /// as they come and sweeps on a timer: each sweep that finds nothing
    /// doubles the wait for the next (up to `idle_max`; on FerretDB a sweep
    /// reads every book), and an event left to the sweep brings the next
    /// one back to `sweep_interval`. Backs off while a dependency is down.
    /// Only the holder of the lease sweeps.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = self.sweep_interval;
        let mut idle = self.sweep_interval;
        let mut next_sweep = Instant::now();
        // The first sweep takes what was pending before this process
        // started, however recent; later ones what is older than the grace.
        let mut cutoff = Cutoff::Before(Utc::now());
        let mut batch = Vec::with_capacity(BATCH);
        while !shutdown.is_cancelled() {
            // Not biased: a sweep taking a backlog one batch at a time and a
            // steady stream of new events take turns, so neither starves
            // the other (new events held back past the grace would be left
            // to the sweep as well).
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(next_sweep) => {
                    next_sweep = match self.sweep_batch(cutoff).await {
                        // More is waiting: the next batch at once.
                        Ok(Swept { full: true, .. }) => Instant::now(),
                        Ok(Swept { events, .. }) => {
                            idle = if events == 0 {
                                (idle * 2).min(self.idle_max)
                            } else {
                                self.sweep_interval
                            };
                            backoff = idle;
                            cutoff = Cutoff::OlderThan(SWEEP_GRACE);
                            Instant::now() + backoff
                        }
                        Err(error) => {
                            tracing::warn!(error = format!("{error:#}"), retry_in = ?backoff, "outbox sweep failed");
                            idle = self.sweep_interval;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            Instant::now() + backoff
                        }
                    };
                }
                received = self.receiver.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        break;
                    }
                    if let Err(error) = self.publish_new(&mut batch).await {
                        self.missed.store(true, Ordering::Relaxed);
                        tracing::warn!(error = format!("{error:#}"), "publishing new events failed; the sweep will retry");
                    }
                    if self.missed.swap(false, Ordering::Relaxed) {
                        idle = self.sweep_interval;
                        next_sweep = next_sweep.min(Instant::now() + self.sweep_interval);
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
        self.clears_done().await;
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
        let received = batch.len();
        let fresh: Vec<Outgoing> = batch
            .drain(..)
            .filter(|o| o.stored_at.elapsed() < SWEEP_GRACE)
            .collect();
        if fresh.len() < received {
            self.missed.store(true, Ordering::Relaxed);
        }
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
        // Cleared in the background, a few batches at a time, so the next
        // events go out without waiting for MongoDB; an event whose clear
        // fails stays pending and is sent again by the sweep.
        let permit = Arc::clone(&self.clears)
            .acquire_owned()
            .await
            .expect("the clear permits are never closed");
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(error) = store.clear(&published).await {
                tracing::warn!(%error, "clearing published events failed; the sweep will send them again");
            }
            drop(permit);
        });
        Ok(())
    }

    /// Waits for the clears running in the background.
    async fn clears_done(&self) {
        let _all = self
            .clears
            .acquire_many(CONCURRENT_CLEARS as u32)
            .await
            .expect("the clear permits are never closed");
    }

    /// Publishes one batch of the events pending since before the cutoff,
    /// oldest first, if this replica holds the lease (renewed before each
    /// batch, so a long backlog is not swept by two replicas at once).
    async fn sweep_batch(&mut self, cutoff: Cutoff) -> anyhow::Result<Swept> {
        if !self.lease.hold(&mut self.redis).await? {
            return Ok(Swept::default());
        }
        // What the immediate path published is cleared first, so the sweep
        // does not send it again.
        self.clears_done().await;
        let cutoff = match cutoff {
            Cutoff::Before(at) => at,
            Cutoff::OlderThan(grace) => Utc::now() - grace,
        };
        let pending = self.store.pending(cutoff, BATCH as i64).await?;
        let full = pending.len() == BATCH;
        if pending.is_empty() {
            return Ok(Swept::default());
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
        Ok(Swept {
            events: count,
            full,
        })
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
