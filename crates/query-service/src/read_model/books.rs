//! The read model's books: one document per book, written only from
//! events, under a version guard that makes every write idempotent and
//! order-tolerant. Deletes leave a versioned tombstone.

use std::collections::HashMap;

use bson::{doc, oid::ObjectId, DateTime, Document};
use domain::{Book, BookEvent, BookId, EventType};
use futures::{Stream, TryStreamExt};
use mongodb::{options::ReturnDocument, Collection, Database, IndexModel};
use platform::{
    document::{object_id, BookDocument, StoredBook},
    error::Failure,
    mongo::is_duplicate_key,
};
use serde::Deserialize;

use super::generation::ActiveGeneration;
use crate::read::listing::{After, BookFilter, Sort};

/// What writing one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The event was newer than the stored state and is now the state.
    Written,
    /// The read model already held this version or a newer one.
    Stale,
}

/// One book as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub current: StoredBook,
    /// Every author key the book ever had: the summaries a change touches.
    pub author_keys: Vec<String>,
}

/// A stored document: the book's fields, plus `authorKey` (what lists
/// filter on) and `authorKeys`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredRecord {
    #[serde(flatten)]
    book: BookDocument,
    #[serde(default)]
    author_keys: Vec<String>,
}

impl TryFrom<StoredRecord> for Record {
    type Error = Failure;

    fn try_from(stored: StoredRecord) -> Result<Self, Failure> {
        Ok(Record {
            current: stored.book.into_stored()?,
            author_keys: stored.author_keys,
        })
    }
}

#[derive(Clone)]
pub struct Books {
    generation: ActiveGeneration,
}

impl Books {
    /// The books of `db`'s first generation.
    pub fn new(db: &Database) -> Self {
        Self::on(ActiveGeneration::new(db))
    }

    /// The books of whatever generation is active.
    pub fn on(generation: ActiveGeneration) -> Self {
        Self { generation }
    }

    fn collection(&self) -> Collection<Document> {
        self.generation.collections().books.clone()
    }

    /// The indexes of lists and summaries. One per command: FerretDB v1
    /// drops the connection when one `createIndexes` repeats several.
    pub async fn ensure_indexes(&self) -> Result<(), Failure> {
        for keys in [
            doc! { "authorKey": 1, "createdAt": 1, "_id": 1 },
            doc! { "createdAt": 1, "_id": 1 },
            doc! { "title": 1, "_id": 1 },
            doc! { "publishedYear": 1, "_id": 1 },
        ] {
            self.collection()
                .create_index(IndexModel::builder().keys(keys).build())
                .await?;
        }
        Ok(())
    }

    /// Writes `event` if it is newer than the stored book; returns what it
    /// did and, when it wrote, the book as written.
    #[tracing::instrument(skip_all, fields(book_id = %event.book_id, version = event.version))]
    pub async fn upsert(&self, event: &BookEvent) -> Result<(Applied, Option<Record>), Failure> {
        let version = i64::try_from(event.version).unwrap_or(i64::MAX);
        let update = match (&event.event_type, &event.book) {
            // `authorKeys` stays: the summaries that counted the book must
            // learn that it is gone.
            (EventType::BookDeleted, _) | (_, None) => doc! {
                "$set": {
                    "version": version,
                    "deleted": true,
                    "updatedAt": DateTime::from_chrono(event.occurred_at),
                    "eventId": event.event_id.to_string(),
                },
                "$unset": {
                    "title": "", "author": "", "authorKey": "", "publishedYear": "", "createdAt": "",
                },
            },
            (_, Some(book)) => {
                let key = book.author.key();
                doc! {
                    "$set": {
                        "title": book.title.as_str(),
                        "author": book.author.as_str(),
                        "authorKey": key.as_str(),
                        "publishedYear": book.published_year.value(),
                        "createdAt": DateTime::from_chrono(book.created_at),
                        "updatedAt": DateTime::from_chrono(book.updated_at),
                        "version": version,
                        "deleted": false,
                        "eventId": event.event_id.to_string(),
                    },
                    "$addToSet": { "authorKeys": key.as_str() },
                }
            }
        };
        let books = self.collection().clone_with_type::<StoredRecord>();
        // The guard is in the filter, which MongoDB checks atomically with
        // the write. An upsert that collides on `_id` met a book another
        // replica wrote meanwhile: once more as a plain guarded update.
        let filter = doc! { "_id": object_id(&event.book_id), "version": { "$lt": version } };
        let written = match books
            .find_one_and_update(filter.clone(), update.clone())
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await
        {
            Ok(written) => written,
            Err(error) if is_duplicate_key(&error) => {
                books
                    .find_one_and_update(filter, update)
                    .return_document(ReturnDocument::After)
                    .await?
            }
            Err(error) => return Err(error.into()),
        };
        let applied = if written.is_some() {
            Applied::Written
        } else {
            Applied::Stale
        };
        Ok((applied, written.map(Record::try_from).transpose()?))
    }

    /// The book, live or deleted; `None` when unknown.
    #[tracing::instrument(skip(self))]
    pub async fn find(&self, id: &BookId) -> Result<Option<Record>, Failure> {
        let stored = self
            .collection()
            .clone_with_type::<StoredRecord>()
            .find_one(doc! { "_id": object_id(id) })
            .await?;
        stored.map(Record::try_from).transpose()
    }

    /// The `{_id, version}` of every book, live or deleted, in `_id` order.
    pub async fn versions(
        &self,
    ) -> mongodb::error::Result<impl Stream<Item = mongodb::error::Result<(ObjectId, i64)>>> {
        self.versions_matching(doc! {}).await
    }

    /// The versions held of these books, by id.
    pub async fn versions_of(
        &self,
        ids: impl Iterator<Item = &BookId>,
    ) -> mongodb::error::Result<HashMap<String, i64>> {
        let ids: Vec<ObjectId> = ids.map(object_id).collect();
        let held = self
            .versions_matching(doc! { "_id": { "$in": ids } })
            .await?
            .map_ok(|(id, version)| (id.to_hex(), version))
            .try_collect()
            .await?;
        Ok(held)
    }

    async fn versions_matching(
        &self,
        filter: Document,
    ) -> mongodb::error::Result<impl Stream<Item = mongodb::error::Result<(ObjectId, i64)>>> {
        #[derive(Deserialize)]
        struct Version {
            #[serde(rename = "_id")]
            id: ObjectId,
            version: i64,
        }
        let cursor = self
            .collection()
            .clone_with_type::<Version>()
            .find(filter)
            .projection(doc! { "_id": 1, "version": 1 })
            .sort(doc! { "_id": 1 })
            .await?;
        Ok(cursor.map_ok(|v| (v.id, v.version)))
    }

    /// The author keys of every book, each once.
    pub async fn author_keys(&self) -> mongodb::error::Result<Vec<String>> {
        let keys = self.collection().distinct("authorKeys", doc! {}).await?;
        Ok(keys
            .into_iter()
            .filter_map(|key| key.as_str().map(str::to_owned))
            .collect())
    }

    /// Up to `limit` live books matching `filter` in `sort`'s order,
    /// starting after `after`.
    #[tracing::instrument(skip(self))]
    pub async fn list(
        &self,
        filter: &BookFilter,
        sort: Sort,
        after: Option<&After>,
        limit: u32,
    ) -> Result<Vec<Book>, Failure> {
        let mut query = filter.document();
        if let Some(after) = after {
            query.extend(after.document(sort));
        }
        let documents: Vec<BookDocument> = self
            .collection()
            .clone_with_type::<BookDocument>()
            .find(query)
            .sort(sort.document())
            .limit(i64::from(limit))
            .await?
            .try_collect()
            .await?;
        Ok(documents
            .into_iter()
            .map(BookDocument::into_book)
            .collect::<Result<_, _>>()?)
    }
}
