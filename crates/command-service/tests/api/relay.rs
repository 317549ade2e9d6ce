//! The outbox relay: every stored event reaches the stream (and Pub/Sub),
//! including events left pending by a crash or by Redis being down.

use std::time::Duration;

use bson::{doc, oid::ObjectId, DateTime};
use chrono::{SubsecRound, Utc};
use domain::{Book, BookDraft, BookEvent, BookId};
use futures::{stream, StreamExt};
use serde_json::Value;
use test_support::{eventually, TcpProxy};

use crate::helpers::{
    partitions_of, spawn_app, spawn_app_with, spawn_app_with_cleanup, test_settings, valid_book,
};

const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_created_book_is_appended_to_the_stream_and_its_outbox_cleared() {
    let app = spawn_app().await;

    let book: Value = app.post_book(&valid_book()).await.json().await.unwrap();

    let events = app.wait_until_relayed(1).await;
    let (kind, event) = &events[0];
    assert_eq!(kind, "bookCreated");
    assert_eq!(event["type"], "bookCreated");
    assert_eq!(event["bookId"], book["_id"]);
    assert_eq!(event["version"], 1);
    assert_eq!(event["occurredAt"], book["updatedAt"]);
    assert!(event["eventId"].as_str().is_some_and(|id| id.len() == 36));
    for field in ["title", "author", "publishedYear", "createdAt", "updatedAt"] {
        assert_eq!(event["book"][field], book[field], "{field}");
    }
}

#[tokio::test]
async fn a_created_book_is_published_on_the_book_created_channel() {
    let app = spawn_app().await;
    let client = redis::Client::open(test_support::servers().await.redis_url.as_str()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("bookCreated").await.unwrap();
    let mut messages = pubsub.on_message();

    let book: Value = app.post_book(&valid_book()).await.json().await.unwrap();

    // Other tests publish on the same channel: wait for ours.
    let ours = tokio::time::timeout(DEADLINE, async {
        while let Some(message) = messages.next().await {
            let payload: String = message.get_payload().unwrap();
            let event: Value = serde_json::from_str(&payload).unwrap();
            if event["bookId"] == book["_id"] {
                return event;
            }
        }
        panic!("subscription closed");
    })
    .await
    .expect("the event was published on bookCreated");
    assert_eq!(ours["type"], "bookCreated");
    assert_eq!(ours["book"]["title"], "Dune");
}

#[tokio::test]
async fn concurrent_creates_each_produce_exactly_one_event() {
    let app = spawn_app().await;

    let ids: Vec<String> = stream::iter(0..60)
        .map(|i| {
            let app = &app;
            async move {
                let body = serde_json::json!({ "title": format!("Book {i}"), "author": "A", "publishedYear": 2000 });
                let book: Value = app.post_book(&body).await.json().await.unwrap();
                book["_id"].as_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    let events = app.wait_until_relayed(60).await;
    let mut relayed: Vec<String> = events
        .iter()
        .map(|(_, e)| e["bookId"].as_str().unwrap().to_owned())
        .collect();
    let mut posted = ids;
    relayed.sort();
    posted.sort();
    assert_eq!(relayed, posted);
}

#[tokio::test]
async fn events_left_pending_by_a_crash_are_published_at_start() {
    let settings = test_settings().await;
    // What a crash right after the write leaves behind: a book whose event
    // is still in its outbox.
    let id = ObjectId::new();
    let draft = BookDraft::parse("Left Behind", "A", 1999).unwrap();
    let book = Book::create(
        BookId::parse(&id.to_hex()).unwrap(),
        draft,
        Utc::now().trunc_subsecs(3),
    );
    let event = BookEvent::created(&book, None).to_json();
    test_support::mongo_database(&settings.database)
        .await
        .collection::<bson::Document>("books")
        .insert_one(doc! {
            "_id": id, "title": "Left Behind", "author": "A", "publishedYear": 1999,
            "version": 1_i64, "outbox": [&event], "outboxAt": DateTime::now(),
        })
        .await
        .unwrap();

    let app = spawn_app_with(settings).await;

    let events = app.wait_until_relayed(1).await;
    assert_eq!(events[0].1, serde_json::from_str::<Value>(&event).unwrap());
}

#[tokio::test]
async fn a_write_accepted_while_redis_is_down_is_published_when_it_returns() {
    let mut settings = test_settings().await;
    let proxy = TcpProxy::in_front_of_redis().await;
    settings.redis_url = platform::RedactedUrl::new(proxy.url());
    let app = spawn_app_with(settings).await;

    proxy.cut();
    let response = app.post_book(&valid_book()).await;
    assert_eq!(
        response.status().as_u16(),
        201,
        "writes do not depend on Redis"
    );
    let book: Value = response.json().await.unwrap();
    let stored = app.stored_books().await;
    assert_eq!(
        stored[0].get_array("outbox").unwrap().len(),
        1,
        "the event waits in the outbox"
    );

    proxy.restore();
    let events = tokio::time::timeout(Duration::from_secs(40), app.wait_until_relayed(1))
        .await
        .unwrap_or_else(|_| panic!("not relayed after Redis returned"));
    assert_eq!(events[0].1["bookId"], book["_id"]);
}

#[tokio::test]
async fn stopping_gracefully_loses_no_event() {
    let settings = test_settings().await;
    let app = spawn_app_with(settings.clone()).await;
    for _ in 0..20 {
        assert_eq!(app.post_book(&valid_book()).await.status().as_u16(), 201);
    }
    app.stop().await;

    // Whatever the stopped relay did not publish, the next start does.
    let restarted = spawn_app_with(settings).await;
    let events = restarted.wait_until_relayed(20).await;
    assert_eq!(events.len(), 20);
}

/// Stores `count` books whose events are still pending, as a replica that
/// crashed before publishing would leave them.
async fn leave_pending(settings: &command_service::config::Settings, count: usize) {
    let db = test_support::mongo_database(&settings.database).await;
    let store = command_service::store::BookStore::new(&db);
    for n in 0..count {
        let id = ObjectId::new();
        let draft = BookDraft::parse(&format!("Backlog {n}"), "Frank Herbert", 1965).unwrap();
        let book = Book::create(
            BookId::parse(&id.to_hex()).unwrap(),
            draft,
            Utc::now().trunc_subsecs(3),
        );
        store
            .insert(id, &book, &BookEvent::created(&book, None).to_json(), None)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn two_replicas_publish_a_backlog_once() {
    let settings = test_settings().await;
    leave_pending(&settings, 50).await;

    // Both start, and sweep, at once; only the lease holder publishes.
    let first = crate::helpers::spawn_app_with_cleanup(settings.clone()).await;
    let _second = spawn_app_with(settings).await;

    let events = first.wait_until_relayed(50).await;
    let ids: std::collections::HashSet<&str> = events
        .iter()
        .map(|(_, event)| event["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 50, "each pending event published once");
}

#[tokio::test]
async fn the_sweep_is_taken_over_when_its_holder_stops_renewing_the_lease() {
    let settings = test_settings().await;
    let mut redis = test_support::redis_connection().await;
    // A replica that held the lease and died: it expires by itself.
    redis::cmd("SET")
        .arg(crate::helpers::lease_key(&settings))
        .arg("vanished-replica")
        .arg("PX")
        .arg(300)
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    leave_pending(&settings, 3).await;

    let app = crate::helpers::spawn_app_with_cleanup(settings).await;

    app.wait_until_relayed(3).await;
}

#[tokio::test]
async fn a_stopping_replica_gives_the_lease_up() {
    let settings = test_settings().await;
    let key = crate::helpers::lease_key(&settings);
    let app = crate::helpers::spawn_app_with_cleanup(settings).await;
    let mut redis = app.redis.clone();
    eventually("the lease held", DEADLINE, || {
        let mut redis = redis.clone();
        let key = key.clone();
        async move {
            let holder: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .ok()?;
            holder
        }
    })
    .await;

    app.stop().await;

    let holder: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(holder, None);
}

#[tokio::test]
async fn each_event_goes_to_the_partition_of_its_book_and_nowhere_else() {
    let mut settings = test_settings().await;
    settings.partitions = 4;
    let partitions = partitions_of(&settings);
    let app = spawn_app_with_cleanup(settings).await;

    let created: Vec<Value> = stream::iter(0..16)
        .then(|_| app.create_book())
        .collect()
        .await;

    let by_partition = eventually("16 events in the partitions", DEADLINE, || {
        let (partitions, mut redis) = (&partitions, app.redis.clone());
        async move {
            let mut by_partition = Vec::new();
            for stream in partitions.streams() {
                let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(stream)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut redis)
                    .await
                    .ok()?;
                let ids: Vec<String> = entries
                    .ids
                    .iter()
                    .map(|entry| {
                        let data: String = entry.get("data").expect("a data field");
                        let event: Value = serde_json::from_str(&data).expect("JSON");
                        event["bookId"].as_str().expect("a bookId").to_owned()
                    })
                    .collect();
                by_partition.push(ids);
            }
            (by_partition.iter().map(Vec::len).sum::<usize>() == 16).then_some(by_partition)
        }
    })
    .await;
    for (partition, ids) in by_partition.iter().enumerate() {
        for id in ids {
            assert_eq!(partitions.of(id), partition, "book {id}");
        }
    }
    assert!(
        by_partition.iter().filter(|ids| !ids.is_empty()).count() > 1,
        "16 books spread over more than one partition: {by_partition:?}"
    );
    for book in &created {
        let id = book["_id"].as_str().unwrap();
        assert!(by_partition[partitions.of(id)].iter().any(|i| i == id));
    }
}

#[tokio::test]
async fn nothing_is_published_while_redis_holds_another_layout_of_the_stream() {
    let settings = test_settings().await;
    let layout = format!("{}:layout", settings.stream);
    let mut redis = test_support::redis_connection().await;
    let _: () = redis::cmd("SET")
        .arg(&layout)
        .arg("partitions=4 tagged=true")
        .query_async(&mut redis)
        .await
        .unwrap();
    let app = spawn_app_with_cleanup(settings).await;

    let book = app.create_book().await;
    // An unhindered relay publishes within milliseconds.
    let relayed = tokio::time::timeout(Duration::from_millis(1500), app.wait_until_relayed(1));
    assert!(relayed.await.is_err(), "published under another layout");
    let stored = app.stored_book(book["_id"].as_str().unwrap()).await;
    assert_eq!(stored.get_array("outbox").map(Vec::len).ok(), Some(1));

    // Once the layouts agree (the operator removed the old one), it goes.
    let _: () = redis::cmd("DEL")
        .arg(&layout)
        .query_async(&mut redis)
        .await
        .unwrap();
    app.wait_until_relayed(1).await;
    let recorded: String = redis::cmd("GET")
        .arg(&layout)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(recorded, "partitions=1 tagged=false");
}
