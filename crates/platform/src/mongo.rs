//! MongoDB server errors the services tell apart.

use mongodb::error::{Error, ErrorKind, WriteFailure};

/// The server's code for a write that collides with a unique index.
pub const DUPLICATE_KEY: i32 = 11000;

/// Whether `error` is a write that collided with a unique index (`_id`
/// included), as a single write or as a command error.
pub fn is_duplicate_key(error: &Error) -> bool {
    match error.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}
