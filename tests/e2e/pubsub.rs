//! The tutorial's Pub/Sub channels: every event is also published on the
//! channel named after its type, on one Redis server as on a cluster.

use std::{collections::HashSet, time::Duration};

use futures::StreamExt;
use serde_json::{json, Value};

use crate::helpers::{book, is_cluster, spawn_system, DEADLINE};

/// A subscriber's URL: on a cluster, its first seed node (a PUBLISH on any
/// node reaches subscribers on every node).
fn subscriber_url(redis_url: &str) -> String {
    if !is_cluster(redis_url) {
        return redis_url.to_owned();
    }
    let nodes = redis_url.trim_start_matches("redis+cluster://");
    format!("redis://{}", nodes.split(',').next().expect("a seed node"))
}

#[tokio::test]
async fn every_event_of_a_book_is_published_on_its_type_channel() {
    let redis_url = test_support::servers().await.redis_url.clone();
    let client = redis::Client::open(subscriber_url(&redis_url)).expect("a Redis URL");
    let mut pubsub = client.get_async_pubsub().await.expect("a subscription");
    for channel in ["bookCreated", "bookUpdated", "bookDeleted"] {
        pubsub.subscribe(channel).await.expect("SUBSCRIBE");
    }
    let mut messages = pubsub.on_message();
    let system = spawn_system().await;

    // Books spread over the partitions, each created, changed and deleted.
    let mut expected = HashSet::new();
    for n in 0..8 {
        let created = system.create_book(&book(&format!("Published {n}"))).await;
        let id = created["_id"].as_str().expect("an _id").to_owned();
        let url = format!("{}/books/{id}", system.command_url);
        let patched = system
            .http
            .patch(&url)
            .header("If-Match", "\"1\"")
            .json(&json!({ "title": format!("Republished {n}") }))
            .send()
            .await
            .expect("PATCH answers");
        assert_eq!(patched.status().as_u16(), 200);
        let deleted = system
            .http
            .delete(&url)
            .header("If-Match", "\"2\"")
            .send()
            .await
            .expect("DELETE answers");
        assert_eq!(deleted.status().as_u16(), 204);
        for (channel, version) in [("bookCreated", 1), ("bookUpdated", 2), ("bookDeleted", 3)] {
            expected.insert((channel.to_owned(), id.clone(), version));
        }
    }

    // Other tests publish on the same channels: keep ours.
    let ids: HashSet<String> = expected.iter().map(|(_, id, _)| id.clone()).collect();
    let mut received = HashSet::new();
    let all = tokio::time::timeout(DEADLINE + Duration::from_secs(5), async {
        while received != expected {
            let message = messages.next().await.expect("the subscription stays open");
            let event: Value = serde_json::from_str(&message.get_payload::<String>().unwrap())
                .expect("a JSON event");
            let id = event["bookId"].as_str().unwrap_or_default().to_owned();
            if ids.contains(&id) {
                assert_eq!(event["type"], message.get_channel_name());
                received.insert((
                    message.get_channel_name().to_owned(),
                    id,
                    event["version"].as_u64().expect("a version"),
                ));
            }
        }
    })
    .await;
    assert!(
        all.is_ok(),
        "missing: {:?}",
        expected.difference(&received).collect::<Vec<_>>()
    );
    system.shutdown().await;
}
