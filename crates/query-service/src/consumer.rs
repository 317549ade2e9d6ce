//! The stream consumer: reads events through a consumer group, applies them
//! to the read model and acknowledges (XACK) only what was applied (or found
//! stale). An entry that can never be applied (not an event) is copied to
//! the dead-letter stream with the reason, then acknowledged, so it cannot
//! wedge the group.
//!
//! On start, and after any failure, the consumer first re-reads its own
//! pending entries (delivered earlier but never acknowledged), then reads
//! new ones. Entries another consumer left pending for longer than
//! `claim_idle` (a replica that died and never came back) are claimed with
//! XAUTOCLAIM and handled the same way. Failures back off and retry; an
//! entry that has failed `max_deliveries` deliveries is dead-lettered with
//! the last error, so one event cannot hold the others back. Nothing is
//! acknowledged that the read model, the author summaries and the cache do
//! not hold.
//!
//! Every `trim_interval` the consumer trims the stream of the entries every
//! consumer group has acknowledged (XTRIM MINID), so Redis memory stays
//! bounded; an entry some group has not acknowledged, or not yet read, is
//! never trimmed.
//! After each batch it bumps a counter that read-your-writes requests
//! watch.
//!
//! The consumer reports itself up (to readiness and `/metrics`) once a read
//! from the group succeeded, and down while its session fails; it counts
//! what it reads, applies, skips as stale, fails and dead-letters.
//!
//! Beside the consumption, the read model is readied with the same backoff
//! (indexes, and author keys of books an older version wrote): the service
//! starts while MongoDB is down, and consuming does not wait for it.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use bson::oid::ObjectId;
use domain::BookEvent;
use futures::{stream, StreamExt};
use platform::{document::object_id, health::WorkerStatus};
use redis::{aio::MultiplexedConnection, streams::StreamReadReply, AsyncConnectionConfig, Value};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    metrics::{self, DeadLetterReason, FailureCause},
    projection::Applied,
    projector::Projector,
};

/// Trims KEYS[1] to the oldest entry any group still needs: for each group
/// the smaller of its last-delivered id (what it has not read comes after)
/// and its smallest pending id. Returns how many entries went.
const TRIM_ACKNOWLEDGED: &str = r"
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  if am ~= bm then return am < bm end
  return as < bs
end
local keep = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local needed = info['last-delivered-id']
  local pending = redis.call('XPENDING', KEYS[1], info['name'])
  if pending[2] and older(pending[2], needed) then needed = pending[2] end
  if keep == nil or older(needed, keep) then keep = needed end
end
if keep == nil or keep == '0-0' then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', keep)
";

/// Events of one batch applied at once. Order does not matter: the version
/// guard makes the outcome the same in any order.
const APPLY_CONCURRENCY: usize = 16;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// An apply may take this many dependency timeouts (a read-model write, a
/// read, a cache write and summary rounds) before it counts as hung.
const APPLY_TIMEOUT_FACTOR: u32 = 5;

pub struct Consumer {
    pub client: redis::Client,
    pub projector: Projector,
    /// Bumped after every batch handled.
    pub batches: watch::Sender<u64>,
    pub stream: String,
    pub group: String,
    pub name: String,
    pub dead_letter_stream: String,
    pub batch: usize,
    pub block: Duration,
    pub timeout: Duration,
    /// How long an entry stays pending at another consumer before this one
    /// claims it.
    pub claim_idle: Duration,
    /// Deliveries after which an entry that still fails is dead-lettered.
    pub max_deliveries: u64,
    /// How often the stream is trimmed of what every group acknowledged;
    /// zero never trims.
    pub trim_interval: Duration,
    /// Notified when the group had to be created, which after the first
    /// start means Redis lost it, and possibly events with it.
    pub group_created: Arc<Notify>,
    /// Up once a read from the group succeeded, down while a session
    /// fails: what readiness and `/metrics` say of the consumer.
    pub status: WorkerStatus,
}

/// Where the next read starts: our own pending entries after this id, or
/// new entries (`>`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cursor {
    Pending(String),
    New,
}

impl Cursor {
    fn id(&self) -> &str {
        match self {
            Cursor::Pending(id) => id,
            Cursor::New => ">",
        }
    }
}

/// The outcome of one entry.
enum Outcome {
    Done,
    /// Give it up: its category (for the metrics) and the reason recorded
    /// with the dead letter.
    DeadLetter(DeadLetterReason, String),
    Retry(anyhow::Error),
}

impl Consumer {
    /// Runs until `shutdown` is cancelled; the current batch is finished and
    /// acknowledged first.
    pub async fn run(self, shutdown: CancellationToken) {
        tokio::join!(
            self.consume_forever(&shutdown),
            self.prepare_read_model(&shutdown)
        );
        tracing::info!("event consumer stopped");
    }

    async fn consume_forever(&self, shutdown: &CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        while !shutdown.is_cancelled() {
            match self.consume(shutdown, &mut backoff).await {
                Ok(()) => break,
                Err(error) => {
                    self.status.down();
                    tracing::warn!(error = format!("{error:#}"), retry_in = ?backoff, "event consumer failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Readies the read model (idempotent), retrying until done.
    async fn prepare_read_model(&self, shutdown: &CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let created = tokio::select! {
                () = shutdown.cancelled() => return,
                created = self.projector.prepare() => created,
            };
            match created {
                Ok(()) => {
                    tracing::info!("read model ready: indexes in place");
                    return;
                }
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), retry_in = ?backoff, "readying the read model failed");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn connect(&self) -> anyhow::Result<MultiplexedConnection> {
        // A blocking read holds the connection for up to `block`: answers
        // may take that long plus the usual timeout.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.block + self.timeout));
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await;
        match created {
            Ok(()) => {
                tracing::info!(stream = %self.stream, group = %self.group, "consumer group created");
                self.group_created.notify_one();
            }
            Err(error) if error.code() == Some("BUSYGROUP") => {}
            Err(error) => return Err(error.into()),
        }
        Ok(connection)
    }

    /// One connected session; returns `Ok` only on shutdown. A session that
    /// connects resets the reconnection `backoff`.
    async fn consume(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Duration,
    ) -> anyhow::Result<()> {
        let mut connection = self.connect().await?;
        *backoff = MIN_BACKOFF;
        let mut cursor = Cursor::Pending("0".to_owned());
        let mut failures = 0u32;
        let mut next_claim = tokio::time::Instant::now();
        let mut next_trim = tokio::time::Instant::now() + self.trim_interval;
        loop {
            if !self.trim_interval.is_zero() && tokio::time::Instant::now() >= next_trim {
                next_trim = tokio::time::Instant::now() + self.trim_interval;
                // Trimming is housekeeping: a failure must not stop events.
                if let Err(error) = self.trim(&mut connection).await {
                    tracing::warn!(%error, "trimming the stream failed");
                }
            }
            if cursor == Cursor::New && tokio::time::Instant::now() >= next_claim {
                next_claim = tokio::time::Instant::now() + (self.claim_idle / 2).max(MIN_BACKOFF);
                if self.claim_abandoned(&mut connection).await? > 0 {
                    cursor = Cursor::Pending("0".to_owned());
                }
            }
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(&self.group)
                .arg(&self.name)
                .arg("COUNT")
                .arg(self.batch);
            if cursor == Cursor::New {
                read.arg("BLOCK").arg(self.block.as_millis() as u64);
            }
            read.arg("STREAMS").arg(&self.stream).arg(cursor.id());
            let reply: Option<StreamReadReply> = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                reply = read.query_async(&mut connection) => reply?,
            };
            self.status.up();
            let entries = reply
                .and_then(|r| r.keys.into_iter().next())
                .map(|k| k.ids)
                .unwrap_or_default();
            metrics::events_consumed(entries.len());
            if entries.is_empty() {
                if let Cursor::Pending(_) = cursor {
                    tracing::debug!("no pending entries left; reading new ones");
                    cursor = Cursor::New;
                }
                continue;
            }
            let last_id = entries.last().map(|e| e.id.clone()).unwrap_or_default();
            // Entries read from the pending list have been delivered before:
            // how often decides when a failing one is given up.
            let deliveries = match cursor {
                Cursor::Pending(_) => self.deliveries(&mut connection, &entries).await?,
                Cursor::New => HashMap::new(),
            };
            let retry = self.handle(&mut connection, entries, &deliveries).await;
            // Also after a failure: some entries of the batch may be done.
            self.batches.send_modify(|n| *n = n.wrapping_add(1));
            let retry = retry?;
            match retry {
                None => {
                    failures = 0;
                    if let Cursor::Pending(_) = cursor {
                        cursor = Cursor::Pending(last_id);
                    }
                }
                Some(error) => {
                    // Leave the failed entries pending and read them again
                    // after a pause.
                    failures += 1;
                    let pause =
                        (MIN_BACKOFF * 2u32.saturating_pow(failures.min(9))).min(MAX_BACKOFF);
                    tracing::warn!(error = format!("{error:#}"), retry_in = ?pause, "applying events failed");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(pause) => {}
                    }
                    cursor = Cursor::Pending("0".to_owned());
                }
            }
        }
    }

    /// Claims for this consumer the entries other consumers have left
    /// pending for longer than `claim_idle`; returns how many.
    async fn claim_abandoned(
        &self,
        connection: &mut MultiplexedConnection,
    ) -> anyhow::Result<usize> {
        let mut start = "0-0".to_owned();
        let mut claimed = 0;
        loop {
            // Reply: [next start, [claimed ids]] (and, since Redis 7, the
            // ids deleted meanwhile).
            let reply: Vec<Value> = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&self.name)
                .arg(self.claim_idle.as_millis() as u64)
                .arg(&start)
                .arg("COUNT")
                .arg(self.batch)
                .arg("JUSTID")
                .query_async(connection)
                .await?;
            let mut reply = reply.into_iter();
            let (Some(next), Some(ids)) = (reply.next(), reply.next()) else {
                anyhow::bail!("unexpected XAUTOCLAIM reply");
            };
            let next: String = redis::from_redis_value(next)?;
            let ids: Vec<String> = redis::from_redis_value(ids)?;
            claimed += ids.len();
            if next == "0-0" {
                break;
            }
            start = next;
        }
        if claimed > 0 {
            tracing::info!(claimed, idle = ?self.claim_idle, "claimed entries another consumer left pending");
        }
        Ok(claimed)
    }

    /// Removes from the stream every entry that every consumer group has
    /// acknowledged: those older than the oldest entry some group still
    /// holds pending or has not read yet. One script, so no group can be
    /// created, rewound or acknowledge in between.
    async fn trim(&self, connection: &mut MultiplexedConnection) -> redis::RedisResult<u64> {
        let trimmed: u64 = redis::cmd("EVAL")
            .arg(TRIM_ACKNOWLEDGED)
            .arg(1)
            .arg(&self.stream)
            .query_async(connection)
            .await?;
        if trimmed > 0 {
            tracing::debug!(trimmed, "trimmed acknowledged entries from the stream");
        }
        Ok(trimmed)
    }

    /// How many times each of these pending entries has been delivered
    /// (this delivery included).
    async fn deliveries(
        &self,
        connection: &mut MultiplexedConnection,
        entries: &[redis::streams::StreamId],
    ) -> anyhow::Result<HashMap<String, u64>> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(HashMap::new());
        };
        let reply: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&first.id)
            .arg(&last.id)
            .arg(entries.len())
            .arg(&self.name)
            .query_async(connection)
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|pending| (pending.id, pending.times_delivered as u64))
            .collect())
    }

    /// Applies a batch; acknowledges what is done and dead-letters what can
    /// never be applied, or has failed `max_deliveries` deliveries. Returns
    /// the first error of entries left for retry.
    async fn handle(
        &self,
        connection: &mut MultiplexedConnection,
        entries: Vec<redis::streams::StreamId>,
        deliveries: &HashMap<String, u64>,
    ) -> anyhow::Result<Option<anyhow::Error>> {
        let applied: Vec<AppliedEntry> = stream::iter(entries)
            .map(|entry| async move {
                let (outcome, author_keys) = self.apply(&entry.id, &entry.map).await;
                (entry.id, entry.map, outcome, author_keys)
            })
            .buffered(APPLY_CONCURRENCY)
            .collect()
            .await;
        // Each author summary the batch touched is updated once, for all of
        // its books the batch named; an event is done only once all of its
        // authors' summaries are.
        let mut touched: HashMap<String, BTreeSet<ObjectId>> = HashMap::new();
        for (_, _, outcome, summaries) in &applied {
            if matches!(outcome, Outcome::Done) {
                for (key, book) in summaries {
                    touched.entry(key.clone()).or_default().insert(*book);
                }
            }
        }
        let updated: Vec<(String, Result<(), SummaryFailed>)> = stream::iter(touched)
            .map(|(key, books)| async move {
                let outcome = self.update_summary(&key, &books).await;
                (key, outcome)
            })
            .buffer_unordered(APPLY_CONCURRENCY)
            .collect()
            .await;
        let failed: HashMap<String, SummaryFailed> = updated
            .into_iter()
            .filter_map(|(key, outcome)| outcome.err().map(|error| (key, error)))
            .collect();
        // Before acknowledging: this process's reads no longer show what
        // the batch replaced.
        self.projector.cache.sync_local_copy().await;
        let outcomes = applied.into_iter().map(|(id, fields, outcome, summaries)| {
            let outcome = match summaries.iter().find_map(|(key, _)| failed.get(key)) {
                Some(error) if matches!(outcome, Outcome::Done) => {
                    Outcome::Retry(anyhow::Error::new(error.clone()))
                }
                _ => outcome,
            };
            (id, fields, outcome)
        });

        // Atomic, so an entry is never acknowledged without its dead-letter
        // copy.
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut commands = 0usize;
        let mut first_error = None;
        let mut dead_lettered = Vec::new();
        for (id, fields, outcome) in outcomes {
            let delivered = deliveries.get(&id).copied().unwrap_or(1);
            let outcome = match outcome {
                Outcome::Retry(error) if is_transient(&error) => {
                    metrics::event_failed(FailureCause::Outage);
                    // Give the delivery back: a wait for MongoDB or Redis is
                    // not a failure of the event.
                    pipe.cmd("XCLAIM")
                        .arg(&self.stream)
                        .arg(&self.group)
                        .arg(&self.name)
                        .arg(0)
                        .arg(&id)
                        .arg("RETRYCOUNT")
                        .arg(delivered.saturating_sub(1))
                        .arg("JUSTID")
                        .ignore();
                    commands += 1;
                    Outcome::Retry(error)
                }
                Outcome::Retry(error) => {
                    metrics::event_failed(FailureCause::Error);
                    if delivered >= self.max_deliveries {
                        Outcome::DeadLetter(
                            DeadLetterReason::Failing,
                            format!(
                                "failed {} deliveries; last error: {error:#}",
                                self.max_deliveries
                            ),
                        )
                    } else {
                        Outcome::Retry(error)
                    }
                }
                other => other,
            };
            match outcome {
                Outcome::Done => {}
                Outcome::DeadLetter(category, reason) => {
                    dead_lettered.push(category);
                    tracing::error!(entry = %id, %reason, "event cannot be applied; moved to the dead-letter stream");
                    let mut add = redis::cmd("XADD");
                    add.arg(&self.dead_letter_stream)
                        .arg("*")
                        .arg("sourceId")
                        .arg(&id)
                        .arg("reason")
                        .arg(&reason);
                    for (name, value) in &fields {
                        if let Value::BulkString(bytes) = value {
                            add.arg(name).arg(bytes.as_slice());
                        }
                    }
                    pipe.add_command(add).ignore();
                }
                Outcome::Retry(error) => {
                    first_error.get_or_insert(error);
                    continue;
                }
            }
            pipe.cmd("XACK")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&id)
                .ignore();
            commands += 1;
        }
        if commands > 0 {
            pipe.query_async::<()>(connection).await?;
        }
        // Counted once Redis took them: after a failed pipeline they are
        // still pending, and are dead-lettered (and counted) next time.
        for category in dead_lettered {
            metrics::event_dead_lettered(category);
        }
        Ok(first_error)
    }

    /// Applies the book's part of entry `id` within a span naming its
    /// event and the trace of the request that caused it, so that every
    /// line logged meanwhile carries the trace id; the author keys whose
    /// summaries it needs are returned with a done outcome. Each event
    /// written is one `info` line, as each command is on the command side;
    /// a stale one (a duplicate, a redelivery) is only a `debug` line, since
    /// a replay makes many.
    async fn apply(
        &self,
        id: &str,
        fields: &HashMap<String, Value>,
    ) -> (Outcome, Vec<(String, ObjectId)>) {
        let unreadable = |reason: String| {
            (
                Outcome::DeadLetter(DeadLetterReason::Unreadable, reason),
                Vec::new(),
            )
        };
        let data = match fields.get("data") {
            Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            _ => return unreadable("entry has no data field".to_owned()),
        };
        let event = match BookEvent::from_json(&data) {
            Ok(event) => event,
            Err(error) => return unreadable(error.to_string()),
        };
        let event_type = event.event_type.as_str();
        let trace_id = event
            .traceparent
            .as_deref()
            .and_then(platform::trace::trace_id_of);
        let span = tracing::info_span!(
            "event",
            entry = id,
            book_id = %event.book_id,
            version = event.version,
            event_type,
            trace_id = trace_id.as_deref().unwrap_or("-"),
        );
        let applied = self
            .bounded(self.projector.apply_book(&event))
            .instrument(span.clone())
            .await;
        let _in_span = span.enter();
        match applied {
            Ok((applied, author_keys)) => {
                if applied == Applied::Written {
                    metrics::event_applied(event_type);
                    tracing::info!("event applied");
                } else {
                    metrics::event_stale(event_type);
                    tracing::debug!(
                        "event skipped: the read model holds this version or a newer one"
                    );
                }
                let book = object_id(&event.book_id);
                (
                    Outcome::Done,
                    author_keys.into_iter().map(|key| (key, book)).collect(),
                )
            }
            Err(error) => (Outcome::Retry(error), Vec::new()),
        }
    }

    /// Updates the entries of `books` in one author summary, bounded like
    /// an apply.
    async fn update_summary(
        &self,
        key: &str,
        books: &BTreeSet<ObjectId>,
    ) -> Result<(), SummaryFailed> {
        let outcome = self
            .bounded(self.projector.summaries.update(key, books))
            .await;
        outcome.map_err(|error| SummaryFailed {
            key: key.to_owned(),
            transient: is_transient(&error),
            message: format!("{error:#}"),
        })
    }

    /// Runs `work`, giving up after `APPLY_TIMEOUT_FACTOR` dependency
    /// timeouts (an apply is several MongoDB and Redis round trips).
    async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let limit = self.timeout * APPLY_TIMEOUT_FACTOR;
        match tokio::time::timeout(limit, work).await {
            Ok(outcome) => outcome,
            Err(_) => Err(platform::mongo::TimedOut(limit).into()),
        }
    }
}

/// An entry after its book was applied: id, fields, outcome, and the
/// author summaries it waits for (each key with the entry's book).
type AppliedEntry = (
    String,
    HashMap<String, Value>,
    Outcome,
    Vec<(String, ObjectId)>,
);

/// An author summary that could not be recomputed, shared by every event
/// of the batch that needed it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the summary of author {key:?} could not be recomputed: {message}")]
struct SummaryFailed {
    key: String,
    /// Whether the cause passes by itself (see `is_transient`).
    transient: bool,
    message: String,
}

/// Whether `error` is one that passes by itself: MongoDB or Redis
/// unreachable, restarting or failing over, or concurrent writers of one
/// author's summary. Such failures delay an event; they never count
/// towards dead-lettering it.
fn is_transient(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<mongodb::error::Error>()
            .is_some_and(platform::error::is_unavailable)
            || cause.downcast_ref::<redis::RedisError>().is_some_and(|e| {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || matches!(
                        e.code(),
                        Some("LOADING" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" | "BUSY")
                    )
            })
            || cause.is::<crate::summary::Contended>()
            || cause.is::<platform::mongo::TimedOut>()
            || cause
                .downcast_ref::<SummaryFailed>()
                .is_some_and(|failed| failed.transient)
    })
}
