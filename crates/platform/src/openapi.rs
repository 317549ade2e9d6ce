//! The OpenAPI 3.1 document of a service, generated from its handlers'
//! annotations, and the `/openapi.json` route that serves it.

use axum::{
    http::{header, HeaderValue},
    response::IntoResponse,
    Extension, Router,
};
use bytes::Bytes;
use utoipa::openapi::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

/// The answer any route gives when something unexpected fails; listed in
/// every operation of the documents.
#[derive(utoipa::IntoResponses)]
pub enum Unexpected {
    /// Something unexpected failed; the details are in the server log only
    #[response(status = 500, content_type = "application/problem+json")]
    Internal(crate::Problem),
}

/// The document, serialized once at start.
#[derive(Clone)]
struct Document(Bytes);

/// Serves the OpenAPI document of this service (OpenAPI 3.1).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "This service's OpenAPI 3.1 document", content_type = "application/json", body = Object),
        Unexpected,
    )
)]
async fn openapi_json(Extension(Document(json)): Extension<Document>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
}

/// Adds `/openapi.json` to `router`, then splits it into the axum router
/// and the document describing every one of its routes.
pub fn split<S>(router: OpenApiRouter<S>) -> (Router<S>, OpenApi)
where
    S: Clone + Send + Sync + 'static,
{
    let (router, api) = router.routes(routes!(openapi_json)).split_for_parts();
    let json = Bytes::from(api.to_json().expect("an OpenAPI document serializes"));
    (router.layer(Extension(Document(json))), api)
}
