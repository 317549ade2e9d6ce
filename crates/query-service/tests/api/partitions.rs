//! A stream split into partitions: every partition is consumed, and each
//! keeps its own dead letters.

use domain::BookEvent;
use test_support::eventually;

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
