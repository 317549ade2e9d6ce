//! The HTTP routes, one module per resource, and the OpenAPI document
//! generated from them.

mod books;

use axum::Router;
use utoipa::{
    openapi::security::{Http, HttpAuthScheme, SecurityScheme},
    Modify, OpenApi,
};
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "books command-service",
        description = "Commands on books. Each accepted command is stored with its event in MongoDB and relayed to the Redis Stream read by query-service.",
        license(name = "MIT", identifier = "MIT"),
    ),
    servers((url = "http://localhost:5000", description = "command-service as `scripts/dev.sh` and docker compose run it")),
    modifiers(&BearerAuth),
    tags(
        (name = "books", description = "Create, replace, change and delete books"),
        (name = "health", description = "Liveness and readiness"),
        (name = "metrics", description = "Prometheus metrics"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

/// Declares the `bearer` security scheme the book commands require.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Every route with its documentation.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(books::router())
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
