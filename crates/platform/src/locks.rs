//! Per-document serialization of this process's writes.
//!
//! FerretDB v1 (the MongoDB-compatible server of development and CI) runs
//! an update as a read of the matching documents followed by a separate
//! write of each whole document, without checking the filter again: two
//! concurrent compare-and-set updates of one document can both "succeed",
//! and an update can undo a concurrent one. MongoDB applies filter and
//! write atomically. Taking a per-document lock around each conditional
//! write makes one process correct on both; across replicas the database's
//! own atomicity is what counts (MongoDB).
//!
//! A lock must be held until the database has answered the write, not only
//! until its caller stops waiting: dropping a write's future (a request's
//! deadline, an apply's timeout) does not stop the server from applying
//! it. `finish_locked` runs the write in a task of its own that keeps the
//! lock to the end.

use std::{
    collections::hash_map::DefaultHasher,
    future::Future,
    hash::{Hash, Hasher},
    sync::Arc,
};

use tokio::sync::{Mutex, OwnedMutexGuard};

/// A held document lock; it is released when dropped.
pub type DocumentGuard = OwnedMutexGuard<()>;

/// A fixed set of locks; a document maps to one of them by hash, so
/// unrelated documents rarely wait for each other.
pub struct DocumentLocks {
    stripes: Box<[Arc<Mutex<()>>]>,
}

impl DocumentLocks {
    pub fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes.max(1)).map(|_| Arc::default()).collect(),
        }
    }

    fn stripe(&self, key: &impl Hash) -> usize {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        (hasher.finish() % self.stripes.len() as u64) as usize
    }

    /// Waits for the lock of the document `key`.
    pub async fn lock(&self, key: &impl Hash) -> DocumentGuard {
        Arc::clone(&self.stripes[self.stripe(key)])
            .lock_owned()
            .await
    }

    /// Waits for the locks of every document in `keys`, always in the same
    /// order, so that two callers can never wait for each other.
    pub async fn lock_all<K: Hash>(&self, keys: impl IntoIterator<Item = K>) -> Vec<DocumentGuard> {
        let mut stripes: Vec<usize> = keys.into_iter().map(|k| self.stripe(&k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            guards.push(Arc::clone(&self.stripes[stripe]).lock_owned().await);
        }
        guards
    }
}

/// Runs `write` to its end in a task of its own and releases `guard` only
/// then, even if the caller stops waiting for the outcome. Otherwise a
/// timed-out write could still be running on FerretDB (whose updates are a
/// read followed by a write of the whole document) while the next writer of
/// the same document reads it, and one of the two writes would be lost.
pub async fn finish_locked<G, T>(guard: G, write: impl Future<Output = T> + Send + 'static) -> T
where
    G: Send + 'static,
    T: Send + 'static,
{
    let task = tokio::spawn(async move {
        let outcome = write.await;
        drop(guard);
        outcome
    });
    match task.await {
        Ok(outcome) => outcome,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => panic!("a locked write was cancelled: {error}"),
    }
}

impl Default for DocumentLocks {
    fn default() -> Self {
        Self::new(1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_document_is_locked_by_one_writer_at_a_time() {
        let locks = DocumentLocks::new(8);
        let _held = locks.lock(&"a").await;
        let second = tokio::time::timeout(Duration::from_millis(50), locks.lock(&"a")).await;
        assert!(second.is_err(), "a second writer got the lock");
    }

    #[tokio::test]
    async fn locking_many_documents_takes_each_stripe_once() {
        let locks = DocumentLocks::new(2);
        let keys = ["a", "b", "c", "d", "a"];
        let mut stripes: Vec<usize> = keys.iter().map(|k| locks.stripe(k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        // More keys than stripes: a stripe taken twice would never return.
        let guards = tokio::time::timeout(Duration::from_secs(5), locks.lock_all(keys))
            .await
            .expect("each stripe is locked once");
        assert_eq!(guards.len(), stripes.len());
        drop(guards);
        let again = tokio::time::timeout(Duration::from_secs(5), locks.lock(&"a")).await;
        assert!(again.is_ok(), "dropping the guards releases the stripes");
    }

    #[tokio::test]
    async fn a_locked_write_keeps_its_lock_after_its_caller_gives_up() {
        let locks = DocumentLocks::new(8);
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let guard = locks.lock(&"a").await;
        let write = finish_locked(guard, async move {
            let _ = finished.await;
        });
        // The caller stops waiting, as a request past its deadline does.
        let gave_up = tokio::time::timeout(Duration::from_millis(20), write).await;
        assert!(gave_up.is_err());
        let meanwhile = tokio::time::timeout(Duration::from_millis(50), locks.lock(&"a")).await;
        assert!(
            meanwhile.is_err(),
            "the lock was released before the write ended"
        );
        finish.send(()).expect("the write still runs");
        let after = tokio::time::timeout(Duration::from_secs(5), locks.lock(&"a")).await;
        assert!(after.is_ok(), "the lock is released once the write ends");
    }
}
