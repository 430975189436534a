//! The handlers. Reads go to the lake through [`crate::lakeq`]; auth through [`Principal`].

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Principal, Scope};
use crate::error::{ApiError, Result};
use crate::lakeq::{self, limit, region, time_param, ts};
use crate::AppState;
use campo_lake::TableKind;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the lake answers and every check of the embedding process holds.
pub async fn readyz(State(s): State<AppState>) -> Response {
    let mut checks = vec![("lake_reachable", lake_reachable(&s.lake).await)];
    if let Some(f) = &s.ready {
        checks.extend(f());
    }
    let ready = checks.iter().all(|(_, ok)| *ok);
    let body: serde_json::Map<String, Value> = checks.into_iter().map(|(k, v)| (k.to_string(), Value::Bool(v))).collect();
    if ready {
        (StatusCode::OK, Json(json!({"status": "ready", "checks": body}))).into_response()
    } else {
        ApiError::unavailable("not ready").with_details(json!({"checks": body})).into_response()
    }
}

async fn lake_reachable(lake: &campo_lake::Lake) -> bool {
    match lake.local_root() {
        Some(p) => tokio::fs::metadata(&p).await.is_ok_and(|m| m.is_dir()),
        None => lake.open(TableKind::RegionMetrics1m.name()).await.is_ok(),
    }
}

pub async fn no_route() -> ApiError {
    ApiError::not_found("no such route; see /openapi.json")
}

const WINDOW_COLUMNS: &str = "m.region, m.window_start, m.window_end, m.readings, m.users, m.hz_mean, m.hz_p50, \
     m.hz_p95, m.low_share, m.entropy, m.stability, m.sensorial_entropy, m.mood_mean, m.state";
const EVU_COLUMNS: &str = "e.evu, e.latency, e.coherence, e.emotional, e.security, e.error_rate, e.latency_p95_ms";

/// `GET /v1/regions`: every region's latest closed window, its EVU and its alert level.
pub async fn regions(State(s): State<AppState>, p: Principal) -> Result<Json<Value>> {
    p.require(Scope::SignalsRead)?;
    let lake = &s.lake;
    let latest = lakeq::rows(
        lake,
        &[TableKind::RegionMetrics1m, TableKind::Evu1m],
        &format!(
            "SELECT {WINDOW_COLUMNS}, {EVU_COLUMNS} FROM \
               (SELECT *, row_number() OVER (PARTITION BY region ORDER BY window_end DESC) AS rn FROM region_metrics_1m) m \
             LEFT JOIN evu_1m e ON e.region = m.region AND e.window_end = m.window_end \
             WHERE m.rn = 1 ORDER BY m.region"
        ),
    )
    .await?;
    let levels = lakeq::rows(
        lake,
        &[TableKind::Alerts],
        "SELECT region, level, reason, window_end AS since, expires_at FROM \
           (SELECT *, row_number() OVER (PARTITION BY region ORDER BY window_end DESC, event_id DESC) AS rn FROM alerts) \
         WHERE rn = 1",
    )
    .await?;
    let items: Vec<Value> = latest
        .into_iter()
        .map(|mut row| {
            let alert = levels.iter().find(|a| a.get("region") == row.get("region"));
            let level = alert.and_then(|a| a.get("level")).cloned().unwrap_or(json!("off"));
            row.insert("alert_level".into(), level);
            row.insert("alert".into(), alert.map_or(Value::Null, |a| json!(a)));
            Value::Object(row)
        })
        .collect();
    Ok(Json(json!({"items": items})))
}

#[derive(Debug, Deserialize)]
pub struct SeriesQuery {
    from: Option<String>,
    to: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/regions/{region}/signals?from=&to=`: the region's windows in time order, paged by
/// `window_start` (the cursor is the last window start returned).
pub async fn signals(
    State(s): State<AppState>,
    p: Principal,
    Path(r): Path<String>,
    Query(q): Query<SeriesQuery>,
) -> Result<Json<Value>> {
    p.require(Scope::SignalsRead)?;
    let r = region(&r)?;
    let n = limit(q.limit)?;
    let mut filter = format!("m.region = '{r}'");
    if let Some(from) = &q.from {
        filter += &format!(" AND m.window_start >= {}", ts(time_param("from", from)?));
    }
    if let Some(to) = &q.to {
        filter += &format!(" AND m.window_start < {}", ts(time_param("to", to)?));
    }
    if let Some(c) = &q.cursor {
        let after: i64 = c.parse().map_err(|_| ApiError::bad_request("invalid_cursor", "cursor is not one this API returned"))?;
        filter += &format!(" AND m.window_start > {}", ts(after));
    }
    let not_found = || ApiError::not_found(format!("no windows for region {r:?}")).with_details(json!({"region": r}));
    let ctx = lakeq::session(&s.lake, &[TableKind::RegionMetrics1m, TableKind::Evu1m]).await?.ok_or_else(not_found)?;
    if lakeq::query(&ctx, &format!("SELECT 1 AS one FROM region_metrics_1m WHERE region = '{r}' LIMIT 1")).await?.is_empty() {
        return Err(not_found());
    }
    let rows = lakeq::query(
        &ctx,
        &format!(
            "SELECT {WINDOW_COLUMNS}, {EVU_COLUMNS}, CAST(m.window_start AS BIGINT) AS start_us \
             FROM region_metrics_1m m LEFT JOIN evu_1m e ON e.region = m.region AND e.window_end = m.window_end \
             WHERE {filter} ORDER BY m.window_start LIMIT {}",
            n + 1
        ),
    )
    .await?;
    let (items, next) = page(rows, n, |row| row.get("start_us").and_then(Value::as_i64).map(|v| v.to_string()));
    Ok(Json(json!({"region": r, "items": items, "next_cursor": next})))
}

/// Keeps `n` rows, drops the internal `*_us` columns, and names the cursor after the last kept
/// row when more follow.
fn page(
    mut rows: Vec<serde_json::Map<String, Value>>,
    n: usize,
    cursor_of: impl Fn(&serde_json::Map<String, Value>) -> Option<String>,
) -> (Vec<Value>, Value) {
    let more = rows.len() > n;
    rows.truncate(n);
    let next = if more { rows.last().and_then(&cursor_of).map_or(Value::Null, Value::String) } else { Value::Null };
    let items = rows
        .into_iter()
        .map(|mut r| {
            r.retain(|k, _| !k.ends_with("_us") && k != "cursor_id");
            Value::Object(r)
        })
        .collect();
    (items, next)
}

/// `GET /v1/regions/{region}/forecast`: the latest forecast, every horizon with its intervals.
pub async fn forecast(State(s): State<AppState>, p: Principal, Path(r): Path<String>) -> Result<Json<Value>> {
    p.require(Scope::SignalsRead)?;
    let r = region(&r)?;
    let rows = lakeq::rows(
        &s.lake,
        &[TableKind::CollapseForecast],
        &format!(
            "SELECT horizon_min, target_window_end, hz_forecast, lo80, hi80, lo95, hi95, p_collapse, model, issued_at \
             FROM collapse_forecast WHERE region = '{r}' AND issued_at = \
               (SELECT max(issued_at) FROM collapse_forecast WHERE region = '{r}') \
             ORDER BY horizon_min"
        ),
    )
    .await?;
    let Some(first) = rows.first() else {
        return Err(ApiError::not_found(format!(
            "no forecast for region {r:?} yet (a region needs 10 closed windows of history)"
        ))
        .with_details(json!({"region": r})));
    };
    let issued_at = first.get("issued_at").cloned().unwrap_or(Value::Null);
    let model = first.get("model").cloned().unwrap_or(Value::Null);
    let horizons: Vec<Value> = rows
        .into_iter()
        .map(|mut h| {
            h.remove("issued_at");
            h.remove("model");
            Value::Object(h)
        })
        .collect();
    Ok(Json(json!({"region": r, "issued_at": issued_at, "model": model, "horizons": horizons})))
}

#[derive(Debug, Deserialize)]
pub struct AlertsQuery {
    active: Option<bool>,
    region: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/alerts?active=&region=`: level changes, newest first; with `active=true` only each
/// region's current level where it is not `off`.
pub async fn alerts(State(s): State<AppState>, p: Principal, Query(q): Query<AlertsQuery>) -> Result<Json<Value>> {
    p.require(Scope::AlertsRead)?;
    let n = limit(q.limit)?;
    let mut filter = "TRUE".to_string();
    if let Some(r) = &q.region {
        filter += &format!(" AND region = '{}'", region(r)?);
    }
    if let Some(c) = &q.cursor {
        let bad = || ApiError::bad_request("invalid_cursor", "cursor is not one this API returned");
        let (us, id) = c.split_once('.').ok_or_else(bad)?;
        let us: i64 = us.parse().map_err(|_| bad())?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(bad());
        }
        filter += &format!(" AND (window_end < {t} OR (window_end = {t} AND event_id < '{id}'))", t = ts(us));
    }
    let source = if q.active == Some(true) {
        "(SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY region ORDER BY window_end DESC, event_id DESC) AS rn \
           FROM alerts) WHERE rn = 1 AND level <> 'off')"
    } else {
        "alerts"
    };
    let rows = lakeq::rows(
        &s.lake,
        &[TableKind::Alerts],
        &format!(
            "SELECT event_id, region, level, previous_level, reason, window_end, expires_at, hz_mean, low_share, \
               p_collapse_10, CAST(window_end AS BIGINT) AS end_us \
             FROM {source} WHERE {filter} ORDER BY window_end DESC, event_id DESC LIMIT {}",
            n + 1
        ),
    )
    .await?;
    let cursor = |row: &serde_json::Map<String, Value>| {
        Some(format!("{}.{}", row.get("end_us")?.as_i64()?, row.get("event_id")?.as_str()?))
    };
    let (items, next) = page(rows, n, cursor);
    Ok(Json(json!({"items": items, "next_cursor": next})))
}
