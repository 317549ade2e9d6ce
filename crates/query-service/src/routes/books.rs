//! `GET /books/{id}`: one book from the read model.

use axum::{extract::State, routing::get, Json, Router};
use domain::{Book, BookId};
use platform::{
    http::PathParam,
    problem::{FieldProblem, Problem, ProblemKind},
    ApiError,
};

use crate::{projection::ReadModel, state::AppState};

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/books/{id}", get(get_book))
}

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
