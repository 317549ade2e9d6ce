//! Anti-entropy and rebuilds: the read model converges to the write model
//! when events never arrive, and a rebuild switches the running service to
//! a new generation of collections while reads go on.

use std::time::Duration;

use bson::{doc, Document};
use domain::BookEvent;
use futures::TryStreamExt;
use query_service::{
    maintain::{
        rebuild::Rebuild,
        reconcile::{reconcile, Repair, Report},
    },
    read_model::{ActiveGeneration, Books, Collections},
};
use test_support::eventually;

use crate::helpers::{
    new_book, new_book_by, revised, spawn_app, spawn_cleaned_app_with, test_settings,
    write_document, write_tombstone, TestApp, DEADLINE,
};

/// Waits until `GET /books/{id}` answers `status`.
async fn await_status(app: &TestApp, id: &str, status: u16) {
    eventually(
        &format!("GET /books/{id} answers {status}"),
        DEADLINE,
        || async { (app.get_book(id).await.status() == status).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn books_whose_events_never_arrived_reach_the_read_model_at_start() {
    let settings = test_settings().await;
    let write_books = test_support::mongo_database(&settings.write_database)
        .await
        .collection::<Document>("books");
    // The write model holds three books whose events were lost.
    let created = new_book("Lost at creation");
    let updated = revised(&new_book("Lost while updated"), 3, |state| {
        state.title = domain::Title::parse("Updated twice").unwrap();
    });
    let deleted = new_book("Lost while deleted");
    write_books
        .insert_many([
            write_document(&created),
            write_document(&updated),
            write_tombstone(&deleted, 2),
        ])
        .await
        .unwrap();

    let app = spawn_cleaned_app_with(settings).await;

    app.wait_for_version(created.id.as_str(), 1).await;
    let body = app.wait_for_version(updated.id.as_str(), 3).await;
    assert_eq!(body["title"], "Updated twice");
    // The tombstone arrives too, so a late create cannot resurrect it.
    let tombstone = eventually("the tombstone", DEADLINE, || async {
        app.db
            .collection::<Document>("books")
            .find_one(doc! { "_id": bson::oid::ObjectId::parse_str(deleted.id.as_str()).unwrap() })
            .await
            .unwrap()
    })
    .await;
    assert_eq!(tombstone.get_bool("deleted"), Ok(true));
    assert_eq!(tombstone.get_i64("version"), Ok(2));
    await_status(&app, deleted.id.as_str(), 404).await;
    app.stop().await;
}

#[tokio::test]
async fn a_walk_repairs_missing_and_stale_books_and_leaves_unknown_ones_alone() {
    let app = spawn_app().await;
    let read_model = Books::new(&app.db);
    let current = new_book("Current");
    let behind = new_book("Behind");
    let missing = new_book("Missing");
    let unknown = new_book("Unknown to the write model");
    for event in [
        BookEvent::created(&current, None),
        BookEvent::created(&behind, None),
        BookEvent::created(&unknown, None),
    ] {
        read_model.upsert(&event).await.unwrap();
    }
    let behind_now = revised(&behind, 2, |_| {});
    app.write_books()
        .insert_many([
            write_document(&current),
            write_document(&behind_now),
            write_document(&missing),
        ])
        .await
        .unwrap();
    let write_books = app.write_books().clone_with_type();

    let repair = Repair::Write(read_model.clone());
    let report = reconcile(&write_books, &read_model, &repair, None)
        .await
        .unwrap();

    assert_eq!(
        report,
        Report {
            checked: 3,
            missing: 1,
            stale: 1,
            repaired: 2,
            unpublished: 0,
            unknown: 1,
            invalid: 0
        }
    );
    for (book, version) in [(&current, 1), (&behind, 2), (&missing, 1), (&unknown, 1)] {
        let record = read_model
            .find(&book.id)
            .await
            .unwrap()
            .expect("in the read model");
        assert_eq!(
            record.current.version(),
            version,
            "{}",
            book.state.title.as_str()
        );
    }
    let again = reconcile(&write_books, &read_model, &repair, None)
        .await
        .unwrap();
    assert_eq!(again.repaired, 0, "a second walk finds nothing: {again:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_walk_skips_write_model_documents_that_are_not_books() {
    let app = spawn_app().await;
    let read_model = Books::new(&app.db);
    let book = new_book("Valid");
    app.write_books()
        .insert_many([
            write_document(&book),
            doc! { "_id": bson::oid::ObjectId::new(), "version": 1_i64, "title": "" },
        ])
        .await
        .unwrap();

    let report = reconcile(
        &app.write_books().clone_with_type(),
        &read_model,
        &Repair::Write(read_model.clone()),
        None,
    )
    .await
    .unwrap();

    assert_eq!((report.missing, report.invalid), (1, 1), "{report:?}");
    app.stop().await;
}

#[tokio::test]
async fn after_redis_lost_events_a_book_published_before_but_not_cleared_is_repaired() {
    let app = spawn_app().await;
    let read_model = Books::new(&app.db);
    let lost = new_book("Published to a server that died");
    let pending = new_book("Stored after the loss");
    let now = bson::DateTime::now().timestamp_millis();
    let with_outbox = |book, at: i64| {
        let mut document = write_document(book);
        document.insert("outbox", vec![bson::Bson::String("{}".to_owned())]);
        document.insert("outboxAt", bson::DateTime::from_millis(at));
        document
    };
    app.write_books()
        .insert_many([
            with_outbox(&lost, now - 60_000),
            with_outbox(&pending, now + 60_000),
        ])
        .await
        .unwrap();
    let write_books = app.write_books().clone_with_type();
    let repair = Repair::Write(read_model.clone());

    // With no loss, both are the relay's.
    let report = reconcile(&write_books, &read_model, &repair, None)
        .await
        .unwrap();
    assert_eq!((report.unpublished, report.repaired), (2, 0), "{report:?}");

    let report = reconcile(&write_books, &read_model, &repair, Some(chrono::Utc::now()))
        .await
        .unwrap();
    assert_eq!((report.unpublished, report.repaired), (1, 1), "{report:?}");
    assert!(read_model.find(&lost.id).await.unwrap().is_some());
    assert!(read_model.find(&pending.id).await.unwrap().is_none());
    app.stop().await;
}

#[tokio::test]
async fn losing_the_consumer_group_makes_the_service_reconcile() {
    let app = spawn_app().await;
    // The consumer runs: an event gets through.
    let seen = new_book("Seen");
    app.publish(&BookEvent::created(&seen, None)).await;
    app.wait_for_version(seen.id.as_str(), 1).await;
    app.write_books()
        .insert_one(write_document(&seen))
        .await
        .unwrap();

    // Redis loses the stream and the group, and with them the event of a
    // book the write model holds (the service reconciles at start and then
    // only when told, in these tests).
    let lost = new_book("Lost with the stream");
    app.write_books()
        .insert_one(write_document(&lost))
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&app.settings.stream)
        .query_async(&mut app.redis.clone())
        .await
        .unwrap();

    app.wait_for_version(lost.id.as_str(), 1).await;
    app.stop().await;
}

#[tokio::test]
async fn a_rebuild_switches_the_running_service_to_a_new_generation_while_it_serves() {
    let settings = test_settings().await;
    let write_db = test_support::mongo_database(&settings.write_database).await;
    let books: Vec<_> = (0..30)
        .map(|i| new_book_by(&format!("Rebuilt {i}"), "Octavia E. Butler", 1979))
        .collect();
    write_db
        .collection::<Document>("books")
        .insert_many(books.iter().map(write_document))
        .await
        .unwrap();
    let app = spawn_cleaned_app_with(settings).await;
    for book in &books {
        app.wait_for_version(book.id.as_str(), 1).await;
    }

    // Reads go on during the whole rebuild.
    let reader = {
        let (http, url) = (
            app.http.clone(),
            app.url(&format!("/books/{}", books[0].id.as_str())),
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut reads = 0u32;
            while !stopped.is_cancelled() {
                let status = http.get(&url).send().await.unwrap().status();
                assert_eq!(status, 200, "a read during the rebuild");
                reads += 1;
            }
            reads
        });
        (stop, task)
    };
    let rebuild = Rebuild {
        db: app.db.clone(),
        write_books: write_db.collection("books"),
        after_switch: Repair::Emit {
            redis: app.redis.clone(),
            partitions: app.partitions(),
            settle: Duration::from_millis(200),
        },
        refresh: app.settings.generation_refresh,
    };
    let report = rebuild.run().await.unwrap();
    reader.0.cancel();
    let reads = reader.1.await.unwrap();
    assert!(reads > 0);

    assert_eq!(report.previous, "");
    assert_eq!(report.filled.missing, 30, "{report:?}");
    assert!(report.lagging_replicas.is_empty(), "{report:?}");
    assert_eq!(
        ActiveGeneration::named(&app.db).await.unwrap(),
        report.generation
    );
    let new = Collections::of(&app.db, &report.generation);
    assert_eq!(new.books.count_documents(doc! {}).await.unwrap(), 30);
    let summary = new
        .authors
        .find_one(doc! { "_id": "octavia e. butler" })
        .await
        .unwrap()
        .expect("the summary in the new generation");
    assert_eq!(summary.get_i64("bookCount"), Ok(30));

    // The running service now applies to the new generation only.
    let changed = revised(&books[1], 2, |_| {});
    app.publish(&BookEvent::updated(&changed, None)).await;
    app.wait_for_version(changed.id.as_str(), 2).await;
    let id = bson::oid::ObjectId::parse_str(changed.id.as_str()).unwrap();
    let version_in = |books: mongodb::Collection<Document>| async move {
        books
            .find_one(doc! { "_id": id })
            .await
            .unwrap()
            .and_then(|d| d.get_i64("version").ok())
    };
    eventually("the change in the new generation", DEADLINE, || async {
        (version_in(new.books.clone()).await == Some(2)).then_some(())
    })
    .await;
    assert_eq!(
        version_in(app.db.collection("books")).await,
        Some(1),
        "the old generation is left as it was"
    );
    // And serves lists and summaries from it.
    let summary = app.get_author("Octavia E. Butler").await;
    assert_eq!(summary.status(), 200);
    let old_books: Vec<Document> = app
        .db
        .collection::<Document>("books")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(old_books.len(), 30, "the previous generation is kept");
    tokio::time::timeout(Duration::from_secs(15), app.stop())
        .await
        .expect("the service stops");
}
