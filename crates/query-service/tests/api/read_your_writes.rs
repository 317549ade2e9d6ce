//! `GET /books/{id}?minVersion=N`: a client reads at least the version its
//! write answered, waiting a bounded moment for the read model to catch up.

use std::time::Duration;

use domain::BookEvent;
use serde_json::Value;
use test_support::{assert_problem, unique};

use crate::helpers::{
    cleanup_for, deleted, new_book, spawn_app, spawn_app_with, spawn_cleaned_app_with,
    test_settings, updated, TestApp,
};

async fn get_with(app: &TestApp, id: &str, query: &str) -> reqwest::Response {
    app.http
        .get(app.url(&format!("/books/{id}?{query}")))
        .send()
        .await
        .expect("request sent")
}

#[tokio::test]
async fn a_version_already_applied_is_answered_at_once() {
    let app = spawn_app().await;
    let book = new_book("Written");
    app.publish(&BookEvent::created(&book, None)).await;
    app.publish(&updated(&book, "Rewritten", 2)).await;
    app.wait_until_consumed().await;

    for min in ["1", "2"] {
        let response = get_with(&app, book.id.as_str(), &format!("minVersion={min}")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["etag"], "\"2\"");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["version"], 2);
    }
}

#[tokio::test]
async fn a_read_waits_for_the_version_and_answers_once_it_is_applied() {
    let mut settings = test_settings().await;
    settings.read_your_writes_timeout = Duration::from_secs(8);
    let app = spawn_cleaned_app_with(settings).await;
    let book = new_book("Before");
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_until_consumed().await;

    let request = app
        .http
        .get(app.url(&format!("/books/{}?minVersion=2", book.id)))
        .send();
    let mut pending = tokio::spawn(request);
    // The read is waiting: it has not answered with version 1.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut pending)
            .await
            .is_err(),
        "answered before version 2 existed"
    );
    app.publish(&updated(&book, "After", 2)).await;

    let response = pending.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"2\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["title"], "After");
}

#[tokio::test]
async fn a_read_waiting_on_one_replica_sees_the_version_another_replica_applied() {
    let settings = test_settings().await;
    let cleanup = cleanup_for(&settings);
    // Same read model and cache, but this replica's consumer reads a stream
    // nothing is published to: only the other replica applies events.
    let mut idle = settings.clone();
    idle.stream = unique("idle-events");
    idle.dead_letter_stream = format!("{}:dead", idle.stream);
    idle.read_your_writes_timeout = Duration::from_secs(8);
    let busy = spawn_app_with(settings).await;
    let idle = spawn_app_with(idle).await;
    let book = new_book("Elsewhere");
    busy.publish(&BookEvent::created(&book, None)).await;
    busy.wait_until_consumed().await;

    let request = idle
        .http
        .get(idle.url(&format!("/books/{}?minVersion=2", book.id)))
        .send();
    let mut pending = tokio::spawn(request);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut pending)
            .await
            .is_err()
    );
    busy.publish(&updated(&book, "After", 2)).await;

    let response = pending.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"2\"");
    drop((busy, idle, cleanup));
}

#[tokio::test]
async fn a_version_that_does_not_arrive_in_time_is_a_503_not_caught_up() {
    let mut settings = test_settings().await;
    settings.read_your_writes_timeout = Duration::from_millis(200);
    let app = spawn_cleaned_app_with(settings).await;
    let book = new_book("Behind");
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_until_consumed().await;

    let started = tokio::time::Instant::now();
    let response = get_with(&app, book.id.as_str(), "minVersion=3").await;
    assert!(started.elapsed() >= Duration::from_millis(200));

    assert_eq!(response.headers()["retry-after"], "1");
    let problem = assert_problem(response, 503).await;
    assert_eq!(problem["type"], "urn:books:problem:not-caught-up");
    assert_eq!(problem["requiredVersion"], 3);
    assert_eq!(problem["currentVersion"], 1);

    // A book the read model never saw has no current version.
    let unknown = get_with(&app, "65a1b2c3d4e5f60718293a4b", "minVersion=1").await;
    let problem = assert_problem(unknown, 503).await;
    assert_eq!(problem["requiredVersion"], 1);
    assert!(problem.get("currentVersion").is_none(), "{problem}");
}

#[tokio::test]
async fn a_book_deleted_at_or_after_the_version_is_404_at_once() {
    let app = spawn_app().await;
    let book = new_book("Gone");
    app.publish(&BookEvent::created(&book, None)).await;
    app.publish(&deleted(&book, 2)).await;
    app.wait_until_consumed().await;

    for min in ["1", "2"] {
        let problem = assert_problem(
            get_with(&app, book.id.as_str(), &format!("minVersion={min}")).await,
            404,
        )
        .await;
        assert_eq!(problem["type"], "urn:books:problem:not-found");
    }
}

#[tokio::test]
async fn min_version_must_be_an_integer_of_at_least_1_and_nothing_else_is_accepted() {
    let app = spawn_app().await;
    let id = "65a1b2c3d4e5f60718293a4b";

    for (query, field, rule) in [
        ("minVersion=0", "minVersion", "outOfRange"),
        ("minVersion=-1", "minVersion", "outOfRange"),
        ("minVersion=abc", "minVersion", "invalidType"),
        ("minVersion=", "minVersion", "invalidType"),
        ("minVersion=1.5", "minVersion", "invalidType"),
        ("minversion=1", "minversion", "unknownParameter"),
        ("minVersion=1&fields=title", "fields", "unknownParameter"),
    ] {
        let problem = assert_problem(get_with(&app, id, query).await, 400).await;
        assert_eq!(
            problem["type"], "urn:books:problem:invalid-parameter",
            "{query}"
        );
        assert_eq!(problem["errors"][0]["field"], field, "{query}");
        assert_eq!(problem["errors"][0]["rule"], rule, "{query}");
    }
}
