//! A corpus of hostile input against every route of both services: bodies
//! (malformed, truncated, wrong types, MongoDB operators in every field,
//! huge, deeply nested, control characters, lone surrogates), ids and query
//! parameters. Every answer is a 4xx problem+json, never a 5xx, and no
//! command in the corpus writes anything.

use reqwest::{header, Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{book, spawn_system, TestSystem};

const FIELDS: [&str; 3] = ["title", "author", "publishedYear"];

/// Bodies no command may accept.
fn bad_bodies() -> Vec<(String, &'static str)> {
    let valid = book("Corpus");
    let mut bodies: Vec<(String, &'static str)> = vec![
        (String::new(), "application/json"),
        ("{".into(), "application/json"),
        (r#"{"title":"Dune","author":"#.into(), "application/json"),
        ("null".into(), "application/json"),
        ("[]".into(), "application/json"),
        ("\"Dune\"".into(), "application/json"),
        ("42".into(), "application/json"),
        (r#"{"title":"\ud800","author":"A","publishedYear":1965}"#.into(), "application/json"),
        (r#"{"title":"Du\u0000ne","author":"A","publishedYear":1965}"#.into(), "application/json"),
        (r#"{"title":"Dune","author":"A\u202e\u0007","publishedYear":1965}"#.into(), "application/json"),
        (r#"{"title":"Dune","author":"A","publishedYear":1e400}"#.into(), "application/json"),
        (r#"{"title":"Dune","author":"A","publishedYear":1965.5}"#.into(), "application/json"),
        (r#"{"title":"Dune","author":"A","publishedYear":99999999999999999999}"#.into(), "application/json"),
        (r#"{"title":"Dune","author":"A","publishedYear":1965,"$set":{"version":1}}"#.into(), "application/json"),
        (r#"{"title":"Dune","author":"A","publishedYear":1965,"_id":"65a1b2c3d4e5f60718293a4b"}"#.into(), "application/json"),
        (r#"{"title":"Dune","title":"Dune","author":"A","publishedYear":1965,"version":9}"#.into(), "application/json"),
        (format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)), "application/json"),
        (format!(r#"{{"title":{}1{}}}"#, "[".repeat(5_000), "]".repeat(5_000)), "application/json"),
        (format!(r#"{{"title":"{}","author":"A","publishedYear":1965}}"#, "x".repeat(20_000)), "application/json"),
        (valid.to_string(), "text/plain"),
        (valid.to_string(), "application/x-www-form-urlencoded"),
    ];
    // A MongoDB operator object, or another wrong type, in each field.
    for field in FIELDS {
        for wrong in [
            json!({ "$gt": "" }),
            json!({ "$where": "sleep(1000)" }),
            json!(["Dune"]),
            json!(true),
            Value::Null,
        ] {
            let mut body = valid.clone();
            body[field] = wrong;
            bodies.push((body.to_string(), "application/json"));
        }
    }
    bodies
}

const HOSTILE_IDS: [&str; 8] = [
    "..%2F..%2Fetc%2Fpasswd",
    "%24where",
    "%7B%22%24gt%22%3A%22%22%7D",
    "65a1b2c3d4e5f60718293a4",
    "65a1b2c3d4e5f60718293a4bz",
    "zza1b2c3d4e5f60718293a4b",
    "%00",
    "%F0%9F%93%9A%F0%9F%93%9A%F0%9F%93%9A%F0%9F%93%9A%F0%9F%93%9A%F0%9F%93%9A",
];

const HOSTILE_QUERIES: [&str; 14] = [
    "author[$ne]=x",
    "author=%00",
    "year=abc",
    "year=99999999999999999999",
    "yearFrom=2000&yearTo=1000",
    "limit=0",
    "limit=-1",
    "limit=1e3",
    "sort=$natural",
    "sort=title&sort=-title",
    "cursor=%7B%22%24gt%22%3A%22%22%7D",
    "cursor=eyJzIjoidGl0bGUiLCJ2IjpudWxsLCJpZCI6IngifQ",
    "title=",
    "unknown=1",
];

/// Asserts a client error answered as problem+json; returns the status.
async fn assert_client_problem(response: reqwest::Response, what: &str) -> StatusCode {
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.text().await.unwrap_or_default();
    assert!(status.is_client_error(), "{what}: {status} {body}");
    assert_eq!(content_type, "application/problem+json", "{what}: {body}");
    let problem: Value = serde_json::from_str(&body).expect("a JSON problem");
    assert_eq!(problem["status"], status.as_u16(), "{what}: {body}");
    status
}

/// What the write side holds: every stored document and stream entry.
async fn written(system: &TestSystem) -> (u64, usize) {
    (
        system.count_books(&system.write_db).await,
        system.stream_len(&system.stream).await,
    )
}

#[tokio::test]
async fn hostile_input_gets_a_client_problem_and_writes_nothing() {
    let system = spawn_system().await;
    let existing = system.create_book(&book("Target")).await;
    let id = existing["_id"].as_str().unwrap().to_owned();
    let version = existing["version"].clone();
    system.await_book(&existing).await;
    let before = written(&system).await;

    for (body, content_type) in bad_bodies() {
        for (method, path) in [
            (Method::POST, "/books".to_owned()),
            (Method::PUT, format!("/books/{id}")),
            (Method::PATCH, format!("/books/{id}")),
        ] {
            let what = format!("{method} {path} {content_type} {body:.80}");
            let response = system
                .http
                .request(method.clone(), format!("{}{path}", system.command_url))
                .header(header::CONTENT_TYPE, content_type)
                .body(body.clone())
                .send()
                .await
                .expect("answered");
            assert_client_problem(response, &what).await;
        }
    }

    for hostile in HOSTILE_IDS {
        for (method, base) in [
            (Method::GET, &system.query_url),
            (Method::PUT, &system.command_url),
            (Method::PATCH, &system.command_url),
            (Method::DELETE, &system.command_url),
        ] {
            let url = format!("{base}/books/{hostile}");
            let response = system
                .http
                .request(method.clone(), &url)
                .json(&book("Hostile id"))
                .send()
                .await
                .expect("answered");
            assert_client_problem(response, &format!("{method} {url}")).await;
        }
    }

    for query in HOSTILE_QUERIES {
        let url = format!("{}/books?{query}", system.query_url);
        let response = system.http.get(&url).send().await.expect("answered");
        assert_client_problem(response, &url).await;
    }
    for query in [
        "minVersion=0",
        "minVersion=abc",
        "minVersion=1&x=1",
        "minVersion[$gt]=0",
    ] {
        let url = format!("{}/books/{id}?{query}", system.query_url);
        let response = system.http.get(&url).send().await.expect("answered");
        assert_client_problem(response, &url).await;
    }
    for author in ["%00", "%20%20", &"a".repeat(101)] {
        let url = format!("{}/authors/{author}", system.query_url);
        let response = system.http.get(&url).send().await.expect("answered");
        assert_client_problem(response, &url).await;
    }

    assert_eq!(
        written(&system).await,
        before,
        "a rejected request wrote something"
    );
    let stored = system
        .read_book(&id)
        .await
        .expect("the book is still there");
    assert_eq!(stored["version"], version);
    assert_eq!(stored["title"], "Target");
}
