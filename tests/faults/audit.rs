//! The audit: a consumer group of the suite's own on every partition of the
//! event stream that reads every entry, acknowledges it at once, and counts
//! what it saw: events delivered, duplicates (an entry whose book and
//! version an earlier entry already carried), and events reconciliation
//! appended. Its group also keeps the query service from trimming an entry
//! before the audit has read it. When Redis lost its data (and the group
//! with it) the group is created again. Each partition is read by a loop of
//! its own, through the services' own client (one server or a cluster,
//! whose failovers it rides out by connecting again).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use platform::{RedisClient, RedisConnection};
use redis::{
    aio::ConnectionLike,
    streams::{StreamRangeReply, StreamReadReply},
};
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::system::Names;

const CONSUMER: &str = "auditor";
const BATCH: usize = 1000;
const BLOCK: Duration = Duration::from_millis(200);
/// How long connecting, or a command other than a blocking read, may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Reads the final drain may retry while a server answers errors.
const DRAIN_ATTEMPTS: u32 = 50;

/// A book's version, as events carry it.
pub(crate) type BookVersion = (String, u64);

/// What the audit saw.
#[derive(Debug, Default, Clone)]
pub(crate) struct AuditStats {
    /// Entries that were events.
    pub(crate) delivered: u64,
    /// Events whose (book, version) an earlier event carried.
    pub(crate) duplicates: u64,
    /// Those, by partition.
    pub(crate) partition_duplicates: Vec<u64>,
    /// Entries that were not events (poison).
    pub(crate) not_events: u64,
    /// How often a partition's group had to be created again.
    pub(crate) regrouped: u64,
    /// Every (book id, version) seen.
    pub(crate) seen: HashSet<BookVersion>,
    /// Every (book id, version) seen in an event the relay appended.
    pub(crate) relayed: HashSet<BookVersion>,
    /// Entries reconciliation appended (a book's state emitted again).
    pub(crate) reemitted: u64,
    /// The (book id, version) of those, and when the audit first read one.
    pub(crate) reemitted_events: HashMap<BookVersion, Instant>,
}

/// An event as a stream entry carries it.
struct Event {
    book: BookVersion,
    /// Appended by the relay: its events carry the trace context of the
    /// request that caused them; reconciliation's carry none.
    relayed: bool,
}

/// Creates the audit group at the start of every partition (and the
/// partitions).
pub(crate) async fn create_group(client: &RedisClient, names: &Names) -> anyhow::Result<()> {
    let mut connection = client.dedicated(TIMEOUT, BLOCK).await?;
    for stream in names.partitions.streams() {
        ensure_group(&mut connection, &stream, &names.audit_group).await?;
    }
    Ok(())
}

/// The running audit.
pub(crate) struct Audit {
    stats: Arc<Mutex<AuditStats>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Audit {
    pub(crate) fn start(client: RedisClient, names: Names) -> Self {
        let streams = names.partitions.streams();
        let stats = Arc::new(Mutex::new(AuditStats {
            partition_duplicates: vec![0; streams.len()],
            ..AuditStats::default()
        }));
        let stop = CancellationToken::new();
        let tasks = streams
            .into_iter()
            .enumerate()
            .map(|(partition, stream)| {
                let reader = Reader {
                    client: client.clone(),
                    partition,
                    stream,
                    group: names.audit_group.clone(),
                    stats: stats.clone(),
                };
                tokio::spawn(reader.run(stop.clone()))
            })
            .collect();
        Self { stats, stop, tasks }
    }

    /// Reads what is left in every partition, stops, and returns what it
    /// saw.
    pub(crate) async fn finish(self) -> AuditStats {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        let stats = self.stats.lock().expect("audit stats").clone();
        stats
    }
}

async fn ensure_group(
    connection: &mut RedisConnection,
    stream: &str,
    group: &str,
) -> anyhow::Result<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(connection)
        .await;
    match created {
        Err(error) if error.code() != Some("BUSYGROUP") => Err(error.into()),
        _ => Ok(()),
    }
}

/// The audit's reader of one partition.
struct Reader {
    client: RedisClient,
    partition: usize,
    stream: String,
    group: String,
    stats: Arc<Mutex<AuditStats>>,
}

impl Reader {
    /// Reads until stopped, then until the partition holds nothing unread.
    async fn run(self, stop: CancellationToken) {
        let mut connection: Option<RedisConnection> = None;
        // After a (re)connect, first what Redis handed over before a reply
        // was lost (a kill mid-read): this consumer's pending entries.
        let mut pending_first = true;
        let mut drain_failures = 0;
        loop {
            let draining = stop.is_cancelled();
            if draining && drain_failures >= DRAIN_ATTEMPTS {
                return;
            }
            let outcome = self
                .read_once(&mut connection, &mut pending_first, draining)
                .await;
            match outcome {
                Ok(0) if draining => return,
                Ok(_) => {}
                Err(error) => {
                    if is_no_group(&error) {
                        // Redis lost the stream and its groups: start over
                        // at the beginning of whatever stream exists now.
                        if let Some(c) = connection.as_mut() {
                            if ensure_group(c, &self.stream, &self.group).await.is_ok() {
                                self.stats.lock().expect("audit stats").regrouped += 1;
                                continue;
                            }
                        }
                    }
                    connection = None;
                    if draining {
                        drain_failures += 1;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        () = stop.cancelled(), if !draining => {}
                    }
                }
            }
        }
    }

    /// One read: this consumer's pending entries while `pending_first`,
    /// then new ones (blocking unless draining); returns how many.
    async fn read_once(
        &self,
        connection: &mut Option<RedisConnection>,
        pending_first: &mut bool,
        draining: bool,
    ) -> anyhow::Result<usize> {
        if connection.is_none() {
            *connection = Some(self.client.dedicated(TIMEOUT, BLOCK).await?);
            *pending_first = true;
        }
        let connection = connection.as_mut().expect("connected");
        let mut entries = Vec::new();
        for pending in [true, false] {
            if pending && !*pending_first {
                continue;
            }
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(&self.group)
                .arg(CONSUMER)
                .arg("COUNT")
                .arg(BATCH);
            if !draining && !pending {
                read.arg("BLOCK").arg(BLOCK.as_millis() as u64);
            }
            read.arg("STREAMS")
                .arg(&self.stream)
                .arg(if pending { "0" } else { ">" });
            let reply: Option<StreamReadReply> = read.query_async(connection).await?;
            entries = reply
                .and_then(|r| r.keys.into_iter().next())
                .map(|k| k.ids)
                .unwrap_or_default();
            if !entries.is_empty() {
                break;
            }
            if pending {
                *pending_first = false;
            }
        }
        if entries.is_empty() {
            return Ok(0);
        }
        {
            let mut stats = self.stats.lock().expect("audit stats");
            for entry in &entries {
                match entry.get::<String>("data").as_deref().and_then(event_of) {
                    Some(event) => {
                        stats.delivered += 1;
                        if event.relayed {
                            stats.relayed.insert(event.book.clone());
                        } else {
                            stats.reemitted += 1;
                            stats
                                .reemitted_events
                                .entry(event.book.clone())
                                .or_insert_with(Instant::now);
                        }
                        if !stats.seen.insert(event.book) {
                            stats.duplicates += 1;
                            stats.partition_duplicates[self.partition] += 1;
                        }
                    }
                    None => stats.not_events += 1,
                }
            }
        }
        let mut ack = redis::cmd("XACK");
        ack.arg(&self.stream).arg(&self.group);
        for entry in &entries {
            ack.arg(&entry.id);
        }
        ack.query_async::<()>(connection).await?;
        Ok(entries.len())
    }
}

fn is_no_group(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<redis::RedisError>()
        .is_some_and(|e| e.code() == Some("NOGROUP"))
}

/// The event of an entry's JSON, if it is an event.
fn event_of(data: &str) -> Option<Event> {
    let event: serde_json::Value = serde_json::from_str(data).ok()?;
    let id = event["bookId"].as_str()?;
    let version = event["version"].as_u64()?;
    (id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Event {
        book: (id.to_owned(), version),
        relayed: event.get("traceparent").is_some(),
    })
}

/// Every (book, version) of an event the relay appended that the stream's
/// partitions hold now.
pub(crate) async fn relayed_in_stream(
    connection: &mut RedisConnection,
    names: &Names,
) -> anyhow::Result<HashSet<BookVersion>> {
    let mut held = HashSet::new();
    for stream in names.partitions.streams() {
        held.extend(relayed_after(connection, &stream, FIRST).await?.0);
    }
    Ok(held)
}

/// An entry id before every entry.
pub(crate) const FIRST: &str = "0-0";

/// The (book, version) of every event the relay appended to `stream` after
/// entry `after`, read with XRANGE in pages, and the id of the last entry
/// read (`after` when there is none).
pub(crate) async fn relayed_after<C: ConnectionLike + Send>(
    connection: &mut C,
    stream: &str,
    after: &str,
) -> redis::RedisResult<(Vec<BookVersion>, String)> {
    let mut events = Vec::new();
    let mut last = after.to_owned();
    loop {
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg(format!("({last}"))
            .arg("+")
            .arg("COUNT")
            .arg(BATCH)
            .query_async(connection)
            .await?;
        let Some(entry) = reply.ids.last() else {
            return Ok((events, last));
        };
        last.clone_from(&entry.id);
        events.extend(
            reply
                .ids
                .iter()
                .filter_map(|entry| event_of(&entry.get::<String>("data")?))
                .filter(|event| event.relayed)
                .map(|event| event.book),
        );
    }
}
