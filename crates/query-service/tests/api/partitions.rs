//! A stream split into partitions: every partition is consumed, and each
//! keeps its own dead letters.

use std::time::Duration;

use domain::BookEvent;
use serde_json::Value;
use test_support::{eventually, redis_connection};

use crate::helpers::{new_book, spawn_cleaned_app_with, test_settings, xadd_event, DEADLINE};

#[tokio::test]
async fn events_of_every_partition_apply_and_a_dead_letter_stays_in_its_partition() {
    let mut settings = test_settings().await;
    settings.partitions = 3;
    let app = spawn_cleaned_app_with(settings).await;
    let partitions = app.partitions();
    let mut redis = app.redis.clone();

    let books: Vec<_> = (0..12)
        .map(|i| new_book(&format!("Partitioned {i}")))
        .collect();
    for book in &books {
        let stream = partitions.stream_of(book.id.as_str());
        xadd_event(&mut redis, &stream, &BookEvent::created(book, None)).await;
    }
    let poison: String = redis::cmd("XADD")
        .arg(partitions.stream(2))
        .arg("*")
        .arg("type")
        .arg("bookCreated")
        .arg("data")
        .arg("not json")
        .query_async(&mut redis)
        .await
        .unwrap();

    for book in &books {
        app.wait_for_version(book.id.as_str(), 1).await;
    }
    let used: std::collections::HashSet<usize> = books
        .iter()
        .map(|book| partitions.of(book.id.as_str()))
        .collect();
    assert!(used.len() > 1, "the books spread over partitions {used:?}");

    let dead_letters = app.dead_letters();
    let letters = eventually("the poison entry dead-lettered", DEADLINE, || async {
        let letters = dead_letters.list().await.ok()?;
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].partition, 2);
    assert_eq!(letters[0].source_id, poison);

    // Re-driven into its own partition, where it fails again.
    assert_eq!(dead_letters.redrive(&[]).await.unwrap(), 1);
    let again = eventually(
        "the re-driven entry dead-lettered again",
        DEADLINE,
        || async {
            let letters = dead_letters.list().await.ok()?;
            (letters.len() == 1 && letters[0].source_id != poison).then_some(letters)
        },
    )
    .await;
    assert_eq!(again[0].partition, 2);
    let len: usize = redis::cmd("XLEN")
        .arg(partitions.stream(2))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(len >= 2, "the poison entry came back to partition 2");
}

#[tokio::test]
async fn a_consumer_reads_nothing_while_redis_holds_another_layout_of_the_stream() {
    let settings = test_settings().await;
    let layout = format!("{}:layout", settings.stream);
    let mut redis = redis_connection().await;
    let _: () = redis::cmd("SET")
        .arg(&layout)
        .arg("partitions=2 tagged=true")
        .query_async(&mut redis)
        .await
        .unwrap();
    let book = new_book("Laid out otherwise");
    xadd_event(
        &mut redis,
        &settings.stream,
        &BookEvent::created(&book, None),
    )
    .await;
    let app = spawn_cleaned_app_with(settings).await;

    let readyz = app.url("/readyz");
    let http = &app.http;
    eventually("readiness to name the consumer down", DEADLINE, || async {
        let answer: Value = http.get(&readyz).send().await.ok()?.json().await.ok()?;
        (answer["checks"]["consumer"] == "down" && answer["checks"]["redis"] == "up").then_some(())
    })
    .await;
    // An unhindered consumer applies it within milliseconds.
    let applied = tokio::time::timeout(
        Duration::from_millis(1500),
        app.wait_for_version(book.id.as_str(), 1),
    );
    assert!(applied.await.is_err(), "consumed under another layout");

    let _: () = redis::cmd("DEL")
        .arg(&layout)
        .query_async(&mut redis)
        .await
        .unwrap();
    app.wait_for_version(book.id.as_str(), 1).await;
}
