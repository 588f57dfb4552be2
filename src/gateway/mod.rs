//! Worker WebSocket gateway. PLACEHOLDER: being implemented (issue 4).

use axum::Router;

use crate::{
    dispatch::gateway::{WorkerGateway, WorkerNotice},
    startup::AppState,
};

/// Live worker sessions; dispatch pushes notices through it.
#[derive(Default)]
pub struct Sessions {}

impl Sessions {
    pub fn new() -> Sessions {
        Sessions {}
    }
}

impl WorkerGateway for Sessions {
    fn notify(&self, _notice: WorkerNotice) {}
}

/// `GET /ws/worker`.
pub fn routes() -> Router<AppState> {
    Router::new()
}
