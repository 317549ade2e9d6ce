//! `GET /authors/{author}`: the summary of an author's live books, exact
//! whatever the order, duplication and sharing of the events.

use std::collections::BTreeMap;

use domain::{Book, BookEvent};
use serde_json::{json, Value};
use test_support::assert_problem;

use crate::helpers::{
    author, books_in_creation_order, cleanup_for, deleted, revised, spawn_app, spawn_app_with,
    test_settings, TestApp,
};

async fn summary(app: &TestApp, name: &str) -> Value {
    let response = app.get_author(name).await;
    assert_eq!(response.status(), 200, "GET /authors/{name}");
    response.json().await.unwrap()
}

async fn assert_no_summary(app: &TestApp, name: &str) {
    let problem = assert_problem(app.get_author(name).await, 404).await;
    assert_eq!(problem["type"], "urn:books:problem:not-found");
}

#[tokio::test]
async fn the_summary_counts_the_live_books_of_an_author_in_any_case() {
    let app = spawn_app().await;
    let books = books_in_creation_order(&[
        ("The Left Hand of Darkness", "Ursula K. Le Guin", 1969),
        ("Dune", "Frank Herbert", 1965),
        ("Lathe of Heaven", "URSULA K. LE GUIN", 1971),
        ("A Wizard of Earthsea", "ursula k. le guin", 1968),
    ]);
    for book in &books {
        app.publish(&BookEvent::created(book, None)).await;
    }
    app.wait_until_consumed().await;

    let expected = json!({
        "author": "Ursula K. Le Guin",
        "bookCount": 3,
        "firstPublishedYear": 1968,
        "lastPublishedYear": 1971,
        "titles": ["A Wizard of Earthsea", "Lathe of Heaven", "The Left Hand of Darkness"],
    });
    assert_eq!(summary(&app, "Ursula K. Le Guin").await, expected);
    assert_eq!(summary(&app, "uRSULA k. lE gUIN").await, expected);
    assert_eq!(summary(&app, "Frank Herbert").await["bookCount"], 1);
    assert_no_summary(&app, "Ursula").await;
}

#[tokio::test]
async fn duplicate_titles_are_kept() {
    let app = spawn_app().await;
    let books = books_in_creation_order(&[
        ("Poems", "Emily Dickinson", 1890),
        ("Poems", "Emily Dickinson", 1891),
    ]);
    for book in &books {
        app.publish(&BookEvent::created(book, None)).await;
    }
    app.wait_until_consumed().await;

    assert_eq!(
        summary(&app, "Emily Dickinson").await["titles"],
        json!(["Poems", "Poems"])
    );
}

#[tokio::test]
async fn the_summary_is_exact_after_duplicate_and_reordered_events() {
    let app = spawn_app().await;
    let books = books_in_creation_order(&[
        ("Rocannon's World", "Ursula K. Le Guin", 1966),
        ("Planet of Exile", "Ursula K. Le Guin", 1966),
    ]);
    let v1 = BookEvent::created(&books[0], None);
    let v2 = BookEvent::updated(
        &revised(&books[0], 2, |s| {
            s.title = domain::Title::parse("City of Illusions").unwrap()
        }),
        None,
    );
    let v3 = BookEvent::updated(
        &revised(&books[0], 3, |s| {
            s.title = domain::Title::parse("City of Illusions").unwrap();
            s.published_year = domain::PublishedYear::parse(1967).unwrap();
        }),
        None,
    );

    app.publish(&BookEvent::created(&books[1], None)).await;
    for event in [&v3, &v2, &v3, &v1, &v2, &v1, &v3] {
        app.publish(event).await;
    }
    app.wait_until_consumed().await;

    assert_eq!(
        summary(&app, "Ursula K. Le Guin").await,
        json!({
            "author": "Ursula K. Le Guin",
            "bookCount": 2,
            "firstPublishedYear": 1966,
            "lastPublishedYear": 1967,
            "titles": ["City of Illusions", "Planet of Exile"],
        })
    );
}

#[tokio::test]
async fn a_book_whose_author_changes_moves_to_the_other_summary() {
    let app = spawn_app().await;
    let books = books_in_creation_order(&[
        ("The Word for World Is Forest", "Ursula Le Guin", 1972),
        ("The Dispossessed", "Ursula K. Le Guin", 1974),
    ]);
    for book in &books {
        app.publish(&BookEvent::created(book, None)).await;
    }
    app.wait_until_consumed().await;
    assert_eq!(summary(&app, "Ursula Le Guin").await["bookCount"], 1);

    let corrected = revised(&books[0], 2, |s| s.author = author("URSULA K. LE GUIN"));
    app.publish(&BookEvent::updated(&corrected, None)).await;
    app.wait_until_consumed().await;

    assert_no_summary(&app, "Ursula Le Guin").await;
    assert_eq!(
        summary(&app, "Ursula K. Le Guin").await,
        json!({
            "author": "URSULA K. LE GUIN",
            "bookCount": 2,
            "firstPublishedYear": 1972,
            "lastPublishedYear": 1974,
            "titles": ["The Dispossessed", "The Word for World Is Forest"],
        }),
        "the spelling is the earliest created book's"
    );

    // And back, delivered after an older event of the same book.
    let back = revised(&books[0], 3, |s| s.author = author("Ursula Le Guin"));
    app.publish(&BookEvent::updated(&back, None)).await;
    app.publish(&BookEvent::created(&books[0], None)).await;
    app.wait_until_consumed().await;
    assert_eq!(summary(&app, "Ursula Le Guin").await["bookCount"], 1);
    assert_eq!(
        summary(&app, "Ursula K. Le Guin").await["titles"],
        json!(["The Dispossessed"])
    );
}

#[tokio::test]
async fn a_delete_lowers_the_count_and_the_last_one_removes_the_summary() {
    let app = spawn_app().await;
    let books = books_in_creation_order(&[
        ("Dune", "Frank Herbert", 1965),
        ("Dune Messiah", "Frank Herbert", 1969),
    ]);
    for book in &books {
        app.publish(&BookEvent::created(book, None)).await;
    }
    app.wait_until_consumed().await;

    app.publish(&deleted(&books[0], 2)).await;
    app.wait_until_consumed().await;
    assert_eq!(
        summary(&app, "Frank Herbert").await,
        json!({
            "author": "Frank Herbert",
            "bookCount": 1,
            "firstPublishedYear": 1969,
            "lastPublishedYear": 1969,
            "titles": ["Dune Messiah"],
        })
    );

    app.publish(&deleted(&books[1], 2)).await;
    app.publish(&BookEvent::created(&books[1], None)).await;
    app.wait_until_consumed().await;
    assert_no_summary(&app, "Frank Herbert").await;
}

#[tokio::test]
async fn an_invalid_author_name_is_a_400_naming_it() {
    let app = spawn_app().await;

    for (name, rule) in [
        (" ", "required"),
        (&*"x".repeat(101), "tooLong"),
        ("a\u{1}b", "controlCharacter"),
    ] {
        let problem = assert_problem(app.get_author(name).await, 400).await;
        assert_eq!(problem["errors"][0]["field"], "author", "{name:?}");
        assert_eq!(problem["errors"][0]["rule"], rule, "{name:?}");
    }
}

#[tokio::test]
async fn an_author_name_with_a_slash_is_read_from_its_encoded_form() {
    let app = spawn_app().await;
    let book = &books_in_creation_order(&[("Back in Black", "AC/DC", 1980)])[0];
    app.publish(&BookEvent::created(book, None)).await;
    app.wait_until_consumed().await;

    assert_eq!(summary(&app, "ac/dc").await["author"], "AC/DC");
}

/// A tiny deterministic shuffle, seeded per run.
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let j = usize::try_from(seed % (i as u64 + 1)).unwrap();
        items.swap(i, j);
    }
}

/// The summaries the final books give, keyed by author key.
fn summaries_of(books: &[Book]) -> BTreeMap<String, Value> {
    let mut by_key: BTreeMap<String, Vec<&Book>> = BTreeMap::new();
    for book in books {
        by_key
            .entry(book.state.author.key())
            .or_default()
            .push(book);
    }
    by_key
        .into_iter()
        .map(|(key, mut books)| {
            books.sort_by_key(|b| (b.state.created_at, b.id.to_string()));
            let years: Vec<i32> = books
                .iter()
                .map(|b| b.state.published_year.value())
                .collect();
            let mut titles: Vec<&str> = books.iter().map(|b| b.state.title.as_str()).collect();
            titles.sort_unstable();
            let summary = json!({
                "author": books[0].state.author.as_str(),
                "bookCount": books.len(),
                "firstPublishedYear": years.iter().min(),
                "lastPublishedYear": years.iter().max(),
                "titles": titles,
            });
            (key, summary)
        })
        .collect()
}

#[tokio::test]
async fn two_replicas_sharing_a_group_leave_the_summaries_the_final_books_give() {
    let mut settings = test_settings().await;
    // Small batches, so that both replicas get a share of the burst.
    settings.batch = 2;
    let cleanup = cleanup_for(&settings);
    let mut second = settings.clone();
    second.consumer = "consumer-2".to_owned();
    let one = spawn_app_with(settings).await;
    let two = spawn_app_with(second).await;

    let names = [
        "Ursula K. Le Guin",
        "URSULA K. LE GUIN",
        "Frank Herbert",
        "Octavia E. Butler",
    ];
    let specs: Vec<(String, &str, i64)> = (0..8)
        .map(|i| {
            (
                format!("Book {i}"),
                names[i % names.len()],
                1950 + i64::try_from(i).unwrap(),
            )
        })
        .collect();
    let specs: Vec<(&str, &str, i64)> =
        specs.iter().map(|(t, a, y)| (t.as_str(), *a, *y)).collect();
    let books = books_in_creation_order(&specs);

    // Five versions of each book, moving between authors and years; every
    // event twice; all of it shuffled.
    let seed = u64::try_from(uuid::Uuid::new_v4().as_u128() & u128::from(u64::MAX)).unwrap() | 1;
    let mut events = Vec::new();
    let mut finals = Vec::new();
    for (i, book) in books.iter().enumerate() {
        let mut last = book.clone();
        events.push(BookEvent::created(book, None));
        for version in 2..=5u64 {
            let step = usize::try_from(version).unwrap();
            last = revised(book, version, |s| {
                s.author = author(names[(i + step) % names.len()]);
                s.published_year =
                    domain::PublishedYear::parse(1900 + i64::try_from(i * 10 + step).unwrap())
                        .unwrap();
                s.title = domain::Title::parse(&format!("Book {i} v{version}")).unwrap();
            });
            events.push(BookEvent::updated(&last, None));
        }
        if i % 4 == 3 {
            events.push(deleted(book, 6));
        } else {
            finals.push(last);
        }
    }
    let mut burst: Vec<BookEvent> = events.iter().chain(events.iter()).cloned().collect();
    shuffle(&mut burst, seed);
    for event in &burst {
        one.publish(event).await;
    }
    one.wait_until_consumed().await;

    // The books are at their final states...
    let listed = one.list_page(&[("limit", "100")]).await;
    let want: Vec<Value> = finals
        .iter()
        .map(|b| serde_json::to_value(b).unwrap())
        .collect();
    assert_eq!(listed["items"], Value::Array(want), "seed {seed}");
    // ...and so are the summaries.
    let expected = summaries_of(&finals);
    for name in names {
        let key = author(name).key();
        match expected.get(&key) {
            Some(want) => assert_eq!(&summary(&one, name).await, want, "{name} (seed {seed})"),
            None => assert_no_summary(&one, name).await,
        }
    }
    // Both replicas took part, and answer the same.
    let mut redis = one.redis.clone();
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&one.settings.stream)
        .arg(&one.settings.group)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(consumers.len(), 2);
    for name in names {
        assert_eq!(
            one.get_author(name).await.text().await.unwrap(),
            two.get_author(name).await.text().await.unwrap()
        );
    }
    drop((one, two));
    drop(cleanup);
}

#[tokio::test]
async fn concurrent_updates_of_one_author_leave_the_summary_the_books_give() {
    let settings = test_settings().await;
    let _cleanup = cleanup_for(&settings);
    let db = test_support::mongo_database(&settings.database).await;
    let read_model = query_service::read_model::Books::new(&db);
    let summaries = query_service::read_model::AuthorSummaries::new(&db);
    let mut books = Vec::new();
    // A few rounds: one round may happen to end with an up-to-date write
    // even when writers do not check what they wrote.
    for round in 0..4 {
        let specs: Vec<String> = (0..40).map(|i| format!("Race {round}-{i:02}")).collect();
        let specs: Vec<(&str, &str, i64)> = specs
            .iter()
            .map(|t| (t.as_str(), "Racer", 2000 + round))
            .collect();
        let batch = books_in_creation_order(&specs);

        // Each writer applies its own book, then recomputes the shared
        // summary, all at once: what replicas racing on one author do.
        futures::future::join_all(batch.iter().map(|book| {
            let (read_model, summaries) = (read_model.clone(), summaries.clone());
            async move {
                read_model
                    .upsert(&BookEvent::created(book, None))
                    .await
                    .unwrap();
                let id = bson::oid::ObjectId::parse_str(book.id.as_str()).unwrap();
                let ids = std::collections::BTreeSet::from([id]);
                // Contention is transient: the consumer retries the event
                // later, and so does this writer.
                while let Err(failure) = summaries.update("racer", &ids).await {
                    assert!(failure.is_transient(), "{failure}");
                }
            }
        }))
        .await;
        books.extend(batch);

        let stored = summaries.get("racer").await.unwrap().unwrap();
        assert_eq!(stored.book_count, books.len() as u64, "round {round}");
        assert_eq!(
            serde_json::to_value(&stored).unwrap(),
            summaries_of(&books)["racer"]
        );
    }
}

#[tokio::test]
async fn an_event_redelivered_after_a_crash_between_writes_completes_the_summary_and_cache() {
    let app = spawn_app().await;
    let book = &books_in_creation_order(&[("Kindred", "Octavia E. Butler", 1979)])[0];
    let event = BookEvent::created(book, None);
    // What a crash right after the book write leaves: the book, but neither
    // the summary nor the cache entry, and the event still pending.
    query_service::read_model::Books::new(&app.db)
        .upsert(&event)
        .await
        .unwrap();

    app.publish(&event).await;
    app.wait_until_consumed().await;

    assert_eq!(
        summary(&app, "Octavia E. Butler").await["titles"],
        json!(["Kindred"])
    );
    assert_eq!(app.cache_entry(book.id.as_str()).await["v"], "1");
}
