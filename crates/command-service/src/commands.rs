//! What the book commands do, apart from HTTP: each stores the new version
//! with its event in one document write, a compare-and-set on the version
//! it read, then hands the event to the relay.

use std::time::Duration;

use bson::oid::ObjectId;
use chrono::{SubsecRound, Utc};
use domain::{Book, BookDraft, BookEvent, BookId, BookPatch};
use platform::{
    backoff::Backoff,
    document::{object_id, StoredBook},
    http::etag,
    mongo::is_duplicate_key,
    problem::{FieldProblem, ProblemKind},
    ApiError, Problem,
};

use sha2::{Digest, Sha256};

use crate::{auth::TokenDigest, relay::Stored, state::AppState};

/// How many times a change is tried, losing a compare-and-set to a
/// concurrent writer each time, before answering 409.
const MAX_ATTEMPTS: u32 = 16;
/// Waits after a lost compare-and-set, spread so that the writers who
/// collided do not collide again.
const RETRY: Backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(64));

/// A change to an existing book.
pub enum Change {
    Replace(BookDraft),
    Patch(BookPatch),
    Delete,
}

/// What a change did.
pub enum Outcome {
    /// A new version was written.
    Changed(Book),
    /// The change would not alter the book: nothing was written.
    Unchanged(Book),
    /// The book was deleted; this is the version the deletion made.
    Deleted(u64),
}

/// An `If-Match` precondition (RFC 9110 §13.1.1), compared strongly: only
/// the strong tags are kept.
#[derive(Debug, PartialEq, Eq)]
pub enum IfMatch {
    Any,
    Tags(Vec<String>),
}

impl IfMatch {
    pub fn matches(&self, version: u64) -> bool {
        match self {
            Self::Any => true,
            Self::Tags(tags) => tags.contains(&version.to_string()),
        }
    }
}

/// A create that may be retried: the caller's `Idempotency-Key`, scoped to
/// the caller.
pub struct Idempotency {
    pub caller: TokenDigest,
    pub key: String,
}

impl Idempotency {
    /// The id of the book this caller creates with this key: the `_id`
    /// index then lets one insert at most succeed, atomically with the book.
    fn book_id(&self) -> ObjectId {
        let digest = Sha256::new()
            .chain_update(b"books idempotency key\0")
            .chain_update(self.caller)
            .chain_update(self.key.as_bytes())
            .finalize();
        let mut id = [0; 12];
        id.copy_from_slice(&digest[..12]);
        ObjectId::from_bytes(id)
    }
}

/// What a create did.
pub enum Created {
    New(Book),
    /// The key was used before with the same book: nothing was written,
    /// and this is the book that request created.
    Replayed(Book),
}

/// Stores a new book with its creation event, once per idempotency key.
pub async fn create(
    state: &AppState,
    draft: BookDraft,
    traceparent: &str,
    idempotency: Option<Idempotency>,
) -> Result<Created, ApiError> {
    let object_id = idempotency
        .as_ref()
        .map_or_else(ObjectId::new, Idempotency::book_id);
    let id = BookId::parse(&object_id.to_hex()).expect("an ObjectId is 24 hex digits");
    tracing::Span::current().record("book_id", id.as_str());
    let fingerprint = idempotency.as_ref().map(|_| fingerprint(&draft));
    let book = Book::create(id.clone(), draft.clone(), now());
    let stored = Stored::new(
        object_id,
        &BookEvent::created(&book, Some(traceparent.to_owned())),
    );
    match state
        .store
        .insert(object_id, &book, &stored.json, fingerprint.as_deref())
        .await
    {
        Ok(()) => {
            state.outbox.notify(stored);
            Ok(Created::New(book))
        }
        // The key's book exists: the same request, retried or concurrent.
        Err(error) if fingerprint.is_some() && is_duplicate_key(&error) => {
            let Some((stored_fingerprint, created_at)) = state.store.creation(object_id).await?
            else {
                return Err(ApiError::Internal(error.into()));
            };
            if stored_fingerprint != fingerprint {
                return Err(Problem::validation(vec![FieldProblem {
                    field: "Idempotency-Key".to_owned(),
                    rule: "reused".to_owned(),
                    detail: "was sent before with another book; use a new key for a new book"
                        .to_owned(),
                }])
                .into());
            }
            Ok(Created::Replayed(Book::create(id, draft, created_at)))
        }
        Err(error) => Err(error.into()),
    }
}

/// What identifies a create's content, once validated and normalized.
fn fingerprint(draft: &BookDraft) -> String {
    let digest = Sha256::new()
        .chain_update(draft.title.as_str())
        .chain_update([0])
        .chain_update(draft.author.as_str())
        .chain_update([0])
        .chain_update(draft.published_year.value().to_be_bytes())
        .finalize();
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Reads the current version, checks the precondition, and writes the next
/// version with a compare-and-set; a write that loses to a concurrent one
/// starts over from the version that won (where `If-Match` then fails).
pub async fn change(
    state: &AppState,
    id: &BookId,
    if_match: Option<&IfMatch>,
    change: &Change,
    traceparent: &str,
) -> Result<Outcome, ApiError> {
    let object_id = object_id(id);
    let traceparent = Some(traceparent.to_owned());
    let mut retry = RETRY;
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(retry.next_jittered()).await;
        }
        let Some(StoredBook::Live(current)) = state.store.find(object_id).await? else {
            return Err(
                Problem::new(ProblemKind::NotFound, format!("no book with id {id}")).into(),
            );
        };
        if if_match.is_some_and(|p| !p.matches(current.version)) {
            return Err(precondition_failed(&current).into());
        }
        let now = now();
        let next = match change {
            Change::Replace(draft) => current.replace(draft.clone(), now),
            Change::Patch(patch) => current.patch(patch.clone(), now),
            Change::Delete => {
                let version = current.version + 1;
                let at = now.max(current.state.updated_at);
                let event = BookEvent::deleted(id, version, at, traceparent.clone());
                let stored = Stored::new(object_id, &event);
                if state
                    .store
                    .delete(object_id, current.version, version, at, &stored.json)
                    .await?
                {
                    state.outbox.notify(stored);
                    return Ok(Outcome::Deleted(version));
                }
                continue;
            }
        };
        let Some(next) = next else {
            return Ok(Outcome::Unchanged(current));
        };
        let stored = Stored::new(object_id, &BookEvent::updated(&next, traceparent.clone()));
        if state
            .store
            .update(object_id, current.version, &next, &stored.json)
            .await?
        {
            state.outbox.notify(stored);
            return Ok(Outcome::Changed(next));
        }
    }
    Err(Problem::new(
        ProblemKind::Conflict,
        format!("book {id} kept changing under {MAX_ATTEMPTS} concurrent attempts; retry"),
    )
    .into())
}

fn precondition_failed(current: &Book) -> Problem {
    Problem::new(
        ProblemKind::PreconditionFailed,
        format!(
            "If-Match does not name the current version of book {}, which is {}",
            current.id, current.version
        ),
    )
    .with_current_version(Some(current.version))
    .with_header(axum::http::header::ETAG, etag(current.version))
}

/// MongoDB keeps milliseconds: round now so the answer, the stored book and
/// the event agree to the digit.
fn now() -> chrono::DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}
