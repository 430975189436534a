//! The window stage: keeps the open windows' state (`sql/state/`: partial aggregates merged as
//! each flush arrives), runs the signal SQL over a window's state when the watermark passes its
//! end, and commits the rows to `region_metrics_1m` and `evu_1m`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use campo_lake::arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, RecordBatch, TimestampMicrosecondArray,
};
use campo_lake::arrow::compute::{cast, concat_batches, filter_record_batch};
use campo_lake::arrow::datatypes::{Field, Float64Type, Int64Type, Schema, SchemaRef, TimestampMicrosecondType};
use campo_lake::{CommitOutcome, Lake, LakeError, OffsetTxn, TableCommit, TableKind, TableWriter};
use datafusion::datasource::MemTable;
use futures_util::StreamExt;
use datafusion::prelude::SessionContext;

use crate::config::Config;
use crate::ingest::{CloseTrace, Shutdown, Stats, commit_retrying};
use crate::protect::{ProtectStage, stage::closed_windows};

use super::sql::{self, Source};
use super::state::{State, ended_by};

/// Columns of `readings` the state queries read.
const READING_COLS: [&str; 7] = ["region", "user_hash", "hz", "hz_bucket", "mood_delta", "entropy", "occurred_at"];
/// Columns of `activity` the state queries read.
const ACTIVITY_COLS: [&str; 8] =
    ["region", "kind", "user_hash", "status", "latency_ms", "waf_blocked", "entropy", "occurred_at"];

/// Bronze rows per state update when reloading open windows on start.
const RELOAD_CHUNK_ROWS: usize = 262_144;

/// The txn "topic" of derived tables: app id `{pipeline}-windows-0`.
const TXN_TOPIC: &str = "windows";

/// What the writer hands over after a flush is committed to bronze.
#[derive(Debug, Default)]
pub struct WindowInput {
    pub readings: Vec<RecordBatch>,
    pub activity: Vec<RecordBatch>,
    /// End of the last closed window as of the flush's cut.
    pub watermark: Option<i64>,
    /// The path so far of the latest window close: the watermark reaching that window end,
    /// the flush's cut and its bronze commit (for close-to-visible latency).
    pub trace: Option<CloseTrace>,
    /// The consumer's assignment generation when the flush was cut.
    pub generation: u64,
    /// Whether that assignment held every partition of both input topics.
    pub whole: bool,
    /// `readings` and `activity` versions right after this flush's commit: a new generation's
    /// first flush rebuilds the state from bronze as of these (this flush included).
    pub bronze_versions: [Option<u64>; 2],
}

/// The latest closed window of a region, for live output.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionSignal {
    pub window_end_us: i64,
    pub readings: i64,
    pub hz_mean: f64,
    pub low_share: f64,
    pub state: String,
    pub evu: Option<f64>,
}

struct Derived {
    writer: TableWriter,
    /// txn version: end of the last window written to this table.
    through: Option<i64>,
}

impl Derived {
    async fn open(lake: &Lake, kind: TableKind, pipeline: &str) -> Result<Self, LakeError> {
        let mut writer = TableWriter::open(lake, kind, pipeline).await?;
        let through = writer.txn_version(TXN_TOPIC, 0).await?;
        Ok(Self { writer, through })
    }
}


pub struct WindowStage {
    lake: Lake,
    /// Forecasts and protective mode, run after every close (`protect.enabled`); opened when
    /// the stage starts running, so that consumption does not wait for its restore.
    protect: Option<ProtectStage>,
    /// `protect.enabled`: whether it sends to Kafka too.
    protect_kafka: Option<bool>,
    /// The generation whose state this is (None: none built yet, or the assignment is partial).
    generation: Option<u64>,
    warned_partial: bool,
    config: Config,
    stats: Arc<Stats>,
    shutdown: Shutdown,
    ctx: SessionContext,
    size_us: i64,
    tables: [Derived; 2],
    /// `sql::REGION_METRICS_STATE` then `sql::EVU_STATE`.
    states: Vec<State>,
    reading_schema: SchemaRef,
    activity_schema: SchemaRef,
    rm_sql: String,
    evu_sql: String,
    warned_size: bool,
}

impl WindowStage {
    /// Opens the derived tables and reads where they stand.
    pub async fn open(lake: &Lake, config: &Config, stats: Arc<Stats>, shutdown: Shutdown) -> Result<Self, LakeError> {
        Self::open_with(lake, config, stats, shutdown, true).await
    }

    /// [`WindowStage::open`] without Kafka: level changes are written to `alerts` only.
    pub async fn open_offline(lake: &Lake, config: &Config, stats: Arc<Stats>, shutdown: Shutdown) -> Result<Self, LakeError> {
        Self::open_with(lake, config, stats, shutdown, false).await
    }

    async fn open_with(lake: &Lake, config: &Config, stats: Arc<Stats>, shutdown: Shutdown, kafka: bool) -> Result<Self, LakeError> {
        let pipeline = &config.ingest.pipeline;
        let tables = [
            Derived::open(lake, TableKind::RegionMetrics1m, pipeline).await?,
            Derived::open(lake, TableKind::Evu1m, pipeline).await?,
        ];
        let with_windows = |source: &SchemaRef, cols: &[&str]| {
            let mut fields: Vec<Field> =
                cols.iter().map(|c| source.field_with_name(c).expect("bronze column").clone()).collect();
            fields.push(Field::new("window_start", campo_lake::schema::ts(), false));
            fields.push(Field::new("window_end", campo_lake::schema::ts(), false));
            Arc::new(Schema::new(fields))
        };
        let ctx = sql::session(&config.signals);
        let reading_schema = with_windows(&TableKind::Readings.schema(), &READING_COLS);
        let activity_schema = with_windows(&TableKind::Activity.schema(), &ACTIVITY_COLS);
        let mut states = Vec::new();
        for query in sql::REGION_METRICS_STATE.iter().chain(&sql::EVU_STATE) {
            let events = match query.source {
                Source::Readings => reading_schema.clone(),
                Source::Activity => activity_schema.clone(),
            };
            let state = State::new(&ctx, query, events)
                .await
                .map_err(|source| LakeError::Query { table: format!("(window state {})", query.name), source })?;
            states.push(state);
        }
        let stage = Self {
            protect: None,
            protect_kafka: config.protect.enabled.then_some(kafka),
            lake: lake.clone(),
            generation: None,
            warned_partial: false,
            ctx,
            size_us: config.windows.size.as_micros() as i64,
            reading_schema,
            activity_schema,
            rm_sql: sql::render(sql::REGION_METRICS_1M, &config.signals),
            evu_sql: sql::render(sql::EVU_1M, &config.signals),
            config: config.clone(),
            stats,
            shutdown,
            tables,
            states,
            warned_size: false,
        };
        if let Some(t) = stage.resume_through() {
            stage.stats.closed_through.store(t, Ordering::Relaxed);
        }
        Ok(stage)
    }

    /// Where the watermark resumes: the end of the last window written (to any table; a table
    /// behind the other catches up from bronze).
    pub fn resume_through(&self) -> Option<i64> {
        self.tables.iter().filter_map(|t| t.through).max()
    }

    /// The oldest window end both tables have: rows of later windows are reloaded from bronze.
    fn reload_from(&self) -> Option<i64> {
        let [a, b] = &self.tables;
        a.through.zip(b.through).map(|(x, y)| x.min(y))
    }

    /// Rebuilds the open windows' state from bronze's non-late rows, as of `versions` of
    /// `readings` and `activity` (latest when None), and re-reads where the derived tables stand.
    pub async fn load_open(&mut self, versions: [Option<u64>; 2]) -> Result<(), LakeError> {
        let started = Instant::now();
        for t in &mut self.tables {
            t.writer.reload().await?;
            t.through = t.writer.txn_version(TXN_TOPIC, 0).await?;
        }
        if let Some(p) = self.protect.take() {
            // Windows another instance closed meanwhile are processed from the lake.
            let behind = self.reload_from().is_some_and(|t| p.through().is_none_or(|b| b < t));
            self.protect = Some(if behind { p.reopen().await? } else { p });
        }
        for state in &mut self.states {
            state.clear();
        }
        let since = self.reload_from();
        let filter = since.map_or(String::new(), |t| format!(" AND occurred_at >= to_timestamp_micros({t})"));
        let pinned: Vec<(TableKind, u64)> = [TableKind::Readings, TableKind::Activity]
            .into_iter()
            .zip(versions)
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        let ctx = self.lake.session_at(&pinned).await?;
        let query_err = |source| LakeError::Query { table: "(bronze reload)".into(), source };
        let mut events = 0;
        for (source, cols) in [(Source::Readings, &READING_COLS[..]), (Source::Activity, &ACTIVITY_COLS[..])] {
            if ctx.table_exist(source.table()).map_err(query_err)? {
                let sql = format!("SELECT {}, late FROM {} WHERE NOT late{filter}", cols.join(", "), source.table());
                let mut stream = ctx.sql(&sql).await.map_err(query_err)?.execute_stream().await.map_err(query_err)?;
                let mut chunk = Vec::new();
                let mut rows = 0;
                while let Some(b) = stream.next().await {
                    let b = b.map_err(query_err)?;
                    rows += b.num_rows();
                    events += b.num_rows();
                    chunk.push(b);
                    if rows >= RELOAD_CHUNK_ROWS {
                        self.update(source, &std::mem::take(&mut chunk)).await?;
                        rows = 0;
                    }
                }
                self.update(source, &chunk).await?;
            }
        }
        tracing::info!(
            events,
            state_rows = self.open_rows(),
            since = ?since.map(fmt_us),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "open windows' state rebuilt from bronze"
        );
        Ok(())
    }

    fn open_rows(&self) -> usize {
        self.states.iter().map(State::rows).sum()
    }

    /// Folds committed bronze batches of one source into the state tables that read it.
    async fn update(&mut self, source: Source, batches: &[RecordBatch]) -> Result<(), LakeError> {
        let started = Instant::now();
        let events: Vec<RecordBatch> = batches.iter().filter_map(|b| self.project(source, b)).collect();
        if events.is_empty() {
            return Ok(());
        }
        let schema = events[0].schema();
        let events = concat_batches(&schema, &events).expect("same schema");
        let query_err = |source| LakeError::Query { table: "(window state)".into(), source };
        for i in 0..self.states.len() {
            let query = self.states[i].query;
            if query.source != source {
                continue;
            }
            let out = self.run_sql(query.sql, &[(source.table(), events.clone())]).await.map_err(query_err)?;
            let state = &mut self.states[i];
            let out = state.conform(out).map_err(query_err)?;
            if state.push_partial(out) {
                self.merge(i).await.map_err(query_err)?;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        self.stats.record_state_update(secs);
        metrics::histogram!("campo_window_state_update_seconds").record(secs);
        Ok(())
    }

    /// Merges a state table's partial rows into one row per key.
    async fn merge(&mut self, i: usize) -> datafusion::error::Result<()> {
        let state = &self.states[i];
        let schema = state.schema.clone();
        let all = state.all_rows()?;
        let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let out = self.run_sql(&sql::merge_sql(&columns), &[("state", all)]).await?;
        let state = &mut self.states[i];
        let merged = state.conform(out)?;
        state.set_merged(merged);
        Ok(())
    }

    /// A committed bronze batch's non-late rows, projected, with their window.
    fn project(&self, source: Source, batch: &RecordBatch) -> Option<RecordBatch> {
        let (cols, schema) = match source {
            Source::Readings => (&READING_COLS[..], self.reading_schema.clone()),
            Source::Activity => (&ACTIVITY_COLS[..], self.activity_schema.clone()),
        };
        let batch = match batch.column_by_name("late") {
            Some(late) => {
                let keep = campo_lake::arrow::compute::not(late.as_boolean()).expect("same length");
                filter_record_batch(batch, &keep).expect("filter")
            }
            None => batch.clone(),
        };
        if batch.num_rows() == 0 {
            return None;
        }
        // Bronze read back through DataFusion may come as Utf8View: cast to the window schema.
        let mut columns: Vec<ArrayRef> = cols
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| {
                let col = batch.column_by_name(c).expect("bronze column");
                if col.data_type() == f.data_type() { col.clone() } else { cast(col, f.data_type()).expect("bronze column casts") }
            })
            .collect();
        let at = batch.column_by_name("occurred_at").expect("occurred_at").as_primitive::<TimestampMicrosecondType>();
        let size = self.size_us;
        let start: TimestampMicrosecondArray = at.iter().map(|t| t.map(|t| t.div_euclid(size) * size)).collect();
        let end: TimestampMicrosecondArray = start.iter().map(|t| t.map(|t| t + size)).collect();
        columns.push(Arc::new(start.with_timezone("UTC")));
        columns.push(Arc::new(end.with_timezone("UTC")));
        Some(RecordBatch::try_new(schema, columns).expect("window columns match"))
    }


    async fn run_sql(&self, sql: &str, tables: &[(&str, RecordBatch)]) -> datafusion::error::Result<Vec<RecordBatch>> {
        for (name, batch) in tables {
            let _ = self.ctx.deregister_table(*name)?;
            let mem = MemTable::try_new(batch.schema(), vec![vec![batch.clone()]])?;
            self.ctx.register_table(*name, Arc::new(mem))?;
        }
        self.ctx.sql(sql).await?.collect().await
    }

    /// Computes every window ending at or before `through` from the open windows' state.
    async fn compute(&mut self, through: i64) -> datafusion::error::Result<[RecordBatch; 2]> {
        let mut closed: Vec<(&str, RecordBatch)> = Vec::with_capacity(self.states.len());
        for state in &mut self.states {
            let rows = state.take_closed(through);
            closed.push((state.query.name, concat_batches(&state.schema, &rows)?));
        }
        let (rm_inputs, evu_inputs) = closed.split_at(sql::REGION_METRICS_STATE.len());
        let rm = self.run_sql(&self.rm_sql, rm_inputs).await?;
        let rm = conform(&rm, &TableKind::RegionMetrics1m.schema())?;
        let mut evu_inputs = evu_inputs.to_vec();
        evu_inputs.push(("region_metrics", rm.clone()));
        let evu = self.run_sql(&self.evu_sql, &evu_inputs).await?;
        let evu = conform(&evu, &TableKind::Evu1m.schema())?;
        Ok([rm, evu])
    }

    /// Closes every window ending at or before `through` and commits their rows.
    /// `trace` has the close's steps so far (from the watermark passing to the input's start).
    async fn close(&mut self, through: i64, mut trace: Option<CloseTrace>) -> Result<(), LakeError> {
        if self.reload_from().is_some_and(|t| t >= through) {
            return Ok(());
        }
        let sql_started = Instant::now();
        let outputs = self.compute(through).await.map_err(|source| LakeError::Query { table: "(signal pipelines)".into(), source })?;
        let sql_secs = sql_started.elapsed().as_secs_f64();
        if let Some(t) = &mut trace {
            t.computed = Some(Instant::now());
        }
        // The two tables are independent: commit them side by side, and beside them the
        // protect stage's alerts (the path to a `system.protect` event); its forecasts follow.
        let windows = match self.protect {
            Some(_) => closed_windows(std::slice::from_ref(&outputs[0]), std::slice::from_ref(&outputs[1]))?,
            None => Vec::new(),
        };
        let [a, b] = &mut self.tables;
        let protect = &mut self.protect;
        let alerts = async {
            match protect {
                Some(p) => p.alert(&windows, through, trace).await,
                None => Ok(()),
            }
        };
        let (ra, rb, rp) = tokio::join!(
            commit_derived(a, &outputs[0], through, &self.stats, &self.shutdown),
            commit_derived(b, &outputs[1], through, &self.stats, &self.shutdown),
            alerts
        );
        ra?;
        rb?;
        rp?;
        let visible = trace.map(|t| t.advanced.elapsed().as_secs_f64());
        self.stats.record_window_close(through, visible, sql_secs);
        if let Some(v) = visible {
            metrics::histogram!("campo_window_close_to_visible_seconds").record(v);
        }
        metrics::histogram!("campo_window_sql_seconds").record(sql_secs);
        metrics::gauge!("campo_window_closed_through_seconds").set(through as f64 / 1e6);
        self.publish(&outputs);
        if let Some(protect) = &mut self.protect {
            protect.commit_forecasts(through).await?;
        }
        tracing::debug!(through = %fmt_us(through), rows = outputs[0].num_rows(), "windows closed");
        Ok(())
    }

    fn publish(&self, [rm, evu]: &[RecordBatch; 2]) {
        if rm.num_rows() == 0 {
            return;
        }
        let mut evus = BTreeMap::new();
        let (region, end, score) =
            (evu.column(0).as_string::<i32>(), evu.column(2).as_primitive::<TimestampMicrosecondType>(), evu.column_by_name("evu").expect("evu").as_primitive::<Float64Type>());
        for i in 0..evu.num_rows() {
            evus.insert((region.value(i).to_string(), end.value(i)), score.is_valid(i).then(|| score.value(i)));
        }
        let col = |n: &str| rm.column_by_name(n).expect("region_metrics column").clone();
        let (region, end, readings, hz, low, state) = (col("region"), col("window_end"), col("readings"), col("hz_mean"), col("low_share"), col("state"));
        let (region, end, readings) = (region.as_string::<i32>(), end.as_primitive::<TimestampMicrosecondType>(), readings.as_primitive::<Int64Type>());
        let (hz, low, state) = (hz.as_primitive::<Float64Type>(), low.as_primitive::<Float64Type>(), state.as_string::<i32>());
        let mut signals = self.stats.signals.lock().expect("signals");
        for i in 0..rm.num_rows() {
            let r = region.value(i).to_string();
            let s = RegionSignal {
                window_end_us: end.value(i),
                readings: readings.value(i),
                hz_mean: hz.value(i),
                low_share: low.value(i),
                state: state.value(i).to_string(),
                evu: evus.get(&(r.clone(), end.value(i))).copied().flatten(),
            };
            if signals.get(&r).is_none_or(|old| old.window_end_us <= s.window_end_us) {
                metrics::gauge!("campo_region_mean_frequency_hertz", "region" => r.clone()).set(s.hz_mean);
                metrics::gauge!("campo_region_low_share_ratio", "region" => r.clone()).set(s.low_share);
                if let Some(e) = s.evu {
                    metrics::gauge!("campo_region_evu_score", "region" => r.clone()).set(e);
                }
                signals.insert(r, s);
            }
        }
    }

    /// Takes committed bronze rows and closes what the watermark has passed.
    pub async fn input(&mut self, input: WindowInput) -> Result<(), LakeError> {
        let received = Instant::now();
        if !input.whole {
            // Other instances hold some partitions: this one would compute partial windows.
            if !self.warned_partial {
                tracing::warn!(
                    "this instance is not assigned every partition of the input topics: it computes no windows \
                     (the instance that holds them all does; with several, set windows.enabled = false on all but one)"
                );
                self.warned_partial = true;
            }
            self.generation = None;
            for state in &mut self.states {
                state.clear();
            }
        } else {
            if self.generation != Some(input.generation) {
                // A new assignment: rows committed meanwhile (by this instance or others) are
                // in bronze, as of this flush.
                self.load_open(input.bronze_versions).await?;
                self.generation = Some(input.generation);
                self.warned_partial = false;
            } else {
                self.update(Source::Readings, &input.readings).await?;
                self.update(Source::Activity, &input.activity).await?;
            }
            if let Some(through) = input.watermark {
                let trace = input.trace.map(|t| CloseTrace { received: Some(received), ..t });
                self.close(through, trace).await?;
            }
        }
        let rows = self.open_rows();
        self.stats.window_open_rows.store(rows, Ordering::Relaxed);
        metrics::gauge!("campo_window_open_rows").set(rows as f64);
        let bytes: usize = self.states.iter().map(State::bytes).sum();
        metrics::gauge!("campo_window_state_bytes").set(bytes as f64);
        if rows > self.config.windows.max_open_rows && !self.warned_size {
            tracing::warn!(rows, max = self.config.windows.max_open_rows, "open windows hold more rows than windows.max_open_rows: is a partition stuck behind the others?");
            self.warned_size = true;
        } else if rows <= self.config.windows.max_open_rows {
            self.warned_size = false;
        }
        Ok(())
    }

    /// Runs until the writer closes the channel.
    pub async fn run(mut self, mut rx: tokio::sync::mpsc::UnboundedReceiver<WindowInput>) -> Result<(), LakeError> {
        if let Some(kafka) = self.protect_kafka {
            self.protect = Some(ProtectStage::open(&self.lake, &self.config, self.stats.clone(), self.shutdown.clone(), kafka).await?);
        }
        while let Some(input) = rx.recv().await {
            if let Err(e) = self.input(input).await {
                if let Some(p) = self.protect.take() {
                    p.close().await;
                }
                return Err(e);
            }
        }
        if let Some(p) = self.protect.take() {
            p.close().await;
        }
        Ok(())
    }
}

/// Commits one derived table's rows of the windows ending at or before `through`.
async fn commit_derived(
    t: &mut Derived,
    rows: &RecordBatch,
    through: i64,
    stats: &Stats,
    shutdown: &Shutdown,
) -> Result<(), LakeError> {
    if t.through.is_some_and(|v| v >= through) {
        return Ok(());
    }
    // A table behind the other (crash between the two commits) writes only what it lacks.
    let rows = match t.through {
        Some(v) => after(rows, v),
        None => rows.clone(),
    };
    let commit = TableCommit {
        batches: vec![rows],
        txns: vec![OffsetTxn { topic: TXN_TOPIC.into(), partition: 0, expected: t.through, last: through }],
    };
    if let CommitOutcome::Refused { app_id, expected, found } = commit_retrying(&mut t.writer, &commit, stats, shutdown).await? {
        // Another instance closed these windows first: theirs stand.
        tracing::warn!(table = t.writer.name(), app_id, ?expected, ?found, "windows already written by another writer; keeping theirs");
    }
    t.through = Some(through);
    Ok(())
}

/// Rows of windows ending after `v`.
fn after(rows: &RecordBatch, v: i64) -> RecordBatch {
    let later = campo_lake::arrow::compute::not(&ended_by(rows, v)).expect("not");
    filter_record_batch(rows, &later).expect("filter")
}

/// Casts SQL output to a table's schema by column name, deriving `window_date`.
fn conform(batches: &[RecordBatch], schema: &SchemaRef) -> datafusion::error::Result<RecordBatch> {
    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
    if n == 0 {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    let all = concat_batches(&batches[0].schema(), batches)?;
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        if f.name() == "window_date" {
            let start = all.column_by_name("window_start").expect("window_start").as_primitive::<TimestampMicrosecondType>();
            let d: Date32Array = start.iter().map(|t| t.map(|t| t.div_euclid(86_400_000_000) as i32)).collect();
            cols.push(Arc::new(d));
        } else {
            let c = all
                .column_by_name(f.name())
                .ok_or_else(|| datafusion::error::DataFusionError::Plan(format!("pipeline SQL lacks column {}", f.name())))?;
            cols.push(cast(c, f.data_type())?);
        }
    }
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// A microsecond timestamp as RFC 3339.
pub fn fmt_us(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| us.to_string())
}
