//! `campo lake status|optimize|vacuum|checkpoint`: the lake's maintenance by hand (the engine
//! runs the same on a schedule, `[maintenance]`). Safe beside a running ingest.

use std::path::PathBuf;
use std::sync::Arc;

use campo_lake::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use campo_lake::arrow::datatypes::{DataType, Field, Schema};
use campo_lake::maintain::{Dates, OptimizeOptions};
use campo_lake::{Lake, TableKind};
use clap::{Args, Subcommand};

use crate::cli::PipelineArgs;
use crate::load_config::{self, ConfigProblem};

#[derive(Args, Debug)]
pub struct LakeArgs {
    /// Config file (TOML), for `lake.path`, `lake.storage_options` and `[maintenance]`.
    #[arg(long, env = "CAMPO_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Lake root: a path or object-store URL [config: lake.path].
    #[arg(long, env = "CAMPO__LAKE__PATH", global = true)]
    pub lake: Option<String>,
    /// Only this table (repeatable); every table by default.
    #[arg(long = "table", value_name = "NAME", global = true)]
    pub tables: Vec<String>,
    #[command(subcommand)]
    pub action: LakeAction,
}

#[derive(Subcommand, Debug)]
pub enum LakeAction {
    /// Per table: version, files, size, rows, the oldest and newest data, the last maintenance.
    Status {
        /// One JSON object per table, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Compact small files (bin-packing; --zorder also sorts rows by region).
    Optimize {
        /// Z-order by region: a query on one region then reads few files (rewrites every file of
        /// the chosen partitions).
        #[arg(long)]
        zorder: bool,
        /// Only the partition of this date (YYYY-MM-DD).
        #[arg(long, conflicts_with = "before")]
        date: Option<String>,
        /// Only the partitions before this date (YYYY-MM-DD).
        #[arg(long)]
        before: Option<String>,
        /// Target file size in MiB [config: maintenance.target_file_mb].
        #[arg(long)]
        target_file_mb: Option<u64>,
    },
    /// Delete the files no version within the retention references.
    Vacuum {
        /// Keep files younger than this, e.g. 7days, 1h, 0s [config: maintenance.vacuum_retention].
        #[arg(long)]
        retention: Option<humantime::Duration>,
        /// List what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete files no log entry names (left by a write stopped before its commit).
        /// A file being written is such a file until its commit: with a short retention, only
        /// when nothing writes the lake.
        #[arg(long)]
        full: bool,
    },
    /// Write a checkpoint of each table's log and remove expired log entries.
    Checkpoint,
    /// Retention and pseudonymization now (SPEC 8): delete bronze rows older than
    /// lifecycle.granular_retention and derived rows older than lifecycle.aggregate_retention;
    /// replace user_hash by its month's HMAC in bronze rows older than
    /// lifecycle.pseudonymize_after, and destroy the keys of months wholly done.
    Retain {
        /// The time to apply the ages from (RFC 3339) instead of the clock: a dry rehearsal,
        /// or a test.
        #[arg(long, value_name = "TIMESTAMP")]
        now: Option<String>,
    },
}

pub async fn run(args: LakeArgs) -> anyhow::Result<()> {
    let cfg = load_config::load(&PipelineArgs { config: args.config.clone(), lake: args.lake.clone(), ..Default::default() })?;
    let lake = Lake::new(&cfg.lake.path, cfg.lake.storage_options.clone().into_iter().collect())
        .map_err(|e| ConfigProblem(format!("config key `lake.path` ({}): {e}", cfg.lake.path)))?;
    let mut kinds = Vec::new();
    for name in &args.tables {
        let kind = TableKind::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
            ConfigProblem(format!("--table {name}: not a campo table ({})", campo_lake::guard::table_names().join(", ")))
        })?;
        kinds.push(kind);
    }
    let mut present = Vec::new();
    for kind in if kinds.is_empty() { TableKind::ALL.to_vec() } else { kinds } {
        if lake.open(kind.name()).await.is_ok() {
            present.push(kind);
        } else if !args.tables.is_empty() {
            return Err(ConfigProblem(format!("table {} is not in the lake at {}", kind.name(), lake.root())).into());
        }
    }
    if present.is_empty() {
        return Err(ConfigProblem(format!("{} is not a campo lake: none of its tables is there", lake.root())).into());
    }
    let m = &cfg.maintenance;
    match args.action {
        LakeAction::Status { json } => status(&lake, &present, json).await,
        LakeAction::Optimize { zorder, date, before, target_file_mb } => {
            let check = |d: &Option<String>, flag: &str| -> anyhow::Result<()> {
                if let Some(d) = d
                    && chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_err()
                {
                    return Err(ConfigProblem(format!("--{flag} {d}: not a date (YYYY-MM-DD)")).into());
                }
                Ok(())
            };
            check(&date, "date")?;
            check(&before, "before")?;
            let dates = match (date, before) {
                (Some(d), _) => Dates::On(d),
                (_, Some(b)) => Dates::Before(b),
                _ => Dates::All,
            };
            let opts = OptimizeOptions {
                target_size: target_file_mb.unwrap_or(m.target_file_mb).max(1) << 20,
                zorder_by_region: zorder,
                dates,
            };
            for kind in present {
                eprintln!("optimizing {} ...", kind.name());
                let r = lake.optimize(kind, &opts).await?;
                println!(
                    "{}: {} files ({} bytes) rewritten into {} ({} bytes) over {} partitions in {} ms{}",
                    r.table,
                    r.files_removed,
                    r.bytes_removed,
                    r.files_added,
                    r.bytes_added,
                    r.partitions,
                    r.elapsed_ms,
                    if r.retries > 0 { format!(", {} re-plans after concurrent commits", r.retries) } else { String::new() }
                );
            }
            Ok(())
        }
        LakeAction::Vacuum { retention, dry_run, full } => {
            let retention = retention.map_or(m.vacuum_retention, |d| *d);
            for kind in present {
                let r = lake.vacuum(kind, retention, dry_run, full).await?;
                let verb = if dry_run { "would delete" } else { "deleted" };
                println!("{}: {verb} {} files older than {} in {} ms", r.table, r.files_deleted, humantime::format_duration(retention), r.elapsed_ms);
            }
            Ok(())
        }
        LakeAction::Retain { now } => {
            let now = match now {
                Some(t) => chrono::DateTime::parse_from_rfc3339(&t)
                    .map_err(|e| ConfigProblem(format!("--now {t}: not an RFC 3339 timestamp ({e})")))?
                    .with_timezone(&chrono::Utc),
                None => chrono::Utc::now(),
            };
            let dir = cfg.lifecycle.keys_dir_for(&lake).map_err(|e| ConfigProblem(e.to_string()))?;
            let keys = campo_lake::lifecycle::PeriodKeys::open(&dir, &lake).map_err(|e| ConfigProblem(format!("config key `lifecycle.keys_dir`: {e}")))?;
            let policy = cfg.lifecycle.policy();
            for kind in present {
                let r = lake.retain(kind, now, &policy, &keys).await?;
                let destroyed = if r.keys_destroyed.is_empty() { String::new() } else { format!("; keys destroyed: {}", r.keys_destroyed.join(", ")) };
                println!("{}: {} rows past retention deleted, {} rows pseudonymized{destroyed}", r.table, r.deleted_rows, r.pseudonymized_rows);
            }
            Ok(())
        }
        LakeAction::Checkpoint => {
            for kind in present {
                let v = lake.checkpoint(kind).await?;
                println!("{}: checkpoint at version {v}", kind.name());
            }
            Ok(())
        }
    }
}

async fn status(lake: &Lake, kinds: &[TableKind], json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for kind in kinds {
        if let Some(s) = lake.status(*kind).await? {
            if json {
                println!("{}", serde_json::to_string(&s)?);
            }
            rows.push(s);
        }
    }
    if json {
        return Ok(());
    }
    let text = |f: &dyn Fn(&campo_lake::maintain::TableStatus) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let num = |f: &dyn Fn(&campo_lake::maintain::TableStatus) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(f)))
    };
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let schema = Arc::new(Schema::new(
        ["table", "version", "files", "size", "rows", "oldest", "newest", "last_optimize", "last_vacuum", "checkpoint"]
            .iter()
            .map(|n| {
                let t = if matches!(*n, "version" | "files" | "rows") { DataType::UInt64 } else { DataType::Utf8 };
                Field::new(*n, t, false)
            })
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            text(&|s| s.table.to_string()),
            num(&|s| s.version),
            num(&|s| s.files as u64),
            text(&|s| human_bytes(s.bytes)),
            num(&|s| s.rows),
            text(&|s| or_dash(&s.oldest)),
            text(&|s| or_dash(&s.newest)),
            text(&|s| or_dash(&s.last_optimize)),
            text(&|s| or_dash(&s.last_vacuum)),
            text(&|s| s.last_checkpoint.map_or("-".into(), |v| v.to_string())),
        ],
    )?;
    println!("lake at {}", lake.root());
    println!("{}", campo_lake::arrow::util::pretty::pretty_format_batches(&[batch])?);
    Ok(())
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
