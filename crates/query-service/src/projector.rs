//! Everything one event changes on the query side, in the order that makes
//! an acknowledged event visible everywhere: the read-model book, its
//! cached JSON, then the summaries of the authors it had. The consumer
//! acknowledges the event only once all three are written; a failure
//! leaves it pending, and its redelivery (stale by then) redoes the last
//! two from the read model.

use std::collections::BTreeSet;

use domain::BookEvent;
use platform::document::object_id;

use crate::{
    cache::{BookCache, Cached},
    projection::{Applied, ReadModel},
    summary::AuthorSummaries,
};

#[derive(Clone)]
pub struct Projector {
    pub read_model: ReadModel,
    pub summaries: AuthorSummaries,
    pub cache: BookCache,
}

impl Projector {
    /// Applies `event` entirely: the book, its cached JSON, then the
    /// summaries of the authors it had.
    pub async fn apply(&self, event: &BookEvent) -> anyhow::Result<Applied> {
        let (applied, author_keys) = self.apply_book(event).await?;
        let book = BTreeSet::from([object_id(&event.book_id)]);
        for key in &author_keys {
            self.summaries.update(key, &book).await?;
        }
        Ok(applied)
    }

    /// The book's part of `event`: the read model, then the cache. Returns
    /// the author keys whose summaries must then be updated, which a
    /// consumer does once per batch for all its events.
    #[tracing::instrument(skip_all, fields(book_id = %event.book_id, version = event.version))]
    pub async fn apply_book(&self, event: &BookEvent) -> anyhow::Result<(Applied, Vec<String>)> {
        let (applied, written) = self.read_model.apply(event).await?;
        // Whether written or stale, what counts is what the read model holds
        // now: never the (possibly older) event's own state. A write answered
        // with it; a stale event reads it.
        let record = match written {
            Some(record) => record,
            None => self.read_model.find(&event.book_id).await?.ok_or_else(|| {
                anyhow::anyhow!(
                    "book {} is missing right after its event was applied",
                    event.book_id
                )
            })?,
        };
        // The cache first: a summary that fails to converge must not keep
        // reads of the book itself behind.
        self.cache
            .put(&event.book_id, &Cached::from(&record.current))
            .await?;
        Ok((applied, record.author_keys))
    }

    /// Readies the read model: its indexes, and the author keys and
    /// summaries of books an older version of the service wrote.
    pub async fn prepare(&self) -> anyhow::Result<()> {
        self.read_model.ensure_indexes().await?;
        for key in self.read_model.backfill_author_keys().await? {
            self.summaries.rebuild(&key).await?;
        }
        Ok(())
    }
}
