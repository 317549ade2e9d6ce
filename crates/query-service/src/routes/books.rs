//! `GET /books/{id}`: one book from the read model.

use axum::{extract::State, Json};
use domain::{Book, BookId};
use platform::problem::ProblemKind;
use platform::{http::PathParam, problem::FieldProblem, ApiError, Problem};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{projection::ReadModel, state::AppState};

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_book))
}

/// One book, as the read model holds it.
#[utoipa::path(
    get,
    path = "/books/{id}",
    tag = "books",
    params(("id" = String, Path, description = "The book's id: 24 hexadecimal digits")),
    responses(
        (status = 200, description = "The book", body = Book),
        (status = 400, description = "The id is not 24 hexadecimal digits", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such book, or it was deleted", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "MongoDB does not answer in time", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(name = "get_book", skip(read_model))]
async fn get_book(
    State(read_model): State<ReadModel>,
    PathParam(id): PathParam<String>,
) -> Result<Json<Book>, ApiError> {
    let id = BookId::parse(&id).map_err(|error| {
        let mut problem = Problem::new(
            ProblemKind::InvalidParameter,
            format!("{id:?} is not a book id: {}", error.message),
        );
        problem.push_error(FieldProblem::from(&error));
        problem
    })?;
    match read_model.get(&id).await {
        Ok(Some(book)) => Ok(Json(book)),
        Ok(None) => {
            Err(Problem::new(ProblemKind::NotFound, format!("no book with id {id}")).into())
        }
        Err(error) => match error.downcast::<mongodb::error::Error>() {
            Ok(mongo) => Err(mongo.into()),
            Err(other) => Err(ApiError::Internal(other)),
        },
    }
}
