//! `/healthz` (the process is alive) and `/readyz` (MongoDB and Redis answer).

use axum::{extract::State, response::IntoResponse, routing::get, Router};
use platform::health;

use crate::state::AppState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::liveness))
        .route("/readyz", get(readiness))
}

async fn readiness(State(mut state): State<AppState>) -> impl IntoResponse {
    let (mongo, redis) = tokio::join!(
        health::mongo_up(&state.database),
        health::redis_up(&mut state.redis)
    );
    health::readiness(&[("mongodb", mongo), ("redis", redis)])
}
