//! `/healthz` and `/readyz`.

use std::time::Duration;

use serde_json::Value;
use test_support::{eventually, redis_connection, TcpProxy};

use crate::helpers::{spawn_app, spawn_cleaned_app_with, test_settings, TestApp, DEADLINE};

#[tokio::test]
async fn liveness_is_ok() {
    let app = spawn_app().await;

    let response = app.http.get(app.url("/healthz")).send().await.unwrap();

    assert_eq!(response.status().as_u16(), 200);
}

/// Readiness: its status and body.
async fn readiness(app: &TestApp) -> (u16, Value) {
    let response = app.http.get(app.url("/readyz")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json::<Value>().await.unwrap())
}

/// Waits until readiness answers `status`, and returns the body.
async fn wait_for_readiness(app: &TestApp, status: u16) -> Value {
    eventually(&format!("readiness {status}"), DEADLINE, || async {
        let (now, body) = readiness(app).await;
        (now == status).then_some(body)
    })
    .await
}

#[tokio::test]
async fn ready_once_mongodb_and_redis_answer_and_the_consumer_reads() {
    let app = spawn_app().await;

    let body = wait_for_readiness(&app, 200).await;

    assert_eq!(body["checks"]["mongodb"], "up");
    assert_eq!(body["checks"]["redis"], "up");
    assert_eq!(body["checks"]["consumer"], "up");
}

#[tokio::test]
async fn not_ready_while_the_consumer_cannot_read_its_group_and_ready_again_once_it_can() {
    let app = spawn_app().await;
    wait_for_readiness(&app, 200).await;
    let mut redis = redis_connection().await;

    // The stream's key now holds a string: every session of the consumer
    // fails, while MongoDB and Redis both answer.
    let _: () = redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(&app.settings.stream)
        .ignore()
        .cmd("SET")
        .arg(&app.settings.stream)
        .arg("not a stream")
        .ignore()
        .query_async(&mut redis)
        .await
        .unwrap();

    let body = wait_for_readiness(&app, 503).await;
    assert_eq!(body["checks"]["consumer"], "down", "{body}");
    assert_eq!(body["checks"]["mongodb"], "up", "{body}");
    assert_eq!(body["checks"]["redis"], "up", "{body}");

    let _: () = redis::cmd("DEL")
        .arg(&app.settings.stream)
        .query_async(&mut redis)
        .await
        .unwrap();
    let body = wait_for_readiness(&app, 200).await;
    assert_eq!(body["checks"]["consumer"], "up");
}

#[tokio::test]
async fn not_ready_while_mongodb_is_unreachable_and_ready_again_when_it_returns() {
    let mut settings = test_settings().await;
    let proxy = TcpProxy::in_front_of_mongo().await;
    settings.mongo_url = platform::RedactedUrl::new(proxy.url());
    let app = spawn_cleaned_app_with(settings).await;
    let readiness = || async {
        let response = app.http.get(app.url("/readyz")).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };

    proxy.cut();
    let (status, body) = readiness().await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["checks"]["mongodb"], "down");
    assert_eq!(body["checks"]["redis"], "up");

    proxy.restore();
    eventually("ready again", DEADLINE, || async {
        (readiness().await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn while_draining_readiness_answers_503_and_reads_are_still_served() {
    let mut settings = test_settings().await;
    settings.shutdown_drain = Duration::from_secs(3);
    let app = spawn_cleaned_app_with(settings).await;
    wait_for_readiness(&app, 200).await;

    app.begin_stop();

    let response = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "stopping");
    let read = app
        .http
        .get(app.url("/books/65f000000000000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 404, "reads go on during the drain");
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("stopped after the drain");
}
