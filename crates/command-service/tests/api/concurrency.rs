//! Optimistic concurrency: `If-Match` on `PUT`, `PATCH` and `DELETE`, and
//! writers racing for the same book.

use futures::future::join_all;
use reqwest::{Method, Response};
use serde_json::{json, Value};
use test_support::assert_problem;

use crate::helpers::{
    assert_nothing_written, assert_stored_as, id_of, spawn_app, valid_book, TestApp,
};

/// How many writers race for one book.
const WRITERS: usize = 24;
/// How many races a test runs.
const ROUNDS: usize = 5;

async fn patch_if_match(app: &TestApp, id: &str, if_match: &str, patch: &Value) -> Response {
    app.request(Method::PATCH, &format!("/books/{id}"))
        .header("if-match", if_match)
        .header("content-type", "application/merge-patch+json")
        .body(patch.to_string())
        .send()
        .await
        .expect("request sent")
}

async fn put_if_match(app: &TestApp, id: &str, if_match: &str, book: &Value) -> Response {
    app.request(Method::PUT, &format!("/books/{id}"))
        .header("if-match", if_match)
        .json(book)
        .send()
        .await
        .expect("request sent")
}

async fn delete_if_match(app: &TestApp, id: &str, if_match: &str) -> Response {
    app.request(Method::DELETE, &format!("/books/{id}"))
        .header("if-match", if_match)
        .send()
        .await
        .expect("request sent")
}

/// The patch, the replacement and the deletion of book `id`, each with
/// `If-Match: if_match`.
async fn every_change_if_match(app: &TestApp, id: &str, if_match: &str) -> [Response; 3] {
    let replacement = json!({ "title": "Replaced", "author": "R", "publishedYear": 2001 });
    [
        patch_if_match(app, id, if_match, &json!({ "title": "Patched" })).await,
        put_if_match(app, id, if_match, &replacement).await,
        delete_if_match(app, id, if_match).await,
    ]
}

#[tokio::test]
async fn if_match_naming_the_current_version_applies_each_change() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let id = id_of(&book);

    let patched = patch_if_match(&app, id, "\"1\"", &json!({ "title": "Patched" })).await;
    assert_eq!(patched.status().as_u16(), 200);
    assert_eq!(patched.headers()["etag"], "\"2\"");
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["title"], "Patched");
    assert_stored_as(&app, &patched).await;
    app.wait_until_relayed(2).await;

    let replaced = put_if_match(&app, id, "\"2\"", &valid_book()).await;
    assert_eq!(replaced.status().as_u16(), 200);
    assert_eq!(replaced.headers()["etag"], "\"3\"");
    let replaced: Value = replaced.json().await.unwrap();
    assert_eq!(replaced["title"], "Dune");
    assert_stored_as(&app, &replaced).await;
    app.wait_until_relayed(3).await;

    let deleted = delete_if_match(&app, id, "\"3\"").await;
    assert_eq!(deleted.status().as_u16(), 204);
    assert_eq!(deleted.headers()["etag"], "\"4\"");
    let events = app.wait_until_relayed(4).await;
    let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["bookCreated", "bookUpdated", "bookUpdated", "bookDeleted"]
    );
}

#[tokio::test]
async fn a_stale_if_match_gets_a_412_with_the_current_version_and_writes_nothing() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let id = id_of(&book);
    let current: Value = app
        .patch_book(id, &json!({ "title": "Second" }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(current["version"], 2);
    app.wait_until_relayed(2).await;

    for response in every_change_if_match(&app, id, "\"1\"").await {
        assert_eq!(response.headers().get("etag").unwrap(), "\"2\"");
        let problem = assert_problem(response, 412).await;
        assert_eq!(problem["type"], "urn:books:problem:precondition-failed");
        assert_eq!(problem["currentVersion"], 2, "{problem}");
    }

    assert_nothing_written(&app, &current, 2).await;
}

#[tokio::test]
async fn if_match_star_applies_to_whatever_version_is_current() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let id = id_of(&book);
    app.patch_book(id, &json!({ "title": "Second" })).await;
    app.wait_until_relayed(2).await;

    let patched = patch_if_match(&app, id, "*", &json!({ "title": "Third" })).await;
    assert_eq!(patched.status().as_u16(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["version"], 3);
    assert_stored_as(&app, &patched).await;
    app.wait_until_relayed(3).await;

    let replaced = put_if_match(&app, id, "*", &valid_book()).await;
    assert_eq!(replaced.status().as_u16(), 200);
    assert_eq!(replaced.headers()["etag"], "\"4\"");
    app.wait_until_relayed(4).await;

    let deleted = delete_if_match(&app, id, "*").await;
    assert_eq!(deleted.status().as_u16(), 204);
    assert_eq!(deleted.headers()["etag"], "\"5\"");
}

#[tokio::test]
async fn if_match_with_a_list_applies_only_when_the_list_names_the_current_version() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let id = id_of(&book);

    let missed = patch_if_match(&app, id, "\"2\", \"3\"", &json!({ "title": "T" })).await;
    let problem = assert_problem(missed, 412).await;
    assert_eq!(problem["currentVersion"], 1);

    let hit = patch_if_match(&app, id, "\"7\", \"1\"", &json!({ "title": "T" })).await;
    assert_eq!(hit.status().as_u16(), 200);
    let patched: Value = hit.json().await.unwrap();
    assert_eq!(patched["version"], 2);
    assert_stored_as(&app, &patched).await;
}

#[tokio::test]
async fn a_weak_if_match_never_matches() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let id = id_of(&book);

    for if_match in ["W/\"1\"", "W/\"1\", W/\"2\""] {
        for response in every_change_if_match(&app, id, if_match).await {
            assert_eq!(response.headers().get("etag").unwrap(), "\"1\"");
            let problem = assert_problem(response, 412).await;
            assert_eq!(problem["type"], "urn:books:problem:precondition-failed");
            assert_eq!(problem["currentVersion"], 1, "{if_match}: {problem}");
        }
    }

    assert_nothing_written(&app, &book, 1).await;
}

#[tokio::test]
async fn a_malformed_if_match_gets_a_400_naming_the_header() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let id = id_of(&book);

    for if_match in ["1", "\"1", "W/1", "\"1\"\"", "\"1\", 2"] {
        for response in every_change_if_match(&app, id, if_match).await {
            let problem = assert_problem(response, 400).await;
            assert_eq!(problem["type"], "urn:books:problem:invalid-parameter");
            assert_eq!(problem["errors"][0]["field"], "If-Match", "{if_match}");
            assert_eq!(problem["errors"][0]["rule"], "format", "{if_match}");
        }
    }

    assert_nothing_written(&app, &book, 1).await;
}

#[tokio::test]
async fn if_match_on_an_unknown_or_deleted_book_gets_a_404() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let id = id_of(&book);
    assert_eq!(app.delete_book(id).await.status().as_u16(), 204);
    let unknown = bson::oid::ObjectId::new().to_hex();

    for id in [id, unknown.as_str()] {
        for if_match in ["\"1\"", "\"2\"", "*"] {
            for response in every_change_if_match(&app, id, if_match).await {
                let problem = assert_problem(response, 404).await;
                assert_eq!(problem["type"], "urn:books:problem:not-found");
            }
        }
    }
}

/// What one racing writer was answered.
#[derive(Debug)]
struct Answer {
    writer: usize,
    status: u16,
    etag: Option<String>,
    body: Value,
}

async fn answer(writer: usize, response: Response) -> Answer {
    Answer {
        writer,
        status: response.status().as_u16(),
        etag: response
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: response.json().await.expect("a JSON body"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_writers_racing_with_the_same_if_match_exactly_one_wins() {
    let app = spawn_app().await;

    // A race may go one way by chance: run a few.
    for round in 0..ROUNDS {
        let book = app.create_relayed_book(2 * round).await;
        let id = id_of(&book);

        let answers = join_all((0..WRITERS).map(|writer| {
            let app = &app;
            async move {
                let patch = json!({ "title": format!("Writer {writer}") });
                answer(writer, patch_if_match(app, id, "\"1\"", &patch).await).await
            }
        }))
        .await;

        let winners: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
        assert_eq!(winners.len(), 1, "round {round}: {answers:#?}");
        let winner = winners[0];
        assert_eq!(winner.etag.as_deref(), Some("\"2\""));
        assert_eq!(winner.body["version"], 2);
        assert_eq!(winner.body["title"], format!("Writer {}", winner.writer));
        for loser in answers.iter().filter(|a| a.status != 200) {
            assert_eq!(loser.status, 412, "{loser:?}");
            assert_eq!(loser.body["type"], "urn:books:problem:precondition-failed");
            assert_eq!(loser.body["currentVersion"], 2, "{loser:?}");
            assert_eq!(loser.etag.as_deref(), Some("\"2\""), "{loser:?}");
        }
        let events = app.wait_until_relayed(2 * round + 2).await;
        let updates: Vec<&Value> = events
            .iter()
            .filter(|(kind, event)| kind == "bookUpdated" && event["bookId"] == book["_id"])
            .map(|(_, event)| event)
            .collect();
        assert_eq!(updates.len(), 1, "{updates:#?}");
        assert_eq!(updates[0]["version"], 2);
        assert_eq!(updates[0]["book"]["title"], winner.body["title"]);
        assert_stored_as(&app, &winner.body).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_racing_without_if_match_each_get_a_version_of_their_own_and_none_is_lost() {
    let app = spawn_app().await;
    let book = app.create_relayed_book(0).await;
    let id = id_of(&book);
    // Even writers change the title, odd ones the author: each to a value
    // of its own, so every patch changes the book.
    let patches: Vec<(&str, String)> = (0..WRITERS)
        .map(|writer| match writer % 2 {
            0 => ("title", format!("Title {writer}")),
            _ => ("author", format!("Author {writer}")),
        })
        .collect();

    let answers = join_all(patches.iter().enumerate().map(|(writer, (field, value))| {
        let app = &app;
        async move {
            let patch = json!({ *field: value });
            answer(writer, app.patch_book(id, &patch).await).await
        }
    }))
    .await;

    for answer in &answers {
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(
            answer.etag.as_deref(),
            Some(format!("\"{}\"", answer.body["version"]).as_str())
        );
    }
    let mut by_version: Vec<&Answer> = answers.iter().collect();
    by_version.sort_by_key(|a| a.body["version"].as_u64());
    let versions: Vec<u64> = by_version
        .iter()
        .map(|a| a.body["version"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (2..=WRITERS as u64 + 1).collect();
    assert_eq!(
        versions, expected,
        "two writers were given the same version"
    );
    // Each version is the one before it with its writer's change: no write
    // was overwritten by one that had not seen it.
    let mut state = book.clone();
    for answer in &by_version {
        let (field, value) = &patches[answer.writer];
        state[*field] = json!(value);
        for field in ["title", "author", "publishedYear"] {
            assert_eq!(
                answer.body[field], state[field],
                "version {} lost an earlier change to {field}",
                answer.body["version"]
            );
        }
    }
    let last = by_version.last().unwrap();
    assert_stored_as(&app, &last.body).await;

    let events = app.wait_until_relayed(WRITERS + 1).await;
    let mut updates: Vec<&Value> = events
        .iter()
        .filter(|(kind, _)| kind == "bookUpdated")
        .map(|(_, event)| event)
        .collect();
    updates.sort_by_key(|event| event["version"].as_u64());
    assert_eq!(updates.len(), WRITERS);
    for (event, answer) in updates.iter().zip(&by_version) {
        assert_eq!(event["version"], answer.body["version"]);
        for field in ["title", "author", "publishedYear", "updatedAt"] {
            assert_eq!(event["book"][field], answer.body[field], "{event}");
        }
    }
}
