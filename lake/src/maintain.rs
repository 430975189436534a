//! Keeping the lake healthy under years of streaming writes: compaction of small files
//! (delta-rs optimize: bin-packing, or z-order by region), vacuum of files no version needs,
//! checkpoints, and the status of every table.
//!
//! Maintenance commits race the ingest's commits. They never lose or double a row: an optimize
//! commit only removes the files it rewrote and adds their rows back, so an append landing
//! meanwhile does not conflict with it (delta-rs checks); when it does conflict (another optimize,
//! a delete), the optimize is planned again from the new version, a few times, and then yields
//! to the next run. Vacuum only deletes files that no version within the retention references.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use deltalake::DeltaTable;
use deltalake::operations::optimize::OptimizeType;
use futures_util::TryStreamExt;

use crate::error::{LakeError, Result, delta};
use crate::lake::{Lake, TableKind};

/// Where one table stands.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableStatus {
    pub table: &'static str,
    pub version: u64,
    pub files: usize,
    pub bytes: u64,
    pub rows: u64,
    /// The earliest and latest value of the table's time column (event time for bronze, the
    /// window for aggregates), RFC 3339.
    pub oldest: Option<String>,
    pub newest: Option<String>,
    /// The last OPTIMIZE and VACUUM commits among the recent history, RFC 3339.
    pub last_optimize: Option<String>,
    pub last_vacuum: Option<String>,
    /// The version of the last checkpoint, if any.
    pub last_checkpoint: Option<u64>,
}

/// How far back in a table's history the last maintenance is looked for.
const HISTORY_LOOKBACK: usize = 5000;

/// What an optimize did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OptimizeReport {
    pub table: &'static str,
    pub files_removed: u64,
    pub files_added: u64,
    pub bytes_removed: u64,
    pub bytes_added: u64,
    pub partitions: u64,
    /// Plans that were redone because another writer committed a conflicting change.
    pub retries: u32,
    pub elapsed_ms: u64,
}

/// What a vacuum did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VacuumReport {
    pub table: &'static str,
    pub files_deleted: usize,
    pub dry_run: bool,
    pub elapsed_ms: u64,
}

/// Options of an optimize.
#[derive(Debug, Clone)]
pub struct OptimizeOptions {
    /// Files are bin-packed up to this size.
    pub target_size: u64,
    /// Z-order the rows by `region` (tables that have it), so a query on one region reads few
    /// files; rewrites every file of a partition, so it pays on partitions no longer written.
    pub zorder_by_region: bool,
    /// Which date partitions.
    pub dates: Dates,
}

/// Which date partitions (`YYYY-MM-DD`) an optimize touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dates {
    All,
    /// Those before a day, e.g. to leave the partition being written alone.
    Before(String),
    On(String),
}

impl Default for OptimizeOptions {
    fn default() -> Self {
        Self { target_size: 128 << 20, zorder_by_region: false, dates: Dates::All }
    }
}

fn iso_ms(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// Held while a maintenance operation rewrites files: see [`Lake::exclusive`].
pub struct MaintenanceLock {
    _file: Option<std::fs::File>,
}

impl Lake {
    /// Takes the lake's maintenance lock (an advisory lock on `<lake>/_campo/maintenance.lock`,
    /// shared by every process on the machine), waiting for it.
    ///
    /// Two compactions of the same files must never commit both: delta-rs lets a second
    /// `data_change = false` remove of a file through (as Spark does), and each would add its own
    /// merged copy of the rows. A DELETE racing a compaction could likewise bring deleted rows
    /// back in the compaction's output. So every rewrite (optimize, delete, update, vacuum) of a
    /// local lake runs under this lock; ingest appends do not take it (they never conflict with
    /// a rewrite). An object-store lake has no such lock: run by-hand maintenance there only
    /// when the engine's own is off (`maintenance.enabled = false`).
    pub async fn exclusive(&self) -> Result<MaintenanceLock> {
        let Some(root) = self.local_root() else { return Ok(MaintenanceLock { _file: None }) };
        let dir = root.join("_campo");
        let path = dir.join("maintenance.lock");
        let bad = |e: std::io::Error| LakeError::BadLocation { location: path.display().to_string(), reason: e.to_string() };
        std::fs::create_dir_all(&dir).map_err(bad)?;
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(bad)?;
        let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .map_err(|e| bad(std::io::Error::other(e)))?
            .map_err(bad)?;
        Ok(MaintenanceLock { _file: Some(file) })
    }

    /// The status of a table, `None` when the lake does not have it.
    pub async fn status(&self, kind: TableKind) -> Result<Option<TableStatus>> {
        let name = kind.name();
        let Ok(table) = self.open(name).await else { return Ok(None) };
        let snapshot = table.snapshot().map_err(delta(name))?;
        let (mut files, mut bytes) = (0usize, 0u64);
        for f in snapshot.log_data().iter() {
            files += 1;
            bytes += f.size().max(0) as u64;
        }
        let (mut last_optimize, mut last_vacuum) = (None, None);
        let mut history = table.history(Some(HISTORY_LOOKBACK));
        while let Some(info) = history.try_next().await.map_err(delta(name))? {
            let Some(ts) = info.timestamp else { continue };
            match info.operation.as_deref() {
                Some("OPTIMIZE") if last_optimize.is_none() => last_optimize = iso_ms(ts),
                Some("VACUUM END") if last_vacuum.is_none() => last_vacuum = iso_ms(ts),
                _ => {}
            }
            if last_optimize.is_some() && last_vacuum.is_some() {
                break;
            }
        }
        drop(history);
        let last_checkpoint = self.last_checkpoint(name).await;
        let col = kind.time_column();
        let ctx = self.session_of(&[kind]).await?;
        let q = |source| LakeError::Query { table: name.into(), source };
        let batches = ctx
            .sql(&format!(
                "SELECT count(*) AS n, CAST(min({col}) AS VARCHAR) AS lo, CAST(max({col}) AS VARCHAR) AS hi FROM {name}"
            ))
            .await
            .map_err(q)?
            .collect()
            .await
            .map_err(q)?;
        let (mut rows, mut oldest, mut newest) = (0, None, None);
        if let Some(b) = batches.first().filter(|b| b.num_rows() > 0) {
            use deltalake::arrow::array::{Array, AsArray};
            use deltalake::arrow::datatypes::Int64Type;
            rows = b.column(0).as_primitive::<Int64Type>().value(0) as u64;
            let text = |i: usize| {
                let c = deltalake::arrow::compute::cast(b.column(i), &deltalake::arrow::datatypes::DataType::Utf8).ok()?;
                let s = c.as_string::<i32>();
                s.is_valid(0).then(|| s.value(0).to_string())
            };
            oldest = text(1);
            newest = text(2);
        }
        Ok(Some(TableStatus {
            table: name,
            version: table.version().unwrap_or(0) as u64,
            files,
            bytes,
            rows,
            oldest,
            newest,
            last_optimize,
            last_vacuum,
            last_checkpoint,
        }))
    }

    /// The version `_last_checkpoint` names, when the table has one.
    async fn last_checkpoint(&self, name: &str) -> Option<u64> {
        let table = self.open(name).await.ok()?;
        use deltalake::logstore::object_store::ObjectStoreExt;
        let store = table.log_store().object_store(None);
        let path = deltalake::Path::from("_delta_log/_last_checkpoint");
        let bytes = store.get(&path).await.ok()?.bytes().await.ok()?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        v["version"].as_u64()
    }

    /// Compacts a table's small files (and z-orders them when asked). A conflicting commit by
    /// another writer makes it plan again from the new version, up to five times.
    pub async fn optimize(&self, kind: TableKind, opts: &OptimizeOptions) -> Result<OptimizeReport> {
        let name = kind.name();
        let started = Instant::now();
        let mut report = OptimizeReport { table: name, ..Default::default() };
        let target = NonZeroU64::new(opts.target_size.max(1)).expect("at least 1");
        let date_col = kind.partition_columns().into_iter().next();
        let _lock = self.exclusive().await?;
        loop {
            let table = self.open(name).await?;
            use deltalake::{FilterOp, FilterValue};
            let filters: Vec<deltalake::FilterLiteral<'_>> = match (&opts.dates, &date_col) {
                (Dates::Before(d), Some(col)) => vec![(col.as_str(), FilterOp::Lt, FilterValue::Scalar(d.as_str()))],
                (Dates::On(d), Some(col)) => vec![(col.as_str(), FilterOp::Eq, FilterValue::Scalar(d.as_str()))],
                _ => Vec::new(),
            };
            let kind_of = if opts.zorder_by_region && kind.has_region() {
                OptimizeType::ZOrder(vec!["region".into()])
            } else {
                OptimizeType::Compact
            };
            let r = optimize_once(table, kind_of, target, &filters).await;
            match r {
                Ok(m) => {
                    report.files_removed = m.num_files_removed;
                    report.files_added = m.num_files_added;
                    report.bytes_removed = m.files_removed.total_size.max(0) as u64;
                    report.bytes_added = m.files_added.total_size.max(0) as u64;
                    report.partitions = m.partitions_optimized;
                    break;
                }
                Err(e) if crate::writer::is_conflict(&e) && report.retries < 5 => {
                    report.retries += 1;
                    tracing::debug!(table = name, error = %e, "optimize conflicted with another commit; planning again");
                }
                Err(e) => return Err(LakeError::Delta { table: name.into(), source: e }),
            }
        }
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// Deletes the data files that a commit removed more than `retention` ago (a zero
    /// retention: every file the latest version does not reference; readers of older versions
    /// then fail), which erasure needs and a by-hand vacuum may ask for.
    ///
    /// `full` also deletes files no log entry names at all (a write or optimize stopped before
    /// its commit) once they are older than `retention`; a file being written right now is such
    /// a file until its commit lands, so `full` with a short retention is only safe when nothing
    /// writes the table.
    pub async fn vacuum(&self, kind: TableKind, retention: Duration, dry_run: bool, full: bool) -> Result<VacuumReport> {
        let lock = self.exclusive().await?;
        self.vacuum_locked(&lock, kind, retention, dry_run, full).await
    }

    /// [`Lake::vacuum`] under a lock the caller holds.
    pub(crate) async fn vacuum_locked(
        &self,
        _lock: &MaintenanceLock,
        kind: TableKind,
        retention: Duration,
        dry_run: bool,
        full: bool,
    ) -> Result<VacuumReport> {
        use deltalake::operations::vacuum::VacuumMode;
        let name = kind.name();
        let started = Instant::now();
        let table = self.open(name).await?;
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let (_, metrics) = table
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .with_mode(if full { VacuumMode::Full } else { VacuumMode::Lite })
            .with_dry_run(dry_run)
            .await
            .map_err(delta(name))?;
        Ok(VacuumReport {
            table: name,
            files_deleted: metrics.files_deleted.len(),
            dry_run,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Writes a checkpoint of the table's latest version and removes expired log entries.
    pub async fn checkpoint(&self, kind: TableKind) -> Result<u64> {
        let name = kind.name();
        let table = self.open(name).await?;
        deltalake::checkpoints::create_checkpoint(&table, None).await.map_err(delta(name))?;
        let _ = deltalake::checkpoints::cleanup_metadata(&table, None).await;
        Ok(table.version().unwrap_or(0) as u64)
    }
}

async fn optimize_once(
    table: DeltaTable,
    kind: OptimizeType,
    target: NonZeroU64,
    filters: &[deltalake::FilterLiteral<'_>],
) -> std::result::Result<deltalake::operations::optimize::Metrics, deltalake::DeltaTableError> {
    let (_, metrics) = table
        .optimize()
        .with_type(kind)
        .with_target_size(target)
        .with_filters(filters)
        .with_writer_properties(crate::writer::writer_properties())
        .with_max_concurrent_tasks(2)
        .await?;
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::tests::{commit, rejected_writer, temp_lake};
    use crate::CommitOutcome;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_compactions_at_once_never_double_a_row() {
        let (_dir, lake) = temp_lake();
        let mut w = rejected_writer(&lake).await;
        let mut last = None;
        for i in 0..20i64 {
            let offsets: Vec<i64> = (i * 5..i * 5 + 5).collect();
            assert!(matches!(w.commit(&commit(&offsets, last)).await.unwrap(), CommitOutcome::Committed { .. }));
            last = offsets.last().copied();
        }
        // delta-rs lets two compactions of the same files both commit; the lake's lock makes
        // the second wait and find nothing left to do.
        let opts = OptimizeOptions::default();
        let (a, b) = tokio::join!(lake.optimize(TableKind::Rejected, &opts), lake.optimize(TableKind::Rejected, &opts));
        let removed = a.unwrap().files_removed + b.unwrap().files_removed;
        assert_eq!(removed, 20, "the 20 files were compacted once");
        let n = lake.query("SELECT count(*) AS n, count(DISTINCT \"offset\") AS d FROM rejected").await.unwrap();
        use deltalake::arrow::array::AsArray;
        use deltalake::arrow::datatypes::Int64Type;
        assert_eq!(n[0].column(0).as_primitive::<Int64Type>().value(0), 100);
        assert_eq!(n[0].column(1).as_primitive::<Int64Type>().value(0), 100);
        assert_eq!(lake.status(TableKind::Rejected).await.unwrap().unwrap().files, 1);
    }
}
