//! What command-service counts: events written to the outbox and events
//! the relay appended to the stream; and, read at each scrape, the outbox
//! backlog and how long its oldest event has waited.

use std::{future::Future, pin::Pin, time::Duration};

use chrono::Utc;
use platform::metrics::{Collector, Gauge};

use crate::store::BookStore;

const APPENDED: &str = "books_events_appended_total";
const PUBLISHED: &str = "books_events_published_total";
const PENDING_BOOKS: &str = "books_outbox_pending_books";
const OLDEST_PENDING_AGE: &str = "books_outbox_oldest_pending_age_seconds";

/// How long a scrape waits for MongoDB before leaving the backlog out.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// Installs the recorder and describes what this service records.
pub fn install() {
    platform::metrics::recorder();
    metrics::describe_counter!(
        APPENDED,
        "Events written to the outbox together with the change that caused them, by type"
    );
    metrics::describe_counter!(
        PUBLISHED,
        "Events the relay appended to the stream (XADD), by type and by how it found them: immediate (handed over by the request) or sweep (left pending)"
    );
}

/// How the relay came to publish an event: the request that stored it
/// handed it over, or the sweep found it pending (after a crash, an outage,
/// a full queue).
#[derive(Debug, Clone, Copy)]
pub enum Via {
    Immediate,
    Sweep,
}

/// An event of `event_type` was stored in its book's outbox.
pub fn event_appended(event_type: &'static str) {
    metrics::counter!(APPENDED, "type" => event_type).increment(1);
}

/// An event of `event_type` was appended to the stream.
pub fn event_published(event_type: &'static str, via: Via) {
    let via = match via {
        Via::Immediate => "immediate",
        Via::Sweep => "sweep",
    };
    metrics::counter!(PUBLISHED, "type" => event_type, "via" => via).increment(1);
}

/// Reads the outbox backlog at each scrape, through the `outboxAt` index.
pub struct OutboxBacklog(pub BookStore);

impl Collector for OutboxBacklog {
    fn collect(&self) -> Pin<Box<dyn Future<Output = Vec<Gauge>> + Send + '_>> {
        Box::pin(async move {
            let backlog = match tokio::time::timeout(SCRAPE_TIMEOUT, self.0.backlog()).await {
                Ok(Ok(backlog)) => backlog,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot read the outbox backlog for /metrics");
                    return Vec::new();
                }
                Err(_) => {
                    tracing::warn!(timeout = ?SCRAPE_TIMEOUT, "reading the outbox backlog for /metrics timed out");
                    return Vec::new();
                }
            };
            let age = backlog.oldest.map_or(0.0, |oldest| {
                // Another replica's clock may be ahead: never a negative age.
                (Utc::now() - oldest).num_milliseconds().max(0) as f64 / 1000.0
            });
            vec![
                Gauge {
                    name: PENDING_BOOKS,
                    help: "Books whose outbox holds events the relay has not published yet (usually one event each)",
                    value: backlog.books as f64,
                },
                Gauge {
                    name: OLDEST_PENDING_AGE,
                    help: "How long the oldest event not yet published has waited in its outbox; 0 when none is pending",
                    value: age,
                },
            ]
        })
    }
}
