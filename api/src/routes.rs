//! The handlers. Reads go to the lake through [`crate::lakeq`]; auth through [`Principal`].

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Principal, Scope};
use crate::error::{ApiError, Result};
use crate::lakeq::{self, limit, region, time_param, ts};
use crate::live::{self, Event, EventId, EventKind, Live, EVU_COLUMNS, WINDOW_COLUMNS};
use crate::AppState;
use campo_lake::TableKind;

/// `GET /healthz`: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = crate::openapi::Health)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the lake answers and every check of the embedding process holds.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
        (status = 200, description = "Ready: every check holds", body = crate::openapi::Ready),
        (status = 503, description = "Not ready; `details.checks` says which check fails", body = crate::openapi::ErrorBody)))]
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

/// `GET /metrics`: the process's Prometheus metrics (no token, as scrapers expect).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 404, description = "No metrics recorder in this process", body = crate::openapi::ErrorBody)))]
pub async fn metrics(State(s): State<AppState>) -> Result<Response> {
    let render = s.metrics.as_ref().ok_or_else(|| ApiError::not_found("metrics are not enabled in this process"))?;
    let text = render();
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

async fn lake_reachable(lake: &campo_lake::Lake) -> bool {
    match lake.local_root() {
        Some(p) => tokio::fs::metadata(&p).await.is_ok_and(|m| m.is_dir()),
        None => lake.open(TableKind::RegionMetrics1m.name()).await.is_ok(),
    }
}

/// `GET /`: the dashboard, one self-contained page (no build step, nothing fetched from
/// elsewhere): a tile per region, live over `/v1/stream`.
#[utoipa::path(get, path = "/", tag = "operations", responses((status = 200, description = "The dashboard", content_type = "text/html", body = String)))]
pub async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("dashboard.html"))
}

pub async fn no_route() -> ApiError {
    ApiError::not_found("no such route; see /openapi.json")
}

/// `GET /v1/regions`: every region's latest closed window, its EVU, its alert level and its
/// 10-minute forecast, from the live view (at most one poll interval old; no query).
#[utoipa::path(get, path = "/v1/regions", tag = "signals", security(("bearer" = [])), responses(
        (status = 200, description = "Every region's latest window", body = crate::openapi::Regions),
        crate::openapi::Refusals))]
pub async fn regions(State(s): State<AppState>, p: Principal) -> Result<Response> {
    p.require(Scope::SignalsRead)?;
    let body = s.live.regions().await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /v1/stream`: Server-Sent Events `window` (each region's closed window, with `signals:read`)
/// and `alert` (each protective-level change, with `alerts:read` too), in lake order. A client
/// that sends `Last-Event-ID` gets everything after that event first, read from the lake.
#[utoipa::path(get, path = "/v1/stream", tag = "signals", security(("bearer" = [])),
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this event (an id this stream sent)")),
    responses(
        (status = 200, description = "Server-Sent Events: `window` (data: a Window) and `alert` (data: an Alert)", content_type = "text/event-stream", body = String),
        (status = 400, description = "A Last-Event-ID this stream did not send", body = crate::openapi::ErrorBody),
        crate::openapi::Refusals))]
pub async fn stream(State(s): State<AppState>, p: Principal, headers: HeaderMap) -> Result<Response> {
    p.require(Scope::SignalsRead)?;
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("invalid_last_event_id", "Last-Event-ID is not ASCII"))?
                .parse::<EventId>()?,
        ),
        None => None,
    };
    // Subscribe before reading the position: nothing committed in between is missed.
    let rx = s.live.subscribe();
    let now = s.live.position().await?;
    let (last, catching_up) = match resume {
        Some(id) => (id, true),
        None => (now.unwrap_or(EventId { window_end_us: i64::MIN, kind: EventKind::Window, key: String::new() }), false),
    };
    let st = StreamState {
        closed: s.live.closed(),
        live: s.live.clone(),
        rx,
        last,
        backlog: std::collections::VecDeque::new(),
        catching_up,
        alerts: p.has(Scope::AlertsRead),
    };
    let events = futures::stream::unfold(st, |mut st| async move {
        let e = st.next().await?;
        let sse = SseEvent::default().id(e.id.to_string()).event(e.id.kind.name()).data(&e.data);
        Some((Ok::<_, std::convert::Infallible>(sse), st))
    });
    let mut resp = Sse::new(events).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15))).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    Ok(resp)
}

struct StreamState {
    live: std::sync::Arc<Live>,
    rx: tokio::sync::broadcast::Receiver<std::sync::Arc<Event>>,
    closed: tokio::sync::watch::Receiver<bool>,
    /// The last event sent (or the position the stream began at).
    last: EventId,
    backlog: std::collections::VecDeque<std::sync::Arc<Event>>,
    /// Reading the lake page by page until the stream has reached the live view.
    catching_up: bool,
    /// Whether the caller may see alerts.
    alerts: bool,
}

impl StreamState {
    /// The next event to send, or `None` when the stream ends (shutdown, or the lake failed
    /// while catching up: the client resumes with `Last-Event-ID`).
    async fn next(&mut self) -> Option<std::sync::Arc<Event>> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            if *self.closed.borrow() {
                return None;
            }
            if let Some(e) = self.backlog.pop_front() {
                if e.id <= self.last {
                    continue;
                }
                self.last = e.id.clone();
                if e.id.kind == EventKind::Alert && !self.alerts {
                    continue;
                }
                return Some(e);
            }
            if self.catching_up {
                let page = self.live.events_after(&self.last, live::PAGE).await.ok()?;
                self.catching_up = page.len() == live::PAGE;
                self.backlog.extend(page.into_iter().map(std::sync::Arc::new));
                continue;
            }
            tokio::select! {
                _ = self.closed.changed() => {}
                r = self.rx.recv() => match r {
                    Ok(e) => self.backlog.push_back(e),
                    Err(RecvError::Lagged(_)) => self.catching_up = true,
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// Windows starting at or after this RFC 3339 time.
    from: Option<String>,
    /// Windows starting before this RFC 3339 time.
    to: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 200 (default 100).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<usize>,
}

/// `GET /v1/regions/{region}/signals?from=&to=`: the region's windows in time order, paged by
/// `window_start` (the cursor is the last window start returned).
#[utoipa::path(get, path = "/v1/regions/{region}/signals", tag = "signals", security(("bearer" = [])),
    params(("region" = String, Path, description = "e.g. sa-east-1"), SeriesQuery),
    responses(
        (status = 200, description = "The region's windows in time order", body = crate::openapi::Signals),
        (status = 400, description = "A bad region, time, cursor or limit", body = crate::openapi::ErrorBody),
        (status = 404, description = "No windows for this region", body = crate::openapi::ErrorBody),
        crate::openapi::Refusals))]
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
        let after = c
            .parse::<i64>()
            .ok()
            .filter(|us| lakeq::TIME_RANGE_US.contains(us))
            .ok_or_else(|| ApiError::bad_request("invalid_cursor", "cursor is not one this API returned"))?;
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
#[utoipa::path(get, path = "/v1/regions/{region}/forecast", tag = "signals", security(("bearer" = [])),
    params(("region" = String, Path, description = "e.g. sa-east-1")),
    responses(
        (status = 200, description = "The latest forecast, every horizon", body = crate::openapi::Forecast),
        (status = 400, description = "A bad region name", body = crate::openapi::ErrorBody),
        (status = 404, description = "No forecast for this region yet", body = crate::openapi::ErrorBody),
        crate::openapi::Refusals))]
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertsQuery {
    /// Only each region's current level where it is not `off`.
    active: Option<bool>,
    /// Only this region.
    region: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 200 (default 100).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<usize>,
}

/// `GET /v1/alerts?active=&region=`: level changes, newest first; with `active=true` only each
/// region's current level where it is not `off`.
#[utoipa::path(get, path = "/v1/alerts", tag = "alerts", security(("bearer" = [])),
    params(AlertsQuery),
    responses(
        (status = 200, description = "Level changes, newest first (or the active levels)", body = crate::openapi::Alerts),
        (status = 400, description = "A bad region, cursor or limit", body = crate::openapi::ErrorBody),
        crate::openapi::Refusals))]
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
        let us = us.parse::<i64>().ok().filter(|us| lakeq::TIME_RANGE_US.contains(us)).ok_or_else(bad)?;
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
