//! The live view: what changes with every window close, kept in memory. `/v1/regions` answers
//! from it without a query, and `/v1/stream` pushes its events. One task polls the Delta log
//! versions of the signal tables; when one moves, it recomputes the regions body and reads the
//! events that became visible.
//!
//! Events are ordered and named by where they sit in the lake, not by when this process saw
//! them: `{window_end_us}-w-{region}` for a closed window, `{window_end_us}-a-{event_id}` for a
//! protective-level change. So `Last-Event-ID` resumes from the lake, across restarts of the
//! API and however long the client was away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use campo_lake::datafusion::prelude::SessionContext;
use campo_lake::deltalake::DeltaTable;
use campo_lake::{Lake, TableKind};
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, watch};

use crate::error::{ApiError, Result};
use crate::lakeq;

/// How often the Delta log versions are polled.
pub const POLL: Duration = Duration::from_millis(250);

/// The tables the live view follows, in the order they are polled: alerts before the windows,
/// so an alert is never seen before the windows it closed with (see [`Live::refresh`]).
const FOLLOWED: [TableKind; 4] = [TableKind::Alerts, TableKind::RegionMetrics1m, TableKind::Evu1m, TableKind::CollapseForecast];

/// Where an event sits in the lake; events are sent in this order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventId {
    pub window_end_us: i64,
    pub kind: EventKind,
    /// The region of a window, the `event_id` of an alert.
    pub key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventKind {
    Window,
    Alert,
}

impl EventKind {
    /// The SSE `event:` name.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Window => "window",
            EventKind::Alert => "alert",
        }
    }
    fn letter(self) -> char {
        match self {
            EventKind::Window => 'w',
            EventKind::Alert => 'a',
        }
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}-{}", self.window_end_us, self.kind.letter(), self.key)
    }
}

impl std::str::FromStr for EventId {
    type Err = ApiError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            ApiError::bad_request("invalid_last_event_id", format!("Last-Event-ID {s:?} is not an id this stream sent"))
        };
        let (us, rest) = s.split_once('-').ok_or_else(bad)?;
        let window_end_us = us.parse::<i64>().ok().filter(|us| lakeq::TIME_RANGE_US.contains(us)).ok_or_else(bad)?;
        let (kind, key) = rest.split_once('-').ok_or_else(bad)?;
        let kind = match kind {
            "w" => EventKind::Window,
            "a" => EventKind::Alert,
            _ => return Err(bad()),
        };
        let key_ok = !key.is_empty() && key.len() <= 64 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !key_ok {
            return Err(bad());
        }
        Ok(EventId { window_end_us, kind, key: key.to_string() })
    }
}

/// One event of `/v1/stream`.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: EventId,
    /// The row, as JSON text.
    pub data: String,
}

/// What the poller last saw.
struct View {
    versions: Vec<Option<u64>>,
    /// `/v1/regions`, serialized; `None` until the first refresh.
    regions: Option<Bytes>,
    /// The last event made visible; later events are broadcast.
    last: Option<EventId>,
}

/// The live view of one lake. Cheap to share; its poller starts on first use and stops when
/// the last handle is dropped or [`Live::close`] is called.
pub struct Live {
    lake: Lake,
    view: RwLock<View>,
    tables: tokio::sync::Mutex<HashMap<TableKind, DeltaTable>>,
    events: broadcast::Sender<Arc<Event>>,
    closed: watch::Sender<bool>,
    started: AtomicBool,
}

/// Events read from the lake per page while a stream catches up.
pub const PAGE: usize = 500;

impl Live {
    pub fn new(lake: Lake) -> Arc<Live> {
        Arc::new(Live {
            lake,
            view: RwLock::new(View { versions: vec![], regions: None, last: None }),
            tables: tokio::sync::Mutex::new(HashMap::new()),
            events: broadcast::channel(1024).0,
            closed: watch::channel(false).0,
            started: AtomicBool::new(false),
        })
    }

    /// Ends the poller and every open stream (for a graceful shutdown).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves once [`Live::close`] was called.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Live events from now on (each stream filters by its own position).
    pub fn subscribe(self: &Arc<Self>) -> broadcast::Receiver<Arc<Event>> {
        self.start();
        self.events.subscribe()
    }

    /// The `/v1/regions` body, at most one poll interval old.
    pub async fn regions(self: &Arc<Self>) -> Result<Bytes> {
        self.start();
        if let Some(r) = self.view.read().expect("live view").regions.clone() {
            return Ok(r);
        }
        self.refresh().await?;
        Ok(self.view.read().expect("live view").regions.clone().expect("set by refresh"))
    }

    /// The position of the newest visible event (where a stream without `Last-Event-ID` begins).
    pub async fn position(self: &Arc<Self>) -> Result<Option<EventId>> {
        self.start();
        if self.view.read().expect("live view").regions.is_none() {
            self.refresh().await?;
        }
        Ok(self.view.read().expect("live view").last.clone())
    }

    fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        let mut closed = self.closed.subscribe();
        // On the query runtime: a refresh runs DataFusion, which must not hold up the workers
        // that answer requests.
        crate::sql::sql_runtime().spawn(async move {
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = closed.wait_for(|c| *c) => return,
                    _ = tokio::time::sleep(POLL) => {}
                }
                let Some(live) = weak.upgrade() else { return };
                match live.refresh().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("the live view reads the lake again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e.message, "the live view cannot read the lake; serving the last view");
                    }
                    Err(_) => {}
                }
            }
        });
    }

    /// Polls the followed tables' versions; when one moved, recomputes the regions body and
    /// broadcasts the events that became visible. Serialized by the table lock.
    pub async fn refresh(&self) -> Result<()> {
        let mut tables = self.tables.lock().await;
        let mut versions = Vec::with_capacity(FOLLOWED.len());
        for kind in FOLLOWED {
            let v = match tables.get(&kind) {
                Some(t) => t.get_latest_version().await.ok().and_then(|v| u64::try_from(v).ok()),
                None => match self.lake.open(kind.name()).await {
                    Ok(t) => {
                        let v = t.version().and_then(|v| u64::try_from(v).ok());
                        tables.insert(kind, t);
                        v
                    }
                    Err(_) => None,
                },
            };
            versions.push(v);
        }
        {
            let view = self.view.read().expect("live view");
            if view.regions.is_some() && view.versions == versions {
                return Ok(());
            }
        }
        // Alerts are registered (their snapshot taken) before the windows: an alert is
        // committed with or after the windows of its close, so every alert this session sees
        // belongs to a window it sees too (or to the one in flight, held back by `through`).
        let ctx = session(&self.lake).await?;
        let regions = regions_body(&ctx).await?;
        let last = self.view.read().expect("live view").last.clone();
        let through = through(&ctx).await?;
        let (events, newest) = match (last, through) {
            (Some(last), Some(t)) => {
                let events = events_after(&ctx, &last, t, usize::MAX).await?;
                let newest = events.last().map_or(last, |e| e.id.clone());
                (events, Some(newest))
            }
            // The first refresh starts the stream after the last window: the history is for
            // clients that resume with `Last-Event-ID`.
            (None, Some(t)) => (vec![], Some(EventId { window_end_us: t, kind: EventKind::Window, key: "~".into() })),
            (last, None) => (vec![], last),
        };
        {
            let mut view = self.view.write().expect("live view");
            view.versions = versions;
            view.regions = Some(regions);
            view.last = newest;
        }
        for e in events {
            let _ = self.events.send(Arc::new(e));
        }
        Ok(())
    }

    /// Up to `limit` events after `after`, read from the lake (a stream catching up).
    pub async fn events_after(&self, after: &EventId, limit: usize) -> Result<Vec<Event>> {
        let ctx = session(&self.lake).await?;
        match through(&ctx).await? {
            Some(t) => events_after(&ctx, after, t, limit).await,
            None => Ok(vec![]),
        }
    }
}

/// A session over the followed tables, in [`FOLLOWED`] order; one that does not exist yet (a
/// young lake) is an empty table.
async fn session(lake: &Lake) -> Result<SessionContext> {
    let ctx = lake.session_of(&FOLLOWED).await?;
    for kind in FOLLOWED {
        if !ctx.table_exist(kind.name()).map_err(ApiError::internal)? {
            let empty = campo_lake::datafusion::datasource::MemTable::try_new(kind.schema(), vec![vec![]])
                .map_err(ApiError::internal)?;
            ctx.register_table(kind.name(), Arc::new(empty)).map_err(ApiError::internal)?;
        }
    }
    Ok(ctx)
}

pub const WINDOW_COLUMNS: &str = "m.region, m.window_start, m.window_end, m.readings, m.users, m.hz_mean, m.hz_p50, \
     m.hz_p95, m.low_share, m.entropy, m.stability, m.sensorial_entropy, m.mood_mean, m.state";
pub const EVU_COLUMNS: &str = "e.evu, e.latency, e.coherence, e.emotional, e.security, e.error_rate, e.latency_p95_ms";
pub const ALERT_COLUMNS: &str = "event_id, region, level, previous_level, reason, window_end, expires_at, hz_mean, low_share, p_collapse_10";

/// The end of the last window whose rows are all visible: the windows and their EVU are two
/// commits of one close, so the later of the two bounds it.
async fn through(ctx: &SessionContext) -> Result<Option<i64>> {
    let rows = lakeq::query(
        ctx,
        "SELECT (SELECT CAST(max(window_end) AS BIGINT) FROM region_metrics_1m) AS m, \
                (SELECT CAST(max(window_end) AS BIGINT) FROM evu_1m) AS e",
    )
    .await?;
    let get = |k: &str| rows.first().and_then(|r| r.get(k)).and_then(Value::as_i64);
    Ok(get("m").map(|m| get("e").map_or(m, |e| m.min(e))))
}

/// The events after `after` up to the window ending at `through`, in order, at most `limit`.
async fn events_after(ctx: &SessionContext, after: &EventId, through: i64, limit: usize) -> Result<Vec<Event>> {
    let (from, to) = (lakeq::ts(after.window_end_us), lakeq::ts(through));
    let cap = if limit == usize::MAX { String::new() } else { format!(" LIMIT {limit}") };
    // The rows at `after`'s own window end that still follow it (its key is checked text).
    let (same_window, same_alert) = match after.kind {
        EventKind::Window => (format!("m.region > '{}'", after.key), "TRUE".to_string()),
        EventKind::Alert => ("FALSE".to_string(), format!("event_id > '{}'", after.key)),
    };
    let windows = lakeq::query(
        ctx,
        &format!(
            "SELECT {WINDOW_COLUMNS}, {EVU_COLUMNS}, CAST(m.window_end AS BIGINT) AS end_us \
             FROM region_metrics_1m m LEFT JOIN evu_1m e ON e.region = m.region AND e.window_end = m.window_end \
             WHERE (m.window_end > {from} OR (m.window_end = {from} AND {same_window})) AND m.window_end <= {to} \
             ORDER BY m.window_end, m.region{cap}"
        ),
    )
    .await?;
    let alerts = lakeq::query(
        ctx,
        &format!(
            "SELECT {ALERT_COLUMNS}, CAST(window_end AS BIGINT) AS end_us FROM alerts \
             WHERE (window_end > {from} OR (window_end = {from} AND {same_alert})) AND window_end <= {to} \
             ORDER BY window_end, event_id{cap}"
        ),
    )
    .await?;
    let mut events: Vec<Event> = windows
        .into_iter()
        .map(|r| event(r, EventKind::Window, "region"))
        .chain(alerts.into_iter().map(|r| event(r, EventKind::Alert, "event_id")))
        .flatten()
        .filter(|e| e.id > *after)
        .collect();
    events.sort_by(|a, b| a.id.cmp(&b.id));
    events.truncate(limit);
    Ok(events)
}

fn event(mut row: Map<String, Value>, kind: EventKind, key: &str) -> Option<Event> {
    let window_end_us = row.remove("end_us")?.as_i64()?;
    let key = row.get(key)?.as_str()?.to_string();
    Some(Event { id: EventId { window_end_us, kind, key }, data: Value::Object(row).to_string() })
}

/// `/v1/regions`: every region's latest window, its EVU, its alert level and its latest
/// 10-minute forecast.
async fn regions_body(ctx: &SessionContext) -> Result<Bytes> {
    let latest = lakeq::query(
        ctx,
        &format!(
            "SELECT {WINDOW_COLUMNS}, {EVU_COLUMNS} FROM \
               (SELECT *, row_number() OVER (PARTITION BY region ORDER BY window_end DESC) AS rn FROM region_metrics_1m) m \
             LEFT JOIN evu_1m e ON e.region = m.region AND e.window_end = m.window_end \
             WHERE m.rn = 1 ORDER BY m.region"
        ),
    )
    .await?;
    let levels = lakeq::query(
        ctx,
        "SELECT region, level, reason, window_end AS since, expires_at FROM \
           (SELECT *, row_number() OVER (PARTITION BY region ORDER BY window_end DESC, event_id DESC) AS rn FROM alerts) \
         WHERE rn = 1",
    )
    .await?;
    let forecasts = lakeq::query(
        ctx,
        "SELECT region, issued_at, target_window_end, hz_forecast, lo80, hi80, lo95, hi95, p_collapse FROM \
           (SELECT *, row_number() OVER (PARTITION BY region ORDER BY issued_at DESC) AS rn FROM collapse_forecast \
            WHERE horizon_min = 10) WHERE rn = 1",
    )
    .await?;
    let items: Vec<Value> = latest
        .into_iter()
        .map(|mut row| {
            let region = row.get("region").cloned();
            let alert = levels.iter().find(|a| a.get("region") == region.as_ref());
            let level = alert.and_then(|a| a.get("level")).cloned().unwrap_or(json!("off"));
            let forecast = forecasts.iter().find(|f| f.get("region") == region.as_ref()).map(|f| {
                let mut f = f.clone();
                f.remove("region");
                Value::Object(f)
            });
            row.insert("alert_level".into(), level);
            row.insert("alert".into(), alert.map_or(Value::Null, |a| json!(a)));
            row.insert("forecast_10".into(), forecast.unwrap_or(Value::Null));
            Value::Object(row)
        })
        .collect();
    Ok(Bytes::from(serde_json::to_vec(&json!({"items": items})).map_err(ApiError::internal)?))
}
