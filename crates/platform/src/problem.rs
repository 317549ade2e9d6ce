//! RFC 9457 problem details: the one body every error of both services has,
//! served as `application/problem+json`. Each kind of error has a stable
//! `type` URI that clients may match on.

use std::{borrow::Cow, num::NonZeroU64};

use axum::{
    http::{header, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// How many characters of a client's input a problem echoes: enough to
/// recognize it, never a 20 KB path segment sent back whole.
pub const ECHO_CHARS: usize = 100;

/// `text` cut after `ECHO_CHARS` characters (on a character boundary), with
/// an ellipsis when cut: for names a client chose (a parameter, a field, a
/// path) that a problem repeats as they are.
pub fn shorten(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(ECHO_CHARS) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}\u{2026}", &text[..end])),
    }
}

/// A client's value as a double-quoted string for a problem's `detail`:
/// quotes, backslashes and control characters escaped as in JSON, cut (with
/// an ellipsis inside the quotes) once the escaped text would pass
/// `ECHO_CHARS` characters.
pub fn quoted(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len().min(4 * ECHO_CHARS) + 2);
    quoted.push('"');
    let mut room = ECHO_CHARS;
    for c in value.chars() {
        let mut utf8 = [0; 4];
        let escaped = match c {
            '"' => Cow::Borrowed("\\\""),
            '\\' => Cow::Borrowed("\\\\"),
            '\n' => Cow::Borrowed("\\n"),
            '\r' => Cow::Borrowed("\\r"),
            '\t' => Cow::Borrowed("\\t"),
            c if c.is_control() => Cow::Owned(format!("\\u{:04x}", u32::from(c))),
            c => Cow::Borrowed(&*c.encode_utf8(&mut utf8)),
        };
        let width = escaped.chars().count();
        if width > room {
            quoted.push('\u{2026}');
            break;
        }
        room -= width;
        quoted.push_str(&escaped);
    }
    quoted.push('"');
    quoted
}

/// The kinds of problem the services report. The `type` member of a problem
/// is `urn:books:problem:<slug>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// The body parsed, but a field breaks a rule (422).
    Validation,
    /// The body is not JSON, or is truncated (400).
    MalformedJson,
    /// The body is not declared as JSON (415).
    UnsupportedMediaType,
    /// The body is over the size limit (413).
    PayloadTooLarge,
    /// A path or query parameter is not valid (400).
    InvalidParameter,
    /// No such resource (404).
    NotFound,
    /// The route exists but not for this method (405).
    MethodNotAllowed,
    /// No valid `Authorization: Bearer` token (401).
    Unauthorized,
    /// `If-Match` names another version than the current one (412).
    PreconditionFailed,
    /// The write kept losing races with other writers (409).
    Conflict,
    /// The read model has not reached the version the client asked for
    /// within the wait limit (503).
    NotCaughtUp,
    /// A dependency (MongoDB, Redis) cannot be reached in time (503).
    ServiceUnavailable,
    /// The service is handling as many requests as it may; retry (503).
    Overloaded,
    /// The request body did not arrive within its time (408).
    RequestTimeout,
    /// Anything unexpected; details are in the server log only (500).
    Internal,
}

impl ProblemKind {
    pub fn status(self) -> StatusCode {
        match self {
            Self::Validation => StatusCode::UNPROCESSABLE_ENTITY,
            Self::MalformedJson | Self::InvalidParameter => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::NotCaughtUp | Self::ServiceUnavailable | Self::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn type_uri(self) -> &'static str {
        match self {
            Self::Validation => "urn:books:problem:validation",
            Self::MalformedJson => "urn:books:problem:malformed-json",
            Self::UnsupportedMediaType => "urn:books:problem:unsupported-media-type",
            Self::PayloadTooLarge => "urn:books:problem:payload-too-large",
            Self::InvalidParameter => "urn:books:problem:invalid-parameter",
            Self::NotFound => "urn:books:problem:not-found",
            Self::MethodNotAllowed => "urn:books:problem:method-not-allowed",
            Self::Unauthorized => "urn:books:problem:unauthorized",
            Self::PreconditionFailed => "urn:books:problem:precondition-failed",
            Self::Conflict => "urn:books:problem:conflict",
            Self::NotCaughtUp => "urn:books:problem:not-caught-up",
            Self::ServiceUnavailable => "urn:books:problem:service-unavailable",
            Self::Overloaded => "urn:books:problem:overloaded",
            Self::RequestTimeout => "urn:books:problem:request-timeout",
            Self::Internal => "urn:books:problem:internal",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::Validation => "The request has invalid fields",
            Self::MalformedJson => "The request body is not valid JSON",
            Self::UnsupportedMediaType => "The request body must be JSON",
            Self::PayloadTooLarge => "The request body is too large",
            Self::InvalidParameter => "A request parameter is invalid",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Unauthorized => "Authentication required",
            Self::PreconditionFailed => "The book is not at the expected version",
            Self::Conflict => "Too many concurrent writes to this book",
            Self::NotCaughtUp => "The requested version is not visible yet",
            Self::ServiceUnavailable => "The service is temporarily unavailable",
            Self::Overloaded => "The service is at capacity",
            Self::RequestTimeout => "The request body did not arrive in time",
            Self::Internal => "Internal server error",
        }
    }
}

/// One field that broke one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldProblem {
    /// The body field (dotted path), query parameter or header at fault.
    #[schema(example = "publishedYear")]
    pub field: String,
    /// The rule it broke: `required`, `invisible` (only format, control or
    /// white-space characters), `tooLong`, `controlCharacter`, `outOfRange`,
    /// `format`, `unknownField`, `invalidType`...
    #[schema(example = "outOfRange")]
    pub rule: String,
    #[schema(example = "must be an integer from -3000 to 2100, got 3000")]
    pub detail: String,
}

impl From<&domain::FieldError> for FieldProblem {
    fn from(error: &domain::FieldError) -> Self {
        Self {
            field: error.field.to_owned(),
            rule: error.rule.as_str().to_owned(),
            detail: error.message.clone(),
        }
    }
}

/// A problem details body (RFC 9457).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// Stable identifier of the kind of problem, `urn:books:problem:<kind>`.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "urn:books:problem:validation")]
    type_uri: &'static str,
    #[schema(value_type = String)]
    title: &'static str,
    /// The HTTP status code.
    status: u16,
    /// What went wrong in this request, in words.
    detail: String,
    /// Each field that broke a rule (validation and parameter problems).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    errors: Vec<FieldProblem>,
    /// The book's current version (precondition and read-your-writes
    /// problems).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, value_type = Option<u64>, minimum = 1)]
    current_version: Option<NonZeroU64>,
    /// The version the client asked to read (read-your-writes problems).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, value_type = Option<u64>, minimum = 1)]
    required_version: Option<NonZeroU64>,
    #[serde(skip)]
    kind: ProblemKind,
    /// A boxed slice: most problems have none, and errors stay small.
    #[serde(skip)]
    headers: Option<Box<[(HeaderName, HeaderValue)]>>,
}

impl Problem {
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            type_uri: kind.type_uri(),
            title: kind.title(),
            status: kind.status().as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            current_version: None,
            required_version: None,
            kind,
            headers: None,
        }
    }

    /// Names the book's current version (omitted when it has none).
    pub fn with_current_version(mut self, version: Option<u64>) -> Self {
        self.current_version = version.and_then(NonZeroU64::new);
        self
    }

    /// Names the version the client asked for.
    pub fn with_required_version(mut self, version: u64) -> Self {
        self.required_version = NonZeroU64::new(version);
        self
    }

    /// Sends `name: value` with the problem (`WWW-Authenticate`, `ETag`,
    /// `Retry-After`...).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        let mut headers = self.headers.take().map(Vec::from).unwrap_or_default();
        headers.push((name, value));
        self.headers = Some(headers.into_boxed_slice());
        self
    }

    /// A 422 naming every field that broke a rule.
    pub fn validation(errors: Vec<FieldProblem>) -> Self {
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        let detail = format!("invalid field(s): {}", fields.join(", "));
        Self {
            errors,
            ..Self::new(ProblemKind::Validation, detail)
        }
    }

    /// Adds a field that broke a rule.
    fn push_error(&mut self, error: FieldProblem) {
        self.errors.push(error);
    }

    pub fn kind(&self) -> ProblemKind {
        self.kind
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }

    pub fn errors(&self) -> &[FieldProblem] {
        &self.errors
    }

    /// A 400 for a path or query parameter or header that broke a rule.
    /// The name is the client's when it is unknown: it is shortened.
    pub fn invalid_parameter(field: &str, rule: &str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let field = shorten(field);
        let mut problem = Self::new(ProblemKind::InvalidParameter, format!("{field}: {detail}"));
        problem.push_error(FieldProblem {
            field: field.into_owned(),
            rule: rule.to_owned(),
            detail,
        });
        problem
    }
}

/// Reads a book id from a path segment: 24 hexadecimal digits, else a 400
/// naming `id`.
pub fn parse_book_id(raw: &str) -> Result<domain::BookId, Problem> {
    domain::BookId::parse(raw).map_err(|error| {
        let mut problem = Problem::new(
            ProblemKind::InvalidParameter,
            format!("{} is not a book id: {}", quoted(raw), error.message),
        );
        problem.push_error(FieldProblem::from(&error));
        problem
    })
}

impl From<&domain::ValidationErrors> for Problem {
    fn from(errors: &domain::ValidationErrors) -> Self {
        Self::validation(errors.0.iter().map(FieldProblem::from).collect())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        let body = serde_json::to_vec(&self).expect("a problem always serializes");
        let mut response = (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
            body,
        )
            .into_response();
        if let Some(headers) = self.headers {
            response.headers_mut().extend(headers);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_echoed_whole() {
        assert_eq!(shorten("minVersion"), "minVersion");
        assert_eq!(quoted("Dune"), "\"Dune\"");
        let exact = "\u{e9}".repeat(ECHO_CHARS);
        assert_eq!(shorten(&exact), exact.as_str());
        assert_eq!(quoted(&exact), format!("\"{exact}\""));
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary_with_an_ellipsis() {
        // Two-byte characters: a cut by bytes would split one.
        let long = "\u{e9}".repeat(20 * 1024);
        let short = shorten(&long);
        assert_eq!(short.chars().count(), ECHO_CHARS + 1);
        assert!(short.ends_with("\u{e9}\u{2026}"), "{short}");
        let quoted = quoted(&long);
        assert_eq!(quoted.chars().count(), ECHO_CHARS + 3);
        assert!(quoted.ends_with("\u{e9}\u{2026}\""), "{quoted}");
    }

    #[test]
    fn quoting_escapes_and_counts_the_escapes() {
        assert_eq!(quoted("a\"b\\c\nd\u{0}"), r#""a\"b\\c\nd\u0000""#);
        // Each NUL takes six characters once escaped: the cut comes sooner.
        let nuls = quoted(&"\u{0}".repeat(1000));
        assert!(nuls.chars().count() <= ECHO_CHARS + 3, "{nuls}");
        assert!(nuls.ends_with("\\u0000\u{2026}\""), "{nuls}");
    }

    #[test]
    fn a_huge_book_id_is_not_echoed_whole() {
        let problem = parse_book_id(&"a".repeat(20 * 1024)).unwrap_err();
        assert_eq!(problem.kind(), ProblemKind::InvalidParameter);
        assert!(
            problem.detail().chars().count() < 200,
            "{}",
            problem.detail()
        );
        assert!(
            problem
                .detail()
                .ends_with("\u{2026}\" is not a book id: must be 24 hexadecimal digits"),
            "{}",
            problem.detail()
        );
        assert_eq!(problem.errors()[0].field, "id");
    }

    #[test]
    fn an_unknown_parameter_name_is_shortened() {
        let name = "x".repeat(20 * 1024);
        let problem = Problem::invalid_parameter(&name, "unknownParameter", "is not a parameter");
        assert!(
            problem.detail().chars().count() < 200,
            "{}",
            problem.detail()
        );
        assert_eq!(problem.errors()[0].field.chars().count(), ECHO_CHARS + 1);
    }
}
