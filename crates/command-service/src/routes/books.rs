//! `POST /books`: create a book.

use axum::{
    extract::State,
    http::{header, HeaderMap, HeaderValue, StatusCode},
    Json,
};
use bson::oid::ObjectId;
use chrono::{SubsecRound, Utc};
use domain::{Book, BookDraft, BookEvent, BookId};
use platform::{http::JsonBody, ApiError};
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{relay::Outgoing, state::AppState};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_book))
}

/// The body of `POST /books`, before validation. Unknown fields are refused
/// so that a typo (`publishedyear`) is reported instead of ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateBook {
    title: String,
    author: String,
    published_year: i64,
}

/// A created book: 201, its `Location` on the query service, and the book.
type Created = (
    StatusCode,
    [(header::HeaderName, HeaderValue); 1],
    Json<Book>,
);

/// Creates a book. The answer's `Location` is the book on query-service.
#[utoipa::path(
    post,
    path = "/books",
    tag = "books",
    request_body = inline(CreateBook),
    responses(
        (status = 201, description = "Created", body = Book),
    )
)]
#[tracing::instrument(name = "create_book", skip_all, fields(book_id))]
async fn create_book(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateBook>,
) -> Result<Created, ApiError> {
    let draft = BookDraft::parse(&body.title, &body.author, body.published_year)?;
    let object_id = ObjectId::new();
    let id = BookId::parse(&object_id.to_hex()).expect("an ObjectId is 24 hex digits");
    tracing::Span::current().record("book_id", id.as_str());
    // MongoDB keeps milliseconds: round now so the answer, the stored book
    // and the event agree to the digit.
    let book = Book::create(id, draft, Utc::now().trunc_subsecs(3));
    let event = BookEvent::created(&book, traceparent(&headers));
    let json = event.to_json();

    let stored_at = tokio::time::Instant::now();
    state.store.insert(object_id, &book, &json).await?;
    state.outbox.notify(Outgoing {
        book_id: object_id,
        event_type: event.event_type.as_str(),
        json,
        stored_at,
    });

    let location = format!("{}/books/{}", state.query_base_url, book.id);
    let location = HeaderValue::try_from(location)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("bad Location header: {e}")))?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(book),
    ))
}

/// The caller's W3C `traceparent`, when it has the right shape, so the event
/// can be followed from this request to its projection.
fn traceparent(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let parts: Vec<&str> = value.split('-').collect();
    let well_formed = parts.len() == 4
        && [2, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(len, part)| part.len() == *len && part.bytes().all(|b| b.is_ascii_hexdigit()));
    well_formed.then(|| value.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_traceparent(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn a_well_formed_traceparent_is_kept() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            traceparent(&with_traceparent(value)).as_deref(),
            Some(value)
        );
    }

    #[test]
    fn a_malformed_traceparent_is_dropped() {
        for value in [
            "",
            "00-abc-def-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(traceparent(&with_traceparent(value)), None, "{value:?}");
        }
    }
}
