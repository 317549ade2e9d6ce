//! Liveness and readiness answers. Liveness (`/healthz`) never touches a
//! dependency; readiness (`/readyz`) pings each one with a short timeout
//! and reads how the service's own background workers report themselves.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::connect::RedisConnection;
use axum::{
    extract::{FromRef, State},
    http::StatusCode,
    Json,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa_axum::{router::OpenApiRouter, routes};

const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// What readiness checks: the service's MongoDB database and Redis, its
/// background workers, and whether the service is stopping.
#[derive(Clone)]
pub struct Dependencies {
    pub mongo: mongodb::Database,
    pub redis: RedisConnection,
    /// Each background worker the service needs running, by check name.
    pub workers: Vec<(&'static str, WorkerStatus)>,
    /// The server's stop token: once cancelled, the service is not ready.
    pub stopping: CancellationToken,
}

/// Whether a background worker is doing its job, as the worker itself
/// reports it; down until it first says otherwise. Reading it costs
/// nothing, so readiness and scrapes may ask as often as they like.
#[derive(Debug, Clone, Default)]
pub struct WorkerStatus(Arc<AtomicBool>);

impl WorkerStatus {
    pub fn up(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn down(&self) {
        self.0.store(false, Ordering::Relaxed);
    }

    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `/healthz` and `/readyz` for any state that holds the `Dependencies`.
pub fn router<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Dependencies: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(liveness))
        .routes(routes!(readiness))
}

/// A health answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` (alive), `ready`, `unavailable` (a dependency is down) or
    /// `stopping`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// Each dependency and background worker checked, `up` or `down`
    /// (readiness only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(required = false, value_type = BTreeMap<String, String>, example = json!({"mongodb": "up", "redis": "up", "consumer": "up"}))]
    pub checks: BTreeMap<&'static str, &'static str>,
}

/// Readiness: whether MongoDB and Redis answer a ping within a second, the
/// service's background workers run (query-service: its consumer, `up`
/// once it has read from the consumer group and while its session
/// holds), and the service is not stopping.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Every dependency answers and every worker runs", body = Health),
        (status = 503, description = "A dependency does not answer, a worker is down, or the service is stopping", body = Health),
        crate::openapi::Unexpected,
    )
)]
async fn readiness(State(mut deps): State<Dependencies>) -> (StatusCode, Json<Health>) {
    if deps.stopping.is_cancelled() {
        let health = Health {
            status: "stopping",
            checks: BTreeMap::new(),
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(health));
    }
    let (mongo, redis) = tokio::join!(mongo_up(&deps.mongo), redis_up(&mut deps.redis));
    let mut checks = vec![("mongodb", mongo), ("redis", redis)];
    checks.extend(
        deps.workers
            .iter()
            .map(|(name, status)| (*name, status.is_up())),
    );
    report(&checks)
}

/// Liveness: the process serves requests. Touches no dependency.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses(
        (status = 200, description = "The service is alive", body = Health),
        crate::openapi::Unexpected,
    )
)]
async fn liveness() -> Json<Health> {
    Json(Health {
        status: "ok",
        checks: BTreeMap::new(),
    })
}

/// Whether MongoDB answers a `ping` in time.
async fn mongo_up(db: &mongodb::Database) -> bool {
    let ping = db.run_command(mongodb::bson::doc! { "ping": 1 });
    matches!(tokio::time::timeout(PING_TIMEOUT, ping).await, Ok(Ok(_)))
}

/// Whether Redis answers a `PING` in time.
async fn redis_up(redis: &mut RedisConnection) -> bool {
    let cmd = redis::cmd("PING");
    let ping = cmd.query_async::<String>(redis);
    matches!(tokio::time::timeout(PING_TIMEOUT, ping).await, Ok(Ok(_)))
}

/// 200 when every check passed, 503 otherwise; the body names each one.
fn report(checks: &[(&'static str, bool)]) -> (StatusCode, Json<Health>) {
    let ready = checks.iter().all(|(_, up)| *up);
    let checks = checks
        .iter()
        .map(|(name, up)| (*name, if *up { "up" } else { "down" }))
        .collect();
    let (status, word) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    (
        status,
        Json(Health {
            status: word,
            checks,
        }),
    )
}
