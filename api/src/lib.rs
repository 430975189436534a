//! campo's HTTP API (axum): the signals, forecasts and alerts of the lake, behind JWT scopes.
//!
//! Conventions: `/v1` paths; every error is the envelope `{trace_id, code, message, details}`
//! (made in [`error`] only); every response carries `X-Trace-Id`; lists page with
//! `?cursor=&limit=` (at most 200).

pub mod auth;
mod erasure;
pub mod error;
mod lakeq;
pub mod openapi;
pub mod live;
mod ratelimit;
mod routes;
mod sql;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use campo_lake::Lake;

pub use auth::{Keys, Scope};
pub use error::{ApiError, Result};

/// One readiness condition the embedding process reports (e.g. "kafka assignment held").
pub type ReadyCheck = Arc<dyn Fn() -> Vec<(&'static str, bool)> + Send + Sync>;

/// The Prometheus text of the process's metrics, rendered by whoever installed the recorder.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// The API's limits (config section `[api]`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Average requests per second per caller; 0 disables rate limiting.
    pub rate_per_s: u32,
    pub burst: u32,
    pub max_body_bytes: usize,
    pub sql_memory_bytes: usize,
    pub sql_timeout: std::time::Duration,
    pub sql_max_rows: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rate_per_s: 200,
            burst: 400,
            max_body_bytes: 64 * 1024,
            sql_memory_bytes: 256 << 20,
            sql_timeout: std::time::Duration::from_secs(30),
            sql_max_rows: 100_000,
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub lake: Lake,
    pub keys: Arc<Keys>,
    /// Conditions beyond "the lake is reachable" that `/readyz` must see true.
    pub ready: Option<ReadyCheck>,
    /// Serves `/metrics` when set.
    pub metrics: Option<MetricsRender>,
    pub limits: Limits,
    /// The signals kept in memory and the event stream.
    pub live: Arc<live::Live>,
    /// The key directory erasures use (`POST /v1/erasure` answers 503 without it).
    pub erasure_keys: Option<campo_lake::lifecycle::PeriodKeys>,
}

impl AppState {
    /// A state over `lake` with no readiness checks beyond the lake, no metrics, default limits.
    pub fn new(lake: Lake, keys: Keys) -> Self {
        Self { live: live::Live::new(lake.clone()), lake, keys: Arc::new(keys), ready: None, metrics: None, limits: Limits::default(), erasure_keys: None }
    }
}

impl FromRef<AppState> for Arc<Keys> {
    fn from_ref(s: &AppState) -> Arc<Keys> {
        s.keys.clone()
    }
}

/// The whole API as one router, testable without a socket. Health, readiness and metrics are
/// outside the rate limit (probes and scrapers); the `/v1` routes are inside it.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/regions", get(routes::regions))
        .route("/v1/regions/{region}/signals", get(routes::signals))
        .route("/v1/regions/{region}/forecast", get(routes::forecast))
        .route("/v1/alerts", get(routes::alerts))
        .route("/v1/stream", get(routes::stream))
        .route("/v1/sql", post(sql::sql))
        .route("/v1/erasure", post(erasure::erasure));
    let v1 = ratelimit::apply(v1, state.limits.rate_per_s, state.limits.burst);
    Router::new()
        .route("/", get(routes::dashboard))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .merge(v1)
        .fallback(routes::no_route)
        .layer(axum::extract::DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state)
        .layer(axum::middleware::from_fn(error::trace))
}

/// Serves the router on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let live = state.live.clone();
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            live.close(); // ends the open event streams, so their connections can close
        })
        .await
}
