//! The Redis read cache behind `GET /books/{id}`: filled by the consumer
//! before it acknowledges, refilled on a miss, never moved back to an older
//! version, a way around a MongoDB outage, and kept in each process's
//! memory as well, where Redis invalidates it.

use std::time::Duration;

use axum::body::Bytes;
use domain::{BookEvent, BookId};
use query_service::read_model::{BookCache, Cached};
use serde_json::Value;
use test_support::{assert_problem, eventually, metrics::Scrape, TcpProxy};

use crate::helpers::{
    cleanup_for, deleted, new_book, redis_server_id, spawn_app, spawn_cleaned_app_with,
    test_settings, updated,
};

#[tokio::test]
async fn the_consumer_caches_the_book_it_applied_before_acknowledging_it() {
    let app = spawn_app().await;
    let book = new_book("Cached");

    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_until_consumed().await;

    let entry = app.cache_entry(book.id.as_str()).await;
    assert_eq!(entry["v"], "1");
    let cached: Value = serde_json::from_str(&entry["body"]).unwrap();
    assert_eq!(cached, serde_json::to_value(&book).unwrap());
    let mut redis = app.redis.clone();
    let ttl: i64 = redis::cmd("TTL")
        .arg(app.cache_key(book.id.as_str()).await)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!((3500..=3600).contains(&ttl), "expires: {ttl}");
}

#[tokio::test]
async fn a_cached_book_is_served_while_mongodb_is_cut() {
    let mut settings = test_settings().await;
    let proxy = TcpProxy::in_front_of_mongo().await;
    settings.mongo_url = platform::RedactedUrl::new(proxy.url());
    let app = spawn_cleaned_app_with(settings).await;
    let book = new_book("Through the outage");
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_until_consumed().await;

    proxy.cut();

    let response = app.get_book(book.id.as_str()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"1\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::to_value(&book).unwrap());
    // MongoDB is really out of reach: what only it can answer fails.
    assert_problem(app.list(&[]).await, 503).await;
}

#[tokio::test]
async fn the_first_get_after_an_update_is_acknowledged_shows_it() {
    let app = spawn_app().await;
    let book = new_book("Before");
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_for_version(book.id.as_str(), 1).await;

    app.publish(&updated(&book, "After", 2)).await;
    app.wait_until_consumed().await;

    let response = app.get_book(book.id.as_str()).await;
    assert_eq!(response.headers()["etag"], "\"2\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["version"], 2);
    assert_eq!(body["title"], "After");
}

#[tokio::test]
async fn the_first_get_after_a_delete_is_acknowledged_is_404() {
    let app = spawn_app().await;
    let book = new_book("Doomed");
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_for_version(book.id.as_str(), 1).await;

    app.publish(&deleted(&book, 2)).await;
    app.wait_until_consumed().await;

    assert_problem(app.get_book(book.id.as_str()).await, 404).await;
    let entry = app.cache_entry(book.id.as_str()).await;
    assert_eq!(entry.get("v").map(String::as_str), Some("2"));
    assert_eq!(entry.get("gone").map(String::as_str), Some("1"));
    assert!(!entry.contains_key("body"));
}

#[tokio::test]
async fn a_late_older_event_never_overwrites_the_cache() {
    let app = spawn_app().await;
    let book = new_book("Original");
    app.publish(&BookEvent::created(&book, None)).await;
    app.publish(&updated(&book, "Renamed", 2)).await;
    app.wait_until_consumed().await;

    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_until_consumed().await;
    assert_eq!(app.cache_entry(book.id.as_str()).await["v"], "2");

    // Even with the entry gone, a stale event caches what the read model
    // holds, not its own older state.
    let mut redis = app.redis.clone();
    let _: () = redis::cmd("DEL")
        .arg(app.cache_key(book.id.as_str()).await)
        .query_async(&mut redis)
        .await
        .unwrap();
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_until_consumed().await;
    let entry = app.cache_entry(book.id.as_str()).await;
    assert_eq!(entry["v"], "2");
    let cached: Value = serde_json::from_str(&entry["body"]).unwrap();
    assert_eq!(cached["title"], "Renamed");
}

#[tokio::test]
async fn a_cache_miss_is_refilled_from_the_read_model() {
    let app = spawn_app().await;
    let book = new_book("Evicted");
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_until_consumed().await;
    let mut redis = app.redis.clone();
    let removed: u32 = redis::cmd("DEL")
        .arg(app.cache_key(book.id.as_str()).await)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(removed, 1);

    let response = app.get_book(book.id.as_str()).await;

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"1\"");
    let served = response.text().await.unwrap();
    let entry = app.cache_entry(book.id.as_str()).await;
    assert_eq!(entry["v"], "1");
    assert_eq!(entry["body"], served);
}

#[tokio::test]
async fn the_cache_answers_without_the_read_model() {
    let app = spawn_app().await;
    let book = new_book("Only in the cache");
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_until_consumed().await;
    // Change the read model behind the cache's back: a hit does not see it.
    app.db
        .collection::<bson::Document>("books")
        .delete_many(bson::doc! {})
        .await
        .unwrap();

    let body: Value = app.get_book(book.id.as_str()).await.json().await.unwrap();

    assert_eq!(body["title"], "Only in the cache");
}

/// An app reaching Redis through a proxy (to cut), with a book titled
/// `title` already consumed.
async fn consumed_behind_a_redis_proxy(
    title: &str,
) -> (crate::helpers::TestApp, TcpProxy, domain::Book) {
    let mut settings = test_settings().await;
    let proxy = TcpProxy::in_front_of_redis().await;
    settings.redis_url = platform::RedactedUrl::new(proxy.url());
    let app = spawn_cleaned_app_with(settings).await;
    let book = new_book(title);
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_until_consumed().await;
    (app, proxy, book)
}

#[tokio::test]
async fn reads_fall_back_to_the_read_model_while_redis_is_cut() {
    let (app, proxy, book) = consumed_behind_a_redis_proxy("Without Redis").await;

    proxy.cut();

    let response = app.get_book(book.id.as_str()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["etag"], "\"1\"");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::to_value(&book).unwrap());
}

#[tokio::test]
async fn the_cache_only_ever_moves_to_a_higher_version() {
    let settings = test_settings().await;
    let _cleanup = cleanup_for(&settings);
    let mut redis = test_support::redis_connection().await;
    let run_id = redis_server_id(&mut redis).await;
    let cache = BookCache::new(
        redis.clone(),
        settings.cache_prefix.clone(),
        Duration::from_secs(60),
    );
    // Until the servers are known the cache is skipped.
    let id = BookId::parse("65a1b2c3d4e5f60718293a4b").unwrap();
    let first = Cached::Gone { version: 1 };
    assert!(!cache.put(&id, &first).await.unwrap());
    assert_eq!(cache.get(&id).await.unwrap(), None);
    cache.set_servers(std::slice::from_ref(&run_id));
    let book = |version, body: &'static str| Cached::Book {
        version,
        body: Bytes::from_static(body.as_bytes()),
    };

    assert!(cache.put(&id, &book(2, "two")).await.unwrap());
    assert!(!cache.put(&id, &book(1, "one")).await.unwrap());
    assert!(!cache.put(&id, &book(2, "another two")).await.unwrap());
    assert_eq!(cache.get(&id).await.unwrap(), Some(book(2, "two")));

    assert!(cache.put(&id, &Cached::Gone { version: 3 }).await.unwrap());
    assert!(!cache.put(&id, &book(2, "two")).await.unwrap());
    assert_eq!(
        cache.get(&id).await.unwrap(),
        Some(Cached::Gone { version: 3 })
    );
    let epoch = query_service::read_model::cache::epoch_of(&[run_id]);
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("{}{epoch}:{id}", settings.cache_prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!((1..=60).contains(&ttl), "{ttl}");
}

/// The process's copy's hits and invalidations so far (counted for every
/// app of this test binary: other tests only add to them).
async fn local_copy(app: &crate::helpers::TestApp) -> (f64, f64) {
    let scrape = Scrape::of(&app.http, &format!("http://{}", app.address)).await;
    let value = |name: &str| {
        scrape
            .sum(name, &[])
            .unwrap_or_else(|| panic!("no {name} in {}", scrape.text()))
    };
    (
        value("books_cache_local_hits_total"),
        value("books_cache_local_invalidations_total"),
    )
}

#[tokio::test]
async fn a_hot_book_is_answered_from_the_process_memory() {
    let app = spawn_app().await;
    let book = new_book("Hot");
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_until_consumed().await;
    let (hits_before, _) = local_copy(&app).await;

    for _ in 0..3 {
        let response = app.get_book(book.id.as_str()).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, serde_json::to_value(&book).unwrap());
    }

    // The first read asked Redis; the next two did not.
    let (hits_after, _) = local_copy(&app).await;
    assert!(
        hits_after - hits_before >= 2.0,
        "{hits_before} -> {hits_after}"
    );
}

#[tokio::test]
async fn a_change_any_writer_makes_in_redis_replaces_the_process_copy() {
    let settings = test_settings().await;
    let app = spawn_cleaned_app_with(settings.clone()).await;
    let book = new_book("Before");
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_until_consumed().await;
    for _ in 0..2 {
        assert_eq!(
            app.get_book(book.id.as_str()).await.headers()["etag"],
            "\"1\""
        );
    }
    let (_, invalidations_before) = local_copy(&app).await;

    // Another replica's consumer writes a newer version.
    let elsewhere = BookCache::new(
        test_support::redis_connection().await,
        settings.cache_prefix.clone(),
        Duration::from_secs(60),
    );
    let mut redis = test_support::redis_connection().await;
    elsewhere.set_servers(&[redis_server_id(&mut redis).await]);
    let newer = Cached::Book {
        version: 2,
        body: Bytes::from_static(b"{\"title\":\"After\"}"),
    };
    assert!(elsewhere.put(&book.id, &newer).await.unwrap());

    // Well within the copy's own expiry (30 s): only Redis's invalidation
    // can make this pass.
    let served = eventually(
        "the newer version served",
        Duration::from_secs(5),
        || async {
            let response = app.get_book(book.id.as_str()).await;
            (response.headers()["etag"] == "\"2\"").then_some(response)
        },
    )
    .await;
    assert_eq!(served.text().await.unwrap(), r#"{"title":"After"}"#);
    let (_, invalidations_after) = local_copy(&app).await;
    assert!(invalidations_after > invalidations_before);
}

#[tokio::test]
async fn a_lost_redis_connection_drops_the_process_copy() {
    let (app, proxy, book) = consumed_behind_a_redis_proxy("Remembered").await;
    for _ in 0..2 {
        let body: Value = app.get_book(book.id.as_str()).await.json().await.unwrap();
        assert_eq!(body["title"], "Remembered");
    }

    proxy.cut();
    // The read model changes behind the cache, as only a repair would: a
    // copy that outlived its connection would keep the old title.
    app.db
        .collection::<bson::Document>("books")
        .update_one(
            bson::doc! { "_id": bson::oid::ObjectId::parse_str(book.id.as_str()).unwrap() },
            bson::doc! { "$set": { "title": "Changed" } },
        )
        .await
        .unwrap();

    eventually("the read model's title", Duration::from_secs(5), || async {
        let body: Value = app.get_book(book.id.as_str()).await.json().await.unwrap();
        (body["title"] == "Changed").then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_entry_read_before_the_servers_changed_is_stored_in_the_old_epoch_only() {
    let settings = test_settings().await;
    let _cleanup = cleanup_for(&settings);
    let cache = BookCache::new(
        test_support::redis_connection().await,
        settings.cache_prefix.clone(),
        Duration::from_secs(60),
    );
    let id = BookId::parse("65a1b2c3d4e5f60718293a4c").unwrap();
    let old = Cached::Book {
        version: 1,
        body: Bytes::from_static(b"{\"title\":\"Before\"}"),
    };
    cache.set_servers(&["run-1:replication-1".to_owned()]);
    let before = cache.epoch();
    assert!(cache.put(&id, &old).await.unwrap());

    // A failover: another server, which may have lost the last writes.
    cache.set_servers(&["run-2:replication-2".to_owned()]);
    assert_eq!(cache.get(&id).await.unwrap(), None, "a fresh epoch");
    // A refill read before the change lands where readers no longer look.
    cache.put_in(&before, &id, &old).await.unwrap();
    assert_eq!(cache.get(&id).await.unwrap(), None);
    // Back to the first server: a failback is another epoch all the same,
    // as the replication id changes.
    cache.set_servers(&["run-1:replication-3".to_owned()]);
    assert_eq!(cache.get(&id).await.unwrap(), None);
}
