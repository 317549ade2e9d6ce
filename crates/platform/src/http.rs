//! The HTTP pieces both services share: JSON body and query string
//! extractors whose every rejection is a precise problem+json, the layers every route gets
//! (request id, trace context, logging, metrics, body limit, panic guard)
//! and the fallbacks for unknown routes and methods.

use std::time::Duration;

use axum::{
    body::Bytes,
    extract::{
        path::ErrorKind, rejection::PathRejection, DefaultBodyLimit, FromRequest, FromRequestParts,
        Path, Query, Request, State,
    },
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
    limits::BodyTimedOut,
    problem::{shorten, FieldProblem, Problem, ProblemKind},
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
            if let Some(timed_out) = cause::<BodyTimedOut>(&rejection) {
                Problem::new(ProblemKind::RequestTimeout, timed_out.to_string())
            } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(ProblemKind::PayloadTooLarge, rejection.body_text())
            } else {
                Problem::new(ProblemKind::MalformedJson, rejection.body_text())
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The first error of type `E` in `error`'s chain of sources.
fn cause<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    std::iter::successors(Some(error), |e| e.source()).find_map(|e| e.downcast_ref::<E>())
}

/// A path parameter. Unlike `axum::extract::Path`, a value that cannot be
/// read (not UTF-8, wrong type) is answered with a 400 problem+json naming
/// the parameter and what it must be, without echoing the value.
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
            Err(rejection) => Err(path_problem(rejection)),
        }
    }
}

/// axum's path rejection in the API's words: the parameter, the rule and
/// what the value must be; never the value, nor a Rust type.
fn path_problem(rejection: PathRejection) -> Problem {
    let kind = match rejection {
        PathRejection::FailedToDeserializePathParams(failed) => failed.into_kind(),
        other => {
            return Problem::new(
                ProblemKind::InvalidParameter,
                shorten(&other.body_text()).into_owned(),
            )
        }
    };
    match kind {
        ErrorKind::InvalidUtf8InPathParam { key } => {
            Problem::invalid_parameter(&key, "format", "must be UTF-8 once percent-decoded")
        }
        ErrorKind::ParseErrorAtKey {
            key, expected_type, ..
        } => Problem::invalid_parameter(&key, "invalidType", must_be(expected_type)),
        ErrorKind::DeserializeError { key, message, .. } => {
            Problem::invalid_parameter(&key, "invalidType", shorten(&message))
        }
        ErrorKind::ParseError { expected_type, .. }
        | ErrorKind::ParseErrorAtIndex { expected_type, .. } => Problem::new(
            ProblemKind::InvalidParameter,
            format!("a path parameter {}", must_be(expected_type)),
        ),
        other => Problem::new(
            ProblemKind::InvalidParameter,
            shorten(&other.to_string()).into_owned(),
        ),
    }
}

/// The query string, read into a `T` (a struct of optional fields with
/// `#[serde(deny_unknown_fields)]`). Unlike `axum::extract::Query`, every way
/// a query can be wrong is a 400 problem+json naming the parameter and the
/// rule: `unknownParameter`, `duplicateParameter`, `invalidType` (a value
/// that does not parse as the parameter's type), `oneOf` (a value outside an
/// enumeration) or `required`. Details say what the value must be ("must be
/// an integer from 1 to 9", "must be one of: a, b"), never quote it.
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
                Problem::new(
                    ProblemKind::InvalidParameter,
                    shorten(&rejection.body_text()).into_owned(),
                )
            })?
            .0;
        parse_query_pairs(pairs).map(Self)
    }
}

/// Reads decoded query parameters into a `T`; see [`QueryParams`].
fn parse_query_pairs<T: DeserializeOwned>(pairs: Vec<(String, String)>) -> Result<T, Problem> {
    let deserializer = serde::de::value::MapDeserializer::<_, QueryError>::new(
        pairs
            .into_iter()
            .map(|(name, value)| (name, QueryValue(value))),
    );
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let QueryError {
            rule,
            parameter,
            detail,
        } = error.into_inner();
        Problem::invalid_parameter(&parameter.unwrap_or(path), rule, detail)
    })
}

/// Why a query string does not fit its parameters, already in the API's
/// words: serde's messages quote the value and name Rust types.
#[derive(Debug)]
struct QueryError {
    rule: &'static str,
    /// The parameter at fault when serde names it (an unknown, repeated or
    /// missing one); otherwise the path of the value.
    parameter: Option<String>,
    detail: String,
}

impl QueryError {
    fn invalid_type(detail: String) -> Self {
        Self {
            rule: "invalidType",
            parameter: None,
            detail,
        }
    }

    fn about(parameter: &str, rule: &'static str, detail: String) -> Self {
        Self {
            rule,
            parameter: Some(parameter.to_owned()),
            detail,
        }
    }
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for QueryError {}

impl serde::de::Error for QueryError {
    fn custom<M: std::fmt::Display>(message: M) -> Self {
        Self::invalid_type(shorten(&message.to_string()).into_owned())
    }

    fn invalid_type(_: serde::de::Unexpected<'_>, expected: &dyn serde::de::Expected) -> Self {
        Self::invalid_type(must_be(&expected.to_string()))
    }

    fn invalid_value(_: serde::de::Unexpected<'_>, expected: &dyn serde::de::Expected) -> Self {
        Self::invalid_type(must_be(&expected.to_string()))
    }

    fn unknown_variant(_: &str, expected: &'static [&'static str]) -> Self {
        Self {
            rule: "oneOf",
            parameter: None,
            detail: format!("must be one of: {}", expected.join(", ")),
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let detail = if expected.is_empty() {
            "is unknown".to_owned()
        } else {
            format!("is unknown; expected one of: {}", expected.join(", "))
        };
        Self::about(field, "unknownParameter", detail)
    }

    fn missing_field(field: &'static str) -> Self {
        Self::about(field, "required", "is required".to_owned())
    }

    fn duplicate_field(field: &'static str) -> Self {
        Self::about(field, "duplicateParameter", "must be given once".to_owned())
    }
}

/// What a value must be, in the API's words, from the type serde or axum
/// expected (`i64`, `a boolean`, `struct BookBody`...). Integers name their
/// type's range, which is what the parse enforces.
fn must_be(expected: &str) -> String {
    fn range(min: impl std::fmt::Display, max: impl std::fmt::Display) -> String {
        format!("must be an integer from {min} to {max}")
    }
    let phrase = match expected {
        "i8" => return range(i8::MIN, i8::MAX),
        "i16" => return range(i16::MIN, i16::MAX),
        "i32" => return range(i32::MIN, i32::MAX),
        "i64" => return range(i64::MIN, i64::MAX),
        "u8" => return range(u8::MIN, u8::MAX),
        "u16" => return range(u16::MIN, u16::MAX),
        "u32" => return range(u32::MIN, u32::MAX),
        "u64" => return range(u64::MIN, u64::MAX),
        "an integer" | "i128" | "u128" | "isize" | "usize" => "must be an integer",
        "f32" | "f64" | "a number" => "must be a number",
        "bool" | "a boolean" => "must be true or false",
        "a string" | "a borrowed string" | "alloc::string::String" | "&str" => "must be a string",
        "a character" | "char" => "must be a single character",
        "a sequence" => "must be an array",
        "a map" => "must be an object",
        other if other.starts_with("struct ") => "must be an object",
        _ => "is not of the expected type",
    };
    phrase.to_owned()
}

/// The names a serde message lists after its last ", expected ": each
/// between backticks (`` `a`, `b` or `c` ``).
fn expected_names(message: &str) -> Vec<&str> {
    let Some(start) = message.rfind(", expected ") else {
        return Vec::new();
    };
    message[start..].split('`').skip(1).step_by(2).collect()
}

/// serde_json's message for a value that does not fit its field, in the
/// API's words: what the value must be, never the value nor a Rust type.
fn must_be_from_message(message: &str) -> String {
    let expected = |rest: &str| {
        rest.rfind(", expected ")
            .map(|at| must_be(&rest[at + ", expected ".len()..]))
    };
    let reworded = if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .or_else(|| message.strip_prefix("invalid length "))
    {
        expected(rest)
    } else if message.starts_with("unknown variant ") {
        let names = expected_names(message);
        (!names.is_empty()).then(|| format!("must be one of: {}", names.join(", ")))
    } else {
        None
    };
    reworded.unwrap_or_else(|| shorten(message).into_owned())
}

/// One query parameter's value: text that becomes whatever type its field
/// asks for (an integer, a boolean, an enumeration's variant...).
struct QueryValue(String);

impl QueryValue {
    fn parse<N: std::str::FromStr>(self) -> Result<N, QueryError> {
        self.0
            .parse()
            .map_err(|_| QueryError::invalid_type(must_be(std::any::type_name::<N>())))
    }
}

impl<'de> serde::de::IntoDeserializer<'de, QueryError> for QueryValue {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

macro_rules! parse_number {
    ($($method:ident => $visit:ident),* $(,)?) => {
        $(
            fn $method<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
                let value = self.parse()?;
                visitor.$visit(value)
            }
        )*
    };
}

impl<'de> serde::Deserializer<'de> for QueryValue {
    type Error = QueryError;

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

/// The field at fault in a body that does not fit `T`, and why, in the
/// API's words (serde's own quote the value and name Rust types).
fn field_problem(path: &str, error: &serde_json::Error) -> FieldProblem {
    let message = without_position(error);
    let at = |name: &str| {
        if path == "." || path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    let (field, rule, detail) =
        if let Some(name) = message.strip_prefix("missing field ").and_then(quoted_name) {
            // A missing field is reported at its parent's path.
            (at(name), "required", "is required".to_owned())
        } else if message.starts_with("unknown field ") {
            let names = expected_names(&message);
            let detail = if names.is_empty() {
                "is unknown".to_owned()
            } else {
                format!("is unknown; expected one of: {}", names.join(", "))
            };
            (path.to_owned(), "unknownField", detail)
        } else if path == "." || path.is_empty() {
            (
                "body".to_owned(),
                "invalidType",
                must_be_from_message(&message),
            )
        } else {
            (
                path.to_owned(),
                "invalidType",
                must_be_from_message(&message),
            )
        };
    FieldProblem {
        field: shorten(&field).into_owned(),
        rule: rule.to_owned(),
        detail,
    }
}

/// Answers every unknown route with a 404 problem.
pub async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::new(
        ProblemKind::NotFound,
        format!("no route for {}", shorten(uri.path())),
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

    /// Every detail of `problem`, which must speak the API's language.
    fn details(problem: &Problem) -> Vec<String> {
        let mut details = vec![problem.detail().to_owned()];
        details.extend(problem.errors().iter().map(|e| e.detail.clone()));
        for detail in &details {
            for rust in ["i64", "u8", "String", "struct ", "invalid type", "`"] {
                assert!(!detail.contains(rust), "{rust:?} in {detail:?}");
            }
        }
        details
    }

    fn query_detail(pairs: &[(&str, &str)]) -> String {
        let problem = query(pairs).unwrap_err();
        details(&problem);
        problem.errors()[0].detail.clone()
    }

    #[test]
    fn an_unparsable_query_value_says_what_it_must_be() {
        for value in ["abc", "", "1.5", "99999999999999999999"] {
            assert_eq!(
                query_detail(&[("minVersion", value)]),
                "must be an integer from -9223372036854775808 to 9223372036854775807",
                "{value:?}"
            );
        }
        assert_eq!(
            query_detail(&[("order", "sideways")]),
            "must be one of: asc, -asc"
        );
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Flags {
        draft: Option<bool>,
        stars: Option<u8>,
        ratio: Option<f64>,
    }

    fn flags_detail(pairs: &[(&str, &str)]) -> (String, String, String) {
        let problem = parse_query_pairs::<Flags>(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
        .unwrap_err();
        details(&problem);
        let error = &problem.errors()[0];
        (
            error.field.clone(),
            error.rule.clone(),
            error.detail.clone(),
        )
    }

    #[test]
    fn query_details_are_phrased_by_the_parameter_type() {
        assert_eq!(
            flags_detail(&[("draft", "yes")]),
            (
                "draft".into(),
                "invalidType".into(),
                "must be true or false".into()
            )
        );
        assert_eq!(
            flags_detail(&[("stars", "256")]).2,
            "must be an integer from 0 to 255"
        );
        assert_eq!(flags_detail(&[("ratio", "half")]).2, "must be a number");
    }

    #[test]
    fn unknown_and_repeated_query_parameters_are_told_in_words() {
        assert_eq!(
            flags_detail(&[("colour", "red")]),
            (
                "colour".into(),
                "unknownParameter".into(),
                "is unknown; expected one of: draft, stars, ratio".into()
            )
        );
        assert_eq!(
            flags_detail(&[("draft", "true"), ("draft", "false")]),
            (
                "draft".into(),
                "duplicateParameter".into(),
                "must be given once".into()
            )
        );
    }

    #[test]
    fn a_huge_unknown_query_parameter_is_not_echoed_whole() {
        let name = "x".repeat(20 * 1024);
        let problem = query(&[(name.as_str(), "1")]).unwrap_err();
        assert_eq!(problem.errors()[0].rule, "unknownParameter");
        assert!(
            problem.detail().chars().count() < 300,
            "{}",
            problem.detail()
        );
        assert!(problem.errors()[0].field.chars().count() <= 101);
    }

    fn body_detail(raw: &str) -> (String, String) {
        let problem = problem(raw);
        details(&problem);
        (
            problem.errors()[0].field.clone(),
            problem.errors()[0].detail.clone(),
        )
    }

    #[test]
    fn a_body_field_of_the_wrong_type_says_what_it_must_be() {
        assert_eq!(
            body_detail(r#"{"title":"x","publishedYear":"1965"}"#),
            (
                "publishedYear".into(),
                "must be an integer from -9223372036854775808 to 9223372036854775807".into()
            )
        );
        assert_eq!(
            body_detail(r#"{"title":{"$gt":""},"publishedYear":1}"#),
            ("title".into(), "must be a string".into())
        );
        assert_eq!(
            body_detail(r#"{"title":null,"publishedYear":1}"#),
            ("title".into(), "must be a string".into())
        );
        assert_eq!(
            body_detail(r#"{"title":"x","publishedYear":1.5}"#).1,
            "must be an integer from -9223372036854775808 to 9223372036854775807"
        );
    }

    #[test]
    fn missing_and_unknown_body_fields_are_told_in_words() {
        assert_eq!(
            body_detail(r#"{"title":"x"}"#),
            ("publishedYear".into(), "is required".into())
        );
        assert_eq!(
            body_detail(r#"{"title":"x","publishedYear":1,"isbn":"1"}"#),
            (
                "isbn".into(),
                "is unknown; expected one of: title, publishedYear".into()
            )
        );
    }

    #[test]
    fn a_huge_value_or_field_name_in_a_body_is_not_echoed_whole() {
        let huge = "x".repeat(20 * 1024);
        let (field, detail) = body_detail(&format!(r#"{{"title":"x","publishedYear":"{huge}"}}"#));
        assert_eq!(field, "publishedYear");
        assert!(detail.len() < 200, "{detail}");
        let (field, detail) =
            body_detail(&format!(r#"{{"title":"x","publishedYear":1,"{huge}":1}}"#));
        assert!(field.chars().count() <= 101, "{field}");
        assert!(detail.len() < 200, "{detail}");
    }

    #[test]
    fn serde_expectations_read_as_the_api_types() {
        assert_eq!(must_be("an integer"), "must be an integer");
        assert_eq!(
            must_be("i32"),
            "must be an integer from -2147483648 to 2147483647"
        );
        assert_eq!(must_be("a boolean"), "must be true or false");
        assert_eq!(must_be("struct BookBody"), "must be an object");
        assert_eq!(must_be("a sequence"), "must be an array");
        assert_eq!(
            must_be_from_message("unknown variant `x, expected `y``, expected `asc` or `-asc`"),
            "must be one of: asc, -asc"
        );
        assert_eq!(
            must_be_from_message(r#"invalid type: string "a, expected i64", expected a string"#),
            "must be a string"
        );
    }
}
