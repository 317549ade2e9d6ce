//! One change followed across both services by its trace id: the command's
//! request log line, the event in the stream, and the projection's log
//! line all name the same trace, at the default `info` level.

use platform::trace::TraceContext;
use serde_json::Value;
use test_support::{
    eventually,
    logs::{span_field, LogCapture},
};

use crate::helpers::{book, field, spawn_system, DEADLINE};

#[tokio::test]
async fn a_create_is_followed_by_its_trace_id_from_the_command_log_to_the_projection_log() {
    let logs = LogCapture::start();
    let system = spawn_system().await;

    let response = system.post_book(&book("Traced")).await;
    let trace = response
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(TraceContext::parse)
        .expect("a valid traceparent in the answer");
    let created: Value = response.json().await.unwrap();
    let id = created["_id"].as_str().unwrap();

    let lines = logs.lines();
    assert!(
        lines.iter().any(|line| {
            line["message"] == "finished processing request"
                && span_field(line, "request", "trace_id") == Some(trace.trace_id())
                && span_field(line, "request", "method") == Some("POST")
                && span_field(line, "request", "uri") == Some("/books")
        }),
        "no command line names trace {}: {lines:#?}",
        trace.trace_id()
    );
    eventually(
        "the projection's line naming the trace",
        DEADLINE,
        || async {
            logs.lines()
                .iter()
                .any(|line| {
                    line["message"] == "event applied"
                        && line["level"] == "INFO"
                        && span_field(line, "event", "trace_id") == Some(trace.trace_id())
                        && span_field(line, "event", "book_id") == Some(id)
                })
                .then_some(())
        },
    )
    .await;
    let entries = system.entries(&system.stream).await;
    let event: Value = serde_json::from_str(&field(&entries[0], "data").unwrap()).unwrap();
    assert_eq!(event["traceparent"], trace.as_str());
}
