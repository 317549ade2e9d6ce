//! The error type of every handler: a client mistake carries its problem
//! body; anything else is logged once, with its cause chain, and answered
//! with an opaque 503 (a dependency is down or slow) or 500.

use axum::response::{IntoResponse, Response};

use crate::problem::{Problem, ProblemKind};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A client mistake, answered as is (4xx).
    #[error("{}", .0.detail())]
    Client(Problem),
    /// MongoDB or Redis could not be reached in time.
    #[error("a dependency is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// Anything else.
    #[error("unexpected error")]
    Internal(#[source] anyhow::Error),
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        Self::Client(problem)
    }
}

impl From<domain::ValidationErrors> for ApiError {
    fn from(errors: domain::ValidationErrors) -> Self {
        Self::Client(Problem::from(&errors))
    }
}

impl From<mongodb::error::Error> for ApiError {
    fn from(error: mongodb::error::Error) -> Self {
        if is_unavailable(&error) {
            Self::Unavailable(error.into())
        } else {
            Self::Internal(error.into())
        }
    }
}

/// Whether a MongoDB error means the server could not be reached in time,
/// as opposed to the server refusing the operation.
pub fn is_unavailable(error: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    /// Server codes of a node shutting down, stepping down or failing over,
    /// and of time limits: the same operation succeeds a moment later.
    const TRANSIENT_CODES: [i32; 12] = [
        6,     // HostUnreachable
        7,     // HostNotFound
        50,    // MaxTimeMSExpired
        89,    // NetworkTimeout
        91,    // ShutdownInProgress
        189,   // PrimarySteppedDown
        262,   // ExceededTimeLimit
        10107, // NotWritablePrimary
        11600, // InterruptedAtShutdown
        11602, // InterruptedDueToReplStateChange
        13435, // NotPrimaryNoSecondaryOk
        13436, // NotPrimaryOrSecondary
    ];
    matches!(
        *error.kind,
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
    ) || error.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR)
        || server_code(error).is_some_and(|code| TRANSIENT_CODES.contains(&code))
}

/// The server's error code, for a command or write error.
fn server_code(error: &mongodb::error::Error) -> Option<i32> {
    use mongodb::error::{ErrorKind, WriteFailure};
    match &*error.kind {
        ErrorKind::Command(e) => Some(e.code),
        ErrorKind::Write(WriteFailure::WriteError(e)) => Some(e.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => Some(e.code),
        _ => None,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Client(problem) => problem.into_response(),
            Self::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "dependency unavailable");
                Problem::new(
                    ProblemKind::ServiceUnavailable,
                    "a backing store is unreachable; retry later",
                )
                .into_response()
            }
            Self::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "request failed");
                Problem::new(ProblemKind::Internal, "an unexpected error occurred").into_response()
            }
        }
    }
}
