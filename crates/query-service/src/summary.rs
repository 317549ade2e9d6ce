//! The author summaries: one document per author key in the `authors`
//! collection. Besides the figures it serves, each holds one entry per live
//! book of the author (`books`: title, author, year, creation time, keyed by
//! the book's id) and a revision token (`rev`, new at every write).
//!
//! An event changes the summaries of the keys its book ever had by
//! replacing that book's entry with what the read model holds now (or
//! removing it), then recomputing the figures from the entries. Every read
//! is an `_id` lookup, so a change costs the same however many books the
//! author or the catalogue has; only a rebuild (a new generation, a summary
//! written before entries were kept) reads the author's books by key.
//!
//! Never an increment: an entry is the book's current state, so duplicates,
//! reordering and redelivery cannot skew a summary. Why it converges with
//! several replicas: a writer reads the summary, then the books, then
//! replaces the summary only if its `rev` is still the one read, reading
//! both again when it was not (up to `MAX_ROUNDS`, then the event is
//! retried later). Take book B's last change, written to the
//! read model at time t, and the replica R that applied it. R's successful
//! write read the summary after t, since it read it after its own book
//! write, and B's entry from a read after that: the final state. A later
//! successful write by anyone read the summary after R's write (the `rev`
//! changed), hence read B, if it touched B, after t as well. So every entry
//! ends as its book's final state. A crash between a book write and its
//! summary write leaves the event unacknowledged; its redelivery finds the
//! book stale and updates the summaries all the same.
//!
//! The `rev` check is in the write's filter, which MongoDB applies
//! atomically with the write.

use std::{collections::BTreeSet, future::IntoFuture, time::Duration};

use bson::{doc, oid::ObjectId, DateTime, Document};
use futures::TryStreamExt;
use mongodb::{Collection, Database};
use platform::mongo::is_duplicate_key;
use serde::{Deserialize, Serialize};

use crate::generation::ActiveGeneration;

/// Writes of one summary before giving up on a burst of concurrent changes,
/// and the waits between them (see `platform::backoff`).
const MAX_ROUNDS: u32 = 16;
const RETRY_BASE: Duration = Duration::from_millis(2);
const RETRY_MAX: Duration = Duration::from_secs(1);

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

/// A summary as served; `_id` is the author key.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SummaryRecord {
    author: String,
    book_count: i64,
    first_published_year: i32,
    last_published_year: i32,
    titles: Vec<String>,
}

/// What a writer reads of a stored summary.
#[derive(Debug, Deserialize)]
struct Revision {
    /// Absent on a summary written before entries were kept.
    rev: Option<ObjectId>,
    books: Option<Vec<Entry>>,
}

/// One live book of the author, as the summary counts it. Also the shape a
/// book is read in from the read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    #[serde(rename = "_id")]
    id: ObjectId,
    title: String,
    author: String,
    published_year: i32,
    created_at: DateTime,
}

const ENTRY_FIELDS: [&str; 5] = ["_id", "title", "author", "publishedYear", "createdAt"];

/// A summary that kept changing under concurrent writers; the event that
/// asked for it is retried later.
#[derive(Debug, thiserror::Error)]
#[error("the summary of author {0:?} kept changing under concurrent writers")]
pub struct Contended(pub String);

/// Which entries a write of a summary brings up to date.
enum Scope<'a> {
    /// These books' (the others are kept as stored).
    Books(&'a BTreeSet<ObjectId>),
    /// All: the author's books are read by key.
    All,
}

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
            .projection(doc! { "books": 0, "rev": 0 })
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

    /// Brings the entries of `books` in the summary of `key` up to what the
    /// read model holds (see the module docs for why this converges).
    #[tracing::instrument(skip(self, books), fields(books = books.len()))]
    pub async fn update(&self, key: &str, books: &BTreeSet<ObjectId>) -> anyhow::Result<()> {
        self.converge(key, Scope::Books(books)).await
    }

    /// Rebuilds the summary of `key` from all of the author's books.
    #[tracing::instrument(skip(self))]
    pub async fn rebuild(&self, key: &str) -> anyhow::Result<()> {
        self.converge(key, Scope::All).await
    }

    async fn converge(&self, key: &str, scope: Scope<'_>) -> anyhow::Result<()> {
        // One generation throughout, even if a switch happens meanwhile.
        let collections = self.generation.collections();
        let mut backoff = platform::backoff::Backoff::new(RETRY_BASE, RETRY_MAX);
        for round in 0..MAX_ROUNDS {
            if round > 0 {
                tokio::time::sleep(backoff.next_jittered()).await;
            }
            // The summary first, then the books: see the module docs.
            let (rev, kept) = match collections
                .authors
                .clone_with_type::<Revision>()
                .find_one(doc! { "_id": key })
                .projection(doc! { "rev": 1, "books": 1 })
                .await?
            {
                Some(stored) => (stored.rev, stored.books),
                None => (None, Some(Vec::new())),
            };
            let entries = match (&kept, &scope) {
                (Some(kept), Scope::Books(books)) => {
                    let mut entries = read_entries(&collections.books, key, books).await?;
                    entries.extend(kept.iter().filter(|e| !books.contains(&e.id)).cloned());
                    in_creation_order(entries)
                }
                // A summary written before entries were kept is rebuilt.
                (None, _) | (_, Scope::All) => read_all_entries(&collections.books, key).await?,
            };
            if kept.as_ref() == Some(&entries) {
                return Ok(());
            }
            if write(&collections.authors, key, rev, &entries).await? {
                return Ok(());
            }
            tracing::debug!(key, "author summary changed while written; reading again");
        }
        Err(Contended(key.to_owned()).into())
    }
}

/// The entries of those of `books` that are live under `key`: point
/// lookups by `_id`, run concurrently, each checked here.
async fn read_entries(
    books: &Collection<Document>,
    key: &str,
    ids: &BTreeSet<ObjectId>,
) -> anyhow::Result<Vec<Entry>> {
    let mut projection = entry_projection();
    projection.extend(doc! { "authorKey": 1, "deleted": 1 });
    let found = futures::future::try_join_all(ids.iter().map(|id| {
        books
            .find_one(doc! { "_id": id })
            .projection(projection.clone())
            .into_future()
    }))
    .await?;
    let mut entries = Vec::new();
    for book in found.into_iter().flatten() {
        if book.get_str("authorKey") == Ok(key) && book.get_bool("deleted") == Ok(false) {
            entries.push(bson::from_document(book)?);
        }
    }
    Ok(entries)
}

/// The entries of every live book under `key`, in creation order.
async fn read_all_entries(
    books: &Collection<Document>,
    key: &str,
) -> mongodb::error::Result<Vec<Entry>> {
    // Served by the `{authorKey, createdAt, _id}` index.
    books
        .clone_with_type::<Entry>()
        .find(doc! { "authorKey": key, "deleted": false })
        .sort(doc! { "createdAt": 1, "_id": 1 })
        .projection(entry_projection())
        .await?
        .try_collect()
        .await
}

fn entry_projection() -> Document {
    ENTRY_FIELDS
        .iter()
        .map(|field| ((*field).to_owned(), 1.into()))
        .collect()
}

/// Creation order, so the first entry gives the author's spelling.
fn in_creation_order(mut entries: Vec<Entry>) -> Vec<Entry> {
    entries.sort_unstable_by_key(|e| (e.created_at, e.id));
    entries
}

/// Replaces the summary of `key` with the one `entries` give (removes it
/// when there are none) if it is still at `rev` (`None`: absent, or written
/// before revisions were kept). Returns whether it was.
async fn write(
    authors: &Collection<Document>,
    key: &str,
    rev: Option<ObjectId>,
    entries: &[Entry],
) -> anyhow::Result<bool> {
    let filter = match rev {
        Some(rev) => doc! { "_id": key, "rev": rev },
        None => doc! { "_id": key, "rev": { "$exists": false } },
    };
    let Some(summary) = summarize(entries) else {
        return Ok(authors.delete_one(filter).await?.deleted_count == 1);
    };
    let document = doc! {
        "_id": key,
        "author": summary.author.as_str(),
        "bookCount": i64::try_from(summary.book_count)?,
        "firstPublishedYear": summary.first_published_year,
        "lastPublishedYear": summary.last_published_year,
        "titles": &summary.titles,
        "books": bson::to_bson(entries)?,
        "rev": ObjectId::new(),
    };
    // Absent or without a revision: inserted, unless a concurrent writer
    // inserted it first (a duplicate key).
    match authors
        .replace_one(filter, document)
        .upsert(rev.is_none())
        .await
    {
        Ok(result) => Ok(result.matched_count == 1 || result.upserted_id.is_some()),
        Err(error) if is_duplicate_key(&error) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// The summary of these entries, given in creation order.
fn summarize(entries: &[Entry]) -> Option<AuthorSummary> {
    let first = entries.first()?;
    let years = entries.iter().map(|e| e.published_year);
    let mut titles: Vec<String> = entries.iter().map(|e| e.title.clone()).collect();
    titles.sort_unstable();
    Some(AuthorSummary {
        author: first.author.clone(),
        book_count: entries.len() as u64,
        first_published_year: years.clone().min()?,
        last_published_year: years.max()?,
        titles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(title: &str, author: &str, year: i32, created_millis: i64) -> Entry {
        Entry {
            id: ObjectId::new(),
            title: title.to_owned(),
            author: author.to_owned(),
            published_year: year,
            created_at: DateTime::from_millis(created_millis),
        }
    }

    #[test]
    fn no_books_make_no_summary() {
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn the_summary_takes_the_first_spelling_the_year_range_and_every_title() {
        let entries = in_creation_order(vec![
            entry("Lathe of Heaven", "URSULA K. LE GUIN", 1971, 2),
            entry("The Word for World Is Forest", "Ursula K. Le Guin", 1972, 1),
            entry("Lathe of Heaven", "ursula k. le guin", 1976, 3),
        ]);
        assert_eq!(
            summarize(&entries).unwrap(),
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

    #[test]
    fn books_created_at_the_same_instant_are_ordered_by_id() {
        let (a, b) = (entry("A", "X", 2000, 5), entry("B", "Y", 2000, 5));
        let (first, second) = if a.id < b.id { (a, b) } else { (b, a) };
        let ordered = in_creation_order(vec![second.clone(), first.clone()]);
        assert_eq!(ordered, vec![first, second]);
    }
}
