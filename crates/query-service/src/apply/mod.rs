//! Events from the stream into the read model. The consumer loop reads a
//! batch through the consumer group, applies it, and acknowledges only what
//! the read model, the cache and the summaries hold; what failed stays
//! pending and is read again, and an entry that can never be applied goes
//! to the dead-letter stream so it cannot wedge the group.

pub mod projector;
pub mod stream;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use platform::{backoff::Backoff, error::Failure, health::WorkerStatus};
use tokio::{
    sync::{watch, Notify},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use self::{
    projector::Projector,
    stream::{Cursor, Delivery, EventStream, Session, Settlements},
};
use crate::metrics::{self, DeadLetterReason, FailureCause};

/// The shortest wait between two looks for abandoned entries.
const CLAIM_EVERY_AT_LEAST: Duration = Duration::from_millis(100);
/// How often a session asks which server holds its partition.
const SERVER_CHECK_EVERY: Duration = Duration::from_secs(1);

pub struct Consumer {
    /// The stream's partitions, as this service lays them out.
    pub partitions: platform::stream::Partitions,
    /// One per partition of the stream, each read by a loop of its own.
    pub streams: Vec<EventStream>,
    pub projector: Projector,
    /// Bumped after every batch: reads waiting for a version look again.
    pub batches: watch::Sender<u64>,
    /// Deliveries after which an entry that still fails is dead-lettered.
    pub max_deliveries: u64,
    /// How often the stream is trimmed of what every group acknowledged;
    /// zero never trims.
    pub trim_interval: Duration,
    /// Notified when Redis may have lost events: a partition's group had to
    /// be created (after the first start, Redis lost it), or another server
    /// holds a partition than before (a restart or a failover, which may
    /// lose what was acknowledged last).
    pub events_lost: Arc<Notify>,
    /// Up once every partition's read succeeded, down while one's session
    /// fails: what readiness and `/metrics` say of the consumer.
    pub status: WorkerStatus,
    /// Each partition's own status, which `status` sums up.
    pub partitions_up: Vec<AtomicBool>,
    /// The Redis server holding each partition (run and replication ids),
    /// once known.
    pub servers: Mutex<Vec<Option<String>>>,
}

impl Consumer {
    /// Runs until `shutdown`; the current batch is finished first. The read
    /// model's indexes are readied beside, so consuming never waits for a
    /// MongoDB that is down at start.
    pub async fn run(self, shutdown: CancellationToken) {
        let partitions =
            (0..self.streams.len()).map(|partition| self.consume(partition, &shutdown));
        tokio::join!(
            futures::future::join_all(partitions),
            self.prepare(&shutdown)
        );
        tracing::info!("event consumer stopped");
    }

    async fn consume(&self, partition: usize, shutdown: &CancellationToken) {
        let stream = &self.streams[partition];
        let mut reconnect = Backoff::DEPENDENCY;
        while !shutdown.is_cancelled() {
            let Err(error) = self.session(partition, shutdown, &mut reconnect).await else {
                return;
            };
            self.partition_up(partition, false);
            let wait = reconnect.next_delay();
            tracing::warn!(error = format!("{error:#}"), stream = %stream.stream, retry_in = ?wait, "event consumer failed");
            if !sleep(shutdown, wait).await {
                return;
            }
        }
    }

    async fn prepare(&self, shutdown: &CancellationToken) {
        let mut backoff = Backoff::DEPENDENCY;
        loop {
            let prepared = tokio::select! {
                () = shutdown.cancelled() => return,
                prepared = self.projector.prepare() => prepared,
            };
            let Err(error) = prepared else {
                tracing::info!("read model ready: indexes in place");
                return;
            };
            let wait = backoff.next_delay();
            tracing::warn!(error = format!("{error:#}"), retry_in = ?wait, "readying the read model failed");
            if !sleep(shutdown, wait).await {
                return;
            }
        }
    }

    /// Records whether `partition`'s session reads, and sums the
    /// partitions up in `status`.
    fn partition_up(&self, partition: usize, up: bool) {
        self.partitions_up[partition].store(up, Ordering::Relaxed);
        if self
            .partitions_up
            .iter()
            .all(|up| up.load(Ordering::Relaxed))
        {
            self.status.up();
        } else {
            self.status.down();
        }
    }

    /// Notes the server holding `partition` (its ids). Another one
    /// than before means Redis may have lost its last writes: events, which
    /// a reconciliation repairs, and cache entries, which the cache leaves
    /// behind in its old epoch.
    async fn check_server(
        &self,
        partition: usize,
        session: &mut Session<'_>,
    ) -> Result<(), Failure> {
        let now = session.server_id().await?;
        let (before, all) = {
            let mut servers = self.servers.lock().expect("never poisoned");
            let before = servers[partition].replace(now.clone());
            (before, servers.iter().cloned().collect::<Option<Vec<_>>>())
        };
        if before.is_some_and(|before| before != now) {
            tracing::warn!(stream = %session.stream().stream, server = %now, "another Redis server holds the partition now (a restart or a failover): reconciling");
            self.events_lost.notify_one();
        }
        if let Some(all) = all {
            self.projector.cache.set_servers(&all);
        }
        Ok(())
    }

    /// One connected session of `partition`: our own pending entries first
    /// (delivered before, never acknowledged), then new ones. Returns `Ok`
    /// on shutdown.
    async fn session(
        &self,
        partition: usize,
        shutdown: &CancellationToken,
        reconnect: &mut Backoff,
    ) -> Result<(), Failure> {
        let stream = &self.streams[partition];
        let (mut session, created) = stream.connect(&self.partitions).await?;
        if created {
            tracing::info!(stream = %stream.stream, group = %stream.group, "consumer group created");
            self.events_lost.notify_one();
        }
        self.check_server(partition, &mut session).await?;
        reconnect.reset();
        let mut cursor = Cursor::pending();
        let mut retry = Backoff::DEPENDENCY;
        let mut next_claim = Instant::now();
        let mut next_trim = Instant::now() + self.trim_interval;
        let mut next_server_check = Instant::now() + SERVER_CHECK_EVERY;
        loop {
            if Instant::now() >= next_server_check {
                next_server_check = Instant::now() + SERVER_CHECK_EVERY;
                self.check_server(partition, &mut session).await?;
            }
            if !self.trim_interval.is_zero() && Instant::now() >= next_trim {
                next_trim = Instant::now() + self.trim_interval;
                // Housekeeping: a failure must not stop the events.
                match session.trim().await {
                    Ok(trimmed) if trimmed > 0 => {
                        tracing::debug!(trimmed, "trimmed acknowledged entries from the stream");
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "trimming the stream failed"),
                }
            }
            if cursor == Cursor::New && Instant::now() >= next_claim {
                next_claim = Instant::now() + (stream.claim_idle / 2).max(CLAIM_EVERY_AT_LEAST);
                let claimed = session.claim_abandoned().await?;
                if claimed > 0 {
                    tracing::info!(claimed, "claimed entries another consumer left pending");
                    cursor = Cursor::pending();
                }
            }

            let deliveries = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                read = session.read(&cursor) => read?,
            };
            self.partition_up(partition, true);
            metrics::events_consumed(deliveries.len());
            let Some(last) = deliveries.last().map(|d| d.id.clone()) else {
                if cursor != Cursor::New {
                    tracing::debug!("no pending entries left; reading new ones");
                    cursor = Cursor::New;
                }
                continue;
            };
            let failed = self.handle(&mut session, &deliveries).await;
            // Also after a failure: some entries of the batch may be done.
            self.batches.send_modify(|n| *n = n.wrapping_add(1));
            match failed? {
                None => {
                    retry.reset();
                    if cursor != Cursor::New {
                        cursor = Cursor::Pending(last);
                    }
                }
                Some(error) => {
                    let wait = retry.next_delay();
                    tracing::warn!(%error, retry_in = ?wait, "applying events failed");
                    if !sleep(shutdown, wait).await {
                        return Ok(());
                    }
                    cursor = Cursor::pending();
                }
            }
        }
    }

    /// Applies a batch and settles each entry: acknowledged when done,
    /// given back when a dependency failed, dead-lettered when it is not an
    /// event or has failed `max_deliveries` deliveries, else left pending.
    /// Returns the first failure of the entries left for a retry.
    async fn handle(
        &self,
        session: &mut Session<'_>,
        deliveries: &[Delivery],
    ) -> Result<Option<Failure>, Failure> {
        let events: Vec<(&str, &domain::BookEvent)> = deliveries
            .iter()
            .filter_map(|d| Some((d.id.as_str(), d.event.as_ref().ok()?)))
            .collect();
        let mut outcomes = self.projector.apply(&events).await.into_iter();
        let mut settlements = Settlements::new(session.stream());
        let mut first_failure = None;
        for delivery in deliveries {
            let outcome = match &delivery.event {
                Err(reason) => {
                    self.dead_letter(
                        &mut settlements,
                        delivery,
                        DeadLetterReason::Unreadable,
                        reason,
                    );
                    continue;
                }
                Ok(_) => outcomes.next().expect("one outcome per event"),
            };
            match outcome {
                Ok(()) => settlements.ack(delivery),
                Err(failure @ Failure::Transient(_)) => {
                    metrics::event_failed(FailureCause::Outage);
                    settlements.give_back(delivery);
                    first_failure.get_or_insert(failure);
                }
                Err(failure) => {
                    metrics::event_failed(FailureCause::Error);
                    if delivery.deliveries >= self.max_deliveries {
                        let reason = format!(
                            "failed {} deliveries; last error: {failure}",
                            self.max_deliveries
                        );
                        self.dead_letter(
                            &mut settlements,
                            delivery,
                            DeadLetterReason::Failing,
                            &reason,
                        );
                    } else {
                        first_failure.get_or_insert(failure);
                    }
                }
            }
        }
        session.settle(settlements).await?;
        Ok(first_failure)
    }

    fn dead_letter(
        &self,
        settlements: &mut Settlements<'_>,
        delivery: &Delivery,
        category: DeadLetterReason,
        reason: &str,
    ) {
        tracing::error!(entry = %delivery.id, %reason, "event cannot be applied; moved to the dead-letter stream");
        settlements.dead_letter(delivery, category, reason);
    }
}

/// Sleeps for `wait`; `false` if `shutdown` came first.
async fn sleep(shutdown: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}
