//! What every handler can reach.

use axum::extract::FromRef;
use redis::aio::ConnectionManager;

use crate::projection::ReadModel;

#[derive(Clone)]
pub struct AppState {
    pub read_model: ReadModel,
    pub database: mongodb::Database,
    pub redis: ConnectionManager,
}

impl FromRef<AppState> for ReadModel {
    fn from_ref(state: &AppState) -> Self {
        state.read_model.clone()
    }
}
