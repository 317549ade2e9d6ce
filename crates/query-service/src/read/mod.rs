//! Serving reads: the HTTP routes, one module per resource, and the
//! OpenAPI document generated from them.

mod authors;
mod books;
pub mod listing;
pub mod lookup;

use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "books query-service",
        description = "Reads of the books read model, kept current from the events of command-service. Eventually consistent: see `minVersion` for reading your own writes.",
        license(name = "MIT", identifier = "MIT"),
    ),
    servers((url = "http://localhost:5001", description = "query-service as `scripts/dev.sh` and docker compose run it")),
    tags(
        (name = "books", description = "The read model of books"),
        (name = "authors", description = "Summaries of each author's books"),
        (name = "health", description = "Liveness and readiness"),
        (name = "metrics", description = "Prometheus metrics"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

/// Every route with its documentation.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(books::router())
        .merge(authors::router())
        .merge(platform::health::router())
        .merge(platform::metrics::router())
}

/// The OpenAPI document of every route `router` serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    platform::openapi::split(routes()).1
}

/// The service's routes; a request still running after `deadline` gets 503.
pub fn router(state: AppState, body_limit: usize, deadline: std::time::Duration) -> Router {
    let (routes, _) = platform::openapi::split(routes());
    platform::http::with_common_layers(routes.with_state(state), body_limit, deadline)
}
