//! The outbox relay: appends each stored event to the Redis Stream, PUBLISHes
//! it on the channel named after its type (for the tutorial's listeners),
//! then clears it from its book's outbox. A crash between the append and the
//! clear sends the event again: delivery is at-least-once.

use std::{sync::Arc, time::Duration};

use bson::oid::ObjectId;
use chrono::{DateTime, Utc};
use futures::{future::BoxFuture, FutureExt};
use platform::{
    backoff::Backoff, error::Failure, lease::Lease, mongo::bounded, stream::Partitions,
    RedisConnection,
};
use serde::Deserialize;
use tokio::{
    sync::{mpsc, Notify},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Settings,
    metrics::{self, Via},
    store::{BookStore, Pending},
};

/// Most events in one pipeline, and books in one read of the outbox.
const BATCH: usize = 256;
/// Events handed over and not yet taken; past this, an event waits in
/// MongoDB for the sweep.
const CHANNEL_CAPACITY: usize = 4096;
/// How old a pending event must be before the sweep takes it: younger ones
/// belong to the replica that stored them.
const SWEEP_GRACE: Duration = Duration::from_secs(2);
/// While sweeps find nothing, the wait between them doubles up to this many
/// sweep intervals (and below half the lease, so that the holder keeps it).
const IDLE_SWEEP_FACTOR: u32 = 16;
/// Books cleared by one job: few enough that a loaded MongoDB clears them
/// within the dependency timeout.
const CLEAR_BATCH: usize = 64;
/// Published events waiting for their outboxes to be cleared, at most
/// (about half a kilobyte each); past this, new events wait in the channel.
const MAX_UNCLEARED: usize = 16_384;
/// The longest wait between sweeps while Redis or MongoDB keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// An event just stored, handed to the relay by the request that stored it.
#[derive(Debug)]
pub struct Stored {
    book_id: ObjectId,
    event_type: &'static str,
    /// What to store in the outbox, and to publish.
    pub json: String,
    /// Taken just before the write; past the grace, the sweep owns the event.
    at: Instant,
}

impl Stored {
    /// `event` about to be stored for book `book_id`.
    pub fn new(book_id: ObjectId, event: &domain::BookEvent) -> Self {
        Self {
            book_id,
            event_type: event.event_type.as_str(),
            json: event.to_json(),
            at: Instant::now(),
        }
    }
}

/// The handlers' end of the relay.
#[derive(Clone)]
pub struct OutboxNotifier {
    sender: mpsc::Sender<Stored>,
    missed: Arc<Notify>,
}

impl OutboxNotifier {
    /// Counts a stored event and asks the relay to publish it now. Never
    /// blocks or fails the request: if the relay cannot take it, the sweep
    /// will.
    pub fn notify(&self, event: Stored) {
        metrics::event_appended(event.event_type);
        if let Err(error) = self.sender.try_send(event) {
            self.missed.notify_one();
            tracing::debug!(%error, "relay busy; the sweep will publish the event");
        }
    }
}

/// What the job beside publication did.
enum Done {
    Cleared,
    /// A sweep's read of the outbox: the books it found pending.
    Read(Result<Vec<Pending>, Failure>),
}

/// One loop per replica: it publishes the events its handlers hand over,
/// and, while it holds the lease `<stream>:relay-lease`, sweeps what is
/// still pending (left by a crash, an outage, a full channel or a replica
/// that died).
pub struct Relay {
    store: BookStore,
    redis: RedisConnection,
    partitions: Partitions,
    /// Whether Redis agreed with this layout of the stream: until it did,
    /// nothing is published (events wait in their outboxes).
    layout_checked: bool,
    lease: Lease,
    /// How long one MongoDB operation may take.
    timeout: Duration,
    events: mpsc::Receiver<Stored>,
    missed: Arc<Notify>,
    /// Published events whose outboxes are still to be cleared.
    uncleared: Vec<Pending>,
    sweep_interval: Duration,
    /// Waits between sweeps that find nothing.
    idle: Backoff,
    /// Waits between sweeps that fail.
    failing: Backoff,
}

impl Relay {
    /// A relay for `settings.stream`'s partitions (tagged on a `cluster`),
    /// holding its lease for `relay_lease` at a time.
    pub fn new(
        store: BookStore,
        redis: RedisConnection,
        settings: &Settings,
        cluster: bool,
    ) -> anyhow::Result<(Self, OutboxNotifier)> {
        let (sender, events) = mpsc::channel(CHANNEL_CAPACITY);
        let missed = Arc::new(Notify::new());
        let (stream, interval) = (&settings.stream, settings.outbox_sweep_interval);
        let idle_max = (interval * IDLE_SWEEP_FACTOR)
            .min(settings.relay_lease / 2)
            .max(interval);
        let relay = Self {
            store,
            redis,
            lease: Lease::new(
                format!("{stream}:relay-lease"),
                ObjectId::new().to_hex(),
                settings.relay_lease,
            ),
            partitions: Partitions::new(stream, settings.partitions, cluster)?,
            layout_checked: false,
            timeout: settings.dependency_timeout,
            events,
            missed: Arc::clone(&missed),
            uncleared: Vec::new(),
            sweep_interval: interval,
            idle: Backoff::new(interval, idle_max),
            failing: Backoff::new(interval, MAX_BACKOFF),
        };
        Ok((relay, OutboxNotifier { sender, missed }))
    }

    /// Publishes until `shutdown`: the events handed over as they come, and
    /// what the sweeps find. Beside it runs one job at a time: clearing a
    /// batch of what was published or, when nothing is left to clear and a
    /// sweep is due, reading what is still pending. (On FerretDB a clear
    /// costs as much as an insert and that read scans every book: neither
    /// may hold publication back.) Sweeping only once the clears are done
    /// keeps a sweep from sending again what was just published. At
    /// shutdown, publishes and clears what was handed over, and gives the
    /// lease up.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // The first sweeps take whatever was pending when this process
        // started, however recent.
        let started = Utc::now();
        let mut next_sweep = Instant::now();
        let mut batch = Vec::with_capacity(BATCH);
        let mut job: Option<BoxFuture<'static, Done>> = None;
        loop {
            if job.is_none() {
                if !self.uncleared.is_empty() {
                    job = Some(self.clear());
                } else if Instant::now() >= next_sweep {
                    job = Some(self.read_pending(started.max(Utc::now() - SWEEP_GRACE)));
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                received = self.events.recv_many(&mut batch, BATCH), if self.uncleared.len() < MAX_UNCLEARED => {
                    if received == 0 {
                        break;
                    }
                    if !self.publish_handed_over(&mut batch).await {
                        next_sweep = next_sweep.min(self.sweep_soon());
                    }
                }
                () = self.missed.notified() => next_sweep = next_sweep.min(self.sweep_soon()),
                () = tokio::time::sleep_until(next_sweep), if job.is_none() => {}
                done = async { job.as_mut().expect("a job runs").await }, if job.is_some() => {
                    job = None;
                    if let Done::Read(read) = done {
                        next_sweep = Instant::now() + self.publish_swept(read).await;
                    }
                }
            }
        }
        self.events.close();
        while self.events.recv_many(&mut batch, BATCH).await > 0 {
            if !self.publish_handed_over(&mut batch).await {
                break;
            }
        }
        // What a sweep read now stays pending for the next start.
        if let Some(job) = job {
            job.await;
        }
        while !self.uncleared.is_empty() {
            self.clear().await;
        }
        // Another replica need not wait for the lease to expire.
        self.lease.release(&mut self.redis).await;
        tracing::info!("outbox relay stopped");
    }

    /// When the sweep should come for an event left to it: once the event
    /// is past the grace.
    fn sweep_soon(&mut self) -> Instant {
        self.idle.reset();
        Instant::now() + SWEEP_GRACE
    }

    /// Publishes events the handlers handed over (emptying `batch`); whether
    /// all went out. What did not stays pending.
    async fn publish_handed_over(&mut self, batch: &mut Vec<Stored>) -> bool {
        let received = batch.len();
        // Past the grace the sweep may have taken an event already.
        let fresh: Vec<Pending> = batch
            .drain(..)
            .filter(|event| event.at.elapsed() < SWEEP_GRACE)
            .map(|event| Pending {
                id: event.book_id,
                events: vec![event.json],
            })
            .collect();
        let all_fresh = fresh.len() == received;
        match self.publish(&fresh, Via::Immediate).await {
            Ok(_) => {
                self.uncleared.extend(fresh);
                all_fresh
            }
            Err(error) => {
                tracing::warn!(%error, "publishing new events failed; the sweep will retry");
                false
            }
        }
    }

    /// Publishes what a sweep read; the wait before the next sweep.
    async fn publish_swept(&mut self, read: Result<Vec<Pending>, Failure>) -> Duration {
        let published = match read {
            Ok(books) => self.publish(&books, Via::Sweep).await.map(|n| (books, n)),
            Err(error) => Err(error),
        };
        let (books, events) = match published {
            Ok(published) => published,
            Err(error) => {
                self.idle.reset();
                let wait = self.failing.next_delay();
                tracing::warn!(%error, retry_in = ?wait, "outbox sweep failed");
                return wait;
            }
        };
        self.failing.reset();
        if events > 0 {
            tracing::info!(events, "published events left pending");
        }
        let found = books.len();
        self.uncleared.extend(books);
        if found == 0 {
            return self.idle.next_delay();
        }
        self.idle.reset();
        // A full batch: more is waiting, to be read once this one is cleared.
        if found == BATCH {
            Duration::ZERO
        } else {
            self.sweep_interval
        }
    }

    /// XADDs each event to its book's partition and PUBLISHes it, in
    /// order, in one pipeline; how many.
    async fn publish(&mut self, books: &[Pending], via: Via) -> Result<usize, Failure> {
        let events: Vec<(&'static str, &str, String)> = books
            .iter()
            .flat_map(|book| {
                let stream = self.partitions.stream_of(&book.id.to_hex());
                book.events
                    .iter()
                    .map(move |json| (event_type_of(json), json.as_str(), stream.clone()))
            })
            .collect();
        if events.is_empty() {
            return Ok(0);
        }
        if !self.layout_checked {
            self.partitions.check_layout(&mut self.redis).await?;
            self.layout_checked = true;
        }
        let mut pipe = redis::pipe();
        for (event_type, json, stream) in &events {
            platform::stream::append(&mut pipe, stream, event_type, json);
            pipe.cmd("PUBLISH").arg(*event_type).arg(*json).ignore();
        }
        pipe.query_async::<()>(&mut self.redis).await?;
        for (event_type, ..) in &events {
            metrics::event_published(event_type, via);
        }
        Ok(events.len())
    }

    /// Clears the oldest batch of what was published from its outboxes. A
    /// failed clear leaves its events pending: the sweep sends them again.
    fn clear(&mut self) -> BoxFuture<'static, Done> {
        let books: Vec<Pending> = self
            .uncleared
            .drain(..self.uncleared.len().min(CLEAR_BATCH))
            .collect();
        let (store, timeout) = (self.store.clone(), self.timeout);
        async move {
            if let Err(error) = bounded(timeout, store.clear(&books)).await {
                tracing::warn!(%error, "clearing published events failed; the sweep will send them again");
            }
            Done::Cleared
        }
        .boxed()
    }

    /// Reads a batch of the events pending since `cutoff` or before, oldest
    /// first, if this replica holds the lease (renewed at each sweep, so
    /// that two replicas never sweep a backlog at once).
    fn read_pending(&self, cutoff: DateTime<Utc>) -> BoxFuture<'static, Done> {
        let (store, timeout) = (self.store.clone(), self.timeout);
        let (lease, mut redis) = (self.lease.clone(), self.redis.clone());
        async move {
            let read = async {
                if !lease.hold(&mut redis).await? {
                    return Ok(Vec::new());
                }
                bounded(timeout, store.pending(cutoff, BATCH as i64)).await
            };
            Done::Read(read.await)
        }
        .boxed()
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
