//! The bronze ingest: Kafka records to the `readings`, `activity` and `rejected` Delta tables,
//! exactly once.
//!
//! Two workers share the load on purpose (one core each): the consumer thread polls Kafka,
//! decodes, validates and deduplicates records into Arrow builders and cuts a [`Flush`] every
//! `flush_interval` or `max_batch_rows`; the writer task encodes Parquet and commits. At most
//! `max_pending_flushes` flushes are in flight: past that the consumer stops taking records
//! (and keeps polling, so it stays in the group) and librdkafka stops fetching once its
//! prefetch queue is full, which bounds memory when the lake is slower than the topic.
//!
//! The protocol (see docs/DESIGN.md):
//! 1. Each flush commits `rejected` first (with the DLQ records), sends the DLQ records to Kafka,
//!    then commits `readings` and `activity`, each carrying one txn action per partition.
//! 2. The primary table of a topic (`readings` or `activity`) holds its consumer position; on
//!    assignment and after a refused commit the consumer seeks every partition to the position
//!    in the Delta log, never to consumer-group offsets (those are committed only for lag tools).
//! 3. A commit whose expected txn versions differ from the log is refused; the consumer then
//!    drops everything buffered and in flight, forgets their dedup keys, and seeks again.

pub mod batch;
mod consumer;
mod erased;
mod positions;
mod state;
mod writer;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use campo_lake::{Lake, TableCommit};

use crate::config::Config;
use crate::contract::Reason;
use crate::rows::RejectedRecord;
use crate::windows::{RegionSignal, WindowStage};

pub(crate) use writer::commit_retrying;
pub use positions::read_positions;
pub use state::{IngestState, PartitionPosition};

/// Outcome counts of the records a flush covers, indexed by contract (0 readings, 1 activity).
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub bronze: [u64; 2],
    pub duplicate: [u64; 2],
    /// Of `bronze`, rows flagged `late` (their window was already closed).
    pub late: [u64; 2],
    /// Records of erased users (SPEC 8), dropped.
    pub erased: [u64; 2],
    pub rejected: BTreeMap<(usize, Reason), u64>,
}

/// One unit of commit: everything consumed between two cuts.
#[derive(Debug)]
pub struct Flush {
    pub epoch: u64,
    /// The assignment generation the flush was cut in (see `IngestState::generation`).
    pub generation: u64,
    /// Whether the assignment covered every partition of both input topics.
    pub whole: bool,
    pub readings: TableCommit,
    pub activity: TableCommit,
    pub rejected: TableCommit,
    /// Records to send to the DLQ topic once `rejected` is committed.
    pub dlq: Vec<RejectedRecord>,
    /// Dedup fingerprints admitted for readings / activity rows.
    pub keys: [Vec<u64>; 2],
    pub counts: Counts,
    /// `(topic, partition, last offset)` covered.
    pub positions: Vec<(String, i32, i64)>,
    /// End of the last closed window at the cut: every non-late row of those windows is in
    /// this flush or an earlier one.
    pub watermark: Option<i64>,
    /// The path of the latest window close so far: when the watermark last advanced and
    /// when this flush was cut (the writer adds its own steps).
    pub trace: Option<CloseTrace>,
}

impl Flush {
    /// Rows of all three tables.
    pub fn rows(&self) -> usize {
        self.readings.rows() + self.activity.rows() + self.rejected.rows()
    }
}

/// What the writer tells the consumer.
#[derive(Debug)]
pub enum WriterEvent {
    Committed { positions: Vec<(String, i32, i64)> },
    /// The flush (or part of it) was not committed: forget these keys. `refused` asks the
    /// consumer to resynchronise with the lake.
    Dropped { keys: Vec<u64>, refused: bool },
}

/// Live figures of a running ingest, for progress output, readiness and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub kafka_ready: AtomicBool,
    pub lake_ready: AtomicBool,
    pub assigned_partitions: AtomicUsize,
    pub consumed: AtomicU64,
    /// Of `consumed`, records read one by one from the consumer queue instead of in batches
    /// (partitions not routed to the batch queue; none in normal operation).
    pub unbatched: AtomicU64,
    pub bronze: [AtomicU64; 2],
    pub duplicate: [AtomicU64; 2],
    pub dlq: [AtomicU64; 2],
    /// Records of erased users dropped (SPEC 8): a replay does not bring them back.
    pub erased: [AtomicU64; 2],
    pub flushes: AtomicU64,
    pub refused: AtomicU64,
    pub consumer_lag: AtomicI64,
    pub buffered_rows: AtomicUsize,
    pub pending_flushes: AtomicUsize,
    pub dedup_keys: AtomicUsize,
    /// Valid, unique events stored with `late = true` (readings, activity).
    pub late: [AtomicU64; 2],
    /// End of the last closed window (µs), 0 before any.
    pub closed_through: AtomicI64,
    pub windows_closed: AtomicU64,
    pub window_open_rows: AtomicUsize,
    /// The latest closed window of every region.
    pub signals: Mutex<BTreeMap<String, RegionSignal>>,
    /// Every region's protective level and latest forecast.
    pub protect: Mutex<BTreeMap<String, crate::protect::RegionProtect>>,
    /// Recent level changes (the last 100), for live output.
    pub protect_changes: Mutex<std::collections::VecDeque<crate::protect::LevelChange>>,
    /// The path of the window close that raised each recent change (the last 10,000), by
    /// `event_id`, for the close-to-event latency benchmark.
    pub protect_traces: Mutex<std::collections::HashMap<String, CloseTrace>>,
    /// Close-to-visible seconds of recent window closes, and seconds spent in SQL.
    pub window_times: Mutex<WindowTimes>,
}

/// When a window close passed each step on the way to its `system.protect` events.
#[derive(Debug, Clone, Copy)]
pub struct CloseTrace {
    /// The watermark passed the window's end (the consumer cut a flush at once).
    pub advanced: std::time::Instant,
    /// The consumer cut the flush holding the window's last rows.
    pub cut: Option<std::time::Instant>,
    /// The writer began committing that flush (it may have waited behind earlier ones).
    pub started: Option<std::time::Instant>,
    /// The flush holding the window's last rows was committed to bronze.
    pub committed: Option<std::time::Instant>,
    /// The window stage began the input that closes the window.
    pub received: Option<std::time::Instant>,
    /// The signal SQL of the close finished.
    pub computed: Option<std::time::Instant>,
    /// Forecasts and the protective state machine finished.
    pub evaluated: Option<std::time::Instant>,
    /// The changes were committed to `alerts` and handed to the outbox.
    pub alerted: Option<std::time::Instant>,
    /// The broker acknowledged the event.
    pub acked: Option<std::time::Instant>,
}

impl CloseTrace {
    /// What each entry of [`CloseTrace::steps`] marks.
    pub const STEPS: [&str; 8] = [
        "flush cut",
        "writer began the flush",
        "bronze flush committed",
        "window stage took the input",
        "signal SQL done",
        "forecasts + state machine done",
        "alerts committed",
        "broker acknowledged",
    ];

    pub fn new(advanced: std::time::Instant) -> Self {
        Self {
            advanced,
            cut: None,
            started: None,
            committed: None,
            received: None,
            computed: None,
            evaluated: None,
            alerted: None,
            acked: None,
        }
    }

    /// Seconds from the close to each step of [`CloseTrace::STEPS`] (None where not reached).
    pub fn steps(&self) -> [Option<f64>; 8] {
        [self.cut, self.started, self.committed, self.received, self.computed, self.evaluated, self.alerted, self.acked]
            .map(|t| t.map(|t| t.saturating_duration_since(self.advanced).as_secs_f64()))
    }
}

/// Timing of window closes, kept for progress output and the benchmark.
#[derive(Debug, Default)]
pub struct WindowTimes {
    /// Seconds from the watermark passing a window's end to its rows being committed (the last
    /// 100,000 closes).
    pub close_to_visible: std::collections::VecDeque<f64>,
    /// Total seconds spent running the signal SQL at window close.
    pub sql_seconds: f64,
    /// Total seconds spent folding committed events into the window state (SQL too).
    pub state_seconds: f64,
}

impl Stats {
    pub(crate) fn record_window_close(&self, through: i64, visible: Option<f64>, sql_secs: f64) {
        self.closed_through.store(through, Ordering::Relaxed);
        self.windows_closed.fetch_add(1, Ordering::Relaxed);
        let mut t = self.window_times.lock().expect("window times");
        if let Some(v) = visible {
            if t.close_to_visible.len() >= 100_000 {
                t.close_to_visible.pop_front();
            }
            t.close_to_visible.push_back(v);
        }
        t.sql_seconds += sql_secs;
    }

    /// Notes the broker's acknowledgement of a `system.protect` event.
    pub(crate) fn record_protect_acked(&self, event_id: &str) {
        if let Some(t) = self.protect_traces.lock().expect("protect traces").get_mut(event_id) {
            t.acked = Some(std::time::Instant::now());
        }
    }

    pub(crate) fn record_state_update(&self, secs: f64) {
        self.window_times.lock().expect("window times").state_seconds += secs;
    }

    pub fn committed_total(&self) -> u64 {
        (0..2)
            .map(|i| {
                self.bronze[i].load(Ordering::Relaxed)
                    + self.duplicate[i].load(Ordering::Relaxed)
                    + self.dlq[i].load(Ordering::Relaxed)
                    + self.erased[i].load(Ordering::Relaxed)
            })
            .sum()
    }
}

/// Stop signal shared by the consumer thread and the writer.
#[derive(Debug, Default, Clone)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// Resolves once [`Shutdown::trigger`] was called (checked every 100 ms: the flag is shared
    /// with the consumer thread, which polls it).
    pub async fn triggered(&self) {
        while !self.is_triggered() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Everything a running ingest needs, shared by its parts.
pub(crate) struct Shared {
    pub config: Config,
    pub lake: Lake,
    pub stats: Arc<Stats>,
    pub shutdown: Shutdown,
    pub runtime: tokio::runtime::Handle,
}

/// Errors that stop an ingest.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Lake(#[from] campo_lake::LakeError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("consumer thread: {0}")]
    Thread(String),
}

/// Triggers the shutdown when dropped, as the task holding it ends or unwinds.
struct StopOnDrop(Shutdown);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.trigger();
    }
}

/// Runs the bronze ingest until `shutdown` is triggered; everything consumed by then is
/// committed before this returns.
pub async fn run(config: Config, stats: Arc<Stats>, shutdown: Shutdown) -> Result<(), IngestError> {
    let storage: std::collections::HashMap<String, String> =
        config.lake.storage_options.clone().into_iter().collect();
    let lake = Lake::new(&config.lake.path, storage)?;
    // Create the tables up front so readers see them and positions can be read.
    for kind in campo_lake::TableKind::ALL {
        lake.open_or_create(kind).await?;
    }
    // The dedup set is rebuilt from bronze at every assignment (see consumer.rs).
    let dedup = crate::dedup::Dedup::from_config(&config.ingest);
    // The window stage resumes from the last window written; it rebuilds the open windows'
    // state from bronze when the first flush of an assignment that holds every partition
    // reaches it.
    let (window_tx, stage) = if config.windows.enabled {
        let stage = WindowStage::open(&lake, &config, stats.clone(), shutdown.clone()).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Some(tx), Some((stage, rx)))
    } else {
        (None, None)
    };
    let closed_through = stage.as_ref().and_then(|(s, _)| s.resume_through());
    let stage = stage.map(|(s, rx)| {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let r = s.run(rx).await;
            if let Err(e) = &r {
                tracing::error!(error = %e, "signal pipelines failed; stopping");
                shutdown.trigger();
            }
            r
        })
    });
    // Compaction, vacuum and checkpoints beside the ingest (see crate::maintenance).
    let maintenance = config.maintenance.enabled.then(|| {
        tokio::spawn(crate::maintenance::run_scheduled(lake.clone(), config.maintenance.clone(), config.lifecycle.clone(), shutdown.clone()))
    });
    let shared = Arc::new(Shared {
        config,
        lake,
        stats,
        shutdown,
        runtime: tokio::runtime::Handle::current(),
    });
    let (flush_tx, flush_rx) = tokio::sync::mpsc::channel(shared.config.ingest.max_pending_flushes);
    let (event_tx, event_rx) = std::sync::mpsc::channel();
    // However the writer ends (an error opening its tables or its DLQ producer, a panic), the
    // ingest stops: the consumer would otherwise hold its flush for a writer that is gone.
    let writer = {
        let (stop, shared) = (StopOnDrop(shared.shutdown.clone()), shared.clone());
        tokio::spawn(async move {
            let _stop = stop;
            writer::run(shared, flush_rx, event_tx, window_tx).await
        })
    };
    let consumer_shared = shared.clone();
    let consumer = std::thread::Builder::new()
        .name("campo-consumer".into())
        .spawn(move || consumer::run(consumer_shared, dedup, closed_through, flush_tx, event_rx))
        .map_err(|e| IngestError::Thread(e.to_string()))?;
    let writer_result = writer.await.map_err(|e| IngestError::Thread(format!("lake writer: {e}"))).and_then(|r| r);
    let consumer_result = tokio::task::spawn_blocking(move || consumer.join())
        .await
        .map_err(|e| IngestError::Thread(e.to_string()))?
        .map_err(|_| IngestError::Thread("consumer thread panicked".into()))?;
    let stage_result = match stage {
        Some(s) => s.await.map_err(|e| IngestError::Thread(e.to_string()))?.map_err(IngestError::from),
        None => Ok(()),
    };
    if let Some(m) = maintenance {
        // A pass in progress finishes its table's commit; later passes do not start.
        let _ = m.await;
    }
    writer_result?;
    stage_result?;
    consumer_result
}
