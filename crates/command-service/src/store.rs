//! The write model in MongoDB. A book document carries its pending events in
//! an `outbox` array (the exact JSON to publish) and when the oldest was
//! added in `outboxAt`, so a book and its event are one atomic write.

use std::{collections::BTreeMap, future::IntoFuture};

use bson::{doc, oid::ObjectId, DateTime, Document};
use chrono::{DateTime as ChronoDateTime, Utc};
use domain::Book;
use futures::{StreamExt, TryStreamExt};
use mongodb::{Collection, Database, IndexModel};
use platform::{
    document::{BookDocument, StoredBook},
    error::Failure,
};
use serde::Deserialize;

const BOOKS: &str = "books";
/// What an idempotent create was made from (see `commands::Idempotency`).
const FINGERPRINT: &str = "requestFingerprint";
/// How many outbox clears run at once.
const UPDATE_CONCURRENCY: usize = 8;

/// Events of one book's outbox, as the exact JSON stored.
#[derive(Debug, Clone, Deserialize)]
pub struct Pending {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    #[serde(rename = "outbox")]
    pub events: Vec<String>,
}

/// What the outbox holds: how many books have events waiting for the relay,
/// and since when the oldest of them waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub books: u64,
    pub oldest: Option<ChronoDateTime<Utc>>,
}

#[derive(Clone)]
pub struct BookStore {
    books: Collection<Document>,
}

impl BookStore {
    pub fn new(db: &Database) -> Self {
        Self {
            books: db.collection(BOOKS),
        }
    }

    /// Creates the index the relay's reads of pending events rely on. Idempotent.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let index = IndexModel::builder().keys(doc! { "outboxAt": 1 }).build();
        self.books.create_index(index).await?;
        Ok(())
    }

    /// Stores a new book and its creation event in one document write.
    #[tracing::instrument(skip_all, fields(book_id = %id))]
    pub async fn insert(
        &self,
        id: ObjectId,
        book: &Book,
        event_json: &str,
        fingerprint: Option<&str>,
    ) -> mongodb::error::Result<()> {
        let mut document = doc! {
            "_id": id,
            "createdAt": DateTime::from_chrono(book.state.created_at),
            "outbox": [event_json],
            "outboxAt": DateTime::now(),
        };
        if let Some(fingerprint) = fingerprint {
            document.insert(FINGERPRINT, fingerprint);
        }
        document.extend(content(book));
        self.books.insert_one(document).await?;
        Ok(())
    }

    /// What a book was created from (the fingerprint of an idempotent
    /// create), and when; `None` when there is no such book.
    pub async fn creation(
        &self,
        id: ObjectId,
    ) -> Result<Option<(Option<String>, ChronoDateTime<Utc>)>, Failure> {
        let Some(document) = self
            .books
            .find_one(doc! { "_id": id })
            .projection(doc! { FINGERPRINT: 1, "createdAt": 1 })
            .await?
        else {
            return Ok(None);
        };
        let created_at = document.get_datetime("createdAt").map_err(|error| {
            Failure::Permanent(anyhow::anyhow!("book {id} has no creation time: {error}"))
        })?;
        let fingerprint = document.get_str(FINGERPRINT).ok().map(str::to_owned);
        Ok(Some((fingerprint, created_at.to_chrono())))
    }

    /// The book with this id as the write model holds it, if any.
    #[tracing::instrument(skip_all, fields(book_id = %id))]
    pub async fn find(&self, id: ObjectId) -> Result<Option<StoredBook>, Failure> {
        let record = self
            .books
            .clone_with_type::<BookDocument>()
            .find_one(doc! { "_id": id })
            .projection(doc! { "outbox": 0, "outboxAt": 0 })
            .await?;
        Ok(record.map(BookDocument::into_stored).transpose()?)
    }

    /// Writes `book` (the next version of a live book) and its event, if
    /// the stored book is still live at `expected`; whether this write won.
    #[tracing::instrument(skip_all, fields(book_id = %id, expected))]
    pub async fn update(
        &self,
        id: ObjectId,
        expected: u64,
        book: &Book,
        event_json: &str,
    ) -> mongodb::error::Result<bool> {
        let update = doc! {
            "$set": content(book),
            "$push": { "outbox": event_json },
            "$min": { "outboxAt": DateTime::now() },
        };
        self.compare_and_set(id, expected, update).await
    }

    /// Marks the book deleted at `version` (its content removed, the
    /// document kept as a versioned tombstone) with its event, if it is
    /// still live at `expected`. Returns whether this write won.
    #[tracing::instrument(skip_all, fields(book_id = %id, expected))]
    pub async fn delete(
        &self,
        id: ObjectId,
        expected: u64,
        version: u64,
        at: ChronoDateTime<Utc>,
        event_json: &str,
    ) -> mongodb::error::Result<bool> {
        let update = doc! {
            "$set": {
                "deleted": true,
                "updatedAt": DateTime::from_chrono(at),
                "version": to_i64(version),
            },
            "$unset": { "title": "", "author": "", "publishedYear": "" },
            "$push": { "outbox": event_json },
            "$min": { "outboxAt": DateTime::now() },
        };
        self.compare_and_set(id, expected, update).await
    }

    /// One statement with the condition in the filter: MongoDB applies it
    /// atomically, so of two writers that read one version exactly one wins.
    async fn compare_and_set(
        &self,
        id: ObjectId,
        expected: u64,
        update: Document,
    ) -> mongodb::error::Result<bool> {
        let filter = doc! { "_id": id, "version": to_i64(expected), "deleted": { "$ne": true } };
        let result = self.books.update_one(filter, update).await?;
        Ok(result.modified_count == 1)
    }

    /// Books whose oldest pending event was added at or before `cutoff`,
    /// oldest first.
    pub async fn pending(
        &self,
        cutoff: ChronoDateTime<Utc>,
        limit: i64,
    ) -> mongodb::error::Result<Vec<Pending>> {
        self.books
            .clone_with_type::<Pending>()
            .find(doc! { "outboxAt": { "$lte": DateTime::from_chrono(cutoff) } })
            .sort(doc! { "outboxAt": 1 })
            .limit(limit)
            .projection(doc! { "outbox": 1 })
            .await?
            .try_collect()
            .await
    }

    /// The outbox backlog. Both reads go through the `outboxAt` index alone
    /// (a range over dates, which only books with pending events have), so
    /// a scrape costs little however many books there are.
    pub async fn backlog(&self) -> mongodb::error::Result<Backlog> {
        let pending = doc! { "outboxAt": { "$gte": DateTime::MIN } };
        let count = self.books.count_documents(pending.clone());
        let oldest = self
            .books
            .find_one(pending)
            .sort(doc! { "outboxAt": 1 })
            .projection(doc! { "_id": 0, "outboxAt": 1 });
        let (books, oldest) = futures::try_join!(count.into_future(), oldest.into_future())?;
        Ok(Backlog {
            books,
            oldest: oldest
                .and_then(|document| document.get_datetime("outboxAt").ok().copied())
                .map(DateTime::to_chrono),
        })
    }

    /// Clears published events from their outboxes; events added meanwhile
    /// stay pending.
    pub async fn clear(&self, published: &[Pending]) -> mongodb::error::Result<()> {
        let mut by_book: BTreeMap<ObjectId, Vec<String>> = BTreeMap::new();
        for p in published {
            by_book
                .entry(p.id)
                .or_default()
                .extend(p.events.iter().cloned());
        }
        futures::stream::iter(by_book)
            .map(|(id, sent)| async move { self.clear_outbox(id, sent).await })
            .buffer_unordered(UPDATE_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Removes `sent` from the outbox of book `id`. The usual case, an
    /// outbox holding exactly what was sent, is one write that also ends
    /// the book's wait; otherwise only the sent events are pulled, and the
    /// events added meanwhile keep the book pending.
    async fn clear_outbox(&self, id: ObjectId, sent: Vec<String>) -> mongodb::error::Result<()> {
        let emptied = self
            .books
            .update_one(
                doc! { "_id": id, "outbox": &sent },
                doc! { "$set": { "outbox": [] }, "$unset": { "outboxAt": "" } },
            )
            .await?;
        if emptied.matched_count == 0 && !sent.is_empty() {
            self.books
                .update_one(doc! { "_id": id }, doc! { "$pullAll": { "outbox": sent } })
                .await?;
        }
        Ok(())
    }
}

/// What a write sets of a live book's content and version.
fn content(book: &Book) -> Document {
    doc! {
        "title": book.state.title.as_str(),
        "author": book.state.author.as_str(),
        "publishedYear": book.state.published_year.value(),
        "updatedAt": DateTime::from_chrono(book.state.updated_at),
        "version": to_i64(book.version),
    }
}

fn to_i64(version: u64) -> i64 {
    i64::try_from(version).expect("versions stay far below i64::MAX")
}
