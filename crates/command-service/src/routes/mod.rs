//! The HTTP routes, one module per resource.

mod books;

use axum::Router;

use crate::state::AppState;

pub fn router(state: AppState, body_limit: usize) -> Router {
    let routes = Router::new()
        .merge(books::router())
        .merge(platform::health::router())
        .with_state(state);
    platform::http::with_common_layers(routes, body_limit)
}
