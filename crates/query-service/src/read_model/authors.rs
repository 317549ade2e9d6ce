//! The author summaries: one document per author key, holding the figures
//! served and one entry per live book of the author, rewritten from the
//! read model's books under a revision check, never incremented, so
//! duplicates and replicas cannot skew it (docs/ARCHITECTURE.md says why it
//! converges).

use std::{collections::BTreeSet, future::IntoFuture, time::Duration};

use bson::{doc, oid::ObjectId, DateTime, Document};
use futures::TryStreamExt;
use mongodb::{Collection, Database};
use platform::{backoff::Backoff, error::Failure, mongo::is_duplicate_key};
use serde::{Deserialize, Serialize};

use super::generation::ActiveGeneration;

/// Writes of one summary before giving up on a burst of concurrent changes
/// (the event is retried later), and the waits between them.
const MAX_ROUNDS: u32 = 16;
const RETRY_BASE: Duration = Duration::from_millis(2);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// What the books of one author add up to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

/// What a writer reads of a stored summary: its revision, new at every
/// write, and its entries.
#[derive(Debug, Deserialize)]
struct Revision {
    rev: ObjectId,
    books: Vec<Entry>,
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
    pub async fn get(&self, key: &str) -> Result<Option<AuthorSummary>, Failure> {
        Ok(self
            .generation
            .collections()
            .authors
            .clone_with_type::<AuthorSummary>()
            .find_one(doc! { "_id": key })
            .projection(doc! { "books": 0, "rev": 0 })
            .await?)
    }

    /// Brings the entries of `books` in the summary of `key` up to what the
    /// read model holds.
    #[tracing::instrument(skip(self, books), fields(books = books.len()))]
    pub async fn update(&self, key: &str, books: &BTreeSet<ObjectId>) -> Result<(), Failure> {
        self.converge(key, Scope::Books(books)).await
    }

    /// Rebuilds the summary of `key` from all of the author's books.
    #[tracing::instrument(skip(self))]
    pub async fn rebuild(&self, key: &str) -> Result<(), Failure> {
        self.converge(key, Scope::All).await
    }

    async fn converge(&self, key: &str, scope: Scope<'_>) -> Result<(), Failure> {
        // One generation throughout, even if a switch happens meanwhile.
        let collections = self.generation.collections();
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
        for round in 0..MAX_ROUNDS {
            if round > 0 {
                tokio::time::sleep(backoff.next_jittered()).await;
            }
            // The summary first, then the books: that order is what makes
            // concurrent writers converge.
            let (rev, kept) = match collections
                .authors
                .clone_with_type::<Revision>()
                .find_one(doc! { "_id": key })
                .projection(doc! { "rev": 1, "books": 1 })
                .await?
            {
                Some(stored) => (Some(stored.rev), stored.books),
                None => (None, Vec::new()),
            };
            let entries = match &scope {
                Scope::Books(books) => {
                    let mut entries = read_entries(&collections.books, key, books).await?;
                    entries.extend(kept.iter().filter(|e| !books.contains(&e.id)).cloned());
                    in_creation_order(entries)
                }
                Scope::All => read_all_entries(&collections.books, key).await?,
            };
            if kept == entries {
                return Ok(());
            }
            if write(&collections.authors, key, rev, &entries).await? {
                return Ok(());
            }
            tracing::debug!(key, "author summary changed while written; reading again");
        }
        Err(Failure::Transient(anyhow::anyhow!(
            "the summary of author {key:?} kept changing under concurrent writers"
        )))
    }
}

/// The entries of those of `books` that are live under `key`: point
/// lookups by `_id`, run concurrently, each checked here.
async fn read_entries(
    books: &Collection<Document>,
    key: &str,
    ids: &BTreeSet<ObjectId>,
) -> Result<Vec<Entry>, Failure> {
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
/// when there are none) if it is still at `rev` (`None`: absent). Returns
/// whether it was.
async fn write(
    authors: &Collection<Document>,
    key: &str,
    rev: Option<ObjectId>,
    entries: &[Entry],
) -> Result<bool, Failure> {
    let Some(summary) = summarize(entries) else {
        let Some(rev) = rev else { return Ok(true) };
        let deleted = authors.delete_one(doc! { "_id": key, "rev": rev }).await?;
        return Ok(deleted.deleted_count == 1);
    };
    let document = doc! {
        "_id": key,
        "author": summary.author.as_str(),
        "bookCount": entries.len() as i64,
        "firstPublishedYear": summary.first_published_year,
        "lastPublishedYear": summary.last_published_year,
        "titles": &summary.titles,
        "books": bson::to_bson(entries)?,
        "rev": ObjectId::new(),
    };
    let written = match rev {
        Some(rev) => authors
            .replace_one(doc! { "_id": key, "rev": rev }, document)
            .await
            .map(|result| result.matched_count == 1),
        // A concurrent writer may insert it first: a duplicate key.
        None => authors.insert_one(document).await.map(|_| true),
    };
    match written {
        Err(error) if is_duplicate_key(&error) => Ok(false),
        other => Ok(other?),
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
