//! `GET /books`: the read model's books, filtered, ordered and paged with a
//! keyset cursor. `GET /books/{id}`: one book, from the Redis cache when it
//! holds it, optionally waiting for a version the client wrote.

use std::time::Duration;

use axum::{
    extract::State,
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
    Json,
};
use domain::{Book, BookId};
use platform::{
    backoff::Backoff,
    http::{etag, PathParam, QueryParams},
    problem::{parse_book_id, ProblemKind},
    ApiError, Problem,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    listing::{self, BookFilter, RawFilter, Sort, SortKey},
    lookup::BookLookup,
};
use crate::{
    read_model::{Books, Cached},
    state::AppState,
};

/// How soon a read waiting for a version looks again, besides after each
/// batch of the local consumer: another replica may apply the event.
const RECHECK: Backoff = Backoff::new(Duration::from_millis(25), Duration::from_millis(200));

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_books))
        .routes(routes!(get_book))
}

/// The query parameters of `GET /books`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only books by this author: the exact name, in any case.
    #[param(value_type = Option<domain::Author>, example = "ursula k. le guin")]
    author: Option<String>,
    /// Only books published in this year.
    #[param(minimum = -3000, maximum = 2100, example = 1969)]
    year: Option<i64>,
    /// Only books published in this year or later.
    #[param(minimum = -3000, maximum = 2100, example = 1960)]
    year_from: Option<i64>,
    /// Only books published in this year or earlier; not before `yearFrom`.
    #[param(minimum = -3000, maximum = 2100, example = 1980)]
    year_to: Option<i64>,
    /// Only books whose title contains this text, in any case.
    #[param(value_type = Option<domain::Title>, example = "darkness")]
    title: Option<String>,
    /// The order: by `createdAt` (the default), `title` or `publishedYear`;
    /// a leading `-` reverses it. Books with equal keys are ordered by id.
    #[param(inline, example = "-publishedYear")]
    sort: Option<SortParam>,
    /// Books per page, default 20; values over 100 are lowered to 100.
    #[param(minimum = 1, example = 20)]
    limit: Option<i64>,
    /// The `next` of the previous page, sent with the same filters and
    /// sort. A cursor pages through the books without skipping or
    /// repeating one, even while books are added. Opaque: only cursors
    /// this service returned are accepted.
    #[param(
        min_length = 1,
        pattern = "^[A-Za-z0-9_-]+$",
        example = "eyJzIjoiY3JlYXRlZEF0IiwidiI6MTcxNDU1NzYwMDEyMywiaWQiOiI2NWExYjJjM2Q0ZTVmNjA3MTgyOTNhNGIiLCJmIjoiMHR6bXpyVmpHbTJ1R3ZYVSJ9"
    )]
    cursor: Option<String>,
}

/// The order of a list.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
enum SortParam {
    #[serde(rename = "createdAt")]
    CreatedAt,
    #[serde(rename = "-createdAt")]
    CreatedAtDescending,
    #[serde(rename = "title")]
    Title,
    #[serde(rename = "-title")]
    TitleDescending,
    #[serde(rename = "publishedYear")]
    PublishedYear,
    #[serde(rename = "-publishedYear")]
    PublishedYearDescending,
}

impl From<SortParam> for Sort {
    fn from(param: SortParam) -> Self {
        let (key, descending) = match param {
            SortParam::CreatedAt => (SortKey::CreatedAt, false),
            SortParam::CreatedAtDescending => (SortKey::CreatedAt, true),
            SortParam::Title => (SortKey::Title, false),
            SortParam::TitleDescending => (SortKey::Title, true),
            SortParam::PublishedYear => (SortKey::PublishedYear, false),
            SortParam::PublishedYearDescending => (SortKey::PublishedYear, true),
        };
        Sort { key, descending }
    }
}

/// One page of books.
#[derive(Debug, Serialize, ToSchema)]
struct BookPage {
    items: Vec<Book>,
    /// The cursor of the next page; `null` on the last page.
    #[schema(required = true)]
    next: Option<String>,
}

/// The books of the read model (deleted books are never listed), one page
/// at a time.
#[utoipa::path(
    get,
    path = "/books",
    tag = "books",
    params(ListParams),
    responses(
        (status = 200, description = "One page of books, and the cursor of the next one", body = BookPage),
        (status = 400, description = "A query parameter is unknown, of the wrong type, out of range, or a cursor of another query", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "MongoDB does not answer in time", body = Problem, content_type = "application/problem+json"),
        platform::openapi::Unexpected,
    )
)]
#[tracing::instrument(name = "list_books", skip(books))]
async fn list_books(
    State(books): State<Books>,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<BookPage>, ApiError> {
    let filter = BookFilter::parse(&RawFilter {
        author: params.author.as_deref(),
        year: params.year,
        year_from: params.year_from,
        year_to: params.year_to,
        title: params.title.as_deref(),
    })?;
    let sort = params.sort.map(Sort::from).unwrap_or_default();
    let limit = listing::limit(params.limit)?;
    let after = params
        .cursor
        .as_deref()
        .map(|raw| listing::parse_cursor(raw, sort, &filter))
        .transpose()?;
    // One more than a page tells whether another page follows.
    let mut items = books.list(&filter, sort, after.as_ref(), limit + 1).await?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items
            .last()
            .map(|last| listing::next_cursor(sort, &filter, last))
    } else {
        None
    };
    Ok(Json(BookPage { items, next }))
}

/// The query parameters of `GET /books/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct GetParams {
    /// Read your own write: answer only once the book is at this version
    /// or later (the `version` a write answered), waiting a moment if the
    /// read model is behind; 503 if it does not catch up in time.
    #[param(minimum = 1, example = 2)]
    min_version: Option<i64>,
}

/// One book. Served from the Redis cache when it holds the book; the
/// `ETag` is the book's version.
#[utoipa::path(
    get,
    path = "/books/{id}",
    tag = "books",
    params(("id" = String, Path, description = "The book's id: 24 hexadecimal digits", pattern = "^[0-9a-fA-F]{24}$", example = "65a1b2c3d4e5f60718293a4b"), GetParams),
    responses(
        (status = 200, description = "The book", body = Book,
            headers(("ETag" = String, description = "The book's version, quoted: `\"3\"`"))),
        (status = 400, description = "The id is not 24 hexadecimal digits, `minVersion` is not an integer of at least 1, or a query parameter is unknown", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such book, or it was deleted (with `minVersion`: deleted at that version or later)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The read model did not reach `minVersion` in time (type `urn:books:problem:not-caught-up`, with `requiredVersion`, `currentVersion` and `Retry-After`), or MongoDB does not answer in time", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before asking again (not-caught-up only)"))),
        platform::openapi::Unexpected,
    )
)]
#[tracing::instrument(name = "get_book", skip(state))]
async fn get_book(
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    QueryParams(params): QueryParams<GetParams>,
) -> Result<Response, ApiError> {
    let id = parse_book_id(&id)?;
    let entry = match params.min_version {
        None => state.lookup.current(&id).await?,
        Some(min) if min >= 1 => {
            let min = min.unsigned_abs();
            let batches = state.batches.clone();
            wait_for_version(
                &state.lookup,
                &id,
                min,
                state.read_your_writes_timeout,
                batches,
            )
            .await?
        }
        Some(min) => {
            return Err(Problem::invalid_parameter(
                "minVersion",
                "outOfRange",
                format!("must be at least 1, got {min}"),
            )
            .into())
        }
    };
    match entry {
        Some(Cached::Book { version, body }) => Ok((
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::ETAG, etag(version)),
            ],
            body,
        )
            .into_response()),
        Some(Cached::Gone { .. }) | None => {
            Err(Problem::new(ProblemKind::NotFound, format!("no book with id {id}")).into())
        }
    }
}

/// The book once it is at version `min` or later (or deleted at such a
/// version); a 503 not-caught-up problem after `timeout`.
///
/// The first and the last look read the cache, then the read model; the
/// looks between, after each local batch and on a backing-off timer, read
/// the cache alone, which consumers write before acknowledging: readers
/// waiting on a consumer that is behind cost Redis reads, not the MongoDB
/// reads the consumer needs.
async fn wait_for_version(
    lookup: &BookLookup,
    id: &BookId,
    min: u64,
    timeout: Duration,
    mut batches: tokio::sync::watch::Receiver<u64>,
) -> Result<Option<Cached>, ApiError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let caught_up = |entry: &Option<Cached>| entry.as_ref().is_some_and(|e| e.version() >= min);
    // Marked seen before looking, so a batch that ends while we look wakes
    // the wait below at once.
    batches.borrow_and_update();
    let mut entry = lookup.latest(id).await?;
    let mut recheck = RECHECK;
    let mut next_look = recheck.next_delay();
    while !caught_up(&entry) {
        if tokio::time::Instant::now() >= deadline {
            entry = lookup.latest(id).await?;
            if caught_up(&entry) {
                break;
            }
            let version = entry.as_ref().map(Cached::version);
            return Err(Problem::new(
                ProblemKind::NotCaughtUp,
                format!(
                    "book {id} is at version {} here, not yet at {min}; retry shortly",
                    version.map_or_else(|| "none".to_owned(), |v| v.to_string())
                ),
            )
            .with_required_version(min)
            .with_current_version(version)
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            .into());
        }
        let batch_done = async {
            // A stopped consumer leaves only the timers to wake us.
            if batches.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = batch_done => {}
            () = tokio::time::sleep(next_look) => next_look = recheck.next_delay(),
            () = tokio::time::sleep_until(deadline) => continue,
        }
        batches.borrow_and_update();
        if let Some(cached) = lookup.cached(id).await {
            if entry
                .as_ref()
                .is_none_or(|held| cached.version() > held.version())
            {
                entry = Some(cached);
            }
        }
    }
    Ok(entry)
}
