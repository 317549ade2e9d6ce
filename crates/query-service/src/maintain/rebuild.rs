//! Rebuilding the read model while it keeps being served: a new generation
//! of collections is filled from the write model, caught up, given its
//! summaries and indexes, then made active; a last reconciliation repairs
//! what replicas still applied to the old one. The old collections stay,
//! so switching back is one pointer update.

use std::time::Duration;

use chrono::Utc;
use mongodb::{Collection, Database};
use platform::document::BookDocument;
use serde::Serialize;

use super::reconcile::{reconcile, Repair, Report};
use crate::read_model::{ActiveGeneration, AuthorSummaries, Books, Collections};

/// Catch-up walks before switching, each repairing what changed during the
/// one before; the switch happens after the first that repairs nothing, or
/// after the last, since the walk after the switch repairs the rest.
const CATCH_UP_WALKS: usize = 5;

/// What a rebuild did.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RebuildReport {
    /// The generation now active.
    pub generation: String,
    /// The generation served before (empty for the first), whose
    /// collections are left in place.
    pub previous: String,
    pub previous_collections: Vec<String>,
    /// The walk that filled the new generation.
    pub filled: Report,
    /// The walks that caught it up before the switch.
    pub catch_up: Vec<Report>,
    /// Author summaries computed.
    pub authors: usize,
    /// Live replicas that had not followed the switch when it was checked.
    pub lagging_replicas: Vec<String>,
    /// The walk after the switch, whose repairs went through the stream.
    pub after_switch: Report,
}

pub struct Rebuild {
    /// The read model's database.
    pub db: Database,
    pub write_books: Collection<BookDocument>,
    /// Where the walk after the switch sends its repairs.
    pub after_switch: Repair,
    /// How often replicas read the pointer (`READ_MODEL_REFRESH_MS`).
    pub refresh: Duration,
}

impl Rebuild {
    pub async fn run(&self) -> anyhow::Result<RebuildReport> {
        let previous = ActiveGeneration::named(&self.db).await?;
        let generation = Utc::now().format("%Y%m%d%H%M%S%3f").to_string();
        let target = ActiveGeneration::fixed(&self.db, &generation);
        let read_model = Books::on(target.clone());
        let summaries = AuthorSummaries::on(target);
        read_model.ensure_indexes().await?;
        tracing::info!(%generation, %previous, "rebuilding the read model");

        let apply = Repair::Write(read_model.clone());
        let filled = reconcile(&self.write_books, &read_model, &apply, None).await?;
        tracing::info!(?filled, "new generation filled");
        let mut catch_up = Vec::new();
        for _ in 0..CATCH_UP_WALKS {
            let walk = reconcile(&self.write_books, &read_model, &apply, None).await?;
            let done = walk.repaired == 0;
            catch_up.push(walk);
            if done {
                break;
            }
        }
        let keys = read_model.author_keys().await?;
        for key in &keys {
            summaries.rebuild(key).await?;
        }
        tracing::info!(authors = keys.len(), "author summaries computed");

        ActiveGeneration::activate(&self.db, &generation).await?;
        tracing::info!(%generation, "switched; waiting for the replicas to follow");
        // A replica is alive if it read the pointer within a few refresh
        // intervals; one that never follows is reported, and the periodic
        // reconciliation repairs what it writes to the old generation.
        let lagging = ActiveGeneration::await_replicas(
            &self.db,
            &generation,
            self.refresh * 3 + Duration::from_secs(1),
            self.refresh * 10 + Duration::from_secs(5),
        )
        .await?;
        if !lagging.is_empty() {
            tracing::warn!(?lagging, "replicas did not follow the switch in time");
        }
        let after_switch =
            reconcile(&self.write_books, &read_model, &self.after_switch, None).await?;
        tracing::info!(?after_switch, "rebuild done");

        let old = Collections::of(&self.db, &previous);
        Ok(RebuildReport {
            generation,
            previous,
            previous_collections: vec![old.books.name().to_owned(), old.authors.name().to_owned()],
            filled,
            catch_up,
            authors: keys.len(),
            lagging_replicas: lagging,
            after_switch,
        })
    }
}
