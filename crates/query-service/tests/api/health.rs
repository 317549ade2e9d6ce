//! `/healthz` and `/readyz`.

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn liveness_is_ok() {
    let app = spawn_app().await;

    let response = app.http.get(app.url("/healthz")).send().await.unwrap();

    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn ready_when_mongodb_and_redis_answer() {
    let app = spawn_app().await;

    let response = app.http.get(app.url("/readyz")).send().await.unwrap();

    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["mongodb"], "up");
    assert_eq!(body["checks"]["redis"], "up");
}
