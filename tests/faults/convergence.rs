//! Whether the read model equals the write model: both read directly from
//! FerretDB, book by book. A live book must be in the read model with the
//! same version and fields; a deleted one must be absent from it (a
//! tombstone or no document); the read model must hold no live book the
//! write model lacks or has deleted. A sample of books is also read through
//! the query services' API, which serves single books from its cache.

use std::{collections::BTreeMap, time::Duration};

use bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use futures::{StreamExt, TryStreamExt};
use platform::RedisConnection;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::time::Instant;

use redis::streams::{StreamInfoGroupsReply, StreamInfoStreamReply};

use crate::{
    burst::{Op, Outcome, Write},
    system::Names,
};

/// Books of each kind read back through the API while waiting for
/// convergence.
const API_SAMPLE: usize = 20;
/// Reads through the API in flight at once.
const API_CONCURRENCY: usize = 8;
/// Differences named in a report.
const SHOWN: usize = 10;
/// Pause between two looks at the consumer group.
const RECHECK: Duration = Duration::from_millis(250);
/// Longest time between two comparisons of the models while the consumer
/// group has not caught up with the stream. Each comparison reads both
/// collections whole, which on FerretDB takes CPU the services need.
const COMPARE_ANYWAY: Duration = Duration::from_secs(5);

/// A book as one model holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    Live {
        version: i64,
        title: String,
        author: String,
        published_year: i64,
        created_at: DateTime,
        updated_at: DateTime,
    },
    Deleted {
        version: i64,
    },
    /// A document that is not a valid book, and why.
    Corrupt(String),
}

impl State {
    pub(crate) fn version(&self) -> Option<i64> {
        match self {
            State::Live { version, .. } | State::Deleted { version } => Some(*version),
            State::Corrupt(_) => None,
        }
    }

    fn from_document(document: &Document) -> Self {
        let Some(version) = integer(document.get("version")) else {
            return State::Corrupt("no version".to_owned());
        };
        if document.get_bool("deleted").unwrap_or(false) {
            return State::Deleted { version };
        }
        let fields = (
            document.get_str("title"),
            document.get_str("author"),
            integer(document.get("publishedYear")),
            document.get_datetime("createdAt"),
            document.get_datetime("updatedAt"),
        );
        match fields {
            (Ok(title), Ok(author), Some(published_year), Ok(created_at), Ok(updated_at)) => {
                State::Live {
                    version,
                    title: title.to_owned(),
                    author: author.to_owned(),
                    published_year,
                    created_at: *created_at,
                    updated_at: *updated_at,
                }
            }
            _ => State::Corrupt(format!("missing or mistyped fields: {document}")),
        }
    }
}

fn integer(value: Option<&Bson>) -> Option<i64> {
    match value? {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) if v.fract() == 0.0 => Some(*v as i64),
        _ => None,
    }
}

/// Both models at one moment (read one after the other).
pub(crate) struct Snapshot {
    pub(crate) write: BTreeMap<ObjectId, State>,
    pub(crate) read: BTreeMap<ObjectId, State>,
}

impl Snapshot {
    pub(crate) async fn take(
        write_db: &mongodb::Database,
        read_db: &mongodb::Database,
    ) -> anyhow::Result<Self> {
        let read_books = active_books_collection(read_db).await?;
        Ok(Self {
            write: books(write_db, "books").await?,
            read: books(read_db, &read_books).await?,
        })
    }

    pub(crate) fn live(&self) -> usize {
        self.write
            .values()
            .filter(|s| matches!(s, State::Live { .. }))
            .count()
    }

    pub(crate) fn deleted(&self) -> usize {
        self.write
            .values()
            .filter(|s| matches!(s, State::Deleted { .. }))
            .count()
    }

    /// Every way the read model differs from the write model.
    pub(crate) fn differences(&self) -> Vec<String> {
        let mut differences = Vec::new();
        for (id, written) in &self.write {
            let read = self.read.get(id);
            let agrees = match (written, read) {
                (State::Live { .. }, Some(read)) => read == written,
                (State::Deleted { .. }, None | Some(State::Deleted { .. })) => true,
                _ => false,
            };
            if !agrees {
                // One version, two states: two writes both won a
                // compare-and-set from the version before.
                let forked = read.and_then(State::version) == written.version();
                differences.push(format!(
                    "book {id}: write model {written:?}, read model {}{}",
                    read.map_or("none".to_owned(), |r| format!("{r:?}")),
                    if forked {
                        " (two states at one version: two writes won from the same version)"
                    } else {
                        ""
                    }
                ));
            }
        }
        for (id, read) in &self.read {
            let stray = match read {
                State::Live { .. } => !matches!(self.write.get(id), Some(State::Live { .. })),
                State::Corrupt(_) => true,
                State::Deleted { .. } => false,
            };
            if stray {
                differences.push(format!(
                    "book {id}: read model {read:?}, write model {}",
                    self.write
                        .get(id)
                        .map_or("none".to_owned(), |w| format!("{w:?}"))
                ));
            }
        }
        differences
    }

    /// Acknowledged writes the models do not hold: each acknowledged
    /// (book, version) must be at most what both models hold, and an
    /// acknowledged delete must have left the book deleted.
    pub(crate) fn missing_acknowledged(&self, writes: &[Write]) -> Vec<String> {
        let mut missing = Vec::new();
        for write in writes {
            let Outcome::Acknowledged { id, version } = &write.outcome else {
                continue;
            };
            let version = *version as i64;
            let Ok(oid) = ObjectId::parse_str(id) else {
                missing.push(format!("acknowledged {:?} of an invalid id {id}", write.op));
                continue;
            };
            let written = self.write.get(&oid);
            let held_by_write = written
                .and_then(State::version)
                .is_some_and(|v| v >= version);
            let deleted = matches!(written, Some(State::Deleted { .. }));
            if !held_by_write || (write.op == Op::Delete && !deleted) {
                missing.push(format!(
                    "{:?} of book {id} acknowledged at version {version}; write model holds {written:?}",
                    write.op
                ));
            }
            // A deleted book may be absent from the read model altogether.
            let read = self.read.get(&oid);
            let held_by_read = read.and_then(State::version).is_some_and(|v| v >= version)
                || (deleted && read.is_none());
            if !held_by_read {
                missing.push(format!(
                    "{:?} of book {id} acknowledged at version {version}; read model holds {read:?}",
                    write.op
                ));
            }
        }
        missing
    }
}

/// The read model's books collection: `books`, unless a rebuild pointed
/// the read database's `readModel` document `{_id: "active"}` at a newer
/// generation `g`, whose books are in `books_g`.
async fn active_books_collection(read_db: &mongodb::Database) -> anyhow::Result<String> {
    let pointer = read_db
        .collection::<Document>("readModel")
        .find_one(doc! { "_id": "active" })
        .await?;
    Ok(
        match pointer.as_ref().and_then(|p| p.get_str("generation").ok()) {
            Some(generation) if !generation.is_empty() => format!("books_{generation}"),
            _ => "books".to_owned(),
        },
    )
}

async fn books(
    db: &mongodb::Database,
    collection: &str,
) -> anyhow::Result<BTreeMap<ObjectId, State>> {
    let documents: Vec<Document> = db
        .collection::<Document>(collection)
        .find(doc! {})
        .projection(doc! { "outbox": 0, "outboxAt": 0 })
        .await?
        .try_collect()
        .await?;
    Ok(documents
        .iter()
        .filter_map(|d| Some((d.get_object_id("_id").ok()?, State::from_document(d))))
        .collect())
}

/// Reads up to `sample` live and as many deleted books through each query
/// service (which serves them from its cache when it holds them), a few at
/// a time: a live one must answer 200 with the write model's version and
/// fields, a deleted one 404. Returns the disagreements.
pub(crate) async fn api_differences(
    http: &reqwest::Client,
    query_urls: &[String],
    snapshot: &Snapshot,
    sample: usize,
) -> Vec<String> {
    let live: Vec<(&ObjectId, &State)> = snapshot
        .write
        .iter()
        .filter(|(_, s)| matches!(s, State::Live { .. }))
        .collect();
    let deleted: Vec<(&ObjectId, &State)> = snapshot
        .write
        .iter()
        .filter(|(_, s)| matches!(s, State::Deleted { .. }))
        .collect();
    let books: Vec<&(&ObjectId, &State)> = spread(&live, sample)
        .into_iter()
        .chain(spread(&deleted, sample))
        .collect();
    // Futures of owned data, made up front: a stream mapping borrowed
    // items would not be `Send` for every lifetime, which spawning needs.
    let reads: Vec<_> = query_urls
        .iter()
        .flat_map(|url| books.iter().map(move |(id, state)| (url, id, state)))
        .map(|(url, id, state)| api_difference(http.clone(), url.clone(), **id, (*state).clone()))
        .collect();
    futures::stream::iter(reads)
        .buffered(API_CONCURRENCY)
        .filter_map(futures::future::ready)
        .collect()
        .await
}

/// How `GET <url>/books/<id>` differs from `state`, if it does.
async fn api_difference(
    http: reqwest::Client,
    url: String,
    id: ObjectId,
    state: State,
) -> Option<String> {
    let answer = http.get(format!("{url}/books/{id}")).send().await;
    let problem = match (&state, answer) {
        (_, Err(error)) => Some(format!("no answer: {error}")),
        (State::Deleted { .. }, Ok(r)) if r.status() == StatusCode::NOT_FOUND => None,
        (State::Deleted { .. }, Ok(r)) => Some(format!("{} for a deleted book", r.status())),
        (
            State::Live {
                version,
                title,
                author,
                published_year,
                ..
            },
            Ok(r),
        ) => {
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let same = status == StatusCode::OK
                && body["version"].as_i64() == Some(*version)
                && body["title"].as_str() == Some(title)
                && body["author"].as_str() == Some(author)
                && body["publishedYear"].as_i64() == Some(*published_year);
            (!same).then(|| format!("{status} {body} for {state:?}"))
        }
        (State::Corrupt(_), Ok(_)) => None,
    };
    problem.map(|problem| format!("GET {url}/books/{id}: {problem}"))
}

/// Up to `sample` items spread evenly over `items`.
fn spread<T>(items: &[T], sample: usize) -> Vec<&T> {
    if items.is_empty() {
        return Vec::new();
    }
    let step = items.len().div_ceil(sample);
    items.iter().step_by(step).collect()
}

/// The outcome of waiting for the models to agree.
pub(crate) struct Convergence {
    /// From the end of the burst to the first comparison that found no
    /// difference; `None` when the deadline passed first.
    pub(crate) after: Option<Duration>,
    /// The last comparison.
    pub(crate) snapshot: Option<Snapshot>,
    /// What still differed at the deadline (the first few).
    pub(crate) differences: Vec<String>,
    pub(crate) difference_count: usize,
}

/// Where to look.
pub(crate) struct Models<'a> {
    pub(crate) write_db: mongodb::Database,
    pub(crate) read_db: mongodb::Database,
    pub(crate) redis: RedisConnection,
    pub(crate) names: &'a Names,
    pub(crate) http: reqwest::Client,
    pub(crate) query_urls: Vec<String>,
}

/// Whether the query services' group has been handed every entry of every
/// partition of the stream and acknowledged all of them; `None` when Redis
/// does not say.
pub(crate) async fn caught_up(redis: &RedisConnection, names: &Names) -> Option<bool> {
    let mut connection = redis.clone();
    for partition in names.partitions.streams() {
        let stream: StreamInfoStreamReply = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&partition)
            .query_async(&mut connection)
            .await
            .ok()?;
        let groups: StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&partition)
            .query_async(&mut connection)
            .await
            .ok()?;
        let group = groups.groups.iter().find(|g| g.name == names.group)?;
        if group.pending != 0 || group.last_delivered_id != stream.last_generated_id {
            return Some(false);
        }
    }
    Some(true)
}

/// Compares the models (and the API sample) until they agree or `deadline`
/// after `since` passes.
pub(crate) async fn converge(
    models: &Models<'_>,
    since: Instant,
    deadline: Duration,
) -> Convergence {
    let give_up = since + deadline;
    let mut last = Convergence {
        after: None,
        snapshot: None,
        differences: vec!["the models could not be read".to_owned()],
        difference_count: 1,
    };
    let mut next_comparison = Instant::now();
    loop {
        let now = Instant::now();
        // Until the group has caught up, the models are compared only every
        // `COMPARE_ANYWAY`.
        let compare = now >= next_comparison
            || now >= give_up
            || caught_up(&models.redis, models.names).await == Some(true);
        if !compare {
            tokio::time::sleep(RECHECK).await;
            continue;
        }
        next_comparison = Instant::now() + COMPARE_ANYWAY;
        match Snapshot::take(&models.write_db, &models.read_db).await {
            Ok(snapshot) => {
                let mut differences = snapshot.differences();
                if differences.is_empty() {
                    differences =
                        api_differences(&models.http, &models.query_urls, &snapshot, API_SAMPLE)
                            .await;
                }
                if differences.is_empty() {
                    return Convergence {
                        after: Some(since.elapsed()),
                        snapshot: Some(snapshot),
                        differences,
                        difference_count: 0,
                    };
                }
                last = Convergence {
                    after: None,
                    snapshot: Some(snapshot),
                    difference_count: differences.len(),
                    differences: differences.into_iter().take(SHOWN).collect(),
                };
            }
            Err(error) => {
                last.differences = vec![format!("the models could not be read: {error:#}")];
            }
        }
        if Instant::now() >= give_up {
            return last;
        }
        tokio::time::sleep(RECHECK).await;
    }
}
