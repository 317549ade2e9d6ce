//! The error type of every handler (`ApiError`): a client mistake carries
//! its problem body; anything else is logged once, with its cause chain, and
//! answered with an opaque 503 (a dependency is down or slow) or 500. And
//! the error of work on MongoDB and Redis (`Failure`), sorted once, where it
//! arises, into what a retry fixes and what it does not.

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
        Failure::from(error).into()
    }
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Transient(cause) => Self::Unavailable(cause),
            Failure::Permanent(cause) => Self::Internal(cause),
        }
    }
}

/// A failure of work on MongoDB or Redis.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Passes by itself: a server unreachable, restarting, failing over or
    /// slow, or concurrent writers of one document. Retrying helps.
    #[error("{0:#}")]
    Transient(anyhow::Error),
    /// The same work would fail the same way.
    #[error("{0:#}")]
    Permanent(anyhow::Error),
}

impl Failure {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

impl From<mongodb::error::Error> for Failure {
    fn from(error: mongodb::error::Error) -> Self {
        if is_unavailable(&error) {
            Self::Transient(error.into())
        } else {
            Self::Permanent(error.into())
        }
    }
}

impl From<redis::RedisError> for Failure {
    fn from(error: redis::RedisError) -> Self {
        let transient = error.is_io_error()
            || error.is_connection_dropped()
            || error.is_timeout()
            || matches!(
                error.code(),
                Some("LOADING" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" | "BUSY")
            );
        if transient {
            Self::Transient(error.into())
        } else {
            Self::Permanent(error.into())
        }
    }
}

impl From<crate::mongo::TimedOut> for Failure {
    fn from(error: crate::mongo::TimedOut) -> Self {
        Self::Transient(error.into())
    }
}

impl From<crate::document::CorruptBook> for Failure {
    fn from(error: crate::document::CorruptBook) -> Self {
        Self::Permanent(error.into())
    }
}

impl From<bson::de::Error> for Failure {
    fn from(error: bson::de::Error) -> Self {
        Self::Permanent(error.into())
    }
}

impl From<bson::ser::Error> for Failure {
    fn from(error: bson::ser::Error) -> Self {
        Self::Permanent(error.into())
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
