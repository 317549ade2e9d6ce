//! MongoDB server errors the services tell apart, and operations bounded
//! in time.

use std::{future::Future, time::Duration};

use mongodb::error::{Error, ErrorKind, WriteFailure};

use crate::error::Failure;

/// The server's code for a write that collides with a unique index.
const DUPLICATE_KEY: i32 = 11000;

/// Whether `error` is a write that collided with a unique index (`_id`
/// included), as a single write or as a command error.
pub fn is_duplicate_key(error: &Error) -> bool {
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// A database operation that took longer than its bound.
#[derive(Debug, thiserror::Error)]
#[error("MongoDB did not answer within {0:?}")]
pub struct TimedOut(pub Duration);

/// Runs `operation`, giving up after `limit`. The driver bounds connecting,
/// not answering, so a server that accepts a request and never answers it
/// would hold the operation forever; dropped, the operation's connection is
/// closed instead of going back to the pool.
pub async fn bounded<T, E>(
    limit: Duration,
    operation: impl Future<Output = Result<T, E>>,
) -> Result<T, Failure>
where
    Failure: From<E>,
{
    match tokio::time::timeout(limit, operation).await {
        Ok(outcome) => Ok(outcome?),
        Err(_) => Err(TimedOut(limit).into()),
    }
}
