//! Proves that the MongoDB-compatible server the tests run against makes a
//! conditional write to one document atomic, as MongoDB guarantees: of
//! several clients racing the same compare-and-set, exactly one wins, and no
//! `$inc` is lost. The product relies on that guarantee (a book and its
//! outbox event are one guarded document write) and has no other code path;
//! FerretDB v1 breaks it unless built with scripts/ferretdb-atomic-writes.patch,
//! so this suite exists to catch a development server that lacks the patch.

use std::{future::Future, sync::Arc};

use mongodb::{
    bson::{doc, Document},
    options::ReturnDocument,
    Client, Collection, Database,
};
use tokio::sync::Barrier;

/// Races per test: a broken server loses most of them, so 200 leave no doubt.
const TRIALS: i32 = 200;
/// Clients in each race.
const CLIENTS: usize = 4;

/// A database of the test's own, dropped when the returned guard goes (also
/// when the test panicked).
async fn database() -> (Database, test_support::Cleanup) {
    let name = test_support::unique("atomic");
    let client = Client::with_uri_str(&test_support::servers().await.mongo_url)
        .await
        .expect("a MongoDB client");
    let cleanup = test_support::Cleanup::new(vec![name.clone()], Vec::new());
    (client.database(&name), cleanup)
}

/// Runs `TRIALS` races: before each, `prepare(id)`; then `CLIENTS` tasks
/// released together by a barrier each call `attempt(id)`, which says
/// whether that client won. Returns the trials that had a number of winners
/// other than one, with that number.
async fn races<P, PF, A, AF>(prepare: P, attempt: A) -> Vec<(i32, usize)>
where
    P: Fn(i32) -> PF,
    PF: Future<Output = ()>,
    A: Fn(i32) -> AF + Clone + Send + 'static,
    AF: Future<Output = bool> + Send,
{
    let mut wrong = Vec::new();
    for id in 0..TRIALS {
        prepare(id).await;
        let barrier = Arc::new(Barrier::new(CLIENTS));
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (barrier, attempt) = (barrier.clone(), attempt.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    attempt(id).await
                })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            winners += usize::from(task.await.expect("a racing client"));
        }
        if winners != 1 {
            wrong.push((id, winners));
        }
    }
    wrong
}

/// Fails with how many races had other than exactly one winner.
fn assert_one_winner_each(what: &str, wrong: &[(i32, usize)]) {
    assert!(
        wrong.is_empty(),
        "{what}: {} of {TRIALS} races of {CLIENTS} clients had other than one winner \
         (trial, winners): {wrong:?}",
        wrong.len()
    );
}

async fn insert_fresh(books: &Collection<Document>, id: i32) {
    books
        .insert_one(doc! { "_id": id, "v": 1 })
        .await
        .expect("a fresh document");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compare_and_set_update_has_exactly_one_winner() {
    let (db, _cleanup) = database().await;
    let books = db.collection::<Document>("docs");
    let wrong = races(|id| insert_fresh(&books, id), {
        let books = books.clone();
        move |id| {
            let books = books.clone();
            async move {
                let result = books
                    .update_one(doc! { "_id": id, "v": 1 }, doc! { "$set": { "v": 2 } })
                    .await
                    .expect("an update");
                result.modified_count == 1
            }
        }
    })
    .await;
    assert_one_winner_each("update_one({_id, v: 1}, {$set: {v: 2}})", &wrong);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compare_and_set_find_one_and_update_has_exactly_one_winner() {
    let (db, _cleanup) = database().await;
    let books = db.collection::<Document>("docs");
    let wrong = races(|id| insert_fresh(&books, id), {
        let books = books.clone();
        move |id| {
            let books = books.clone();
            async move {
                books
                    .find_one_and_update(doc! { "_id": id, "v": 1 }, doc! { "$set": { "v": 2 } })
                    .await
                    .expect("a findAndModify")
                    .is_some()
            }
        }
    })
    .await;
    assert_one_winner_each("find_one_and_update({_id, v: 1}, {$set: {v: 2}})", &wrong);
}

/// Races `{_id, v: {$lt: 2}}` upserts that set v to 2 and add 1 to n, on
/// absent documents or on existing `{_id, v: 1, n: 0}` ones; checks that
/// each race had one winner and each document ends as `{v: 2, n: 1}`.
async fn upsert_races(existing: bool) {
    let (db, _cleanup) = database().await;
    let books = db.collection::<Document>("docs");
    let wrong = races(
        |id| {
            let books = books.clone();
            async move {
                if existing {
                    books
                        .insert_one(doc! { "_id": id, "v": 1, "n": 0 })
                        .await
                        .expect("an existing document");
                }
            }
        },
        {
            let books = books.clone();
            move |id| {
                let books = books.clone();
                async move {
                    // `$inc` beside the `$set`: a second apply shows as n 2.
                    let result = books
                        .find_one_and_update(
                            doc! { "_id": id, "v": { "$lt": 2 } },
                            doc! { "$set": { "v": 2 }, "$inc": { "n": 1 } },
                        )
                        .upsert(true)
                        .return_document(ReturnDocument::After)
                        .await;
                    match result {
                        Ok(after) => after.is_some(),
                        // A loser finds no match and its insert collides
                        // with the winner's document.
                        Err(e) if platform::mongo::is_duplicate_key(&e) => false,
                        Err(e) => panic!("an upsert: {e}"),
                    }
                }
            }
        },
    )
    .await;
    let mut not_once = Vec::new();
    for id in 0..TRIALS {
        let found = books
            .find_one(doc! { "_id": id })
            .await
            .expect("a find")
            .expect("the upserted document");
        if found.get_i32("v") != Ok(2) || found.get_i32("n") != Ok(1) {
            not_once.push(found);
        }
    }
    let what = if existing { "existing" } else { "absent" };
    assert_one_winner_each(
        &format!("upserts of {{_id, v: {{$lt: 2}}}}, {what} documents"),
        &wrong,
    );
    assert!(
        not_once.is_empty(),
        "{} of {TRIALS} upserted documents are not {{v: 2, n: 1}}: {not_once:?}",
        not_once.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conditional_upsert_of_an_absent_document_applies_exactly_once() {
    upsert_races(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conditional_upsert_of_an_existing_document_applies_exactly_once() {
    upsert_races(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conditional_delete_has_exactly_one_winner() {
    let (db, _cleanup) = database().await;
    let books = db.collection::<Document>("docs");
    let wrong = races(|id| insert_fresh(&books, id), {
        let books = books.clone();
        move |id| {
            let books = books.clone();
            async move {
                let result = books
                    .delete_one(doc! { "_id": id, "v": 1 })
                    .await
                    .expect("a delete");
                result.deleted_count == 1
            }
        }
    })
    .await;
    assert_one_winner_each("delete_one({_id, v: 1})", &wrong);
}

/// A delete must not remove a document that a racing update has just made
/// not match its filter (nor the update change a deleted one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conditional_delete_racing_a_conditional_update_has_exactly_one_winner() {
    let (db, _cleanup) = database().await;
    let books = db.collection::<Document>("docs");
    let turn = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let wrong = races(|id| insert_fresh(&books, id), {
        let books = books.clone();
        move |id| {
            let (books, turn) = (books.clone(), turn.clone());
            async move {
                // Two clients of each race delete, two update.
                let filter = doc! { "_id": id, "v": 1 };
                if turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2 == 0 {
                    books
                        .delete_one(filter)
                        .await
                        .expect("a delete")
                        .deleted_count
                        == 1
                } else {
                    let set = doc! { "$set": { "v": 2 } };
                    books
                        .update_one(filter, set)
                        .await
                        .expect("an update")
                        .modified_count
                        == 1
                }
            }
        }
    })
    .await;
    assert_one_winner_each(
        "delete_one({_id, v: 1}) against update_one({_id, v: 1}, {$set: {v: 2}})",
        &wrong,
    );
}

/// 16 clients, in lockstep, each add 1 to a document 200 times; 8 clients
/// share each document at each step, half of them with `update_one`, half
/// with `find_one_and_update`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_increments_of_one_document_are_never_lost() {
    const INC_CLIENTS: i32 = 16;
    const INCREMENTS: i32 = 200;
    const DOCUMENTS: i32 = 400;
    let (db, _cleanup) = database().await;
    let counters = db.collection::<Document>("counters");
    counters
        .insert_many((0..DOCUMENTS).map(|id| doc! { "_id": id, "n": 0 }))
        .await
        .expect("the counters");
    let barrier = Arc::new(Barrier::new(INC_CLIENTS as usize));
    let clients: Vec<_> = (0..INC_CLIENTS)
        .map(|client| {
            let (counters, barrier) = (counters.clone(), barrier.clone());
            tokio::spawn(async move {
                for step in 0..INCREMENTS {
                    let id = (2 * step + client / 8) % DOCUMENTS;
                    let (filter, inc) = (doc! { "_id": id }, doc! { "$inc": { "n": 1 } });
                    barrier.wait().await;
                    if client % 2 == 0 {
                        counters.update_one(filter, inc).await.expect("an $inc");
                    } else {
                        counters
                            .find_one_and_update(filter, inc)
                            .await
                            .expect("an $inc")
                            .expect("the counter");
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.await.expect("an incrementing client");
    }
    let mut total = 0;
    let mut cursor = counters.find(doc! {}).await.expect("the counters");
    while cursor.advance().await.expect("a counter") {
        total += cursor
            .deserialize_current()
            .expect("a counter")
            .get_i32("n")
            .expect("n");
    }
    let expected = INC_CLIENTS * INCREMENTS;
    assert_eq!(
        total,
        expected,
        "{} of {expected} increments were lost",
        expected - total
    );
}
