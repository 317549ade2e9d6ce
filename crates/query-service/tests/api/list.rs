//! `GET /books`: filters, orders, page size, cursors and every way a query
//! can be wrong.

use std::collections::HashMap;

use domain::{Book, BookEvent};
use serde_json::Value;
use test_support::assert_problem;

use crate::helpers::{books_in_creation_order, deleted, new_book_by, spawn_app, titles, TestApp};

/// Publishes the creation of every book and waits until all are applied.
async fn create_all(app: &TestApp, books: &[Book]) {
    for book in books {
        app.publish(&BookEvent::created(book, None)).await;
    }
    app.wait_until_consumed().await;
}

/// A small library with ties on the year, to see `_id` break them.
fn library() -> Vec<Book> {
    books_in_creation_order(&[
        ("The Left Hand of Darkness", "Ursula K. Le Guin", 1969),
        ("Dune", "Frank Herbert", 1965),
        ("The Dispossessed", "Ursula K. Le Guin", 1974),
        ("Dune Messiah", "Frank Herbert", 1969),
        ("Lathe of Heaven", "ursula k. le guin", 1971),
        ("Children of Dune", "Frank Herbert", 1976),
    ])
}

#[tokio::test]
async fn list_returns_every_live_book_in_creation_order_by_default() {
    let app = spawn_app().await;
    let books = library();
    create_all(&app, &books).await;

    let page = app.list_page(&[]).await;

    let expected: Vec<Value> = books
        .iter()
        .map(|b| serde_json::to_value(b).unwrap())
        .collect();
    assert_eq!(page["items"], Value::Array(expected));
    assert_eq!(page["next"], Value::Null);
}

#[tokio::test]
async fn list_never_shows_a_deleted_book() {
    let app = spawn_app().await;
    let books = library();
    create_all(&app, &books).await;

    app.publish(&deleted(&books[1], 2)).await;
    app.wait_until_consumed().await;

    let listed = app.list_titles(&[]).await;
    assert_eq!(listed.len(), books.len() - 1);
    assert!(!listed.contains(&"Dune".to_owned()), "{listed:?}");
    let by_author = app.list_titles(&[("author", "Frank Herbert")]).await;
    assert_eq!(by_author, ["Dune Messiah", "Children of Dune"]);
}

#[tokio::test]
async fn list_filters_by_author_ignoring_case() {
    let app = spawn_app().await;
    create_all(&app, &library()).await;

    let listed = app.list_titles(&[("author", "URSULA k. LE guin")]).await;

    assert_eq!(
        listed,
        [
            "The Left Hand of Darkness",
            "The Dispossessed",
            "Lathe of Heaven"
        ]
    );
    assert!(app.list_titles(&[("author", "Ursula")]).await.is_empty());
}

#[tokio::test]
async fn list_filters_by_exact_year_and_by_an_inclusive_range() {
    let app = spawn_app().await;
    create_all(&app, &library()).await;

    assert_eq!(
        app.list_titles(&[("year", "1969")]).await,
        ["The Left Hand of Darkness", "Dune Messiah"]
    );
    assert_eq!(
        app.list_titles(&[("yearFrom", "1969"), ("yearTo", "1974")])
            .await,
        [
            "The Left Hand of Darkness",
            "The Dispossessed",
            "Dune Messiah",
            "Lathe of Heaven"
        ]
    );
    assert_eq!(
        app.list_titles(&[("yearFrom", "1974")]).await,
        ["The Dispossessed", "Children of Dune"]
    );
    assert_eq!(app.list_titles(&[("yearTo", "1965")]).await, ["Dune"]);
    assert_eq!(
        app.list_titles(&[
            ("yearFrom", "1969"),
            ("yearTo", "1969"),
            ("author", "frank herbert")
        ])
        .await,
        ["Dune Messiah"]
    );
}

#[tokio::test]
async fn list_filters_by_title_contained_in_any_case() {
    let app = spawn_app().await;
    create_all(&app, &library()).await;

    assert_eq!(
        app.list_titles(&[("title", "dUNE")]).await,
        ["Dune", "Dune Messiah", "Children of Dune"]
    );
    assert_eq!(
        app.list_titles(&[("title", "of")]).await,
        [
            "The Left Hand of Darkness",
            "Lathe of Heaven",
            "Children of Dune"
        ]
    );
    assert!(app.list_titles(&[("title", "Dunes")]).await.is_empty());
}

#[tokio::test]
async fn a_title_filter_matches_regex_metacharacters_literally() {
    let app = spawn_app().await;
    create_all(
        &app,
        &books_in_creation_order(&[
            ("C++ Primer (5th ed.)", "Stanley Lippman", 2012),
            ("Cpp Primer", "Nobody", 2012),
            ("C Primer 5th edX", "Nobody", 2012),
            ("What? [Really] $5 ^_^ a|b \\o/", "Nobody", 2012),
            ("Émile, ÉTÉ", "Jean-Jacques Rousseau", 1762),
        ]),
    )
    .await;

    assert_eq!(
        app.list_titles(&[("title", "c++")]).await,
        ["C++ Primer (5th ed.)"]
    );
    assert_eq!(
        app.list_titles(&[("title", "(5th ed.)")]).await,
        ["C++ Primer (5th ed.)"]
    );
    assert_eq!(
        app.list_titles(&[("title", ".")]).await,
        ["C++ Primer (5th ed.)"]
    );
    for text in ["?", "[really]", "$5 ^_^", "a|b", "\\o/", "*"] {
        let expected: &[&str] = if text == "*" {
            &[]
        } else {
            &["What? [Really] $5 ^_^ a|b \\o/"]
        };
        assert_eq!(
            app.list_titles(&[("title", text)]).await,
            expected,
            "{text}"
        );
    }
    assert_eq!(app.list_titles(&[("title", "été")]).await, ["Émile, ÉTÉ"]);
}

#[tokio::test]
async fn list_sorts_by_each_key_in_both_directions_with_the_id_breaking_ties() {
    let app = spawn_app().await;
    let books = library();
    create_all(&app, &books).await;

    let sorted = |key: fn(&Book) -> (String, i64, String), descending: bool| {
        let mut books = books.clone();
        books.sort_by_key(key);
        if descending {
            books.reverse();
        }
        books
            .iter()
            .map(|b| b.state.title.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    let by_created = |b: &Book| {
        (
            String::new(),
            b.state.created_at.timestamp_millis(),
            b.id.to_string(),
        )
    };
    let by_title = |b: &Book| (b.state.title.as_str().to_owned(), 0, b.id.to_string());
    let by_year = |b: &Book| {
        (
            String::new(),
            i64::from(b.state.published_year.value()),
            b.id.to_string(),
        )
    };
    for (param, key, descending) in [
        ("createdAt", by_created as fn(&Book) -> _, false),
        ("-createdAt", by_created, true),
        ("title", by_title, false),
        ("-title", by_title, true),
        ("publishedYear", by_year, false),
        ("-publishedYear", by_year, true),
    ] {
        assert_eq!(
            app.list_titles(&[("sort", param)]).await,
            sorted(key, descending),
            "sort={param}"
        );
    }
    // The tie on 1969: ids in the same direction as the years.
    let ascending = app.list_titles(&[("sort", "publishedYear")]).await;
    let descending = app.list_titles(&[("sort", "-publishedYear")]).await;
    let rev: Vec<String> = descending.into_iter().rev().collect();
    assert_eq!(ascending, rev);
}

#[tokio::test]
async fn list_pages_hold_20_books_by_default_and_at_most_100() {
    let app = spawn_app().await;
    let specs: Vec<(String, i64)> = (0..105)
        .map(|i| (format!("Book {i:03}"), 1900 + i))
        .collect();
    let specs: Vec<(&str, &str, i64)> = specs
        .iter()
        .map(|(t, y)| (t.as_str(), "Prolific Writer", *y))
        .collect();
    create_all(&app, &books_in_creation_order(&specs)).await;

    let default = app.list_page(&[]).await;
    assert_eq!(default["items"].as_array().unwrap().len(), 20);
    assert!(default["next"].is_string());

    let capped = app.list_page(&[("limit", "1000")]).await;
    assert_eq!(capped["items"].as_array().unwrap().len(), 100);
    let rest = app
        .list_page(&[
            ("limit", "1000"),
            ("cursor", capped["next"].as_str().unwrap()),
        ])
        .await;
    assert_eq!(
        titles(&rest),
        ["Book 100", "Book 101", "Book 102", "Book 103", "Book 104"]
    );
    assert_eq!(rest["next"], Value::Null);
}

#[tokio::test]
async fn the_last_page_has_no_next_cursor() {
    let app = spawn_app().await;
    create_all(&app, &library()).await;

    let first = app.list_page(&[("limit", "3")]).await;
    let second = app
        .list_page(&[("limit", "3"), ("cursor", first["next"].as_str().unwrap())])
        .await;

    assert_eq!(titles(&second).len(), 3);
    assert_eq!(second["next"], Value::Null);
}

/// Query parameters, and the parameter and rule the 400 names.
type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);

#[tokio::test]
async fn every_invalid_parameter_is_a_400_naming_it_and_its_rule() {
    let app = spawn_app().await;
    create_all(&app, &library()).await;
    let title_cursor = app.list_page(&[("sort", "title"), ("limit", "1")]).await["next"]
        .as_str()
        .unwrap()
        .to_owned();
    let author_cursor = app
        .list_page(&[("author", "Frank Herbert"), ("limit", "1")])
        .await["next"]
        .as_str()
        .unwrap()
        .to_owned();

    let cases: &[Case<'_>] = &[
        (&[("isbn", "123")], "isbn", "unknownParameter"),
        (&[("Author", "x")], "Author", "unknownParameter"),
        (&[("limit", "abc")], "limit", "invalidType"),
        (&[("limit", "0")], "limit", "outOfRange"),
        (&[("limit", "-5")], "limit", "outOfRange"),
        (
            &[("limit", "1"), ("limit", "2")],
            "limit",
            "duplicateParameter",
        ),
        (&[("year", "nineteen")], "year", "invalidType"),
        (&[("year", "1969.5")], "year", "invalidType"),
        (&[("year", "3000")], "year", "outOfRange"),
        (&[("yearFrom", "-4000")], "yearFrom", "outOfRange"),
        (
            &[("yearTo", "99999999999999999999")],
            "yearTo",
            "invalidType",
        ),
        (
            &[("yearFrom", "1970"), ("yearTo", "1969")],
            "yearFrom",
            "range",
        ),
        (&[("author", "")], "author", "required"),
        (&[("author", &"x".repeat(101))], "author", "tooLong"),
        (&[("author", "a\u{7}b")], "author", "controlCharacter"),
        (&[("title", "  ")], "title", "required"),
        (&[("sort", "author")], "sort", "oneOf"),
        (&[("sort", "+title")], "sort", "oneOf"),
        (&[("cursor", "not-a-cursor")], "cursor", "format"),
        (&[("cursor", "eyJ9")], "cursor", "format"),
        (&[("cursor", &title_cursor)], "cursor", "mismatch"),
        (
            &[("sort", "-title"), ("cursor", &title_cursor)],
            "cursor",
            "mismatch",
        ),
        (&[("cursor", &author_cursor)], "cursor", "mismatch"),
        (
            &[("author", "frank herbert!"), ("cursor", &author_cursor)],
            "cursor",
            "mismatch",
        ),
    ];
    for (params, field, rule) in cases {
        let problem = assert_problem(app.list(params).await, 400).await;
        assert_eq!(
            problem["type"], "urn:books:problem:invalid-parameter",
            "{params:?}"
        );
        assert_eq!(
            problem["errors"][0]["field"], *field,
            "{params:?}: {problem}"
        );
        assert_eq!(problem["errors"][0]["rule"], *rule, "{params:?}: {problem}");
    }
    // The right sort and filters make the same cursors valid.
    app.list_page(&[("sort", "title"), ("cursor", &title_cursor)])
        .await;
    app.list_page(&[("author", "FRANK HERBERT"), ("cursor", &author_cursor)])
        .await;
}

/// Pages through `params` with limit 3, publishing two new books before
/// each page after the first, and returns the ids seen, in order.
async fn page_while_books_are_added(app: &TestApp, params: &[(&str, &str)]) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for round in 0.. {
        if round > 0 {
            for i in 0..2 {
                // Titles and years that land before and after the cursor.
                let title = format!("{} new {round}-{i}", ["A", "Z"][i]);
                let year = [1800, 2050][i];
                app.publish(&BookEvent::created(
                    &new_book_by(&title, "Newcomer", year),
                    None,
                ))
                .await;
            }
            app.wait_until_consumed().await;
        }
        let mut query: Vec<(&str, &str)> = params.to_vec();
        query.push(("limit", "3"));
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor));
        }
        let page = app.list_page(&query).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|b| b["_id"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(round < 50, "paging does not end");
    }
    seen
}

#[tokio::test]
async fn paging_neither_skips_nor_repeats_a_book_while_books_are_added() {
    let app = spawn_app().await;
    let books = library();
    create_all(&app, &books).await;

    for sort in [
        "createdAt",
        "-createdAt",
        "title",
        "-title",
        "publishedYear",
        "-publishedYear",
    ] {
        let seen = page_while_books_are_added(&app, &[("sort", sort)]).await;

        let mut counts: HashMap<&str, usize> = HashMap::new();
        for id in &seen {
            *counts.entry(id.as_str()).or_default() += 1;
        }
        assert!(
            counts.values().all(|&n| n == 1),
            "sort={sort}: a book was repeated"
        );
        for book in &books {
            assert_eq!(
                counts.get(book.id.as_str()),
                Some(&1),
                "sort={sort}: {} skipped",
                book.state.title.as_str()
            );
        }
    }
}

#[tokio::test]
async fn the_indexes_are_created_again_on_a_read_model_that_has_them() {
    // As at every restart of the service on an existing read model.
    let app = spawn_app().await;
    let read_model = query_service::read_model::Books::new(&app.db);
    read_model.ensure_indexes().await.expect("first creation");
    read_model
        .ensure_indexes()
        .await
        .expect("creating existing indexes again");

    let names = app
        .db
        .collection::<bson::Document>("books")
        .list_index_names()
        .await
        .expect("listIndexes");
    for index in [
        "authorKey_1_createdAt_1__id_1",
        "createdAt_1__id_1",
        "title_1__id_1",
        "publishedYear_1__id_1",
    ] {
        assert!(
            names.iter().any(|n| n == index),
            "{index} missing from {names:?}"
        );
    }
}
