//! Which collections hold the read model. A rebuild fills a new generation
//! (`books_<g>`, `authors_<g>`) beside the served one, then points
//! `readModel {_id: "active"}` at it; every replica follows that pointer.
//! The first generation (no pointer) is `books` and `authors`.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use bson::{doc, Document};
use futures::TryStreamExt;
use mongodb::{Collection, Database};
use serde::Deserialize;
use tokio::sync::watch;

/// The collection of the pointer to the active generation.
pub const POINTER_COLLECTION: &str = "readModel";
const POINTER_ID: &str = "active";
/// Each replica records the generation it uses in `{_id: "replica:<name>"}`.
const REPLICA_PREFIX: &str = "replica:";

/// The collections of one generation.
#[derive(Debug, Clone)]
pub struct Collections {
    /// Empty for the first generation.
    pub generation: String,
    pub books: Collection<Document>,
    pub authors: Collection<Document>,
}

impl Collections {
    pub fn of(db: &Database, generation: &str) -> Self {
        let name = |base: &str| {
            if generation.is_empty() {
                base.to_owned()
            } else {
                format!("{base}_{generation}")
            }
        };
        Self {
            generation: generation.to_owned(),
            books: db.collection(&name("books")),
            authors: db.collection(&name("authors")),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Pointer {
    generation: String,
}

/// The generation in use, shared by every handle of one process.
#[derive(Clone)]
pub struct ActiveGeneration {
    db: Database,
    current: Arc<RwLock<Arc<Collections>>>,
    /// True once the pointer has been read at least once.
    loaded: watch::Sender<bool>,
}

impl ActiveGeneration {
    /// Starts at the first generation until `refresh` reads the pointer.
    pub fn new(db: &Database) -> Self {
        Self {
            db: db.clone(),
            current: Arc::new(RwLock::new(Arc::new(Collections::of(db, "")))),
            loaded: watch::Sender::new(false),
        }
    }

    /// Generation `generation` for good: what a rebuild writes to.
    pub fn fixed(db: &Database, generation: &str) -> Self {
        Self {
            db: db.clone(),
            current: Arc::new(RwLock::new(Arc::new(Collections::of(db, generation)))),
            loaded: watch::Sender::new(true),
        }
    }

    /// The database the generations live in.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The collections to use now.
    pub fn collections(&self) -> Arc<Collections> {
        Arc::clone(
            &self
                .current
                .read()
                .expect("the generation lock is never poisoned"),
        )
    }

    /// Reads the pointer and switches to the generation it names, then
    /// records that `replica` uses it; returns the generation switched to,
    /// if it changed.
    pub async fn refresh(&self, replica: &str) -> mongodb::error::Result<Option<String>> {
        let named = read_pointer(&self.db).await?.unwrap_or_default();
        self.loaded.send_replace(true);
        let switched = self.collections().generation != named;
        if switched {
            let next = Arc::new(Collections::of(&self.db, &named));
            *self
                .current
                .write()
                .expect("the generation lock is never poisoned") = next;
        }
        let pointers = self.db.collection::<Document>(POINTER_COLLECTION);
        pointers
            .update_one(
                doc! { "_id": format!("{REPLICA_PREFIX}{replica}") },
                doc! { "$set": { "generation": &named, "seenAt": bson::DateTime::now() } },
            )
            .upsert(true)
            .await?;
        Ok(switched.then_some(named))
    }

    /// Waits until every replica that refreshed within `alive` uses
    /// `generation`, or until `deadline`; returns the replicas that still
    /// do not.
    pub async fn await_replicas(
        db: &Database,
        generation: &str,
        alive: Duration,
        deadline: Duration,
    ) -> mongodb::error::Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Replica {
            #[serde(rename = "_id")]
            id: String,
        }
        let pointers = db.collection::<Replica>(POINTER_COLLECTION);
        let give_up = tokio::time::Instant::now() + deadline;
        loop {
            let since = bson::DateTime::from_system_time(SystemTime::now() - alive);
            let lagging: Vec<String> = pointers
                .find(doc! {
                    "_id": { "$regex": format!("^{REPLICA_PREFIX}") },
                    "seenAt": { "$gte": since },
                    "generation": { "$ne": generation },
                })
                .await?
                .map_ok(|replica| replica.id[REPLICA_PREFIX.len()..].to_owned())
                .try_collect()
                .await?;
            if lagging.is_empty() || tokio::time::Instant::now() >= give_up {
                return Ok(lagging);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the pointer has been read once, so nothing is applied
    /// to a generation that is no longer active.
    pub async fn loaded(&self) {
        let mut loaded = self.loaded.subscribe();
        while !*loaded.borrow_and_update() {
            if loaded.changed().await.is_err() {
                return;
            }
        }
    }

    /// Points every replica at `generation` (they follow within their
    /// refresh interval).
    pub async fn activate(db: &Database, generation: &str) -> mongodb::error::Result<()> {
        db.collection::<Document>(POINTER_COLLECTION)
            .update_one(
                doc! { "_id": POINTER_ID },
                doc! { "$set": { "generation": generation, "activatedAt": bson::DateTime::now() } },
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    /// The generation the pointer names now (empty for the first).
    pub async fn named(db: &Database) -> mongodb::error::Result<String> {
        Ok(read_pointer(db).await?.unwrap_or_default())
    }
}

async fn read_pointer(db: &Database) -> mongodb::error::Result<Option<String>> {
    let pointers = db.collection::<Pointer>(POINTER_COLLECTION);
    let pointer = pointers.find_one(doc! { "_id": POINTER_ID }).await?;
    Ok(pointer.map(|p| p.generation))
}
