//! The outbox relay: appends each pending event to the Redis Stream,
//! PUBLISHes it on the channel named after its type (for tutorial-era
//! listeners), then clears it from its book's outbox.
//!
//! New events arrive through a channel from the request that wrote them and
//! go out at once, batched into one Redis pipeline. Their outboxes are
//! cleared by a task of their own, a few batches at a time: publication
//! never waits for MongoDB, whose writes (one per book) are the slow part.
//! From just before its events go out until its clear is done, a book is
//! "uncleared": this process's sweep leaves it alone rather than publish
//! its events a second time. (With several replicas, the sweeping one may
//! still send another replica's uncleared events again once they are past
//! the grace: a duplicate.) A periodic sweep, in a task of its own so that
//! its scan of the write model never holds new events back, finds whatever
//! is still pending: events of a process that crashed, events that could
//! not be published while Redis was down, events dropped when the channel
//! was full. A crash between the append and the
//! clear re-sends the event: delivery is at-least-once, and the query side
//! is idempotent.
//!
//! With several replicas, only the holder of a lease in Redis sweeps, so a
//! backlog is published once rather than once per replica. The lease
//! expires when its holder stops renewing it (a crash), and another replica
//! takes the sweep over; each replica still publishes its own new events at
//! once.

use std::{
    collections::{hash_map::Entry, HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::time::Instant;

use bson::oid::ObjectId;
use chrono::Utc;
use futures::{future::BoxFuture, FutureExt, StreamExt};
use platform::{lease::Lease, mongo::bounded};
use redis::aio::ConnectionManager;
use serde::Deserialize;
use tokio::sync::{mpsc, Notify};
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
/// Clears queued at most (one per published book). Each holds its events'
/// JSON (about half a kilobyte an event), so this bounds the queue to
/// about 10 MiB when creates outpace the clears. Past this, what the
/// immediate path publishes is not queued: it stays pending, and the sweep
/// sends it again (a duplicate, harmless) once the queue has room, and
/// clears it then.
const MAX_UNCLEARED: usize = 16_384;
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
    /// Whether pending books were left for their queued clears (or for
    /// room in the clear queue): they may have hidden older events that
    /// the immediate path missed.
    waiting: bool,
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
    missed: Arc<Notify>,
}

impl OutboxNotifier {
    /// Asks the relay to publish now. Never blocks and never fails the
    /// request: the event is already stored, and the sweep will publish it
    /// if the relay cannot take it now.
    pub fn notify(&self, outgoing: Outgoing) {
        if let Err(error) = self.sender.try_send(outgoing) {
            self.missed.notify_one();
            tracing::debug!(%error, "relay busy; the sweep will publish the event");
        }
    }
}

/// The immediate path, the sweep and the clearing of published outboxes,
/// each run as a task of its own by `run`.
pub struct Relay {
    publisher: Publisher,
    sweeper: Sweeper,
    clearing: BoxFuture<'static, ()>,
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
        timeout: Duration,
    ) -> (Self, OutboxNotifier) {
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        let missed = Arc::new(Notify::new());
        let (clear_queue, clear_requests) = mpsc::unbounded_channel();
        // The clearing task's handle has no queue: the queue closes once
        // the immediate path and the sweep have dropped theirs.
        let unqueued = Clears::default();
        let clears = Clears {
            queue: Some(clear_queue),
            ..unqueued.clone()
        };
        let lease = Lease::new(
            format!("{stream}:relay-lease"),
            ObjectId::new().to_hex(),
            lease_ttl,
        );
        let relay = Self {
            publisher: Publisher {
                redis: redis.clone(),
                stream: stream.clone(),
                receiver,
                clears: clears.clone(),
                missed: Arc::clone(&missed),
            },
            sweeper: Sweeper {
                store: store.clone(),
                timeout,
                redis,
                stream,
                sweep_interval,
                lease,
                clears,
                missed: Arc::clone(&missed),
                // Below the lease, so that the holder keeps it between sweeps.
                idle_max: (sweep_interval * IDLE_SWEEP_FACTOR)
                    .min(lease_ttl / 2)
                    .max(sweep_interval),
            },
            clearing: clear_published(store, timeout, unqueued, clear_requests).boxed(),
        };
        (relay, OutboxNotifier { sender, missed })
    }

    /// Runs until `shutdown` is cancelled: publishes new events as they
    /// come, while the sweep (a task of its own, so that a long scan of
    /// the write model never holds new events back) and the clears (another)
    /// run beside it. At shutdown, publishes what the handlers handed over,
    /// gives the lease up, and lets the queued clears end.
    pub async fn run(self, shutdown: CancellationToken) {
        let clearing = tokio::spawn(self.clearing);
        let sweeping = tokio::spawn(self.sweeper.run(shutdown.clone()));
        self.publisher.run(&shutdown).await;
        if let Err(error) = sweeping.await {
            tracing::error!(%error, "the outbox sweep failed");
        }
        // The clears queued so far run to their end (the process's stop
        // timeout bounds them); what they miss is sent again at the next
        // start.
        if let Err(error) = clearing.await {
            tracing::error!(%error, "the outbox clearing task failed");
        }
        tracing::info!("outbox relay stopped");
    }
}

/// The immediate path: publishes the events the handlers hand over.
struct Publisher {
    redis: ConnectionManager,
    stream: String,
    receiver: mpsc::Receiver<Outgoing>,
    clears: Clears,
    /// Tells the sweep that an event was left to it (the channel was full,
    /// it waited past the grace, or publishing failed): the next sweep
    /// comes soon, however long the sweeps have found nothing.
    missed: Arc<Notify>,
}

impl Publisher {
    /// Publishes until `shutdown`, then what the handlers already handed
    /// over; the rest waits in MongoDB for the next start.
    async fn run(mut self, shutdown: &CancellationToken) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => break,
                received = self.receiver.recv_many(&mut batch, BATCH) => received,
            };
            if received == 0 {
                break;
            }
            if let Err(error) = self.publish_new(&mut batch).await {
                self.missed.notify_one();
                tracing::warn!(
                    error = format!("{error:#}"),
                    "publishing new events failed; the sweep will retry"
                );
            }
        }
        self.receiver.close();
        while self.receiver.recv_many(&mut batch, BATCH).await > 0 {
            if self.publish_new(&mut batch).await.is_err() {
                break;
            }
        }
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
            self.missed.notify_one();
        }
        if fresh.is_empty() {
            return Ok(());
        }
        // Counted as uncleared before they go out, so that a sweep running
        // meanwhile leaves them alone.
        let reserved = self.clears.reserve(fresh.iter().map(|o| o.book_id));
        let events: Vec<(&str, &str)> = fresh
            .iter()
            .map(|o| (o.event_type, o.json.as_str()))
            .collect();
        if let Err(error) = append(&mut self.redis, &self.stream, &events).await {
            if reserved {
                self.clears.release(fresh.iter().map(|o| o.book_id));
            }
            return Err(error.into());
        }
        for (event_type, _) in &events {
            metrics::event_published(event_type, Via::Immediate);
        }
        if reserved {
            self.clears.enqueue_reserved(
                fresh
                    .into_iter()
                    .map(|o| Published {
                        id: o.book_id,
                        events: vec![o.json],
                    })
                    .collect(),
            );
        }
        Ok(())
    }
}

/// The sweep: publishes what the immediate path left pending. Only the
/// holder of the lease sweeps.
struct Sweeper {
    store: BookStore,
    /// How long one read of the write model may take.
    timeout: Duration,
    redis: ConnectionManager,
    stream: String,
    sweep_interval: Duration,
    lease: Lease,
    clears: Clears,
    /// Notified when an event was left to the sweep.
    missed: Arc<Notify>,
    /// The longest wait between sweeps while they find nothing.
    idle_max: Duration,
}

impl Sweeper {
    /// Sweeps once at start (everything pending from before this process
    /// started), then on a timer: each sweep that finds nothing doubles the
    /// wait for the next (up to `idle_max`; on FerretDB a sweep reads every
    /// book), and an event left to the sweep brings the next one back to
    /// `sweep_interval`. Backs off while a dependency is down. Gives the
    /// lease up when `shutdown` is cancelled.
    async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = self.sweep_interval;
        let mut idle = self.sweep_interval;
        let mut next_sweep = Instant::now();
        // The first sweep takes what was pending before this process
        // started, however recent; later ones what is older than the grace.
        let mut cutoff = Cutoff::Before(Utc::now());
        let cleared = Arc::clone(&self.clears.cleared);
        // When an event was last left to the sweep (at start: whatever the
        // last process left), until a sweep has looked past that instant
        // without books hidden behind queued clears.
        let started = Instant::now();
        let mut owed = Some(started);
        // Whether the last sweep left pending books to their queued clears
        // while events are owed: it runs again as soon as a clear ends.
        let mut after_clears = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(next_sweep) => {
                    let looked_before = match cutoff {
                        Cutoff::Before(_) => Some(started),
                        Cutoff::OlderThan(grace) => Instant::now().checked_sub(grace),
                    };
                    next_sweep = match self.sweep_batch(cutoff).await {
                        // More is waiting: the next batch at once.
                        Ok(Swept { full: true, .. }) => Instant::now(),
                        Ok(Swept { events, waiting, .. }) => {
                            if !waiting && owed.is_some_and(|at| looked_before.is_some_and(|l| l >= at)) {
                                owed = None;
                            }
                            // Books left to their clears were published
                            // already; only a missed event hidden behind
                            // them calls the sweep back early. Otherwise
                            // a sweep under load would scan the write
                            // model after every clear.
                            after_clears = waiting && owed.is_some();
                            idle = if events == 0 && !after_clears {
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
                // A clear ended: the books the last sweep left may be done.
                () = cleared.notified(), if after_clears => {
                    after_clears = false;
                    next_sweep = Instant::now();
                }
                () = self.missed.notified() => {
                    owed = Some(Instant::now());
                    idle = self.sweep_interval;
                    next_sweep = next_sweep.min(Instant::now() + self.sweep_interval);
                }
            }
        }
        // Another replica need not wait for the lease to expire.
        self.lease.release(&mut self.redis).await;
    }

    /// Publishes one batch of the events pending since before the cutoff,
    /// oldest first, but for books whose clear is queued, if this replica
    /// holds the lease (renewed before each batch, so a long backlog is not
    /// swept by two replicas at once).
    async fn sweep_batch(&mut self, cutoff: Cutoff) -> anyhow::Result<Swept> {
        if !self.lease.hold(&mut self.redis).await? {
            return Ok(Swept::default());
        }
        let cutoff = match cutoff {
            Cutoff::Before(at) => at,
            Cutoff::OlderThan(grace) => Utc::now() - grace,
        };
        // What the sweep publishes must be queued for clearing, or the next
        // sweep would find and send it again.
        if self.clears.is_full() {
            return Ok(Swept {
                waiting: true,
                ..Swept::default()
            });
        }
        // Books whose clear was queued (or whose events are being
        // published by the immediate path) were published already: those
        // queued now, and those queued before the read, whose clear may have
        // ended since but after the read saw their outbox.
        let queued_before: HashSet<ObjectId> =
            self.clears.uncleared().books.keys().copied().collect();
        let found = bounded(self.timeout, self.store.pending(cutoff, BATCH as i64)).await?;
        let pending: Vec<PendingBook> = {
            let uncleared = self.clears.uncleared();
            found
                .iter()
                .filter(|p| !uncleared.books.contains_key(&p.id) && !queued_before.contains(&p.id))
                .cloned()
                .collect()
        };
        let waiting = pending.len() < found.len();
        // Full when more may be waiting beyond what was found, and not
        // merely a page of books still being cleared.
        let full = found.len() == BATCH && !pending.is_empty();
        if pending.is_empty() {
            return Ok(Swept {
                events: 0,
                full,
                waiting,
            });
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
        append(&mut self.redis, &self.stream, &events).await?;
        for (event_type, _) in &events {
            metrics::event_published(event_type, Via::Sweep);
        }
        let published: Vec<Published> = pending
            .into_iter()
            .map(PendingBook::into_published)
            .collect();
        self.clears.enqueue(published);
        tracing::info!(events = count, "published events left pending");
        Ok(Swept {
            events: count,
            full,
            waiting,
        })
    }
}

/// XADD and PUBLISH each event, in order, in one pipeline.
async fn append(
    redis: &mut ConnectionManager,
    stream: &str,
    events: &[(&str, &str)],
) -> redis::RedisResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for (event_type, json) in events {
        platform::stream::append(&mut pipe, stream, event_type, json);
        pipe.cmd("PUBLISH").arg(*event_type).arg(*json).ignore();
    }
    pipe.query_async::<()>(redis).await
}

/// The queue of published events whose outboxes are to be cleared, and
/// the books it holds.
#[derive(Clone, Default)]
struct Clears {
    queue: Option<mpsc::UnboundedSender<Vec<Published>>>,
    uncleared: Arc<Mutex<Uncleared>>,
    /// Notified whenever a batch of clears ends.
    cleared: Arc<Notify>,
}

/// What the clear queue holds.
#[derive(Default)]
struct Uncleared {
    /// Queued clears per book.
    books: HashMap<ObjectId, usize>,
    /// Queued clears in all.
    queued: usize,
}

impl Clears {
    fn uncleared(&self) -> MutexGuard<'_, Uncleared> {
        self.uncleared.lock().expect("never poisoned")
    }

    fn is_full(&self) -> bool {
        self.uncleared().queued >= MAX_UNCLEARED
    }

    /// Counts these books' clears as queued, unless `MAX_UNCLEARED` clears
    /// are queued already or the relay is stopping: then `false`, and the
    /// sweep will send their events again and clear them then.
    fn reserve(&self, books: impl ExactSizeIterator<Item = ObjectId>) -> bool {
        if self.queue.is_none() {
            return false;
        }
        let mut uncleared = self.uncleared();
        if uncleared.queued >= MAX_UNCLEARED {
            tracing::debug!("too many outboxes to clear; the sweep will send these again");
            return false;
        }
        uncleared.queued += books.len();
        for id in books {
            *uncleared.books.entry(id).or_default() += 1;
        }
        true
    }

    /// Queues the clear of `published`, as `reserve` allows.
    fn enqueue(&self, published: Vec<Published>) {
        if self.reserve(published.iter().map(|p| p.id)) {
            self.enqueue_reserved(published);
        }
    }

    /// Queues the clear of `published`, reserved already.
    fn enqueue_reserved(&self, published: Vec<Published>) {
        let Some(queue) = &self.queue else {
            return self.release(published.iter().map(|p| p.id));
        };
        if let Err(mpsc::error::SendError(published)) = queue.send(published) {
            self.release(published.iter().map(|p| p.id));
        }
    }

    /// Ends reservations: the clears are done, failed, or not queued.
    fn release(&self, books: impl ExactSizeIterator<Item = ObjectId>) {
        {
            let mut uncleared = self.uncleared();
            uncleared.queued = uncleared.queued.saturating_sub(books.len());
            for id in books {
                if let Entry::Occupied(mut queued) = uncleared.books.entry(id) {
                    *queued.get_mut() -= 1;
                    if *queued.get() == 0 {
                        queued.remove();
                    }
                }
            }
        }
        self.cleared.notify_one();
    }
}

/// Clears what `requests` brings, up to `CONCURRENT_CLEARS` batches of
/// `BATCH` books at once, until the relay drops its end and the queue is
/// empty. A clear that fails leaves the events pending: the sweep sends
/// them again.
async fn clear_published(
    store: BookStore,
    timeout: Duration,
    clears: Clears,
    mut requests: mpsc::UnboundedReceiver<Vec<Published>>,
) {
    let mut received = Vec::new();
    while requests
        .recv_many(&mut received, CONCURRENT_CLEARS * 16)
        .await
        > 0
    {
        let books: Vec<Published> = received.drain(..).flatten().collect();
        futures::stream::iter(books.chunks(BATCH))
            .for_each_concurrent(CONCURRENT_CLEARS, |chunk| {
                let (store, clears) = (&store, &clears);
                async move {
                    if let Err(error) = bounded(timeout, store.clear(chunk)).await {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "clearing published events failed; the sweep will send them again"
                        );
                    }
                    clears.release(chunk.iter().map(|p| p.id));
                }
            })
            .await;
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
