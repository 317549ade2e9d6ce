//! Liveness and readiness answers. Liveness (`/healthz`) never touches a
//! dependency; readiness (`/readyz`) pings each one with a short timeout.

use std::time::Duration;

use axum::{
    extract::{FromRef, State},
    http::StatusCode,
    response::IntoResponse,
    routing::get,
    Json, Router,
};
use redis::aio::ConnectionManager;
use serde_json::{json, Map, Value};

const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// What readiness checks: the service's MongoDB database and Redis.
#[derive(Clone)]
pub struct Dependencies {
    pub mongo: mongodb::Database,
    pub redis: ConnectionManager,
}

/// `/healthz` and `/readyz` for any state that holds the `Dependencies`.
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Dependencies: FromRef<S>,
{
    Router::new()
        .route("/healthz", get(liveness))
        .route("/readyz", get(readiness))
}

async fn readiness(State(mut deps): State<Dependencies>) -> impl IntoResponse {
    let (mongo, redis) = tokio::join!(mongo_up(&deps.mongo), redis_up(&mut deps.redis));
    report(&[("mongodb", mongo), ("redis", redis)])
}

async fn liveness() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Whether MongoDB answers a `ping` in time.
async fn mongo_up(db: &mongodb::Database) -> bool {
    let ping = db.run_command(mongodb::bson::doc! { "ping": 1 });
    matches!(tokio::time::timeout(PING_TIMEOUT, ping).await, Ok(Ok(_)))
}

/// Whether Redis answers a `PING` in time.
async fn redis_up(redis: &mut redis::aio::ConnectionManager) -> bool {
    let cmd = redis::cmd("PING");
    let ping = cmd.query_async::<String>(redis);
    matches!(tokio::time::timeout(PING_TIMEOUT, ping).await, Ok(Ok(_)))
}

/// 200 when every check passed, 503 otherwise; the body names each one.
fn report(checks: &[(&str, bool)]) -> impl IntoResponse {
    let ready = checks.iter().all(|(_, up)| *up);
    let detail: Map<String, Value> = checks
        .iter()
        .map(|(name, up)| ((*name).to_owned(), json!(if *up { "up" } else { "down" })))
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "status": if ready { "ready" } else { "unavailable" }, "checks": detail })),
    )
}
