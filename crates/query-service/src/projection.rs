//! The read model: one denormalized document per book in the query
//! service's own database, written only by applying events.
//!
//! The version guard makes every apply idempotent and order-tolerant: an
//! event is written only if its version is newer than the stored one, so a
//! duplicate or an older event changes nothing. Deletes leave a versioned
//! tombstone, so an older create arriving late cannot resurrect a book.
//!
//! The guard is in the write's filter: MongoDB applies a single-document
//! write atomically, so concurrent applies to one book, from any replica,
//! cannot both pass it.
//!
//! Besides the book, each document holds `authorKey` (the author's
//! `Author::key()`, what lists filter on) and `authorKeys`, every key the
//! book ever had: the author summaries a change may affect (see `summary`).

use bson::{doc, oid::ObjectId, DateTime, Document};
use domain::{Book, BookEvent, BookId, EventType};
use futures::TryStreamExt;
use mongodb::{options::ReturnDocument, Collection, Database, IndexModel};
use platform::{
    document::{object_id, BookDocument, StoredBook},
    mongo::is_duplicate_key,
};
use serde::Deserialize;

use crate::{
    generation::ActiveGeneration,
    listing::{After, BookFilter, Sort},
};

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The event was newer than the stored state and is now the state.
    Written,
    /// The read model already held this version or a newer one.
    Stale,
}

/// One read-model document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub current: StoredBook,
    /// Every author key the book ever had.
    pub author_keys: Vec<String>,
}

#[derive(Clone)]
pub struct ReadModel {
    generation: ActiveGeneration,
}

impl TryFrom<BookRecord> for Record {
    type Error = platform::document::CorruptBook;

    fn try_from(record: BookRecord) -> Result<Self, Self::Error> {
        Ok(Record {
            current: record.book.into_stored()?,
            author_keys: record.author_keys,
        })
    }
}

/// A read-model document as stored: the book's fields and the author keys
/// it ever had.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BookRecord {
    #[serde(flatten)]
    book: BookDocument,
    #[serde(default)]
    author_keys: Vec<String>,
}

impl ReadModel {
    /// The read model of `db`'s first generation.
    pub fn new(db: &Database) -> Self {
        Self::on(ActiveGeneration::new(db))
    }

    /// The read model of whatever generation is active.
    pub fn on(generation: ActiveGeneration) -> Self {
        Self { generation }
    }

    fn books(&self) -> Collection<Document> {
        self.generation.collections().books.clone()
    }

    /// Creates the indexes lists and author summaries use; a no-op when
    /// they exist. One index per command: FerretDB v1 drops the connection
    /// when one `createIndexes` names several indexes that already exist.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        for keys in [
            // `?author=` in creation order, and every author summary.
            doc! { "authorKey": 1, "createdAt": 1, "_id": 1 },
            doc! { "createdAt": 1, "_id": 1 },
            doc! { "title": 1, "_id": 1 },
            doc! { "publishedYear": 1, "_id": 1 },
        ] {
            self.books()
                .create_index(IndexModel::builder().keys(keys).build())
                .await?;
        }
        Ok(())
    }

    /// Gives the author keys to books written before the read model kept
    /// them (documents without `authorKeys`), each guarded by its version
    /// so a concurrent apply wins; returns the keys given, whose summaries
    /// must then be computed. A replay cannot do this: its events are no
    /// newer than the books.
    pub async fn backfill_author_keys(&self) -> anyhow::Result<Vec<String>> {
        let documents: Vec<BookDocument> = self
            .books()
            .clone_with_type::<BookDocument>()
            .find(doc! { "authorKeys": { "$exists": false } })
            .await?
            .try_collect()
            .await?;
        let mut keys = std::collections::BTreeSet::new();
        for document in documents {
            let (id, version) = (document.id, document.version);
            let set = match document.into_stored() {
                Ok(StoredBook::Live(book)) => {
                    let key = book.state.author.key();
                    keys.insert(key.clone());
                    doc! { "authorKey": &key, "authorKeys": [&key] }
                }
                Ok(StoredBook::Deleted { .. }) => doc! { "authorKeys": [] },
                Err(error) => {
                    tracing::warn!(%error, "cannot give author keys to an invalid book");
                    continue;
                }
            };
            self.books()
                .update_one(
                    doc! { "_id": id, "version": version, "authorKeys": { "$exists": false } },
                    doc! { "$set": set },
                )
                .await?;
        }
        if !keys.is_empty() {
            tracing::info!(
                books = keys.len(),
                "gave author keys to books of an older read model"
            );
        }
        Ok(keys.into_iter().collect())
    }

    /// Applies `event` if it is newer than what the read model holds;
    /// returns what it did, and when it wrote, the document as written.
    #[tracing::instrument(skip_all, fields(book_id = %event.book_id, version = event.version))]
    pub async fn apply(&self, event: &BookEvent) -> anyhow::Result<(Applied, Option<Record>)> {
        let id = object_id(&event.book_id);
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
                    // In the same guarded write as the book: a key the book
                    // had is never missing from the list.
                    "$addToSet": { "authorKeys": key.as_str() },
                }
            }
        };
        let books = self.books().clone_with_type::<BookRecord>();
        // Matches only an older version. When the book is absent the upsert
        // inserts it. When the insert collides on _id, the book exists
        // (another replica applied a version meanwhile): try once more as a
        // plain guarded update, which matches only if what is stored is
        // still older. The write answers with the document it left, so
        // nothing needs to read it again.
        let filter = doc! { "_id": id, "version": { "$lt": version } };
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
        let record = written.map(Record::try_from).transpose()?;
        Ok((applied, record))
    }

    /// The document of a book, live or deleted; `None` when unknown.
    #[tracing::instrument(skip(self))]
    pub async fn find(&self, id: &BookId) -> anyhow::Result<Option<Record>> {
        let object_id = ObjectId::parse_str(id.as_str())?;
        let record = self
            .books()
            .clone_with_type::<BookRecord>()
            .find_one(doc! { "_id": object_id })
            .await?;
        Ok(record.map(Record::try_from).transpose()?)
    }

    /// The `{_id, version}` of every book, live or deleted, in `_id` order.
    pub async fn versions(
        &self,
    ) -> mongodb::error::Result<impl futures::Stream<Item = mongodb::error::Result<(ObjectId, i64)>>>
    {
        self.versions_matching(doc! {}).await
    }

    async fn versions_matching(
        &self,
        filter: Document,
    ) -> mongodb::error::Result<impl futures::Stream<Item = mongodb::error::Result<(ObjectId, i64)>>>
    {
        #[derive(Deserialize)]
        struct Version {
            #[serde(rename = "_id")]
            id: ObjectId,
            version: i64,
        }
        let cursor = self
            .books()
            .clone_with_type::<Version>()
            .find(filter)
            .projection(doc! { "_id": 1, "version": 1 })
            .sort(doc! { "_id": 1 })
            .await?;
        Ok(cursor.map_ok(|v| (v.id, v.version)))
    }

    /// The versions the read model holds of these books, by id.
    pub async fn versions_of(
        &self,
        ids: impl Iterator<Item = &BookId>,
    ) -> anyhow::Result<std::collections::HashMap<String, i64>> {
        let ids = ids
            .map(|id| ObjectId::parse_str(id.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        let held: std::collections::HashMap<String, i64> = self
            .versions_matching(doc! { "_id": { "$in": ids } })
            .await?
            .map_ok(|(id, version)| (id.to_hex(), version))
            .try_collect()
            .await?;
        Ok(held)
    }

    /// The author keys of every book, each once.
    pub async fn author_keys(&self) -> mongodb::error::Result<Vec<String>> {
        let keys = self.books().distinct("authorKeys", doc! {}).await?;
        Ok(keys
            .into_iter()
            .filter_map(|key| key.as_str().map(str::to_owned))
            .collect())
    }

    /// Up to `limit` live books matching `filter`, in `sort`'s order,
    /// starting after `after`.
    #[tracing::instrument(skip(self))]
    pub async fn list(
        &self,
        filter: &BookFilter,
        sort: Sort,
        after: Option<&After>,
        limit: u32,
    ) -> anyhow::Result<Vec<Book>> {
        let mut query = filter.document();
        if let Some(after) = after {
            query.extend(after.document(sort));
        }
        let records: Vec<BookDocument> = self
            .books()
            .clone_with_type::<BookDocument>()
            .find(query)
            .sort(sort.document())
            .limit(i64::from(limit))
            .await?
            .try_collect()
            .await?;
        Ok(records
            .into_iter()
            .map(BookDocument::into_book)
            .collect::<Result<_, _>>()?)
    }
}
