//! The read cache in Redis, as the tutorial recommends: one hash per book,
//! `{v: <version>, body: <the JSON answer>}`, or `{v: <version>, gone: 1}`
//! once the book is deleted.
//!
//! Every write goes through one Lua script that writes only when the key is
//! absent or holds a lower version, so writers racing each other (the
//! consumers of every replica, and reads refilling a miss) can only move an
//! entry forward: the cache never goes back to an older version than one it
//! showed.
//!
//! Reads may go through a connection with Redis's client-side caching
//! (`platform::connect::redis_near_cache_manager`): a hot book is then
//! answered from the process's memory, and Redis invalidates that copy as
//! soon as any writer changes the key. The consumer that wrote a key waits
//! for its own process's invalidation before acknowledging
//! (`sync_local_copy`); another process's copy may show the replaced
//! version for as long as the invalidation takes to arrive.

use std::time::Duration;

use axum::body::Bytes;
use domain::BookId;
use platform::document::StoredBook;
use redis::{aio::ConnectionManager, CommandCacheConfig, Script};

/// KEYS[1]: the book's key. ARGV: version, TTL in seconds, then the field
/// (`body` or `gone`) and its value.
const PUT_IF_NEWER: &str = r"
local held = redis.call('HGET', KEYS[1], 'v')
if held and tonumber(held) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
";

/// One cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    /// The book at `version`, as the JSON body of `GET /books/{id}`.
    Book { version: u64, body: Bytes },
    /// The book was deleted at `version`.
    Gone { version: u64 },
}

impl Cached {
    pub fn version(&self) -> u64 {
        match self {
            Cached::Book { version, .. } | Cached::Gone { version } => *version,
        }
    }
}

impl From<&StoredBook> for Cached {
    fn from(current: &StoredBook) -> Self {
        match current {
            StoredBook::Live(book) => Cached::Book {
                version: book.version,
                body: Bytes::from(serde_json::to_vec(book).expect("a book serializes")),
            },
            StoredBook::Deleted { version } => Cached::Gone { version: *version },
        }
    }
}

#[derive(Clone)]
pub struct BookCache {
    redis: ConnectionManager,
    /// Where `get` reads: `redis`, or a connection with client-side caching.
    reads: ConnectionManager,
    /// Whether `reads` keeps a copy (is not `redis`).
    local_copy: bool,
    prefix: String,
    ttl: Duration,
    put_if_newer: Script,
}

impl BookCache {
    pub fn new(redis: ConnectionManager, prefix: String, ttl: Duration) -> Self {
        Self {
            reads: redis.clone(),
            local_copy: false,
            redis,
            prefix,
            ttl,
            put_if_newer: Script::new(PUT_IF_NEWER),
        }
    }

    /// The same cache, read through `reads` (writes stay on the first
    /// connection, which tracks nothing).
    pub fn reading_through(self, reads: ConnectionManager) -> Self {
        Self {
            reads,
            local_copy: true,
            ..self
        }
    }

    /// Returns once this process's copy has dropped every entry that the
    /// writes made before this call replaced: Redis queues a key's
    /// invalidation on the reading connection as it runs the write, so a
    /// `PING` sent there afterwards is answered behind it. A consumer calls
    /// this before acknowledging, so that once an event is acknowledged no
    /// read of this process serves the version it replaced. A failure is
    /// logged and ignored: a reconnect discards the whole copy.
    pub async fn sync_local_copy(&self) {
        if !self.local_copy {
            return;
        }
        let pinged: redis::RedisResult<()> = redis::cmd("PING")
            .query_async(&mut self.reads.clone())
            .await;
        if let Err(error) = pinged {
            tracing::debug!(
                error = format!("{error:#}"),
                "cannot sync the local cache copy"
            );
        }
    }

    fn key(&self, id: &BookId) -> String {
        format!("{}{id}", self.prefix)
    }

    /// The entry of book `id`; `None` on a miss. May be answered from the
    /// process's copy, which an invalidation in flight can leave one
    /// change behind for an instant.
    #[tracing::instrument(skip(self))]
    pub async fn get(&self, id: &BookId) -> redis::RedisResult<Option<Cached>> {
        let mut command = self.hmget(id);
        command.set_cache_config(CommandCacheConfig::new());
        Ok(Self::entry(
            command.query_async(&mut self.reads.clone()).await?,
        ))
    }

    /// The entry of book `id` as Redis holds it now, never from the
    /// process's copy: for a reader waiting for a version.
    #[tracing::instrument(skip(self))]
    pub async fn get_fresh(&self, id: &BookId) -> redis::RedisResult<Option<Cached>> {
        Ok(Self::entry(
            self.hmget(id).query_async(&mut self.redis.clone()).await?,
        ))
    }

    fn hmget(&self, id: &BookId) -> redis::Cmd {
        let mut command = redis::cmd("HMGET");
        command.arg(self.key(id)).arg("v").arg("body").arg("gone");
        command
    }

    fn entry((version, body, gone): (Option<u64>, Option<Vec<u8>>, Option<u8>)) -> Option<Cached> {
        match (version, body, gone) {
            (Some(version), Some(body), _) => Some(Cached::Book {
                version,
                body: Bytes::from(body),
            }),
            (Some(version), None, Some(_)) => Some(Cached::Gone { version }),
            _ => None,
        }
    }

    /// Stores `entry` unless the cache already holds its version or a newer
    /// one; `true` when it was stored.
    #[tracing::instrument(skip_all, fields(book_id = %id, version = entry.version()))]
    pub async fn put(&self, id: &BookId, entry: &Cached) -> redis::RedisResult<bool> {
        let mut redis = self.redis.clone();
        let mut invocation = self.put_if_newer.key(self.key(id));
        invocation
            .arg(entry.version())
            .arg(self.ttl.as_secs().max(1));
        match entry {
            Cached::Book { body, .. } => invocation.arg("body").arg(body.as_ref()),
            Cached::Gone { .. } => invocation.arg("gone").arg(1),
        };
        let stored: i64 = invocation.invoke_async(&mut redis).await?;
        Ok(stored == 1)
    }
}
