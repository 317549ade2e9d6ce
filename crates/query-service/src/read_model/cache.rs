//! The read cache in Redis: one hash per book, `{v, body}` or `{v, gone}`,
//! written only through a script that moves an entry forward (to a higher
//! version), so racing writers never take it back to an older one. Hot
//! entries are also kept in the process (`LocalCopy`), which Redis
//! invalidates on every change. Keys carry an epoch named after the Redis
//! servers holding the stream: a restart or a failover, which may lose the
//! last writes and so take an entry back, moves every reader to fresh keys.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::body::Bytes;
use domain::BookId;
use platform::document::StoredBook;

use platform::RedisConnection;
use redis::{Script, Value};

use super::local_copy::LocalCopy;

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
    redis: RedisConnection,
    /// The process's copy of hot entries, if it keeps one.
    local: Option<Arc<LocalCopy<Cached>>>,
    prefix: String,
    /// The current epoch; `None` until the servers are known, while the
    /// cache is skipped (every read is a miss, every write a no-op).
    epoch: Arc<RwLock<Option<String>>>,
    ttl: Duration,
    put_if_newer: Script,
}

const FIELDS: [&str; 3] = ["v", "body", "gone"];

impl BookCache {
    pub fn new(redis: RedisConnection, prefix: String, ttl: Duration) -> Self {
        Self {
            redis,
            local: None,
            prefix,
            epoch: Arc::default(),
            ttl,
            put_if_newer: Script::new(PUT_IF_NEWER),
        }
    }

    /// The same cache, with reads answered from `local` when it holds the
    /// entry.
    pub fn with_local_copy(self, local: Arc<LocalCopy<Cached>>) -> Self {
        Self {
            local: Some(local),
            ..self
        }
    }

    /// Returns once this process's copy has dropped every entry that the
    /// writes made before this call replaced (see `LocalCopy::sync`). A
    /// consumer calls this before acknowledging, so that once an event is
    /// acknowledged no read of this process serves the version it
    /// replaced. A failure is logged and ignored: a lost connection empties
    /// the copy.
    pub async fn sync_local_copy(&self) {
        let Some(local) = &self.local else { return };
        if let Err(error) = local.sync().await {
            tracing::debug!(
                error = format!("{error:#}"),
                "cannot sync the local cache copy"
            );
        }
    }

    /// Names the Redis servers (their run and replication ids) that hold
    /// the stream's partitions now; when they changed, the cache starts
    /// afresh under another epoch. Every replica sees the same servers, hence the same
    /// epoch.
    pub fn set_servers(&self, servers: &[String]) {
        let epoch = epoch_of(servers);
        let mut current = self.epoch.write().expect("never poisoned");
        if current.as_deref() != Some(epoch.as_str()) {
            tracing::info!(%epoch, "cache epoch set from the Redis servers");
            *current = Some(epoch);
        }
    }

    /// The current epoch. A writer takes it before it reads what it will
    /// store, and stores in it (`put_in`): what it read before a switch
    /// must not land among the new epoch's entries.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch.read().expect("never poisoned").clone())
    }

    /// Book `id`'s key in `epoch`; `None` while it is unknown.
    fn key_in(&self, epoch: &Epoch, id: &BookId) -> Option<String> {
        Some(format!("{}{}:{id}", self.prefix, epoch.0.as_ref()?))
    }

    /// Book `id`'s key in the current epoch.
    fn key(&self, id: &BookId) -> Option<String> {
        self.key_in(&self.epoch(), id)
    }

    /// The entry of book `id`; `None` on a miss. Answered from the
    /// process's copy when it holds the entry.
    #[tracing::instrument(skip(self))]
    pub async fn get(&self, id: &BookId) -> redis::RedisResult<Option<Cached>> {
        let Some(local) = &self.local else {
            return self.get_fresh(id).await;
        };
        let Some(key) = self.key(id) else {
            return Ok(None);
        };
        match local.get(&key, &hmget(&key), Self::entry).await {
            Ok(entry) => Ok(entry),
            // The copy's own connection failing is no reason to skip Redis.
            Err(error) => {
                tracing::debug!(error = format!("{error:#}"), "local cache copy unreadable");
                self.get_fresh(id).await
            }
        }
    }

    /// The entry of book `id` as Redis holds it now, never from the
    /// process's copy: for a reader waiting for a version.
    #[tracing::instrument(skip(self))]
    pub async fn get_fresh(&self, id: &BookId) -> redis::RedisResult<Option<Cached>> {
        let Some(key) = self.key(id) else {
            return Ok(None);
        };
        let answer = hmget(&key).query_async(&mut self.redis.clone()).await?;
        Self::entry(answer)
    }

    /// An entry from the answer to `HMGET key v body gone`.
    fn entry(answer: Value) -> redis::RedisResult<Option<Cached>> {
        let (version, body, gone): (Option<u64>, Option<Vec<u8>>, Option<u8>) =
            redis::from_redis_value(answer)?;
        Ok(match (version, body, gone) {
            (Some(version), Some(body), _) => Some(Cached::Book {
                version,
                body: Bytes::from(body),
            }),
            (Some(version), None, Some(_)) => Some(Cached::Gone { version }),
            _ => None,
        })
    }

    /// Stores `entry` in the current epoch unless the cache already holds
    /// its version or a newer one; `true` when it was stored.
    pub async fn put(&self, id: &BookId, entry: &Cached) -> redis::RedisResult<bool> {
        self.put_in(&self.epoch(), id, entry).await
    }

    /// Stores `entry` in `epoch` unless the cache already holds its version
    /// or a newer one there; `true` when it was stored.
    #[tracing::instrument(skip_all, fields(book_id = %id, version = entry.version()))]
    pub async fn put_in(
        &self,
        epoch: &Epoch,
        id: &BookId,
        entry: &Cached,
    ) -> redis::RedisResult<bool> {
        let Some(key) = self.key_in(epoch, id) else {
            return Ok(false);
        };
        let mut redis = self.redis.clone();
        let mut invocation = self.put_if_newer.key(key);
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

/// A cache epoch, as a writer saw it before reading what it stores.
#[derive(Debug, Clone)]
pub struct Epoch(Option<String>);

/// `HMGET key v body gone`.
fn hmget(key: &str) -> redis::Cmd {
    let mut command = redis::cmd("HMGET");
    command.arg(key).arg(&FIELDS);
    command
}

/// The epoch named after these servers (each named by its ids): 12 hex
/// digits of their FNV-1a hash, the same in every process.
pub fn epoch_of(servers: &[String]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in servers.join(",").bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:012x}", hash >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_follows_the_servers() {
        let one = epoch_of(&["a1".to_owned(), "b2".to_owned()]);
        assert_eq!(one, epoch_of(&["a1".to_owned(), "b2".to_owned()]));
        assert_ne!(one, epoch_of(&["a1".to_owned(), "c3".to_owned()]));
        assert_eq!(one.len(), 12);
    }
}
