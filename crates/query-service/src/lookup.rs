//! Where a read of one book looks: the Redis cache first, then the read
//! model, whose answer refills the cache. Reads survive a Redis outage: a
//! cache that cannot be read is logged and skipped. Each lookup is counted
//! as a hit, a miss or an error, for the cache's hit ratio.

use domain::BookId;

use crate::{
    cache::{BookCache, Cached},
    metrics::{self, CacheResult},
    projection::ReadModel,
};

#[derive(Clone)]
pub struct BookLookup {
    pub cache: BookCache,
    pub read_model: ReadModel,
}

impl BookLookup {
    /// The book as it is now: its JSON and version, its tombstone, or
    /// `None` when the read model never heard of it.
    #[tracing::instrument(skip(self))]
    pub async fn current(&self, id: &BookId) -> anyhow::Result<Option<Cached>> {
        let cache_up = match self.cache.get(id).await {
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
        let Some(record) = self.read_model.find(id).await? else {
            return Ok(None);
        };
        let entry = Cached::from(&record.current);
        if cache_up {
            // The version guard keeps this from replacing a newer entry the
            // consumer wrote meanwhile.
            if let Err(error) = self.cache.put(id, &entry).await {
                tracing::warn!(error = format!("{error:#}"), "cache refill failed");
            }
        }
        Ok(Some(entry))
    }
}
