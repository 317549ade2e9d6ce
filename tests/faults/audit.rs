//! The audit: a consumer group of the suite's own on the event stream that
//! reads every entry, acknowledges it at once, and counts what it saw:
//! events delivered, and duplicates (an entry whose book and version an
//! earlier entry already carried). Its group also keeps the query service
//! from trimming an entry before the audit has read it. When Redis lost its
//! data (and the group with it) the group is created again.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use redis::{aio::MultiplexedConnection, streams::StreamReadReply, AsyncConnectionConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::system::Names;

const CONSUMER: &str = "auditor";
const BATCH: usize = 1000;
const BLOCK: Duration = Duration::from_millis(200);
/// Reads the final drain may retry while a server answers errors.
const DRAIN_ATTEMPTS: u32 = 50;

/// What the audit saw.
#[derive(Debug, Default, Clone)]
pub(crate) struct AuditStats {
    /// Entries that were events.
    pub(crate) delivered: u64,
    /// Events whose (book, version) an earlier event carried.
    pub(crate) duplicates: u64,
    /// Entries that were not events (poison).
    pub(crate) not_events: u64,
    /// How often the group had to be created again.
    pub(crate) regrouped: u64,
    /// Every (book id, version) seen.
    pub(crate) seen: HashSet<(String, u64)>,
}

/// Creates the audit group at the start of the stream (and the stream).
pub(crate) async fn create_group(redis_url: &str, names: &Names) -> anyhow::Result<()> {
    let mut connection = connect(redis_url).await?;
    ensure_group(&mut connection, names).await
}

/// The running audit.
pub(crate) struct Audit {
    stats: Arc<Mutex<AuditStats>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Audit {
    pub(crate) fn start(redis_url: String, names: Names) -> Self {
        let stats = Arc::new(Mutex::new(AuditStats::default()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(redis_url, names, stats.clone(), stop.clone()));
        Self { stats, stop, task }
    }

    /// Reads what is left in the stream, stops, and returns what it saw.
    pub(crate) async fn finish(self) -> AuditStats {
        self.stop.cancel();
        let _ = self.task.await;
        let stats = self.stats.lock().expect("audit stats").clone();
        stats
    }
}

async fn connect(redis_url: &str) -> anyhow::Result<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(BLOCK + Duration::from_secs(2)));
    Ok(redis::Client::open(redis_url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

async fn ensure_group(connection: &mut MultiplexedConnection, names: &Names) -> anyhow::Result<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&names.stream)
        .arg(&names.audit_group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(connection)
        .await;
    match created {
        Err(error) if error.code() != Some("BUSYGROUP") => Err(error.into()),
        _ => Ok(()),
    }
}

/// Reads until stopped, then until the stream holds nothing unread.
async fn run(
    redis_url: String,
    names: Names,
    stats: Arc<Mutex<AuditStats>>,
    stop: CancellationToken,
) {
    let mut connection: Option<MultiplexedConnection> = None;
    // After a (re)connect, first what Redis handed over before a reply was
    // lost (a kill mid-read): this consumer's pending entries.
    let mut pending_first = true;
    let mut drain_failures = 0;
    loop {
        let draining = stop.is_cancelled();
        if draining && drain_failures >= DRAIN_ATTEMPTS {
            return;
        }
        let outcome = read_once(
            &redis_url,
            &names,
            &mut connection,
            &mut pending_first,
            &stats,
            draining,
        )
        .await;
        match outcome {
            Ok(0) if draining => return,
            Ok(_) => {}
            Err(error) => {
                if is_no_group(&error) {
                    // Redis lost the stream and its groups: start over at
                    // the beginning of whatever stream exists now.
                    if let Some(c) = connection.as_mut() {
                        if ensure_group(c, &names).await.is_ok() {
                            stats.lock().expect("audit stats").regrouped += 1;
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

fn is_no_group(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<redis::RedisError>()
        .is_some_and(|e| e.code() == Some("NOGROUP"))
}

/// One read: this consumer's pending entries while `pending_first`, then
/// new ones (blocking unless draining); returns how many.
async fn read_once(
    redis_url: &str,
    names: &Names,
    connection: &mut Option<MultiplexedConnection>,
    pending_first: &mut bool,
    stats: &Mutex<AuditStats>,
    draining: bool,
) -> anyhow::Result<usize> {
    if connection.is_none() {
        *connection = Some(connect(redis_url).await?);
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
            .arg(&names.audit_group)
            .arg(CONSUMER)
            .arg("COUNT")
            .arg(BATCH);
        if !draining && !pending {
            read.arg("BLOCK").arg(BLOCK.as_millis() as u64);
        }
        read.arg("STREAMS")
            .arg(&names.stream)
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
        let mut stats = stats.lock().expect("audit stats");
        for entry in &entries {
            match entry
                .get::<String>("data")
                .as_deref()
                .and_then(book_version)
            {
                Some(key) => {
                    stats.delivered += 1;
                    if !stats.seen.insert(key) {
                        stats.duplicates += 1;
                    }
                }
                None => stats.not_events += 1,
            }
        }
    }
    let mut ack = redis::cmd("XACK");
    ack.arg(&names.stream).arg(&names.audit_group);
    for entry in &entries {
        ack.arg(&entry.id);
    }
    ack.query_async::<()>(connection).await?;
    Ok(entries.len())
}

/// The (book id, version) of an event's JSON, if it is an event.
fn book_version(data: &str) -> Option<(String, u64)> {
    let event: serde_json::Value = serde_json::from_str(data).ok()?;
    let id = event["bookId"].as_str()?;
    let version = event["version"].as_u64()?;
    (id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| (id.to_owned(), version))
}
