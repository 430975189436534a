//! The protect stage: runs after the window stage has committed `region_metrics_1m` and
//! `evu_1m` for a close. Per region and closed window (in window order) it forecasts, runs the
//! protective-mode state machine, commits `alerts` and hands the level changes to the outbox
//! for `system.protect` (the `alerts` table is the outbox), then commits `collapse_forecast`.
//!
//! Both tables carry one txn action, app id `{pipeline}-protect-0`, version = end of the last
//! window processed (µs), so a restart knows where each stands. Forecasts and levels are a
//! deterministic function of the derived tables: on start, the history and the levels are
//! rebuilt from `region_metrics_1m`, `evu_1m` and `alerts`, and windows the window stage wrote
//! but this stage did not (a crash in between) are processed from the lake.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use campo_lake::arrow::array::{Array, ArrayRef, AsArray, Date32Array, Float64Array, Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use campo_lake::arrow::compute::cast;
use campo_lake::arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use campo_lake::{CommitOutcome, Lake, LakeError, OffsetTxn, TableCommit, TableKind, TableWriter};

use super::forecast::{Forecast, MAX_HISTORY, Model, WindowPoint};
use super::levels::{Level, LevelChange, RegionLevel, Rules, WindowSignals};
use super::outbox::Outbox;
use crate::config::Config;
use crate::ingest::{CloseTrace, Shutdown, Stats, commit_retrying};

/// The txn "topic" of the protect tables: app id `{pipeline}-protect-0`.
const TXN_TOPIC: &str = "protect";
/// The model whose forecasts are written and drive the `soft` forecast rule.
pub const MODEL: Model = Model::ShareTrend;

/// One region's closed window: what the forecast and the state machine read.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedWindow {
    pub region: String,
    pub point: WindowPoint,
    pub error_rate: Option<f64>,
    pub latency_p95_ms: Option<f64>,
}

impl ClosedWindow {
    /// What the state machine reads of this window, with the forecast's `p_collapse` at 10 min.
    fn signals(&self, p_collapse_10: Option<f64>) -> WindowSignals {
        WindowSignals {
            window_end_us: self.point.window_end_us,
            hz_mean: self.point.hz_mean,
            low_share: self.point.low_share,
            error_rate: self.error_rate,
            latency_p95_ms: self.latency_p95_ms,
            p_collapse_10,
        }
    }
}

/// A region's protective state for live output.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionProtect {
    pub level: Level,
    pub window_end_us: i64,
    /// `p_collapse` at 10 minutes and the 10-minute forecast with its 80% band.
    pub p_collapse_10: Option<f64>,
    pub forecast_10: Option<(f64, f64, f64)>,
}

fn utf8(c: &ArrayRef) -> Result<ArrayRef, LakeError> {
    cast(c, &DataType::Utf8).map_err(|e| LakeError::Query { table: "(protect)".into(), source: e.into() })
}

fn ts_us(c: &ArrayRef) -> Result<ArrayRef, LakeError> {
    cast(c, &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())))
        .map_err(|e| LakeError::Query { table: "(protect)".into(), source: e.into() })
}

fn column<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, LakeError> {
    b.column_by_name(name).ok_or_else(|| LakeError::Query {
        table: "(protect)".into(),
        source: datafusion::error::DataFusionError::Plan(format!("missing column {name}")),
    })
}

/// Joins `region_metrics_1m` and `evu_1m` rows by (region, window_end), ordered by window end
/// then region. Windows without readings have no `hz_mean` and are not forecast.
pub fn closed_windows(rm: &[RecordBatch], evu: &[RecordBatch]) -> Result<Vec<ClosedWindow>, LakeError> {
    let mut failures: BTreeMap<(String, i64), (Option<f64>, Option<f64>)> = BTreeMap::new();
    for b in evu.iter().filter(|b| b.num_rows() > 0) {
        let (region, end) = (utf8(column(b, "region")?)?, ts_us(column(b, "window_end")?)?);
        let (region, end) = (region.as_string::<i32>(), end.as_primitive::<TimestampMicrosecondType>());
        let err = cast(column(b, "error_rate")?, &DataType::Float64).expect("float");
        let p95 = cast(column(b, "latency_p95_ms")?, &DataType::Float64).expect("float");
        let (err, p95) = (err.as_primitive::<Float64Type>(), p95.as_primitive::<Float64Type>());
        for i in 0..b.num_rows() {
            let opt = |a: &campo_lake::arrow::array::Float64Array| a.is_valid(i).then(|| a.value(i));
            failures.insert((region.value(i).to_string(), end.value(i)), (opt(err), opt(p95)));
        }
    }
    let mut out = Vec::new();
    for b in rm.iter().filter(|b| b.num_rows() > 0) {
        let (region, end) = (utf8(column(b, "region")?)?, ts_us(column(b, "window_end")?)?);
        let (region, end) = (region.as_string::<i32>(), end.as_primitive::<TimestampMicrosecondType>());
        let hz = cast(column(b, "hz_mean")?, &DataType::Float64).expect("float");
        let low = cast(column(b, "low_share")?, &DataType::Float64).expect("float");
        let users = cast(column(b, "users")?, &DataType::Int64).expect("int");
        let sensorial = cast(column(b, "sensorial_entropy")?, &DataType::Float64).expect("float");
        let (hz, low, users) = (hz.as_primitive::<Float64Type>(), low.as_primitive::<Float64Type>(), users.as_primitive::<Int64Type>());
        let sensorial = sensorial.as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            let key = (region.value(i).to_string(), end.value(i));
            let (error_rate, latency_p95_ms) = failures.get(&key).copied().unwrap_or((None, None));
            out.push(ClosedWindow {
                region: key.0,
                point: WindowPoint {
                    window_end_us: key.1,
                    hz_mean: hz.value(i),
                    low_share: low.value(i),
                    users: users.value(i),
                    sensorial_entropy: sensorial.is_valid(i).then(|| sensorial.value(i)),
                },
                error_rate,
                latency_p95_ms,
            });
        }
    }
    out.sort_by(|a, b| (a.point.window_end_us, &a.region).cmp(&(b.point.window_end_us, &b.region)));
    Ok(out)
}

struct Table {
    writer: TableWriter,
    through: Option<i64>,
}

pub struct ProtectStage {
    lake: Lake,
    config: Config,
    rules: Rules,
    step_min: f64,
    size_us: i64,
    forecasts: Table,
    alerts: Table,
    history: BTreeMap<String, VecDeque<WindowPoint>>,
    levels: BTreeMap<String, RegionLevel>,
    outbox: Option<Outbox>,
    stats: Arc<Stats>,
    shutdown: Shutdown,
    /// What [`ProtectStage::alert`] evaluated up to a window end and
    /// [`ProtectStage::commit_forecasts`] has not committed yet: a retry of the same close does
    /// not evaluate those windows twice.
    pending: Option<(i64, Produced)>,
}

/// What one batch of closed windows produced.
#[derive(Debug, Default)]
pub struct Produced {
    pub forecasts: Vec<(String, i64, Forecast)>,
    pub changes: Vec<(LevelChange, f64, f64, Option<f64>)>,
}

impl ProtectStage {
    /// Opens the tables, rebuilds history and levels from the lake and processes the windows
    /// written while this stage was not running. With `kafka`, level changes are also sent to
    /// `protect.topic` (see [`Outbox`]); without, they are written to `alerts` only.
    pub async fn open(lake: &Lake, config: &Config, stats: Arc<Stats>, shutdown: Shutdown, kafka: bool) -> Result<Self, LakeError> {
        let pipeline = &config.ingest.pipeline;
        let mut forecasts = TableWriter::open(lake, TableKind::CollapseForecast, pipeline).await?;
        let mut alerts = TableWriter::open(lake, TableKind::Alerts, pipeline).await?;
        let (f_through, a_through) = (forecasts.txn_version(TXN_TOPIC, 0).await?, alerts.txn_version(TXN_TOPIC, 0).await?);
        let size_us = config.windows.size.as_micros() as i64;
        let mut stage = Self {
            lake: lake.clone(),
            config: config.clone(),
            rules: Rules::new(config),
            step_min: size_us as f64 / 60e6,
            size_us,
            forecasts: Table { writer: forecasts, through: f_through },
            alerts: Table { writer: alerts, through: a_through },
            history: BTreeMap::new(),
            levels: BTreeMap::new(),
            outbox: None,
            stats,
            shutdown,
            pending: None,
        };
        stage.restore(kafka).await?;
        Ok(stage)
    }

    /// Opens again from the lake (after another instance may have written windows).
    pub async fn reopen(self) -> Result<Self, LakeError> {
        let Self { lake, config, stats, shutdown, outbox, .. } = self;
        let kafka = outbox.is_some();
        if let Some(o) = outbox {
            // The new outbox reads the topic back: the old one must be done sending first.
            o.close().await;
        }
        Self::open(&lake, &config, stats, shutdown, kafka).await
    }

    /// End of the last window processed.
    pub fn through(&self) -> Option<i64> {
        self.base()
    }

    /// End of the last window both tables hold.
    fn base(&self) -> Option<i64> {
        self.forecasts.through.zip(self.alerts.through).map(|(a, b)| a.min(b))
    }

    async fn restore(&mut self, kafka: bool) -> Result<(), LakeError> {
        let started = Instant::now();
        let base = self.base();
        // The look-back the models and conditions need before the base.
        let from = base.map(|b| b - (MAX_HISTORY as i64 + 1) * self.size_us);
        let filter = from.map_or(String::new(), |t| format!(" WHERE window_end > to_timestamp_micros({t})"));
        let rm = self.lake.query(&format!("SELECT * FROM region_metrics_1m{filter}")).await?;
        let evu = self.lake.query(&format!("SELECT * FROM evu_1m{filter}")).await?;
        let windows = closed_windows(&rm, &evu)?;
        // Levels as of the base: each region's last change at or before it.
        if let Some(b) = base {
            let sql = format!(
                "SELECT region, level, CAST(window_end AS BIGINT) AS end_us FROM alerts \
                 WHERE window_end <= to_timestamp_micros({b}) ORDER BY end_us"
            );
            for batch in self.lake.query(&sql).await? {
                let (region, level) = (utf8(batch.column(0))?, utf8(batch.column(1))?);
                let (region, level) = (region.as_string::<i32>(), level.as_string::<i32>());
                let end = batch.column(2).as_primitive::<Int64Type>();
                for i in 0..batch.num_rows() {
                    let level = Level::parse(level.value(i)).unwrap_or(Level::Off);
                    self.levels.insert(region.value(i).to_string(), RegionLevel::new(region.value(i), level).changed_at(end.value(i)));
                }
            }
        }
        let (before, after): (Vec<_>, Vec<_>) = windows.into_iter().partition(|w| base.is_some_and(|b| w.point.window_end_us <= b));
        for w in &before {
            self.remember(w);
        }
        let through = after.last().map(|w| w.point.window_end_us);
        let caught_up = after.len();
        if let Some(through) = through {
            // Windows the window stage wrote while this stage was behind.
            self.process(&after, through, None).await?;
        }
        if kafka {
            // Everything committed so far (the windows just caught up included) is checked
            // against the topic; changes from now on are sent as they are committed.
            let since = self.base().map(|b| b - Outbox::lookback_us());
            let recent = read_changes(&self.lake, since).await?;
            let outbox = Outbox::start(&self.config, recent, self.stats.clone()).map_err(|e| LakeError::Query {
                table: "(protect)".into(),
                source: datafusion::error::DataFusionError::External(Box::new(e)),
            })?;
            self.outbox = Some(outbox);
        }
        tracing::info!(
            regions = self.history.len(),
            history_windows = before.len(),
            caught_up,
            through = ?self.base().map(crate::windows::stage::fmt_us),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "protect stage restored from the lake"
        );
        Ok(())
    }

    /// Appends a window to its region's history (the last [`MAX_HISTORY`]) and returns it.
    fn push_history(&mut self, w: &ClosedWindow) -> Vec<WindowPoint> {
        let h = self.history.entry(w.region.clone()).or_default();
        h.push_back(w.point);
        while h.len() > MAX_HISTORY {
            h.pop_front();
        }
        h.iter().copied().collect()
    }

    fn remember(&mut self, w: &ClosedWindow) {
        self.push_history(w);
        let level = self.levels.entry(w.region.clone()).or_insert_with(|| RegionLevel::new(&w.region, Level::Off));
        level.remember(w.signals(None), &self.rules);
    }

    /// Forecasts and evaluates windows in order (pure: no I/O).
    fn evaluate(&mut self, windows: &[ClosedWindow]) -> Produced {
        let mut out = Produced::default();
        for w in windows {
            let points = self.push_history(w);
            let forecasts = MODEL.forecast(&points, self.step_min, self.rules.low_hz).unwrap_or_default();
            let p10 = forecasts.iter().find(|f| f.horizon_min == 10).map(|f| f.p_collapse);
            let level = self.levels.entry(w.region.clone()).or_insert_with(|| RegionLevel::new(&w.region, Level::Off));
            if let Some(change) = level.observe(w.signals(p10), &self.rules) {
                out.changes.push((change, w.point.hz_mean, w.point.low_share, p10));
            }
            let f10 = forecasts.iter().find(|f| f.horizon_min == 10);
            self.stats.protect.lock().expect("protect").insert(
                w.region.clone(),
                RegionProtect {
                    level: level.level,
                    window_end_us: w.point.window_end_us,
                    p_collapse_10: p10,
                    forecast_10: f10.map(|f| (f.hz, f.lo80, f.hi80)),
                },
            );
            metrics::gauge!("campo_region_protect_level", "region" => w.region.clone()).set(level.level.severity() as f64);
            for f in &forecasts {
                metrics::gauge!("campo_region_collapse_probability", "region" => w.region.clone(), "horizon" => format!("{}m", f.horizon_min))
                    .set(f.p_collapse);
            }
            out.forecasts.extend(forecasts.into_iter().map(|f| (w.region.clone(), w.point.window_end_us, f)));
        }
        out
    }

    /// Processes closed windows (every window ending at or before `through`), commits both
    /// tables and sends the level changes.
    pub async fn process(&mut self, windows: &[ClosedWindow], through: i64, trace: Option<CloseTrace>) -> Result<Produced, LakeError> {
        self.alert(windows, through, trace).await?;
        self.commit_forecasts(through).await
    }

    /// The first half of [`Self::process`], the one on the alert's path: forecasts and
    /// evaluates the windows, commits `alerts` and hands the changes to the outbox. The window
    /// stage runs it beside its own commits; [`Self::commit_forecasts`] follows once those are
    /// committed (the stage resumes from the older of its two tables, so after a crash in
    /// between these windows are processed again from the derived tables, and the outbox never
    /// sends a change twice).
    pub async fn alert(&mut self, windows: &[ClosedWindow], through: i64, mut trace: Option<CloseTrace>) -> Result<(), LakeError> {
        if self.base().is_some_and(|b| b >= through) {
            return Ok(());
        }
        // Windows up to `evaluated` were evaluated already (by a close whose forecasts are not
        // committed yet, or before the base).
        let evaluated = self.pending.as_ref().map(|(t, _)| *t).or(self.base());
        if evaluated.is_none_or(|e| e < through) {
            let fresh: Vec<ClosedWindow> = windows.iter().filter(|w| evaluated.is_none_or(|e| w.point.window_end_us > e)).cloned().collect();
            let produced = self.evaluate(&fresh);
            if let Some(t) = &mut trace {
                t.evaluated = Some(Instant::now());
            }
            self.note_changes(&produced);
            let (_, mut all) = self.pending.take().unwrap_or_default();
            all.forecasts.extend(produced.forecasts);
            all.changes.extend(produced.changes);
            self.pending = Some((through, all));
        }
        // A change is sent as soon as its outbox row is committed.
        let produced = &self.pending.as_ref().expect("just set").1;
        let a_rows = alert_rows(&produced.changes, self.alerts.through);
        let changes: Vec<LevelChange> = produced
            .changes
            .iter()
            .filter(|c| self.alerts.through.is_none_or(|t| c.0.window_end_us > t))
            .map(|c| c.0.clone())
            .collect();
        commit(&mut self.alerts, a_rows, through, &self.stats, &self.shutdown).await?;
        if let Some(mut t) = trace {
            t.alerted = Some(Instant::now());
            let mut traces = self.stats.protect_traces.lock().expect("protect traces");
            if traces.len() >= 10_000 {
                traces.clear();
            }
            for c in &changes {
                traces.insert(c.event_id.clone(), t);
            }
        }
        if let Some(outbox) = &self.outbox {
            outbox.send(changes);
        }
        Ok(())
    }

    /// The second half of [`Self::process`]: commits the forecasts of what [`Self::alert`]
    /// evaluated, and returns it.
    pub async fn commit_forecasts(&mut self, through: i64) -> Result<Produced, LakeError> {
        let Some((t, produced)) = self.pending.take_if(|(t, _)| *t <= through) else { return Ok(Produced::default()) };
        let f_rows = forecast_rows(&produced.forecasts, self.forecasts.through);
        if let Err(e) = commit(&mut self.forecasts, f_rows, t, &self.stats, &self.shutdown).await {
            self.pending = Some((t, produced));
            return Err(e);
        }
        Ok(produced)
    }

    fn note_changes(&self, produced: &Produced) {
        for (c, ..) in &produced.changes {
            tracing::info!(region = c.region, level = c.level.name(), previous = c.previous.name(), reason = c.reason, "protective mode");
            let mut recent = self.stats.protect_changes.lock().expect("protect changes");
            if recent.len() >= 100 {
                recent.pop_front();
            }
            recent.push_back(c.clone());
        }
    }

    /// Stops, giving the outbox a few seconds to send what is queued.
    pub async fn close(self) {
        if let Some(o) = self.outbox {
            o.close().await;
        }
    }
}

async fn commit(t: &mut Table, rows: RecordBatch, through: i64, stats: &Stats, shutdown: &Shutdown) -> Result<(), LakeError> {
    if t.through.is_some_and(|v| v >= through) {
        return Ok(());
    }
    let c = TableCommit {
        batches: vec![rows],
        txns: vec![OffsetTxn { topic: TXN_TOPIC.into(), partition: 0, expected: t.through, last: through }],
    };
    if let CommitOutcome::Refused { app_id, expected, found } = commit_retrying(&mut t.writer, &c, stats, shutdown).await? {
        tracing::warn!(table = t.writer.name(), app_id, ?expected, ?found, "already written by another writer; keeping theirs");
    }
    t.through = Some(through);
    Ok(())
}

fn date(us: i64) -> i32 {
    us.div_euclid(86_400_000_000) as i32
}

fn ts_array(v: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

/// `collapse_forecast` rows for windows after `after`.
fn forecast_rows(f: &[(String, i64, Forecast)], after: Option<i64>) -> RecordBatch {
    let f: Vec<&(String, i64, Forecast)> = f.iter().filter(|(_, at, _)| after.is_none_or(|a| *at > a)).collect();
    let col = |g: fn(&Forecast) -> f64| Arc::new(Float64Array::from(f.iter().map(|x| g(&x.2)).collect::<Vec<_>>())) as ArrayRef;
    RecordBatch::try_new(
        TableKind::CollapseForecast.schema(),
        vec![
            Arc::new(StringArray::from(f.iter().map(|x| x.0.as_str()).collect::<Vec<_>>())),
            ts_array(f.iter().map(|x| x.1).collect()),
            Arc::new(Int32Array::from(f.iter().map(|x| x.2.horizon_min as i32).collect::<Vec<_>>())),
            ts_array(f.iter().map(|x| x.1 + x.2.horizon_min as i64 * 60_000_000).collect()),
            col(|x| x.hz),
            col(|x| x.lo80),
            col(|x| x.hi80),
            col(|x| x.lo95),
            col(|x| x.hi95),
            col(|x| x.p_collapse),
            Arc::new(StringArray::from(vec![MODEL.name(); f.len()])),
            Arc::new(Date32Array::from(f.iter().map(|x| date(x.1)).collect::<Vec<_>>())),
        ],
    )
    .expect("collapse_forecast schema")
}

/// `alerts` rows for windows after `after`.
fn alert_rows(changes: &[(LevelChange, f64, f64, Option<f64>)], after: Option<i64>) -> RecordBatch {
    let c: Vec<_> = changes.iter().filter(|(c, ..)| after.is_none_or(|a| c.window_end_us > a)).collect();
    let s = |g: fn(&LevelChange) -> &str| Arc::new(StringArray::from(c.iter().map(|x| g(&x.0)).collect::<Vec<_>>())) as ArrayRef;
    RecordBatch::try_new(
        TableKind::Alerts.schema(),
        vec![
            s(|x| x.event_id.as_str()),
            s(|x| x.region.as_str()),
            s(|x| x.level.name()),
            s(|x| x.previous.name()),
            s(|x| x.reason.as_str()),
            ts_array(c.iter().map(|x| x.0.window_end_us).collect()),
            ts_array(c.iter().map(|x| x.0.expires_at_us).collect()),
            Arc::new(Float64Array::from(c.iter().map(|x| x.1).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(c.iter().map(|x| x.2).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(c.iter().map(|x| x.3).collect::<Vec<_>>())),
            Arc::new(Date32Array::from(c.iter().map(|x| date(x.0.window_end_us)).collect::<Vec<_>>())),
        ],
    )
    .expect("alerts schema")
}

/// Level changes in `alerts` for windows after `since` (all when None), in window order.
pub async fn read_changes(lake: &Lake, since: Option<i64>) -> Result<Vec<LevelChange>, LakeError> {
    let filter = since.map_or(String::new(), |t| format!("WHERE window_end > to_timestamp_micros({t})"));
    let sql = format!(
        "SELECT event_id, region, level, previous_level, reason, CAST(window_end AS BIGINT) AS end_us, \
         CAST(expires_at AS BIGINT) AS expires_us FROM alerts {filter} \
         ORDER BY end_us, region"
    );
    let batches = lake.query(&sql).await?;
    let mut out = Vec::new();
    for b in batches {
        let strs: Vec<ArrayRef> = (0..5).map(|i| utf8(b.column(i))).collect::<Result<_, _>>()?;
        let s = |k: usize, i: usize| strs[k].as_string::<i32>().value(i).to_string();
        let (end, exp) = (b.column(5).as_primitive::<Int64Type>(), b.column(6).as_primitive::<Int64Type>());
        for i in 0..b.num_rows() {
            out.push(LevelChange {
                event_id: s(0, i),
                region: s(1, i),
                level: Level::parse(&s(2, i)).unwrap_or(Level::Off),
                previous: Level::parse(&s(3, i)).unwrap_or(Level::Off),
                reason: s(4, i),
                window_end_us: end.value(i),
                expires_at_us: exp.value(i),
            });
        }
    }
    Ok(out)
}
