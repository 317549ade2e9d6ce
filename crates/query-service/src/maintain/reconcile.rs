//! Anti-entropy: walks the write model's books and the read model's
//! versions side by side in `_id` order and repairs every book the read
//! model lacks or holds at an older version, so the read model converges
//! even when events were lost on the way (Redis restarted without
//! persistence, a stream trimmed by hand). Repairs are harmless to repeat.

use std::time::Duration;

use bson::{doc, oid::ObjectId};
use chrono::{DateTime, Utc};
use domain::{BookEvent, BookId};
use futures::{StreamExt, TryStreamExt};
use mongodb::Collection;
use platform::{
    backoff::Backoff,
    document::{BookDocument, StoredBook},
    lease::Lease,
    stream::Partitions,
    RedisConnection,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{apply::stream::groups_on, read_model::Books};

/// How long a book found behind may take to catch up by its own event
/// before it is emitted again: events in flight normally take
/// milliseconds.
pub const SETTLE: Duration = Duration::from_secs(2);
/// Books emitted per settle wait.
const EMIT_BATCH: usize = 4096;
/// Books applied per batch.
const APPLY_BATCH: usize = 256;
/// Concurrent applies of a `Repair::Write` batch.
const APPLY_CONCURRENCY: usize = 16;
/// How soon a walk that must run tries again while another replica walks.
const BUSY_RETRY: Duration = Duration::from_millis(500);
/// Waits between failed walks.
const RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

/// What one reconciliation found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Books of the write model looked at (deleted ones included).
    pub checked: u64,
    /// Books the read model did not have at all.
    pub missing: u64,
    /// Books the read model had at an older version.
    pub stale: u64,
    /// Books among those the walk repaired: with `Repair::Emit`, those
    /// still behind after the settle time.
    pub repaired: u64,
    /// Books behind whose events the relay has not published yet: left to
    /// it.
    pub unpublished: u64,
    /// Read-model books the write model does not have: left alone and
    /// logged, since only the write model can say what they should be.
    pub unknown: u64,
    /// Write-model documents that are not valid books: skipped and logged.
    pub invalid: u64,
}

/// How a reconciliation repairs a book.
pub enum Repair {
    /// Append the book's current state to its partition of the event
    /// stream, for the books still behind `settle` after they were found
    /// behind: their own events may just be on the way.
    Emit {
        redis: RedisConnection,
        partitions: Partitions,
        settle: Duration,
    },
    /// Write the book's current state into this read model.
    Write(Books),
}

impl Repair {
    /// How many books a batch holds: emitting waits `settle` per batch.
    fn batch(&self) -> usize {
        match self {
            Repair::Emit { .. } => EMIT_BATCH,
            Repair::Write(_) => APPLY_BATCH,
        }
    }

    /// Repairs `batch`, found behind since `found`; returns how many it
    /// repaired.
    async fn run(&self, batch: Batch, read_model: &Books) -> anyhow::Result<u64> {
        let mut events = batch.events;
        if events.is_empty() {
            return Ok(0);
        }
        match self {
            Repair::Emit {
                redis,
                partitions,
                settle,
            } => {
                tokio::time::sleep_until(batch.found + *settle).await;
                let held = read_model
                    .versions_of(events.iter().map(|e| &e.book_id))
                    .await?;
                events.retain(|event| {
                    held.get(event.book_id.as_str())
                        .is_none_or(|version| u64::try_from(*version).unwrap_or(0) < event.version)
                });
                if events.is_empty() {
                    return Ok(0);
                }
                let mut pipe = redis::pipe();
                for event in &events {
                    platform::stream::append(
                        &mut pipe,
                        &partitions.stream_of(event.book_id.as_str()),
                        event.event_type.as_str(),
                        &event.to_json(),
                    );
                }
                pipe.query_async::<()>(&mut redis.clone()).await?;
                Ok(events.len() as u64)
            }
            Repair::Write(read_model) => {
                let count = events.len() as u64;
                // Each apply owns its handles: a future borrowing them
                // would not be `Send` for every lifetime.
                futures::stream::iter(events)
                    .map(|event| {
                        let read_model = read_model.clone();
                        async move { read_model.upsert(&event).await }
                    })
                    .buffer_unordered(APPLY_CONCURRENCY)
                    .try_collect::<Vec<_>>()
                    .await?;
                Ok(count)
            }
        }
    }
}

/// Books found behind, with their current state, since `found`.
struct Batch {
    events: Vec<BookEvent>,
    found: tokio::time::Instant,
}

impl Batch {
    fn new() -> Self {
        Self {
            events: Vec::new(),
            found: tokio::time::Instant::now(),
        }
    }

    fn push(&mut self, event: BookEvent) {
        if self.events.is_empty() {
            self.found = tokio::time::Instant::now();
        }
        self.events.push(event);
    }
}

/// A write-model document with whatever its outbox still holds.
#[derive(Debug, Deserialize)]
struct WrittenBook {
    #[serde(flatten)]
    book: BookDocument,
    #[serde(default)]
    outbox: Vec<bson::Bson>,
    /// When its oldest pending event was stored.
    #[serde(rename = "outboxAt")]
    outbox_at: Option<bson::DateTime>,
}

/// Compares the write model's books with `read_model` and repairs what the
/// read model lacks or holds at an older version. A book whose events the
/// relay has still to publish is left to it, unless they are older than
/// `lost_at`: when Redis may have lost what it was sent, the relay may have
/// published them there and not cleared them yet.
pub async fn reconcile(
    write_books: &Collection<BookDocument>,
    read_model: &Books,
    repair: &Repair,
    lost_at: Option<DateTime<Utc>>,
) -> anyhow::Result<Report> {
    let lost_at = lost_at.map(bson::DateTime::from_chrono);
    let mut report = Report::default();
    let mut written = write_books
        .clone_with_type::<WrittenBook>()
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await?;
    let mut held = read_model.versions().await?;
    let mut next_held: Option<(ObjectId, i64)> = held.try_next().await?;
    let mut batch = Batch::new();
    while let Some(WrittenBook {
        book: document,
        outbox,
        outbox_at,
    }) = written.try_next().await?
    {
        report.checked += 1;
        // Read-model books with smaller ids are unknown to the write model.
        while let Some((id, _)) = next_held.filter(|(id, _)| *id < document.id) {
            report.unknown += 1;
            tracing::warn!(%id, "the read model has a book the write model does not");
            next_held = held.try_next().await?;
        }
        let held_version = match next_held {
            Some((id, version)) if id == document.id => {
                next_held = held.try_next().await?;
                Some(version)
            }
            _ => None,
        };
        if held_version.is_some_and(|held| held >= document.version) {
            continue;
        }
        // The relay still has to publish this book's events.
        let maybe_lost = outbox_at.zip(lost_at).is_some_and(|(at, lost)| at < lost);
        if !outbox.is_empty() && !maybe_lost {
            report.unpublished += 1;
            continue;
        }
        let id = document.id;
        match event_of(document) {
            Ok(event) => {
                if held_version.is_some() {
                    report.stale += 1;
                } else {
                    report.missing += 1;
                }
                batch.push(event);
            }
            Err(error) => {
                report.invalid += 1;
                tracing::warn!(%id, %error, "skipping an invalid book of the write model");
            }
        }
        if batch.events.len() == repair.batch() {
            report.repaired += repair
                .run(std::mem::replace(&mut batch, Batch::new()), read_model)
                .await?;
        }
    }
    while next_held.is_some() {
        report.unknown += 1;
        next_held = held.try_next().await?;
    }
    report.repaired += repair.run(batch, read_model).await?;
    Ok(report)
}

/// The event that carries what the write model holds for a book.
fn event_of(document: BookDocument) -> anyhow::Result<BookEvent> {
    let id = BookId::parse(&document.id.to_hex())?;
    let at = document
        .updated_at
        .map(bson::DateTime::to_chrono)
        .unwrap_or_else(Utc::now);
    Ok(match document.into_stored()? {
        StoredBook::Live(book) if book.version == 1 => BookEvent::created(&book, None),
        StoredBook::Live(book) => BookEvent::updated(&book, None),
        StoredBook::Deleted { version } => BookEvent::deleted(&id, version, at, None),
    })
}

/// How long a walk may hold the lease `<stream>:reconcile-lease`; it is
/// released when the walk ends, so this only matters when a replica dies
/// mid-walk.
pub const LEASE_TTL: Duration = Duration::from_secs(600);

/// The service's reconciliation: at start, then every `interval` (never
/// when zero) and whenever `wake` is notified. Replicas take turns through
/// a lease, so one walk runs at a time; a failed walk is retried with
/// backoff.
pub struct Reconciler {
    pub write_books: Collection<BookDocument>,
    pub read_model: Books,
    pub redis: RedisConnection,
    pub partitions: Partitions,
    /// The consumer group: a walk waits until it has caught up.
    pub group: String,
    pub interval: Duration,
    pub wake: std::sync::Arc<Notify>,
    pub lease: Lease,
}

impl Reconciler {
    pub async fn run(self, shutdown: CancellationToken) {
        let repair = Repair::Emit {
            redis: self.redis.clone(),
            partitions: self.partitions.clone(),
            settle: SETTLE,
        };
        let mut backoff = RETRY;
        // When Redis may have lost events: a walk that must run even while
        // another replica walks (that walk may already have passed the
        // books concerned). Periodic walks just skip a turn.
        let mut lost_at = None;
        loop {
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                outcome = self.run_once(&repair, lost_at) => outcome,
            };
            let pause = match outcome {
                Ok(Walk::Done) => {
                    backoff.reset();
                    lost_at = None;
                    None
                }
                Ok(Walk::Busy) if lost_at.is_none() => None,
                Ok(Walk::Busy) => Some(BUSY_RETRY),
                Err(error) => {
                    let pause = backoff.next_delay();
                    tracing::warn!(error = format!("{error:#}"), retry_in = ?pause, "reconciliation failed");
                    Some(pause)
                }
            };
            let next = async {
                match pause {
                    Some(pause) => tokio::time::sleep(pause).await,
                    None if self.interval.is_zero() => std::future::pending().await,
                    None => tokio::time::sleep(self.interval).await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = next => {}
                () = self.wake.notified() => {
                    tracing::info!("Redis may have lost events: reconciling");
                    lost_at = Some(Utc::now());
                }
            }
        }
    }

    async fn run_once(
        &self,
        repair: &Repair,
        lost_at: Option<DateTime<Utc>>,
    ) -> anyhow::Result<Walk> {
        let mut redis = self.redis.clone();
        // While the group has a backlog, the read model is behind by design:
        // a walk would re-emit what is already on its way and add to the
        // backlog it is waiting for.
        let backlog = self.backlog(&mut redis).await?;
        if backlog > BACKLOG_LIMIT {
            tracing::debug!(
                backlog,
                "the consumer group has a backlog; reconciling later"
            );
            return Ok(Walk::Busy);
        }
        if !self.lease.hold(&mut redis).await? {
            tracing::debug!("another replica is reconciling");
            return Ok(Walk::Busy);
        }
        let started = tokio::time::Instant::now();
        let outcome = reconcile(&self.write_books, &self.read_model, repair, lost_at).await;
        self.lease.release(&mut redis).await;
        let report = outcome?;
        if report.repaired > 0 || report.unknown > 0 || report.invalid > 0 {
            tracing::info!(?report, elapsed = ?started.elapsed(), "reconciled the read model with the write model");
        } else {
            tracing::debug!(?report, elapsed = ?started.elapsed(), "the read model agrees with the write model");
        }
        Ok(Walk::Done)
    }
}

enum Walk {
    Done,
    /// Another replica holds the lease, or the group has a backlog.
    Busy,
}

/// Entries the group may have unread or pending, all partitions together,
/// for a walk to run: about a batch, which the settle time covers.
const BACKLOG_LIMIT: u64 = 256;

impl Reconciler {
    /// Entries of the partitions the group has not read yet (`lag`, when
    /// Redis knows it) plus those it holds pending; none where there is no
    /// stream or group yet.
    async fn backlog(&self, redis: &mut RedisConnection) -> anyhow::Result<u64> {
        let groups = groups_on(redis, &self.partitions.streams(), &self.group).await?;
        Ok(groups
            .iter()
            .flatten()
            .map(|group| (group.lag.unwrap_or(0) + group.pending) as u64)
            .sum())
    }
}
