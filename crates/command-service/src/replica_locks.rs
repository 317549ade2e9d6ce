//! Book locks shared by every command-service replica, for backends whose
//! conditional updates are not atomic.
//!
//! FerretDB v1 applies an update by reading the document and writing it
//! back whole, without checking the filter again (see `platform::locks`):
//! when two replicas write one book at once (a change on one, the relay's
//! outbox clear on the other), one write can be lost, an acknowledged one
//! included. This process's own locks cannot see the other replicas, so on
//! such a backend each write also holds a lock document in `bookLocks`,
//! keyed by the book's id: an insert, which the `_id` index makes atomic on
//! every backend. It is deleted once the write has been answered, and
//! expires after `ttl` should its replica die holding it. MongoDB applies
//! filter and write atomically and needs none of this.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use mongodb::{
    error::{ErrorKind, InsertManyError},
    Collection, Database,
};
use platform::mongo::{is_duplicate_key, is_ferretdb, DUPLICATE_KEY};
use tokio::sync::oneshot;

const COLLECTION: &str = "bookLocks";
/// The first pause after finding a book locked; it doubles up to `MAX_PAUSE`.
const FIRST_PAUSE: Duration = Duration::from_millis(2);
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Whether writes take replica locks (`CROSS_REPLICA_LOCKS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only on a backend that reports itself as FerretDB.
    Auto,
    On,
    Off,
}

/// A `CROSS_REPLICA_LOCKS` value that is none of the modes.
#[derive(Debug, thiserror::Error)]
#[error("expected auto, on or off")]
pub struct InvalidMode;

impl std::str::FromStr for Mode {
    type Err = InvalidMode;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            _ => Err(InvalidMode),
        }
    }
}

impl Mode {
    /// Whether the database behind `db` needs replica locks under this mode:
    /// for `Auto`, whether `buildInfo` names a FerretDB version.
    pub async fn applies_to(self, db: &Database) -> mongodb::error::Result<bool> {
        Ok(match self {
            Self::On => true,
            Self::Off => false,
            Self::Auto => is_ferretdb(db).await?,
        })
    }
}

/// The `bookLocks` collection, as seen by one process.
pub struct ReplicaLocks {
    locks: Collection<Document>,
    /// Names this process's locks, so it never deletes another's.
    owner: String,
    ttl: Duration,
}

impl ReplicaLocks {
    pub fn new(db: &Database, ttl: Duration) -> Self {
        Self {
            locks: db.collection(COLLECTION),
            owner: ObjectId::new().to_hex(),
            ttl,
        }
    }

    /// Waits for the replica lock of book `id`. The caller holds this
    /// process's lock on the book, so the process never asks twice at once.
    /// If the caller stops waiting (a request's deadline), a lock taken
    /// meanwhile is given back rather than left to expire.
    pub async fn lock(self: &Arc<Self>, id: ObjectId) -> mongodb::error::Result<ReplicaLock> {
        let (taken, wait) = oneshot::channel();
        let locks = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = locks.acquire(id).await;
            if let Err(Ok(())) = taken.send(outcome) {
                locks.release(&[id]).await;
            }
        });
        match wait.await {
            Ok(Ok(())) => Ok(self.held(vec![id])),
            Ok(Err(error)) => Err(error),
            Err(_) => panic!("a replica lock attempt ended without an outcome"),
        }
    }

    /// Takes, in one round trip and without waiting, the locks of those of
    /// `ids` that no other replica holds (the relay clears the others
    /// later). A book named twice (published twice in one batch) is locked
    /// once.
    pub async fn try_lock_all(
        self: &Arc<Self>,
        ids: &[ObjectId],
    ) -> mongodb::error::Result<ReplicaLock> {
        let ids: Vec<ObjectId> = ids
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let expires = self.expiry();
        let documents = ids
            .iter()
            .map(|id| doc! { "_id": id, "owner": &self.owner, "expiresAt": expires });
        let busy: Vec<ObjectId> = match self.locks.insert_many(documents).ordered(false).await {
            Ok(_) => Vec::new(),
            Err(error) => match error.kind.as_ref() {
                ErrorKind::InsertMany(InsertManyError {
                    write_errors: Some(errors),
                    write_concern_error: None,
                    ..
                }) if errors.iter().all(|e| e.code == DUPLICATE_KEY) => errors
                    .iter()
                    .filter_map(|e| ids.get(e.index).copied())
                    .collect(),
                _ => return Err(error),
            },
        };
        if !busy.is_empty() {
            self.remove_expired(doc! { "$in": &busy }.into()).await?;
        }
        let taken = ids
            .iter()
            .filter(|id| !busy.contains(id))
            .copied()
            .collect();
        Ok(self.held(taken))
    }

    fn held(self: &Arc<Self>, ids: Vec<ObjectId>) -> ReplicaLock {
        ReplicaLock {
            locks: Some(Arc::clone(self)),
            ids,
        }
    }

    fn expiry(&self) -> DateTime {
        let ttl = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        DateTime::from_millis(DateTime::now().timestamp_millis().saturating_add(ttl))
    }

    async fn acquire(&self, id: ObjectId) -> mongodb::error::Result<()> {
        let mut pause = FIRST_PAUSE;
        loop {
            let lock = doc! { "_id": id, "owner": &self.owner, "expiresAt": self.expiry() };
            match self.locks.insert_one(lock).await {
                Ok(_) => return Ok(()),
                Err(error) if is_duplicate_key(&error) => {
                    self.remove_expired(id.into()).await?;
                }
                Err(error) => return Err(error),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// Removes the locks matching `ids` that expired: their replica died
    /// holding them.
    async fn remove_expired(&self, ids: Bson) -> mongodb::error::Result<()> {
        self.locks
            .delete_many(doc! { "_id": ids, "expiresAt": { "$lt": DateTime::now() } })
            .await?;
        Ok(())
    }

    async fn release(&self, ids: &[ObjectId]) {
        let released = self
            .locks
            .delete_many(doc! { "_id": { "$in": ids }, "owner": &self.owner })
            .await;
        if let Err(error) = released {
            tracing::warn!(%error, "cannot release replica locks; they expire by themselves");
        }
    }
}

/// Held replica locks. `release` gives them back once the write is
/// answered; dropped unreleased (a request that ends without writing), they
/// are given back in the background.
pub struct ReplicaLock {
    locks: Option<Arc<ReplicaLocks>>,
    ids: Vec<ObjectId>,
}

impl ReplicaLock {
    /// Whether book `id` is among the locked ones.
    pub fn holds(&self, id: ObjectId) -> bool {
        self.ids.contains(&id)
    }

    pub async fn release(mut self) {
        if let Some(locks) = self.locks.take() {
            if !self.ids.is_empty() {
                locks.release(&self.ids).await;
            }
        }
    }
}

impl Drop for ReplicaLock {
    fn drop(&mut self) {
        if let Some(locks) = self.locks.take() {
            let ids = std::mem::take(&mut self.ids);
            if !ids.is_empty() {
                tokio::spawn(async move { locks.release(&ids).await });
            }
        }
    }
}
