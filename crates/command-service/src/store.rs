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

use bson::{doc, oid::ObjectId, DateTime, Document};
use chrono::{DateTime as ChronoDateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use mongodb::{options::IndexOptions, Collection, Database, IndexModel};
use platform::{
    document::{BookDocument, CorruptBook, StoredBook},
    locks::{finish_locked, DocumentGuard, DocumentLocks},
    mongo::GuardedWrites,
};

use domain::Book;

use crate::replica_locks::{ReplicaLock, ReplicaLocks};

const BOOKS: &str = "books";
/// How many outbox clears run at once.
const UPDATE_CONCURRENCY: usize = 8;
/// Reads and writes of one outbox before leaving it to the sweep.
const CLEAR_ATTEMPTS: usize = 3;

/// Events published but not yet cleared from their book's outbox.
#[derive(Debug, Clone)]
pub struct Published {
    pub id: ObjectId,
    /// The exact JSON of each published event.
    pub events: Vec<String>,
}

/// A book with events still waiting for the relay.
#[derive(Debug, Clone)]
pub struct PendingBook {
    pub id: ObjectId,
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
    writes: GuardedWrites,
}

impl BookStore {
    /// A store whose writes also take the replicas' locks when
    /// `replica_locks` is given.
    pub fn new(db: &Database, replica_locks: Option<ReplicaLocks>) -> Self {
        Self::with_writes(db, replica_locks, GuardedWrites::detect(db))
    }

    /// A store whose guarded writes are filtered as `writes` says.
    pub fn with_writes(
        db: &Database,
        replica_locks: Option<ReplicaLocks>,
        writes: GuardedWrites,
    ) -> Self {
        Self {
            books: db.collection(BOOKS),
            locks: Arc::default(),
            replica_locks: replica_locks.map(Arc::new),
            writes,
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
        // The caller read the book live at `expected` under the lock.
        let condition = doc! { "version": to_i64(expected), "deleted": { "$ne": true } };
        let filter = self.writes.filter(id, condition).await?;
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
            .projection(doc! { "outbox": 1 })
            .await?;
        let documents: Vec<Document> = cursor.try_collect().await?;
        Ok(documents
            .into_iter()
            .filter_map(|d| {
                Some(PendingBook {
                    id: d.get_object_id("_id").ok()?,
                    events: outbox_of(&d),
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

    /// Clears published events from their outboxes; events added meanwhile
    /// stay pending.
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
        let (books, writes) = (self.books.clone(), self.writes.clone());
        finish_locked(locked, async move {
            let cleared = clear_outboxes(&books, &writes, &published).await;
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
    writes: &GuardedWrites,
    published: &[Published],
) -> mongodb::error::Result<()> {
    // One task per book: FerretDB would let two concurrent updates of one
    // document undo each other.
    let mut by_book: BTreeMap<ObjectId, Vec<String>> = BTreeMap::new();
    for p in published {
        by_book
            .entry(p.id)
            .or_default()
            .extend(p.events.iter().cloned());
    }
    futures::stream::iter(by_book)
        .map(|(id, sent)| async move { clear_outbox(books, writes, id, &sent).await })
        .buffer_unordered(UPDATE_CONCURRENCY)
        .try_collect()
        .await
}

/// Removes `sent` from the outbox of book `id`: a read and a write, both
/// looked up by `_id`, the write guarded by the outbox read. Should another
/// replica keep adding events meanwhile, the sent ones are left for the
/// sweep (sent again: a duplicate, harmless).
///
/// Where the filter holds the condition (MongoDB), the usual case of an
/// outbox holding exactly what was sent is tried first as one write.
async fn clear_outbox(
    books: &Collection<Document>,
    writes: &GuardedWrites,
    id: ObjectId,
    sent: &[String],
) -> mongodb::error::Result<()> {
    if writes.in_filter().await? {
        let emptied = books
            .update_one(
                doc! { "_id": id, "outbox": sent },
                doc! { "$set": { "outbox": [] }, "$unset": { "outboxAt": "" } },
            )
            .await?;
        if emptied.matched_count == 1 {
            return Ok(());
        }
    }
    for _ in 0..CLEAR_ATTEMPTS {
        let Some(stored) = books
            .find_one(doc! { "_id": id })
            .projection(doc! { "_id": 0, "outbox": 1 })
            .await?
        else {
            return Ok(());
        };
        let outbox = outbox_of(&stored);
        let remaining: Vec<&String> = outbox
            .iter()
            .filter(|event| !sent.contains(event))
            .collect();
        if !outbox.is_empty() && remaining.len() == outbox.len() {
            return Ok(());
        }
        let update = if remaining.is_empty() {
            doc! { "$set": { "outbox": [] }, "$unset": { "outboxAt": "" } }
        } else {
            doc! { "$set": { "outbox": remaining } }
        };
        let filter = writes.filter(id, doc! { "outbox": &outbox }).await?;
        if books.update_one(filter, update).await?.matched_count == 1 {
            return Ok(());
        }
    }
    Ok(())
}

/// The events of a book document's outbox.
fn outbox_of(document: &Document) -> Vec<String> {
    document
        .get_array("outbox")
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn to_i64(version: u64) -> i64 {
    i64::try_from(version).expect("versions stay far below i64::MAX")
}
