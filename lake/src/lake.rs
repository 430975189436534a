//! The lake root: where each table lives, and creating tables that do not exist yet.

use std::collections::HashMap;

use deltalake::arrow::datatypes::SchemaRef;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::{StructField, StructType};
use deltalake::{DeltaTable, DeltaTableBuilder};
use url::Url;

use crate::error::{LakeError, Result, delta};
use crate::schema;

/// The tables campo writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableKind {
    Readings,
    Activity,
    Rejected,
    RegionMetrics1m,
    Evu1m,
    CollapseForecast,
    Alerts,
    /// The record of every erasure request (SPEC 8): no user identifier in clear.
    Erasures,
}

impl TableKind {
    pub const ALL: [TableKind; 8] = [
        TableKind::Readings,
        TableKind::Activity,
        TableKind::Rejected,
        TableKind::RegionMetrics1m,
        TableKind::Evu1m,
        TableKind::CollapseForecast,
        TableKind::Alerts,
        TableKind::Erasures,
    ];

    /// The tables whose rows belong to a user (an erasure deletes from them).
    pub const USER_ROWS: [TableKind; 3] = [TableKind::Readings, TableKind::Activity, TableKind::Rejected];

    pub fn name(self) -> &'static str {
        match self {
            TableKind::Readings => "readings",
            TableKind::Activity => "activity",
            TableKind::Rejected => "rejected",
            TableKind::RegionMetrics1m => "region_metrics_1m",
            TableKind::Evu1m => "evu_1m",
            TableKind::CollapseForecast => "collapse_forecast",
            TableKind::Alerts => "alerts",
            TableKind::Erasures => "erasures",
        }
    }

    pub fn schema(self) -> SchemaRef {
        match self {
            TableKind::Readings => schema::READINGS.clone(),
            TableKind::Activity => schema::ACTIVITY.clone(),
            TableKind::Rejected => schema::REJECTED.clone(),
            TableKind::RegionMetrics1m => schema::REGION_METRICS_1M.clone(),
            TableKind::Evu1m => schema::EVU_1M.clone(),
            TableKind::CollapseForecast => schema::COLLAPSE_FORECAST.clone(),
            TableKind::Alerts => schema::ALERTS.clone(),
            TableKind::Erasures => schema::ERASURES.clone(),
        }
    }

    /// The column that says how old a row is: event time for bronze, the window (or the
    /// close it was issued at) for the derived tables.
    pub fn time_column(self) -> &'static str {
        match self {
            TableKind::Readings | TableKind::Activity => "occurred_at",
            TableKind::Rejected => "rejected_at",
            TableKind::RegionMetrics1m | TableKind::Evu1m => "window_start",
            TableKind::CollapseForecast => "issued_at",
            TableKind::Alerts => "window_end",
            TableKind::Erasures => "requested_at",
        }
    }

    /// Whether the table has a `region` column (z-order by region pays there).
    pub fn has_region(self) -> bool {
        !matches!(self, TableKind::Rejected | TableKind::Erasures)
    }

    pub fn partition_columns(self) -> Vec<String> {
        match self {
            TableKind::Readings | TableKind::Activity => vec!["event_date".into()],
            TableKind::Rejected => vec!["rejected_date".into()],
            TableKind::RegionMetrics1m | TableKind::Evu1m => vec!["window_date".into()],
            TableKind::CollapseForecast => vec!["issued_date".into()],
            TableKind::Alerts => vec!["alert_date".into()],
            TableKind::Erasures => Vec::new(),
        }
    }
}

/// A lake root: a local directory or any object-store URL delta-rs accepts.
#[derive(Debug, Clone)]
pub struct Lake {
    root: Url,
    storage_options: HashMap<String, String>,
}

impl Lake {
    /// `location` is a path (relative paths resolve against the working directory) or a URL.
    pub fn new(location: &str, storage_options: HashMap<String, String>) -> Result<Self> {
        let bad = |reason: String| LakeError::BadLocation { location: location.into(), reason };
        let root = match Url::parse(location) {
            Ok(url) if url.scheme().len() > 1 => url,
            _ => {
                let path = std::path::absolute(location).map_err(|e| bad(e.to_string()))?;
                Url::from_directory_path(&path).map_err(|()| bad("not an absolute path".into()))?
            }
        };
        let mut root = root;
        if !root.path().ends_with('/') {
            root.set_path(&format!("{}/", root.path()));
        }
        Ok(Self { root, storage_options })
    }

    pub fn root(&self) -> &Url {
        &self.root
    }

    /// The local directory of the lake, when it is on the local filesystem.
    pub fn local_root(&self) -> Option<std::path::PathBuf> {
        (self.root.scheme() == "file").then(|| self.root.to_file_path().ok()).flatten()
    }

    pub fn table_url(&self, name: &str) -> Url {
        self.root.join(&format!("{name}/")).expect("table names are URL-safe")
    }

    fn ensure_local_dir(&self, name: &str) -> Result<()> {
        if let Some(root) = self.local_root() {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).map_err(|e| LakeError::BadLocation {
                location: dir.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// Opens an existing table (loaded at its latest version).
    pub async fn open(&self, name: &str) -> Result<DeltaTable> {
        DeltaTableBuilder::from_url(self.table_url(name))
            .map_err(delta(name))?
            .with_storage_options(self.storage_options.clone())
            .load()
            .await
            .map_err(delta(name))
    }

    /// Opens an existing table as of a version.
    pub async fn open_at(&self, name: &str, version: u64) -> Result<DeltaTable> {
        DeltaTableBuilder::from_url(self.table_url(name))
            .map_err(delta(name))?
            .with_storage_options(self.storage_options.clone())
            .with_version(version as _)
            .load()
            .await
            .map_err(delta(name))
    }

    /// Opens an existing table as it was at `at`: the latest version committed at or before it,
    /// or `None` when its first version is later (it did not exist yet).
    pub async fn open_as_of(&self, name: &str, at: chrono::DateTime<chrono::Utc>) -> Result<Option<DeltaTable>> {
        let table = DeltaTableBuilder::from_url(self.table_url(name))
            .map_err(delta(name))?
            .with_storage_options(self.storage_options.clone())
            .with_timestamp(at)
            .load()
            .await
            .map_err(delta(name))?;
        // delta-rs settles on the earliest version when every commit is later than `at`.
        let version = table.version().unwrap_or(0);
        let committed_ms = table.snapshot().map_err(delta(name))?.version_timestamp(version);
        Ok(committed_ms.is_none_or(|ms| ms <= at.timestamp_millis()).then_some(table))
    }

    /// Opens the table, creating it with its campo schema when it does not exist.
    pub async fn open_or_create(&self, kind: TableKind) -> Result<DeltaTable> {
        self.open_or_create_with(kind.name(), &kind.schema(), &kind.partition_columns()).await
    }

    pub async fn open_or_create_with(
        &self,
        name: &str,
        schema: &SchemaRef,
        partition_columns: &[String],
    ) -> Result<DeltaTable> {
        self.ensure_local_dir(name)?;
        let table = DeltaTableBuilder::from_url(self.table_url(name))
            .map_err(delta(name))?
            .with_storage_options(self.storage_options.clone())
            .build()
            .map_err(delta(name))?;
        let mut table = table;
        match table.load().await {
            Ok(()) => return Ok(table),
            Err(deltalake::DeltaTableError::NotATable(_)) => {}
            Err(e) => return Err(delta(name)(e)),
        }
        let kernel: StructType = schema.as_ref().try_into_kernel().map_err(|e| LakeError::Schema {
            table: name.into(),
            reason: e.to_string(),
        })?;
        let columns: Vec<StructField> = kernel.fields().cloned().collect();
        let created = table
            .create()
            .with_table_name(name)
            .with_columns(columns)
            .with_partition_columns(partition_columns.to_vec())
            .with_configuration_property(deltalake::TableProperty::CheckpointInterval, Some("50"))
            .await;
        match created {
            Ok(t) => Ok(t),
            // Another writer created it between our load and our create: open theirs.
            Err(_) if self.open(name).await.is_ok() => self.open(name).await,
            Err(e) => Err(delta(name)(e)),
        }
    }
}
