//! `PUT`, `PATCH` and `DELETE /books/{id}`: what is answered, what is
//! stored and which event reaches the stream. `If-Match` and concurrent
//! writers are in `concurrency.rs`.

use chrono::Utc;
use futures::future::join_all;
use serde_json::{json, Value};
use test_support::{assert_problem, eventually};

use crate::helpers::{
    assert_no_event_appended, assert_nothing_written, assert_stored_as, id_of, spawn_app,
    timestamp, valid_book, RELAY_DEADLINE,
};

/// A merge patch of one field.
fn one_field(field: &str, value: Value) -> Value {
    Value::Object([(field.to_owned(), value)].into_iter().collect())
}

#[tokio::test]
async fn patch_changes_the_fields_sent_and_bumps_the_version() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let id = id_of(&book);

    let response = app.patch_book(id, &json!({ "publishedYear": 1966 })).await;

    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["etag"], "\"2\"");
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["publishedYear"], 1966);
    assert_eq!(patched["title"], book["title"]);
    assert_eq!(patched["author"], book["author"]);
    assert_eq!(patched["createdAt"], book["createdAt"]);
    assert_eq!(patched["version"], 2);
    assert_stored_as(&app, &patched).await;
}

#[tokio::test]
async fn put_replaces_every_field_keeps_created_at_and_bumps_the_version() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let id = id_of(&book);
    // Timestamps have milliseconds: let the clock leave the creation's.
    let created = timestamp(&book["createdAt"]);
    eventually("the clock to pass the creation", RELAY_DEADLINE, || async {
        (Utc::now() > created + chrono::Duration::milliseconds(1)).then_some(())
    })
    .await;
    let replacement =
        json!({ "title": "Dune Messiah", "author": "F. Herbert", "publishedYear": 1969 });

    let response = app.put_book(id, &replacement).await;

    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["etag"], "\"2\"");
    let replaced: Value = response.json().await.unwrap();
    assert_eq!(replaced["_id"], book["_id"]);
    for field in ["title", "author", "publishedYear"] {
        assert_eq!(replaced[field], replacement[field], "{field}");
    }
    assert_eq!(replaced["version"], 2);
    assert_eq!(replaced["createdAt"], book["createdAt"]);
    assert!(
        timestamp(&replaced["updatedAt"]) > timestamp(&book["updatedAt"]),
        "updatedAt {} is not after {}",
        replaced["updatedAt"],
        book["updatedAt"]
    );
    assert_stored_as(&app, &replaced).await;
}

#[tokio::test]
async fn put_appends_a_book_updated_event_with_version_2_and_the_new_state() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let replacement =
        json!({ "title": "Dune Messiah", "author": "F. Herbert", "publishedYear": 1969 });

    let replaced: Value = app
        .put_book(id_of(&book), &replacement)
        .await
        .json()
        .await
        .unwrap();

    let events = app.wait_until_relayed(2).await;
    let (kind, event) = &events[1];
    assert_eq!(kind, "bookUpdated");
    assert_eq!(event["type"], "bookUpdated");
    assert_eq!(event["bookId"], book["_id"]);
    assert_eq!(event["version"], 2);
    assert_eq!(event["occurredAt"], replaced["updatedAt"]);
    assert_ne!(event["eventId"], events[0].1["eventId"]);
    for field in ["title", "author", "publishedYear", "createdAt", "updatedAt"] {
        assert_eq!(event["book"][field], replaced[field], "{field}");
    }
    assert_eq!(event["book"]["title"], "Dune Messiah");
}

#[tokio::test]
async fn patch_changes_each_field_alone_and_keeps_the_others() {
    let app = spawn_app().await;
    let mut current = app.create_relayed_book(0).await;
    let id = id_of(&current).to_owned();

    for (n, (field, value)) in [
        ("title", json!("Children of Dune")),
        ("author", json!("Frank P. Herbert")),
        ("publishedYear", json!(1976)),
    ]
    .into_iter()
    .enumerate()
    {
        let response = app.patch_book(&id, &one_field(field, value.clone())).await;

        assert_eq!(response.status().as_u16(), 200, "{field}");
        let version = n as u64 + 2;
        assert_eq!(response.headers()["etag"], format!("\"{version}\""));
        let patched: Value = response.json().await.unwrap();
        let mut expected = current.clone();
        expected[field] = value;
        for kept in ["_id", "title", "author", "publishedYear", "createdAt"] {
            assert_eq!(patched[kept], expected[kept], "patching {field}: {kept}");
        }
        assert_eq!(patched["version"], version);
        assert_stored_as(&app, &patched).await;
        let events = app.wait_until_relayed(n + 2).await;
        let (kind, event) = events.last().unwrap();
        assert_eq!(kind, "bookUpdated");
        assert_eq!(event["version"], version);
        assert_eq!(event["book"][field], patched[field]);
        current = patched;
    }
}

#[tokio::test]
async fn patch_accepts_a_plain_json_body() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;

    let response = app
        .patch_raw(
            id_of(&book),
            "application/json",
            json!({ "author": "Frank Herbert Jr." }).to_string(),
        )
        .await;

    assert_eq!(response.status().as_u16(), 200);
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["author"], "Frank Herbert Jr.");
    assert_eq!(patched["version"], 2);
    assert_stored_as(&app, &patched).await;
}

/// Each invalid merge patch with the field and rule its 422 must name.
fn invalid_patches() -> Vec<(Value, &'static str, &'static str)> {
    vec![
        (json!({ "title": null }), "title", "required"),
        (json!({ "author": null }), "author", "required"),
        (
            json!({ "publishedYear": null }),
            "publishedYear",
            "required",
        ),
        (json!({ "isbn": "978-0441013593" }), "isbn", "unknownField"),
        (
            json!({ "publishedyear": 1966 }),
            "publishedyear",
            "unknownField",
        ),
        (json!({ "title": 42 }), "title", "invalidType"),
        (json!({ "title": { "$set": "x" } }), "title", "invalidType"),
        (json!({ "author": ["A"] }), "author", "invalidType"),
        (
            json!({ "publishedYear": "1966" }),
            "publishedYear",
            "invalidType",
        ),
        (
            json!({ "publishedYear": 1966.5 }),
            "publishedYear",
            "invalidType",
        ),
        (json!({ "title": "   " }), "title", "required"),
        (json!({ "author": "" }), "author", "required"),
        (json!({ "title": "x".repeat(201) }), "title", "tooLong"),
        (json!({ "author": "a\u{0}b" }), "author", "controlCharacter"),
        (
            json!({ "publishedYear": 2101 }),
            "publishedYear",
            "outOfRange",
        ),
        // A JSON Patch (RFC 6902) is not a merge patch.
        (
            json!([{ "op": "replace", "path": "/title", "value": "T" }]),
            "body",
            "invalidType",
        ),
    ]
}

#[tokio::test]
async fn each_invalid_patch_gets_a_422_naming_the_field_and_rule_and_writes_nothing() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;

    for (patch, field, rule) in invalid_patches() {
        let problem = assert_problem(app.patch_book(id_of(&book), &patch).await, 422).await;
        assert_eq!(problem["type"], "urn:books:problem:validation", "{patch}");
        assert_eq!(problem["errors"][0]["field"], field, "{patch} -> {problem}");
        assert_eq!(problem["errors"][0]["rule"], rule, "{patch} -> {problem}");
    }

    assert_nothing_written(&app, &book, 1).await;
}

#[tokio::test]
async fn a_patch_reports_every_invalid_field_at_once() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;

    let problem = assert_problem(
        app.patch_book(
            id_of(&book),
            &json!({ "title": null, "author": "", "publishedYear": 3000 }),
        )
        .await,
        422,
    )
    .await;

    let errors: Vec<(&str, &str)> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["field"].as_str().unwrap(), e["rule"].as_str().unwrap()))
        .collect();
    assert_eq!(
        errors,
        [
            ("title", "required"),
            ("author", "required"),
            ("publishedYear", "outOfRange")
        ]
    );
    assert_nothing_written(&app, &book, 1).await;
}

#[tokio::test]
async fn each_invalid_replacement_gets_a_422_naming_the_field_and_rule_and_writes_nothing() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;

    for (body, field, rule) in [
        // A replacement is whole: no field may be left out.
        (
            json!({ "title": "T", "author": "A" }),
            "publishedYear",
            "required",
        ),
        (
            json!({ "author": "A", "publishedYear": 2000 }),
            "title",
            "required",
        ),
        (
            json!({ "title": "T", "author": "A", "publishedYear": 2000, "isbn": "x" }),
            "isbn",
            "unknownField",
        ),
        (
            json!({ "title": "T", "author": 7, "publishedYear": 2000 }),
            "author",
            "invalidType",
        ),
        (
            json!({ "title": "T", "author": "A", "publishedYear": -3001 }),
            "publishedYear",
            "outOfRange",
        ),
        (
            json!({ "title": "", "author": "A", "publishedYear": 2000 }),
            "title",
            "required",
        ),
    ] {
        let problem = assert_problem(app.put_book(id_of(&book), &body).await, 422).await;
        assert_eq!(problem["type"], "urn:books:problem:validation", "{body}");
        assert_eq!(problem["errors"][0]["field"], field, "{body} -> {problem}");
        assert_eq!(problem["errors"][0]["rule"], rule, "{body} -> {problem}");
    }

    assert_nothing_written(&app, &book, 1).await;
}

#[tokio::test]
async fn a_change_not_declared_as_json_gets_a_415_and_writes_nothing() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let id = id_of(&book);
    let patch = json!({ "title": "Dune Messiah" }).to_string();

    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let problem =
            assert_problem(app.patch_raw(id, content_type, patch.clone()).await, 415).await;
        assert_eq!(problem["type"], "urn:books:problem:unsupported-media-type");
    }
    let untyped = app
        .request(reqwest::Method::PATCH, &format!("/books/{id}"))
        .body(patch)
        .send()
        .await
        .unwrap();
    assert_problem(untyped, 415).await;
    let replacement = app
        .request(reqwest::Method::PUT, &format!("/books/{id}"))
        .header("content-type", "text/plain")
        .body(valid_book().to_string())
        .send()
        .await
        .unwrap();
    assert_problem(replacement, 415).await;

    assert_nothing_written(&app, &book, 1).await;
}

#[tokio::test]
async fn a_change_over_the_body_limit_gets_a_413_and_writes_nothing() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let id = id_of(&book);
    let huge_title = "x".repeat(20 * 1024);

    let patched = app.patch_book(id, &json!({ "title": huge_title })).await;
    let replaced = app
        .put_book(
            id,
            &json!({ "title": huge_title, "author": "A", "publishedYear": 2000 }),
        )
        .await;

    for response in [patched, replaced] {
        let problem = assert_problem(response, 413).await;
        assert_eq!(problem["type"], "urn:books:problem:payload-too-large");
    }
    assert_nothing_written(&app, &book, 1).await;
}

#[tokio::test]
async fn a_malformed_change_gets_a_400_and_writes_nothing() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let id = id_of(&book);

    for raw in ["{", "{\"title\": ", "not json", "", "{\"title\":\"T\"} {}"] {
        let problem = assert_problem(
            app.patch_raw(id, "application/merge-patch+json", raw).await,
            400,
        )
        .await;
        assert_eq!(
            problem["type"], "urn:books:problem:malformed-json",
            "{raw:?}"
        );
    }
    let replacement = app
        .request(reqwest::Method::PUT, &format!("/books/{id}"))
        .header("content-type", "application/json")
        .body("{\"title\": \"T\",")
        .send()
        .await
        .unwrap();
    assert_problem(replacement, 400).await;

    assert_nothing_written(&app, &book, 1).await;
}

#[tokio::test]
async fn a_change_that_changes_nothing_answers_the_book_as_it_is_without_a_new_version() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let id = id_of(&book);

    let answers = [
        app.put_book(id, &valid_book()).await,
        // Trimmed, the same title and author.
        app.put_book(
            id,
            &json!({ "title": " Dune ", "author": "Frank Herbert\n", "publishedYear": 1965 }),
        )
        .await,
        app.patch_book(id, &json!({})).await,
        app.patch_book(id, &json!({ "title": "Dune" })).await,
        app.patch_book(
            id,
            &json!({ "author": "Frank Herbert", "publishedYear": 1965 }),
        )
        .await,
    ];

    for (n, response) in answers.into_iter().enumerate() {
        assert_eq!(response.status().as_u16(), 200, "answer {n}");
        assert_eq!(response.headers()["etag"], "\"1\"", "answer {n}");
        let answered: Value = response.json().await.unwrap();
        assert_eq!(answered, book, "answer {n}");
    }
    assert_nothing_written(&app, &book, 1).await;
}

#[tokio::test]
async fn delete_answers_204_with_the_etag_of_the_deletion_and_leaves_a_tombstone() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let id = id_of(&book);

    let response = app.delete_book(id).await;

    assert_eq!(response.status().as_u16(), 204);
    assert_eq!(response.headers()["etag"], "\"2\"");
    assert!(response.bytes().await.unwrap().is_empty());
    let stored = app.stored_book(id).await;
    assert_eq!(stored.get_bool("deleted").ok(), Some(true), "{stored}");
    assert_eq!(stored.get_i64("version").ok(), Some(2), "{stored}");
    for field in ["title", "author", "publishedYear"] {
        assert!(!stored.contains_key(field), "{field} kept in {stored}");
    }
}

#[tokio::test]
async fn delete_appends_a_book_deleted_event_with_version_2_and_no_book() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;

    let response = app.delete_book(id_of(&book)).await;
    assert_eq!(response.status().as_u16(), 204);

    let events = app.wait_until_relayed(2).await;
    let (kind, event) = &events[1];
    assert_eq!(kind, "bookDeleted");
    assert_eq!(event["type"], "bookDeleted");
    assert_eq!(event["bookId"], book["_id"]);
    assert_eq!(event["version"], 2);
    assert!(event.get("book").is_none(), "{event}");
    assert!(timestamp(&event["occurredAt"]) >= timestamp(&book["updatedAt"]));
}

#[tokio::test]
async fn a_deleted_book_cannot_be_deleted_replaced_or_patched() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let id = id_of(&book);
    assert_eq!(app.delete_book(id).await.status().as_u16(), 204);
    app.wait_until_relayed(2).await;

    let answers = [
        app.delete_book(id).await,
        app.put_book(id, &valid_book()).await,
        app.patch_book(id, &json!({ "title": "Back" })).await,
    ];

    for response in answers {
        let problem = assert_problem(response, 404).await;
        assert_eq!(problem["type"], "urn:books:problem:not-found");
    }
    let stored = app.stored_book(id).await;
    assert_eq!(stored.get_bool("deleted").ok(), Some(true), "{stored}");
    assert_eq!(stored.get_i64("version").ok(), Some(2), "{stored}");
    assert!(!stored.contains_key("title"), "{stored}");
    assert_no_event_appended(&app, 2).await;
}

#[tokio::test]
async fn changes_to_an_unknown_book_get_a_404_and_write_nothing() {
    let app = spawn_app().await;
    let unknown = bson::oid::ObjectId::new().to_hex();

    let answers = [
        app.put_book(&unknown, &valid_book()).await,
        app.patch_book(&unknown, &json!({ "title": "T" })).await,
        app.delete_book(&unknown).await,
    ];

    for response in answers {
        let problem = assert_problem(response, 404).await;
        assert_eq!(problem["type"], "urn:books:problem:not-found");
        assert!(
            problem["detail"].as_str().unwrap().contains(&unknown),
            "{problem}"
        );
    }
    assert!(app.stored_books().await.is_empty());
    assert_no_event_appended(&app, 0).await;
}

#[tokio::test]
async fn changes_with_an_invalid_id_get_a_400_naming_the_id() {
    let app = spawn_app().await;

    for id in [
        "not-an-id",
        "123",
        "zzzzzzzzzzzzzzzzzzzzzzzz",
        "0123456789abcdef012345678",
    ] {
        let answers = [
            app.put_book(id, &valid_book()).await,
            app.patch_book(id, &json!({ "title": "T" })).await,
            app.delete_book(id).await,
        ];
        for response in answers {
            let problem = assert_problem(response, 400).await;
            assert_eq!(
                problem["type"], "urn:books:problem:invalid-parameter",
                "{id}"
            );
            assert_eq!(problem["errors"][0]["field"], "id", "{id}: {problem}");
            assert_eq!(problem["errors"][0]["rule"], "format", "{id}: {problem}");
        }
    }
    assert!(app.stored_books().await.is_empty());
}

#[tokio::test]
async fn an_id_in_upper_case_names_the_same_book() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;

    let response = app
        .patch_book(
            &id_of(&book).to_ascii_uppercase(),
            &json!({ "title": "Dune Messiah" }),
        )
        .await;

    assert_eq!(response.status().as_u16(), 200);
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["_id"], book["_id"]);
    assert_eq!(patched["version"], 2);
    assert_stored_as(&app, &patched).await;
}

/// How many books `a_change_made_right_after_create_is_kept` changes.
const BOOKS: usize = 16;

/// On FerretDB v1 an update is a read, then a write of the whole document:
/// the relay clearing the creation event from the outbox can write back the
/// book as it was before a change made meanwhile. On MongoDB, where an
/// update is atomic, every change is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_right_after_create_is_kept() {
    let app = spawn_app().await;
    // The relay may or may not be clearing the outbox at that moment: make
    // the change right after each of several creations.
    let patched: Vec<Value> = join_all((0..BOOKS).map(|n| {
        let app = &app;
        async move {
            let book = app.create_book().await;
            let response = app
                .patch_book(id_of(&book), &json!({ "title": format!("Changed {n}") }))
                .await;
            assert_eq!(response.status().as_u16(), 200);
            response.json::<Value>().await.unwrap()
        }
    }))
    .await;

    // Wait until the relay is done with every outbox (an outbox the race
    // refilled is cleared by the sweep, which publishes its events again).
    let events = eventually("every outbox cleared", RELAY_DEADLINE, || async {
        let events = app.stream_events().await;
        let cleared = app.stored_books().await.iter().all(|b| {
            b.get_array("outbox").is_ok_and(|a| a.is_empty()) && !b.contains_key("outboxAt")
        });
        (events.len() >= 2 * BOOKS && cleared).then_some(events)
    })
    .await;
    for book in &patched {
        assert_stored_as(&app, book).await;
    }
    assert_eq!(events.len(), 2 * BOOKS, "events were published twice");
}
