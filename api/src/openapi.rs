//! `GET /openapi.json`: the OpenAPI 3.1 description, generated from the handlers' annotations
//! and the types below (utoipa). The types describe the bodies the handlers build; the live
//! test suite runs schemathesis against this document to keep the two in step.

use std::collections::BTreeMap;

use axum::Json;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The error envelope of every non-2xx answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Also in the `X-Trace-Id` header.
    pub trace_id: String,
    /// Stable, machine-readable: `unauthorized`, `forbidden`, `not_found`, `invalid_sql`, `rate_limited`...
    pub code: String,
    pub message: String,
    /// Facts about the error (the required scope, the limits...), or null.
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub status: String,
    /// Each condition and whether it holds.
    pub checks: BTreeMap<String, bool>,
}

/// One region's closed window (`region_metrics_1m` joined with `evu_1m`; SPEC 3 and 4).
#[derive(Serialize, ToSchema)]
pub struct Window {
    pub region: String,
    #[schema(format = DateTime)]
    pub window_start: String,
    #[schema(format = DateTime)]
    pub window_end: String,
    pub readings: i64,
    pub users: Option<i64>,
    pub hz_mean: Option<f64>,
    pub hz_p50: Option<f64>,
    pub hz_p95: Option<f64>,
    /// Share of users under 420 Hz.
    pub low_share: Option<f64>,
    pub entropy: Option<f64>,
    pub stability: Option<f64>,
    pub sensorial_entropy: Option<f64>,
    pub mood_mean: Option<f64>,
    /// `collapse`, `neutral`, `expansion`...
    pub state: Option<String>,
    /// The EVU experience score, 0..100 (absent without activity).
    pub evu: Option<f64>,
    pub latency: Option<f64>,
    pub coherence: Option<f64>,
    pub emotional: Option<f64>,
    pub security: Option<f64>,
    pub error_rate: Option<f64>,
    pub latency_p95_ms: Option<f64>,
}

/// The current protective level of a region, from its last change.
#[derive(Serialize, ToSchema)]
pub struct CurrentAlert {
    pub region: String,
    pub level: String,
    pub reason: Option<String>,
    #[schema(format = DateTime)]
    pub since: String,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// One forecast target: the predicted Hz with its 80% and 95% bands and the collapse
/// probability (SPEC 5).
#[derive(Serialize, ToSchema)]
pub struct Band {
    #[schema(format = DateTime)]
    pub target_window_end: String,
    pub hz_forecast: Option<f64>,
    pub lo80: Option<f64>,
    pub hi80: Option<f64>,
    pub lo95: Option<f64>,
    pub hi95: Option<f64>,
    pub p_collapse: Option<f64>,
}

/// The 10-minute forecast of a region.
#[derive(Serialize, ToSchema)]
pub struct Forecast10 {
    #[schema(format = DateTime)]
    pub issued_at: String,
    #[serde(flatten)]
    pub band: Band,
}

/// A region's latest window with its alert level and forecast.
#[derive(Serialize, ToSchema)]
pub struct RegionNow {
    #[serde(flatten)]
    pub window: Window,
    /// `off`, `soft`, `medium` or `hard`.
    pub alert_level: String,
    pub alert: Option<CurrentAlert>,
    pub forecast_10: Option<Forecast10>,
}

#[derive(Serialize, ToSchema)]
pub struct Regions {
    pub items: Vec<RegionNow>,
}

#[derive(Serialize, ToSchema)]
pub struct Signals {
    pub region: String,
    pub items: Vec<Window>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// One horizon of a forecast.
#[derive(Serialize, ToSchema)]
pub struct Horizon {
    pub horizon_min: i64,
    #[serde(flatten)]
    pub band: Band,
}

#[derive(Serialize, ToSchema)]
pub struct Forecast {
    pub region: String,
    #[schema(format = DateTime)]
    pub issued_at: Option<String>,
    pub model: Option<String>,
    pub horizons: Vec<Horizon>,
}

/// A protective-level change (the `alerts` table; SPEC 6).
#[derive(Serialize, ToSchema)]
pub struct Alert {
    pub event_id: String,
    pub region: String,
    pub level: String,
    pub previous_level: Option<String>,
    pub reason: Option<String>,
    #[schema(format = DateTime)]
    pub window_end: String,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    pub hz_mean: Option<f64>,
    pub low_share: Option<f64>,
    pub p_collapse_10: Option<f64>,
}

#[derive(Serialize, ToSchema)]
pub struct Alerts {
    pub items: Vec<Alert>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SqlColumn {
    pub name: String,
    /// The Arrow type, e.g. `Utf8View`, `Int64`, `Timestamp(µs, "UTC")`.
    #[serde(rename = "type")]
    pub data_type: String,
}

/// `POST /v1/sql` as JSON.
#[derive(Serialize, ToSchema)]
pub struct SqlAnswer {
    pub columns: Vec<SqlColumn>,
    pub row_count: i64,
    /// One object per row; null values are left out.
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<serde_json::Value>,
}

/// The refusals every `/v1` route can answer with: no valid token, a missing scope, the rate
/// limit. Listed once here, named in each route's `responses(...)`.
#[derive(utoipa::IntoResponses)]
pub enum Refusals {
    /// No valid bearer token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token lacks the scope
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// Rate limit reached (see Retry-After)
    #[response(status = 429)]
    RateLimited(ErrorBody),
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "campo",
        description = "The signals of the FriendApp collective field: regions, series, forecasts, alerts, a live stream and read-only SQL over the lake. Tokens are HS256 JWTs with scopes `signals:read`, `alerts:read`, `sql:query`, `admin`; mint one with `campo token`."
    ),
    paths(
        crate::routes::dashboard,
        crate::routes::healthz,
        crate::routes::readyz,
        crate::routes::metrics,
        openapi_json,
        crate::routes::regions,
        crate::routes::signals,
        crate::routes::forecast,
        crate::routes::alerts,
        crate::routes::stream,
        crate::sql::sql,
        crate::erasure::erasure,
    ),
    components(schemas(ErrorBody, Window, RegionNow, crate::sql::SqlRequest, crate::sql::Format, crate::erasure::ErasureRequest, crate::erasure::ErasureDone)),
    modifiers(&Bearer),
    tags((name = "signals"), (name = "alerts"), (name = "sql"), (name = "operations"))
)]
pub struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static serde_json::Value {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    DOC.get_or_init(|| serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes"))
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> Json<&'static serde_json::Value> {
    Json(document())
}
