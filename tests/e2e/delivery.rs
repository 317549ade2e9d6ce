//! Delivery across outages: nothing posted is lost while the query service
//! is down or Redis is unreachable, and an entry that is not an event is set
//! aside without stopping the events behind it.

use std::{collections::HashSet, time::Duration};

use futures::{stream, StreamExt};
use platform::RedactedUrl;
use reqwest::StatusCode;
use serde_json::{json, Value};
use test_support::{eventually, TcpProxy};

use crate::helpers::{
    book, field, is_cluster, spawn_system, spawn_system_with, BULK_DEADLINE, DEADLINE,
};

#[tokio::test]
async fn books_posted_while_the_query_service_is_down_all_arrive_once_a_new_one_starts() {
    const BOOKS: usize = 200;
    let mut system = spawn_system().await;
    // The group must exist before the stop, so that the new instance resumes
    // it instead of creating it.
    eventually("the consumer group to exist", DEADLINE, || system.group()).await;
    system.stop_query().await;

    let created: Vec<Value> = stream::iter(0..BOOKS)
        .map(|i| {
            let system = &system;
            async move {
                let year = 1900 + i64::try_from(i).expect("a small number");
                let body = json!({ "title": format!("Volume {i}"), "author": "Anonymous", "publishedYear": year });
                system.create_book(&body).await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let ids: HashSet<&str> = created
        .iter()
        .map(|b| b["_id"].as_str().expect("an _id"))
        .collect();
    assert_eq!(ids.len(), BOOKS, "every book got its own id");

    // Every event reached the stream while nobody consumed it. (The relay
    // may send an event twice: delivery is at-least-once.)
    eventually("every event to reach the stream", DEADLINE, || async {
        let streamed: HashSet<String> = system.streamed_book_ids().await.into_iter().collect();
        ids.iter().all(|id| streamed.contains(*id)).then_some(())
    })
    .await;
    let group = system
        .group()
        .await
        .expect("the group survives its consumer");
    assert_eq!(group.pending, 0, "{group:?}");
    assert_eq!(
        group.last_delivered_id, "0-0",
        "nothing was delivered while stopped"
    );
    assert_eq!(system.count_books(&system.read_db).await, 0);

    system.start_query().await;

    // The group acknowledges an event only once the read model holds it.
    let last = system.last_entry_id().await;
    system.await_consumed(&last, BULK_DEADLINE).await;
    assert_eq!(system.count_books(&system.read_db).await, BOOKS as u64);
    let reader = &system;
    stream::iter(&created)
        .for_each_concurrent(16, |book| async move {
            let id = book["_id"].as_str().expect("an _id");
            assert_eq!(reader.read_book(id).await.as_ref(), Some(book));
        })
        .await;
    system.shutdown().await;
}

#[tokio::test]
async fn an_event_delivered_but_never_acknowledged_is_applied_by_the_restarted_consumer() {
    let mut system = spawn_system().await;
    eventually("the consumer group to exist", DEADLINE, || system.group()).await;
    system.stop_query().await;
    let created = system.create_book(&book("Interrupted")).await;
    let id = created["_id"].as_str().expect("an _id");
    eventually("the event to reach the stream", DEADLINE, || async {
        system
            .streamed_book_ids()
            .await
            .iter()
            .any(|streamed| streamed == id)
            .then_some(())
    })
    .await;

    // The stopped consumer "crashed" after the event was delivered to it:
    // the group will never hand it out as new again, only as its pending.
    let delivered = system.deliver_without_ack().await;
    assert!(delivered >= 1, "the event was delivered");
    assert_eq!(system.group().await.map(|g| g.pending), Some(delivered));

    system.start_query().await;
    system.await_book(&created).await;
    system
        .await_consumed(&system.last_entry_id().await, DEADLINE)
        .await;
    system.shutdown().await;
}

#[tokio::test]
async fn an_entry_that_is_not_an_event_is_dead_lettered_and_does_not_stop_later_events() {
    let system = spawn_system().await;

    let not_json = system
        .inject(&[("type", "bookCreated"), ("data", "not json")])
        .await;
    let no_data = system.inject(&[("type", "bookCreated")]).await;
    let created = system.create_book(&book("After the garbage")).await;

    system.await_book(&created).await;
    let dead_letter_stream = system.dead_letter_stream.clone();
    let dead = eventually(
        "both entries in the dead-letter stream",
        DEADLINE,
        || async {
            let entries = system.entries(&dead_letter_stream).await;
            (entries.len() >= 2).then_some(entries)
        },
    )
    .await;
    assert_eq!(dead.len(), 2, "only the two non-events are dead-lettered");
    for (source, data) in [(&not_json, Some("not json")), (&no_data, None)] {
        let entry = dead
            .iter()
            .find(|e| field(e, "sourceId").as_ref() == Some(source))
            .unwrap_or_else(|| panic!("no dead letter for {source}: {dead:?}"));
        let reason = field(entry, "reason").unwrap_or_default();
        assert!(
            !reason.trim().is_empty(),
            "a dead letter says why: {entry:?}"
        );
        assert_eq!(
            field(entry, "type").as_deref(),
            Some("bookCreated"),
            "{entry:?}"
        );
        assert_eq!(field(entry, "data").as_deref(), data, "{entry:?}");
    }
    // Dead-lettered entries are acknowledged, so they cannot wedge the group.
    system
        .await_consumed(&system.last_entry_id().await, DEADLINE)
        .await;
    system.shutdown().await;
}

#[tokio::test]
async fn a_book_posted_while_redis_is_unreachable_is_delivered_once_it_is_reachable_again() {
    // Generous enough for the relay's backoff while Redis is away.
    const OUTAGE_DEADLINE: Duration = Duration::from_secs(20);
    if is_cluster(&test_support::servers().await.redis_url) {
        // A cluster sends its clients to each node's own address: a proxy
        // in front of one cannot cut them off.
        eprintln!("skipped on a Redis Cluster");
        return;
    }
    let proxy = TcpProxy::in_front_of_redis().await;
    let through_proxy = proxy.url();
    let system =
        spawn_system_with(|command| command.redis_url = RedactedUrl::new(through_proxy)).await;

    proxy.cut();
    let created = system.create_book(&book("Written in the dark")).await;
    let id = created["_id"].as_str().expect("an _id");

    // The command service sees Redis down, nothing reached the stream, and
    // the event waits in the book's outbox.
    let readyz = format!("{}/readyz", system.command_url);
    eventually("command-service to report Redis down", DEADLINE, || {
        let request = system.http.get(&readyz);
        async move {
            let response = request.send().await.ok()?;
            let status = response.status();
            let body: Value = response.json().await.ok()?;
            (status == StatusCode::SERVICE_UNAVAILABLE && body["checks"]["redis"] == "down")
                .then_some(())
        }
    })
    .await;
    assert_eq!(system.stream_len(&system.stream).await, 0);
    let stored = system.write_document(id).await.expect("the book is stored");
    assert_eq!(
        stored.get_array("outbox").map(Vec::len).ok(),
        Some(1),
        "{stored}"
    );
    assert_eq!(system.read_book(id).await, None);

    proxy.restore();

    eventually(
        &format!("GET /books/{id} after Redis is back"),
        OUTAGE_DEADLINE,
        || async { system.read_book(id).await.filter(|read| *read == created) },
    )
    .await;
    eventually("the outbox to be cleared", DEADLINE, || async {
        let stored = system.write_document(id).await?;
        stored
            .get_array("outbox")
            .is_ok_and(Vec::is_empty)
            .then_some(())
    })
    .await;
    system.shutdown().await;
}
