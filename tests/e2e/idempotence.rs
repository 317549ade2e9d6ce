//! The read model is idempotent and order-tolerant: a duplicate or an older
//! event, however late it arrives, changes nothing.

use std::time::Duration;

use bson::oid::ObjectId;
use domain::{Book, BookDraft, BookEvent, BookId, EventType, Title};
use serde_json::Value;

use crate::helpers::{book, field, spawn_system, TestSystem, DEADLINE};

/// The event that changes `event`'s book to `title`, one version later.
fn retitled(event: &BookEvent, title: &str) -> BookEvent {
    let mut state = event.book.clone().expect("the event carries the book");
    state.title = Title::parse(title).expect("a valid title");
    state.updated_at += Duration::from_secs(60);
    let book = Book {
        id: event.book_id.clone(),
        state,
        version: event.version + 1,
    };
    BookEvent {
        event_type: EventType::BookUpdated,
        // `created` gives the event a fresh id.
        ..BookEvent::created(&book, None)
    }
}

/// What `GET /books/{id}` answers once `event` is applied.
fn as_read(event: &BookEvent) -> Value {
    let book = Book {
        id: event.book_id.clone(),
        state: event.book.clone().expect("the event carries the book"),
        version: event.version,
    };
    serde_json::to_value(book).expect("a book serializes")
}

/// Appends `events` to the events stream as the relay would, in one go so
/// that the consumer reads them in one batch; returns the entry ids.
async fn deliver(system: &TestSystem, events: &[&BookEvent]) -> Vec<String> {
    let entries: Vec<_> = events
        .iter()
        .map(|event| {
            vec![
                ("type", event.event_type.as_str().to_owned()),
                ("data", event.to_json()),
            ]
        })
        .collect();
    system.inject_at_once(&entries).await
}

/// Posts a book, waits until it is readable and returns it with the event
/// the command service published for it.
async fn posted_book(system: &TestSystem, title: &str) -> (Value, BookEvent) {
    let created = system.create_book(&book(title)).await;
    system.await_book(&created).await;
    let entries = system.entries(&system.stream).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let data = field(&entries[0], "data").expect("the entry has data");
    let event = BookEvent::from_json(&data).expect("the relay published an event");
    assert_eq!(
        event.book_id.as_str(),
        created["_id"].as_str().expect("an _id")
    );
    (created, event)
}

#[tokio::test]
async fn the_same_event_delivered_twice_leaves_the_read_model_unchanged() {
    let system = spawn_system().await;
    let (created, event) = posted_book(&system, "Twice Told Tales").await;
    let id = event.book_id.as_str();
    let stored = system
        .read_document(id)
        .await
        .expect("the read model holds the book");
    assert_eq!(
        stored.get_str("eventId"),
        Ok(event.event_id.to_string().as_str())
    );

    // Redeliver the very entry the relay published, fields and all.
    let original = &system.entries(&system.stream).await[0];
    let duplicate = system
        .inject(&[
            ("type", &field(original, "type").expect("a type")),
            ("data", &field(original, "data").expect("data")),
        ])
        .await;
    system.await_consumed(&duplicate, DEADLINE).await;

    assert_eq!(system.read_book(id).await, Some(created));
    assert_eq!(system.read_document(id).await, Some(stored));
    assert_eq!(
        system.stream_len(&system.dead_letter_stream).await,
        0,
        "a duplicate is not an error"
    );
    system.shutdown().await;
}

#[tokio::test]
async fn an_older_version_after_a_newer_one_leaves_the_read_model_unchanged() {
    let system = spawn_system().await;
    let (_, created) = posted_book(&system, "First Draft").await;
    let id = created.book_id.as_str();

    let updated = retitled(&created, "Final Cut");
    deliver(&system, &[&updated]).await;
    system.await_book(&as_read(&updated)).await;

    let late = deliver(&system, &[&created]).await;
    system.await_consumed(&late[0], DEADLINE).await;

    assert_eq!(system.read_book(id).await, Some(as_read(&updated)));
    let stored = system
        .read_document(id)
        .await
        .expect("the read model holds the book");
    assert_eq!(
        stored.get_str("eventId"),
        Ok(updated.event_id.to_string().as_str())
    );
    assert_eq!(
        system.stream_len(&system.dead_letter_stream).await,
        0,
        "a stale event is not an error"
    );
    system.shutdown().await;
}

#[tokio::test]
async fn an_update_delivered_before_the_create_ends_at_the_update() {
    let system = spawn_system().await;
    let id = BookId::parse(&ObjectId::new().to_hex()).expect("an ObjectId is a book id");
    let draft = BookDraft::parse("Early Bird", "Anonymous", 2001).expect("a valid draft");
    let created_at = "2024-05-01T10:00:00.123Z".parse().expect("a timestamp");
    let created = BookEvent::created(&Book::create(id.clone(), draft, created_at), None);
    let updated = retitled(&created, "Late Worm");

    deliver(&system, &[&updated]).await;
    system.await_book(&as_read(&updated)).await;
    let late = deliver(&system, &[&created]).await;
    system.await_consumed(&late[0], DEADLINE).await;

    assert_eq!(system.read_book(id.as_str()).await, Some(as_read(&updated)));
    assert_eq!(as_read(&updated)["version"], 2);
    assert_eq!(system.stream_len(&system.dead_letter_stream).await, 0);
    system.shutdown().await;
}

#[tokio::test]
async fn versions_of_one_book_applied_in_the_same_batch_end_at_the_newest() {
    let system = spawn_system().await;
    let mut expected = Vec::new();
    let mut events = Vec::new();
    for i in 0..20 {
        let id = BookId::parse(&ObjectId::new().to_hex()).expect("an ObjectId is a book id");
        let draft =
            BookDraft::parse(&format!("Race {i}"), "Anonymous", 2001).expect("a valid draft");
        let created_at = "2024-05-01T10:00:00.123Z".parse().expect("a timestamp");
        let created = BookEvent::created(&Book::create(id, draft, created_at), None);
        let updated = retitled(&created, &format!("Race {i}, revised"));
        expected.push(as_read(&updated));
        // Both orders: the outcome must not depend on it.
        if i % 2 == 0 {
            events.extend([created, updated]);
        } else {
            events.extend([updated, created]);
        }
    }
    let ids = deliver(&system, &events.iter().collect::<Vec<_>>()).await;
    system
        .await_consumed(ids.last().expect("entries"), DEADLINE)
        .await;

    for book in &expected {
        let id = book["_id"].as_str().expect("an _id");
        assert_eq!(system.read_book(id).await.as_ref(), Some(book));
    }
    system.shutdown().await;
}
