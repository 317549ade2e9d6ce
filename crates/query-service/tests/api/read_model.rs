//! The read model's apply: the version condition in the write's filter and
//! no read before it.

use domain::BookEvent;
use platform::document::StoredBook;
use query_service::read_model::{ActiveGeneration, Applied, Books};

use crate::helpers::{deleted, new_book, spawn_app, updated};

fn title_of(current: &StoredBook) -> Option<&str> {
    match current {
        StoredBook::Live(book) => Some(book.state.title.as_str()),
        StoredBook::Deleted { .. } => None,
    }
}

#[tokio::test]
async fn only_events_newer_than_the_stored_version_are_written() {
    let app = spawn_app().await;
    let read_model = Books::on(ActiveGeneration::new(&app.db));
    let book = new_book("First");

    let (applied, record) = read_model
        .upsert(&BookEvent::created(&book, None))
        .await
        .unwrap();
    assert_eq!(applied, Applied::Written);
    let record = record.expect("the written document");
    assert_eq!(record.current.version(), 1);
    assert_eq!(title_of(&record.current), Some("First"));
    assert_eq!(record.author_keys, [book.state.author.key()]);

    let (applied, record) = read_model
        .upsert(&updated(&book, "Second", 2))
        .await
        .unwrap();
    assert_eq!(applied, Applied::Written);
    assert_eq!(title_of(&record.unwrap().current), Some("Second"));

    // A duplicate, then a late create: the upsert's insert collides and
    // the plain guarded update matches nothing.
    for event in [
        updated(&book, "Second again", 2),
        BookEvent::created(&book, None),
    ] {
        let (applied, record) = read_model.upsert(&event).await.unwrap();
        assert_eq!(applied, Applied::Stale, "{event:?}");
        assert_eq!(record, None);
    }
    let stored = read_model.find(&book.id).await.unwrap().unwrap();
    assert_eq!(stored.current.version(), 2);
    assert_eq!(title_of(&stored.current), Some("Second"));

    let (applied, record) = read_model.upsert(&deleted(&book, 3)).await.unwrap();
    assert_eq!(applied, Applied::Written);
    let record = record.unwrap();
    assert_eq!(record.current, StoredBook::Deleted { version: 3 });
    assert_eq!(record.author_keys, [book.state.author.key()]);
}
