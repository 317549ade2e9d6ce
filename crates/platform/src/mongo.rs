//! MongoDB server errors the services tell apart, and how guarded writes
//! are filtered on the server at hand.

use std::sync::Arc;

use bson::{doc, Bson, Document};
use mongodb::{
    error::{Error, ErrorKind, WriteFailure},
    Database,
};
use tokio::sync::OnceCell;

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

/// How the filter of a guarded write (a write that must happen only if a
/// condition on the document still holds, such as a compare-and-set of its
/// version) is sent, for the server behind a database.
///
/// Every guarded write here is made by a caller holding the document's
/// lock in this process (`crate::locks`), having read the document by
/// `_id` and checked the condition itself. What the filter adds depends on
/// the server:
/// - MongoDB applies filter and write atomically, so the condition goes in
///   the filter: a write another replica made since the read makes this
///   one match nothing.
/// - FerretDB v1 looks a document up by key only for a filter of `_id`
///   alone, and scans the whole collection, decoding every document, for
///   any other; nor does it check the filter again when it writes, so the
///   condition adds no safety there. The filter is `_id` alone, and the
///   lock (with the replicas' locks, where several replicas write) is what
///   keeps the write safe.
#[derive(Clone)]
pub struct GuardedWrites {
    database: Database,
    in_filter: Arc<OnceCell<bool>>,
}

impl GuardedWrites {
    /// Decides on first use, from `buildInfo`: the condition goes in the
    /// filter unless the server names a FerretDB version.
    pub fn detect(database: &Database) -> Self {
        Self {
            database: database.clone(),
            in_filter: Arc::new(OnceCell::new()),
        }
    }

    /// Always with the condition in the filter (`true`) or never.
    pub fn fixed(database: &Database, in_filter: bool) -> Self {
        Self {
            database: database.clone(),
            in_filter: Arc::new(OnceCell::new_with(Some(in_filter))),
        }
    }

    /// The filter of a write to document `id` that the caller, holding its
    /// lock, found `condition` true of.
    pub async fn filter(
        &self,
        id: impl Into<Bson>,
        condition: Document,
    ) -> Result<Document, Error> {
        let mut filter = doc! { "_id": id.into() };
        if self.in_filter().await? {
            filter.extend(condition);
        }
        Ok(filter)
    }

    /// Whether conditions go in the filter.
    pub async fn in_filter(&self) -> Result<bool, Error> {
        self.in_filter
            .get_or_try_init(|| async { Ok(!is_ferretdb(&self.database).await?) })
            .await
            .copied()
    }
}

/// Whether the server behind `database` is FerretDB: its `buildInfo` names
/// a FerretDB version.
pub async fn is_ferretdb(database: &Database) -> Result<bool, Error> {
    let info = database.run_command(doc! { "buildInfo": 1 }).await?;
    Ok(info.contains_key("ferretdbVersion"))
}
