//! Lake maintenance on a schedule, beside the ingest: every `maintenance.interval` a pass
//! compacts every table's small files (bin-packing), vacuums the files no version within
//! `maintenance.vacuum_retention` needs, and checkpoints the log; once a day, when the UTC date
//! turns, the partitions of the day before are z-ordered by region (they are written no more,
//! so the rewrite is done once and a query on one region then reads few files).
//!
//! A pass never breaks exactly-once: see `campo_lake::maintain`. A table that fails is logged
//! and retried at the next pass; the ingest never waits for maintenance.

use campo_lake::lifecycle::{PeriodKeys, Policy, RetainReport};
use campo_lake::maintain::{Dates, OptimizeOptions, OptimizeReport, VacuumReport};
use campo_lake::{Lake, TableKind};

use crate::config::{LifecycleConfig, MaintenanceConfig};
use crate::ingest::Shutdown;

/// What one pass did to one table.
#[derive(Debug, Clone)]
pub struct PassReport {
    pub retained: Option<RetainReport>,
    pub optimize: Option<OptimizeReport>,
    pub zorder: Option<OptimizeReport>,
    pub vacuum: Option<VacuumReport>,
    pub checkpoint: Option<u64>,
}

/// One pass over every table the lake has; `zorder_day` (`YYYY-MM-DD`) also z-orders that
/// day's partition by region. Retention and pseudonymization run first when `retain` is given.
pub async fn pass(
    lake: &Lake,
    cfg: &MaintenanceConfig,
    zorder_day: Option<&str>,
    retain: Option<(&Policy, &PeriodKeys)>,
) -> Vec<(TableKind, PassReport)> {
    let mut out = Vec::new();
    for kind in TableKind::ALL {
        if lake.open(kind.name()).await.is_err() {
            continue;
        }
        let name = kind.name();
        let retained = match retain {
            Some((policy, keys)) => log_err(name, "retention", lake.retain(kind, chrono::Utc::now(), policy, keys).await),
            None => None,
        };
        let compact = OptimizeOptions { target_size: cfg.target_file_mb << 20, zorder_by_region: false, dates: Dates::All };
        let optimize = log_err(name, "optimize", lake.optimize(kind, &compact).await);
        let zorder = match zorder_day {
            Some(day) if kind.has_region() => {
                let z = OptimizeOptions { zorder_by_region: true, dates: Dates::On(day.to_string()), ..compact };
                log_err(name, "z-order", lake.optimize(kind, &z).await)
            }
            _ => None,
        };
        let vacuum = log_err(name, "vacuum", lake.vacuum(kind, cfg.vacuum_retention, false, false).await);
        let checkpoint = log_err(name, "checkpoint", lake.checkpoint(kind).await);
        if let Some(o) = &optimize {
            metrics::counter!("campo_maintenance_files_compacted_total", "table" => name).increment(o.files_removed);
        }
        if let Some(v) = &vacuum {
            metrics::counter!("campo_maintenance_files_vacuumed_total", "table" => name).increment(v.files_deleted as u64);
        }
        tracing::info!(
            table = name,
            compacted = optimize.as_ref().map_or(0, |o| o.files_removed),
            into = optimize.as_ref().map_or(0, |o| o.files_added),
            zordered = zorder.as_ref().map_or(0, |o| o.files_removed),
            vacuumed = vacuum.as_ref().map_or(0, |v| v.files_deleted),
            expired = retained.as_ref().map_or(0, |r| r.deleted_rows),
            pseudonymized = retained.as_ref().map_or(0, |r| r.pseudonymized_rows),
            "maintenance pass"
        );
        out.push((kind, PassReport { retained, optimize, zorder, vacuum, checkpoint }));
    }
    metrics::counter!("campo_maintenance_passes_total").increment(1);
    out
}

fn log_err<T>(table: &str, what: &str, r: campo_lake::Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(table, error = %e, "{what} failed; the next maintenance pass retries");
            None
        }
    }
}

/// Runs a pass every `cfg.interval` until shutdown (the first one after one interval).
pub async fn run_scheduled(lake: Lake, cfg: MaintenanceConfig, lifecycle: LifecycleConfig, shutdown: Shutdown) {
    let mut zordered_day: Option<chrono::NaiveDate> = None;
    let policy = lifecycle.policy();
    let keys = match lifecycle.keys_dir_for(&lake).map_err(|e| e.to_string()).and_then(|d| PeriodKeys::open(d, &lake).map_err(|e| e.to_string())) {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::error!(error = %e, "retention and pseudonymization are off until the key directory can be used");
            None
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cfg.interval) => {}
            _ = shutdown.triggered() => return,
        }
        let today = chrono::Utc::now().date_naive();
        // The day before is z-ordered once, at the first pass of a new day.
        let zorder = cfg.zorder_by_region && zordered_day != Some(today);
        let day = today.pred_opt().unwrap_or(today).format("%Y-%m-%d").to_string();
        pass(&lake, &cfg, zorder.then_some(day.as_str()), keys.as_ref().map(|k| (&policy, k))).await;
        if zorder {
            zordered_day = Some(today);
        }
    }
}
