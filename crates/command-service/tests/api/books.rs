//! `POST /books`: what is answered and what is stored.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::{assert_problem, TcpProxy};

use crate::helpers::{spawn_app, spawn_app_with, test_settings, valid_book};

#[tokio::test]
async fn create_answers_201_with_the_book_and_where_to_read_it() {
    let app = spawn_app().await;

    let response = app.post_book(&valid_book()).await;

    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(response.headers()["content-type"], "application/json");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["_id"].as_str().expect("_id is a string");
    assert_eq!(id.len(), 24);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(location, format!("http://query.test/books/{id}"));
    assert_eq!(body["title"], "Dune");
    assert_eq!(body["author"], "Frank Herbert");
    assert_eq!(body["publishedYear"], 1965);
    assert_eq!(body["version"], 1);
    assert_eq!(body["createdAt"], body["updatedAt"]);
}

#[tokio::test]
async fn create_stores_the_book_with_its_event_in_one_document() {
    let app = spawn_app().await;

    let body: Value = app.post_book(&valid_book()).await.json().await.unwrap();

    let stored = app.stored_books().await;
    assert_eq!(stored.len(), 1);
    let book = &stored[0];
    assert_eq!(book.get_object_id("_id").unwrap().to_hex(), body["_id"]);
    assert_eq!(book.get_str("title").unwrap(), "Dune");
    assert_eq!(book.get_str("author").unwrap(), "Frank Herbert");
    assert_eq!(book.get_i32("publishedYear").unwrap(), 1965);
    assert_eq!(book.get_i64("version").unwrap(), 1);
}

#[tokio::test]
async fn create_trims_title_and_author() {
    let app = spawn_app().await;

    let response = app
        .post_book(
            &json!({ "title": "  Dune ", "author": "\tFrank Herbert\n", "publishedYear": 1965 }),
        )
        .await;

    let body: Value = response.json().await.unwrap();
    assert_eq!(body["title"], "Dune");
    assert_eq!(body["author"], "Frank Herbert");
}

/// Each invalid body with the field and rule its 422 must name.
fn invalid_bodies() -> Vec<(Value, &'static str, &'static str)> {
    vec![
        (
            json!({ "author": "A", "publishedYear": 2000 }),
            "title",
            "required",
        ),
        (
            json!({ "title": "T", "publishedYear": 2000 }),
            "author",
            "required",
        ),
        (
            json!({ "title": "T", "author": "A" }),
            "publishedYear",
            "required",
        ),
        (
            json!({ "title": "   ", "author": "A", "publishedYear": 2000 }),
            "title",
            "required",
        ),
        (
            json!({ "title": "T", "author": "", "publishedYear": 2000 }),
            "author",
            "required",
        ),
        (
            json!({ "title": "x".repeat(201), "author": "A", "publishedYear": 2000 }),
            "title",
            "tooLong",
        ),
        (
            json!({ "title": "T", "author": "x".repeat(101), "publishedYear": 2000 }),
            "author",
            "tooLong",
        ),
        (
            json!({ "title": "a\u{0}b", "author": "A", "publishedYear": 2000 }),
            "title",
            "controlCharacter",
        ),
        (
            json!({ "title": "T", "author": "A", "publishedYear": 2101 }),
            "publishedYear",
            "outOfRange",
        ),
        (
            json!({ "title": "T", "author": "A", "publishedYear": -3001 }),
            "publishedYear",
            "outOfRange",
        ),
        (
            json!({ "title": "T", "author": "A", "publishedYear": 99_999_999_999_i64 }),
            "publishedYear",
            "outOfRange",
        ),
        (
            json!({ "title": "T", "author": "A", "publishedYear": 1e300 }),
            "publishedYear",
            "outOfRange",
        ),
        (
            json!({ "title": "T", "author": "A", "publishedYear": 18_446_744_073_709_551_615_u64 }),
            "publishedYear",
            "outOfRange",
        ),
        (
            json!({ "title": "T", "author": "A", "publishedYear": "1999" }),
            "publishedYear",
            "invalidType",
        ),
        (
            json!({ "title": "T", "author": "A", "publishedYear": 1999.5 }),
            "publishedYear",
            "invalidType",
        ),
        (
            json!({ "title": null, "author": "A", "publishedYear": 2000 }),
            "title",
            "invalidType",
        ),
        (
            json!({ "title": 42, "author": "A", "publishedYear": 2000 }),
            "title",
            "invalidType",
        ),
        (
            json!({ "title": { "$gt": "" }, "author": "A", "publishedYear": 2000 }),
            "title",
            "invalidType",
        ),
        (
            json!({ "title": "T", "author": ["A"], "publishedYear": 2000 }),
            "author",
            "invalidType",
        ),
        (
            json!({ "title": "T", "author": "A", "publishedYear": 2000, "isbn": "x" }),
            "isbn",
            "unknownField",
        ),
        (
            json!({ "title": "T", "author": "A", "publishedyear": 2000 }),
            "publishedyear",
            "unknownField",
        ),
        (json!(["T", "A", 2000]), "body", "invalidType"),
        (json!("Dune"), "body", "invalidType"),
    ]
}

#[tokio::test]
async fn each_invalid_field_gets_a_422_naming_the_field_and_rule() {
    let app = spawn_app().await;

    for (body, field, rule) in invalid_bodies() {
        let problem = assert_problem(app.post_book(&body).await, 422).await;
        assert_eq!(problem["type"], "urn:books:problem:validation", "{body}");
        assert_eq!(problem["errors"][0]["field"], field, "{body} -> {problem}");
        assert_eq!(problem["errors"][0]["rule"], rule, "{body} -> {problem}");
    }
    assert!(
        app.stored_books().await.is_empty(),
        "an invalid body wrote a book"
    );
}

#[tokio::test]
async fn a_year_written_as_a_number_with_a_zero_fraction_is_an_integer() {
    let app = spawn_app().await;

    let response = app
        .post_book(&json!({ "title": "T", "author": "A", "publishedYear": 1965.0 }))
        .await;

    assert_eq!(response.status(), 201);
    let book: serde_json::Value = response.json().await.unwrap();
    assert_eq!(book["publishedYear"], 1965);
}

#[tokio::test]
async fn every_invalid_field_is_reported_at_once() {
    let app = spawn_app().await;

    let problem = assert_problem(
        app.post_book(&json!({ "title": "", "author": "", "publishedYear": 3000 }))
            .await,
        422,
    )
    .await;

    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["title", "author", "publishedYear"]);
}

#[tokio::test]
async fn malformed_or_truncated_json_gets_a_400() {
    let app = spawn_app().await;

    for raw in [
        "{",
        "{\"title\": \"Dune\",",
        "not json",
        "",
        "{\"title\":\"T\"} {}",
    ] {
        let problem = assert_problem(app.post_raw("application/json", raw).await, 400).await;
        assert_eq!(
            problem["type"], "urn:books:problem:malformed-json",
            "{raw:?}"
        );
    }
    assert!(app.stored_books().await.is_empty());
}

#[tokio::test]
async fn a_body_not_declared_as_json_gets_a_415() {
    let app = spawn_app().await;
    let body = valid_book().to_string();

    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
    ] {
        let problem = assert_problem(app.post_raw(content_type, body.clone()).await, 415).await;
        assert_eq!(problem["type"], "urn:books:problem:unsupported-media-type");
    }
    let without_type = app
        .request(reqwest::Method::POST, "/books")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_problem(without_type, 415).await;
    // A JSON media type with parameters or a +json suffix is fine.
    let with_charset = app.post_raw("application/json; charset=utf-8", body).await;
    assert_eq!(with_charset.status().as_u16(), 201);
    assert_eq!(app.stored_books().await.len(), 1);
}

#[tokio::test]
async fn a_body_over_the_limit_gets_a_413() {
    let app = spawn_app().await;
    let huge = json!({ "title": "x".repeat(20 * 1024), "author": "A", "publishedYear": 2000 });

    let problem = assert_problem(app.post_book(&huge).await, 413).await;

    assert_eq!(problem["type"], "urn:books:problem:payload-too-large");
    assert!(app.stored_books().await.is_empty());
}

#[tokio::test]
async fn unknown_routes_and_methods_get_problem_json() {
    let app = spawn_app().await;

    let missing = app.http.get(app.url("/nowhere")).send().await.unwrap();
    assert_problem(missing, 404).await;
    let wrong_method = app.http.get(app.url("/books")).send().await.unwrap();
    assert_problem(wrong_method, 405).await;
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_keeps_the_callers() {
    let app = spawn_app().await;

    let generated = app.post_book(&valid_book()).await;
    assert!(generated.headers().contains_key("x-request-id"));

    let given = app
        .http
        .post(app.url("/books"))
        .header("x-request-id", "my-request-1")
        .json(&valid_book())
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "my-request-1");
}

#[tokio::test]
async fn mongodb_unreachable_gets_a_503_fast_and_writes_nothing_then_service_resumes() {
    let mut settings = test_settings().await;
    let proxy = TcpProxy::in_front_of_mongo().await;
    settings.mongo_url = platform::RedactedUrl::new(proxy.url());
    let app = spawn_app_with(settings).await;

    proxy.cut();
    let started = Instant::now();
    let problem = assert_problem(app.post_book(&valid_book()).await, 503).await;
    assert_eq!(problem["type"], "urn:books:problem:service-unavailable");
    // The dependency timeout is 1 s; allow for retries and a slow machine.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    proxy.restore();
    let response = app.post_book(&valid_book()).await;
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(
        app.stored_books().await.len(),
        1,
        "the refused write must not be stored"
    );
}

#[tokio::test]
async fn mongodb_that_hangs_gets_a_503_within_the_deadline_then_service_resumes() {
    let mut settings = test_settings().await;
    let proxy = TcpProxy::in_front_of_mongo().await;
    settings.mongo_url = platform::RedactedUrl::new(proxy.url());
    let app = spawn_app_with(settings).await;
    // A pooled connection exists: the hang catches it mid-request.
    assert_eq!(app.post_book(&valid_book()).await.status(), 201);

    proxy.hang();
    let started = Instant::now();
    let response = app.post_book(&valid_book()).await;
    let elapsed = started.elapsed();
    assert_eq!(response.headers()["retry-after"], "1");
    let problem = assert_problem(response, 503).await;
    assert_eq!(problem["type"], "urn:books:problem:service-unavailable");
    // The deadline is three dependency timeouts (1 s each here).
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");

    proxy.restore();
    test_support::eventually(
        "commands accepted again",
        Duration::from_secs(10),
        || async { (app.post_book(&valid_book()).await.status() == 201).then_some(()) },
    )
    .await;
}
