//! `POST /books` with an `Idempotency-Key`: a retry creates nothing and
//! answers the original 201; another book under the same key is refused;
//! concurrent requests with one key make one book and one event.

use std::time::Duration;

use serde_json::{json, Value};
use test_support::{assert_problem, TcpProxy};

use crate::helpers::{id_of, spawn_app, spawn_app_with, test_settings, valid_book, TestApp, TOKEN};

async fn post_with_key(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    let body = body.clone();
    app.http
        .post(app.url("/books"))
        .bearer_auth(TOKEN)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .expect("request sent")
}

/// The events of the stream about book `id`, once the relay had time to
/// send any it would.
async fn events_of(app: &TestApp, id: &str, at_least: usize) -> usize {
    app.wait_until_relayed(at_least).await;
    // Whatever would be sent twice would be sent by now: the sweep runs
    // every 100 ms in tests.
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.stream_events()
        .await
        .iter()
        .filter(|(_, event)| event["bookId"] == id)
        .count()
}

#[tokio::test]
async fn a_retried_create_answers_the_original_201_and_writes_nothing() {
    let app = spawn_app().await;

    let first = post_with_key(&app, "order-1", &valid_book()).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let (location, etag) = (
        first.headers()["location"].clone(),
        first.headers()["etag"].clone(),
    );
    let created: Value = first.json().await.unwrap();

    let retried = post_with_key(&app, "order-1", &valid_book()).await;

    assert_eq!(retried.status(), 201);
    assert_eq!(retried.headers()["idempotent-replayed"], "true");
    assert_eq!(retried.headers()["location"], location);
    assert_eq!(retried.headers()["etag"], etag);
    assert_eq!(retried.json::<Value>().await.unwrap(), created);
    assert_eq!(app.stored_books().await.len(), 1);
    assert_eq!(events_of(&app, id_of(&created), 1).await, 1);
}

#[tokio::test]
async fn a_retry_after_a_503_whose_write_landed_gets_the_book_it_made() {
    let mut settings = test_settings().await;
    let proxy = TcpProxy::in_front_of_mongo().await;
    settings.mongo_url = platform::RedactedUrl::new(proxy.url());
    let app = spawn_app_with(settings).await;

    // The insert reaches MongoDB, but its answer never comes back.
    proxy.swallow_replies_to("insert");
    let lost = post_with_key(&app, "order-2", &valid_book()).await;
    assert_eq!(lost.status(), 503);
    proxy.restore();
    let stored = app.stored_books().await;
    assert_eq!(stored.len(), 1, "the write landed");

    let retried = post_with_key(&app, "order-2", &valid_book()).await;

    assert_eq!(retried.status(), 201);
    assert_eq!(retried.headers()["idempotent-replayed"], "true");
    let book: Value = retried.json().await.unwrap();
    assert_eq!(
        id_of(&book),
        stored[0].get_object_id("_id").unwrap().to_hex()
    );
    assert_eq!(app.stored_books().await.len(), 1);
    assert_eq!(events_of(&app, id_of(&book), 1).await, 1);
}

#[tokio::test]
async fn the_same_key_with_another_book_is_a_422_naming_the_key() {
    let app = spawn_app().await;
    assert_eq!(
        post_with_key(&app, "order-3", &valid_book()).await.status(),
        201
    );

    let other =
        json!({"title": "Children of Dune", "author": "Frank Herbert", "publishedYear": 1976});
    let problem = assert_problem(post_with_key(&app, "order-3", &other).await, 422).await;

    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
    assert_eq!(problem["errors"][0]["rule"], "reused");
    assert_eq!(app.stored_books().await.len(), 1);
}

#[tokio::test]
async fn sixteen_concurrent_creates_with_one_key_make_one_book_and_one_event() {
    let app = spawn_app().await;

    let book = valid_book();
    let answers =
        futures::future::join_all((0..16).map(|_| post_with_key(&app, "order-4", &book))).await;

    let mut ids = std::collections::HashSet::new();
    for answer in answers {
        let status = answer.status().as_u16();
        assert!(status == 201 || status == 409, "answered {status}");
        if status == 201 {
            let book: Value = answer.json().await.unwrap();
            ids.insert(id_of(&book).to_owned());
        }
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(app.stored_books().await.len(), 1);
    let id = ids.into_iter().next().unwrap();
    assert_eq!(events_of(&app, &id, 1).await, 1);
}

#[tokio::test]
async fn a_key_belongs_to_the_token_that_sent_it() {
    let app = spawn_app().await;
    assert_eq!(
        post_with_key(&app, "order-5", &valid_book()).await.status(),
        201
    );

    let other_caller = app
        .http
        .post(app.url("/books"))
        .bearer_auth("other-token")
        .header("idempotency-key", "order-5")
        .json(&valid_book())
        .send()
        .await
        .unwrap();

    assert_eq!(other_caller.status(), 201);
    assert!(other_caller.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.stored_books().await.len(), 2);
}

#[tokio::test]
async fn a_key_that_is_not_1_to_255_printable_ascii_characters_is_a_400() {
    let app = spawn_app().await;
    let long = "k".repeat(256);
    for key in [
        reqwest::header::HeaderValue::from_static(""),
        reqwest::header::HeaderValue::from_str(&long).unwrap(),
        reqwest::header::HeaderValue::from_static("tab\there"),
        reqwest::header::HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
    ] {
        let response = app
            .http
            .post(app.url("/books"))
            .bearer_auth(TOKEN)
            .header("idempotency-key", key.clone())
            .json(&valid_book())
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, 400).await;
        assert_eq!(problem["errors"][0]["field"], "Idempotency-Key", "{key:?}");
    }
    assert!(app.stored_books().await.is_empty());
    let longest = "k".repeat(255);
    assert_eq!(
        post_with_key(&app, &longest, &valid_book()).await.status(),
        201
    );
}
