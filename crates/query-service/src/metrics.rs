//! What query-service counts: events read from the stream, applied,
//! skipped as stale, failed and dead-lettered, and cache lookups; and, read
//! at each scrape, the consumer group's lag and pending count and whether
//! this replica's consumer runs.

use std::{future::Future, pin::Pin, time::Duration};

use platform::{
    health::WorkerStatus,
    metrics::{Collector, Gauge},
    RedisConnection,
};

use crate::apply::stream::groups_on;

const CONSUMED: &str = "books_events_consumed_total";
const APPLIED: &str = "books_events_applied_total";
const STALE: &str = "books_events_stale_total";
const FAILED: &str = "books_events_failed_total";
const DEAD_LETTERED: &str = "books_events_dead_lettered_total";
const CACHE_LOOKUPS: &str = "books_cache_lookups_total";
const LOCAL_HITS: &str = "books_cache_local_hits_total";
const LOCAL_INVALIDATIONS: &str = "books_cache_local_invalidations_total";
const GROUP_LAG: &str = "books_consumer_group_lag";
const GROUP_PENDING: &str = "books_consumer_group_pending";
const CONSUMER_UP: &str = "books_consumer_up";

/// How long a scrape waits for Redis before leaving the group's figures out.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// Installs the recorder and describes what this service records.
pub fn install() {
    platform::metrics::recorder();
    metrics::describe_counter!(
        CONSUMED,
        "Stream entries this replica read from the consumer group, redeliveries included"
    );
    metrics::describe_counter!(APPLIED, "Events written to the read model, by type");
    metrics::describe_counter!(
        STALE,
        "Events skipped because the read model already held their version or a newer one (duplicates, redeliveries, reordering), by type"
    );
    metrics::describe_counter!(
        FAILED,
        "Attempts to apply an event that failed and were left for a retry, by cause: outage (MongoDB or Redis unavailable, contention; never leads to a dead letter) or error"
    );
    metrics::describe_counter!(
        DEAD_LETTERED,
        "Entries moved to the dead-letter stream, by reason: unreadable (not an event) or failing (still failing after MAX_DELIVERIES deliveries)"
    );
    metrics::describe_counter!(
        CACHE_LOOKUPS,
        "Reads of one book from the Redis cache, by result: hit, miss (read from MongoDB) or error (Redis unreadable; read from MongoDB)"
    );
    metrics::describe_counter!(
        LOCAL_HITS,
        "Cache hits answered from this process's own copy of the cache, without asking Redis"
    );
    metrics::describe_counter!(
        LOCAL_INVALIDATIONS,
        "Invalidations Redis pushed to this process's copy of the cache (a key it holds changed, expired or was flushed)"
    );
}

/// `count` entries were read from the group.
pub fn events_consumed(count: usize) {
    metrics::counter!(CONSUMED).increment(count as u64);
}

/// An event of `event_type` was written to the read model.
pub fn event_applied(event_type: &'static str) {
    metrics::counter!(APPLIED, "type" => event_type).increment(1);
}

/// An event of `event_type` was older than what the read model holds.
pub fn event_stale(event_type: &'static str) {
    metrics::counter!(STALE, "type" => event_type).increment(1);
}

/// Why applying an event failed.
#[derive(Debug, Clone, Copy)]
pub enum FailureCause {
    /// A dependency was unavailable or contended: the event waits.
    Outage,
    /// Anything else: counts towards dead-lettering the event.
    Error,
}

/// An attempt to apply an event failed for `cause`.
pub fn event_failed(cause: FailureCause) {
    let cause = match cause {
        FailureCause::Outage => "outage",
        FailureCause::Error => "error",
    };
    metrics::counter!(FAILED, "cause" => cause).increment(1);
}

/// Why an entry was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// It is not an event.
    Unreadable,
    /// Applying it failed `MAX_DELIVERIES` deliveries in a row.
    Failing,
}

/// An entry went to the dead-letter stream for `reason`.
pub fn event_dead_lettered(reason: DeadLetterReason) {
    let reason = match reason {
        DeadLetterReason::Unreadable => "unreadable",
        DeadLetterReason::Failing => "failing",
    };
    metrics::counter!(DEAD_LETTERED, "reason" => reason).increment(1);
}

/// What a cache lookup found.
#[derive(Debug, Clone, Copy)]
pub enum CacheResult {
    Hit,
    Miss,
    /// Redis could not be read.
    Error,
}

/// A read of one book looked in the cache.
pub fn cache_lookup(result: CacheResult) {
    let result = match result {
        CacheResult::Hit => "hit",
        CacheResult::Miss => "miss",
        CacheResult::Error => "error",
    };
    metrics::counter!(CACHE_LOOKUPS, "result" => result).increment(1);
}

/// The counters of the process's own copy of the cache: hits it answered,
/// and invalidations Redis pushed to it. Handles, taken once: a hit is the
/// hottest path of the service.
pub fn local_copy_counters() -> (metrics::Counter, metrics::Counter) {
    (
        metrics::counter!(LOCAL_HITS),
        metrics::counter!(LOCAL_INVALIDATIONS),
    )
}

/// Reads, at each scrape, the consumer group's figures (XINFO GROUPS) and
/// whether this replica's consumer runs.
pub struct ConsumerGroup {
    pub redis: RedisConnection,
    /// Every partition's stream.
    pub streams: Vec<String>,
    pub group: String,
    pub consumer: WorkerStatus,
}

impl ConsumerGroup {
    /// The group's lag over every partition (`None` when Redis cannot tell
    /// for one, e.g. after entries were deleted from the middle of its
    /// stream) and pending count.
    async fn figures(&self) -> anyhow::Result<(Option<usize>, usize)> {
        let groups = groups_on(&mut self.redis.clone(), &self.streams, &self.group).await?;
        let (mut lag, mut pending) = (Some(0), 0);
        for (group, stream) in groups.into_iter().zip(&self.streams) {
            let group = group
                .ok_or_else(|| anyhow::anyhow!("no consumer group {} on {stream}", self.group))?;
            lag = lag.zip(group.lag).map(|(sum, lag)| sum + lag);
            pending += group.pending;
        }
        Ok((lag, pending))
    }
}

impl Collector for ConsumerGroup {
    fn collect(&self) -> Pin<Box<dyn Future<Output = Vec<Gauge>> + Send + '_>> {
        Box::pin(async move {
            let mut gauges = vec![Gauge {
                name: CONSUMER_UP,
                help: "1 while this replica's consumer reads from the group, 0 before its first read and while its session fails",
                value: if self.consumer.is_up() { 1.0 } else { 0.0 },
            }];
            let (lag, pending) = match tokio::time::timeout(SCRAPE_TIMEOUT, self.figures()).await {
                Ok(Ok(figures)) => figures,
                Ok(Err(error)) => {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "cannot read the consumer group for /metrics"
                    );
                    return gauges;
                }
                Err(_) => {
                    tracing::warn!(timeout = ?SCRAPE_TIMEOUT, "reading the consumer group for /metrics timed out");
                    return gauges;
                }
            };
            if let Some(lag) = lag {
                gauges.push(Gauge {
                    name: GROUP_LAG,
                    help: "Entries of the stream the consumer group has not read yet (the same for every replica of the group)",
                    value: lag as f64,
                });
            }
            gauges.push(Gauge {
                name: GROUP_PENDING,
                help: "Entries the consumer group read but has not acknowledged yet, all replicas together",
                value: pending as f64,
            });
            gauges
        })
    }
}
