//! The HTTP pieces both services share: JSON body and query string
//! extractors whose every rejection is a precise problem+json, the layers every route gets
//! (request id, trace context, logging, metrics, body limit, panic guard)
//! and the fallbacks for unknown routes and methods.

use std::time::Duration;

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State},
    http::{header, request::Parts, HeaderMap, HeaderName, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Router,
};
use serde::de::DeserializeOwned;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::{DefaultOnResponse, TraceLayer},
};
use tracing::Level;

use crate::{
    problem::{FieldProblem, Problem, ProblemKind},
    trace::TraceContext,
};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The strong entity tag of a book at `version`: the version in quotes.
pub fn etag(version: u64) -> axum::http::HeaderValue {
    axum::http::HeaderValue::from_str(&format!("\"{version}\""))
        .expect("digits and quotes are a valid header value")
}

/// A JSON request body. Unlike `axum::Json`, every way a body can be wrong
/// is answered with problem+json that names the field and the rule:
/// 415 when it is not declared as JSON, 413 over the body limit, 400 when it
/// is not JSON, 422 when a field is missing, unknown or of the wrong type.
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(Problem::new(
                ProblemKind::UnsupportedMediaType,
                "send the body with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(ProblemKind::PayloadTooLarge, rejection.body_text())
            } else {
                Problem::new(ProblemKind::MalformedJson, rejection.body_text())
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A path parameter. Unlike `axum::extract::Path`, a value that cannot be
/// read (not UTF-8, wrong type) is answered with a 400 problem+json.
pub struct PathParam<T>(pub T);

impl<T, S> FromRequestParts<S> for PathParam<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(Problem::new(
                ProblemKind::InvalidParameter,
                rejection.body_text(),
            )),
        }
    }
}

/// The query string, read into a `T` (a struct of optional fields with
/// `#[serde(deny_unknown_fields)]`). Unlike `axum::extract::Query`, every way
/// a query can be wrong is a 400 problem+json naming the parameter and the
/// rule: `unknownParameter`, `duplicateParameter`, `invalidType` (a value
/// that does not parse as the parameter's type), `oneOf` (a value outside an
/// enumeration) or `required`.
pub struct QueryParams<T>(pub T);

impl<T, S> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Decoding into pairs of strings cannot fail on content (percent
        // decoding is lossy); the typed reading below names the parameter.
        let pairs = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|rejection| {
                Problem::new(ProblemKind::InvalidParameter, rejection.body_text())
            })?
            .0;
        parse_query_pairs(pairs).map(Self)
    }
}

/// Reads decoded query parameters into a `T`; see [`QueryParams`].
fn parse_query_pairs<T: DeserializeOwned>(pairs: Vec<(String, String)>) -> Result<T, Problem> {
    let deserializer = serde::de::value::MapDeserializer::new(
        pairs
            .into_iter()
            .map(|(name, value)| (name, QueryValue(value))),
    );
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let detail = error.into_inner().to_string();
        let named = |rule: &str| {
            let field = quoted_name(&detail).unwrap_or(&path).to_owned();
            Problem::invalid_parameter(&field, rule, detail.clone())
        };
        if detail.starts_with("unknown field ") {
            named("unknownParameter")
        } else if detail.starts_with("duplicate field ") {
            named("duplicateParameter")
        } else if detail.starts_with("missing field ") {
            named("required")
        } else if detail.starts_with("unknown variant ") {
            Problem::invalid_parameter(&path, "oneOf", detail)
        } else {
            Problem::invalid_parameter(&path, "invalidType", detail)
        }
    })
}

/// One query parameter's value: text that becomes whatever type its field
/// asks for (an integer, a boolean, an enumeration's variant...).
struct QueryValue(String);

impl QueryValue {
    fn parse<'de, N, V>(self, visitor: &V) -> Result<N, serde::de::value::Error>
    where
        N: std::str::FromStr,
        V: serde::de::Visitor<'de>,
    {
        self.0.parse().map_err(|_| {
            serde::de::Error::invalid_type(serde::de::Unexpected::Str(&self.0), visitor)
        })
    }
}

impl<'de> serde::de::IntoDeserializer<'de, serde::de::value::Error> for QueryValue {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

macro_rules! parse_number {
    ($($method:ident => $visit:ident),* $(,)?) => {
        $(
            fn $method<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                let value = self.parse(&visitor)?;
                visitor.$visit(value)
            }
        )*
    };
}

impl<'de> serde::Deserializer<'de> for QueryValue {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_string(self.0)
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        // A parameter that is present has a value, even an empty one.
        visitor.visit_some(self)
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        use serde::de::IntoDeserializer;
        visitor.visit_enum(self.0.into_deserializer())
    }

    fn deserialize_newtype_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    parse_number! {
        deserialize_bool => visit_bool,
        deserialize_i8 => visit_i8,
        deserialize_i16 => visit_i16,
        deserialize_i32 => visit_i32,
        deserialize_i64 => visit_i64,
        deserialize_u8 => visit_u8,
        deserialize_u16 => visit_u16,
        deserialize_u32 => visit_u32,
        deserialize_u64 => visit_u64,
        deserialize_f32 => visit_f32,
        deserialize_f64 => visit_f64,
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char str string bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<mime::Mime>().ok())
    else {
        return false;
    };
    content_type.type_() == mime::APPLICATION
        && (content_type.subtype() == mime::JSON || content_type.suffix() == Some(mime::JSON))
}

/// Parses `bytes` as a JSON object into a `T`, turning serde's error into a
/// problem that names the offending field. Bodies must be objects: serde
/// would otherwise also read a struct from an array of its field values.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    // A body that is not JSON at all is a 400 whatever else is wrong with it.
    let malformed = |bytes: &[u8]| {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
            .err()
            .map(|error| Problem::new(ProblemKind::MalformedJson, without_position(&error)))
    };
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        if let Some(problem) = malformed(bytes) {
            return Err(problem);
        }
        return Err(Problem::validation(vec![FieldProblem {
            field: "body".to_owned(),
            rule: "invalidType".to_owned(),
            detail: "the body must be a JSON object".to_owned(),
        }]));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if inner.is_data() {
            malformed(bytes)
                .unwrap_or_else(|| Problem::validation(vec![field_problem(&path, &inner)]))
        } else {
            Problem::new(ProblemKind::MalformedJson, without_position(&inner))
        }
    })?;
    deserializer
        .end()
        .map_err(|error| Problem::new(ProblemKind::MalformedJson, without_position(&error)))?;
    Ok(value)
}

/// serde's message without its " at line L column C" suffix.
fn without_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message,
    }
}

/// The name between the first pair of backticks in a serde message.
fn quoted_name(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

fn field_problem(path: &str, error: &serde_json::Error) -> FieldProblem {
    let detail = without_position(error);
    let at = |name: &str| {
        if path == "." || path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    let (field, rule) =
        if let Some(name) = detail.strip_prefix("missing field ").and_then(quoted_name) {
            // A missing field is reported at its parent's path.
            (at(name), "required")
        } else if detail.starts_with("unknown field ") {
            (path.to_owned(), "unknownField")
        } else if path == "." || path.is_empty() {
            ("body".to_owned(), "invalidType")
        } else {
            (path.to_owned(), "invalidType")
        };
    FieldProblem {
        field,
        rule: rule.to_owned(),
        detail,
    }
}

/// Answers every unknown route with a 404 problem.
pub async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::new(
        ProblemKind::NotFound,
        format!("no route for {}", uri.path()),
    )
}

/// Answers a known route called with the wrong method with a 405 problem.
pub async fn method_not_allowed() -> Problem {
    Problem::new(
        ProblemKind::MethodNotAllowed,
        "this route does not accept that method",
    )
}

fn panic_to_problem(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    // The panic message is already in the log; it is not the client's to see.
    Problem::new(ProblemKind::Internal, "an unexpected error occurred").into_response()
}

/// Answers 503 (with `Retry-After: 1`) for a request still running at its
/// deadline: a MongoDB or Redis that hangs, rather than refusing
/// connections, must not hold clients for ever. What the request had
/// already written stays written, as with any timeout.
async fn deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(?limit, "request cut at its deadline");
            Problem::new(
                ProblemKind::ServiceUnavailable,
                "a backing store did not answer in time; retry later",
            )
            .with_header(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            )
            .into_response()
        }
    }
}

/// Wraps `router` in the layers every service route gets: problem+json
/// fallbacks, a body size limit, a deadline per request, a guard that turns
/// a panic into a 500 problem, request counts and latencies (see
/// `metrics`), a trace context (see `trace`), and an `x-request-id` on
/// every request (kept if the client sent one) echoed in the response.
/// The request id and the trace id are on every log line of the request.
pub fn with_common_layers(router: Router, body_limit: usize, deadline_after: Duration) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            deadline_after,
            deadline,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(panic_to_problem))
        .layer(axum::middleware::from_fn(crate::metrics::track_requests))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let request_id = request
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    let trace_id = request
                        .extensions()
                        .get::<TraceContext>()
                        .map_or("-", TraceContext::trace_id);
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        uri = %request.uri().path(),
                        request_id,
                        trace_id,
                    )
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(axum::middleware::from_fn(crate::trace::propagate))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Body {
        title: String,
        published_year: i64,
    }

    fn problem(raw: &str) -> Problem {
        parse_json::<Body>(raw.as_bytes()).unwrap_err()
    }

    fn field_and_rule(raw: &str) -> (String, String) {
        let p = problem(raw);
        assert_eq!(p.kind(), ProblemKind::Validation, "{raw}");
        (p.errors()[0].field.clone(), p.errors()[0].rule.clone())
    }

    #[test]
    fn syntax_errors_and_truncation_are_malformed_json() {
        for raw in [
            "",
            "{",
            "{\"title\": \"x\",",
            "not json",
            "{\"title\":\"x\",\"publishedYear\":1} trailing",
            "{\"title\":\"x\"} {}",
        ] {
            assert_eq!(problem(raw).kind(), ProblemKind::MalformedJson, "{raw:?}");
        }
    }

    #[test]
    fn missing_field_is_named_as_required() {
        assert_eq!(
            field_and_rule(r#"{"title":"x"}"#),
            ("publishedYear".into(), "required".into())
        );
    }

    #[test]
    fn unknown_field_is_named() {
        assert_eq!(
            field_and_rule(r#"{"title":"x","publishedYear":1,"isbn":"1"}"#),
            ("isbn".into(), "unknownField".into())
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        assert_eq!(
            field_and_rule(r#"{"title":{"$gt":""},"publishedYear":1}"#),
            ("title".into(), "invalidType".into())
        );
        assert_eq!(
            field_and_rule(r#"{"title":"x","publishedYear":"1999"}"#),
            ("publishedYear".into(), "invalidType".into())
        );
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Params {
        min_version: Option<i64>,
        title: Option<String>,
        order: Option<Order>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    enum Order {
        #[serde(rename = "asc")]
        Ascending,
        #[serde(rename = "-asc")]
        Descending,
    }

    fn query(pairs: &[(&str, &str)]) -> Result<Params, Problem> {
        parse_query_pairs(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    fn query_problem(pairs: &[(&str, &str)]) -> (String, String) {
        let problem = query(pairs).unwrap_err();
        assert_eq!(problem.kind(), ProblemKind::InvalidParameter, "{pairs:?}");
        (
            problem.errors()[0].field.clone(),
            problem.errors()[0].rule.clone(),
        )
    }

    #[test]
    fn query_parameters_are_read_into_their_types() {
        assert_eq!(
            query(&[("minVersion", "3"), ("title", "a&b"), ("order", "-asc")]).unwrap(),
            Params {
                min_version: Some(3),
                title: Some("a&b".into()),
                order: Some(Order::Descending),
            }
        );
        assert_eq!(
            query(&[]).unwrap(),
            Params {
                min_version: None,
                title: None,
                order: None
            }
        );
    }

    #[test]
    fn an_unknown_query_parameter_is_named() {
        assert_eq!(
            query_problem(&[("title", "x"), ("minversion", "1")]),
            ("minversion".into(), "unknownParameter".into())
        );
    }

    #[test]
    fn an_unparsable_query_value_names_its_parameter() {
        for value in ["abc", "", "1.5", "99999999999999999999"] {
            assert_eq!(
                query_problem(&[("minVersion", value)]),
                ("minVersion".into(), "invalidType".into()),
                "{value:?}"
            );
        }
        assert_eq!(
            query_problem(&[("order", "sideways")]),
            ("order".into(), "oneOf".into())
        );
    }

    #[test]
    fn a_repeated_query_parameter_is_named() {
        assert_eq!(
            query_problem(&[("title", "a"), ("title", "b")]),
            ("title".into(), "duplicateParameter".into())
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_an_invalid_type() {
        assert_eq!(
            field_and_rule("[1,2]"),
            ("body".into(), "invalidType".into())
        );
        assert_eq!(
            field_and_rule("null"),
            ("body".into(), "invalidType".into())
        );
    }
}
