//! What every handler can reach.

use axum::extract::FromRef;
use platform::health::Dependencies;

use crate::projection::ReadModel;

#[derive(Clone)]
pub struct AppState {
    pub read_model: ReadModel,
    pub dependencies: Dependencies,
}

impl FromRef<AppState> for ReadModel {
    fn from_ref(state: &AppState) -> Self {
        state.read_model.clone()
    }
}

impl FromRef<AppState> for Dependencies {
    fn from_ref(state: &AppState) -> Self {
        state.dependencies.clone()
    }
}
