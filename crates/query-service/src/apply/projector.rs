//! What a batch of events changes, in the order that makes an acknowledged
//! event visible everywhere: each book in the read model, then its cached
//! JSON, then, once per batch, the summaries of the authors its book had.

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    time::Duration,
};

use domain::BookEvent;
use futures::{stream, StreamExt};
use platform::{document::object_id, error::Failure};
use tracing::Instrument;

use crate::{
    metrics,
    read_model::{Applied, AuthorSummaries, BookCache, Books, Cached},
};

/// Events of one batch applied at once; the version guard makes the order
/// irrelevant.
const CONCURRENCY: usize = 16;
/// An apply may take this many dependency timeouts (several MongoDB and
/// Redis round trips) before it counts as hung.
const TIMEOUT_FACTOR: u32 = 5;

#[derive(Clone)]
pub struct Projector {
    pub books: Books,
    pub summaries: AuthorSummaries,
    pub cache: BookCache,
    /// How long one MongoDB or Redis operation may take.
    pub timeout: Duration,
}

impl Projector {
    /// Applies `events` (each with its stream entry's id); one outcome per
    /// event, in order. An event is done only once its book, its cache entry
    /// and the summaries of all its authors are.
    pub async fn apply(&self, events: &[(&str, &BookEvent)]) -> Vec<Result<(), Failure>> {
        // Futures made up front: a stream mapping borrowed pairs would not
        // be `Send` for every lifetime, which spawning needs.
        let writes: Vec<_> = events
            .iter()
            .map(|&(entry, event)| self.apply_book(entry, event))
            .collect();
        let books: Vec<Result<Vec<String>, Failure>> =
            stream::iter(writes).buffered(CONCURRENCY).collect().await;
        let mut touched: HashMap<String, BTreeSet<_>> = HashMap::new();
        for ((_, event), keys) in events.iter().zip(&books) {
            for key in keys.iter().flatten() {
                let ids = touched.entry(key.clone()).or_default();
                ids.insert(object_id(&event.book_id));
            }
        }
        let failed: HashMap<String, (bool, String)> = stream::iter(touched)
            .map(|(key, ids)| async move {
                let updated = self.bounded(self.summaries.update(&key, &ids)).await;
                (key, updated)
            })
            .buffer_unordered(CONCURRENCY)
            .filter_map(|(key, updated)| async move {
                let error = updated.err()?;
                Some((key, (error.is_transient(), error.to_string())))
            })
            .collect()
            .await;
        // Before acknowledging: this process's reads no longer show what
        // the batch replaced.
        self.cache.sync_local_copy().await;
        books
            .into_iter()
            .map(
                |keys| match keys?.iter().find_map(|key| failed.get_key_value(key)) {
                    None => Ok(()),
                    Some((key, (transient, message))) => {
                        let error = anyhow::anyhow!(
                            "the summary of author {key:?} could not be recomputed: {message}"
                        );
                        Err(if *transient {
                            Failure::Transient(error)
                        } else {
                            Failure::Permanent(error)
                        })
                    }
                },
            )
            .collect()
    }

    /// Readies the read model: its indexes.
    pub async fn prepare(&self) -> Result<(), Failure> {
        self.books.ensure_indexes().await
    }

    /// The book's part of an event, within a span naming the event and the
    /// trace of the request that caused it; returns the author keys whose
    /// summaries it touches. A written event is one `info` line; a stale
    /// one (a duplicate, a redelivery) a `debug` line, since replays make
    /// many.
    async fn apply_book(&self, entry: &str, event: &BookEvent) -> Result<Vec<String>, Failure> {
        let event_type = event.event_type.as_str();
        let trace_id = event
            .traceparent
            .as_deref()
            .and_then(platform::trace::trace_id_of);
        let span = tracing::info_span!(
            "event",
            entry,
            book_id = %event.book_id,
            version = event.version,
            event_type,
            trace_id = trace_id.as_deref().unwrap_or("-"),
        );
        let written = self
            .bounded(self.write_book(event))
            .instrument(span.clone())
            .await;
        let _in_span = span.enter();
        let (applied, author_keys) = written?;
        match applied {
            Applied::Written => {
                metrics::event_applied(event_type);
                tracing::info!("event applied");
            }
            Applied::Stale => {
                metrics::event_stale(event_type);
                tracing::debug!("event skipped: the read model holds this version or a newer one");
            }
        }
        Ok(author_keys)
    }

    /// The read model, then the cache from what the read model holds now
    /// (never the possibly older event's state).
    async fn write_book(&self, event: &BookEvent) -> Result<(Applied, Vec<String>), Failure> {
        let epoch = self.cache.epoch();
        let (applied, written) = self.books.upsert(event).await?;
        let record = match written {
            Some(record) => record,
            None => self.books.find(&event.book_id).await?.ok_or_else(|| {
                Failure::Permanent(anyhow::anyhow!(
                    "book {} is missing right after its event was applied",
                    event.book_id
                ))
            })?,
        };
        self.cache
            .put_in(&epoch, &event.book_id, &Cached::from(&record.current))
            .await?;
        Ok((applied, record.author_keys))
    }

    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        platform::mongo::bounded(self.timeout * TIMEOUT_FACTOR, work).await
    }
}
