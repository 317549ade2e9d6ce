//! W3C Trace Context (`traceparent`) for every request: the caller's when it
//! sends a valid one, otherwise a new trace. Its trace id is on the
//! request's log span, the `traceparent` used goes back in the response,
//! and commands put it in their events, so one change can be followed from
//! the command's log line to the projection's by its trace id.

use axum::{
    extract::Request,
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The trace a request belongs to, as a valid `traceparent` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext(String);

impl TraceContext {
    /// A valid `traceparent` (four fields, any version but `ff`, non-zero
    /// trace and parent ids), lowercased; `None` for anything else, which
    /// W3C says to replace by a new trace.
    pub fn parse(value: &str) -> Option<Self> {
        let parts: Vec<&str> = value.split('-').collect();
        let [version, trace_id, parent_id, flags] = parts.as_slice() else {
            return None;
        };
        let hex = |part: &str, len: usize| {
            part.len() == len && part.bytes().all(|b| b.is_ascii_hexdigit())
        };
        let zero = |part: &str| part.bytes().all(|b| b == b'0');
        let valid = hex(version, 2)
            && !version.eq_ignore_ascii_case("ff")
            && hex(trace_id, 32)
            && !zero(trace_id)
            && hex(parent_id, 16)
            && !zero(parent_id)
            && hex(flags, 2);
        valid.then(|| Self(value.to_ascii_lowercase()))
    }

    /// A new trace: random trace and parent ids, sampled (flags `01`).
    pub fn generate() -> Self {
        let trace_id = uuid::Uuid::new_v4().simple();
        // Half of another random UUID: its variant bits make it non-zero.
        let (_, parent_id) = uuid::Uuid::new_v4().as_u64_pair();
        Self(format!("00-{trace_id}-{parent_id:016x}-01"))
    }

    /// The `traceparent` header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 32 hex digits that name the trace.
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }
}

/// The trace id of a `traceparent` value, if it is valid.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    TraceContext::parse(traceparent).map(|context| context.trace_id().to_owned())
}

/// Gives the request its trace context (a request extension, which the
/// log span and handlers read) and answers with the `traceparent` used.
pub async fn propagate(mut request: Request, next: Next) -> Response {
    let context = request
        .headers()
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .and_then(TraceContext::parse)
        .unwrap_or_else(TraceContext::generate);
    let header = HeaderValue::from_str(context.as_str()).expect("a traceparent is a header value");
    request.extensions_mut().insert(context);
    let mut response = next.run(request).await;
    response.headers_mut().insert(TRACEPARENT, header);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_kept_lowercased() {
        let value = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01";
        let context = TraceContext::parse(value).unwrap();
        assert_eq!(context.as_str(), value.to_ascii_lowercase());
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_malformed_traceparent_is_refused() {
        for value in [
            "",
            "00-abc-def-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn a_generated_trace_is_valid_sampled_and_new() {
        let first = TraceContext::generate();
        assert_eq!(TraceContext::parse(first.as_str()), Some(first.clone()));
        assert!(first.as_str().ends_with("-01"), "{first:?}");
        assert_ne!(first.trace_id(), TraceContext::generate().trace_id());
    }
}
