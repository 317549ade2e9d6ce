//! The write model in MongoDB. A book document carries its pending events in
//! an `outbox` array (each the exact JSON that will be published) and the
//! time the oldest was added in `outboxAt`. Writing a book and its event is
//! therefore one single-document write: atomic without transactions.
//!
//! Conditional writes (the compare-and-set of a change, the relay's clear)
//! also hold this process's lock on the document, and on a backend such as
//! FerretDB v1, which does not apply an update's filter atomically (see
//! `platform::locks`), a lock shared with the other replicas
//! (`replica_locks`). A change holds it
//! from the read of the current version until the database has answered its
//! write (even when the request stops waiting), so writers in one process
//! never lose a compare-and-set to each other.

use std::{collections::BTreeMap, future::IntoFuture, sync::Arc};

use bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use chrono::{DateTime as ChronoDateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use mongodb::{options::IndexOptions, results::UpdateResult, Collection, Database, IndexModel};
use platform::{
    document::{BookDocument, CorruptBook, StoredBook},
    locks::{finish_locked, DocumentGuard, DocumentLocks},
};

use domain::Book;

use crate::replica_locks::{ReplicaLock, ReplicaLocks};

const BOOKS: &str = "books";
/// How many outbox clears run at once.
const UPDATE_CONCURRENCY: usize = 8;

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

/// This process's lock on one book document (and, where writes need it,
/// the replicas' lock), held from reading a book to writing its next
/// version.
pub struct BookLock {
    guard: Option<DocumentGuard>,
    replica: Option<ReplicaLock>,
}

impl BookLock {
    /// Gives both locks to `finish`, the replicas' before this process's.
    fn into_parts(mut self) -> (Option<DocumentGuard>, Option<ReplicaLock>) {
        (self.guard.take(), self.replica.take())
    }
}

/// A lock dropped without a write (a failed precondition, nothing to
/// change) gives the replicas' lock back before this process's, in the
/// background: otherwise this process's relay could find the book still
/// locked by the replicas and leave its outbox for a second publication.
impl Drop for BookLock {
    fn drop(&mut self) {
        if let Some(replica) = self.replica.take() {
            let guard = self.guard.take();
            tokio::spawn(async move {
                replica.release().await;
                drop(guard);
            });
        }
    }
}

#[derive(Clone)]
pub struct BookStore {
    books: Collection<Document>,
    locks: Arc<DocumentLocks>,
    replica_locks: Option<Arc<ReplicaLocks>>,
}

impl BookStore {
    /// A store whose writes also take the replicas' locks when
    /// `replica_locks` is given.
    pub fn new(db: &Database, replica_locks: Option<ReplicaLocks>) -> Self {
        Self {
            books: db.collection(BOOKS),
            locks: Arc::default(),
            replica_locks: replica_locks.map(Arc::new),
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

    /// Waits for this process's lock on book `id`, then for the replicas'.
    pub async fn lock(&self, id: ObjectId) -> mongodb::error::Result<BookLock> {
        let guard = self.locks.lock(&id).await;
        let replica = match &self.replica_locks {
            Some(locks) => Some(locks.lock(id).await?),
            None => None,
        };
        Ok(BookLock {
            guard: Some(guard),
            replica,
        })
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
        let (guard, replica) = locked.into_parts();
        let result = finish_locked(guard, async move {
            let result = books.update_one(filter, update).await;
            if let Some(replica) = replica {
                replica.release().await;
            }
            result
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
        // Books another replica is writing are left for a later clear (their
        // events are sent again: a duplicate, harmless).
        let (published, replica) = match &self.replica_locks {
            Some(locks) => {
                let ids: Vec<ObjectId> = published.iter().map(|p| p.id).collect();
                let taken = locks.try_lock_all(&ids).await?;
                let free: Vec<Published> = published
                    .iter()
                    .filter(|p| taken.holds(p.id))
                    .cloned()
                    .collect();
                (free, Some(taken))
            }
            None => (published.to_vec(), None),
        };
        if published.is_empty() {
            return Ok(());
        }
        let books = self.books.clone();
        finish_locked(locked, async move {
            let cleared = clear_outboxes(&books, &published).await;
            if let Some(replica) = replica {
                replica.release().await;
            }
            cleared
        })
        .await
    }
}

/// Clears what `published` names from each book's outbox; the caller holds
/// the books' locks.
async fn clear_outboxes(
    books: &Collection<Document>,
    published: &[Published],
) -> mongodb::error::Result<()> {
    // One statement per book: FerretDB would let two concurrent updates of
    // one document undo each other. A book published several times in one
    // batch has no single outbox state to compare with: its events are
    // pulled.
    let mut by_book: BTreeMap<ObjectId, (Option<ClearGuard>, Vec<&str>)> = BTreeMap::new();
    for p in published {
        let events = p.events.iter().map(String::as_str);
        by_book
            .entry(p.id)
            .and_modify(|(guard, sent)| {
                *guard = None;
                sent.extend(events.clone());
            })
            .or_insert_with(|| (Some(p.guard), events.clone().collect()));
    }
    let cleared = by_book.iter().filter_map(|(id, (guard, sent))| {
        let filter = match (*guard)? {
            ClearGuard::OutboxUnchanged => doc! { "_id": id, "outbox": sent },
            ClearGuard::Version(version) => doc! { "_id": id, "version": version },
        };
        Some((
            filter,
            doc! { "$set": { "outbox": [] }, "$unset": { "outboxAt": "" } },
        ))
    });
    let matched = update_each(books, cleared.collect()).await?;
    if matched < by_book.len() as u64 {
        // Some outboxes changed meanwhile; pulling what was sent is
        // idempotent, so do it for all of them.
        let pulled = by_book
            .iter()
            .map(|(id, (_, sent))| (doc! { "_id": id }, doc! { "$pullAll": { "outbox": sent } }));
        update_each(books, pulled.collect()).await?;
        // Those whose outbox is now empty have nothing left pending.
        let emptied = by_book.keys().map(|id| {
            (
                doc! { "_id": id, "outbox": [] },
                doc! { "$unset": { "outboxAt": "" } },
            )
        });
        update_each(books, emptied.collect()).await?;
    }
    Ok(())
}

/// Runs each `(filter, update)`, every filter naming one `_id`, a few at a
/// time, and returns how many documents matched. FerretDB answers an `_id`
/// filter with a lookup by key, where an `update_many` of an `$or` of them
/// scans the whole collection. They are separate commands: FerretDB v1 keeps
/// a database connection per statement of one `update` command until the
/// command ends, and a hundred statements exhaust its pool for good.
async fn update_each(
    books: &Collection<Document>,
    statements: Vec<(Document, Document)>,
) -> mongodb::error::Result<u64> {
    let results: Vec<mongodb::error::Result<UpdateResult>> = futures::stream::iter(statements)
        .map(|(filter, update)| books.update_one(filter, update).into_future())
        .buffer_unordered(UPDATE_CONCURRENCY)
        .collect()
        .await;
    let mut matched = 0;
    for result in results {
        matched += result?.matched_count;
    }
    Ok(matched)
}

fn to_i64(version: u64) -> i64 {
    i64::try_from(version).expect("versions stay far below i64::MAX")
}
