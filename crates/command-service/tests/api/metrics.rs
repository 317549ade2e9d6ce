//! `/metrics`: requests by route template and status, events appended and
//! published, MongoDB commands by name, and the outbox backlog read at
//! scrape time.
//!
//! Counters are shared by every test of this binary: each test compares
//! before and after, and expects at least its own share.

use std::time::Duration;

use bson::{doc, oid::ObjectId, DateTime};
use serde_json::Value;
use test_support::{eventually, metrics::Scrape, TcpProxy};

use crate::helpers::{
    spawn_app, spawn_app_with_cleanup, test_settings, valid_book, TestApp, RELAY_DEADLINE,
};

async fn scrape(app: &TestApp) -> Scrape {
    Scrape::of(&app.http, &format!("http://{}", app.address)).await
}

#[tokio::test]
async fn metrics_are_open_and_documented_as_the_prometheus_text_format() {
    let app = spawn_app().await;
    let alive = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(alive.status(), 200);

    // No token: `/metrics` is open, like the health routes.
    let scrape = scrape(&app).await;

    assert!(scrape.declares("books_http_requests_total", "counter"));
    assert!(scrape.declares("books_http_request_duration_seconds", "histogram"));
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ok = &doc["paths"]["/metrics"]["get"]["responses"]["200"];
    assert!(
        ok["content"].get("text/plain; version=0.0.4").is_some(),
        "{ok}"
    );
}

#[tokio::test]
async fn requests_are_counted_and_timed_by_route_template_and_status() {
    let app = spawn_app().await;
    let id = ObjectId::new().to_hex();
    let unknown = [
        ("method", "DELETE"),
        ("route", "/books/{id}"),
        ("status", "404"),
    ];
    let before = scrape(&app).await;

    for _ in 0..3 {
        assert_eq!(app.delete_book(&id).await.status(), 404);
    }
    let made_up = app
        .http
        .get(app.url("/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_eq!(made_up.status(), 404);

    let after = scrape(&app).await;
    let grew = |name: &str, labels: &[(&str, &str)]| {
        after.count(name, labels) - before.count(name, labels)
    };
    assert!(grew("books_http_requests_total", &unknown) >= 3.0);
    assert!(grew("books_http_request_duration_seconds_count", &unknown) >= 3.0);
    assert!(
        grew(
            "books_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ) >= 1.0
    );
    assert!(
        !after.text().contains(&id) && !after.text().contains("/no/such/route"),
        "a raw path became a label:\n{}",
        after.text()
    );
    assert_eq!(
        after.sum("books_http_requests_total", &[("route", "/metrics")]),
        None,
        "scrapes count themselves"
    );
}

#[tokio::test]
async fn events_appended_and_published_are_counted_by_type() {
    let app = spawn_app().await;
    let before = scrape(&app).await;

    let book = app.create_relayed_book(0).await;
    let id = book["_id"].as_str().unwrap();
    assert_eq!(app.delete_book(id).await.status(), 204);
    app.wait_until_relayed(2).await;

    let after = scrape(&app).await;
    for event_type in ["bookCreated", "bookDeleted"] {
        for (name, labels) in [
            ("books_events_appended_total", vec![("type", event_type)]),
            (
                "books_events_published_total",
                vec![("type", event_type), ("via", "immediate")],
            ),
        ] {
            assert!(
                after.count(name, &labels) - before.count(name, &labels) >= 1.0,
                "{name} {labels:?}"
            );
        }
    }
}

#[tokio::test]
async fn mongodb_commands_are_counted_by_name() {
    let app = spawn_app().await;
    let before = scrape(&app).await;

    // A create: the insert, then the relay's clear of the outbox.
    app.create_relayed_book(0).await;

    let after = scrape(&app).await;
    assert!(after.declares("books_mongodb_commands_total", "counter"));
    for command in ["insert", "update"] {
        let labels = [("command", command)];
        assert!(
            after.count("books_mongodb_commands_total", &labels)
                - before.count("books_mongodb_commands_total", &labels)
                >= 1.0,
            "{command}"
        );
    }
}

#[tokio::test]
async fn the_outbox_backlog_and_its_age_are_read_at_scrape_time() {
    let mut settings = test_settings().await;
    let proxy = TcpProxy::in_front_of_redis().await;
    settings.redis_url = platform::RedactedUrl::new(proxy.url());
    let app = spawn_app_with_cleanup(settings).await;
    let empty = scrape(&app).await;
    assert_eq!(empty.sum("books_outbox_pending_books", &[]), Some(0.0));
    assert_eq!(
        empty.sum("books_outbox_oldest_pending_age_seconds", &[]),
        Some(0.0)
    );

    // Redis is gone: writes are accepted and their events wait, one of
    // them since a minute ago.
    proxy.cut();
    assert_eq!(app.post_book(&valid_book()).await.status(), 201);
    let minute_ago = DateTime::from_millis(DateTime::now().timestamp_millis() - 60_000);
    app.db
        .collection::<bson::Document>("books")
        .insert_one(doc! {
            "_id": ObjectId::new(), "title": "Waiting", "author": "A", "publishedYear": 1999,
            "version": 1_i64, "outbox": ["{}"], "outboxAt": minute_ago,
        })
        .await
        .unwrap();

    let waiting = scrape(&app).await;
    assert_eq!(waiting.sum("books_outbox_pending_books", &[]), Some(2.0));
    let age = waiting
        .sum("books_outbox_oldest_pending_age_seconds", &[])
        .unwrap();
    assert!((60.0..120.0).contains(&age), "{age}");

    proxy.restore();
    eventually(
        "the backlog published",
        RELAY_DEADLINE + Duration::from_secs(30),
        || async {
            let now = scrape(&app).await;
            (now.sum("books_outbox_pending_books", &[]) == Some(0.0)
                && now.sum("books_outbox_oldest_pending_age_seconds", &[]) == Some(0.0))
            .then_some(())
        },
    )
    .await;
}
