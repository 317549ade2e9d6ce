//! What every handler can reach.

use std::sync::Arc;

use axum::extract::FromRef;
use redis::aio::ConnectionManager;

use crate::{relay::OutboxNotifier, store::BookStore};

#[derive(Clone)]
pub struct AppState {
    pub store: BookStore,
    pub outbox: OutboxNotifier,
    pub database: mongodb::Database,
    pub redis: ConnectionManager,
    /// Base URL of the query service, for `Location` headers.
    pub query_base_url: Arc<str>,
}

impl FromRef<AppState> for BookStore {
    fn from_ref(state: &AppState) -> Self {
        state.store.clone()
    }
}
