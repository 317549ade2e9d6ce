//! What every handler can reach.

use std::{ops::Deref, sync::Arc};

use axum::extract::FromRef;
use platform::{health::Dependencies, metrics::Scrape};

use crate::{auth::ApiTokens, relay::OutboxNotifier, store::BookStore};

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
    pub store: BookStore,
    pub outbox: OutboxNotifier,
    pub dependencies: Dependencies,
    /// Base URL of the query service, for `Location` headers.
    pub query_base_url: Arc<str>,
    pub api_tokens: ApiTokens,
    /// What `/metrics` reads at each scrape: the outbox backlog.
    pub scrape: Scrape,
}

impl FromRef<AppState> for ApiTokens {
    fn from_ref(state: &AppState) -> Self {
        state.api_tokens.clone()
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
