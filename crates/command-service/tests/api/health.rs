//! `/healthz` and `/readyz`.

use serde_json::Value;
use test_support::TcpProxy;

use crate::helpers::{spawn_app, spawn_app_with, test_settings};

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

#[tokio::test]
async fn not_ready_while_redis_is_unreachable() {
    let mut settings = test_settings().await;
    let proxy = TcpProxy::in_front_of_redis().await;
    settings.redis_url = platform::RedactedUrl::new(proxy.url());
    let app = spawn_app_with(settings).await;

    proxy.cut();
    let response = app.http.get(app.url("/readyz")).send().await.unwrap();

    assert_eq!(response.status().as_u16(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["redis"], "down");
    assert_eq!(body["checks"]["mongodb"], "up");
}
