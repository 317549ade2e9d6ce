//! RFC 9457 problem details: the one body every error of both services has,
//! served as `application/problem+json`. Each kind of error has a stable
//! `type` URI that clients may match on.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

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
    /// A dependency (MongoDB, Redis) cannot be reached in time (503).
    ServiceUnavailable,
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
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
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
            Self::ServiceUnavailable => "urn:books:problem:service-unavailable",
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
            Self::ServiceUnavailable => "The service is temporarily unavailable",
            Self::Internal => "Internal server error",
        }
    }
}

/// One field that broke one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProblem {
    pub field: String,
    pub rule: String,
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

/// A problem details body.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    type_uri: &'static str,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldProblem>,
    #[serde(skip)]
    kind: ProblemKind,
}

impl Problem {
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            type_uri: kind.type_uri(),
            title: kind.title(),
            status: kind.status().as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            kind,
        }
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
    pub fn push_error(&mut self, error: FieldProblem) {
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
        (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
            body,
        )
            .into_response()
    }
}
