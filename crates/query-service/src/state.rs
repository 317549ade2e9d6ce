//! What every handler can reach.

use std::{ops::Deref, sync::Arc, time::Duration};

use axum::extract::FromRef;
use platform::{health::Dependencies, metrics::Scrape};
use tokio::sync::watch;

use crate::{
    read::lookup::BookLookup,
    read_model::{AuthorSummaries, Books},
};

/// What the handlers share, behind one `Arc`: axum clones the state for
/// every request, and this makes that one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub books: Books,
    pub lookup: BookLookup,
    pub summaries: AuthorSummaries,
    /// Bumped by the local consumer after each batch: a read waiting for a
    /// version looks again then.
    pub batches: watch::Receiver<u64>,
    /// How long a read waits for the version it asks for.
    pub read_your_writes_timeout: Duration,
    pub dependencies: Dependencies,
    /// What `/metrics` reads at each scrape: the consumer group's figures.
    pub scrape: Scrape,
}

impl FromRef<AppState> for Books {
    fn from_ref(state: &AppState) -> Self {
        state.books.clone()
    }
}

impl FromRef<AppState> for AuthorSummaries {
    fn from_ref(state: &AppState) -> Self {
        state.summaries.clone()
    }
}

impl FromRef<AppState> for Dependencies {
    fn from_ref(state: &AppState) -> Self {
        state.dependencies.clone()
    }
}

impl FromRef<AppState> for Scrape {
    fn from_ref(state: &AppState) -> Self {
        state.scrape.clone()
    }
}
