//! The read model: one denormalized document per book in the query
//! service's own database, written only by applying events.
//!
//! The version guard makes every apply idempotent and order-tolerant: an
//! event is written only if its version is newer than the stored one, so a
//! duplicate or an older event changes nothing. Deletes leave a versioned
//! tombstone, so an older create arriving late cannot resurrect a book.

use bson::{doc, oid::ObjectId, DateTime, Document};
use domain::{Author, Book, BookEvent, BookId, BookState, EventType, PublishedYear, Title};
use mongodb::{error::ErrorKind, Collection, Database};
use serde::Deserialize;

const BOOKS: &str = "books";
const DUPLICATE_KEY: i32 = 11000;

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The event was newer than the stored state and is now the state.
    Written,
    /// The read model already held this version or a newer one.
    Stale,
}

#[derive(Clone)]
pub struct ReadModel {
    books: Collection<Document>,
}

/// A read-model document as stored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BookRecord {
    #[serde(rename = "_id")]
    id: ObjectId,
    version: i64,
    #[serde(default)]
    deleted: bool,
    title: Option<String>,
    author: Option<String>,
    published_year: Option<i32>,
    created_at: Option<DateTime>,
    updated_at: Option<DateTime>,
}

impl ReadModel {
    pub fn new(db: &Database) -> Self {
        Self {
            books: db.collection(BOOKS),
        }
    }

    /// Applies `event` if it is newer than what the read model holds.
    #[tracing::instrument(skip_all, fields(book_id = %event.book_id, version = event.version))]
    pub async fn apply(&self, event: &BookEvent) -> mongodb::error::Result<Applied> {
        let id = ObjectId::parse_str(event.book_id.as_str()).expect("a BookId is an ObjectId");
        let version = i64::try_from(event.version).unwrap_or(i64::MAX);
        let update = match (&event.event_type, &event.book) {
            (EventType::BookDeleted, _) | (_, None) => doc! {
                "$set": {
                    "version": version,
                    "deleted": true,
                    "updatedAt": DateTime::from_chrono(event.occurred_at),
                    "eventId": event.event_id.to_string(),
                },
                "$unset": { "title": "", "author": "", "publishedYear": "", "createdAt": "" },
            },
            (_, Some(book)) => doc! {
                "$set": {
                    "title": book.title.as_str(),
                    "author": book.author.as_str(),
                    "publishedYear": book.published_year.value(),
                    "createdAt": DateTime::from_chrono(book.created_at),
                    "updatedAt": DateTime::from_chrono(book.updated_at),
                    "version": version,
                    "deleted": false,
                    "eventId": event.event_id.to_string(),
                },
            },
        };
        // Matches only an older version. When the book is absent the upsert
        // inserts it. When the insert collides on _id, the book exists (a
        // newer version, or a concurrent apply of another version won the
        // insert): try once more as a plain guarded update, which matches
        // only if what is stored is still older.
        let filter = doc! { "_id": id, "version": { "$lt": version } };
        match self
            .books
            .update_one(filter.clone(), update.clone())
            .upsert(true)
            .await
        {
            Ok(_) => Ok(Applied::Written),
            Err(error) if is_duplicate_key(&error) => {
                let result = self.books.update_one(filter, update).await?;
                Ok(if result.matched_count == 1 {
                    Applied::Written
                } else {
                    Applied::Stale
                })
            }
            Err(error) => Err(error),
        }
    }

    /// The current view of a book; `None` when unknown or deleted.
    pub async fn get(&self, id: &BookId) -> anyhow::Result<Option<Book>> {
        let object_id = ObjectId::parse_str(id.as_str())?;
        let Some(record) = self
            .books
            .clone_with_type::<BookRecord>()
            .find_one(doc! { "_id": object_id })
            .await?
        else {
            return Ok(None);
        };
        if record.deleted {
            return Ok(None);
        }
        record.into_book().map(Some)
    }
}

impl BookRecord {
    fn into_book(self) -> anyhow::Result<Book> {
        let missing = |field: &str| anyhow::anyhow!("read model book {} has no {field}", self.id);
        let state = BookState {
            title: Title::parse(self.title.as_deref().ok_or_else(|| missing("title"))?)?,
            author: Author::parse(self.author.as_deref().ok_or_else(|| missing("author"))?)?,
            published_year: PublishedYear::parse(i64::from(
                self.published_year
                    .ok_or_else(|| missing("publishedYear"))?,
            ))?,
            created_at: self
                .created_at
                .ok_or_else(|| missing("createdAt"))?
                .to_chrono(),
            updated_at: self
                .updated_at
                .ok_or_else(|| missing("updatedAt"))?
                .to_chrono(),
        };
        Ok(Book {
            id: BookId::parse(&self.id.to_hex())?,
            state,
            version: u64::try_from(self.version)?,
        })
    }
}

fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    match &*error.kind {
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}
