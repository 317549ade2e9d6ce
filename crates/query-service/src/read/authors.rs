//! `GET /authors/{author}`: the summary of an author's live books.

use axum::{extract::State, Json};
use domain::Author;
use platform::{http::PathParam, problem::ProblemKind, ApiError, Problem};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    read_model::{AuthorSummaries, AuthorSummary},
    state::AppState,
};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_author))
}

/// What the live books of an author add up to. The name is matched in any
/// case.
#[utoipa::path(
    get,
    path = "/authors/{author}",
    tag = "authors",
    params(("author" = domain::Author, Path, description = "The author's name, URL-encoded, in any case", example = "Ursula%20K.%20Le%20Guin")),
    responses(
        (status = 200, description = "The author's summary", body = AuthorSummary),
        (status = 400, description = "The name is empty, too long or holds a control character", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The author has no live book", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "MongoDB does not answer in time", body = Problem, content_type = "application/problem+json"),
        platform::openapi::Unexpected,
    )
)]
#[tracing::instrument(name = "get_author", skip(summaries))]
async fn get_author(
    State(summaries): State<AuthorSummaries>,
    PathParam(author): PathParam<String>,
) -> Result<Json<AuthorSummary>, ApiError> {
    let author = Author::parse(&author)
        .map_err(|e| Problem::invalid_parameter("author", e.rule.as_str(), e.message))?;
    match summaries.get(&author.key()).await? {
        Some(summary) => Ok(Json(summary)),
        None => Err(Problem::new(
            ProblemKind::NotFound,
            format!("no book by {}", platform::problem::quoted(author.as_str())),
        )
        .into()),
    }
}
