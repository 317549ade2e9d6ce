//! A book document as both services store it: the write model's books and
//! the read model's books share these fields, and both keep a deleted book
//! as a versioned tombstone.

use bson::{oid::ObjectId, DateTime};
use domain::{Author, Book, BookId, BookState, PublishedYear, Title};
use serde::Deserialize;

/// The document id of the book with this id.
pub fn object_id(id: &BookId) -> ObjectId {
    ObjectId::parse_str(id.as_str()).expect("a BookId is an ObjectId")
}

/// The fields of a stored book document that make up a `Book`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BookDocument {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub version: i64,
    #[serde(default)]
    pub deleted: bool,
    pub title: Option<String>,
    pub author: Option<String>,
    pub published_year: Option<i64>,
    pub created_at: Option<DateTime>,
    pub updated_at: Option<DateTime>,
}

/// A book as a model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredBook {
    Live(Book),
    /// Deleted at this version; the document stays as a tombstone.
    Deleted {
        version: u64,
    },
}

impl StoredBook {
    pub fn version(&self) -> u64 {
        match self {
            StoredBook::Live(book) => book.version,
            StoredBook::Deleted { version } => *version,
        }
    }
}

/// A stored document that is not a valid book: a bug or a foreign writer.
#[derive(Debug, thiserror::Error)]
#[error("stored book {id} is not valid: {reason}")]
pub struct CorruptBook {
    pub id: ObjectId,
    pub reason: String,
}

impl BookDocument {
    /// The book or tombstone this document holds.
    pub fn into_stored(self) -> Result<StoredBook, CorruptBook> {
        let id = self.id;
        let corrupt = |reason: String| CorruptBook { id, reason };
        let version = u64::try_from(self.version).map_err(|e| corrupt(e.to_string()))?;
        if self.deleted {
            return Ok(StoredBook::Deleted { version });
        }
        let missing = |field: &str| corrupt(format!("no {field}"));
        let invalid = |error: domain::FieldError| corrupt(error.to_string());
        let state = BookState {
            title: Title::parse(self.title.as_deref().ok_or_else(|| missing("title"))?)
                .map_err(invalid)?,
            author: Author::parse(self.author.as_deref().ok_or_else(|| missing("author"))?)
                .map_err(invalid)?,
            published_year: PublishedYear::parse(
                self.published_year
                    .ok_or_else(|| missing("publishedYear"))?,
            )
            .map_err(invalid)?,
            created_at: self
                .created_at
                .ok_or_else(|| missing("createdAt"))?
                .to_chrono(),
            updated_at: self
                .updated_at
                .ok_or_else(|| missing("updatedAt"))?
                .to_chrono(),
        };
        Ok(StoredBook::Live(Book {
            id: BookId::parse(&id.to_hex()).expect("an ObjectId is 24 hex digits"),
            state,
            version,
        }))
    }

    /// The live book this document holds; a tombstone is an error here.
    pub fn into_book(self) -> Result<Book, CorruptBook> {
        let id = self.id;
        match self.into_stored()? {
            StoredBook::Live(book) => Ok(book),
            StoredBook::Deleted { .. } => Err(CorruptBook {
                id,
                reason: "deleted".to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, from_document};

    fn document(extra: bson::Document) -> BookDocument {
        let mut base = doc! {
            "_id": ObjectId::new(),
            "version": 3_i64,
            "title": "Dune",
            "author": "Frank Herbert",
            "publishedYear": 1965_i32,
            "createdAt": DateTime::now(),
            "updatedAt": DateTime::now(),
        };
        base.extend(extra);
        from_document(base).unwrap()
    }

    #[test]
    fn a_live_document_is_a_book_at_its_version() {
        let StoredBook::Live(book) = document(doc! {}).into_stored().unwrap() else {
            panic!("not live");
        };
        assert_eq!(book.version, 3);
        assert_eq!(book.state.published_year.value(), 1965);
    }

    #[test]
    fn a_tombstone_is_deleted_at_its_version() {
        let stored = document(doc! { "deleted": true }).into_stored().unwrap();
        assert_eq!(stored, StoredBook::Deleted { version: 3 });
    }

    #[test]
    fn a_document_with_an_invalid_field_is_corrupt() {
        assert!(document(doc! { "title": "  " }).into_stored().is_err());
        assert!(document(doc! { "version": -1_i64 }).into_stored().is_err());
    }
}
