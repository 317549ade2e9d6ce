//! Trace context and request ids: every command's event carries the W3C
//! `traceparent` of its request (the caller's, or a new trace), the answer
//! says which, and every log line of a request names its request id and
//! trace id.

use platform::trace::TraceContext;
use serde_json::Value;
use test_support::logs::{span_field, LogCapture};

use crate::helpers::{spawn_app, valid_book, TOKEN};

const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The `traceparent` an answer carries, checked to be valid.
fn traceparent_of(response: &reqwest::Response) -> TraceContext {
    let value = response.headers()["traceparent"].to_str().unwrap();
    TraceContext::parse(value).unwrap_or_else(|| panic!("invalid traceparent {value:?}"))
}

#[tokio::test]
async fn a_command_without_a_traceparent_starts_a_sampled_trace_that_its_event_carries() {
    let app = spawn_app().await;

    let response = app.post_book(&valid_book()).await;

    assert_eq!(response.status(), 201);
    let trace = traceparent_of(&response);
    assert!(trace.as_str().ends_with("-01"), "{trace:?}");
    let events = app.wait_until_relayed(1).await;
    assert_eq!(events[0].1["traceparent"], trace.as_str());
}

#[tokio::test]
async fn a_valid_traceparent_is_kept_in_the_answer_and_in_every_event() {
    let app = spawn_app().await;

    let created = app
        .http
        .post(app.url("/books"))
        .bearer_auth(TOKEN)
        .header("traceparent", GIVEN)
        .json(&valid_book())
        .send()
        .await
        .unwrap();
    assert_eq!(traceparent_of(&created).as_str(), GIVEN);
    let book: Value = created.json().await.unwrap();
    app.wait_until_relayed(1).await;
    let patched = app
        .request(
            reqwest::Method::PATCH,
            &format!("/books/{}", book["_id"].as_str().unwrap()),
        )
        .header("traceparent", GIVEN.to_uppercase())
        .header("content-type", "application/merge-patch+json")
        .body(r#"{"publishedYear": 1966}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    assert_eq!(traceparent_of(&patched).as_str(), GIVEN);

    let events = app.wait_until_relayed(2).await;
    assert_eq!(events[0].1["traceparent"], GIVEN);
    assert_eq!(events[1].1["traceparent"], GIVEN);
}

#[tokio::test]
async fn a_malformed_traceparent_is_replaced_by_a_new_trace() {
    let app = spawn_app().await;

    let response = app
        .http
        .post(app.url("/books"))
        .bearer_auth(TOKEN)
        .header(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )
        .json(&valid_book())
        .send()
        .await
        .unwrap();

    let trace = traceparent_of(&response);
    assert_ne!(trace.trace_id(), "00000000000000000000000000000000");
    let events = app.wait_until_relayed(1).await;
    assert_eq!(events[0].1["traceparent"], trace.as_str());
}

#[tokio::test]
async fn the_request_log_line_names_the_request_id_and_the_trace_id_at_info_level() {
    let logs = LogCapture::start();
    let app = spawn_app().await;
    let request_id = test_support::unique("request");

    let response = app
        .http
        .post(app.url("/books"))
        .bearer_auth(TOKEN)
        .header("x-request-id", &request_id)
        .json(&valid_book())
        .send()
        .await
        .unwrap();

    assert_eq!(response.headers()["x-request-id"], request_id.as_str());
    let trace = traceparent_of(&response);
    let lines = logs.lines();
    let ours: Vec<&Value> = lines
        .iter()
        .filter(|line| span_field(line, "request", "request_id") == Some(request_id.as_str()))
        .collect();
    assert!(
        ours.iter()
            .any(|line| line["message"] == "finished processing request" && line["status"] == 201),
        "no info line answers the request: {lines:#?}"
    );
    for line in &ours {
        assert_eq!(
            span_field(line, "request", "trace_id"),
            Some(trace.trace_id()),
            "{line}"
        );
    }
}
