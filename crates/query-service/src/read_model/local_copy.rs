//! Each process's own copy of the hot entries of the Redis cache, kept
//! coherent by Redis's server-assisted client-side caching: one RESP3
//! connection with key tracking on, on which Redis pushes an invalidation
//! for every key read as soon as anyone changes it. A value is kept only if
//! no invalidation or lost connection came while it was read.

use std::{
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use lru::LruCache;
use redis::{
    aio::{MultiplexedConnection, SendError},
    AsyncConnectionConfig, PushInfo, PushKind, Value,
};

use crate::metrics;

/// The longest an entry is served without asking Redis again.
const MAX_AGE: Duration = Duration::from_secs(30);
/// How long after a failed connect reads fail without trying again.
const RECONNECT_COOLDOWN: Duration = Duration::from_secs(1);

pub struct LocalCopy<T> {
    client: redis::Client,
    timeout: Duration,
    shared: Arc<Shared<T>>,
    /// The tracking connection, with the count of lost connections when it
    /// opened: it is lost too once that count moved.
    connection: tokio::sync::Mutex<Option<(MultiplexedConnection, u64)>>,
    /// When opening a connection last failed: reads fail at once for
    /// `RECONNECT_COOLDOWN` after, rather than each wait for a connect.
    failed_at: Mutex<Option<Instant>>,
}

struct Shared<T> {
    entries: Mutex<LruCache<Vec<u8>, (T, Instant)>>,
    /// Advanced by every invalidation and every lost connection.
    generation: AtomicU64,
    /// Advanced by every lost connection: the current one is dead.
    connection_lost: AtomicU64,
    hits: ::metrics::Counter,
    invalidations: ::metrics::Counter,
}

impl<T> Shared<T> {
    fn entries(&self) -> MutexGuard<'_, LruCache<Vec<u8>, (T, Instant)>> {
        self.entries.lock().expect("never poisoned")
    }

    /// Handles what Redis pushes on the tracking connection; runs in the
    /// connection's reader, before it hands over any later reply.
    fn pushed(&self, push: &PushInfo) {
        match push.kind {
            PushKind::Invalidate => {
                self.generation.fetch_add(1, Ordering::SeqCst);
                let mut entries = self.entries();
                match push.data.first() {
                    Some(Value::Array(keys)) => {
                        for key in keys {
                            match key {
                                Value::BulkString(key) => {
                                    entries.pop(key.as_slice());
                                }
                                // A key in a form not expected: all go.
                                _ => entries.clear(),
                            }
                        }
                    }
                    // FLUSHALL / FLUSHDB: every key at once.
                    _ => entries.clear(),
                }
                self.invalidations.increment(1);
            }
            PushKind::Disconnection => self.lose(),
            _ => {}
        }
    }

    /// The connection is lost, or can no longer be trusted to have
    /// delivered every invalidation: the copy goes, and the next read opens
    /// a new connection.
    fn lose(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.connection_lost.fetch_add(1, Ordering::SeqCst);
        self.entries().clear();
    }
}

impl<T: Clone + Send + 'static> LocalCopy<T> {
    /// A copy of up to `entries` keys, read through a connection of its own
    /// to `client`'s server (opened on the first read), each command
    /// bounded by `timeout`.
    pub fn new(
        client: &redis::Client,
        timeout: Duration,
        entries: NonZeroUsize,
    ) -> redis::RedisResult<Self> {
        let (hits, invalidations) = metrics::local_copy_counters();
        Ok(Self {
            client: platform::connect::resp3(client)?,
            timeout,
            shared: Arc::new(Shared {
                entries: Mutex::new(LruCache::new(entries)),
                generation: AtomicU64::new(0),
                connection_lost: AtomicU64::new(0),
                hits,
                invalidations,
            }),
            connection: tokio::sync::Mutex::new(None),
            failed_at: Mutex::new(None),
        })
    }

    /// The entry of `key`: from the copy when it holds it, else what
    /// `read` (a command reading `key` alone) answers, turned into an entry
    /// by `parse` and then kept, unless `key` changed meanwhile. `None` (a
    /// miss) is not kept.
    pub async fn get(
        &self,
        key: &str,
        read: &redis::Cmd,
        parse: impl FnOnce(Value) -> redis::RedisResult<Option<T>>,
    ) -> redis::RedisResult<Option<T>> {
        {
            let mut entries = self.shared.entries();
            match entries.get(key.as_bytes()) {
                Some((entry, read_at)) if read_at.elapsed() < MAX_AGE => {
                    self.shared.hits.increment(1);
                    return Ok(Some(entry.clone()));
                }
                Some(_) => {
                    entries.pop(key.as_bytes());
                }
                None => {}
            }
        }
        let mut connection = self.connection().await?;
        let generation = self.shared.generation.load(Ordering::SeqCst);
        let read_at = Instant::now();
        let answer: Value = read
            .query_async(&mut connection)
            .await
            .inspect_err(|_| self.shared.lose())?;
        let entry = parse(answer)?;
        if let Some(entry) = &entry {
            let mut entries = self.shared.entries();
            if self.shared.generation.load(Ordering::SeqCst) == generation {
                entries.put(key.as_bytes().to_vec(), (entry.clone(), read_at));
            }
        }
        Ok(entry)
    }

    /// Returns once the copy has dropped every entry that writes made
    /// before this call replaced: Redis queues an invalidation on the
    /// tracking connection as it runs the write, so a `PING` sent there
    /// afterwards is answered behind it. Without a connection there is no
    /// copy to sync. When the `PING` fails, the copy is dropped: whether the
    /// invalidations before it arrived is unknown.
    pub async fn sync(&self) -> redis::RedisResult<()> {
        let Some((mut connection, _)) = self.connection.lock().await.clone() else {
            return Ok(());
        };
        redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .inspect_err(|_| self.shared.lose())
    }

    /// The tracking connection, opened (and tracking turned on) if there is
    /// none or it was lost.
    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut current = self.connection.lock().await;
        let lost = self.shared.connection_lost.load(Ordering::SeqCst);
        match current.as_ref() {
            Some((connection, opened)) if *opened == lost => return Ok(connection.clone()),
            _ => *current = None,
        }
        let failed_at = *self.failed_at.lock().expect("never poisoned");
        if failed_at.is_some_and(|at| at.elapsed() < RECONNECT_COOLDOWN) {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "the cache's tracking connection failed to open a moment ago",
            )));
        }
        let opened = self.open(lost).await;
        *self.failed_at.lock().expect("never poisoned") = opened.is_err().then(Instant::now);
        let connection = opened?;
        *current = Some((connection.clone(), lost));
        Ok(connection)
    }

    /// A new tracking connection, if no connection was lost while it opened
    /// (the count of lost ones was `lost` before).
    async fn open(&self, lost: u64) -> redis::RedisResult<MultiplexedConnection> {
        let shared = Arc::clone(&self.shared);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_push_sender(move |push: PushInfo| {
                shared.pushed(&push);
                Ok::<(), SendError>(())
            });
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .query_async::<()>(&mut connection)
            .await?;
        // Lost again while tracking was turned on: try at the next read.
        if self.shared.connection_lost.load(Ordering::SeqCst) != lost {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "the cache's tracking connection was lost while it opened",
            )));
        }
        Ok(connection)
    }
}
