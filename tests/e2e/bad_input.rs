//! Bad requests: every way a `POST /books` body can be wrong is answered
//! with a precise problem+json, and none of them writes a book or an event.

use reqwest::{header, StatusCode};
use serde_json::Value;
use test_support::eventually;

use crate::helpers::{book, spawn_system, DEADLINE};

/// One bad request and the answer it must get.
struct Case {
    what: &'static str,
    content_type: Option<&'static str>,
    body: String,
    status: StatusCode,
    /// For a 422: the field and rule `errors[0]` must name.
    error: Option<(&'static str, &'static str)>,
}

fn json_case(
    what: &'static str,
    body: &str,
    status: StatusCode,
    error: Option<(&'static str, &'static str)>,
) -> Case {
    Case {
        what,
        content_type: Some("application/json"),
        body: body.to_owned(),
        status,
        error,
    }
}

fn cases() -> Vec<Case> {
    const INVALID: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;
    const MALFORMED: StatusCode = StatusCode::BAD_REQUEST;
    let long_title = format!(
        r#"{{"title":"{}","author":"A","publishedYear":1965}}"#,
        "x".repeat(201)
    );
    vec![
        json_case(
            "missing field",
            r#"{"title":"Dune","author":"Frank Herbert"}"#,
            INVALID,
            Some(("publishedYear", "required")),
        ),
        json_case(
            "empty title",
            r#"{"title":"","author":"Frank Herbert","publishedYear":1965}"#,
            INVALID,
            Some(("title", "required")),
        ),
        json_case(
            "title of 201 characters",
            &long_title,
            INVALID,
            Some(("title", "tooLong")),
        ),
        json_case(
            "year 2101",
            r#"{"title":"Dune","author":"Frank Herbert","publishedYear":2101}"#,
            INVALID,
            Some(("publishedYear", "outOfRange")),
        ),
        json_case(
            "year as a string",
            r#"{"title":"Dune","author":"Frank Herbert","publishedYear":"1999"}"#,
            INVALID,
            Some(("publishedYear", "invalidType")),
        ),
        json_case(
            "unknown field",
            r#"{"title":"Dune","author":"Frank Herbert","publishedYear":1965,"isbn":"0441013597"}"#,
            INVALID,
            Some(("isbn", "unknownField")),
        ),
        json_case(
            "query operator instead of a title",
            r#"{"title":{"$gt":""},"author":"Frank Herbert","publishedYear":1965}"#,
            INVALID,
            Some(("title", "invalidType")),
        ),
        json_case(
            "JSON array",
            r#"[{"title":"Dune","author":"Frank Herbert","publishedYear":1965}]"#,
            INVALID,
            Some(("body", "invalidType")),
        ),
        json_case(
            "not JSON",
            "title=Dune&author=Frank+Herbert",
            MALFORMED,
            None,
        ),
        json_case(
            "truncated JSON",
            r#"{"title":"Dune","author":"Fra"#,
            MALFORMED,
            None,
        ),
        json_case("empty body", "", MALFORMED, None),
        Case {
            what: "text/plain",
            content_type: Some("text/plain"),
            body: book("Dune").to_string(),
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            error: None,
        },
        Case {
            what: "no Content-Type",
            content_type: None,
            body: book("Dune").to_string(),
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            error: None,
        },
    ]
}

#[tokio::test]
async fn bad_bodies_get_a_problem_and_write_nothing() {
    let system = spawn_system().await;

    for case in cases() {
        let what = case.what;
        let mut request = system.http.post(format!("{}/books", system.command_url));
        if let Some(content_type) = case.content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let response = request
            .body(case.body)
            .send()
            .await
            .expect("POST /books answers");

        assert_eq!(response.status(), case.status, "{what}");
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        assert_eq!(
            content_type.as_ref().and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{what}"
        );
        let problem: Value = response.json().await.expect("a JSON problem");
        for member in ["type", "title", "detail"] {
            let text = problem[member].as_str().unwrap_or_default();
            assert!(!text.is_empty(), "{what}: no {member} in {problem}");
        }
        assert_eq!(problem["status"], case.status.as_u16(), "{what}: {problem}");
        if let Some((field, rule)) = case.error {
            assert_eq!(problem["errors"][0]["field"], field, "{what}: {problem}");
            assert_eq!(problem["errors"][0]["rule"], rule, "{what}: {problem}");
        }
    }

    assert_eq!(system.count_books(&system.write_db).await, 0);
    assert_eq!(system.stream_len(&system.stream).await, 0);

    // The relay publishes in order: once a good book's event is in the
    // stream, any event a bad request had caused would be there too.
    let good = system.create_book(&book("Dune")).await;
    let good_id = good["_id"].as_str().expect("an _id");
    let streamed = eventually("the good book's event", DEADLINE, || async {
        let streamed = system.streamed_book_ids().await;
        streamed.iter().any(|id| id == good_id).then_some(streamed)
    })
    .await;
    assert!(streamed.iter().all(|id| id == good_id), "{streamed:?}");
    assert_eq!(
        system.stream_len(&system.stream).await,
        streamed.len(),
        "every entry is an event"
    );
    assert_eq!(system.count_books(&system.write_db).await, 1);
    system.shutdown().await;
}
