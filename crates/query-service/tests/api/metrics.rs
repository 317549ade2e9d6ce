//! `/metrics` of query-service: events consumed, applied, skipped as stale,
//! failed and dead-lettered, cache hits and misses, reads by route
//! template, and the consumer group's lag and pending count read at
//! scrape time.
//!
//! Counters are shared by every test of this binary: each test compares
//! before and after, and expects at least its own share.

use std::time::Duration;

use domain::BookEvent;
use test_support::{eventually, metrics::Scrape, redis_connection, TcpProxy};

use crate::helpers::{
    create_group, new_book, spawn_app, spawn_cleaned_app_with, test_settings, xadd_event, TestApp,
    DEADLINE,
};

async fn scrape(app: &TestApp) -> Scrape {
    Scrape::of(&app.http, &format!("http://{}", app.address)).await
}

/// A counter's series, and by how much a test expects it to grow.
struct Growth<'a> {
    name: &'a str,
    labels: &'a [(&'a str, &'a str)],
    by: f64,
}

/// Waits until every counter of `expected` has grown by at least its
/// amount since `before`.
async fn wait_for_growth(app: &TestApp, before: &Scrape, expected: &[Growth<'_>]) {
    eventually("the counters to grow", DEADLINE, || async {
        let now = scrape(app).await;
        expected
            .iter()
            .all(|g| now.count(g.name, g.labels) - before.count(g.name, g.labels) >= g.by)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn events_consumed_applied_and_skipped_as_stale_are_counted() {
    let app = spawn_app().await;
    let book = new_book("Counted");
    let event = BookEvent::created(&book, None);
    let before = scrape(&app).await;

    app.publish(&event).await;
    app.wait_for_version(book.id.as_str(), 1).await;
    app.publish(&event).await;

    let created = [("type", "bookCreated")];
    wait_for_growth(
        &app,
        &before,
        &[
            Growth {
                name: "books_events_consumed_total",
                labels: &[],
                by: 2.0,
            },
            Growth {
                name: "books_events_applied_total",
                labels: &created,
                by: 1.0,
            },
            Growth {
                name: "books_events_stale_total",
                labels: &created,
                by: 1.0,
            },
        ],
    )
    .await;
}

#[tokio::test]
async fn failures_and_dead_letters_are_counted_by_cause_and_reason() {
    let mut settings = test_settings().await;
    settings.max_deliveries = 2;
    let app = spawn_cleaned_app_with(settings).await;
    let before = scrape(&app).await;
    let book = new_book("Keeps failing");
    app.break_summary_of(&book).await;

    app.publish(&BookEvent::created(&book, None)).await;
    app.xadd(&[("type", "bookCreated"), ("data", "not an event")])
        .await;

    wait_for_growth(
        &app,
        &before,
        &[
            Growth {
                name: "books_events_failed_total",
                labels: &[("cause", "error")],
                by: 2.0,
            },
            Growth {
                name: "books_events_dead_lettered_total",
                labels: &[("reason", "failing")],
                by: 1.0,
            },
            Growth {
                name: "books_events_dead_lettered_total",
                labels: &[("reason", "unreadable")],
                by: 1.0,
            },
        ],
    )
    .await;
    assert_eq!(app.dead_letter_count().await, 2);
}

#[tokio::test]
async fn cache_hits_and_misses_are_counted() {
    let app = spawn_app().await;
    let book = new_book("Looked up");
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_until_consumed().await;
    let before = scrape(&app).await;

    // The consumer cached the book: two hits; then a miss refills it.
    for _ in 0..2 {
        assert_eq!(app.get_book(book.id.as_str()).await.status(), 200);
    }
    let mut redis = app.redis.clone();
    let _: () = redis::cmd("DEL")
        .arg(app.cache_key(book.id.as_str()).await)
        .query_async(&mut redis)
        .await
        .unwrap();
    // Once Redis's invalidation reaches this process's copy, a read misses
    // and refills the entry.
    eventually(
        "a miss refilling the entry",
        Duration::from_secs(5),
        || async {
            assert_eq!(app.get_book(book.id.as_str()).await.status(), 200);
            let refilled: bool = redis::cmd("EXISTS")
                .arg(app.cache_key(book.id.as_str()).await)
                .query_async(&mut app.redis.clone())
                .await
                .unwrap();
            refilled.then_some(())
        },
    )
    .await;

    let after = scrape(&app).await;
    let grew = |result: &str| {
        let labels = [("result", result)];
        after.count("books_cache_lookups_total", &labels)
            - before.count("books_cache_lookups_total", &labels)
    };
    assert!(grew("hit") >= 2.0, "{}", grew("hit"));
    assert!(grew("miss") >= 1.0, "{}", grew("miss"));
}

#[tokio::test]
async fn reads_are_counted_by_route_template_not_by_path() {
    let app = spawn_app().await;
    let labels = [
        ("method", "GET"),
        ("route", "/authors/{author}"),
        ("status", "404"),
    ];
    let before = scrape(&app).await;

    for _ in 0..2 {
        assert_eq!(app.get_author("Nobody Wrote This").await.status(), 404);
    }

    let after = scrape(&app).await;
    assert!(
        after.count("books_http_requests_total", &labels)
            - before.count("books_http_requests_total", &labels)
            >= 2.0
    );
    assert!(!after.text().contains("Nobody"), "{}", after.text());
}

#[tokio::test]
async fn the_group_lag_and_pending_count_are_read_at_scrape_time() {
    let mut settings = test_settings().await;
    let proxy = TcpProxy::in_front_of_mongo().await;
    settings.mongo_url = platform::RedactedUrl::new(proxy.url());
    // MongoDB out of reach from the start: the consumer waits for the
    // active read-model generation and reads nothing meanwhile.
    proxy.cut();
    let mut redis = redis_connection().await;
    create_group(&mut redis, &settings.stream, &settings.group).await;
    for title in ["One", "Two", "Three"] {
        let event = BookEvent::created(&new_book(title), None);
        xadd_event(&mut redis, &settings.stream, &event).await;
    }
    let app = spawn_cleaned_app_with(settings).await;

    let waiting = scrape(&app).await;
    assert_eq!(waiting.sum("books_consumer_group_lag", &[]), Some(3.0));
    assert_eq!(waiting.sum("books_consumer_group_pending", &[]), Some(0.0));
    assert_eq!(waiting.sum("books_consumer_up", &[]), Some(0.0));
    let ready: serde_json::Value = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["checks"]["consumer"], "down",
        "down until its first read: {ready}"
    );

    proxy.restore();
    eventually("the backlog consumed", DEADLINE, || async {
        let now = scrape(&app).await;
        (now.sum("books_consumer_group_lag", &[]) == Some(0.0)
            && now.sum("books_consumer_group_pending", &[]) == Some(0.0)
            && now.sum("books_consumer_up", &[]) == Some(1.0))
        .then_some(())
    })
    .await;

    // MongoDB gone again: the next event is read, fails, and stays pending.
    let before = scrape(&app).await;
    proxy.cut();
    app.publish(&BookEvent::created(&new_book("Four"), None))
        .await;
    app.wait_until_a_delivery_is_given_back().await;
    let stuck = scrape(&app).await;
    assert_eq!(stuck.sum("books_consumer_group_lag", &[]), Some(0.0));
    assert_eq!(stuck.sum("books_consumer_group_pending", &[]), Some(1.0));
    assert!(
        stuck.count("books_events_failed_total", &[("cause", "outage")])
            > before.count("books_events_failed_total", &[("cause", "outage")])
    );
    proxy.restore();
}
