//! The book commands over HTTP: `POST /books` creates, `PUT /books/{id}`
//! replaces, `PATCH /books/{id}` merges a JSON merge patch, `DELETE
//! /books/{id}` deletes. Every answer carries the book's `version` and
//! `ETag`; with `If-Match` a change applies only to that version.

use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json,
};
use domain::{Book, BookDraft, BookPatch, PatchField};
use platform::{
    http::{etag, JsonBody, PathParam},
    problem::parse_book_id,
    trace::TraceContext,
    ApiError, Problem,
};
use serde::{Deserialize, Deserializer};
use utoipa::{IntoParams, IntoResponses};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::Authenticated,
    commands::{self, Change, Created, Idempotency, IfMatch, Outcome},
    state::AppState,
};

const IDEMPOTENCY_KEY: &str = "idempotency-key";

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
#[schema(example = json!({"title": "Dune", "author": "Frank Herbert", "publishedYear": 1965}))]
struct BookBody {
    #[schema(value_type = domain::Title)]
    title: String,
    #[schema(value_type = domain::Author)]
    author: String,
    #[schema(value_type = domain::PublishedYear)]
    published_year: Integer,
}

impl BookBody {
    fn parse(&self) -> Result<BookDraft, domain::ValidationErrors> {
        BookDraft::parse(&self.title, &self.author, self.published_year.0)
    }
}

/// A JSON merge patch (RFC 7396) of a book: each field present replaces
/// the current one; `null` would remove a field, which a book refuses.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(example = json!({"publishedYear": 1966}))]
struct BookMergePatch {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = domain::Title, required = false)]
    title: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = domain::Author, required = false)]
    author: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = domain::PublishedYear, required = false)]
    published_year: Option<Option<Integer>>,
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

/// The book a change applies to (OpenAPI only).
#[allow(dead_code)] // Describes parameters; never built.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
struct BookPath {
    /// The book's id: 24 hexadecimal digits
    #[param(pattern = "^[0-9a-fA-F]{24}$", example = "65a1b2c3d4e5f60718293a4b")]
    id: String,
}

/// The precondition of a change (OpenAPI only).
#[allow(dead_code)] // Describes parameters; never built.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
struct IfMatchHeader {
    /// Apply only to this version: its ETag (`"3"`) or `*`
    #[param(
        rename = "If-Match",
        value_type = String,
        required = false,
        pattern = "^\\s*(\\*|(W/)?\"[^\"]*\"(\\s*,\\s*(W/)?\"[^\"]*\")*)\\s*$",
        example = "\"1\""
    )]
    if_match: String,
}

/// The retry key of a create (OpenAPI only).
#[allow(dead_code)] // Describes parameters; never built.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
struct IdempotencyKeyHeader {
    /// Makes the create safe to retry: a request with a key this caller
    /// sent before with the same book creates nothing and answers the
    /// original `201` again (with `Idempotent-Replayed: true`); with another
    /// book it answers `422`. Keys are kept as long as their book,
    /// tombstone included. `PUT`, `PATCH` and `DELETE` are safe to retry
    /// with `If-Match` instead.
    #[param(
        rename = "Idempotency-Key",
        value_type = String,
        required = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[\\x20-\\x7E]+$",
        example = "9b2f6c1e-4d3a-4f8e-a1c7-5e0d2b7f3a94"
    )]
    idempotency_key: String,
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
    /// MongoDB does not answer within the dependency timeout, or the service is handling `MAX_CONCURRENT_REQUESTS` already (type `urn:books:problem:overloaded`, with `Retry-After`); retry later
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
    /// The body did not arrive within `HTTP_BODY_READ_TIMEOUT_MS`
    #[response(status = 408, content_type = "application/problem+json")]
    TooSlow(Problem),
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

/// Creates a book.
///
/// The answer's `Location` is the book on query-service, where it can be
/// read once its event is applied (see `minVersion` there).
#[utoipa::path(
    post,
    path = "/books",
    tag = "books",
    security(("bearer" = [])),
    params(IdempotencyKeyHeader),
    request_body(content = BookBody, description = "The new book"),
    responses(
        (status = 201, description = "Created, or created before with this `Idempotency-Key` and this book", body = Book, headers(
            ("Location" = String, description = "The book on query-service"),
            ("ETag" = String, description = "The book's version, quoted"),
            ("Idempotent-Replayed" = String, description = "`true` when the answer is a replay: nothing was written"),
        )),
        (status = 400, description = "The body is not JSON, or `Idempotency-Key` is not 1 to 255 printable ASCII characters", body = Problem, content_type = "application/problem+json"),
        BodyProblems,
        CommandProblems,
    )
)]
#[tracing::instrument(name = "create_book", skip_all, fields(book_id))]
async fn create_book(
    auth: Authenticated,
    State(state): State<AppState>,
    Extension(trace): Extension<TraceContext>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<BookBody>,
) -> Result<Response, ApiError> {
    let idempotency = idempotency_key(&headers)?.map(|key| Idempotency {
        caller: auth.caller,
        key,
    });
    let created = commands::create(&state, body.parse()?, trace.as_str(), idempotency).await?;
    let (book, replayed) = match created {
        Created::New(book) => (book, None),
        Created::Replayed(book) => (
            book,
            Some(("idempotent-replayed", HeaderValue::from_static("true"))),
        ),
    };
    let location = format!("{}/books/{}", state.query_base_url, book.id);
    let location = HeaderValue::try_from(location)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("bad Location header: {e}")))?;
    let mut response = (
        StatusCode::CREATED,
        [
            (header::LOCATION, location),
            (header::ETAG, etag(book.version)),
        ],
        Json(book),
    )
        .into_response();
    if let Some((name, value)) = replayed {
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}

/// The request's `Idempotency-Key`, if it has one: 1 to 255 printable ASCII
/// characters, else a 400 naming the header.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let malformed = |detail: &str| Problem::invalid_parameter("Idempotency-Key", "format", detail);
    if values.next().is_some() {
        return Err(malformed("must be sent once"));
    }
    let key = value.as_bytes();
    if key.is_empty() || key.len() > 255 || !key.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(malformed("must be 1 to 255 printable ASCII characters"));
    }
    Ok(Some(String::from_utf8_lossy(key).into_owned()))
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
    params(BookPath, IfMatchHeader),
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
) -> Result<Outcome, ApiError> {
    let change = || body.parse().map(Change::Replace);
    apply(&state, &id, &headers, &trace, change).await
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
    params(BookPath, IfMatchHeader),
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
) -> Result<Outcome, ApiError> {
    let change = || body.parse().map(Change::Patch);
    apply(&state, &id, &headers, &trace, change).await
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
    params(BookPath, IfMatchHeader),
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
) -> Result<Outcome, ApiError> {
    apply(&state, &id, &headers, &trace, || Ok(Change::Delete)).await
}

/// Checks, in this order, the id, the `If-Match` header and the change
/// (its body), then applies the change.
async fn apply(
    state: &AppState,
    raw_id: &str,
    headers: &HeaderMap,
    trace: &TraceContext,
    change: impl FnOnce() -> Result<Change, domain::ValidationErrors>,
) -> Result<Outcome, ApiError> {
    let id = parse_book_id(raw_id)?;
    let if_match = if_match(headers)?;
    let change = change()?;
    commands::change(state, &id, if_match.as_ref(), &change, trace.as_str()).await
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

/// The request's `If-Match` precondition, if it has one; a 400 naming
/// `If-Match` when the header is not a list of entity tags.
fn if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, Problem> {
    let mut values = headers.get_all(header::IF_MATCH).iter().peekable();
    if values.peek().is_none() {
        return Ok(None);
    }
    let mut tags = Vec::new();
    for value in values {
        let value = value.to_str().map_err(|_| malformed_if_match())?;
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "*" {
                return Ok(Some(IfMatch::Any));
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
            // Compared strongly: a weak tag never matches.
            if !weak {
                tags.push(opaque.to_owned());
            }
        }
    }
    Ok(Some(IfMatch::Tags(tags)))
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
    use platform::problem::ProblemKind;

    use super::*;

    fn parse(value: &str) -> Result<Option<IfMatch>, Problem> {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_MATCH, HeaderValue::from_str(value).unwrap());
        if_match(&headers)
    }

    #[test]
    fn if_match_is_absent_without_the_header() {
        assert_eq!(if_match(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn if_match_names_versions_as_quoted_tags() {
        let precondition = parse("\"2\", \"3\"").unwrap().unwrap();
        assert!(precondition.matches(3));
        assert!(precondition.matches(2));
        assert!(!precondition.matches(4));
    }

    #[test]
    fn if_match_star_matches_any_version() {
        assert!(parse("*").unwrap().unwrap().matches(7));
    }

    #[test]
    fn weak_and_foreign_tags_never_match() {
        assert!(!parse("W/\"3\"").unwrap().unwrap().matches(3));
        assert!(!parse("\"abc\"").unwrap().unwrap().matches(3));
    }

    #[test]
    fn malformed_if_match_is_a_400_naming_the_header() {
        for value in ["3", "\"3", "W/3", "\"3\"\"", "\"a\"b\""] {
            let problem = parse(value).unwrap_err();
            assert_eq!(problem.kind(), ProblemKind::InvalidParameter, "{value:?}");
            assert_eq!(problem.errors()[0].field, "If-Match");
        }
    }
}
