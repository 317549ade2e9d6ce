//! The book commands: `POST /books` creates, `PUT /books/{id}` replaces,
//! `PATCH /books/{id}` merges a JSON merge patch, `DELETE /books/{id}`
//! deletes. Each stores the new version with its event in one document
//! write; the relay publishes the event.
//!
//! Concurrency: every answer carries the book's `version` and `ETag`.
//! With `If-Match` a change applies only to that version (412 otherwise);
//! without it the change applies to whatever version is current (last
//! write wins). Either way the write is a compare-and-set on the version
//! read, so two writers never both succeed from the same version.
//!
//! Every event carries the request's W3C `traceparent` (the caller's when
//! valid, else a new trace; see `platform::trace`), so the event can be
//! followed from this request to its projection.

use std::time::Duration;

use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json,
};
use bson::oid::ObjectId;
use chrono::{SubsecRound, Utc};
use domain::{Book, BookDraft, BookEvent, BookId, BookPatch, PatchField};
use platform::{
    backoff::Backoff,
    document::{object_id, StoredBook},
    http::{etag, JsonBody, PathParam},
    problem::{parse_book_id, ProblemKind},
    trace::TraceContext,
    ApiError, Problem,
};
use serde::{Deserialize, Deserializer};
use utoipa::IntoResponses;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{auth::Authenticated, relay::Stored, state::AppState, store::StoreError};

/// How many times a change is tried, losing a compare-and-set to a
/// concurrent writer each time, before answering 409.
const MAX_ATTEMPTS: u32 = 16;
/// The first wait after a lost compare-and-set, and the longest: retries
/// are spread so that the writers who collided do not collide again.
const RETRY_BASE: Duration = Duration::from_millis(1);
const RETRY_MAX: Duration = Duration::from_millis(64);

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_book))
        .routes(routes!(replace_book, patch_book, delete_book))
}

/// A whole book: the body of `POST /books` and `PUT /books/{id}`, before
/// validation. Unknown fields are refused so that a typo (`publishedyear`)
/// is reported instead of ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BookBody {
    #[schema(
        example = "Dune",
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    title: String,
    #[schema(
        example = "Frank Herbert",
        min_length = 1,
        max_length = 100,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    author: String,
    #[schema(value_type = i64, example = 1965, minimum = -3000, maximum = 2100)]
    published_year: Integer,
}

impl BookBody {
    fn parse(&self) -> Result<BookDraft, domain::ValidationErrors> {
        BookDraft::parse(&self.title, &self.author, self.published_year.0)
    }
}

/// A JSON number with an integer value: `1965.0` is one, as in JSON Schema;
/// `1965.5` is not. Values beyond `i64` saturate, so the domain reports
/// them as out of range rather than as the wrong type.
#[derive(Debug, Clone, Copy)]
struct Integer(i64);

impl<'de> Deserialize<'de> for Integer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntegerVisitor;

        impl serde::de::Visitor<'_> for IntegerVisitor {
            type Value = Integer;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("an integer")
            }

            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Integer, E> {
                Ok(Integer(value))
            }

            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Integer, E> {
                Ok(Integer(i64::try_from(value).unwrap_or(i64::MAX)))
            }

            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Integer, E> {
                if value.is_finite() && value.fract() == 0.0 {
                    // `as` saturates at the bounds of i64.
                    Ok(Integer(value as i64))
                } else {
                    Err(E::invalid_type(serde::de::Unexpected::Float(value), &self))
                }
            }
        }

        deserializer.deserialize_any(IntegerVisitor)
    }
}

/// A JSON merge patch (RFC 7396) of a book: each field present replaces
/// the current one; `null` would remove a field, which a book refuses.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BookMergePatch {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, required = false, example = "Dune Messiah", min_length = 1, max_length = 200, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    title: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, required = false, min_length = 1, max_length = 100, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    author: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = i64, required = false, example = 1969, minimum = -3000, maximum = 2100)]
    published_year: Option<Option<Integer>>,
}

/// The problems every command may answer (OpenAPI only).
#[allow(dead_code)] // Describes answers; never built.
#[derive(IntoResponses)]
enum CommandProblems {
    /// No accepted bearer token
    #[response(
        status = 401,
        content_type = "application/problem+json",
        headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"books\"`, with `error=\"invalid_token\"` for a token not accepted"))
    )]
    Unauthorized(Problem),
    /// MongoDB does not answer within the dependency timeout; retry later
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
    /// Something unexpected failed; the details are in the server log only
    #[response(status = 500, content_type = "application/problem+json")]
    Internal(Problem),
}

/// The problems of a command with a JSON body (OpenAPI only).
#[allow(dead_code)] // Describes answers; never built.
#[derive(IntoResponses)]
enum BodyProblems {
    /// The body is over `BODY_LIMIT_BYTES`
    #[response(status = 413, content_type = "application/problem+json")]
    TooLarge(Problem),
    /// The body is not declared as JSON
    #[response(status = 415, content_type = "application/problem+json")]
    NotJson(Problem),
    /// A field is missing, null, unknown, of the wrong type or breaks a rule; `errors` names each
    #[response(status = 422, content_type = "application/problem+json")]
    Invalid(Problem),
}

/// The problems of a command on an existing book (OpenAPI only).
#[allow(dead_code)] // Describes answers; never built.
#[derive(IntoResponses)]
enum ChangeProblems {
    /// The id is not 24 hexadecimal digits, the If-Match header is malformed, or the body is not JSON
    #[response(status = 400, content_type = "application/problem+json")]
    Malformed(Problem),
    /// No such book, or it was deleted
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// Concurrent writers kept changing the book; retry
    #[response(status = 409, content_type = "application/problem+json")]
    Conflict(Problem),
    /// If-Match names another version; `currentVersion` says which is current
    #[response(
        status = 412,
        content_type = "application/problem+json",
        headers(("ETag" = String, description = "The current version, quoted"))
    )]
    PreconditionFailed(Problem),
}

/// Tells a field sent as `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

fn patch_field<T>(field: Option<Option<T>>) -> PatchField<T> {
    match field {
        None => PatchField::Keep,
        Some(None) => PatchField::Remove,
        Some(Some(value)) => PatchField::Set(value),
    }
}

impl BookMergePatch {
    fn parse(&self) -> Result<BookPatch, domain::ValidationErrors> {
        BookPatch::parse(
            patch_field(self.title.as_ref().map(|t| t.as_deref())),
            patch_field(self.author.as_ref().map(|a| a.as_deref())),
            patch_field(self.published_year.map(|year| year.map(|y| y.0))),
        )
    }
}

/// Creates a book.
///
/// The answer's `Location` is the book on query-service, where it can be
/// read once its event is applied (see `minVersion` there).
#[utoipa::path(
    post,
    path = "/books",
    tag = "books",
    security(("bearer" = [])),
    request_body(content = BookBody, description = "The new book"),
    responses(
        (status = 201, description = "Created", body = Book, headers(
            ("Location" = String, description = "The book on query-service"),
            ("ETag" = String, description = "The book's version, quoted"),
        )),
        (status = 400, description = "The body is not JSON", body = Problem, content_type = "application/problem+json"),
        BodyProblems,
        CommandProblems,
    )
)]
#[tracing::instrument(name = "create_book", skip_all, fields(book_id))]
async fn create_book(
    _: Authenticated,
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    JsonBody(body): JsonBody<BookBody>,
) -> Result<Response, ApiError> {
    let draft = body.parse()?;
    let object_id = ObjectId::new();
    let id = BookId::parse(&object_id.to_hex()).expect("an ObjectId is 24 hex digits");
    tracing::Span::current().record("book_id", id.as_str());
    let book = Book::create(id, draft, now());
    let event = BookEvent::created(&book, Some(trace.as_str().to_owned()));
    let stored = Stored::new(object_id, &event);
    state.store.insert(object_id, &book, &stored.json).await?;
    state.outbox.notify(stored);

    let location = format!("{}/books/{}", state.query_base_url, book.id);
    let location = HeaderValue::try_from(location)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("bad Location header: {e}")))?;
    Ok((
        StatusCode::CREATED,
        [
            (header::LOCATION, location),
            (header::ETAG, etag(book.version)),
        ],
        Json(book),
    )
        .into_response())
}

/// Replaces a book's title, author and year.
///
/// A replacement that changes nothing answers the book as it is, without a
/// new version.
#[utoipa::path(
    put,
    path = "/books/{id}",
    tag = "books",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The book's id: 24 hexadecimal digits", pattern = "^[0-9a-fA-F]{24}$"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "Apply only to this version: its ETag (`\"3\"`) or `*`", pattern = "^\\s*(\\*|(W/)?\"[^\"]*\"(\\s*,\\s*(W/)?\"[^\"]*\")*)\\s*$"),
    ),
    request_body(content = BookBody, description = "The book's new content"),
    responses(
        (status = 200, description = "The book after the change", body = Book, headers(("ETag" = String, description = "The book's version, quoted"))),
        ChangeProblems,
        BodyProblems,
        CommandProblems,
    )
)]
#[tracing::instrument(name = "replace_book", skip_all, fields(book_id = %id))]
async fn replace_book(
    _: Authenticated,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    Extension(trace): Extension<TraceContext>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<BookBody>,
) -> Result<Response, ApiError> {
    respond(&state, &id, &headers, &trace, || {
        body.parse().map(Command::Replace)
    })
    .await
}

/// Changes some of a book's fields.
///
/// A JSON merge patch: the fields sent replace the current ones. A patch
/// that changes nothing answers the book as it is, without a new version.
#[utoipa::path(
    patch,
    path = "/books/{id}",
    tag = "books",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The book's id: 24 hexadecimal digits", pattern = "^[0-9a-fA-F]{24}$"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "Apply only to this version: its ETag (`\"3\"`) or `*`", pattern = "^\\s*(\\*|(W/)?\"[^\"]*\"(\\s*,\\s*(W/)?\"[^\"]*\")*)\\s*$"),
    ),
    request_body(description = "The fields to change", content(
        (BookMergePatch = "application/merge-patch+json"),
        (BookMergePatch = "application/json"),
    )),
    responses(
        (status = 200, description = "The book after the change", body = Book, headers(("ETag" = String, description = "The book's version, quoted"))),
        ChangeProblems,
        BodyProblems,
        CommandProblems,
    )
)]
#[tracing::instrument(name = "patch_book", skip_all, fields(book_id = %id))]
async fn patch_book(
    _: Authenticated,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    Extension(trace): Extension<TraceContext>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<BookMergePatch>,
) -> Result<Response, ApiError> {
    respond(&state, &id, &headers, &trace, || {
        body.parse().map(Command::Patch)
    })
    .await
}

/// Deletes a book.
///
/// Its id is never reused; reads of it answer 404 once the deletion is
/// applied.
#[utoipa::path(
    delete,
    path = "/books/{id}",
    tag = "books",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The book's id: 24 hexadecimal digits", pattern = "^[0-9a-fA-F]{24}$"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "Delete only this version: its ETag (`\"3\"`) or `*`", pattern = "^\\s*(\\*|(W/)?\"[^\"]*\"(\\s*,\\s*(W/)?\"[^\"]*\")*)\\s*$"),
    ),
    responses(
        (status = 204, description = "Deleted", headers(("ETag" = String, description = "The version the deletion made, quoted"))),
        ChangeProblems,
        CommandProblems,
    )
)]
#[tracing::instrument(name = "delete_book", skip_all, fields(book_id = %id))]
async fn delete_book(
    _: Authenticated,
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    Extension(trace): Extension<TraceContext>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    respond(&state, &id, &headers, &trace, || Ok(Command::Delete)).await
}

/// A change to an existing book.
enum Command {
    Replace(BookDraft),
    Patch(BookPatch),
    Delete,
}

/// What a change did.
enum Outcome {
    /// A new version was written.
    Changed(Book),
    /// The change would not alter the book: nothing was written.
    Unchanged(Book),
    /// The book was deleted; this is the version the deletion made.
    Deleted(u64),
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        match self {
            Outcome::Changed(book) | Outcome::Unchanged(book) => {
                ([(header::ETAG, etag(book.version))], Json(book)).into_response()
            }
            Outcome::Deleted(version) => {
                (StatusCode::NO_CONTENT, [(header::ETAG, etag(version))]).into_response()
            }
        }
    }
}

/// Checks, in this order, the id, the `If-Match` header and the command
/// (its body), then executes the command and answers with its outcome.
async fn respond(
    state: &AppState,
    raw_id: &str,
    headers: &HeaderMap,
    trace: &TraceContext,
    command: impl FnOnce() -> Result<Command, domain::ValidationErrors>,
) -> Result<Response, ApiError> {
    let id = parse_book_id(raw_id)?;
    let precondition = IfMatch::from_headers(headers)?;
    let command = command()?;
    let outcome = execute(state, &id, precondition.as_ref(), trace.as_str(), command).await?;
    Ok(outcome.into_response())
}

/// Reads the current version, checks the precondition, and writes the next
/// version with a compare-and-set; a write that loses to a concurrent one
/// starts over from the version that won (where `If-Match` then fails).
async fn execute(
    state: &AppState,
    id: &BookId,
    precondition: Option<&IfMatch>,
    traceparent: &str,
    command: Command,
) -> Result<Outcome, ApiError> {
    let object_id = object_id(id);
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_MAX);
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(backoff.next_jittered()).await;
        }
        let current = match state.store.find(object_id).await.map_err(store_error)? {
            Some(StoredBook::Live(book)) => book,
            Some(StoredBook::Deleted { .. }) | None => {
                return Err(
                    Problem::new(ProblemKind::NotFound, format!("no book with id {id}")).into(),
                )
            }
        };
        if let Some(precondition) = precondition {
            if !precondition.matches(current.version) {
                return Err(precondition_failed(&current).into());
            }
        }
        let now = now();
        let (next, event) = match &command {
            Command::Delete => {
                let version = current.version + 1;
                let at = now.max(current.state.updated_at);
                let event = BookEvent::deleted(id, version, at, Some(traceparent.to_owned()));
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
            Command::Replace(draft) => {
                let next = current.replace(draft.clone(), now);
                let event = next
                    .as_ref()
                    .map(|b| BookEvent::updated(b, Some(traceparent.to_owned())));
                (next, event)
            }
            Command::Patch(patch) => {
                let next = current.patch(patch.clone(), now);
                let event = next
                    .as_ref()
                    .map(|b| BookEvent::updated(b, Some(traceparent.to_owned())));
                (next, event)
            }
        };
        let (Some(next), Some(event)) = (next, event) else {
            return Ok(Outcome::Unchanged(current));
        };
        let stored = Stored::new(object_id, &event);
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

fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::Mongo(error) => error.into(),
        StoreError::Corrupt(corrupt) => ApiError::Internal(corrupt.into()),
    }
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
    .with_header(header::ETAG, etag(current.version))
}

/// MongoDB keeps milliseconds: round now so the answer, the stored book and
/// the event agree to the digit.
fn now() -> chrono::DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// An `If-Match` precondition (RFC 9110 §13.1.1), compared strongly: a weak
/// tag never matches.
#[derive(Debug, PartialEq, Eq)]
enum IfMatch {
    Any,
    Tags(Vec<String>),
}

const IF_MATCH: HeaderName = header::IF_MATCH;

impl IfMatch {
    /// The precondition of the request, if it has one; a 400 naming
    /// `If-Match` when the header is not a list of entity tags.
    fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, Problem> {
        let mut values = headers.get_all(IF_MATCH).iter().peekable();
        if values.peek().is_none() {
            return Ok(None);
        }
        let mut tags = Vec::new();
        for value in values {
            let value = value.to_str().map_err(|_| malformed_if_match())?;
            for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                if item == "*" {
                    return Ok(Some(Self::Any));
                }
                let (weak, quoted) = match item.strip_prefix("W/") {
                    Some(rest) => (true, rest),
                    None => (false, item),
                };
                let opaque = quoted
                    .strip_prefix('"')
                    .and_then(|rest| rest.strip_suffix('"'))
                    .filter(|opaque| !opaque.contains('"'))
                    .ok_or_else(malformed_if_match)?;
                if !weak {
                    tags.push(opaque.to_owned());
                }
            }
        }
        Ok(Some(Self::Tags(tags)))
    }

    fn matches(&self, version: u64) -> bool {
        match self {
            Self::Any => true,
            Self::Tags(tags) => {
                let current = version.to_string();
                tags.contains(&current)
            }
        }
    }
}

fn malformed_if_match() -> Problem {
    Problem::invalid_parameter(
        "If-Match",
        "format",
        "must be `*` or a list of entity tags such as `\"3\"`",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn if_match(value: &str) -> Result<Option<IfMatch>, Problem> {
        IfMatch::from_headers(&with_header("if-match", value))
    }

    #[test]
    fn if_match_is_absent_without_the_header() {
        assert_eq!(IfMatch::from_headers(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn if_match_names_versions_as_quoted_tags() {
        let precondition = if_match("\"2\", \"3\"").unwrap().unwrap();
        assert!(precondition.matches(3));
        assert!(precondition.matches(2));
        assert!(!precondition.matches(4));
    }

    #[test]
    fn if_match_star_matches_any_version() {
        assert!(if_match("*").unwrap().unwrap().matches(7));
    }

    #[test]
    fn weak_and_foreign_tags_never_match() {
        assert!(!if_match("W/\"3\"").unwrap().unwrap().matches(3));
        assert!(!if_match("\"abc\"").unwrap().unwrap().matches(3));
    }

    #[test]
    fn malformed_if_match_is_a_400_naming_the_header() {
        for value in ["3", "\"3", "W/3", "\"3\"\"", "\"a\"b\""] {
            let problem = if_match(value).unwrap_err();
            assert_eq!(problem.kind(), ProblemKind::InvalidParameter, "{value:?}");
            assert_eq!(problem.errors()[0].field, "If-Match");
        }
    }
}
