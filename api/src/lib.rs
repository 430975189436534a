//! campo's HTTP API (axum): the signals, forecasts and alerts of the lake, behind JWT scopes.
//!
//! Conventions: `/v1` paths; every error is the envelope `{trace_id, code, message, details}`
//! (made in [`error`] only); every response carries `X-Trace-Id`; lists page with
//! `?cursor=&limit=` (at most 200).

pub mod auth;
pub mod error;
mod lakeq;
mod routes;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::get;
use campo_lake::Lake;

pub use auth::{Keys, Scope};
pub use error::{ApiError, Result};

/// One readiness condition the embedding process reports (e.g. "kafka assignment held").
pub type ReadyCheck = Arc<dyn Fn() -> Vec<(&'static str, bool)> + Send + Sync>;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub lake: Lake,
    pub keys: Arc<Keys>,
    /// Conditions beyond "the lake is reachable" that `/readyz` must see true.
    pub ready: Option<ReadyCheck>,
}

impl FromRef<AppState> for Arc<Keys> {
    fn from_ref(s: &AppState) -> Arc<Keys> {
        s.keys.clone()
    }
}

/// The whole API as one router, testable without a socket.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/v1/regions", get(routes::regions))
        .route("/v1/regions/{region}/signals", get(routes::signals))
        .route("/v1/regions/{region}/forecast", get(routes::forecast))
        .route("/v1/alerts", get(routes::alerts))
        .fallback(routes::no_route)
        .with_state(state)
        .layer(axum::middleware::from_fn(error::trace))
}

/// Serves the router on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
