//! Short, user-facing error details: a problem never echoes a huge input
//! whole, and parameter errors name the API's types, not Rust's.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{book, spawn_system};

/// Longer than any detail a problem should have.
const MAX_DETAIL: usize = 200;

/// Sends the request and checks the problem: `status`, and a `detail` (and
/// every `errors[]` member) of at most `MAX_DETAIL` characters.
async fn short_problem(response: reqwest::Response, status: StatusCode, what: &str) -> Value {
    assert_eq!(response.status(), status, "{what}");
    let problem: Value = response.json().await.expect("a JSON problem");
    let short = |value: &Value| value.as_str().map_or(0, |s| s.chars().count()) <= MAX_DETAIL;
    let head = || problem.to_string().chars().take(400).collect::<String>();
    assert!(short(&problem["detail"]), "{what}: {}", head());
    for error in problem["errors"].as_array().into_iter().flatten() {
        assert!(
            short(&error["field"]) && short(&error["detail"]),
            "{what}: {}",
            head()
        );
    }
    problem
}

#[tokio::test]
async fn a_20_kb_path_segment_or_parameter_is_not_echoed_whole() {
    let system = spawn_system().await;
    let huge = "a".repeat(20 * 1024);

    let response = system.get_book(&huge).await;
    let problem = short_problem(response, StatusCode::BAD_REQUEST, "GET /books/<20 KB>").await;
    assert_eq!(problem["errors"][0]["field"], "id", "{problem}");

    for method in [Method::PUT, Method::PATCH, Method::DELETE] {
        let response = system
            .http
            .request(
                method.clone(),
                format!("{}/books/{huge}", system.command_url),
            )
            .json(&book("Dune"))
            .send()
            .await
            .expect("the command service answers");
        short_problem(
            response,
            StatusCode::BAD_REQUEST,
            &format!("{method} /books/<20 KB>"),
        )
        .await;
    }

    let response = system
        .http
        .get(format!("{}/books?{huge}=1", system.query_url))
        .send()
        .await
        .expect("GET /books answers");
    short_problem(
        response,
        StatusCode::BAD_REQUEST,
        "an unknown 20 KB parameter",
    )
    .await;

    let response = system
        .http
        .get(format!("{}/authors/{huge}", system.query_url))
        .send()
        .await
        .expect("GET /authors answers");
    short_problem(response, StatusCode::BAD_REQUEST, "GET /authors/<20 KB>").await;

    // Bytes that are not UTF-8 once percent-decoded: the parameter and
    // the rule are named, in words.
    for route in ["books", "authors"] {
        let response = system
            .http
            .get(format!("{}/{route}/%FF%FE", system.query_url))
            .send()
            .await
            .expect("the query service answers");
        let what = format!("GET /{route}/%FF%FE");
        let problem = short_problem(response, StatusCode::BAD_REQUEST, &what).await;
        assert_eq!(problem["errors"][0]["rule"], "format", "{problem}");
        assert_eq!(
            problem["errors"][0]["detail"], "must be UTF-8 once percent-decoded",
            "{problem}"
        );
    }

    let response = system
        .http
        .get(format!("{}/no/such/route/{huge}", system.query_url))
        .send()
        .await
        .expect("the query service answers");
    short_problem(response, StatusCode::NOT_FOUND, "an unknown 20 KB route").await;

    system.shutdown().await;
}

#[tokio::test]
async fn parameter_errors_name_the_api_types_not_rust_ones() {
    let system = spawn_system().await;

    for (query, field, detail) in [
        (
            "limit=99999999999999999999",
            "limit",
            "must be an integer from -9223372036854775808 to 9223372036854775807",
        ),
        (
            "year=abc",
            "year",
            "must be an integer from -9223372036854775808 to 9223372036854775807",
        ),
        (
            "sort=sideways",
            "sort",
            "must be one of: createdAt, -createdAt, title, -title, publishedYear, -publishedYear",
        ),
    ] {
        let response = system
            .http
            .get(format!("{}/books?{query}", system.query_url))
            .send()
            .await
            .expect("GET /books answers");
        let problem = short_problem(response, StatusCode::BAD_REQUEST, query).await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
        assert_eq!(problem["errors"][0]["detail"], detail, "{problem}");
    }

    let response = system
        .post_book(&serde_json::json!({
            "title": "Dune", "author": "Frank Herbert", "publishedYear": "1965"
        }))
        .await;
    let problem = short_problem(response, StatusCode::UNPROCESSABLE_ENTITY, "a year as text").await;
    assert_eq!(problem["errors"][0]["field"], "publishedYear", "{problem}");
    assert_eq!(problem["errors"][0]["rule"], "invalidType", "{problem}");
    assert_eq!(
        problem["errors"][0]["detail"], "must be an integer",
        "{problem}"
    );

    system.shutdown().await;
}
