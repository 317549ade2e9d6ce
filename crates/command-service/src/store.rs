//! The write model in MongoDB. A book document carries its pending events in
//! an `outbox` array (each the exact JSON that will be published) and the
//! time the oldest was added in `outboxAt`. Writing a book and its event is
//! therefore one single-document write: atomic without transactions.
//!
//! Conditional writes (the compare-and-set of a change, the relay's clear)
//! also hold this process's lock on the document: FerretDB v1 does not apply
//! an update's filter atomically (see `platform::locks`). A change holds it
//! from the read of the current version until the database has answered its
//! write (even when the request stops waiting), so writers in one process
//! never lose a compare-and-set to each other.

use std::{future::IntoFuture, sync::Arc};

use bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use chrono::{DateTime as ChronoDateTime, Utc};
use futures::TryStreamExt;
use mongodb::{options::IndexOptions, Collection, Database, IndexModel};
use platform::{
    document::{BookDocument, CorruptBook, StoredBook},
    locks::{finish_locked, DocumentGuard, DocumentLocks},
};

use domain::Book;

const BOOKS: &str = "books";

/// Events published but not yet cleared from their book's outbox.
#[derive(Debug, Clone)]
pub struct Published {
    pub id: ObjectId,
    /// Which outbox state may be cleared wholesale.
    pub guard: ClearGuard,
    /// The exact JSON of each published event.
    pub events: Vec<String>,
}

/// When a whole outbox may be emptied at once; otherwise only the published
/// events are pulled from it, so events added meanwhile stay pending.
#[derive(Debug, Clone, Copy)]
pub enum ClearGuard {
    /// The outbox still holds exactly the published events.
    OutboxUnchanged,
    /// The book is still at this version: the whole outbox was read and
    /// published at this version.
    Version(i64),
}

/// A book with events still waiting for the relay.
#[derive(Debug, Clone)]
pub struct PendingBook {
    pub id: ObjectId,
    pub version: i64,
    pub events: Vec<String>,
}

/// What the outbox holds: how many books have events waiting for the relay,
/// and since when the oldest of them waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub books: u64,
    pub oldest: Option<ChronoDateTime<Utc>>,
}

/// Why a stored book could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Mongo(#[from] mongodb::error::Error),
    #[error(transparent)]
    Corrupt(#[from] CorruptBook),
}

/// This process's lock on one book document, held from reading a book to
/// writing its next version.
pub struct BookLock {
    guard: DocumentGuard,
}

#[derive(Clone)]
pub struct BookStore {
    db: Database,
    books: Collection<Document>,
    locks: Arc<DocumentLocks>,
}

impl BookStore {
    pub fn new(db: &Database) -> Self {
        Self {
            db: db.clone(),
            books: db.collection(BOOKS),
            locks: Arc::default(),
        }
    }

    /// Creates the index the relay's sweep relies on. Idempotent.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let index = IndexModel::builder()
            .keys(doc! { "outboxAt": 1 })
            .options(
                IndexOptions::builder()
                    .name("outboxAt_1".to_owned())
                    .build(),
            )
            .build();
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
    ) -> mongodb::error::Result<()> {
        let now = DateTime::now();
        let document = doc! {
            "_id": id,
            "title": book.state.title.as_str(),
            "author": book.state.author.as_str(),
            "publishedYear": book.state.published_year.value(),
            "version": to_i64(book.version),
            "createdAt": DateTime::from_chrono(book.state.created_at),
            "updatedAt": DateTime::from_chrono(book.state.updated_at),
            "outbox": [event_json],
            "outboxAt": now,
        };
        self.books.insert_one(document).await?;
        Ok(())
    }

    /// Waits for this process's lock on book `id`.
    pub async fn lock(&self, id: ObjectId) -> BookLock {
        BookLock {
            guard: self.locks.lock(&id).await,
        }
    }

    /// The book with this id as the write model holds it, if any.
    #[tracing::instrument(skip_all, fields(book_id = %id))]
    pub async fn find(&self, id: ObjectId) -> Result<Option<StoredBook>, StoreError> {
        let record = self
            .books
            .clone_with_type::<BookDocument>()
            .find_one(doc! { "_id": id })
            .projection(doc! { "outbox": 0, "outboxAt": 0 })
            .await?;
        Ok(record.map(BookDocument::into_stored).transpose()?)
    }

    /// Writes `book` (the next version of a live book) and its event, if
    /// the stored book is still live at `expected`: a compare-and-set, so
    /// of two writers that read the same version exactly one succeeds (the
    /// caller holds the book's lock). Returns whether this write won.
    #[tracing::instrument(skip_all, fields(book_id = %id, expected))]
    pub async fn update(
        &self,
        locked: BookLock,
        id: ObjectId,
        expected: u64,
        book: &Book,
        event_json: &str,
    ) -> mongodb::error::Result<bool> {
        let update = doc! {
            "$set": {
                "title": book.state.title.as_str(),
                "author": book.state.author.as_str(),
                "publishedYear": book.state.published_year.value(),
                "updatedAt": DateTime::from_chrono(book.state.updated_at),
                "version": to_i64(book.version),
            },
            "$push": { "outbox": event_json },
            "$min": { "outboxAt": DateTime::now() },
        };
        self.compare_and_set(locked, id, expected, update).await
    }

    /// Marks the book deleted at `version` (its content removed, the
    /// document kept as a versioned tombstone) with its event, if it is
    /// still live at `expected`. Returns whether this write won.
    #[tracing::instrument(skip_all, fields(book_id = %id, expected))]
    pub async fn delete(
        &self,
        locked: BookLock,
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
        self.compare_and_set(locked, id, expected, update).await
    }

    async fn compare_and_set(
        &self,
        locked: BookLock,
        id: ObjectId,
        expected: u64,
        update: Document,
    ) -> mongodb::error::Result<bool> {
        let filter = doc! {
            "_id": id,
            "version": to_i64(expected),
            "deleted": { "$ne": true },
        };
        let books = self.books.clone();
        let result = finish_locked(locked.guard, async move {
            books.update_one(filter, update).await
        })
        .await?;
        Ok(result.modified_count == 1)
    }

    /// Books whose oldest pending event was added at or before `cutoff`,
    /// oldest first.
    pub async fn pending(
        &self,
        cutoff: ChronoDateTime<Utc>,
        limit: i64,
    ) -> mongodb::error::Result<Vec<PendingBook>> {
        let cursor = self
            .books
            .find(doc! { "outboxAt": { "$lte": DateTime::from_chrono(cutoff) } })
            .sort(doc! { "outboxAt": 1 })
            .limit(limit)
            .projection(doc! { "version": 1, "outbox": 1 })
            .await?;
        let documents: Vec<Document> = cursor.try_collect().await?;
        Ok(documents
            .into_iter()
            .filter_map(|d| {
                let id = d.get_object_id("_id").ok()?;
                let version = match d.get("version") {
                    Some(Bson::Int64(v)) => *v,
                    Some(Bson::Int32(v)) => i64::from(*v),
                    _ => 0,
                };
                let events = d
                    .get_array("outbox")
                    .map(|a| {
                        a.iter()
                            .filter_map(|e| e.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                Some(PendingBook {
                    id,
                    version,
                    events,
                })
            })
            .collect())
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

    /// Clears published events from their outboxes. One round trip when
    /// nothing was added meanwhile (the common case); otherwise the published
    /// events alone are pulled and the rest stays pending for the sweep.
    pub async fn clear(&self, published: &[Published]) -> mongodb::error::Result<()> {
        if published.is_empty() {
            return Ok(());
        }
        let locked = self.locks.lock_all(published.iter().map(|p| p.id)).await;
        let db = self.db.clone();
        let published = published.to_vec();
        finish_locked(locked, async move { clear_outboxes(&db, &published).await }).await
    }
}

/// Clears what `published` names from each book's outbox; the caller holds
/// the books' locks.
async fn clear_outboxes(db: &Database, published: &[Published]) -> mongodb::error::Result<()> {
    let cleared = published.iter().map(|p| {
        let filter = match p.guard {
            ClearGuard::OutboxUnchanged => doc! { "_id": p.id, "outbox": &p.events },
            ClearGuard::Version(version) => doc! { "_id": p.id, "version": version },
        };
        (
            filter,
            doc! { "$set": { "outbox": [] }, "$unset": { "outboxAt": "" } },
        )
    });
    let matched = update_each(db, cleared).await?;
    if matched < published.len() as u64 {
        // Some outboxes changed meanwhile; pulling what was sent is
        // idempotent, so do it for all of them.
        let pulled = published.iter().map(|p| {
            (
                doc! { "_id": p.id },
                doc! { "$pullAll": { "outbox": &p.events } },
            )
        });
        update_each(db, pulled).await?;
        // Those whose outbox is now empty have nothing left pending.
        let emptied = published.iter().map(|p| {
            (
                doc! { "_id": p.id, "outbox": [] },
                doc! { "$unset": { "outboxAt": "" } },
            )
        });
        update_each(db, emptied).await?;
    }
    Ok(())
}

/// Runs one `update` command with a statement per `(filter, update)`, each
/// filter naming one `_id`, and returns how many documents matched. One
/// round trip, like an `update_many` of an `$or`, but each statement is a
/// lookup by key, where FerretDB scans the whole collection for an `$or`.
async fn update_each(
    db: &Database,
    statements: impl Iterator<Item = (Document, Document)>,
) -> mongodb::error::Result<u64> {
    let updates: Vec<Document> = statements
        .map(|(filter, update)| doc! { "q": filter, "u": update })
        .collect();
    let reply = db
        .run_command(doc! { "update": BOOKS, "updates": updates, "ordered": false })
        .await?;
    if let Some(error) = reply
        .get_array("writeErrors")
        .ok()
        .and_then(|errors| errors.first())
    {
        return Err(mongodb::error::Error::custom(format!(
            "outbox clear failed: {error}"
        )));
    }
    let matched = match reply.get("n") {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        _ => 0,
    };
    Ok(u64::try_from(matched).unwrap_or(0))
}

fn to_i64(version: u64) -> i64 {
    i64::try_from(version).expect("versions stay far below i64::MAX")
}
