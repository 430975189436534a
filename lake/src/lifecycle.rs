//! Retention and pseudonymization (SPEC 8).
//!
//! - Bronze rows (`readings`, `activity`; `rejected` by `rejected_at`) older than
//!   `granular_retention` are deleted; derived rows older than `aggregate_retention` too.
//! - In bronze rows older than `pseudonymize_after`, `user_hash` is replaced by
//!   HMAC-SHA256(period key, user_hash), hex. The period is the calendar month (UTC) of the row;
//!   its key is created when first needed and destroyed once every row of that month is
//!   pseudonymized, after which nobody can link those rows to a user again. The same user keeps
//!   one pseudonym within a month, so per-month analyses still count distinct users.
//!
//! Keys live outside the lake root, in a directory of their own (owner-only files), with the
//! point up to which each table is pseudonymized (`pseudonymized.json`), so no row is hashed
//! twice. Every step is a Delta DELETE or UPDATE: the set of other rows does not change, and
//! the commit records only the function's name, never a key or an identifier.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use deltalake::arrow::array::{Array, ArrayRef, AsArray, StringArray};
use deltalake::arrow::datatypes::DataType;
use deltalake::datafusion::common::ScalarValue;
use deltalake::datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility, col, lit,
};
use deltalake::datafusion::prelude::SessionContext;
use hmac::{KeyInit, Mac};

use crate::error::{LakeError, Result, delta};
use crate::lake::{Lake, TableKind};

/// How many times a DELETE or UPDATE runs again when a concurrent commit (an ingest's append
/// every flush) conflicts with it; each run reads the latest version.
const RERUNS: u32 = 30;

/// The ages that decide a row's fate.
#[derive(Debug, Clone)]
pub struct Policy {
    pub granular_retention: Duration,
    pub pseudonymize_after: Duration,
    pub aggregate_retention: Duration,
}

/// What one retention pass did to one table.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RetainReport {
    pub table: &'static str,
    pub deleted_rows: u64,
    pub pseudonymized_rows: u64,
    /// Months (`YYYY-MM`) whose key was destroyed by this pass.
    pub keys_destroyed: Vec<String>,
}

/// The period keys and the pseudonymization state, in a directory outside the lake.
#[derive(Debug, Clone)]
pub struct PeriodKeys {
    dir: PathBuf,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> LakeError {
    LakeError::BadLocation { location: path.display().to_string(), reason: format!("{what}: {e}") }
}

impl PeriodKeys {
    /// Opens (creating, owner-only) the key directory; it must not be inside the lake root.
    pub fn open(dir: impl Into<PathBuf>, lake: &Lake) -> Result<Self> {
        let dir: PathBuf = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| io("creating the key directory", &dir, e))?;
        let dir = dir.canonicalize().map_err(|e| io("resolving the key directory", &dir, e))?;
        if let Some(root) = lake.local_root().and_then(|r| r.canonicalize().ok())
            && dir.starts_with(&root)
        {
            return Err(LakeError::BadLocation {
                location: dir.display().to_string(),
                reason: "pseudonymization keys must live outside the lake root".into(),
            });
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        Ok(Self { dir })
    }

    fn key_path(&self, month: &str) -> PathBuf {
        self.dir.join(format!("pseudonym-{month}.key"))
    }

    /// The key of a month, created when it does not exist yet.
    fn key(&self, month: &str) -> Result<[u8; 32]> {
        Ok(read_key(&self.key_path(month), true)?.expect("created when missing"))
    }

    /// The lake's erasure key, created when `create` and it does not exist yet. It is never
    /// destroyed: the ingest recognizes erased users by it as long as a topic may be replayed.
    pub fn erasure_key(&self, create: bool) -> Result<Option<[u8; 32]>> {
        read_key(&self.dir.join("erasure.key"), create)
    }

    /// Where the keys live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the key of a month still exists.
    pub fn has_key(&self, month: &str) -> bool {
        self.key_path(month).exists()
    }

    fn destroy(&self, month: &str) -> Result<bool> {
        let path = self.key_path(month);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("destroying a key", &path, e)),
        }
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("pseudonymized.json")
    }

    /// Per table, the time before which every row is pseudonymized (µs).
    fn state(&self) -> BTreeMap<String, i64> {
        std::fs::read(self.state_path()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    fn set_state(&self, table: &str, through_us: i64) -> Result<()> {
        let mut s = self.state();
        s.insert(table.to_string(), through_us);
        write_private(&self.state_path(), &serde_json::to_vec_pretty(&s).expect("a map serializes"))
    }
}

/// A 32-byte hex key file; created (owner-only) when missing and `create`.
fn read_key(path: &Path, create: bool) -> Result<Option<[u8; 32]>> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let bytes = hex::decode(text.trim()).map_err(|e| io("reading a key", path, std::io::Error::other(e)))?;
        let key = bytes.try_into().map_err(|_| io("reading a key", path, std::io::Error::other("not 32 bytes")))?;
        return Ok(Some(key));
    }
    if !create {
        return Ok(None);
    }
    let key: [u8; 32] = rand::random();
    write_private(path, hex::encode(key).as_bytes())?;
    Ok(Some(key))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let mut f = o.open(&tmp).map_err(|e| io("writing", &tmp, e))?;
        f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| io("writing", &tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io("writing", path, e))
}

/// HMAC-SHA256(key, value), lowercase hex.
pub fn pseudonym(key: &[u8; 32], value: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// `campo_pseudonym(user_hash)`: the month's HMAC of the value (the key is in the function,
/// never in the plan's text).
#[derive(Debug, PartialEq, Eq, Hash)]
struct PseudonymUdf {
    signature: Signature,
    key: [u8; 32],
}

impl ScalarUDFImpl for PseudonymUdf {
    fn name(&self) -> &str {
        "campo_pseudonym"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> deltalake::datafusion::common::Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> deltalake::datafusion::common::Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let values = deltalake::arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
        let out: StringArray = values.as_string::<i32>().iter().map(|v| v.map(|s| pseudonym(&self.key, s))).collect();
        Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
    }
}

fn ts(us: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(Some(us), Some("UTC".into())))
}

fn month_of(us: i64) -> (i32, u32) {
    let t = DateTime::from_timestamp_micros(us).unwrap_or_default();
    (t.year(), t.month())
}

fn month_start_us(y: i32, m: u32) -> i64 {
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().map_or(i64::MIN, |t| t.timestamp_micros())
}

fn next_month(y: i32, m: u32) -> (i32, u32) {
    if m == 12 { (y + 1, 1) } else { (y, m + 1) }
}

impl Lake {
    /// One retention pass over a table as of `now` (the caller's clock, so tests control it).
    pub async fn retain(&self, kind: TableKind, now: DateTime<Utc>, policy: &Policy, keys: &PeriodKeys) -> Result<RetainReport> {
        let name = kind.name();
        let mut report = RetainReport { table: name, ..Default::default() };
        if kind == TableKind::Erasures {
            // The record of erasures is kept: it is what keeps a replay from bringing rows back.
            return Ok(report);
        }
        let now_us = now.timestamp_micros();
        let age = |d: Duration| now_us.saturating_sub(d.as_micros().min(i64::MAX as u128) as i64);
        let bronze = matches!(kind, TableKind::Readings | TableKind::Activity | TableKind::Rejected);
        let cutoff = age(if bronze { policy.granular_retention } else { policy.aggregate_retention });
        report.deleted_rows = self.delete_where(kind, col(kind.time_column()).lt(ts(cutoff))).await?;
        if matches!(kind, TableKind::Readings | TableKind::Activity) {
            self.pseudonymize(kind, age(policy.pseudonymize_after), keys, &mut report).await?;
        }
        Ok(report)
    }

    /// Replaces `user_hash` in the rows older than `before_us` not yet pseudonymized, month by
    /// month, then destroys the keys of the months now wholly done.
    async fn pseudonymize(&self, kind: TableKind, before_us: i64, keys: &PeriodKeys, report: &mut RetainReport) -> Result<()> {
        let name = kind.name();
        let col_t = kind.time_column();
        let mut state = keys.state();
        let from_us = match state.get(name) {
            Some(t) => *t,
            None => {
                // First pass: from the oldest row there is.
                let ctx = self.session_of(&[kind]).await?;
                let q = |source| LakeError::Query { table: name.into(), source };
                let b = ctx
                    .sql(&format!("SELECT CAST(min({col_t}) AS BIGINT) FROM {name}"))
                    .await
                    .map_err(q)?
                    .collect()
                    .await
                    .map_err(q)?;
                let oldest = b.first().and_then(|b| {
                    let c = deltalake::arrow::compute::cast(b.column(0), &DataType::Int64).ok()?;
                    let c = c.as_primitive::<deltalake::arrow::datatypes::Int64Type>();
                    (c.len() > 0 && c.is_valid(0)).then(|| c.value(0))
                });
                match oldest {
                    Some(t) => t,
                    None => return Ok(()),
                }
            }
        };
        if from_us >= before_us {
            return Ok(());
        }
        let (mut y, mut m) = month_of(from_us);
        while month_start_us(y, m) < before_us {
            let (ny, nm) = next_month(y, m);
            let lo = from_us.max(month_start_us(y, m));
            let hi = before_us.min(month_start_us(ny, nm));
            let label = format!("{y:04}-{m:02}");
            if lo < hi {
                let key = keys.key(&label)?;
                let udf = ScalarUDF::from(PseudonymUdf {
                    signature: Signature::new(TypeSignature::Any(1), Volatility::Immutable),
                    key,
                });
                let predicate = col(col_t).gt_eq(ts(lo)).and(col(col_t).lt(ts(hi)));
                report.pseudonymized_rows +=
                    self.update_where(kind, predicate, "user_hash", udf.call(vec![col("user_hash")]), udf).await?;
                keys.set_state(name, hi)?;
                state.insert(name.to_string(), hi);
            }
            // Every row of the month is done once the cutoff is past its end.
            if hi == month_start_us(ny, nm) && keys.destroy(&label)? {
                report.keys_destroyed.push(label);
            }
            (y, m) = (ny, nm);
        }
        Ok(())
    }

    /// Deletes the rows matching `predicate` (a conflicting commit makes it try again);
    /// returns how many.
    pub async fn delete_where(&self, kind: TableKind, predicate: Expr) -> Result<u64> {
        let lock = self.exclusive().await?;
        self.delete_locked(&lock, kind, predicate).await
    }

    /// [`Lake::delete_where`] under a lock the caller holds.
    pub(crate) async fn delete_locked(&self, _lock: &crate::maintain::MaintenanceLock, kind: TableKind, predicate: Expr) -> Result<u64> {
        self.rerun_on_conflict(kind, |table| {
            let b = table.delete().with_predicate(predicate.clone()).with_writer_properties(crate::writer::writer_properties());
            async move { b.await.map(|(_, m)| m.num_deleted_rows.unwrap_or(0) as u64) }
        })
        .await
    }

    /// Runs `op` (a DELETE or UPDATE) on the table's latest version, and again after a short
    /// pause while a concurrent commit conflicts with it, up to [`RERUNS`] times.
    async fn rerun_on_conflict<T, Fut>(&self, kind: TableKind, mut op: impl FnMut(deltalake::DeltaTable) -> Fut) -> Result<T>
    where
        Fut: std::future::Future<Output = std::result::Result<T, deltalake::DeltaTableError>>,
    {
        let name = kind.name();
        for attempt in 0.. {
            match op(self.open(name).await?).await {
                Ok(v) => return Ok(v),
                Err(e) if crate::writer::is_rerunnable_conflict(&e) && attempt < RERUNS => {
                    tracing::debug!(table = name, attempt, error = %e, "a concurrent commit; running again on the latest version");
                    tokio::time::sleep(Duration::from_millis(50 * (u64::from(attempt) + 1).min(10))).await;
                }
                Err(e) => return Err(delta(name)(e)),
            }
        }
        unreachable!("the loop returns")
    }

    async fn update_where(&self, kind: TableKind, predicate: Expr, column: &str, value: Expr, udf: ScalarUDF) -> Result<u64> {
        // delta-rs's own session (its planner runs the UPDATE plan), with the function added.
        let ctx: SessionContext = deltalake::delta_datafusion::create_session().into();
        ctx.register_udf(udf);
        let _lock = self.exclusive().await?;
        self.rerun_on_conflict(kind, |table| {
            let b = table
                .update()
                .with_predicate(predicate.clone())
                .with_update(column, value.clone())
                .with_session_state(Arc::new(ctx.state()))
                .with_writer_properties(crate::writer::writer_properties());
            async move { b.await.map(|(_, m)| m.num_updated_rows as u64) }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pseudonym_is_hmac_sha256_hex() {
        // RFC 4231 test case 2 has a short key; with a 32-byte key check stability and shape.
        let k = [7u8; 32];
        let a = pseudonym(&k, "u_0123456789abcdef");
        assert_eq!(a.len(), 64);
        assert_eq!(a, pseudonym(&k, "u_0123456789abcdef"));
        assert_ne!(a, pseudonym(&[8u8; 32], "u_0123456789abcdef"));
        assert_eq!(month_of(month_start_us(2026, 12)), (2026, 12));
        assert_eq!(next_month(2026, 12), (2027, 1));
    }
}
