//! The write model's guarded writes on a real database: the condition is
//! in the filter, so a write another replica made since the read wins.

use bson::{doc, oid::ObjectId, Document};
use chrono::{SubsecRound, Utc};
use command_service::store::{BookStore, Pending};
use domain::{Book, BookDraft, BookEvent, BookId};
use test_support::{unique, Cleanup};

fn book(title: &str) -> (ObjectId, Book) {
    let id = ObjectId::new();
    let draft = BookDraft::parse(title, "Octavia E. Butler", 1979).unwrap();
    let book = Book::create(
        BookId::parse(&id.to_hex()).unwrap(),
        draft,
        Utc::now().trunc_subsecs(3),
    );
    (id, book)
}

async fn stored(db: &mongodb::Database, id: ObjectId) -> Document {
    db.collection::<Document>("books")
        .find_one(doc! { "_id": id })
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_stale_compare_and_set_writes_nothing() {
    let name = unique("guarded");
    let _cleanup = Cleanup::new(vec![name.clone()], Vec::new());
    let db = test_support::mongo_database(&name).await;
    let store = BookStore::new(&db);
    let (id, created) = book("Kindred");
    let created_json = BookEvent::created(&created, None).to_json();
    store
        .insert(id, &created, &created_json, None)
        .await
        .unwrap();
    let next = created
        .replace(
            BookDraft::parse("Kindred (2nd ed.)", "Octavia E. Butler", 1979).unwrap(),
            Utc::now().trunc_subsecs(3),
        )
        .unwrap();
    let json = BookEvent::updated(&next, None).to_json();

    assert!(store.update(id, 1, &next, &json).await.unwrap());
    // A writer that read version 1 before that write: the database refuses.
    assert!(!store.update(id, 1, &next, &json).await.unwrap());

    let document = stored(&db, id).await;
    assert_eq!(document.get_i64("version").unwrap(), 2);
    assert_eq!(document.get_array("outbox").unwrap().len(), 2);
}

#[tokio::test]
async fn a_clear_removes_what_was_published_and_keeps_what_was_added_meanwhile() {
    let name = unique("guarded");
    let _cleanup = Cleanup::new(vec![name.clone()], Vec::new());
    let db = test_support::mongo_database(&name).await;
    let store = BookStore::new(&db);
    let (id, created) = book("Dawn");
    let first = BookEvent::created(&created, None).to_json();
    store.insert(id, &created, &first, None).await.unwrap();
    // A change stored after the creation event was published.
    let next = created
        .replace(
            BookDraft::parse("Dawn", "Octavia E. Butler", 1987).unwrap(),
            Utc::now().trunc_subsecs(3),
        )
        .unwrap();
    let second = BookEvent::updated(&next, None).to_json();
    assert!(store.update(id, 1, &next, &second).await.unwrap());

    let published = |json: &str| Pending {
        id,
        events: vec![json.to_owned()],
    };
    store.clear(&[published(&first)]).await.unwrap();
    let document = stored(&db, id).await;
    assert_eq!(
        document.get_array("outbox").unwrap(),
        &vec![bson::Bson::String(second.clone())]
    );
    assert!(document.contains_key("outboxAt"));

    store.clear(&[published(&second)]).await.unwrap();
    let document = stored(&db, id).await;
    assert!(document.get_array("outbox").unwrap().is_empty());
    assert!(!document.contains_key("outboxAt"));
    assert!(store.pending(Utc::now(), 10).await.unwrap().is_empty());
}
