//! The consumer: version guard, dead letters, pending entries, outages.

use domain::BookEvent;
use serde_json::Value;
use test_support::{eventually, redis_connection, TcpProxy};

use crate::helpers::{
    create_group, deleted, new_book, new_book_by, spawn_app, spawn_app_with,
    spawn_cleaned_app_with, test_settings, updated, xadd_event, DEADLINE,
};

#[tokio::test]
async fn a_duplicate_event_is_acknowledged_and_changes_nothing() {
    let app = spawn_app().await;
    let book = new_book("Duplicate");
    let created = BookEvent::created(&book, None);
    app.publish(&created).await;
    let first = app.wait_for_version(book.id.as_str(), 1).await;

    app.publish(&created).await;
    app.wait_until_consumed().await;

    let after: Value = app.get_book(book.id.as_str()).await.json().await.unwrap();
    assert_eq!(after, first);
    let dead = app.dead_letter_count().await;
    assert_eq!(dead, 0, "a duplicate is not an error");
}

#[tokio::test]
async fn another_event_with_the_same_version_changes_nothing() {
    let app = spawn_app().await;
    let book = new_book("First writer");
    app.publish(&updated(&book, "First writer", 2)).await;
    let first = app.wait_for_version(book.id.as_str(), 2).await;

    // Same version, other content: only the first one of a version counts.
    app.publish(&updated(&book, "Second writer", 2)).await;
    app.wait_until_consumed().await;

    let after: Value = app.get_book(book.id.as_str()).await.json().await.unwrap();
    assert_eq!(after, first);
}

#[tokio::test]
async fn an_older_version_after_a_newer_one_changes_nothing() {
    let app = spawn_app().await;
    let book = new_book("Original");
    app.publish(&BookEvent::created(&book, None)).await;
    app.publish(&updated(&book, "Renamed", 2)).await;
    app.wait_for_version(book.id.as_str(), 2).await;

    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_until_consumed().await;

    let body: Value = app.get_book(book.id.as_str()).await.json().await.unwrap();
    assert_eq!(body["version"], 2);
    assert_eq!(body["title"], "Renamed");
}

#[tokio::test]
async fn an_update_delivered_before_its_create_wins() {
    let app = spawn_app().await;
    let book = new_book("Original");

    app.publish(&updated(&book, "Renamed", 2)).await;
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_until_consumed().await;

    let body: Value = app.get_book(book.id.as_str()).await.json().await.unwrap();
    assert_eq!(body["version"], 2);
    assert_eq!(body["title"], "Renamed");
}

#[tokio::test]
async fn a_deleted_book_is_gone_and_a_late_create_cannot_bring_it_back() {
    let app = spawn_app().await;
    let book = new_book("Doomed");
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_for_version(book.id.as_str(), 1).await;

    app.publish(&deleted(&book, 2)).await;
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_until_consumed().await;

    assert_eq!(app.get_book(book.id.as_str()).await.status(), 404);
    let tombstone = app
        .db
        .collection::<bson::Document>("books")
        .find_one(bson::doc! { "_id": bson::oid::ObjectId::parse_str(book.id.as_str()).unwrap() })
        .await
        .unwrap()
        .expect("a tombstone is kept");
    assert_eq!(tombstone.get_i64("version").unwrap(), 2);
    assert!(tombstone.get_bool("deleted").unwrap());
}

#[tokio::test]
async fn events_already_in_the_stream_are_consumed_at_first_start() {
    let settings = test_settings().await;
    let books: Vec<_> = (0..5).map(|i| new_book(&format!("Early {i}"))).collect();
    let mut redis = redis_connection().await;
    for book in &books {
        xadd_event(
            &mut redis,
            &settings.stream,
            &BookEvent::created(book, None),
        )
        .await;
    }

    let app = spawn_app_with(settings).await;

    for book in &books {
        app.wait_for_version(book.id.as_str(), 1).await;
    }
    app.wait_until_consumed().await;
}

#[tokio::test]
async fn an_entry_that_is_not_an_event_is_dead_lettered_and_later_events_still_apply() {
    let app = spawn_app().await;

    let poison = app
        .xadd(&[("type", "bookCreated"), ("data", "not json")])
        .await;
    let no_data = app.xadd(&[("type", "bookCreated")]).await;
    let book = new_book("After the poison");
    app.publish(&BookEvent::created(&book, None)).await;

    app.wait_for_version(book.id.as_str(), 1).await;
    app.wait_until_consumed().await;
    let mut redis = app.redis.clone();
    let dead: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&app.settings.dead_letter_stream)
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .unwrap();
    let sources: Vec<String> = dead
        .ids
        .iter()
        .map(|e| e.get("sourceId").unwrap())
        .collect();
    assert_eq!(sources, [poison, no_data]);
    let reason: String = dead.ids[0].get("reason").unwrap();
    assert!(reason.contains("not a valid event"), "{reason}");
    let data: String = dead.ids[0].get("data").unwrap();
    assert_eq!(
        data, "not json",
        "the original entry is kept for re-driving"
    );
}

#[tokio::test]
async fn entries_delivered_but_never_acknowledged_are_applied_after_a_restart() {
    let settings = test_settings().await;
    // Create the group, as a first run would.
    let mut redis = redis_connection().await;
    create_group(&mut redis, &settings.stream, &settings.group).await;
    // Deliver an entry to our consumer name without applying it: what a
    // crash between read and apply leaves behind.
    let book = new_book("Pending");
    xadd_event(
        &mut redis,
        &settings.stream,
        &BookEvent::created(&book, None),
    )
    .await;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&settings.group)
        .arg(&settings.consumer)
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(&settings.stream)
        .arg(">")
        .query_async(&mut redis)
        .await
        .unwrap();
    let (pending, ..): (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(&settings.stream)
        .arg(&settings.group)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(pending, 1, "the entry was left pending");

    let restarted = spawn_app_with(settings).await;

    restarted.wait_for_version(book.id.as_str(), 1).await;
    restarted.wait_until_consumed().await;
}

/// Breaks MongoDB with `fault` while an event is being applied: the failed
/// delivery is handed back, never counted (one delivery would otherwise
/// dead-letter it), and the event applied once MongoDB is back.
async fn an_event_survives_a_mongodb_fault(fault: impl FnOnce(&TcpProxy)) {
    let mut settings = test_settings().await;
    let proxy = TcpProxy::in_front_of_mongo().await;
    settings.mongo_url = platform::RedactedUrl::new(proxy.url());
    settings.max_deliveries = 1;
    let app = spawn_app_with(settings).await;
    // The consumer runs once it has read the active read-model generation.
    let before = new_book("Before the fault");
    app.publish(&BookEvent::created(&before, None)).await;
    app.wait_for_version(before.id.as_str(), 1).await;

    fault(&proxy);
    let book = new_book("Through the fault");
    app.publish(&BookEvent::created(&book, None)).await;
    app.wait_until_a_delivery_is_given_back().await;

    proxy.restore();
    tokio::time::timeout(std::time::Duration::from_secs(40), async {
        app.wait_for_version(book.id.as_str(), 1).await;
        app.wait_until_consumed().await;
    })
    .await
    .expect("applied after MongoDB returned");
    let dead = app.dead_letter_count().await;
    assert_eq!(dead, 0, "an outage is not a reason to give an event up");
}

#[tokio::test]
async fn events_are_not_acknowledged_while_mongodb_is_down_and_apply_when_it_returns() {
    an_event_survives_a_mongodb_fault(TcpProxy::cut).await;
}

/// The driver bounds connecting, not answering: the consumer bounds the
/// apply itself.
#[tokio::test]
async fn a_hung_mongodb_does_not_hold_the_batch_for_ever() {
    an_event_survives_a_mongodb_fault(TcpProxy::hang).await;
}

/// A server that takes the read model's writes and never answers them,
/// for more writes than the connection pool holds: each gives its
/// connection up at its timeout, so once the server answers again the
/// events are applied without a restart.
#[tokio::test]
async fn writes_mongodb_never_answers_do_not_wedge_the_consumer() {
    const POOL: usize = 4;
    let mut settings = test_settings().await;
    let proxy = TcpProxy::in_front_of_mongo().await;
    // No heartbeat during the test: the driver's monitor, noticing a
    // silent server, would close the pool's connections itself.
    settings.mongo_url = platform::RedactedUrl::new(format!(
        "{}&maxPoolSize={POOL}&heartbeatFrequencyMS=600000",
        proxy.url()
    ));
    let app = spawn_app_with(settings).await;
    let before = new_book("Before the silence");
    app.publish(&BookEvent::created(&before, None)).await;
    app.wait_for_version(before.id.as_str(), 1).await;

    // Each event's upsert is a findAndModify.
    proxy.swallow_replies_to("findAndModify");
    let books: Vec<_> = (0..2 * POOL)
        .map(|i| new_book(&format!("Through the silence {i}")))
        .collect();
    for book in &books {
        app.publish(&BookEvent::created(book, None)).await;
    }
    app.wait_until_a_delivery_is_given_back().await;

    proxy.restore();
    tokio::time::timeout(std::time::Duration::from_secs(40), async {
        for book in &books {
            app.wait_for_version(book.id.as_str(), 1).await;
        }
        app.wait_until_consumed().await;
    })
    .await
    .expect("applied once MongoDB answered again");
}

#[tokio::test]
async fn entries_a_vanished_consumer_left_pending_are_claimed_and_applied() {
    let mut settings = test_settings().await;
    settings.claim_idle = std::time::Duration::from_millis(200);
    let mut redis = redis_connection().await;
    let book = new_book("Left pending");
    // Another replica read the event, then died before acknowledging it.
    create_group(&mut redis, &settings.stream, &settings.group).await;
    xadd_event(
        &mut redis,
        &settings.stream,
        &BookEvent::created(&book, None),
    )
    .await;
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&settings.group)
        .arg("vanished-replica")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(&settings.stream)
        .arg(">")
        .query_async(&mut redis)
        .await
        .unwrap();

    let app = spawn_cleaned_app_with(settings).await;

    app.wait_for_version(book.id.as_str(), 1).await;
    app.wait_until_nothing_pending().await;
}

#[tokio::test]
async fn an_event_that_keeps_failing_is_dead_lettered_after_the_configured_deliveries() {
    let mut settings = test_settings().await;
    settings.max_deliveries = 3;
    let app = spawn_cleaned_app_with(settings).await;
    // The author's summary cannot be read, so applying the event fails at
    // every delivery.
    let book = new_book("Doomed");
    app.break_summary_of(&book).await;
    let source = app.publish(&BookEvent::created(&book, None)).await;
    let other = new_book_by("Unaffected", "Frank Herbert", 1965);
    app.publish(&BookEvent::created(&other, None)).await;

    // The other event is not held back, and the failing one ends up dead.
    app.wait_for_version(other.id.as_str(), 1).await;
    let reason = eventually(
        "the failing event in the dead-letter stream",
        DEADLINE,
        || async {
            let letter = app.dead_letters().list().await.ok()?.into_iter().next()?;
            assert_eq!(letter.source_id, source);
            Some(letter.reason)
        },
    )
    .await;
    assert!(reason.starts_with("failed 3 deliveries"), "{reason}");
    app.wait_until_nothing_pending().await;
}

#[tokio::test]
async fn a_dead_letter_is_listed_and_applied_when_redriven_after_its_cause_is_fixed() {
    let mut settings = test_settings().await;
    settings.max_deliveries = 2;
    let app = spawn_cleaned_app_with(settings).await;
    let book = new_book("Second chance");
    let broken = app.break_summary_of(&book).await;
    let event = BookEvent::created(&book, None);
    let source = app.publish(&event).await;
    let dead_letters = app.dead_letters();

    let letter = eventually("the event dead-lettered", DEADLINE, || async {
        dead_letters.list().await.ok()?.into_iter().next()
    })
    .await;
    assert_eq!(letter.source_id, source);
    assert!(
        letter.reason.starts_with("failed 2 deliveries"),
        "{}",
        letter.reason
    );
    assert_eq!(
        letter.fields,
        [
            ("data".to_owned(), event.to_json()),
            ("type".to_owned(), "bookCreated".to_owned())
        ]
        .into()
    );

    assert!(
        dead_letters.redrive(&["0-1".to_owned()]).await.is_err(),
        "an unknown id is refused"
    );

    // The cause fixed, the re-driven event goes through, once.
    app.db
        .collection::<bson::Document>("authors")
        .delete_one(bson::doc! { "_id": broken })
        .await
        .unwrap();
    assert_eq!(
        dead_letters
            .redrive(std::slice::from_ref(&letter.id))
            .await
            .unwrap(),
        1
    );
    assert_eq!(dead_letters.redrive(&[]).await.unwrap(), 0);
    app.wait_until_consumed().await;
    assert_eq!(
        app.get_author(book.state.author.as_str()).await.status(),
        200
    );
    assert!(dead_letters.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_stream_is_trimmed_of_what_every_group_acknowledged_and_nothing_else() {
    let mut settings = test_settings().await;
    settings.trim_interval = std::time::Duration::from_millis(100);
    let mut redis = redis_connection().await;
    // Another group reads the same stream, more slowly.
    create_group(&mut redis, &settings.stream, "audit").await;
    let app = spawn_cleaned_app_with(settings).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            app.publish(&BookEvent::created(&new_book(&format!("Book {n}")), None))
                .await,
        );
    }
    app.wait_until_consumed().await;
    let length = || async {
        let mut redis = app.redis.clone();
        redis::cmd("XLEN")
            .arg(&app.settings.stream)
            .query_async::<u64>(&mut redis)
            .await
            .unwrap()
    };

    // The other group has read three entries and acknowledged the first:
    // the second is pending there, the last two unread.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("audit")
        .arg("auditor")
        .arg("COUNT")
        .arg(3)
        .arg("STREAMS")
        .arg(&app.settings.stream)
        .arg(">")
        .query_async(&mut redis)
        .await
        .unwrap();
    let ack = |id: String| {
        let mut redis = redis.clone();
        let stream = app.settings.stream.clone();
        async move {
            redis::cmd("XACK")
                .arg(&stream)
                .arg("audit")
                .arg(id)
                .query_async::<u64>(&mut redis)
                .await
                .unwrap()
        }
    };
    ack(ids[0].clone()).await;
    eventually(
        "the first entry trimmed, none after it",
        DEADLINE,
        || async { (length().await == 4).then_some(()) },
    )
    .await;

    ack(ids[1].clone()).await;
    ack(ids[2].clone()).await;
    eventually(
        "entries up to the other group's position trimmed",
        DEADLINE,
        || async { (length().await == 3).then_some(()) },
    )
    .await;
}
