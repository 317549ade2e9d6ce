//! Where a read of one book looks: the Redis cache first, then the read
//! model, whose answer refills the cache. Reads survive a Redis outage: a
//! cache that cannot be read is logged and skipped. Each lookup is counted
//! as a hit, a miss or an error, for the cache's hit ratio.

use domain::BookId;

use platform::error::Failure;

use crate::{
    metrics::{self, CacheResult},
    read_model::{BookCache, Books, Cached},
};

/// Whether a lookup may be answered from the process's copy of the cache.
#[derive(Debug, Clone, Copy)]
enum CacheRead {
    /// The process's copy may answer.
    Local,
    /// Redis answers.
    Fresh,
}

#[derive(Clone)]
pub struct BookLookup {
    pub cache: BookCache,
    pub books: Books,
}

impl BookLookup {
    /// The book as it is now: its JSON and version, its tombstone, or
    /// `None` when the read model never heard of it. A hot book comes from
    /// the process's copy of the cache.
    #[tracing::instrument(skip(self))]
    pub async fn current(&self, id: &BookId) -> Result<Option<Cached>, Failure> {
        self.look_up(id, CacheRead::Local).await
    }

    /// Like `current`, but never from the process's copy of the cache: for
    /// a reader waiting for a version the consumer has just written.
    #[tracing::instrument(skip(self))]
    pub async fn latest(&self, id: &BookId) -> Result<Option<Cached>, Failure> {
        self.look_up(id, CacheRead::Fresh).await
    }

    /// What Redis's cache holds of the book now, without the read model;
    /// `None` on a miss, and when Redis cannot be read (logged).
    pub async fn cached(&self, id: &BookId) -> Option<Cached> {
        self.cache.get_fresh(id).await.unwrap_or_else(|error| {
            tracing::warn!(error = format!("{error:#}"), "cache unreadable");
            None
        })
    }

    async fn look_up(&self, id: &BookId, read: CacheRead) -> Result<Option<Cached>, Failure> {
        let epoch = self.cache.epoch();
        let cached = match read {
            CacheRead::Local => self.cache.get(id).await,
            CacheRead::Fresh => self.cache.get_fresh(id).await,
        };
        let cache_up = match cached {
            Ok(Some(hit)) => {
                metrics::cache_lookup(CacheResult::Hit);
                return Ok(Some(hit));
            }
            Ok(None) => {
                metrics::cache_lookup(CacheResult::Miss);
                true
            }
            Err(error) => {
                metrics::cache_lookup(CacheResult::Error);
                tracing::warn!(
                    error = format!("{error:#}"),
                    "cache unreadable; reading the read model"
                );
                false
            }
        };
        let Some(record) = self.books.find(id).await? else {
            return Ok(None);
        };
        let entry = Cached::from(&record.current);
        if cache_up {
            // The version guard keeps this from replacing a newer entry the
            // consumer wrote meanwhile.
            if let Err(error) = self.cache.put_in(&epoch, id, &entry).await {
                tracing::warn!(error = format!("{error:#}"), "cache refill failed");
            }
        }
        Ok(Some(entry))
    }
}
