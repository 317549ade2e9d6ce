//! The author summaries: one document per author key in the `authors`
//! collection, always rebuilt from the live books of that author, never
//! incremented, so duplicates, reordering and redelivery cannot skew it.
//!
//! Why it converges with several replicas: every writer of a summary reads
//! the books again after its write and writes again until what it wrote
//! equals what the books say (up to `MAX_ROUNDS`, then the event is retried
//! later). Take the last summary write of a key, by replica R. Any book
//! change for that key made after R's final read would make its own replica
//! write the summary afterwards, so it would not be the last write. Hence
//! no book of the key changed after R's final read, and R saw that read
//! agree with what it wrote: the summary left in place is the one the
//! final books give. A crash between a book write and its summary write
//! leaves the event unacknowledged; its redelivery finds the book stale and
//! recomputes all the same.

use bson::doc;
use futures::TryStreamExt;
use mongodb::Database;
use platform::mongo::is_duplicate_key;
use serde::{Deserialize, Serialize};

use crate::generation::{ActiveGeneration, Collections};

/// Writes of one summary before giving up on a burst of concurrent changes.
const MAX_ROUNDS: usize = 5;

/// What the books of one author add up to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorSummary {
    /// The author's name as spelled on their earliest created book.
    #[schema(example = "Ursula K. Le Guin")]
    pub author: String,
    /// Live (not deleted) books by the author.
    #[schema(minimum = 1, example = 2)]
    pub book_count: u64,
    /// The earliest `publishedYear` of those books.
    #[schema(example = 1969)]
    pub first_published_year: i32,
    /// The latest `publishedYear` of those books.
    #[schema(example = 1974)]
    pub last_published_year: i32,
    /// Every title, sorted (by code point); duplicates are kept.
    #[schema(example = json!(["The Dispossessed", "The Left Hand of Darkness"]))]
    pub titles: Vec<String>,
}

/// A summary as stored; `_id` is the author key.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SummaryRecord {
    author: String,
    book_count: i64,
    first_published_year: i32,
    last_published_year: i32,
    titles: Vec<String>,
}

/// The fields of a live book a summary needs.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BookFields {
    title: String,
    author: String,
    published_year: i32,
}

/// A summary that kept changing under concurrent writers; the event that
/// asked for it is retried later.
#[derive(Debug, thiserror::Error)]
#[error("the summary of author {0:?} kept changing under concurrent writers")]
pub struct Contended(pub String);

#[derive(Clone)]
pub struct AuthorSummaries {
    generation: ActiveGeneration,
}

impl AuthorSummaries {
    /// The summaries of `db`'s first generation.
    pub fn new(db: &Database) -> Self {
        Self::on(ActiveGeneration::new(db))
    }

    /// The summaries of whatever generation is active.
    pub fn on(generation: ActiveGeneration) -> Self {
        Self { generation }
    }

    /// The stored summary of the author with this key.
    #[tracing::instrument(skip(self))]
    pub async fn get(&self, key: &str) -> anyhow::Result<Option<AuthorSummary>> {
        let Some(record) = self
            .generation
            .collections()
            .authors
            .clone_with_type::<SummaryRecord>()
            .find_one(doc! { "_id": key })
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(AuthorSummary {
            author: record.author,
            book_count: u64::try_from(record.book_count)?,
            first_published_year: record.first_published_year,
            last_published_year: record.last_published_year,
            titles: record.titles,
        }))
    }

    /// Rebuilds the summary of `key` from the books until it holds what
    /// the books say (see the module docs for why this converges).
    #[tracing::instrument(skip(self))]
    pub async fn recompute(&self, key: &str) -> anyhow::Result<()> {
        // One generation throughout, even if a switch happens meanwhile.
        let collections = self.generation.collections();
        let mut summary = compute(&collections, key).await?;
        for _ in 0..MAX_ROUNDS {
            let written = write(&collections, key, summary.as_ref()).await?;
            let now = compute(&collections, key).await?;
            if written && now == summary {
                return Ok(());
            }
            tracing::debug!(key, "author summary changed while written; writing again");
            summary = now;
        }
        Err(Contended(key.to_owned()).into())
    }
}

/// The summary the live books of `key` give; `None` when there is none.
async fn compute(
    collections: &Collections,
    key: &str,
) -> mongodb::error::Result<Option<AuthorSummary>> {
    // Creation order, so the first book gives the author's spelling;
    // served by the `{authorKey, createdAt, _id}` index.
    let books: Vec<BookFields> = collections
        .books
        .clone_with_type::<BookFields>()
        .find(doc! { "authorKey": key, "deleted": false })
        .sort(doc! { "createdAt": 1, "_id": 1 })
        .projection(doc! { "_id": 0, "title": 1, "author": 1, "publishedYear": 1 })
        .await?
        .try_collect()
        .await?;
    Ok(summarize(books))
}

/// Stores `summary` (removes it for `None`); `false` when a concurrent
/// upsert of the same key won the insert, so nothing was written.
async fn write(
    collections: &Collections,
    key: &str,
    summary: Option<&AuthorSummary>,
) -> anyhow::Result<bool> {
    match summary {
        None => {
            collections.authors.delete_one(doc! { "_id": key }).await?;
        }
        Some(summary) => {
            let document = doc! {
                "_id": key,
                "author": summary.author.as_str(),
                "bookCount": i64::try_from(summary.book_count)?,
                "firstPublishedYear": summary.first_published_year,
                "lastPublishedYear": summary.last_published_year,
                "titles": &summary.titles,
            };
            let replaced = collections
                .authors
                .replace_one(doc! { "_id": key }, document)
                .upsert(true)
                .await;
            match replaced {
                Ok(_) => {}
                Err(error) if is_duplicate_key(&error) => return Ok(false),
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(true)
}

/// The summary of these books, given in creation order.
fn summarize(books: Vec<BookFields>) -> Option<AuthorSummary> {
    let first = books.first()?;
    let author = first.author.clone();
    let years = books.iter().map(|b| b.published_year);
    let first_published_year = years.clone().min()?;
    let last_published_year = years.max()?;
    let book_count = books.len() as u64;
    let mut titles: Vec<String> = books.into_iter().map(|b| b.title).collect();
    titles.sort_unstable();
    Some(AuthorSummary {
        author,
        book_count,
        first_published_year,
        last_published_year,
        titles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(title: &str, author: &str, year: i32) -> BookFields {
        BookFields {
            title: title.to_owned(),
            author: author.to_owned(),
            published_year: year,
        }
    }

    #[test]
    fn no_books_make_no_summary() {
        assert_eq!(summarize(Vec::new()), None);
    }

    #[test]
    fn the_summary_takes_the_first_spelling_the_year_range_and_every_title() {
        let summary = summarize(vec![
            book("The Word for World Is Forest", "Ursula K. Le Guin", 1972),
            book("Lathe of Heaven", "URSULA K. LE GUIN", 1971),
            book("Lathe of Heaven", "ursula k. le guin", 1976),
        ])
        .unwrap();
        assert_eq!(
            summary,
            AuthorSummary {
                author: "Ursula K. Le Guin".into(),
                book_count: 3,
                first_published_year: 1971,
                last_published_year: 1976,
                titles: vec![
                    "Lathe of Heaven".into(),
                    "Lathe of Heaven".into(),
                    "The Word for World Is Forest".into()
                ],
            }
        );
    }
}
