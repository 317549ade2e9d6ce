//! Locks shared by replicas, in a real `bookLocks` collection: each
//! `ReplicaLocks` below is one replica.

use std::{sync::Arc, time::Duration};

use bson::{doc, oid::ObjectId, DateTime};
use command_service::replica_locks::{Mode, ReplicaLocks};
use test_support::unique;

async fn database() -> mongodb::Database {
    test_support::mongo_database(&unique("locks")).await
}

fn replica(db: &mongodb::Database, ttl: Duration) -> Arc<ReplicaLocks> {
    Arc::new(ReplicaLocks::new(db, ttl))
}

#[tokio::test]
async fn a_book_locked_by_one_replica_waits_for_its_release() {
    let db = database().await;
    let (first, second) = (
        replica(&db, Duration::from_secs(60)),
        replica(&db, Duration::from_secs(60)),
    );
    let id = ObjectId::new();
    let held = first.lock(id).await.unwrap();

    let waiting = tokio::spawn(async move { second.lock(id).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "two replicas held one book's lock");

    held.release().await;
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the lock passes on once released")
        .unwrap()
        .unwrap();
    db.drop().await.unwrap();
}

#[tokio::test]
async fn the_lock_of_a_replica_that_died_holding_it_expires() {
    let db = database().await;
    let id = ObjectId::new();
    // What a replica killed while holding the lock leaves behind.
    db.collection("bookLocks")
        .insert_one(doc! {
            "_id": id,
            "owner": "dead replica",
            "expiresAt": DateTime::from_millis(DateTime::now().timestamp_millis() - 1),
        })
        .await
        .unwrap();

    let survivor = replica(&db, Duration::from_secs(60));
    tokio::time::timeout(Duration::from_secs(5), survivor.lock(id))
        .await
        .expect("an expired lock is taken over")
        .unwrap()
        .release()
        .await;
    db.drop().await.unwrap();
}

#[tokio::test]
async fn the_relay_takes_only_the_books_no_other_replica_holds() {
    let db = database().await;
    let (writer, relay) = (
        replica(&db, Duration::from_secs(60)),
        replica(&db, Duration::from_secs(60)),
    );
    let (busy, free) = (ObjectId::new(), ObjectId::new());
    let held = writer.lock(busy).await.unwrap();

    // A book published twice in one batch is named twice.
    let taken = relay.try_lock_all(&[busy, free, free]).await.unwrap();
    assert!(taken.holds(free), "a book named twice was not locked");
    assert!(
        !taken.holds(busy),
        "a book another replica writes was taken"
    );
    taken.release().await;

    held.release().await;
    let again = relay.try_lock_all(&[busy]).await.unwrap();
    assert!(again.holds(busy), "a released lock can be taken");
    again.release().await;
    db.drop().await.unwrap();
}

#[tokio::test]
async fn a_lock_dropped_without_a_write_is_given_back() {
    let db = database().await;
    let (first, second) = (
        replica(&db, Duration::from_secs(60)),
        replica(&db, Duration::from_secs(60)),
    );
    let id = ObjectId::new();
    // A request that found nothing to write drops its lock.
    drop(first.lock(id).await.unwrap());
    tokio::time::timeout(Duration::from_secs(5), second.lock(id))
        .await
        .expect("a dropped lock is released")
        .unwrap()
        .release()
        .await;
    db.drop().await.unwrap();
}

#[tokio::test]
async fn auto_mode_recognises_ferretdb_by_its_build_info() {
    let db = database().await;
    let build_info = db.run_command(doc! { "buildInfo": 1 }).await.unwrap();
    let ferretdb = build_info.contains_key("ferretdbVersion");
    assert_eq!(Mode::Auto.applies_to(&db).await.unwrap(), ferretdb);
    assert!(Mode::On.applies_to(&db).await.unwrap());
    assert!(!Mode::Off.applies_to(&db).await.unwrap());
}
