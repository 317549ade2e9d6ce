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

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
};

use tokio::sync::{Mutex, MutexGuard};

/// A fixed set of locks; a document maps to one of them by hash, so
/// unrelated documents rarely wait for each other.
pub struct DocumentLocks {
    stripes: Box<[Mutex<()>]>,
}

impl DocumentLocks {
    pub fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes.max(1)).map(|_| Mutex::new(())).collect(),
        }
    }

    fn stripe(&self, key: &impl Hash) -> usize {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        (hasher.finish() % self.stripes.len() as u64) as usize
    }

    /// Waits for the lock of the document `key`.
    pub async fn lock(&self, key: &impl Hash) -> MutexGuard<'_, ()> {
        self.stripes[self.stripe(key)].lock().await
    }

    /// Waits for the locks of every document in `keys`, always in the same
    /// order, so that two callers can never wait for each other.
    pub async fn lock_all<K: Hash>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Vec<MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = keys.into_iter().map(|k| self.stripe(&k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            guards.push(self.stripes[stripe].lock().await);
        }
        guards
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
}
